// Metrics against hand-computed cases (scikit-learn conventions, zero_division=0), Wilson against
// Newcombe (1998) Table I, McNemar against exact binomial sums computed with integer arithmetic
// (Python fractions + math.comb), and bootstrap determinism / coverage.
#include "evalsvc/common/metrics.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "evalsvc/common/error.h"

namespace evalsvc {
namespace {

constexpr double kTol = 1e-12;

struct MetricsCase {
  std::string name;
  std::vector<int32_t> labels, preds;
  int num_classes;
  double accuracy;
  std::vector<ClassMetrics> per_class;  // precision, recall, f1, support
  double macro_p, macro_r, macro_f1;
  std::vector<std::vector<int64_t>> confusion;
};

TEST(ComputeMetricsTest, HandComputedCases) {
  const std::vector<MetricsCase> cases = {
      // Class 2 is never predicted: its precision is 0 (zero_division=0), recall 0, F1 0.
      {"class_never_predicted",
       {0, 0, 1, 1, 2, 2},
       {0, 1, 1, 1, 0, 0},
       3,
       0.5,
       {{1.0 / 3, 0.5, 0.4, 2}, {2.0 / 3, 1.0, 0.8, 2}, {0, 0, 0, 2}},
       1.0 / 3,
       0.5,
       0.4,
       {{1, 1, 0}, {0, 2, 0}, {2, 0, 0}}},
      {"all_correct",
       {0, 1, 2, 3, 3},
       {0, 1, 2, 3, 3},
       4,
       1.0,
       {{1, 1, 1, 1}, {1, 1, 1, 1}, {1, 1, 1, 1}, {1, 1, 1, 2}},
       1,
       1,
       1,
       {{1, 0, 0, 0}, {0, 1, 0, 0}, {0, 0, 1, 0}, {0, 0, 0, 2}}},
      // Class 2 absent from labels and predictions still counts in the macro mean (with zeros).
      {"class_absent_everywhere",
       {0, 1, 0},
       {0, 1, 1},
       3,
       2.0 / 3,
       {{1, 0.5, 2.0 / 3, 2}, {0.5, 1, 2.0 / 3, 1}, {0, 0, 0, 0}},
       0.5,
       0.5,
       4.0 / 9,
       {{1, 1, 0}, {0, 1, 0}, {0, 0, 0}}},
      // Macro F1 is the mean of per-class F1, not F1(macro P, macro R): here they differ.
      {"macro_f1_is_mean_of_f1",
       {0, 0, 0, 0, 1},
       {0, 1, 1, 1, 1},
       2,
       0.4,
       {{1, 0.25, 0.4, 4}, {0.25, 1, 0.4, 1}},
       0.625,
       0.625,
       0.4,
       {{1, 3}, {0, 1}}},
      {"all_wrong",
       {0, 1},
       {1, 0},
       2,
       0,
       {{0, 0, 0, 1}, {0, 0, 0, 1}},
       0,
       0,
       0,
       {{0, 1}, {1, 0}}},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    const ClassificationMetrics m = compute_metrics(c.labels, c.preds, c.num_classes);
    EXPECT_EQ(m.n, static_cast<int64_t>(c.labels.size()));
    EXPECT_NEAR(m.accuracy, c.accuracy, kTol);
    ASSERT_EQ(m.per_class.size(), c.per_class.size());
    for (size_t k = 0; k < c.per_class.size(); ++k) {
      SCOPED_TRACE("class " + std::to_string(k));
      EXPECT_NEAR(m.per_class[k].precision, c.per_class[k].precision, kTol);
      EXPECT_NEAR(m.per_class[k].recall, c.per_class[k].recall, kTol);
      EXPECT_NEAR(m.per_class[k].f1, c.per_class[k].f1, kTol);
      EXPECT_EQ(m.per_class[k].support, c.per_class[k].support);
    }
    EXPECT_NEAR(m.macro_precision, c.macro_p, kTol);
    EXPECT_NEAR(m.macro_recall, c.macro_r, kTol);
    EXPECT_NEAR(m.macro_f1, c.macro_f1, kTol);
    EXPECT_EQ(m.confusion, c.confusion);
  }
}

TEST(ComputeMetricsTest, BadInputIsInputError) {
  const std::vector<int32_t> empty;
  const std::vector<int32_t> two = {0, 1};
  const std::vector<int32_t> three = {0, 1, 2};
  EXPECT_THROW(compute_metrics(empty, empty, 4), InputError);  // n = 0
  EXPECT_THROW(compute_metrics(two, three, 4), InputError);    // length mismatch
  EXPECT_THROW(compute_metrics(two, two, 0), InputError);      // no classes
  EXPECT_THROW(compute_metrics(std::vector<int32_t>{0, 4}, two, 4), InputError);   // label out of range
  EXPECT_THROW(compute_metrics(two, std::vector<int32_t>{-1, 0}, 4), InputError);  // prediction negative
  try {
    compute_metrics(std::vector<int32_t>{0, 7}, two, 4);
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("label[1] = 7"), std::string::npos) << e.what();
  }
}

// Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table I, method 3
// (rounded to 4 places there); the 10-digit values come from solving the score quadratic directly.
TEST(WilsonIntervalTest, KnownValues) {
  struct Case {
    int64_t s, n;
    double low, high;
  };
  const std::vector<Case> cases = {
      {81, 263, 0.2552885199, 0.3662095770}, {15, 148, 0.0623863995, 0.1604872417},
      {0, 20, 0.0, 0.1611251581},            {1, 29, 0.0061132143, 0.1717552188},
      {10, 10, 0.7224672001, 1.0},           {6310, 7600, 0.8216568930, 0.8385357251},
  };
  for (const auto& c : cases) {
    const Interval iv = wilson_interval(c.s, c.n);
    EXPECT_NEAR(iv.low, c.low, 1e-9) << c.s << "/" << c.n;
    EXPECT_NEAR(iv.high, c.high, 1e-9) << c.s << "/" << c.n;
  }
  // A wider z gives a wider interval around the same point.
  const Interval i95 = wilson_interval(50, 100), i99 = wilson_interval(50, 100, 2.5758293035489);
  EXPECT_LT(i99.low, i95.low);
  EXPECT_GT(i99.high, i95.high);
}

TEST(WilsonIntervalTest, BadInputIsInputError) {
  EXPECT_THROW(wilson_interval(0, 0), InputError);
  EXPECT_THROW(wilson_interval(5, 4), InputError);
  EXPECT_THROW(wilson_interval(-1, 4), InputError);
  EXPECT_THROW(wilson_interval(1, 4, 0.0), InputError);
}

// Builds labels/predictions with the given 2x2 table; both-wrong samples alternate between A and B
// agreeing on the wrong class and disagreeing, so `agreement` is exercised too.
struct Paired {
  std::vector<int32_t> labels, a, b;
};
Paired make_paired(int64_t both_correct, int64_t only_a, int64_t only_b, int64_t both_wrong) {
  Paired p;
  auto add = [&](int32_t a, int32_t b) {
    p.labels.push_back(0);
    p.a.push_back(a);
    p.b.push_back(b);
  };
  for (int64_t i = 0; i < both_correct; ++i) add(0, 0);
  for (int64_t i = 0; i < only_a; ++i) add(0, 1);
  for (int64_t i = 0; i < only_b; ++i) add(2, 0);
  for (int64_t i = 0; i < both_wrong; ++i) add(1, i % 2 == 0 ? 1 : 3);
  return p;
}

// Reference p-values: 2 * sum_{k<=min(b,c)} C(b+c, k) / 2^(b+c), exact in rational arithmetic.
TEST(McNemarTest, ExactBinomialPValues) {
  struct Case {
    int64_t b, c;
    double p;
  };
  const std::vector<Case> cases = {
      {1, 9, 0.021484375},
      {9, 1, 0.021484375},
      {5, 5, 1.0},
      {0, 0, 1.0},
      {0, 1, 1.0},
      {0, 5, 0.0625},
      {2, 10, 0.03857421875},
      {30, 40, 0.2819789217936561},
      {450, 550, 0.0017305360849763176},
      {4000, 4200, 0.027972423571324383},
      {10000, 10300, 0.03585235973615882},
      {100, 300, 2.5918869069720767e-24},
  };
  for (const auto& c : cases) {
    const double p = mcnemar_exact_p(c.b, c.c);
    EXPECT_NEAR(p, c.p, 1e-9 * c.p) << "b = " << c.b << ", c = " << c.c;
  }
  // Millions of discordant pairs: equal counts stay at p = 1, a 0.1% imbalance at this size is decisive.
  EXPECT_DOUBLE_EQ(mcnemar_exact_p(3000000, 3000000), 1.0);
  EXPECT_LT(mcnemar_exact_p(3000000, 3010000), 1e-3);
  EXPECT_THROW(mcnemar_exact_p(-1, 3), InputError);
}

TEST(McNemarTest, CountsAgreementAndSignificance) {
  const Paired p = make_paired(80, 1, 9, 10);
  const PairedComparison r = mcnemar_exact(p.labels, p.a, p.b);
  EXPECT_EQ(r.n, 100);
  EXPECT_EQ(r.both_correct, 80);
  EXPECT_EQ(r.only_a_correct, 1);
  EXPECT_EQ(r.only_b_correct, 9);
  EXPECT_EQ(r.both_wrong, 10);
  // Same prediction: 80 both correct + 5 of the both-wrong.
  EXPECT_NEAR(r.agreement, 0.85, kTol);
  EXPECT_NEAR(r.p_value, 0.021484375, 1e-12);
  EXPECT_TRUE(r.significant);

  const Paired q = make_paired(90, 5, 5, 0);
  const PairedComparison s = mcnemar_exact(q.labels, q.a, q.b);
  EXPECT_DOUBLE_EQ(s.p_value, 1.0);
  EXPECT_FALSE(s.significant);
  EXPECT_NEAR(s.agreement, 0.9, kTol);

  // b=0, c=5 -> p = 0.0625: a visible difference that is not called one.
  const Paired t = make_paired(95, 0, 5, 0);
  EXPECT_FALSE(mcnemar_exact(t.labels, t.a, t.b).significant);
}

TEST(McNemarTest, BadInputIsInputError) {
  const std::vector<int32_t> empty, two = {0, 1}, three = {0, 1, 2};
  EXPECT_THROW(mcnemar_exact(empty, empty, empty), InputError);
  EXPECT_THROW(mcnemar_exact(two, two, three), InputError);
  EXPECT_THROW(mcnemar_exact(three, two, two), InputError);
}

// 4 balanced classes, 2,000 each; about 10% of samples are wrong, spread over classes.
void synthetic(std::vector<int32_t>& labels, std::vector<int32_t>& preds) {
  for (int i = 0; i < 8000; ++i) {
    const int32_t y = i % 4;
    labels.push_back(y);
    preds.push_back((static_cast<uint32_t>(i) * 2654435761u) % 100 < 10 ? (y + 1 + i % 3) % 4 : y);
  }
}

TEST(BootstrapTest, DeterministicForSeedAndContainsPointEstimate) {
  std::vector<int32_t> labels, preds;
  synthetic(labels, preds);
  const double point = compute_metrics(labels, preds, 4).macro_f1;
  const Interval a = bootstrap_macro_f1(labels, preds, 4, 1000, 1234);
  const Interval b = bootstrap_macro_f1(labels, preds, 4, 1000, 1234);
  EXPECT_EQ(a.low, b.low);
  EXPECT_EQ(a.high, b.high);
  EXPECT_LT(a.low, point);
  EXPECT_GT(a.high, point);
  const Interval c = bootstrap_macro_f1(labels, preds, 4, 1000, 99);
  EXPECT_TRUE(c.low != a.low || c.high != a.high) << "another seed must draw other resamples";

  // With balanced classes and errors spread evenly, macro F1 behaves much like accuracy, so the
  // bootstrap width must be close to the Wilson width of the accuracy (a check of the resampling
  // itself: a bug that resamples too few or too many points changes the width by a large factor).
  const ClassificationMetrics m = compute_metrics(labels, preds, 4);
  const Interval w = wilson_interval(static_cast<int64_t>(m.accuracy * m.n + 0.5), m.n);
  const double ratio = (a.high - a.low) / (w.high - w.low);
  EXPECT_GT(ratio, 0.75) << "bootstrap [" << a.low << ", " << a.high << "] vs wilson [" << w.low << ", " << w.high
                         << "]";
  EXPECT_LT(ratio, 1.33) << "bootstrap [" << a.low << ", " << a.high << "] vs wilson [" << w.low << ", " << w.high
                         << "]";
}

/// The definition written out plainly: n draws with replacement per resample (mt19937_64, rejection-bounded
/// draw), macro F1 of each resample from its own TP / predicted / true counts, linear percentiles.
Interval plain_bootstrap(const std::vector<int32_t>& labels, const std::vector<int32_t>& preds, int k, int resamples,
                         uint64_t seed) {
  std::mt19937_64 rng(seed);
  const uint64_t n = labels.size(), max = std::numeric_limits<uint64_t>::max(), limit = max - max % n;
  std::vector<double> stats;
  for (int r = 0; r < resamples; ++r) {
    std::vector<double> tp(k), predicted(k), actual(k);
    for (uint64_t i = 0; i < n; ++i) {
      uint64_t x = rng();
      while (x >= limit) x = rng();
      const uint64_t j = x % n;
      actual[labels[j]] += 1;
      predicted[preds[j]] += 1;
      if (labels[j] == preds[j]) tp[labels[j]] += 1;
    }
    double f1 = 0;
    for (int c = 0; c < k; ++c) f1 += predicted[c] + actual[c] > 0 ? 2 * tp[c] / (predicted[c] + actual[c]) : 0;
    stats.push_back(f1 / k);
  }
  std::sort(stats.begin(), stats.end());
  auto q = [&](double p) {
    const double pos = p * (stats.size() - 1);
    const size_t lo = static_cast<size_t>(pos), hi = std::min(lo + 1, stats.size() - 1);
    return stats[lo] + (stats[hi] - stats[lo]) * (pos - lo);
  };
  return {q(0.025), q(0.975)};
}

TEST(BootstrapTest, SameIntervalAsThePlainDefinition) {
  // The library counts confusion cells per draw (faster); the resamples and the interval must be exactly
  // those of the plain per-draw counting, for several seeds and an unbalanced 5-class case.
  std::vector<int32_t> labels, preds;
  synthetic(labels, preds);
  for (uint64_t seed : {1234u, 7u}) {
    const Interval a = bootstrap_macro_f1(labels, preds, 4, 1000, seed), b = plain_bootstrap(labels, preds, 4, 1000, seed);
    EXPECT_EQ(a.low, b.low) << seed;
    EXPECT_EQ(a.high, b.high) << seed;
  }
  std::vector<int32_t> l5, p5;
  for (int i = 0; i < 777; ++i) {
    l5.push_back(i % 7 == 0 ? 4 : i % 3);
    p5.push_back(i % 11 == 0 ? (l5.back() + 1) % 5 : l5.back());
  }
  const Interval a = bootstrap_macro_f1(l5, p5, 5, 1200, 99), b = plain_bootstrap(l5, p5, 5, 1200, 99);
  EXPECT_EQ(a.low, b.low);
  EXPECT_EQ(a.high, b.high);
}

TEST(BootstrapTest, PerfectPredictionsGiveDegenerateInterval) {
  const std::vector<int32_t> y = {0, 1, 2, 3, 0, 1, 2, 3, 1, 1};
  const Interval iv = bootstrap_macro_f1(y, y, 4);
  // Every resample is all correct, but a resample may miss a class whose F1 is then 0: the upper end
  // is exactly 1 and nothing exceeds it.
  EXPECT_DOUBLE_EQ(iv.high, 1.0);
  EXPECT_LE(iv.low, iv.high);
}

TEST(BootstrapTest, BadInputIsInputError) {
  const std::vector<int32_t> empty, two = {0, 1};
  EXPECT_THROW(bootstrap_macro_f1(empty, empty, 2), InputError);
  EXPECT_THROW(bootstrap_macro_f1(two, two, 2, 999), InputError);
  EXPECT_THROW(bootstrap_macro_f1(two, std::vector<int32_t>{0, 2}, 2), InputError);
}

TEST(SqnrTest, DecibelsOfSignalOverError) {
  // w = (3, 4), dequantized (3, 4.1): signal 25, error 0.01 -> 10 log10(2500) = 33.979... dB.
  EXPECT_NEAR(*sqnr_db(25.0, 0.01), 33.979400086720375, 1e-12);
  EXPECT_DOUBLE_EQ(*sqnr_db(100.0, 1.0), 20.0);
  EXPECT_DOUBLE_EQ(*sqnr_db(1.0, 1.0), 0.0);
  EXPECT_DOUBLE_EQ(*sqnr_db(1.0, 10.0), -10.0);  // more error than signal: negative, not clamped
  // int8 per tensor of a uniform weight: the quantization step is absmax/127 and the noise step^2/12 per
  // value, so SQNR = 10 log10((absmax^2 / 3) / ((absmax / 127)^2 / 12)) = 10 log10(4 * 127^2) = 48.1 dB.
  EXPECT_NEAR(*sqnr_db(1.0 / 3.0, (1.0 / 127 / 127) / 12.0), 10 * std::log10(4.0 * 127 * 127), 1e-9);
}

TEST(SqnrTest, ExactWeightsHaveNoFiniteSqnrAndBadSumsAreInputErrors) {
  EXPECT_FALSE(sqnr_db(25.0, 0.0).has_value());
  EXPECT_FALSE(sqnr_db(0.0, 0.0).has_value());
  EXPECT_THROW(sqnr_db(0.0, 1.0), InputError);
  EXPECT_THROW(sqnr_db(-1.0, 1.0), InputError);
  EXPECT_THROW(sqnr_db(1.0, -1e-9), InputError);
  EXPECT_THROW(sqnr_db(std::numeric_limits<double>::quiet_NaN(), 1.0), InputError);
  EXPECT_THROW(sqnr_db(1.0, std::numeric_limits<double>::infinity()), InputError);
}

}  // namespace
}  // namespace evalsvc
