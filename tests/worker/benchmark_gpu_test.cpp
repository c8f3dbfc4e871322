// The bench job's batch-1 latency on CUDA replays the forward captured as a CUDA graph. Capture must work
// for every variant of the tiny model (no host synchronisation inside a forward), and the replay must give
// the eager forward's logits (run_benchmark checks that before it times anything, else it falls back and
// records why). Skipped without a CUDA build or a GPU.
#include "evalsvc/worker/benchmark.h"

#include <gtest/gtest.h>

namespace evalsvc::worker {
namespace {

TEST(BenchmarkGpu, BatchOneLatencyIsTimedAsCudaGraphReplaysForEveryVariant) {
#if !EVALSVC_WITH_CUDA
  GTEST_SKIP() << "built without EVALSVC_WITH_CUDA (no CUDA libtorch)";
#else
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU";
  const torch::Device dev(torch::kCUDA, 0);
  struct Case {
    kernels::Method method;
    torch::ScalarType base;
  };
  std::vector<Case> cases = {{kernels::Method::kFp32, torch::kFloat32},        {kernels::Method::kFp16, torch::kFloat16},
                             {kernels::Method::kBf16, torch::kBFloat16},       {kernels::Method::kInt8SymTensor, torch::kFloat32},
                             {kernels::Method::kInt8SymChannel, torch::kFloat16}, {kernels::Method::kInt8W8A8, torch::kFloat16},
                             {kernels::Method::kLlmInt8, torch::kFloat16},     {kernels::Method::kNf4, torch::kFloat16}};
  for (const auto& c : cases) {
    GPT2Classifier model(ModelConfig::preset("tiny"), 3);
    model->quantize(c.method, c.base, kernels::QuantOptions{});
    model->to_device(dev);
    BenchOptions o;
    o.batch_sizes = {1};
    o.seq_len = 64;
    o.warmup = 2;
    o.iters = 5;
    o.throughput_iters = 2;
    auto r = run_benchmark(model, dev, o);
    EXPECT_TRUE(r.latency.cuda_graph) << kernels::method_name(c.method) << ": " << r.latency.cuda_graph_error;
    EXPECT_GT(r.latency.p50_ms, 0.0);
  }
#endif
}

}  // namespace
}  // namespace evalsvc::worker
