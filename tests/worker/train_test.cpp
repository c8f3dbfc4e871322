// Training on CPU with the tiny config: loss goes down on a learnable synthetic task, and a run that finds
// a saved state resumes from it instead of starting over (what a redelivered train job relies on).
#include "evalsvc/common/paths.h"
#include "evalsvc/worker/train.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <random>

namespace evalsvc::worker {
namespace {

namespace fs = std::filesystem;

/// Rows whose label is written in their first token, so a model can learn it within a few steps.
TokenizedDataset synthetic(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  TokenizedDataset d;
  d.max_len = 16;
  d.offsets.push_back(0);
  for (size_t i = 0; i < n; ++i) {
    const int32_t label = static_cast<int32_t>(rng() % 4);
    const int len = 4 + static_cast<int>(rng() % 12);
    d.tokens.push_back(100 + label);
    for (int t = 1; t < len; ++t) d.tokens.push_back(static_cast<int32_t>(1000 + rng() % 500));
    d.labels.push_back(label);
    d.full_lengths.push_back(len);
    d.offsets.push_back(static_cast<int64_t>(d.tokens.size()));
  }
  return d;
}

TrainOptions options() {
  TrainOptions o;
  o.epochs = 3;
  o.batch_size = 16;
  o.lr = 3e-3;
  o.progress = false;
  return o;
}

TEST(TrainTest, LossFallsOnALearnableTask) {
  torch::manual_seed(0);
  GPT2Classifier model(ModelConfig::preset("tiny"), 7);
  auto r = train(model, synthetic(256, 1), {}, options(), torch::Device(torch::kCPU));
  ASSERT_EQ(r.epochs.size(), 3u);
  EXPECT_LT(r.epochs.back().mean_loss, 0.7 * r.epochs.front().mean_loss);
  EXPECT_EQ(r.steps, 3 * 16);
  EXPECT_EQ(r.resumed_from_step, 0);
}

TEST(TrainTest, ResumesFromTheSavedStateOfAnEarlierRun) {
  const fs::path dir = fs::path(EVALSVC_TEST_BINARY_DIR) / "train_test_state";
  evalsvc::remove_tree(dir);
  auto data = synthetic(128, 2);
  TrainOptions o = options();
  o.state_dir = dir;
  o.checkpoint_interval = std::chrono::seconds(0);  // save at every epoch end but the last
  GPT2Classifier first(ModelConfig::preset("tiny"), 7);
  auto a = train(first, data, {}, o, torch::Device(torch::kCPU));
  EXPECT_EQ(a.resumed_from_step, 0);
  ASSERT_TRUE(fs::exists(dir));
  // A second run with the same options (a redelivered job) picks up after epoch 2 of 3: 8 steps per epoch.
  GPT2Classifier second(ModelConfig::preset("tiny"), 7);
  auto b = train(second, data, {}, o, torch::Device(torch::kCPU));
  EXPECT_EQ(b.resumed_from_step, 2 * 8);
  ASSERT_EQ(b.epochs.size(), 1u);
  EXPECT_EQ(b.epochs[0].epoch, 3);
  EXPECT_TRUE(std::isfinite(b.final_loss));
  // Different options (another run) must not resume from that state.
  o.lr = 1e-3;
  GPT2Classifier third(ModelConfig::preset("tiny"), 7);
  EXPECT_EQ(train(third, data, {}, o, torch::Device(torch::kCPU)).resumed_from_step, 0);
}

}  // namespace
}  // namespace evalsvc::worker
