#include "evalsvc/worker/benchmark.h"

#include <algorithm>
#include <chrono>
#include <functional>
#include <optional>
#include <numeric>

#include "evalsvc/common/error.h"
#include "evalsvc/worker/device.h"
#include "evalsvc/worker/evaluate.h"

#if EVALSVC_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "evalsvc/kernels/cuda_ops.h"
#endif

#include "evalsvc/common/log.h"

namespace evalsvc::worker {

namespace {

using Clock = std::chrono::steady_clock;

void reset_peak(const torch::Device& d) {
#if EVALSVC_WITH_CUDA
  if (d.is_cuda()) c10::cuda::CUDACachingAllocator::resetPeakStats(d.index());
#else
  (void)d;
#endif
}

int64_t peak_bytes(const torch::Device& d) {
#if EVALSVC_WITH_CUDA
  if (d.is_cuda()) {
    auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(d.index());
    return stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)].peak;
  }
#else
  (void)d;
#endif
  return -1;
}

std::pair<torch::Tensor, torch::Tensor> random_batch(const GPT2Classifier& model, int64_t B, int64_t T,
                                                     const torch::Device& device) {
  // Token ids below 50,000 are ordinary BPE tokens; padding is not needed: every row is T long.
  auto ids = torch::randint(0, std::min<int64_t>(model->config().vocab_size - 1, 50000), {B, T}, torch::kLong).to(device);
  auto lengths = torch::full({B}, T, torch::kLong).to(device);
  return {ids, lengths};
}

#if EVALSVC_WITH_CUDA
/// One forward captured as a CUDA graph: replaying it launches every kernel of the forward with one call,
/// which is what serving at batch 1 does (the peer's torch.compile mode reduce-overhead does the same).
struct CapturedForward {
  std::unique_ptr<at::cuda::CUDAGraph> graph;
  torch::Tensor out;  ///< written by every replay
};

/// Captures model->forward(ids, lengths) and checks one replay against an eager forward. nullopt (and
/// `why`) when the forward cannot be captured (a host synchronisation inside it, say) or the replay
/// disagrees: the caller then times eager forwards, and says so.
std::optional<CapturedForward> capture_forward(GPT2Classifier& model, const torch::Tensor& ids,
                                               const torch::Tensor& lengths, const torch::Device& device,
                                               std::string& why) {
  CapturedForward c;
  c.graph = std::make_unique<at::cuda::CUDAGraph>();
  bool capturing = false;
  try {
    const torch::Tensor eager = model->forward(ids, lengths).to(torch::kFloat32);
    // Capture needs a non-default stream; warm up on it first (lazy initialisation, library workspaces).
    c10::cuda::CUDAStream stream = c10::cuda::getStreamFromPool(false, device.index());
    {
      c10::cuda::CUDAStreamGuard guard(stream);
      for (int i = 0; i < 3; ++i) model->forward(ids, lengths);
      stream.synchronize();
      capturing = true;
      c.graph->capture_begin();
      c.out = model->forward(ids, lengths);
      c.graph->capture_end();
      capturing = false;
    }
    c.graph->replay();
    synchronize(device);
    const double diff = (c.out.to(torch::kFloat32) - eager).abs().max().item<double>();
    if (!(diff <= 1e-3)) {
      why = fmt::format("the replayed graph's logits differ from an eager forward's by {}", diff);
      return std::nullopt;
    }
    return c;
  } catch (const std::exception& e) {
    if (capturing) {
      try {
        c.graph->capture_end();  // leave capture mode so the device stays usable
      } catch (const std::exception&) {
      }
    }
    why = e.what();
    return std::nullopt;
  }
}
#endif

}  // namespace

nlohmann::json TestSetRate::to_json() const {
  return {{"rows", rows},
          {"batch_size", batch_size},
          {"seconds", seconds},
          {"samples_per_s", samples_per_s},
          {"peak_memory_bytes", peak_memory_bytes}};
}

TestSetRate run_test_set_rate(GPT2Classifier& model, const TokenizedDataset& data, int64_t batch_size,
                              const torch::Device& device) {
  EVALSVC_CHECK(data.size() > 0, InputError, "test-set rate: the dataset has no rows");
  EVALSVC_CHECK(batch_size >= 1, InputError, "test-set rate: batch size must be >= 1, got {}", batch_size);
  // Warm-up: one untimed pass over all rows. Dynamic padding gives every batch its own length, and the first
  // forward of each shape pays kernel loading and selection and allocator growth. A warm-up of two batches
  // left most shapes cold: on an H200 the first variants of a process measured 17,500 rows/s in fp16 while
  // later ones, whose shapes an earlier variant had met, measured up to 42,000.
  (void)predict(model, data, batch_size, device);
  synchronize(device);
  reset_peak(device);
  const Predictions p = predict(model, data, batch_size, device);
  TestSetRate r;
  r.rows = static_cast<int64_t>(data.size());
  r.batch_size = batch_size;
  r.seconds = p.seconds;
  r.samples_per_s = p.seconds > 0 ? static_cast<double>(r.rows) / p.seconds : 0.0;
  r.peak_memory_bytes = peak_bytes(device);
  return r;
}

double percentile(std::vector<double> v, double q) {
  EVALSVC_CHECK(!v.empty(), InputError, "percentile of no values");
  std::sort(v.begin(), v.end());
  const double pos = q * static_cast<double>(v.size() - 1);
  const size_t lo = static_cast<size_t>(pos);
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - static_cast<double>(lo));
}

nlohmann::json BenchResult::to_json() const {
  nlohmann::json j;
  j["latency"] = {{"batch_size", 1},       {"p50_ms", latency.p50_ms}, {"p90_ms", latency.p90_ms},
                  {"p99_ms", latency.p99_ms}, {"mean_ms", latency.mean_ms}, {"runs", latency.runs},
                  {"peak_memory_bytes", latency_peak_memory_bytes}, {"cuda_graph", latency.cuda_graph},
                  {"last_block_pruned", latency.last_block_pruned}};
  if (!latency.cuda_graph_error.empty()) j["latency"]["cuda_graph_error"] = latency.cuda_graph_error;
  j["weight_prefetch"] = weight_prefetch;
  j["l2_prefetch"] = l2_prefetch;
  j["pdl_used"] = pdl_used;
  j["sweep"] = nlohmann::json::array();
  for (const auto& p : sweep) {
    j["sweep"].push_back({{"batch_size", p.batch_size},
                          {"samples_per_s", p.samples_per_s},
                          {"ms_per_batch", p.ms_per_batch},
                          {"peak_memory_bytes", p.peak_memory_bytes},
                          {"last_block_pruned", p.last_block_pruned}});
  }
  return j;
}

BenchResult run_benchmark(GPT2Classifier& model, const torch::Device& device, const BenchOptions& o) {
  EVALSVC_CHECK(o.seq_len >= 1 && o.seq_len <= model->config().n_positions, InputError,
                "bench seq_len {} outside [1, {}]", o.seq_len, model->config().n_positions);
  EVALSVC_CHECK(o.iters >= 1 && o.warmup >= 0, InputError, "bench needs iters >= 1 and warmup >= 0");
  model->eval();
  torch::NoGradGuard ng;
  BenchResult r;
#if EVALSVC_WITH_CUDA
  r.pdl_used = device.is_cuda() && kernels::cuda::programmatic_launch();  // process-wide, read at each launch
#endif
#if EVALSVC_WITH_CUDA && EVALSVC_TORCH_AT_LEAST(2, 0)
  if (device.is_cuda()) {
    // cuBLAS keeps a workspace (tens of MB) for every stream it has run on, for the life of the process: the
    // capture streams of variants timed earlier in this process would otherwise count in this one's peak memory.
    synchronize(device);
    at::cuda::clearCublasWorkspaces();
  }
#endif

  // Latency: batch 1, one device-synchronised forward per sample; on CUDA a replay of the forward captured
  // as a CUDA graph (o.cuda_graph), eager where it cannot be captured.
  {
    auto [ids, lengths] = random_batch(model, 1, o.seq_len, device);
    for (int64_t i = 0; i < o.warmup; ++i) model->forward(ids, lengths);
    synchronize(device);
    reset_peak(device);
    std::function<void()> forward = [&model, &ids = ids, &lengths = lengths] { model->forward(ids, lengths); };
#if EVALSVC_WITH_CUDA
    std::optional<CapturedForward> captured;
    if (device.is_cuda() && o.cuda_graph) {
      std::string why;
      captured = capture_forward(model, ids, lengths, device, why);
      if (captured) {
        forward = [&captured] { captured->graph->replay(); };
        for (int64_t i = 0; i < o.warmup; ++i) forward();
        synchronize(device);
        r.latency.cuda_graph = true;
      } else {
        spdlog::warn("bench: batch-1 forward not captured as a CUDA graph ({}); timing eager forwards", why);
        r.latency.cuda_graph_error = why;
      }
    }
#endif
    std::vector<double> ms;
    ms.reserve(static_cast<size_t>(o.iters));
    for (int64_t i = 0; i < o.iters; ++i) {
      const auto t0 = Clock::now();
      forward();
      synchronize(device);
      ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    }
    r.latency.runs = o.iters;
    r.latency.p50_ms = percentile(ms, 0.50);
    r.latency.p90_ms = percentile(ms, 0.90);
    r.latency.p99_ms = percentile(ms, 0.99);
    r.latency.mean_ms = std::accumulate(ms.begin(), ms.end(), 0.0) / static_cast<double>(ms.size());
    r.latency_peak_memory_bytes = peak_bytes(device);
    r.weight_prefetch = model->prefetched_last_forward();
    r.l2_prefetch = model->l2_prefetched_last_forward();
    r.latency.last_block_pruned = model->pruned_last_block_last_forward();
  }

  // Throughput sweep: fixed sequence length, one batch shape per point.
  for (int64_t B : o.batch_sizes) {
    EVALSVC_CHECK(B >= 1, InputError, "bench batch size {} < 1", B);
    auto [ids, lengths] = random_batch(model, B, o.seq_len, device);
    const int64_t warm = std::max<int64_t>(1, std::min<int64_t>(o.warmup, 5));
    for (int64_t i = 0; i < warm; ++i) model->forward(ids, lengths);
    synchronize(device);
    reset_peak(device);
    // Size the timed loop from one probe run so every point takes about the same wall time.
    auto t0 = Clock::now();
    model->forward(ids, lengths);
    synchronize(device);
    const double probe = std::chrono::duration<double>(Clock::now() - t0).count();
    int64_t runs = o.throughput_iters > 0 ? o.throughput_iters
                                          : std::clamp<int64_t>(static_cast<int64_t>(2.0 / std::max(probe, 1e-6)), 5, 200);
    t0 = Clock::now();
    for (int64_t i = 0; i < runs; ++i) model->forward(ids, lengths);
    synchronize(device);
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    ThroughputPoint p;
    p.batch_size = B;
    p.ms_per_batch = 1000.0 * s / static_cast<double>(runs);
    p.samples_per_s = static_cast<double>(B * runs) / s;
    p.peak_memory_bytes = peak_bytes(device);
    p.last_block_pruned = model->pruned_last_block_last_forward();
    r.sweep.push_back(p);
  }
  return r;
}

}  // namespace evalsvc::worker
