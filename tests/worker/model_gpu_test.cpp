// Every variant's forward on the GPU (fused residual-add + LayerNorm, GELU in the product epilogues, the
// CUDA kernels) against the same model's forward on the CPU, where every op is the plain reference.
// Skipped without a CUDA build or a GPU.
#include <gtest/gtest.h>

#include <fmt/format.h>

#if EVALSVC_WITH_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#endif

#include "evalsvc/kernels/cuda_ops.h"
#include "evalsvc/worker/gpt2.h"

namespace evalsvc::worker {
namespace {

#if EVALSVC_WITH_CUDA
// The forward on (ids, lengths) captured into `graph` on a pool stream, after one forward there; returns the
// logits tensor that each replay rewrites.
torch::Tensor capture_forward(GPT2Classifier& model, const torch::Tensor& ids, const torch::Tensor& lengths,
                              at::cuda::CUDAGraph& graph) {
  const c10::cuda::CUDAStreamGuard guard(c10::cuda::getStreamFromPool(false, 0));
  model->forward(ids, lengths);
  c10::cuda::getCurrentCUDAStream(0).synchronize();
  graph.capture_begin();
  auto out = model->forward(ids, lengths);
  graph.capture_end();
  return out;
}

// A variant of `cfg` with seed-3 weights, quantized and moved to `dev`.
GPT2Classifier gpu_variant(const ModelConfig& cfg, kernels::Method method, torch::ScalarType base,
                           const torch::Device& dev) {
  GPT2Classifier model(cfg, 3);
  model->quantize(method, base, kernels::QuantOptions{});
  model->to_device(dev);
  return model;
}

// Two batches of 4 x 48 ids (192 tokens) and lengths of 48, 30, 1 and 17 tokens, on `dev`.
struct FourRows {
  torch::Tensor ids, ids2, lengths;
};
FourRows four_rows(const ModelConfig& cfg, uint64_t seed, const torch::Device& dev) {
  auto gen = at::detail::createCPUGenerator(seed);
  auto ids = torch::randint(0, cfg.vocab_size, {4, 48}, gen, torch::kLong).to(dev);
  auto ids2 = torch::randint(0, cfg.vocab_size, {4, 48}, gen, torch::kLong).to(dev);
  return {ids, ids2, torch::tensor({48, 30, 1, 17}, torch::kLong).to(dev)};
}
#endif

TEST(ModelGpu, EveryVariantsGpuForwardMatchesItsCpuForward) {
#if !EVALSVC_WITH_CUDA
  GTEST_SKIP() << "built without EVALSVC_WITH_CUDA (no CUDA libtorch)";
#else
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU";
  const torch::Device dev(torch::kCUDA, 0);
  struct Case {
    kernels::Method method;
    torch::ScalarType base;
    double tol;  // max |gpu - cpu| / max |cpu| over the logits
  };
  // The CPU forward keeps activations in fp32 (weights rounded as the variant stores them); the GPU rounds
  // every activation to the base dtype, so half-precision variants differ by a few activation ulps.
  std::vector<Case> cases = {{kernels::Method::kFp32, torch::kFloat32, 1e-4},
                             {kernels::Method::kFp16, torch::kFloat16, 3e-2},
                             {kernels::Method::kBf16, torch::kBFloat16, 6e-2},
                             {kernels::Method::kInt8SymTensor, torch::kFloat16, 3e-2},
                             {kernels::Method::kInt8SymChannel, torch::kFloat16, 3e-2},
                             {kernels::Method::kInt8W8A8, torch::kFloat16, 3e-2},
                             {kernels::Method::kLlmInt8, torch::kFloat16, 3e-2},
                             {kernels::Method::kNf4, torch::kFloat16, 3e-2}};
  if (kernels::cuda::fp8_supported(dev)) cases.push_back({kernels::Method::kFp8E4M3, torch::kBFloat16, 6e-2});
  torch::NoGradGuard no_grad;
  const auto cfg = ModelConfig::preset("tiny");
  auto gen = at::detail::createCPUGenerator(11);
  const auto ids = torch::randint(0, cfg.vocab_size, {4, 48}, gen, torch::kLong);
  const auto lengths = torch::tensor({48, 30, 1, 17}, torch::kLong);
  for (const auto& c : cases) {
    const auto name = kernels::method_name(c.method);
    GPT2Classifier cpu_model(cfg, 3);
    cpu_model->quantize(c.method, c.base, kernels::QuantOptions{});
    GPT2Classifier gpu_model(cfg, 3);
    gpu_model->quantize(c.method, c.base, kernels::QuantOptions{});
    gpu_model->to_device(dev);
    const auto want = cpu_model->forward(ids, lengths);
    const auto got = gpu_model->forward(ids.to(dev), lengths.to(dev)).cpu();
    ASSERT_EQ(got.sizes(), want.sizes()) << name;
    const double scale = want.abs().max().item<double>();
    const double err = (got - want).abs().max().item<double>();
    EXPECT_LE(err, c.tol * scale) << fmt::format("{} on {}: max |gpu - cpu| {} against max |logit| {}", name,
                                                 c10::toString(c.base), err, scale);
  }
#endif
}

// The residual add + LayerNorm writes the input codes of W8A8, FP8 and LLM.int8 projections (rows of 256 to 1,024
// take that kernel, hence a width of 256 here); with it off each projection quantizes in a pass of its own. The
// logits must be the same bit for bit, from 2,048 tokens (a warp a row) and below (a warp group a row).
TEST(ModelGpu, FusedInputQuantizationGivesTheLogitsOfTheSeparateQuantizers) {
#if !EVALSVC_WITH_CUDA
  GTEST_SKIP() << "built without EVALSVC_WITH_CUDA (no CUDA libtorch)";
#else
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU";
  const torch::Device dev(torch::kCUDA, 0);
  torch::NoGradGuard no_grad;
  auto cfg = ModelConfig::preset("tiny");
  cfg.n_embd = 256;
  std::vector<std::pair<kernels::Method, torch::ScalarType>> cases = {{kernels::Method::kInt8W8A8, torch::kFloat16},
                                                                      {kernels::Method::kLlmInt8, torch::kFloat16}};
  if (kernels::cuda::fp8_supported(dev)) cases.emplace_back(kernels::Method::kFp8E4M3, torch::kBFloat16);
  auto gen = at::detail::createCPUGenerator(13);
  // 16 x 128 = 2,048 tokens take the one-warp kernels, 15 x 128 = 1,920 and 1 x 128 the warp-group ones.
  const auto ids = torch::randint(0, cfg.vocab_size, {16, 128}, gen, torch::kLong).to(dev);
  const auto lengths = torch::randint(1, 129, {16}, gen, torch::kLong).to(dev);
  for (const auto& [method, base] : cases) {
    for (const int64_t batch : {16, 15, 1}) {
      const auto what = fmt::format("{}, {} tokens", kernels::method_name(method), batch * 128);
      GPT2Classifier model(cfg, 5);
      model->quantize(method, base, kernels::QuantOptions{});
      model->to_device(dev);
      const auto rows = ids.slice(0, 0, batch);
      const auto lens = lengths.slice(0, 0, batch);
      const auto fused = model->forward(rows, lens);
      EXPECT_TRUE(model->fused_input_quantization_last_forward()) << what;
      model->set_fused_input_quantization(false);
      const auto separate = model->forward(rows, lens);
      EXPECT_FALSE(model->fused_input_quantization_last_forward()) << what;
      EXPECT_TRUE(torch::equal(fused, separate)) << what << ": max diff " << (fused - separate).abs().max().item<double>();
    }
  }
#endif
}

// Weight prefetch (GPT2ClassifierImpl::set_weight_prefetch) dequantizes block i+1 on a side stream while block i
// runs: the logits must be those of the plain path bit for bit, and the forward must stay capturable as a CUDA
// graph (the side stream forks from and joins the capturing stream) whose replays recompute from new inputs.
TEST(ModelGpu, WeightPrefetchGivesIdenticalLogitsEagerAndInACudaGraph) {
#if !EVALSVC_WITH_CUDA
  GTEST_SKIP() << "built without EVALSVC_WITH_CUDA (no CUDA libtorch)";
#else
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU";
  const torch::Device dev(torch::kCUDA, 0);
  // fp32 bases never prefetch (their products keep every SM busy): the switch must leave them unchanged too.
  struct Case {
    kernels::Method method;
    torch::ScalarType base;
    bool prefetches;
  };
  const std::vector<Case> cases = {{kernels::Method::kInt8SymTensor, torch::kFloat16, true},
                                   {kernels::Method::kInt8SymTensor, torch::kFloat32, false},
                                   {kernels::Method::kInt8SymChannel, torch::kFloat16, true},
                                   {kernels::Method::kNf4, torch::kFloat16, true},
                                   {kernels::Method::kNf4, torch::kBFloat16, true}};
  torch::NoGradGuard no_grad;
  // Five blocks: with flags each half's slot is rewritten four times a forward; with events both slots are reused
  // and the last block lands in slot 0.
  auto cfg = ModelConfig::preset("tiny");
  cfg.n_layer = 5;
  const auto [ids, ids2, lengths] = four_rows(cfg, 12, dev);
  for (const auto& [method, base, prefetches] : cases) {
    const auto what = fmt::format("{} on {}", kernels::method_name(method), c10::toString(base));
    auto on = gpu_variant(cfg, method, base, dev), off = gpu_variant(cfg, method, base, dev);
    off->set_weight_prefetch(false);
    const auto want = off->forward(ids, lengths);
    EXPECT_FALSE(off->prefetched_last_forward()) << what;
    const auto got = on->forward(ids, lengths);
    EXPECT_EQ(on->prefetched_last_forward(), prefetches) << what;
    EXPECT_TRUE(torch::equal(got, want)) << what << ": max diff " << (got - want).abs().max().item<double>();
    // Twice in a row: the second forward's first blocks reuse slots the first one's last blocks read.
    EXPECT_TRUE(torch::equal(on->forward(ids2, lengths), off->forward(ids2, lengths))) << what << " (second call)";
    // The main stream told of the copies by an event wait before each block (whole blocks in two slots) instead of
    // flags that the add + LayerNorm before each half waits for (set_prefetch_flags, the default).
    auto events = gpu_variant(cfg, method, base, dev);
    events->set_prefetch_flags(false);
    EXPECT_TRUE(torch::equal(events->forward(ids, lengths), want)) << what << " (events)";
    EXPECT_TRUE(torch::equal(events->forward(ids2, lengths), off->forward(ids2, lengths))) << what << " (events, again)";

    // Replays with new inputs, with either, and eager forwards between them that reuse the slots and flags.
    for (auto* m : {&on, &events}) {
      auto static_ids = ids.clone();
      at::cuda::CUDAGraph graph;
      const auto out = capture_forward(*m, static_ids, lengths, graph);
      for (int r = 0; r < 3; ++r) {
        const auto& in = r % 2 == 0 ? ids2 : ids;
        static_ids.copy_(in);
        graph.replay();
        torch::cuda::synchronize();
        const auto want_r = off->forward(in, lengths);
        const double diff = (out - want_r).abs().max().item<double>();
        EXPECT_LE(diff, 1e-3 * want_r.abs().max().item<double>())
            << what << (m == &events ? " (events)" : "") << ": graph replay " << r << " against eager";
        (*m)->forward(ids, lengths);
      }
    }
  }
  // nf4 at 8 tokens runs its fused kernels (no dense weight), so nothing is prefetched.
  auto nf4 = gpu_variant(cfg, kernels::Method::kNf4, torch::kFloat16, dev);
  nf4->forward(ids.slice(1, 0, 8).slice(0, 0, 1), torch::tensor({8}, torch::kLong).to(dev));
  EXPECT_FALSE(nf4->prefetched_last_forward());
#endif
}

// The L2 prefetch (set_l2_prefetch) only warms the cache, and only in a captured forward of variants on fp16 / bf16
// that do not quantize their activations and read their stored weights: replays of a graph captured with it give
// the logits of the forward without it bit for bit (its side stream forks from and joins the captured stream);
// eager forwards, the other variants, weight-only ones with their dense-copy prefetch and forwards above
// kL2PrefetchMaxTokens do not use it.
TEST(ModelGpu, L2PrefetchRunsInCapturedHalfPrecisionForwardsAndGivesIdenticalLogits) {
#if !EVALSVC_WITH_CUDA
  GTEST_SKIP() << "built without EVALSVC_WITH_CUDA (no CUDA libtorch)";
#else
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU";
  const torch::Device dev(torch::kCUDA, 0);
  struct Case {
    kernels::Method method;
    torch::ScalarType base;
    bool weight_prefetch;  // the dense-copy prefetch on
    bool warms;            // the captured forward uses the L2 prefetch
  };
  std::vector<Case> cases = {{kernels::Method::kFp16, torch::kFloat16, true, true},
                             {kernels::Method::kBf16, torch::kBFloat16, true, true},
                             {kernels::Method::kFp32, torch::kFloat32, true, false},
                             {kernels::Method::kInt8W8A8, torch::kFloat16, true, false},
                             {kernels::Method::kLlmInt8, torch::kFloat16, true, false},
                             {kernels::Method::kNf4, torch::kFloat16, false, true},  // its codes, dequantized per product
                             {kernels::Method::kInt8SymChannel, torch::kFloat16, true, false}};
  if (kernels::cuda::fp8_supported(dev)) cases.push_back({kernels::Method::kFp8E4M3, torch::kBFloat16, true, false});
  torch::NoGradGuard no_grad;
  const auto cfg = ModelConfig::preset("tiny");
  const auto [ids, ids2, lengths] = four_rows(cfg, 13, dev);
  for (const auto& [method, base, weight_prefetch, warms] : cases) {
    const auto what = fmt::format("{} on {}", kernels::method_name(method), c10::toString(base));
    auto on = gpu_variant(cfg, method, base, dev), off = gpu_variant(cfg, method, base, dev);
    on->set_weight_prefetch(weight_prefetch);
    off->set_weight_prefetch(weight_prefetch);
    off->set_l2_prefetch(false);
    const auto eager = on->forward(ids, lengths);
    EXPECT_FALSE(on->l2_prefetched_last_forward()) << what << ": eager";
    EXPECT_TRUE(torch::equal(eager, off->forward(ids, lengths))) << what << ": eager";

    auto static_ids = ids.clone();
    at::cuda::CUDAGraph graph_on, graph_off;
    const auto out_on = capture_forward(on, static_ids, lengths, graph_on);
    EXPECT_EQ(on->l2_prefetched_last_forward(), warms) << what << ": captured";
    const auto out_off = capture_forward(off, static_ids, lengths, graph_off);
    EXPECT_FALSE(off->l2_prefetched_last_forward()) << what << ": captured, switched off";
    for (const auto* in : {&ids2, &ids}) {
      static_ids.copy_(*in);
      graph_on.replay();
      graph_off.replay();
      torch::cuda::synchronize();
      EXPECT_TRUE(torch::equal(out_on, out_off))
          << what << ": replays with and without, max diff " << (out_on - out_off).abs().max().item<double>();
    }
  }
  // Above kL2PrefetchMaxTokens tokens the products are compute-bound and nothing is warmed, captured or not.
  auto big = gpu_variant(cfg, kernels::Method::kFp16, torch::kFloat16, dev);
  const int64_t rows = GPT2ClassifierImpl::kL2PrefetchMaxTokens / 64 + 1;
  auto big_ids = torch::randint(0, cfg.vocab_size, {rows, 64}, torch::kLong).to(dev);
  at::cuda::CUDAGraph graph;
  capture_forward(big, big_ids, torch::full({rows}, 64, torch::kLong).to(dev), graph);
  EXPECT_FALSE(big->l2_prefetched_last_forward());
#endif
}

// Programmatic dependent launch (kernels::cuda::set_programmatic_launch): the add + LayerNorms, the quantizers and
// the 8-bit products may be scheduled before the kernel ahead of them finishes and wait for it on the device. The
// logits must be those of plain launches bit for bit, eager and as replays of a CUDA graph (programmatic edges)
// alternating between two inputs, so that a kernel reading before its wait would see the other input's values.
// Width 256, where the warp LayerNorm kernels run; 1 x 128 tokens (the bench's batch-1 shape) and 16 x 128.
TEST(ModelGpu, ProgrammaticLaunchGivesIdenticalLogitsEagerAndInACudaGraph) {
#if !EVALSVC_WITH_CUDA
  GTEST_SKIP() << "built without EVALSVC_WITH_CUDA (no CUDA libtorch)";
#else
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU";
  const torch::Device dev(torch::kCUDA, 0);
  struct Restore {
    ~Restore() { kernels::cuda::set_programmatic_launch(true); }
  } restore;
  kernels::cuda::set_programmatic_launch(true);
  int major = 0;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0);
  EXPECT_EQ(kernels::cuda::programmatic_launch(), major >= 9);  // what the launches below use
  std::vector<std::pair<kernels::Method, torch::ScalarType>> cases = {
      {kernels::Method::kFp16, torch::kFloat16},     {kernels::Method::kInt8W8A8, torch::kFloat16},
      {kernels::Method::kLlmInt8, torch::kFloat16},  {kernels::Method::kInt8SymChannel, torch::kFloat16},
      {kernels::Method::kNf4, torch::kFloat16}};
  if (kernels::cuda::fp8_supported(dev)) cases.emplace_back(kernels::Method::kFp8E4M3, torch::kBFloat16);
  torch::NoGradGuard no_grad;
  auto cfg = ModelConfig::preset("tiny");
  cfg.n_embd = 256;
  auto gen = at::detail::createCPUGenerator(15);
  const auto ids = torch::randint(0, cfg.vocab_size, {16, 128}, gen, torch::kLong).to(dev);
  const auto ids2 = torch::randint(0, cfg.vocab_size, {16, 128}, gen, torch::kLong).to(dev);
  const auto lengths = torch::randint(1, 129, {16}, gen, torch::kLong).to(dev);
  for (const auto& [method, base] : cases) {
    GPT2Classifier model(cfg, 7);
    model->quantize(method, base, kernels::QuantOptions{});
    model->to_device(dev);
    for (const int64_t batch : {1, 16}) {
      const auto what = fmt::format("{}, {} tokens", kernels::method_name(method), batch * 128);
      const auto rows = ids.slice(0, 0, batch), rows2 = ids2.slice(0, 0, batch);
      const auto lens = batch == 1 ? torch::full({1}, 128, torch::kLong).to(dev) : lengths;
      kernels::cuda::set_programmatic_launch(false);
      const auto want = model->forward(rows, lens), want2 = model->forward(rows2, lens);
      auto static_off = rows.clone();
      at::cuda::CUDAGraph graph_off;
      const auto out_off = capture_forward(model, static_off, lens, graph_off);
      kernels::cuda::set_programmatic_launch(true);
      const auto got = model->forward(rows, lens);
      EXPECT_TRUE(torch::equal(got, want)) << what << ": max diff " << (got - want).abs().max().item<double>();
      auto static_on = rows.clone();
      at::cuda::CUDAGraph graph_on;
      const auto out_on = capture_forward(model, static_on, lens, graph_on);
      for (int i = 0; i < 8; ++i) {
        const auto& in = i % 2 == 0 ? rows2 : rows;
        static_on.copy_(in);
        static_off.copy_(in);
        graph_on.replay();
        graph_off.replay();
        torch::cuda::synchronize();
        EXPECT_TRUE(torch::equal(out_on, out_off)) << what << ", replay " << i << ": max diff "
                                                   << (out_on - out_off).abs().max().item<double>();
        const auto& eager = i % 2 == 0 ? want2 : want;
        const double diff = (out_on - eager).abs().max().item<double>();
        EXPECT_LE(diff, 1e-3 * eager.abs().max().item<double>()) << what << ", replay " << i << " against eager";
      }
    }
  }
#endif
}

// The last block at the read positions only (set_last_block) against the full last block, on the GPU's
// kernels: the same logits up to the rounding of another attention kernel, at 4 right-padded rows and at one
// full row of 128 tokens (the bench's batch-1 shape, where the last block's products see a single row).
TEST(ModelGpu, LastBlockAtTheReadPositionsGivesTheFullBlocksLogits) {
#if !EVALSVC_WITH_CUDA
  GTEST_SKIP() << "built without EVALSVC_WITH_CUDA (no CUDA libtorch)";
#else
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU";
  const torch::Device dev(torch::kCUDA, 0);
  struct Case {
    kernels::Method method;
    torch::ScalarType base;
    double tol;  // max |pruned - full| / max |full| over the logits
  };
  // LLM.int8 chooses its outlier columns over all rows of a product, fewer rows may choose fewer (model_test.cpp).
  std::vector<Case> cases = {{kernels::Method::kFp16, torch::kFloat16, 1e-2},
                             {kernels::Method::kBf16, torch::kBFloat16, 2e-2},
                             {kernels::Method::kInt8SymChannel, torch::kFloat16, 1e-2},
                             {kernels::Method::kInt8W8A8, torch::kFloat16, 1e-2},
                             {kernels::Method::kNf4, torch::kFloat16, 1e-2},
                             {kernels::Method::kLlmInt8, torch::kFloat16, 3e-2}};
  if (kernels::cuda::fp8_supported(dev)) cases.push_back({kernels::Method::kFp8E4M3, torch::kBFloat16, 2e-2});
  torch::NoGradGuard no_grad;
  const auto cfg = ModelConfig::preset("tiny");
  auto gen = at::detail::createCPUGenerator(14);
  const std::vector<std::pair<torch::Tensor, torch::Tensor>> batches = {
      {torch::randint(0, cfg.vocab_size, {4, 48}, gen, torch::kLong), torch::tensor({48, 30, 1, 17}, torch::kLong)},
      {torch::randint(0, cfg.vocab_size, {1, 128}, gen, torch::kLong), torch::tensor({128}, torch::kLong)}};
  for (const auto& c : cases) {
    GPT2Classifier model(cfg, 6);
    model->quantize(c.method, c.base, kernels::QuantOptions{});
    model->to_device(dev);
    for (const auto& [ids, lengths] : batches) {
      const auto what = fmt::format("{}, batch {}", kernels::method_name(c.method), ids.size(0));
      model->set_last_block(GPT2ClassifierImpl::LastBlock::kPruned);
      const auto pruned = model->forward(ids.to(dev), lengths.to(dev)).cpu();
      EXPECT_TRUE(model->pruned_last_block_last_forward()) << what;
      model->set_last_block(GPT2ClassifierImpl::LastBlock::kFull);
      const auto full = model->forward(ids.to(dev), lengths.to(dev)).cpu();
      const double scale = full.abs().max().item<double>();
      const double err = (pruned - full).abs().max().item<double>();
      EXPECT_LE(err, c.tol * scale) << fmt::format("{}: max |pruned - full| {} against max |logit| {}", what, err,
                                                   scale);
    }
    // The pruned forward captured as a CUDA graph (the gathers and the masked attention included) and replayed.
    model->set_last_block(GPT2ClassifierImpl::LastBlock::kPruned);
    const auto static_ids = batches[0].first.to(dev);
    const auto lengths = batches[0].second.to(dev);
    const auto eager = model->forward(static_ids, lengths).cpu();
    at::cuda::CUDAGraph graph;
    const auto out = capture_forward(model, static_ids, lengths, graph);
    graph.replay();
    torch::cuda::synchronize();
    const double diff = (out.cpu() - eager).abs().max().item<double>();
    EXPECT_LE(diff, 1e-3 * eager.abs().max().item<double>()) << kernels::method_name(c.method) << ": graph replay";
  }
#endif
}

}  // namespace
}  // namespace evalsvc::worker
