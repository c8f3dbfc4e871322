#include "evalsvc/worker/device.h"

#include <dlfcn.h>
#include <unistd.h>

#include <chrono>
#include <ctime>
#include <fstream>
#include <thread>

#include "evalsvc/common/error.h"
#include "evalsvc/common/paths.h"

#if EVALSVC_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <cuda_runtime_api.h>
#endif

namespace evalsvc::worker {

torch::Device pick_device(const std::string& spec) {
  if (spec == "auto") return compat::cuda_available() ? torch::Device(torch::kCUDA, 0) : torch::Device(torch::kCPU);
  if (spec == "cpu") return torch::Device(torch::kCPU);
  if (spec.rfind("cuda", 0) == 0) {
    if (!compat::cuda_available()) {
      throw InputError(fmt::format("device '{}' requested but this build/machine has no CUDA device", spec));
    }
    torch::Device d(spec == "cuda" ? std::string("cuda:0") : spec);
    if (d.index() >= static_cast<int>(torch::cuda::device_count())) {
      throw InputError(fmt::format("device '{}' does not exist ({} CUDA devices visible)", spec,
                                   torch::cuda::device_count()));
    }
    return d;
  }
  throw InputError(fmt::format("unknown device '{}': expected auto, cpu, cuda or cuda:N", spec));
}

static std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      auto pos = line.find(':');
      if (pos != std::string::npos) return line.substr(pos + 2);
    }
  }
  return "CPU";
}

nlohmann::json describe_device(const torch::Device& device) {
  nlohmann::json j;
  char host[256] = {0};
  ::gethostname(host, sizeof(host) - 1);
  std::time_t now = std::time(nullptr);
  char date[32];
  std::strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  j["qbench"] = version();
  j["libtorch"] = TORCH_VERSION;
  j["date"] = date;
  j["host"] = host;
  j["cuda"] = nullptr;
  if (device.is_cuda()) {
#if EVALSVC_WITH_CUDA
    cudaDeviceProp prop{};
    cudaGetDeviceProperties(&prop, device.index());
    int rt = 0;
    cudaRuntimeGetVersion(&rt);
    j["device"] = prop.name;
    j["kind"] = "cuda";
    j["compute_capability"] = fmt::format("{}.{}", prop.major, prop.minor);
    j["memory_bytes"] = static_cast<int64_t>(prop.totalGlobalMem);
    j["cuda"] = fmt::format("{}.{}", rt / 1000, (rt % 1000) / 10);
#else
    j["device"] = "CUDA device";
    j["kind"] = "cuda";
#endif
  } else {
    unsigned cores = std::thread::hardware_concurrency();
    const int blas = openblas_threads();
    j["device"] = fmt::format("{} ({} cores, {} torch threads{})", cpu_model(), cores, torch::get_num_threads(),
                              blas > 0 ? fmt::format(", {} OpenBLAS threads", blas) : std::string());
    j["kind"] = "cpu";
  }
  return j;
}

namespace {

// OpenBLAS's C API, looked up at run time: qbench links libtorch, not a BLAS, and the BLAS behind Debian's
// libtorch is whichever libblas.so.3 the system selects (OpenBLAS after scripts/setup.sh).
template <typename Fn>
Fn openblas_fn(const char* name) {
  return reinterpret_cast<Fn>(::dlsym(RTLD_DEFAULT, name));
}

}  // namespace

void set_cpu_threads(int n) {
  if (n <= 0) return;
  torch::set_num_threads(n);
  if (auto set = openblas_fn<void (*)(int)>("openblas_set_num_threads")) set(n);
}

int openblas_threads() {
  auto get = openblas_fn<int (*)()>("openblas_get_num_threads");
  return get != nullptr ? get() : 0;
}

void synchronize(const torch::Device& device) {
#if EVALSVC_WITH_CUDA
  if (device.is_cuda()) {
    cudaDeviceSynchronize();
  }
#else
  (void)device;
#endif
}

}  // namespace evalsvc::worker
