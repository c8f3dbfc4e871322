#pragma once
// The bench job's measurements (SPEC section 3): batch-1 latency percentiles at a fixed sequence length,
// the throughput sweep over batch sizes, and peak device memory. Model forward only, inputs already on the
// device, device-synchronised timings.
#include <vector>

#include <nlohmann/json.hpp>

#include "evalsvc/worker/dataset.h"
#include "evalsvc/worker/gpt2.h"

namespace evalsvc::worker {

struct BenchOptions {
  std::vector<int64_t> batch_sizes = {1, 8, 32, 128, 512};
  int64_t seq_len = 128;
  int64_t warmup = 20;
  int64_t iters = 200;          ///< timed runs for latency (batch 1)
  int64_t throughput_iters = 0; ///< timed runs per batch size in the sweep; 0 = enough for ~2 s or >= 5 runs
  /// On CUDA, time batch-1 latency as replays of the forward captured once as a CUDA graph (how a serving
  /// system runs batch 1: one launch instead of hundreds), falling back to eager when capture fails.
  bool cuda_graph = true;
};

struct LatencyStats {
  double p50_ms = 0, p90_ms = 0, p99_ms = 0, mean_ms = 0;
  int64_t runs = 0;
  bool cuda_graph = false;        ///< timed as CUDA graph replays
  bool last_block_pruned = false; ///< the last block ran at the read positions only (GPT2Classifier::set_last_block)
  std::string cuda_graph_error;   ///< why capture was not used, when it was tried and failed
};

struct ThroughputPoint {
  int64_t batch_size = 0;
  double samples_per_s = 0;
  double ms_per_batch = 0;
  int64_t peak_memory_bytes = -1;  ///< CUDA only; -1 where not measured (CPU)
  bool last_block_pruned = false;  ///< as in LatencyStats
};

struct BenchResult {
  LatencyStats latency;                    ///< batch 1, seq_len tokens
  bool weight_prefetch = false;            ///< the batch-1 forward dequantized ahead (GPT2Classifier::set_weight_prefetch)
  bool l2_prefetch = false;                ///< the batch-1 forward warmed L2 ahead of each block (set_l2_prefetch)
  bool pdl_used = false;  ///< qbench's chained kernels used programmatic dependent launch (CUDA, compute capability 9.0+)
  int64_t latency_peak_memory_bytes = -1;  ///< CUDA only
  std::vector<ThroughputPoint> sweep;
  nlohmann::json to_json() const;
};

/// Times `model` (already on `device`, eval mode) on random token ids of length seq_len.
BenchResult run_benchmark(GPT2Classifier& model, const torch::Device& device, const BenchOptions& options);

/// The rate over real test rows: batches of rows of similar length, each padded only to its longest row
/// (dynamic padding, as the eval shards run), forward only. Unlike the eval shards' end-to-end rate it
/// excludes tokenization and database writes. A GPU worker has its GPU to itself; CPU workers of one host
/// share its cores, so there the rate depends on what the other workers run meanwhile.
struct TestSetRate {
  int64_t rows = 0;
  int64_t batch_size = 0;
  double seconds = 0;               ///< the timed pass, device-synchronised
  double samples_per_s = 0;
  int64_t peak_memory_bytes = -1;   ///< CUDA only; -1 where not measured (CPU)
  nlohmann::json to_json() const;
};

/// One untimed pass over all of `data` (warm-up: every padded length once, for kernel selection and
/// allocator growth), then one timed pass over all of it. InputError for an empty dataset or batch_size < 1.
TestSetRate run_test_set_rate(GPT2Classifier& model, const TokenizedDataset& data, int64_t batch_size,
                              const torch::Device& device);

/// Percentiles by linear interpolation between order statistics (numpy's default); `values` is copied.
double percentile(std::vector<double> values, double q);

}  // namespace evalsvc::worker
