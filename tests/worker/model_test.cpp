// The model's forward on CPU: the last block run at the read positions only (set_last_block) against
// the same block run at every position, with right-padded rows of several lengths.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include "evalsvc/worker/gpt2.h"

namespace evalsvc::worker {
namespace {

TEST(Model, LastBlockAtTheReadPositionsGivesTheFullBlocksLogits) {
  torch::NoGradGuard no_grad;
  const auto cfg = ModelConfig::preset("tiny");
  auto gen = at::detail::createCPUGenerator(21);
  const auto ids = torch::randint(0, cfg.vocab_size, {5, 40}, gen, torch::kLong);
  const auto lengths = torch::tensor({40, 1, 23, 7, 40}, torch::kLong);
  struct Case {
    kernels::Method method;
    double tol;  // max |pruned - full| / max |full| over the logits
  };
  // Per-token and weight-only methods quantize a row independently of the others, so only the attention kernel's
  // rounding differs. LLM.int8 chooses its fp16 outlier columns over all rows of a product (as bitsandbytes
  // does): with B rows in the last block instead of B x T it may choose fewer, and then quantizes differently.
  const std::vector<Case> cases = {{kernels::Method::kFp32, 1e-5},
                                   {kernels::Method::kInt8W8A8, 1e-5},
                                   {kernels::Method::kNf4, 1e-5},
                                   {kernels::Method::kLlmInt8, 2e-2}};
  for (const auto& c : cases) {
    const auto name = kernels::method_name(c.method);
    GPT2Classifier model(cfg, 4);
    if (c.method != kernels::Method::kFp32) model->quantize(c.method, torch::kFloat32, kernels::QuantOptions{});
    model->eval();
    model->set_last_block(GPT2ClassifierImpl::LastBlock::kPruned);
    const auto pruned = model->forward(ids, lengths);
    EXPECT_TRUE(model->pruned_last_block_last_forward()) << name;
    model->set_last_block(GPT2ClassifierImpl::LastBlock::kFull);
    const auto full = model->forward(ids, lengths);
    EXPECT_FALSE(model->pruned_last_block_last_forward()) << name;
    ASSERT_EQ(pruned.sizes(), full.sizes()) << name;
    const double scale = full.abs().max().item<double>();
    const double err = (pruned - full).abs().max().item<double>();
    EXPECT_GT(scale, 1e-3) << name << ": degenerate logits";
    EXPECT_LE(err, c.tol * scale) << fmt::format("{}: max |pruned - full| {} against max |logit| {}", name, err, scale);
  }
}

// kAuto prunes from kPruneMinTokens tokens a forward; training runs the whole last block (dropout draws its masks
// per position) whatever the setting.
TEST(Model, LastBlockIsPrunedInInferenceFromTheThreshold) {
  const auto cfg = ModelConfig::preset("tiny");
  GPT2Classifier model(cfg, 4);
  const int64_t T = 128, B = GPT2ClassifierImpl::kPruneMinTokens / T;
  const auto ids = torch::randint(0, cfg.vocab_size, {B, T}, torch::kLong);
  const auto lengths = torch::full({B}, T, torch::kLong);
  model->eval();
  torch::NoGradGuard no_grad;
  model->forward(ids, lengths);
  EXPECT_TRUE(model->pruned_last_block_last_forward()) << B * T << " tokens";
  model->forward(ids.slice(0, 0, B - 1), lengths.slice(0, 0, B - 1));
  EXPECT_FALSE(model->pruned_last_block_last_forward()) << (B - 1) * T << " tokens";
  model->set_last_block(GPT2ClassifierImpl::LastBlock::kFull);
  model->forward(ids, lengths);
  EXPECT_FALSE(model->pruned_last_block_last_forward()) << "kFull";
  model->set_last_block(GPT2ClassifierImpl::LastBlock::kPruned);
  model->forward(ids.slice(0, 0, 1), lengths.slice(0, 0, 1));
  EXPECT_TRUE(model->pruned_last_block_last_forward()) << "kPruned, one row";
  model->train();
  model->forward(ids.slice(0, 0, 2), lengths.slice(0, 0, 2));
  EXPECT_FALSE(model->pruned_last_block_last_forward()) << "training";
}

}  // namespace
}  // namespace evalsvc::worker
