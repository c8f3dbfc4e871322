// The long-running processes: `qbench scheduler` and `qbench worker`.
#include <unistd.h>

#include <iostream>
#include <random>
#include <thread>

#include "commands.h"
#include "evalsvc/common/error.h"
#include "evalsvc/common/log.h"
#include "evalsvc/common/paths.h"
#include "evalsvc/scheduler/gpu_claim.h"
#include "evalsvc/scheduler/http_server.h"
#include "evalsvc/scheduler/redis.h"
#include "evalsvc/scheduler/scheduler.h"
#include "evalsvc/scheduler/worker_runtime.h"
#include "evalsvc/worker/device.h"
#include "evalsvc/worker/jobs.h"
#include "service_urls.h"

#if EVALSVC_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace evalsvc::cli {
namespace {

/// The UUIDs of the CUDA devices this process sees, by device index, spelled as nvidia-smi prints them
/// (GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx): ids that name the same card in every container of a host.
std::vector<std::string> cuda_device_uuids() {
#if EVALSVC_WITH_CUDA
  int n = 0;
  const cudaError_t count_rc = cudaGetDeviceCount(&n);
  if (count_rc != cudaSuccess || n == 0) {
    throw InputError(fmt::format("--device cuda:claim: no CUDA device is visible ({})",
                                 count_rc == cudaSuccess ? "0 devices" : cudaGetErrorString(count_rc)));
  }
  std::vector<std::string> ids;
  for (int i = 0; i < n; ++i) {
    cudaDeviceProp p{};
    const cudaError_t rc = cudaGetDeviceProperties(&p, i);
    if (rc != cudaSuccess) throw IoError(fmt::format("cudaGetDeviceProperties({}): {}", i, cudaGetErrorString(rc)));
    const auto* b = reinterpret_cast<const unsigned char*>(p.uuid.bytes);
    ids.push_back(fmt::format("GPU-{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
                              b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
                              b[14], b[15]));
  }
  return ids;
#else
  throw InputError("--device cuda:claim needs a CUDA build of qbench; this one is CPU-only");
#endif
}

CommandRegistrar scheduler_reg("scheduler", "Run the scheduler: queue ready jobs, consume results, retry, requeue stalled",
                               [](CLI::App& sub) -> RunFn {
  auto svc = std::make_shared<ServiceOptions>();
  auto http_listen = std::make_shared<std::string>();
  svc->add_to(sub);
  sub.add_option("--http-listen", *http_listen,
                 "serve GET /healthz and /metrics (Prometheus) on HOST:PORT, e.g. 127.0.0.1:9464 (default: "
                 "QBENCH_HTTP_LISTEN, else off)");
  return [svc, http_listen] {
    auto urls = svc->resolve();
    scheduler::migrate(urls.database_url, scheduler::find_migrations_dir());
    scheduler::Store store(urls.database_url);
    scheduler::RedisClient redis(urls.redis_url);
    scheduler::Queue queue(redis);
    scheduler::Scheduler s(store, queue);
    std::atomic<bool> stop{false};
    // Off unless asked for: the endpoint is meant for a monitoring network, not for every host.
    const std::string listen = !http_listen->empty() ? *http_listen : getenv_opt("QBENCH_HTTP_LISTEN").value_or("");
    std::unique_ptr<scheduler::HttpServer> http;
    if (!listen.empty()) {
      scheduler::HttpServerOptions ho;
      ho.listen = listen;
      ho.redis_url = urls.redis_url;
      ho.database_url = urls.database_url;
      http = std::make_unique<scheduler::HttpServer>(ho);
    }
    spdlog::info("scheduler running (redis {}, database {})", scheduler::mask_url(urls.redis_url), store.redacted_url());
    s.run(stop);
    spdlog::info("scheduler stopped");
    return kOk;
  };
});

CommandRegistrar worker_reg("worker", "Run a worker: claim jobs and execute them on this machine's CPU or GPU",
                            [](CLI::App& sub) -> RunFn {
  auto svc = std::make_shared<ServiceOptions>();
  auto device = std::make_shared<std::string>("auto");
  auto artifacts = std::make_shared<std::string>();
  auto data = std::make_shared<std::string>();
  auto queues = std::make_shared<std::vector<std::string>>();
  auto threads = std::make_shared<int>(0);
  auto max_jobs = std::make_shared<size_t>(0);
  auto lease_ms = std::make_shared<int64_t>(30000);
  svc->add_to(sub);
  sub.add_option("--device", *device,
                 "auto | cpu | cuda | cuda:N | cuda:claim (a GPU no other worker holds, claimed in Redis: for "
                 "containers that all see every GPU)")
      ->capture_default_str();
  sub.add_option("--artifacts", *artifacts, "shared artifact folder (default QBENCH_ARTIFACTS or var/artifacts)");
  sub.add_option("--data", *data, "data folder with ag_news/ and gpt2/");
  sub.add_option("--queues", *queues, "queues to serve (default: cuda and cpu on a GPU, cpu otherwise)");
  sub.add_option("--threads", *threads, "CPU threads: libtorch's, and OpenBLAS's where it is the BLAS");
  sub.add_option("--max-jobs", *max_jobs, "exit after this many jobs (tests)");
  sub.add_option("--lease-ms", *lease_ms, "job lease; a worker silent this long loses its job to another")->capture_default_str();
  return [=] {
    auto urls = svc->resolve();
    worker::JobEnvironment env;
    env.database_url = urls.database_url;
    scheduler::WorkerOptions o;
    // With cuda:claim, the GPU is held (key renewed in Redis) for as long as this process runs the worker.
    std::unique_ptr<scheduler::GpuClaim> gpu;
    if (*device == "cuda:claim") {
      const auto ids = cuda_device_uuids();
      char host[256] = {0};
      ::gethostname(host, sizeof(host) - 1);
      std::random_device rd;
      // The claim's owner is the worker id, so `qbench workers` and the claim keys name the same worker.
      o.worker_id = fmt::format("{}-{}-{:04x}", host, ::getpid(), rd() & 0xffff);
      scheduler::GpuClaimOptions go;
      go.redis_url = urls.redis_url;
      go.owner = o.worker_id;
      gpu = scheduler::GpuClaim::acquire(go, ids);
      if (!gpu) {
        throw IoError(fmt::format("--device cuda:claim: all {} visible GPUs are held by other workers (keys "
                                  "qbench:gpu:<uuid>); run fewer workers than GPUs, or wait {} s for a dead one's claim "
                                  "to expire",
                                  ids.size(), go.ttl.count() / 1000));
      }
      env.device = worker::pick_device(fmt::format("cuda:{}", gpu->index()));
    } else {
      env.device = worker::pick_device(*device);
    }
    env.artifacts = !artifacts->empty() ? *artifacts : getenv_opt("QBENCH_ARTIFACTS").value_or("var/artifacts");
    env.data = data_dir(data->empty() ? std::nullopt : std::optional<std::string>(*data));
    env.threads = *threads;
    scheduler::ExecutorRegistry registry;
    worker::register_job_executors(registry, env);
    o.redis_url = urls.redis_url;
    o.queues = !queues->empty() ? *queues
                                : (env.device.is_cuda() ? std::vector<std::string>{"cuda", "cpu"} : std::vector<std::string>{"cpu"});
    auto dev = worker::describe_device(env.device);
    o.info = {{"device", dev}, {"artifacts", env.artifacts.string()}};
    if (gpu) o.info["gpu_uuid"] = gpu->id();
    if (*max_jobs > 0) o.max_jobs = *max_jobs;
    o.lease = std::chrono::milliseconds(*lease_ms);
    // Chaos testing (documented in docs/queue.md): jobs whose id matches fail on this worker.
    o.fail_jobs_matching = getenv_opt("QBENCH_FAULT_INJECT").value_or("");
    scheduler::WorkerRuntime::install_signal_handlers();
    scheduler::WorkerRuntime rt(o, registry);
    spdlog::info("worker {} on {} serving {}", rt.worker_id(), dev.value("device", "?"), fmt::join(o.queues, ","));
    // A claim lost to another worker (this process stalled past its TTL) means two workers on one GPU:
    // finish the current job and leave; the container restarts and claims a free GPU.
    std::jthread watcher;  // stops and joins when this scope ends, also when run() throws
    if (gpu) {
      watcher = std::jthread([&](std::stop_token stop) {
        while (!stop.stop_requested()) {
          if (!gpu->held()) {
            spdlog::error("worker {}: GPU {} is no longer ours; stopping after the current job", rt.worker_id(), gpu->id());
            rt.request_stop();
            return;
          }
          std::this_thread::sleep_for(std::chrono::milliseconds(500));
        }
      });
    }
    auto st = rt.run();
    spdlog::info("worker {} done: {} completed, {} failed, {} rejected, {} handed back", rt.worker_id(), st.completed,
                 st.failed, st.rejected, st.handed_back);
    return st.handed_back > 0 ? scheduler::kExitHandedBack : kOk;
  };
});

}  // namespace
}  // namespace evalsvc::cli
