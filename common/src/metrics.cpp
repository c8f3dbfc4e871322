#include "evalsvc/common/metrics.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>

#include "evalsvc/common/error.h"

namespace evalsvc {
namespace {

// Shared validation: equal lengths, non-empty, every value a class id. `what` names the caller.
void check_inputs(const char* what, std::span<const int32_t> labels, std::span<const int32_t> preds,
                  int num_classes) {
  EVALSVC_CHECK(num_classes >= 1, InputError, "{}: num_classes must be >= 1, got {}", what, num_classes);
  EVALSVC_CHECK(labels.size() == preds.size(), InputError,
                "{}: labels and predictions differ in length: {} labels vs {} predictions", what, labels.size(),
                preds.size());
  EVALSVC_CHECK(!labels.empty(), InputError, "{}: no samples (n = 0); metrics are undefined", what);
  for (size_t i = 0; i < labels.size(); ++i) {
    EVALSVC_CHECK(labels[i] >= 0 && labels[i] < num_classes, InputError,
                  "{}: label[{}] = {}, expected a class id in 0..{}", what, i, labels[i], num_classes - 1);
    EVALSVC_CHECK(preds[i] >= 0 && preds[i] < num_classes, InputError,
                  "{}: prediction[{}] = {}, expected a class id in 0..{}", what, i, preds[i], num_classes - 1);
  }
}

double safe_div(double num, double den) { return den > 0 ? num / den : 0.0; }

// Macro F1 from per-class true-positive, predicted and true counts (F1 = 2TP / (predicted + true)).
double macro_f1_from_counts(const std::vector<int64_t>& tp, const std::vector<int64_t>& predicted,
                            const std::vector<int64_t>& actual) {
  double sum = 0;
  for (size_t k = 0; k < tp.size(); ++k) sum += safe_div(2.0 * tp[k], double(predicted[k] + actual[k]));
  return sum / double(tp.size());
}

// Uniform integer in [0, bound) from a 64-bit engine, unbiased by rejection. Written out because
// std::uniform_int_distribution's algorithm is unspecified and differs between libstdc++ and libc++.
// The rejection limit depends on the bound only, so it is computed once, not per draw.
class BoundedDraw {
 public:
  explicit BoundedDraw(uint64_t bound)
      : bound_(bound), limit_(std::numeric_limits<uint64_t>::max() - (std::numeric_limits<uint64_t>::max() % bound)) {}
  uint64_t operator()(std::mt19937_64& rng) const {
    uint64_t x;
    do {
      x = rng();
    } while (x >= limit_);  // reject the top partial range so that every residue is equally likely
    return x % bound_;
  }

 private:
  uint64_t bound_, limit_;
};

// numpy.percentile's default ("linear") rule on sorted data.
double percentile_sorted(const std::vector<double>& sorted, double q) {
  const double pos = q * double(sorted.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(lo + 1, sorted.size() - 1);
  const double frac = pos - double(lo);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * frac;
}

// log(C(n, k)).
double log_choose(int64_t n, int64_t k) {
  return std::lgamma(double(n) + 1) - std::lgamma(double(k) + 1) - std::lgamma(double(n - k) + 1);
}

}  // namespace

ClassificationMetrics compute_metrics(std::span<const int32_t> labels, std::span<const int32_t> preds,
                                      int num_classes) {
  check_inputs("compute_metrics", labels, preds, num_classes);
  const size_t k_count = static_cast<size_t>(num_classes);
  ClassificationMetrics m;
  m.n = static_cast<int64_t>(labels.size());
  m.confusion.assign(k_count, std::vector<int64_t>(k_count, 0));
  for (size_t i = 0; i < labels.size(); ++i) ++m.confusion[labels[i]][preds[i]];

  int64_t correct = 0;
  m.per_class.resize(k_count);
  for (size_t k = 0; k < k_count; ++k) {
    const int64_t tp = m.confusion[k][k];
    int64_t predicted = 0, actual = 0;
    for (size_t j = 0; j < k_count; ++j) {
      predicted += m.confusion[j][k];
      actual += m.confusion[k][j];
    }
    correct += tp;
    ClassMetrics& c = m.per_class[k];
    c.support = actual;
    c.precision = safe_div(double(tp), double(predicted));
    c.recall = safe_div(double(tp), double(actual));
    c.f1 = safe_div(2.0 * double(tp), double(predicted + actual));
    m.macro_precision += c.precision;
    m.macro_recall += c.recall;
    m.macro_f1 += c.f1;
  }
  m.macro_precision /= double(k_count);
  m.macro_recall /= double(k_count);
  m.macro_f1 /= double(k_count);
  m.accuracy = double(correct) / double(m.n);
  return m;
}

Interval wilson_interval(int64_t successes, int64_t n, double z) {
  EVALSVC_CHECK(n > 0, InputError, "wilson_interval: n must be > 0, got {}", n);
  EVALSVC_CHECK(successes >= 0 && successes <= n, InputError,
                "wilson_interval: successes = {}, expected 0..n = 0..{}", successes, n);
  EVALSVC_CHECK(z > 0 && std::isfinite(z), InputError, "wilson_interval: z must be finite and > 0, got {}", z);
  const double nn = double(n);
  const double p = double(successes) / nn;
  const double z2 = z * z;
  const double denom = 1.0 + z2 / nn;
  const double center = (p + z2 / (2 * nn)) / denom;
  const double half = z / denom * std::sqrt(p * (1 - p) / nn + z2 / (4 * nn * nn));
  // The exact bounds at 0 and n are 0 and 1; clamp away rounding noise there.
  return {successes == 0 ? 0.0 : std::max(0.0, center - half), successes == n ? 1.0 : std::min(1.0, center + half)};
}

Interval bootstrap_macro_f1(std::span<const int32_t> labels, std::span<const int32_t> preds, int num_classes,
                            int resamples, uint64_t seed) {
  check_inputs("bootstrap_macro_f1", labels, preds, num_classes);
  EVALSVC_CHECK(resamples >= 1000, InputError,
                "bootstrap_macro_f1: resamples = {}, expected >= 1000 (SPEC section 3)", resamples);
  const size_t n = labels.size();
  const size_t k_count = static_cast<size_t>(num_classes);
  // Each sample is reduced once to its confusion cell (label * K + pred); a draw then costs one increment
  // instead of three counters and a branch. The draws themselves (engine, seed, bounded draw, order) are
  // unchanged, so the interval is bit-identical to counting tp/predicted/actual per draw.
  std::vector<uint32_t> cell(n);
  for (size_t i = 0; i < n; ++i) cell[i] = static_cast<uint32_t>(labels[i]) * k_count + static_cast<uint32_t>(preds[i]);
  const BoundedDraw draw(n);
  std::mt19937_64 rng(seed);
  std::vector<double> stats;
  stats.reserve(static_cast<size_t>(resamples));
  std::vector<int64_t> counts(k_count * k_count), tp(k_count), predicted(k_count), actual(k_count);
  for (int r = 0; r < resamples; ++r) {
    std::fill(counts.begin(), counts.end(), 0);
    for (size_t i = 0; i < n; ++i) {
      ++counts[cell[draw(rng)]];
    }
    std::fill(tp.begin(), tp.end(), 0);
    std::fill(predicted.begin(), predicted.end(), 0);
    std::fill(actual.begin(), actual.end(), 0);
    for (size_t t = 0; t < k_count; ++t) {
      for (size_t p = 0; p < k_count; ++p) {
        const int64_t c = counts[t * k_count + p];
        actual[t] += c;
        predicted[p] += c;
      }
      tp[t] = counts[t * k_count + t];
    }
    stats.push_back(macro_f1_from_counts(tp, predicted, actual));
  }
  std::sort(stats.begin(), stats.end());
  return {percentile_sorted(stats, 0.025), percentile_sorted(stats, 0.975)};
}

double mcnemar_exact_p(int64_t b, int64_t c) {
  EVALSVC_CHECK(b >= 0 && c >= 0, InputError, "mcnemar_exact_p: discordant counts must be >= 0, got b = {}, c = {}",
                b, c);
  const int64_t n = b + c;
  if (n == 0) return 1.0;
  const int64_t m = std::min(b, c);
  // P[X <= m] for X ~ Binomial(n, 1/2). For m <= n/2 the terms grow with k, so sum relative to the
  // largest (k = m) and stop once a term is negligible: no overflow, no underflow of the total.
  const double log_top = log_choose(n, m);
  double rel_sum = 0;
  for (int64_t k = m; k >= 0; --k) {
    const double rel = std::exp(log_choose(n, k) - log_top);
    rel_sum += rel;
    if (rel < 1e-18 * rel_sum) break;
  }
  const double log_p = std::log(2.0) + log_top + std::log(rel_sum) - double(n) * std::log(2.0);
  return std::min(1.0, std::exp(log_p));
}

PairedComparison mcnemar_exact(std::span<const int32_t> labels, std::span<const int32_t> preds_a,
                               std::span<const int32_t> preds_b) {
  EVALSVC_CHECK(labels.size() == preds_a.size() && labels.size() == preds_b.size(), InputError,
                "mcnemar_exact: lengths differ: {} labels, {} predictions of A, {} predictions of B", labels.size(),
                preds_a.size(), preds_b.size());
  EVALSVC_CHECK(!labels.empty(), InputError, "mcnemar_exact: no samples (n = 0); the test is undefined");
  PairedComparison r;
  r.n = static_cast<int64_t>(labels.size());
  int64_t same = 0;
  for (size_t i = 0; i < labels.size(); ++i) {
    const bool a_ok = preds_a[i] == labels[i];
    const bool b_ok = preds_b[i] == labels[i];
    if (a_ok && b_ok) ++r.both_correct;
    else if (a_ok) ++r.only_a_correct;
    else if (b_ok) ++r.only_b_correct;
    else ++r.both_wrong;
    if (preds_a[i] == preds_b[i]) ++same;
  }
  r.agreement = double(same) / double(r.n);
  r.p_value = mcnemar_exact_p(r.only_a_correct, r.only_b_correct);
  r.significant = r.p_value < 0.05;
  return r;
}

std::optional<double> sqnr_db(double signal, double error) {
  EVALSVC_CHECK(std::isfinite(signal) && signal >= 0 && std::isfinite(error) && error >= 0, InputError,
                "sqnr_db: signal and error energies must be finite and >= 0, got signal = {}, error = {}", signal,
                error);
  if (error == 0) return std::nullopt;
  EVALSVC_CHECK(signal > 0, InputError, "sqnr_db: the weight is all zeros (signal = 0) but its error is {}", error);
  return 10.0 * std::log10(signal / error);
}

}  // namespace evalsvc
