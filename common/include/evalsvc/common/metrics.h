#pragma once
// Classification metrics and the statistics behind every accuracy claim in a report (SPEC section 3).
// Conventions follow scikit-learn so figures can be checked against it:
//   - precision of a class that is never predicted is 0, recall of a class with no true samples is 0,
//     and F1 is 0 when both are 0 (scikit-learn's zero_division=0);
//   - per-class F1 = 2 TP / (2 TP + FP + FN), and macro F1 is the unweighted mean of the per-class F1
//     (not the F1 of macro precision and macro recall);
//   - macro means run over all `num_classes` classes, including a class absent from both labels and
//     predictions (scikit-learn with labels=range(num_classes)).
// All functions validate their inputs and throw InputError naming the bad index/value; none crashes.
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

namespace evalsvc {

/// One class's figures. `support` = number of samples whose true label is this class.
struct ClassMetrics {
  double precision = 0, recall = 0, f1 = 0;
  int64_t support = 0;
};

/// Everything SPEC section 3 derives from one prediction vector.
struct ClassificationMetrics {
  int64_t n = 0;        ///< number of samples
  double accuracy = 0;  ///< correct / n
  std::vector<ClassMetrics> per_class;  ///< indexed by class id 0..num_classes-1
  double macro_precision = 0, macro_recall = 0, macro_f1 = 0;
  std::vector<std::vector<int64_t>> confusion;  ///< [true][pred] counts
};

/// Accuracy, per-class and macro precision/recall/F1 and the confusion matrix.
/// InputError when the spans differ in length, n = 0, num_classes < 1, or a label/prediction lies
/// outside 0..num_classes-1 (the message names the index and the value).
ClassificationMetrics compute_metrics(std::span<const int32_t> labels, std::span<const int32_t> preds,
                                      int num_classes);

/// A two-sided confidence interval.
struct Interval {
  double low = 0, high = 0;
};

/// Wilson score interval for a binomial proportion successes / n; the default z gives 95%.
/// Unlike the normal approximation it stays inside [0, 1] and is sound near 0 and 1.
/// InputError for n <= 0, successes outside 0..n, or z <= 0.
Interval wilson_interval(int64_t successes, int64_t n, double z = 1.959963984540054);

/// Percentile bootstrap of macro F1 with a fixed seed (>= 1000 resamples): 95% interval = the 2.5th and
/// 97.5th percentiles (linear interpolation, as numpy.percentile) of the macro F1 of `resamples` samples
/// of size n drawn with replacement. Draws come from std::mt19937_64 with an unbiased bounded draw written
/// here (not std::uniform_int_distribution, whose output differs between standard libraries), so the
/// interval is the same on every platform for a seed. InputError as compute_metrics, and for
/// resamples < 1000 (SPEC section 3 requires at least 1,000).
Interval bootstrap_macro_f1(std::span<const int32_t> labels, std::span<const int32_t> preds, int num_classes,
                            int resamples = 1000, uint64_t seed = 1234);

/// Paired comparison of two classifiers on the same samples (variant vs its baseline).
struct PairedComparison {
  int64_t n = 0;
  int64_t both_correct = 0, only_a_correct = 0, only_b_correct = 0, both_wrong = 0;
  double agreement = 0;  ///< fraction of samples where A and B predict the same class
  double p_value = 1;    ///< McNemar exact: two-sided binomial(b + c, 1/2) test on the discordant pairs
  bool significant = false;  ///< p_value < 0.05: only then is a difference called a difference
};

/// McNemar's exact test. With b = only_a_correct and c = only_b_correct,
/// p = min(1, 2 * P[Binomial(b + c, 1/2) <= min(b, c)]), and p = 1 when b + c = 0. The tail sum is taken
/// in log space (lgamma) so it stays accurate for discordant counts in the millions.
/// InputError when the three spans differ in length or are empty.
PairedComparison mcnemar_exact(std::span<const int32_t> labels, std::span<const int32_t> preds_a,
                               std::span<const int32_t> preds_b);

/// The McNemar exact p-value from the discordant counts alone (b, c >= 0; InputError otherwise).
double mcnemar_exact_p(int64_t b, int64_t c);

/// Signal-to-quantization-noise ratio of a weight tensor, in dB: 10 log10(signal / error), where
/// signal = sum of w^2 over the original fp32 weight and error = sum of (w - dequantize(quantize(w)))^2.
/// nullopt when error is 0: the variant stores the weight exactly (an infinite SQNR, never a made-up
/// number). InputError for negative or non-finite sums, and for signal 0 with error > 0 (no signal to
/// compare the error with).
std::optional<double> sqnr_db(double signal, double error);

}  // namespace evalsvc
