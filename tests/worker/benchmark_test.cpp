// The bench job's test-set rate on CPU: one timed pass over every row with dynamic padding, a rate that is
// rows / seconds of that pass, and clear errors for an empty dataset or a bad batch size.
#include "evalsvc/worker/benchmark.h"

#include <gtest/gtest.h>

#include <random>

#include "evalsvc/common/error.h"

namespace evalsvc::worker {
namespace {

TokenizedDataset rows_of_random_length(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  TokenizedDataset d;
  d.max_len = 64;
  d.offsets.push_back(0);
  for (size_t i = 0; i < n; ++i) {
    const int len = 2 + static_cast<int>(rng() % 60);
    for (int t = 0; t < len; ++t) d.tokens.push_back(static_cast<int32_t>(rng() % 5000));
    d.labels.push_back(static_cast<int32_t>(i % 4));
    d.full_lengths.push_back(len);
    d.offsets.push_back(static_cast<int64_t>(d.tokens.size()));
  }
  return d;
}

TEST(TestSetRate, TimesEveryRowOnceAndReportsRowsOverSeconds) {
  GPT2Classifier model(ModelConfig::preset("tiny"), 5);
  model->eval();
  const auto data = rows_of_random_length(150, 2);
  const TestSetRate r = run_test_set_rate(model, data, 32, torch::Device(torch::kCPU));
  EXPECT_EQ(r.rows, 150);
  EXPECT_EQ(r.batch_size, 32);
  ASSERT_GT(r.seconds, 0.0);
  EXPECT_DOUBLE_EQ(r.samples_per_s, 150.0 / r.seconds);
  EXPECT_EQ(r.peak_memory_bytes, -1);  // not measured on CPU
  const auto j = r.to_json();
  EXPECT_EQ(j.at("rows"), 150);
  EXPECT_EQ(j.at("batch_size"), 32);
}

TEST(TestSetRate, EmptyDatasetOrBadBatchSizeIsAnInputError) {
  GPT2Classifier model(ModelConfig::preset("tiny"), 5);
  const torch::Device cpu(torch::kCPU);
  EXPECT_THROW(run_test_set_rate(model, rows_of_random_length(0, 1), 8, cpu), InputError);
  EXPECT_THROW(run_test_set_rate(model, rows_of_random_length(10, 1), 0, cpu), InputError);
}

}  // namespace
}  // namespace evalsvc::worker
