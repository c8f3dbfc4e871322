#pragma once
// Formatting helpers shared by the report renderers (private to scheduler/src/report_*.cpp). One place
// decides how a figure prints, so the text, Markdown and HTML never disagree on a rounding.
#include <algorithm>
#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "evalsvc/scheduler/report.h"

namespace evalsvc::scheduler::report_detail {

inline constexpr const char* kNotMeasured = "not measured";
inline constexpr double kMiB = 1024.0 * 1024.0;

/// 0.9462 -> "94.62%".
inline std::string pct(double fraction, int decimals = 2) { return fmt::format("{:.{}f}%", fraction * 100.0, decimals); }
/// Signed difference in percentage points: +0.08 / -0.08 / 0.00 (never "-0.00").
inline std::string signed_points(double fraction_delta) {
  double v = std::round(fraction_delta * 10000.0) / 100.0;
  if (v == 0) return "0.00";
  return fmt::format("{:+.2f}", v);
}
inline std::string mib(int64_t bytes) { return fmt::format("{:.2f} MiB", static_cast<double>(bytes) / kMiB); }
inline std::string opt_mib(const std::optional<int64_t>& bytes) { return bytes ? mib(*bytes) : kNotMeasured; }
inline std::string ms(double v) { return fmt::format("{:.2f} ms", v); }
inline std::string rate(double v) { return fmt::format("{:.2f} samples/s", v); }
/// McNemar p-value: 4 significant digits, scientific below 1e-4.
inline std::string pvalue(double p) {
  if (p >= 1e-4) return fmt::format("{:.4f}", p);
  return fmt::format("{:.2e}", p);
}
inline std::string join(const std::vector<std::string>& items, const std::string& sep = ", ") {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i ? sep : "") + items[i];
  return out;
}
/// "A", "A and B", "A, B and C".
inline std::string join_and(const std::vector<std::string>& items) {
  if (items.empty()) return "";
  if (items.size() == 1) return items[0];
  std::vector<std::string> head(items.begin(), items.end() - 1);
  return join(head) + " and " + items.back();
}
/// SQNR in dB, 2 decimals: "38.12 dB".
inline std::string db(double v) { return fmt::format("{:.2f} dB", v); }
/// A (c) peak with where it was measured: "505.45 MiB on NVIDIA H200 (libtorch ...; 2026-11-20)".
inline std::string peak_on(const std::optional<int64_t>& bytes, const MeasuredOn& on) {
  return bytes ? mib(*bytes) + " on " + on.label() : std::string(kNotMeasured);
}
/// Where a variant's (c) peaks were measured: one label when both agree, "batch 1: X; batch N: Y" otherwise,
/// "" when neither peak is measured.
std::string peak_devices(const VariantFigures& v);
/// One line about a variant's weight quantization error: "min 38.12 dB (h.3.mlp.c_proj), median 41.50 dB
/// over 48 projections", "exact: all 48 projections store the fp32 weights unchanged", or "not measured".
std::string sqnr_summary(const std::optional<QuantErrorFigures>& q);
/// The median cell: "41.50 dB", or "exact" when at least half the projections are exact.
/// The devices that measured some figure of the variants, in first-seen order: `on(v)` gives the variant's
/// MeasuredOn, or nullptr where it has no such figure. Rate tables are drawn one per device, never mixed.
template <typename On>
std::vector<std::string> devices_of(const std::vector<VariantFigures>& variants, On on) {
  std::vector<std::string> out;
  for (const auto& v : variants) {
    const MeasuredOn* m = on(v);
    if (m && std::find(out.begin(), out.end(), m->device) == out.end()) out.push_back(m->device);
  }
  return out;
}

inline std::string median_cell(const QuantErrorFigures& q) { return q.median_db ? db(*q.median_db) : "exact"; }
/// The side-by-side table of two experiments, shared by the text, Markdown and HTML comparison.
struct ComparisonTable {
  std::vector<std::string> head;
  std::vector<std::vector<std::string>> cells;  ///< one row per variant name of A, then those only in B
  std::vector<std::string> measured_on;          ///< "A: predictions computed on ...; latency measured on ..."
  std::string note;
};
ComparisonTable comparison_table(const ReportData& a, const ReportData& b);
/// The comparison as one self-contained HTML file (report_html.cpp).
std::string render_comparison_html(const ReportData& a, const ReportData& b);
/// Human name of a quantization method, for headings ("NF4 (bitsandbytes layout)").
std::string method_title(const std::string& method);
/// One-line description of a method (technical notes).
std::string method_description(const std::string& method);
/// "nf4 [fp16]" style heading for a variant.
std::string variant_heading(const VariantFigures& v);
/// The spec fields the technical notes quote (train rows, model config/init, max length).
struct SpecSummary {
  std::string model_config = "unknown", model_init = "random initialisation (no pretrained weights loaded)";
  std::string train_rows = "unknown", test_rows = "unknown";
  std::string max_len = "unknown";
};
SpecSummary summarize_spec(const ReportData& data);
/// Markdown/HTML-safe cell text.
std::string html_escape(const std::string& s);
std::string md_escape(const std::string& s);

}  // namespace evalsvc::scheduler::report_detail
