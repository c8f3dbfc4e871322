// kernel_bench: validates every qbench CUDA op against its CPU reference, then times GPT-2's four projection
// GEMM shapes (in, out) = (768, 2304) c_attn, (768, 768) attn.c_proj, (768, 3072) c_fc, (3072, 768) mlp.c_proj at
// M = 1, 128, 1,024, 4,096, 32,768 tokens with CUDA events, next to the fp16 torch::matmul (cuBLAS) peer of the same run.
// Then the per-token quantizers, the weight prefetch's dequantizations (dense copies), the residual add + LayerNorm
// and its quantizing form, and LLM.int8 with 0 to 128 planted outlier columns against W8A8. Output: JSON lines on stdout (one "device" line, one line per validation, one per
// timing). Exit status 1 when any validation fails (nothing is timed then), 2 on a usage error; 0 with a message
// when built without CUDA.
//
//   build-NAME/kernels/kernel_bench            # full sweep
//   build-NAME/kernels/kernel_bench --quick    # M = 1 and 128 only
//   build-NAME/kernels/kernel_bench --m 4096,32768   # those token counts only
//   build-NAME/kernels/kernel_bench --no-pdl   # qbench's kernels launched normally (see the "device" line's pdl)
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <functional>
#include <vector>

#include <nlohmann/json.hpp>

#include "evalsvc/kernels/torch_compat.h"

namespace {

/// The token counts to time, from the command line (the same in builds with and without CUDA, so a bad command
/// line is an error everywhere). False, with a message on stderr, on a usage error. pdl: false with --no-pdl.
bool parse_args(int argc, char** argv, std::vector<int64_t>& ms, bool& pdl) {
  ms = {1, 128, 1024, 4096, 32768};
  pdl = true;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) {
      ms = {1, 128};
    } else if (std::strcmp(argv[i], "--no-pdl") == 0) {
      pdl = false;
    } else if (std::strcmp(argv[i], "--m") == 0 && i + 1 < argc) {
      ms.clear();
      const std::string list = argv[++i];
      for (size_t pos = 0; pos <= list.size();) {
        const size_t comma = std::min(list.find(',', pos), list.size());
        const std::string item = list.substr(pos, comma - pos);
        char* end = nullptr;
        const long long v = std::strtoll(item.c_str(), &end, 10);
        if (item.empty() || *end != '\0' || v < 1) {
          std::fprintf(stderr, "kernel_bench: --m wants a comma-separated list of token counts >= 1, got '%s'\n",
                       list.c_str());
          return false;
        }
        ms.push_back(v);
        pos = comma + 1;
      }
    } else {
      std::fprintf(stderr, "usage: kernel_bench [--quick | --m M1,M2,...] [--no-pdl]\n");
      return false;
    }
  }
  return true;
}

}  // namespace

#ifndef EVALSVC_WITH_CUDA

int main(int argc, char** argv) {
  std::vector<int64_t> ms;
  bool pdl = true;
  if (!parse_args(argc, argv, ms, pdl)) return 2;
  std::fprintf(stderr,
               "kernel_bench: built without the CUDA kernels (configure with -DEVALSVC_ENABLE_CUDA=ON against a "
               "CUDA libtorch); nothing to validate or time.\n");
  return 0;
}

#else

#include <cuda_runtime_api.h>

#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <fmt/format.h>

#include "evalsvc/common/error.h"
#include "evalsvc/kernels/cuda_ops.h"
#include "evalsvc/kernels/reference.h"

namespace {

using namespace evalsvc;
using namespace evalsvc::kernels;
using json = nlohmann::json;

#define BENCH_CUDA_CHECK(call)                                                                              \
  do {                                                                                                      \
    const cudaError_t e_ = (call);                                                                          \
    if (e_ != cudaSuccess)                                                                                  \
      throw CudaError(fmt::format("{}:{}: {} failed: {}", __FILE__, __LINE__, #call, cudaGetErrorString(e_))); \
  } while (0)

torch::Device gpu() { return torch::Device(torch::kCUDA, 0); }

torch::Tensor randn(std::vector<int64_t> shape, uint64_t seed, double stddev = 1.0) {
  auto gen = at::detail::createCPUGenerator(seed);
  return at::normal(0.0, stddev, shape, gen);
}

/// max |got - want| / max |want|.
double rel_err(const torch::Tensor& got, const torch::Tensor& want) {
  const auto g = got.cpu().to(torch::kFloat64);
  const auto w = want.cpu().to(torch::kFloat64);
  if (g.sizes() != w.sizes()) return 1e30;
  if (!torch::isfinite(g).all().item<bool>()) return 1e30;
  return (g - w).abs().max().item<double>() / std::max(w.abs().max().item<double>(), 1e-12);
}

/// Milliseconds per call of fn, CUDA events around `iters` back-to-back calls after `warmup` calls.
template <typename Fn>
double time_ms(Fn&& fn, int warmup, int iters) {
  for (int i = 0; i < warmup; ++i) fn();
  cudaEvent_t start, stop;
  BENCH_CUDA_CHECK(cudaEventCreate(&start));
  BENCH_CUDA_CHECK(cudaEventCreate(&stop));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream().stream();
  BENCH_CUDA_CHECK(cudaEventRecord(start, stream));
  for (int i = 0; i < iters; ++i) fn();
  BENCH_CUDA_CHECK(cudaEventRecord(stop, stream));
  BENCH_CUDA_CHECK(cudaEventSynchronize(stop));
  float ms = 0;
  BENCH_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
  BENCH_CUDA_CHECK(cudaEventDestroy(start));
  BENCH_CUDA_CHECK(cudaEventDestroy(stop));
  return ms / iters;
}

/// Milliseconds per call of fn inside a CUDA graph: `calls` calls captured once, the graph replayed `replays`
/// times. This is what a call costs in the model's batch-1 forward (itself a graph replay), without the host
/// launch overhead that time_ms includes at small sizes.
template <typename Fn>
double graph_ms(Fn&& fn, int calls, int replays) {
  fn();
  // fn may keep state across calls (LLM.int8's outlier state): the capture stream must not run beside the call
  // above.
  BENCH_CUDA_CHECK(cudaDeviceSynchronize());
  at::cuda::CUDAGraph graph;
  {
    c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool(false, 0);
    c10::cuda::CUDAStreamGuard guard(side);
    fn();  // warm-up on the capture stream (cuBLAS workspaces, allocator pools)
    BENCH_CUDA_CHECK(cudaStreamSynchronize(side.stream()));
    graph.capture_begin();
    for (int i = 0; i < calls; ++i) fn();
    graph.capture_end();
  }
  graph.replay();
  BENCH_CUDA_CHECK(cudaDeviceSynchronize());
  return time_ms([&] { graph.replay(); }, 2, replays) / calls;
}

cuda::Nf4Weight nf4_to_gpu(const ref::Nf4Weight& w) {
  cuda::Nf4Weight g;
  g.packed = w.packed.to(gpu());
  if (w.double_quant()) {
    g.absmax_q = w.absmax_q.to(gpu());
    g.nested_absmax = w.nested_absmax.to(gpu());
    g.offset = w.offset;
  } else {
    g.absmax = w.absmax.to(gpu());
  }
  g.out_features = w.shape.at(0);
  g.in_features = w.shape.at(1);
  g.blocksize = w.blocksize;
  return g;
}

/// Every op on one shape: built once on the CPU (references) and moved to the GPU.
struct Layer {
  int64_t k = 0, n = 0;
  torch::Tensor w, bias;                 // CPU fp32
  ref::Nf4Weight nf4;
  cuda::Nf4Weight nf4_gpu;
  ref::Int8Weight i8;                    // per channel
  torch::Tensor i8_q, i8_s;
  ref::LlmInt8Weight llm;
  torch::Tensor cb, scb;
  torch::Tensor llm_state;               // zeroed outlier state, kept as the layer keeps it
  ref::Fp8Weight f8;
  torch::Tensor f8_q, f8_s;
  torch::Tensor w16, bias_gpu, bias16;   // GPU

  Layer(int64_t k_, int64_t n_, uint64_t seed) : k(k_), n(n_) {
    w = randn({n, k}, seed, 0.02);
    bias = randn({n}, seed + 1, 0.02);
    nf4 = ref::quantize_nf4(w, 64, true);
    nf4_gpu = nf4_to_gpu(nf4);
    i8 = ref::quantize_int8_sym(w, true);
    i8_q = i8.q.to(gpu());
    i8_s = i8.scale.to(gpu());
    llm = ref::quantize_llm_int8(w);
    cb = llm.CB.to(gpu());
    scb = llm.SCB.to(gpu());
    llm_state = cuda::llm_int8_outlier_state(k, gpu());
    f8 = ref::quantize_fp8_e4m3_channel(w);
    f8_q = f8.q.to(gpu());
    f8_s = f8.scale.to(gpu());
    w16 = w.to(torch::kFloat16).to(gpu());
    bias_gpu = bias.to(gpu());
    bias16 = bias.to(torch::kFloat16).to(gpu());
  }
};

struct Validation {
  std::string op;
  double tol;
  double err;
};

/// One validation as a JSON line on stdout; whether it passed.
bool print_validation(const Validation& r) {
  const bool ok = r.err <= r.tol;
  std::printf("%s\n", json{{"validate", r.op}, {"rel_err", r.err}, {"tol", r.tol}, {"ok", ok}}.dump().c_str());
  return ok;
}

const std::pair<const char*, cuda::Nf4Path> kNf4Paths[] = {
    {"gemv", cuda::Nf4Path::kGemv}, {"gemm", cuda::Nf4Path::kGemm}, {"dequant_matmul", cuda::Nf4Path::kDequantMatmul}};

/// The int8 products for m tokens, by row-name suffix: kAuto ("") and each explicit one this device runs.
std::vector<std::pair<std::string, cuda::Int8Gemm>> int8_kernels(int64_t m) {
  std::vector<std::pair<std::string, cuda::Int8Gemm>> g = {{"", cuda::Int8Gemm::kAuto}, {"/mma.sync", cuda::Int8Gemm::kMmaSync}};
  if (cuda::int8_wgmma_available()) g.emplace_back("/wgmma", cuda::Int8Gemm::kWgmma);
  if (m > 16) g.emplace_back("/cublaslt", cuda::Int8Gemm::kCublasLt);
  return g;
}

/// Whether this cuBLASLt has the outer-vector-scaled fp8 product (cuBLAS 12.9+): tried once on a small product.
bool fp8_cublaslt_runs() {
  static const bool runs = [] {
    try {
      (void)cuda::fp8_linear(torch::zeros({16, 64}, torch::kBFloat16).to(gpu()),
                             torch::zeros({16, 64}, torch::kUInt8).to(gpu()), torch::ones({16}).to(gpu()), {}, false,
                             cuda::Fp8Gemm::kCublasLt);
    } catch (const UnsupportedError&) {
      return false;
    }
    return true;
  }();
  return runs;
}

/// The fp8 products timed beside kAuto's choice: qbench's wgmma kernel (Hopper) and cuBLASLt's outer-vector one,
/// each where it runs.
std::vector<std::pair<std::string, cuda::Fp8Gemm>> fp8_kernels() {
  std::vector<std::pair<std::string, cuda::Fp8Gemm>> g;
  if (cuda::int8_wgmma_available()) g.emplace_back("/wgmma", cuda::Fp8Gemm::kWgmma);
  if (fp8_cublaslt_runs()) g.emplace_back("/cublaslt", cuda::Fp8Gemm::kCublasLt);
  return g;
}

/// The weight prefetch's grid cap (worker::GPT2ClassifierImpl::kDefaultPrefetchBlocks), for its dense copies.
constexpr int kPrefetchCap = 64;

/// Each op against its CPU reference at 1 and 77 tokens (77: partial tiles, more than cuBLASLt's 16), and the
/// weight-only dense copies (no tokens), with the whole grid and capped as the weight prefetch runs them.
bool validate(const Layer& L, bool fp8, std::vector<Validation>& out) {
  bool ok = true;
  auto check = [&](std::string op, double tol, double err) {
    out.push_back({std::move(op), tol, err});
    ok = ok && err <= tol;
  };
  {
    const auto nf4_want = ref::dequantize_nf4(L.nf4);
    const auto i8_want = ref::dequantize_int8_sym(L.i8);
    for (const int cap : {0, kPrefetchCap}) {
      auto o = torch::empty({L.n, L.k}, torch::TensorOptions().dtype(torch::kFloat16).device(gpu()));
      cuda::nf4_dequantize_into(L.nf4_gpu, o, cap);
      check(fmt::format("nf4_dequantize_into max_blocks={} in={} out={}", cap, L.k, L.n), 1e-3, rel_err(o, nf4_want));
      cuda::dequantize_int8_weight_into(L.i8_q, L.i8_s, o, cap);
      check(fmt::format("dequantize_int8_weight_into max_blocks={} in={} out={}", cap, L.k, L.n), 1e-3,
            rel_err(o, i8_want));
    }
  }
  for (const int64_t m : {int64_t{1}, int64_t{77}}) {
    auto x = randn({m, L.k}, 42 + m).clamp(-4.0, 4.0);
    x.index_put_({m / 2, 7}, 25.0);  // one LLM.int8 outlier column
    const auto x16 = x.to(torch::kFloat16);
    const auto xg = x16.to(gpu());
    auto add = [&](const std::string& op, double tol, double err) {
      check(fmt::format("{} M={} in={} out={}", op, m, L.k, L.n), tol, err);
    };
    const auto want_nf4 = ref::nf4_linear(x16, L.nf4, L.bias, torch::kFloat16);
    for (const auto& [name, path] : kNf4Paths) {
      add(std::string("nf4_linear/") + name, 3e-3, rel_err(cuda::nf4_linear(xg, L.nf4_gpu, L.bias_gpu, path), want_nf4));
    }
    const auto want_w8a8 = ref::int8_w8a8_linear(x16, L.i8, L.bias);
    for (const auto& [name, gemm] : int8_kernels(m)) {
      add(std::string("int8_w8a8_linear") + name, 3e-3, rel_err(cuda::int8_w8a8_linear(xg, L.i8_q, L.i8_s, L.bias_gpu, gemm), want_w8a8));
    }
    const auto want_llm = ref::llm_int8_linear(x16, L.llm, L.bias, 6.0);
    add("llm_int8_linear", 3e-3, rel_err(cuda::llm_int8_linear(xg, L.cb, L.scb, L.bias_gpu, 6.0, cuda::Int8Gemm::kAuto,
                                                               false, L.llm_state), want_llm));
    add("llm_int8_linear (state zeroed per call)", 3e-3,
        rel_err(cuda::llm_int8_linear(xg, L.cb, L.scb, L.bias_gpu, 6.0), want_llm));
    for (const int64_t more : {31, 32}) {
      // The outlier column above and 31 or 32 more: one whole chunk of the wgmma epilogue's outlier part (32
      // columns), then two.
      auto xo = x.clone();
      for (int64_t j = 0; j < more; ++j) xo.index_put_({(j * 5) % m, j * 23 + 3}, -7.5 - 0.25 * j);
      const auto xo16 = xo.to(torch::kFloat16);
      add(fmt::format("llm_int8_linear ({} outlier columns)", more + 1), 3e-3,
          rel_err(cuda::llm_int8_linear(xo16.to(gpu()), L.cb, L.scb, L.bias_gpu, 6.0, cuda::Int8Gemm::kAuto, false,
                                        L.llm_state),
                  ref::llm_int8_linear(xo16, L.llm, L.bias, 6.0)));
    }
    add("int8_weight_only_linear", 3e-3,
        rel_err(cuda::int8_weight_only_linear(xg, L.i8_q, L.i8_s, L.bias_gpu),
                ref::int8_weight_only_linear(x16, L.i8, L.bias, torch::kFloat16)));
    if (fp8) {
      add("fp8_linear", 2e-2, rel_err(cuda::fp8_linear(xg, L.f8_q, L.f8_s, L.bias_gpu),
                                       ref::fp8_w8a8_linear(x16, L.f8, L.bias)));
      add("fp8_linear/scaled_mm", 2e-2,
          rel_err(cuda::fp8_linear(xg, L.f8_q, L.f8_s, L.bias_gpu, false, cuda::Fp8Gemm::kScaledMm),
                  ref::fp8_w8a8_linear(x16, L.f8, L.bias)));
      for (const auto& [name, gemm] : fp8_kernels()) {
        add("fp8_linear" + name, 2e-2, rel_err(cuda::fp8_linear(xg, L.f8_q, L.f8_s, L.bias_gpu, false, gemm),
                                               ref::fp8_w8a8_linear(x16, L.f8, L.bias)));
      }
    }
    const auto gelu = [](const torch::Tensor& t) { return torch::gelu(t.to(torch::kFloat32), "tanh"); };
    add("linear+gelu", 3e-3, rel_err(cuda::linear(xg, L.w16, L.bias16, true),
                                      gelu(ref::linear_in_dtype(x16, L.w, L.bias, torch::kFloat16))));
    add("int8_w8a8_linear+gelu", 3e-3, rel_err(cuda::int8_w8a8_linear(xg, L.i8_q, L.i8_s, L.bias_gpu,
                                                                      cuda::Int8Gemm::kAuto, true),
                                                gelu(ref::int8_w8a8_linear(x16, L.i8, L.bias))));
    if (L.n == 768) {  // the residual stream's width
      const auto delta = randn({m, L.n}, 99 + m).to(torch::kFloat16);
      const auto gamma = (randn({L.n}, 98, 0.1) + 1.0).to(torch::kFloat16);
      const auto beta = randn({L.n}, 97, 0.1).to(torch::kFloat16);
      const auto h = randn({m, L.n}, 96 + m).to(torch::kFloat16);
      const auto want = ref::add_layer_norm(h, delta, gamma, beta, 1e-5);
      const auto got = cuda::add_layer_norm(h.to(gpu()), delta.to(gpu()), gamma.to(gpu()), beta.to(gpu()), 1e-5);
      add("add_layer_norm/h", 0.0, rel_err(got.first, want.first));
      add("add_layer_norm", 3e-3, rel_err(got.second, want.second));
    }
  }
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int64_t> ms;
  bool pdl = true;
  if (!parse_args(argc, argv, ms, pdl)) return 2;
  if (!torch::cuda::is_available()) {
    std::fprintf(stderr, "kernel_bench: no CUDA device visible; nothing to validate or time.\n");
    return 0;
  }
  try {
    torch::NoGradGuard no_grad;
    const auto* prop = at::cuda::getCurrentDeviceProperties();
    const bool fp8 = cuda::fp8_supported(gpu());
    // Programmatic dependent launch lets back-to-back calls of one of qbench's kernels overlap (each one's set-up
    // with the tail of the one before), as consecutive kernels of a forward do; cuBLAS's peers never do. The
    // device line says which way the graph_ms rows were taken.
    cuda::set_programmatic_launch(pdl);
    std::printf("%s\n", json{{"device", prop->name},
                             {"pdl", cuda::programmatic_launch()},
                             {"compute_capability", fmt::format("{}.{}", prop->major, prop->minor)},
                             {"sms", prop->multiProcessorCount},
                             {"libtorch", TORCH_VERSION},
                             {"cuda_runtime", CUDART_VERSION},
                             {"fp8", fp8}}
                            .dump()
                            .c_str());

    const std::vector<std::pair<int64_t, int64_t>> shapes = {{768, 2304}, {768, 768}, {768, 3072}, {3072, 768}};
    std::vector<Layer> layers;
    for (size_t i = 0; i < shapes.size(); ++i) layers.emplace_back(shapes[i].first, shapes[i].second, 1000 + 10 * i);

    bool all_ok = true;
    for (const auto& L : layers) {
      std::vector<Validation> v;
      all_ok = validate(L, fp8, v) && all_ok;
      for (const auto& r : v) print_validation(r);
    }
    // A transformer block's four NF4 weights in the prefetch's one launch, each against the CPU reference.
    std::vector<const cuda::Nf4Weight*> block_w;
    std::vector<torch::Tensor> block_copy;
    std::vector<torch::Tensor*> block_out;
    std::vector<torch::Tensor> block_want;
    for (const auto& L : layers) {
      block_w.push_back(&L.nf4_gpu);
      block_copy.push_back(torch::empty({L.n, L.k}, torch::TensorOptions().dtype(torch::kFloat16).device(gpu())));
      block_want.push_back(ref::dequantize_nf4(L.nf4));
    }
    for (auto& t : block_copy) block_out.push_back(&t);
    for (const int cap : {0, kPrefetchCap}) {
      for (auto& t : block_copy) t.fill_(7.0);  // each launch must write every element itself
      cuda::nf4_dequantize_batch_into(block_w, block_out, cap);
      for (size_t i = 0; i < layers.size(); ++i) {
        all_ok = print_validation({fmt::format("nf4_dequantize_batch_into max_blocks={} weight {}", cap, i), 1e-3,
                                   rel_err(block_copy[i], block_want[i])}) &&
                 all_ok;
      }
    }
    std::fflush(stdout);
    if (!all_ok) {
      std::fprintf(stderr, "kernel_bench: validation failed; not timing\n");
      return 1;
    }

    for (const auto& L : layers) {
      for (const int64_t m : ms) {
        const auto x16 = randn({m, L.k}, 7 + m).clamp(-4.0, 4.0).to(torch::kFloat16).to(gpu());
        // x16's codes, for the rows that time the products alone (what a quantizer fused into the preceding
        // LayerNorm would leave).
        const auto xa = cuda::quantize_per_token_int8(x16, 0.0);
        const int iters = m >= 4096 ? 20 : 200;
        const int warmup = m >= 4096 ? 3 : 20;
        const double flop = 2.0 * m * L.n * L.k;
        const double peer = time_ms([&] { (void)at::linear(x16, L.w16, L.bias16); }, warmup, iters);
        const double peer_graph =
            m <= 128 ? graph_ms([&] { (void)at::linear(x16, L.w16, L.bias16); }, 20, 20) : 0.0;
        // Small M: also the time per call inside a CUDA graph (graph_ms), next to fp16's.
        auto report_graph = [&](const std::string& op, auto&& fn) {
          if (m > 128) return;
          const double t = graph_ms(fn, 20, 20);
          std::printf("%s\n", json{{"op", op}, {"m", m}, {"k", L.k}, {"n", L.n}, {"graph_ms", t},
                                   {"fp16_matmul_graph_ms", peer_graph}, {"speedup_vs_fp16", peer_graph / t}}
                                  .dump()
                                  .c_str());
        };
        report_graph("fp16_matmul", [&] { (void)at::linear(x16, L.w16, L.bias16); });
        report_graph("fp16_matmul+gelu (two ops)", [&] { (void)at::gelu(at::linear(x16, L.w16, L.bias16), "tanh"); });
        report_graph("fp16_linear+gelu (epilogue)", [&] { (void)cuda::linear(x16, L.w16, L.bias16, true); });
        report_graph("nf4_linear", [&] { (void)cuda::nf4_linear(x16, L.nf4_gpu, L.bias16); });
        for (const auto& [name, gemm] : int8_kernels(m)) {
          report_graph("int8_w8a8_linear" + name, [&, gemm = gemm] { (void)cuda::int8_w8a8_linear(x16, L.i8_q, L.i8_s, L.bias_gpu, gemm); });
        }
        if (m <= 128) {  // the W8A8 call above without its quantizer: where a small projection's time goes
          for (const auto& [name, gemm] : int8_kernels(m)) {
            report_graph("int8_linear" + name + " (pre-quantized x)", [&, gemm = gemm] {
              (void)cuda::int8_linear(xa.q, xa.scale, L.i8_q, L.i8_s, L.bias_gpu, torch::kFloat16, 1.0, gemm);
            });
          }
          report_graph("quantize_per_token_int8", [&] { (void)cuda::quantize_per_token_int8(x16, 0.0); });
          // The same rows 2 bytes past a 16-byte boundary: the warp kernel needs aligned rows, so this times the
          // one-block-per-row kernel, the peer of the line above.
          const auto flat = torch::empty({m * L.k + 1}, x16.options());
          const auto x_off = flat.narrow(0, 1, m * L.k).view({m, L.k}).copy_(x16);
          report_graph("quantize_per_token_int8 (x 2 bytes off 16: one block a row)",
                       [&] { (void)cuda::quantize_per_token_int8(x_off, 0.0); });
        }
        report_graph("llm_int8_linear", [&] {
          (void)cuda::llm_int8_linear(x16, L.cb, L.scb, L.bias_gpu, 6.0, cuda::Int8Gemm::kAuto, false, L.llm_state);
        });
        // Without a kept state the op zeroes one per call: one launch more, the peer of the line above.
        report_graph("llm_int8_linear (state zeroed per call)",
                     [&] { (void)cuda::llm_int8_linear(x16, L.cb, L.scb, L.bias_gpu, 6.0); });
        report_graph("int8_weight_only_linear", [&] { (void)cuda::int8_weight_only_linear(x16, L.i8_q, L.i8_s, L.bias16); });
        if (fp8) {
          const auto bias_bf16 = L.bias.to(torch::kBFloat16).to(gpu());
          const auto xb16 = x16.to(torch::kBFloat16);
          report_graph("fp8_linear (bf16 in and out)", [&] { (void)cuda::fp8_linear(xb16, L.f8_q, L.f8_s, bias_bf16); });
          report_graph("fp8_linear/scaled_mm (bf16 in and out)", [&] {
            (void)cuda::fp8_linear(xb16, L.f8_q, L.f8_s, bias_bf16, false, cuda::Fp8Gemm::kScaledMm);
          });
          for (const auto& [name, gemm] : fp8_kernels()) {
            report_graph("fp8_linear" + name + " (bf16 in and out)",
                         [&, gemm = gemm] { (void)cuda::fp8_linear(xb16, L.f8_q, L.f8_s, bias_bf16, false, gemm); });
          }
          // Its two kernels apart, the peers of the int8 rows: the quantizer, and the product on its codes.
          report_graph("quantize_per_token_fp8 (bf16)", [&] { (void)cuda::quantize_per_token_fp8(xb16); });
          const auto xfb = cuda::quantize_per_token_fp8(xb16);
          for (const auto& [name, gemm] : fp8_kernels()) {
            report_graph("fp8_linear" + name + " (pre-quantized x, bf16 out)", [&, gemm = gemm] {
              (void)cuda::fp8_linear_quantized(xfb, L.f8_q, L.f8_s, bias_bf16, torch::kBFloat16, false, gemm);
            });
          }
        }
        auto report = [&](const std::string& op, double weight_bytes, double t) {
          // Bytes that must cross memory at least once: the weight as stored, x in and y out (fp16).
          const double bytes = weight_bytes + 2.0 * m * L.k + 2.0 * m * L.n;
          std::printf("%s\n", json{{"op", op},
                                   {"m", m},
                                   {"k", L.k},
                                   {"n", L.n},
                                   {"ms", t},
                                   {"tflops", flop / (t * 1e-3) / 1e12},
                                   {"gbps", bytes / (t * 1e-3) / 1e9},
                                   {"fp16_matmul_ms", peer},
                                   {"speedup_vs_fp16", peer / t}}
                                  .dump()
                                  .c_str());
          std::fflush(stdout);
        };
        report("fp16_matmul", 2.0 * L.n * L.k, peer);
        // The path kAuto picks for this M first (the row the model runs), then each explicit path.
        report("nf4_linear", L.n * L.k / 2.0 + L.n * L.k / 64.0,
               time_ms([&] { (void)cuda::nf4_linear(x16, L.nf4_gpu, L.bias_gpu); }, warmup, iters));
        for (const auto& [name, path] : kNf4Paths) {
          if (path == cuda::Nf4Path::kGemv && m > 128) continue;  // re-streams the weight per 8 tokens: hopeless
          report(std::string("nf4_linear/") + name, L.n * L.k / 2.0 + L.n * L.k / 64.0,
                 time_ms([&] { (void)cuda::nf4_linear(x16, L.nf4_gpu, L.bias_gpu, path); }, warmup, iters));
        }
        for (const auto& [name, gemm] : int8_kernels(m)) {
          report("int8_w8a8_linear" + name, L.n * L.k + 4.0 * L.n,
                 time_ms([&, gemm = gemm] { (void)cuda::int8_w8a8_linear(x16, L.i8_q, L.i8_s, L.bias_gpu, gemm); }, warmup, iters));
        }
        report("fp16_matmul+gelu (two ops)", 2.0 * L.n * L.k,
               time_ms([&] { (void)at::gelu(at::linear(x16, L.w16, L.bias16), "tanh"); }, warmup, iters));
        report("fp16_linear+gelu (epilogue)", 2.0 * L.n * L.k,
               time_ms([&] { (void)cuda::linear(x16, L.w16, L.bias16, true); }, warmup, iters));
        report("llm_int8_linear", L.n * L.k + 4.0 * L.n,
               time_ms([&] {
                 (void)cuda::llm_int8_linear(x16, L.cb, L.scb, L.bias_gpu, 6.0, cuda::Int8Gemm::kAuto, false, L.llm_state);
               }, warmup, iters));
        report("int8_weight_only_linear", L.n * L.k + 4.0 * L.n,
               time_ms([&] { (void)cuda::int8_weight_only_linear(x16, L.i8_q, L.i8_s, L.bias_gpu); }, warmup, iters));
        if (fp8) {
          report("fp8_linear", L.n * L.k + 4.0 * L.n,
                 time_ms([&] { (void)cuda::fp8_linear(x16, L.f8_q, L.f8_s, L.bias_gpu); }, warmup, iters));
          report("fp8_linear/scaled_mm", L.n * L.k + 4.0 * L.n, time_ms([&] {
                   (void)cuda::fp8_linear(x16, L.f8_q, L.f8_s, L.bias_gpu, false, cuda::Fp8Gemm::kScaledMm);
                 }, warmup, iters));
          // The products alone on pre-quantized codes, bf16 out as in the model: qbench's wgmma kernel against
          // cuBLASLt's, which kAuto takes from where the 128 x 128 tiles fill the card.
          const auto xb16 = x16.to(torch::kBFloat16);
          const auto bias_bf16 = L.bias.to(torch::kBFloat16).to(gpu());
          const auto xf = cuda::quantize_per_token_fp8(xb16);
          for (const auto& [name, gemm] : fp8_kernels()) {
            report("fp8_linear" + name + " (pre-quantized x)", L.n * L.k + 4.0 * L.n, time_ms([&, gemm = gemm] {
                     (void)cuda::fp8_linear_quantized(xf, L.f8_q, L.f8_s, bias_bf16, torch::kBFloat16, false, gemm);
                   }, warmup, iters));
          }
        }
        // The products alone, on activations quantized beforehand: the GEMM's own rate, without the
        // quantization pass.
        {
          for (const auto& [name, gemm] : int8_kernels(m)) {
            report("int8_linear" + name + " (pre-quantized x)", L.n * L.k + 4.0 * L.n, time_ms([&, gemm = gemm] {
                     (void)cuda::int8_linear(xa.q, xa.scale, L.i8_q, L.i8_s, L.bias_gpu, torch::kFloat16, 1.0, gemm);
                   }, warmup, iters));
          }
          // With GELU in the epilogue (the model's mlp.c_fc): what the activation costs the fused epilogue.
          report("int8_linear+gelu (pre-quantized x)", L.n * L.k + 4.0 * L.n, time_ms([&] {
                   (void)cuda::int8_linear(xa.q, xa.scale, L.i8_q, L.i8_s, L.bias_gpu, torch::kFloat16, 1.0,
                                           cuda::Int8Gemm::kAuto, true);
                 }, warmup, iters));
        }
      }
    }
    // The per-token activation quantizers (every W8A8 product runs one first) over [M, K] fp16.
    for (const int64_t k : {768, 3072}) {
      for (const int64_t m : ms) {
        const auto x = randn({m, k}, 3 + m).to(torch::kFloat16).to(gpu());
        const int iters = m >= 4096 ? 50 : 200;
        const double bytes = 3.0 * m * k;  // fp16 in, one byte a code out
        const double ti = time_ms([&] { (void)cuda::quantize_per_token_int8(x, 0.0); }, 10, iters);
        std::printf("%s\n", json{{"op", "quantize_per_token_int8"}, {"m", m}, {"k", k}, {"ms", ti},
                                 {"gbps", bytes / (ti * 1e-3) / 1e9}}.dump().c_str());
        // LLM.int8's quantizer: one pass that also flags outlier columns (+ compaction and zeroing them).
        const double tl = time_ms([&] { (void)cuda::quantize_per_token_int8(x, 6.0); }, 10, iters);
        std::printf("%s\n", json{{"op", "quantize_per_token_int8 (threshold 6)"}, {"m", m}, {"k", k}, {"ms", tl},
                                 {"gbps", bytes / (tl * 1e-3) / 1e9}}.dump().c_str());
        // What the card streams on this host: a copy of x (2 bytes in, 2 out an element), the quantizers' ceiling.
        const double tc = time_ms([&] { (void)x.clone(); }, 10, iters);
        std::printf("%s\n", json{{"op", "copy (x.clone())"}, {"m", m}, {"k", k}, {"ms", tc},
                                 {"gbps", 4.0 * m * k / (tc * 1e-3) / 1e9}}.dump().c_str());
        if (fp8) {
          const double tf = time_ms([&] { (void)cuda::quantize_per_token_fp8(x); }, 10, iters);
          std::printf("%s\n", json{{"op", "quantize_per_token_fp8"}, {"m", m}, {"k", k}, {"ms", tf},
                                   {"gbps", bytes / (tf * 1e-3) / 1e9}}.dump().c_str());
        }
        std::fflush(stdout);
      }
    }
    // The weight prefetch's dense copies (weight-only variants at batch 1; validated above): each weight dequantized
    // into a kept fp16 buffer with the whole grid (max_blocks 0) and capped as the model's prefetch runs it beside a
    // forward, and a block's four NF4 weights in the prefetch's one launch. GB/s counts the codes and scales read and
    // the fp16 copy written; the peer is a copy of the copy's size (x.clone(): 2 bytes read and 2 written an element),
    // about the most a pass over these bytes can stream here.
    {
      auto row = [](json r, double ms, double bytes, double copy_ms) {
        r["ms"] = ms;
        r["gbps"] = bytes / (ms * 1e-3) / 1e9;
        r["copy_ms"] = copy_ms;
        r["copy_over_ms"] = copy_ms / ms;
        std::printf("%s\n", r.dump().c_str());
      };
      // NF4: half a byte a code and one absmax code a block of 64 (double quantization) in, fp16 out.
      auto nf4_bytes = [](double elems) { return elems / 2 + elems / 64 + 2 * elems; };
      for (size_t i = 0; i < layers.size(); ++i) {
        const Layer& L = layers[i];
        auto& out = block_copy[i];
        const double elems = static_cast<double>(L.n) * L.k;
        const double copy_ms = time_ms([&] { (void)out.clone(); }, 10, 200);
        for (const int cap : {0, kPrefetchCap}) {
          row(json{{"op", "nf4_dequantize_into"}, {"k", L.k}, {"n", L.n}, {"max_blocks", cap}},
              time_ms([&] { cuda::nf4_dequantize_into(L.nf4_gpu, out, cap); }, 10, 200), nf4_bytes(elems), copy_ms);
          // int8 per channel: a byte a code and an fp32 scale a row in, fp16 out.
          row(json{{"op", "dequantize_int8_weight_into"}, {"k", L.k}, {"n", L.n}, {"max_blocks", cap}},
              time_ms([&] { cuda::dequantize_int8_weight_into(L.i8_q, L.i8_s, out, cap); }, 10, 200),
              elems + 4.0 * L.n + 2 * elems, copy_ms);
        }
        std::fflush(stdout);
      }
      double elems = 0;
      for (const auto& L : layers) elems += static_cast<double>(L.n) * L.k;
      const auto whole =
          torch::empty({static_cast<int64_t>(elems)}, torch::TensorOptions().dtype(torch::kFloat16).device(gpu()));
      const double copy_ms = time_ms([&] { (void)whole.clone(); }, 10, 200);
      for (const int cap : {0, kPrefetchCap}) {
        row(json{{"op", "nf4_dequantize_batch_into (a block's four weights)"}, {"elements", elems},
                 {"max_blocks", cap}},
            time_ms([&] { cuda::nf4_dequantize_batch_into(block_w, block_out, cap); }, 10, 200), nf4_bytes(elems),
            copy_ms);
      }
      std::fflush(stdout);
    }
    // Residual add + LayerNorm over [M, 768]: the fused kernel against the two ops it replaces.
    for (const int64_t m : ms) {
      const auto h = randn({m, 768}, 5 + m).to(torch::kFloat16).to(gpu());
      const auto d = randn({m, 768}, 6 + m).to(torch::kFloat16).to(gpu());
      const auto g = torch::ones({768}, torch::kFloat16).to(gpu());
      const auto b = torch::zeros({768}, torch::kFloat16).to(gpu());
      const int iters = m >= 4096 ? 50 : 200;
      const auto two_ops = [&] { (void)at::layer_norm(h + d, {768}, g, b, 1e-5); };
      const auto fused = [&] { (void)cuda::add_layer_norm(h, d, g, b, 1e-5); };
      const double t2 = time_ms(two_ops, 10, iters);
      const double t1 = time_ms(fused, 10, iters);
      // Bytes the fused kernel must move: h and delta in, h and a out (fp16).
      const double bytes = 4.0 * 2.0 * m * 768;
      json row{{"op", "add_layer_norm"}, {"m", m}, {"k", 768}, {"ms", t1}, {"gbps", bytes / (t1 * 1e-3) / 1e9},
               {"two_ops_ms", t2}, {"speedup_vs_two_ops", t2 / t1}};
      if (m <= 128) {
        const double g2 = graph_ms(two_ops, 20, 20);
        const double g1 = graph_ms(fused, 20, 20);
        row["graph_ms"] = g1;
        row["two_ops_graph_ms"] = g2;
      }
      std::printf("%s\n", row.dump().c_str());
      std::fflush(stdout);
    }
    // Residual add + LayerNorm feeding c_attn (768 -> 2304) as the model runs a quantizing projection: the
    // LayerNorm writing the codes (and for LLM.int8 the rows and outlier columns) against the LayerNorm and
    // then the projection's own quantizer. Same outputs bit for bit (checked here before timing).
    {
      const Layer& L = layers[0];
      for (const int64_t m : ms) {
        const auto h = randn({m, 768}, 15 + m).to(torch::kFloat16).to(gpu());
        const auto d = randn({m, 768}, 16 + m).to(torch::kFloat16).to(gpu());
        const auto g = (randn({768}, 17, 0.2) + 1.0).to(torch::kFloat16).to(gpu());
        const auto b = randn({768}, 18, 0.1).to(torch::kFloat16).to(gpu());
        const int iters = m >= 4096 ? 50 : 200;
        struct Path {
          std::string op;
          std::function<torch::Tensor()> separate, fused;
        };
        const std::vector<Path> paths = {
            {"add_layer_norm+int8_w8a8_linear",
             [&] {
               const auto a = cuda::add_layer_norm(h, d, g, b, 1e-5).second;
               return cuda::int8_w8a8_linear(a, L.i8_q, L.i8_s, L.bias_gpu);
             },
             [&] {
               const auto qa = cuda::add_layer_norm_quantized(h, d, g, b, 1e-5, ActivationCode::kInt8).second;
               return cuda::int8_linear(qa.q, qa.scale, L.i8_q, L.i8_s, L.bias_gpu, torch::kFloat16);
             }},
            {"add_layer_norm+llm_int8_linear",
             [&] {
               const auto a = cuda::add_layer_norm(h, d, g, b, 1e-5).second;
               return cuda::llm_int8_linear(a, L.cb, L.scb, L.bias_gpu, 6.0, cuda::Int8Gemm::kAuto, false, L.llm_state);
             },
             [&] {
               const auto qa = cuda::add_layer_norm_quantized(h, d, g, b, 1e-5, ActivationCode::kLlmInt8, 6.0,
                                                              L.llm_state)
                                   .second;
               return cuda::llm_int8_linear_quantized(qa, L.cb, L.scb, L.bias_gpu, torch::kFloat16);
             }}};
        for (const auto& p : paths) {
          if (!torch::equal(p.separate(), p.fused())) {
            std::fprintf(stderr, "kernel_bench: %s M=%lld: fused and separate quantization differ\n", p.op.c_str(),
                         static_cast<long long>(m));
            return 1;
          }
          json row{{"op", p.op}, {"m", m}, {"k", 768}, {"n", L.n}, {"fused_quant_ms", time_ms(p.fused, 10, iters)},
                   {"separate_quant_ms", time_ms(p.separate, 10, iters)}};
          if (m <= 128) {
            row["fused_quant_graph_ms"] = graph_ms(p.fused, 20, 20);
            row["separate_quant_graph_ms"] = graph_ms(p.separate, 20, 20);
          }
          std::printf("%s\n", row.dump().c_str());
          std::fflush(stdout);
        }
      }
    }
    // LLM.int8 with outlier columns planted into rows clamped to +-4 (which have none), each column given one
    // |x| >= 6: what its epilogue's outlier part costs, against W8A8 on the same rows (c_attn's and mlp.c_proj's
    // shapes). The quantizer's count of outlier columns is printed beside the number planted.
    for (const size_t li : {size_t{0}, size_t{3}}) {
      const Layer& L = layers[li];
      for (const int64_t m : ms) {
        if (m < 128) continue;
        const auto base = randn({m, L.k}, 21 + m).clamp(-4.0, 4.0).to(torch::kFloat16).to(gpu());
        const int iters = m >= 4096 ? 20 : 200;
        const int warmup = m >= 4096 ? 3 : 20;
        const double w8a8 =
            time_ms([&] { (void)cuda::int8_w8a8_linear(base, L.i8_q, L.i8_s, L.bias_gpu); }, warmup, iters);
        for (const int64_t planted : {0, 8, 32, 128}) {
          auto x = base.clone();
          if (planted > 0) {
            const auto j = torch::arange(planted, torch::TensorOptions().dtype(torch::kLong).device(gpu()));
            x.index_put_({(j * 131) % m, j * (L.k / planted)}, 8.0);
          }
          const int64_t found = cuda::quantize_per_token_int8(x, 6.0).outlier_cols.sum().item<int64_t>();
          const double t = time_ms([&] {
            (void)cuda::llm_int8_linear(x, L.cb, L.scb, L.bias_gpu, 6.0, cuda::Int8Gemm::kAuto, false, L.llm_state);
          }, warmup, iters);
          std::printf("%s\n", json{{"op", "llm_int8_linear (planted outlier columns)"}, {"m", m}, {"k", L.k},
                                   {"n", L.n}, {"planted", planted}, {"outlier_columns", found}, {"ms", t},
                                   {"w8a8_ms", w8a8}, {"over_w8a8", t / w8a8}}
                                  .dump()
                                  .c_str());
          std::fflush(stdout);
        }
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kernel_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}

#endif  // EVALSVC_WITH_CUDA
