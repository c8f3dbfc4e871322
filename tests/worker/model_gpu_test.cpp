// Every variant's forward on the GPU (fused residual-add + LayerNorm, GELU in the product epilogues, the
// CUDA kernels) against the same model's forward on the CPU, where every op is the plain reference.
// Skipped without a CUDA build or a GPU.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include "evalsvc/kernels/cuda_ops.h"
#include "evalsvc/worker/gpt2.h"

namespace evalsvc::worker {
namespace {

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

}  // namespace
}  // namespace evalsvc::worker
