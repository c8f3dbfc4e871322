// Parity with Hugging Face transformers on CPU: tests/fixtures/hf_tiny was written by scripts/hf_parity.py
// (transformers 5.17, torch 2.11) from a random-init GPT2ForSequenceClassification; the batch has right-padded
// rows of lengths 17, 1, 9, 32, 5, 32. qbench must reproduce its fp32 logits within 1e-4.
#include <gtest/gtest.h>

#include "evalsvc/common/error.h"
#include "evalsvc/common/paths.h"
#include "evalsvc/worker/parity.h"

namespace evalsvc::worker {
namespace {

constexpr double kFp32MaxAbsDiff = 1e-4;

TEST(HfParity, TinyFixtureFp32MatchesTransformers) {
  auto dir = source_dir() / "tests" / "fixtures" / "hf_tiny";
  ParityResult r = check_parity(dir, "fp32", torch::Device(torch::kCPU));
  EXPECT_LE(r.max_abs_diff, kFp32MaxAbsDiff) << "max |logit| " << r.max_abs_logit;
  EXPECT_TRUE(r.same_argmax);
  EXPECT_GT(r.max_abs_logit, 0.01) << "fixture logits are degenerate";
}

TEST(HfParity, UnknownDtypeIsAnInputError) {
  auto dir = source_dir() / "tests" / "fixtures" / "hf_tiny";
  EXPECT_THROW(check_parity(dir, "fp64", torch::Device(torch::kCPU)), FormatError);
}

}  // namespace
}  // namespace evalsvc::worker
