// Text (the reference report's layout) and Markdown renderers.
#include <algorithm>
#include <sstream>

#include "evalsvc/scheduler/report.h"
#include "report_internal.h"

namespace evalsvc::scheduler {

using namespace report_detail;

namespace {

const std::string kRule(100, '=');
std::string thin_rule() {
  std::string s;
  for (int i = 0; i < 100; ++i) s += "\u2500";
  return s;
}

/// Word-wraps `text` to 100 columns; continuation lines get `indent` spaces.
std::string wrap(const std::string& first_prefix, const std::string& text, size_t indent) {
  std::istringstream words(text);
  std::string word, line = first_prefix, out;
  bool line_has_word = false;
  while (words >> word) {
    if (line_has_word && line.size() + 1 + word.size() > 100) {
      out += line + "\n";
      line = std::string(indent, ' ');
      line_has_word = false;
    }
    line += (line_has_word ? " " : "") + word;
    line_has_word = true;
  }
  return out + line + "\n";
}

/// "    • Key:      value", wrapped under the value; `indent` spaces before the bullet.
std::string field(const std::string& key, const std::string& value, size_t width = 36, size_t indent = 4) {
  std::string k = key + ":";
  if (k.size() < width) k.resize(width, ' ');
  return wrap(std::string(indent, ' ') + "\u2022 " + k + " ", value, indent + 3 + width);
}

std::string accuracy_finding(const ReportData& d, const Findings& f) {
  auto acc_of = [&](const std::string& n) { return pct(d.find(n)->metrics->accuracy); };
  switch (f.accuracy) {
    case Findings::Accuracy::kNone: return "no variant has accuracy figures yet";
    case Findings::Accuracy::kSingle:
      return fmt::format("{} ({}); the only variant with accuracy figures", f.top_accuracy[0], acc_of(f.top_accuracy[0]));
    case Findings::Accuracy::kSignificantlyHighest:
      return fmt::format("{} ({}), significantly above every other variant (largest McNemar p = {})", f.top_accuracy[0],
                         acc_of(f.top_accuracy[0]), pvalue(f.max_p_vs_top));
    case Findings::Accuracy::kIndistinguishable:
    case Findings::Accuracy::kTopGroup: {
      double lo = 1, hi = 0;
      for (const auto& n : f.top_accuracy) {
        lo = std::min(lo, d.find(n)->metrics->accuracy);
        hi = std::max(hi, d.find(n)->metrics->accuracy);
      }
      const std::string range = pct(lo) == pct(hi) ? "all at " + pct(hi) : pct(lo) + " to " + pct(hi);
      std::string s = fmt::format("no single highest: {} are statistically indistinguishable ({}, McNemar p >= "
                                  "{:.2f} against the most accurate)",
                                  join_and(f.top_accuracy), range, kSignificance);
      if (!f.below_top.empty()) s += fmt::format("; significantly lower: {}", join_and(f.below_top));
      return s;
    }
  }
  return "";
}

std::string status_text(const VariantFigures& v) {
  switch (v.status) {
    case VariantStatus::kDone: return "done";
    case VariantStatus::kFailed: return fmt::format("FAILED ({}): {}", v.state, v.error.value_or("no error text stored"));
    case VariantStatus::kIncomplete:
      return fmt::format("incomplete (state {}, {} predictions stored): accuracy not computed", v.state, v.predictions);
  }
  return "";
}

std::string sweep_text(const VariantFigures& v) {
  std::vector<std::string> parts;
  for (const auto& t : v.sweep) parts.push_back(fmt::format("b{} {:.2f}", t.batch_size, t.samples_per_s));
  return join(parts, ", ") + " samples/s";
}

std::string vs_baseline_text(const VariantFigures& v) {
  if (!v.vs_baseline) return "";
  return fmt::format(" (\u0394 {} points vs {}, McNemar p = {}, {})", signed_points(v.accuracy_delta.value_or(0)),
                     *v.baseline, pvalue(v.vs_baseline->p_value),
                     v.vs_baseline->significant ? "significant" : "not significant");
}

std::string ci(const std::optional<Interval>& i) {
  return i ? fmt::format("95% CI {} to {}", pct(i->low), pct(i->high)) : std::string();
}

std::string variant_block(const ReportData& d, const VariantFigures& v) {
  std::string o;
  const bool is_base = d.baseline && v.name == *d.baseline;
  o += "\n\n" + (is_base ? "Baseline (" + v.name + ")" : v.name) + ": " + method_title(v.method) + ", base " +
       v.base_dtype + "\n" + thin_rule() + "\n\n";
  o += wrap("  Status: ", status_text(v), 4);
  o += "\n  Efficiency Metrics:\n";
  const VariantMemory& m = v.memory;
  o += field("Footprint (a), with mask buffers", opt_mib(m.footprint_bytes));
  o += field("Footprint (a), without mask buffers", opt_mib(m.footprint_no_buffers_bytes));
  o += field("Runtime bytes (b)", opt_mib(m.runtime_bytes));
  o += field("Peak memory (c), batch 1", peak_on(m.peak_mem_batch1_bytes, v.peak_mem_batch1_on));
  o += field(fmt::format("Peak memory (c), batch {}", m.max_batch_size ? std::to_string(*m.max_batch_size) : "max"),
             peak_on(m.peak_mem_max_batch_bytes, v.peak_mem_max_batch_on));
  o += field("Compression Ratio (a)", v.compression ? fmt::format("{:.2f}x", *v.compression) : kNotMeasured);
  o += field("Memory Reduction (a)", v.memory_reduction ? pct(*v.memory_reduction) : kNotMeasured);
  o += field("Weight SQNR", sqnr_summary(v.quant_error));
  if (v.quant_error) o += field("SQNR computed on", v.quant_error->on.label());
  if (v.latency) {
    o += field(fmt::format("Latency (batch 1, seq {})", v.latency->seq_len),
               fmt::format("p50 {}, p90 {}, p99 {}", ms(v.latency->p50_ms), ms(v.latency->p90_ms), ms(v.latency->p99_ms)));
    o += field("Throughput (1000 / p50)", rate(1000.0 / v.latency->p50_ms));
    o += field("Latency measured on", v.latency->on.label());
  } else {
    o += field("Latency (batch 1)", kNotMeasured);
  }
  if (!v.sweep.empty()) {
    o += field(fmt::format("Throughput sweep (seq {})", v.sweep.front().seq_len), sweep_text(v));
    o += field("Best throughput", fmt::format("{} at batch {}", rate(v.best_throughput->samples_per_s),
                                              v.best_throughput->batch_size));
    if (!v.latency || !(v.latency->on == v.best_throughput->on)) o += field("Throughput measured on", v.best_throughput->on.label());
  } else {
    o += field("Throughput sweep", kNotMeasured);
  }
  if (v.dataset_rate) {
    const DatasetRate& r = *v.dataset_rate;
    o += field("End-to-end eval rate", r.shards > 0 ? fmt::format("{} ({} samples in {} shards, {:.2f} s of worker time; "
                                                                  "tokenize + forward + write) on {}",
                                                                  rate(r.samples_per_s), r.samples, r.shards, r.seconds,
                                                                  r.on.label())
                                                    : fmt::format("{} on {}", rate(r.samples_per_s), r.on.label()));
    if (r.max_deliveries > 1) o += field("Redelivered shards", fmt::format("yes (max {} deliveries, counted once)", r.max_deliveries));
  } else {
    o += field("End-to-end eval rate", kNotMeasured);
  }
  if (v.test_set_rate) {
    const TestSetRate& t = *v.test_set_rate;
    o += field("Test-set rate", fmt::format("{} ({} rows in batches of {}, each padded to its longest row; "
                                            "forward only) on {}",
                                            rate(t.samples_per_s), t.rows, t.batch_size, t.on.label()));
  } else {
    o += field("Test-set rate", kNotMeasured);
  }
  o += "    \n";
  if (!v.metrics) {
    o += "  Performance Metrics:\n    \u2022 not available (" + std::string(to_string(v.status)) + ")\n";
    return o;
  }
  const auto& mt = *v.metrics;
  o += fmt::format("  Performance Metrics ({} samples):\n", mt.n);
  o += field("Predictions computed on", v.evaluated_on.label());
  o += field("Accuracy", pct(mt.accuracy) + " (" + ci(v.accuracy_ci) + ")" + vs_baseline_text(v));
  if (v.vs_baseline) o += field("Agreement with " + *v.baseline, pct(v.vs_baseline->agreement));
  o += field("Precision (Macro)", pct(mt.macro_precision));
  o += field("Recall (Macro)", pct(mt.macro_recall));
  o += field("F1-Score (Macro)", pct(mt.macro_f1) + (v.macro_f1_ci ? " (" + ci(v.macro_f1_ci) + ", bootstrap)" : ""));
  o += "    \n  Per-Class F1-Scores:\n";
  for (size_t c = 0; c < mt.per_class.size(); ++c) o += field(d.class_names[c], pct(mt.per_class[c].f1));
  o += "\n  Confusion Matrix (rows: true class, columns: predicted):\n";
  std::string head = fmt::format("    {:<10}", "");
  for (const auto& n : d.class_names) head += fmt::format("{:>10}", n);
  o += head + "\n";
  for (size_t r = 0; r < mt.confusion.size(); ++r) {
    std::string row = fmt::format("    {:<10}", d.class_names[r]);
    for (int64_t x : mt.confusion[r]) row += fmt::format("{:>10}", x);
    o += row + "\n";
  }
  return o;
}

std::string section(int number, const std::string& title) {
  return "\n" + kRule + "\n\n" + std::to_string(number) + ". " + title + "\n" + kRule + "\n";
}

/// The general observations: ranges computed from the table, no fixed claims.
std::vector<std::string> observations(const ReportData& d) {
  std::vector<std::string> out;
  double cmin = 1e300, cmax = 0, dmin = 1e300, dmax = -1e300;
  int ncomp = 0, ndelta = 0;
  for (const auto& v : d.variants) {
    if (!v.baseline) continue;
    if (v.compression) cmin = std::min(cmin, *v.compression), cmax = std::max(cmax, *v.compression), ++ncomp;
    if (v.accuracy_delta) dmin = std::min(dmin, *v.accuracy_delta), dmax = std::max(dmax, *v.accuracy_delta), ++ndelta;
  }
  if (ncomp > 0) out.push_back(fmt::format("Footprint (a) compression against the baseline ranges from {:.2f}x to {:.2f}x.", cmin, cmax));
  if (ndelta > 0) {
    out.push_back(fmt::format("Accuracy change against the baseline ranges from {} to {} points; the baseline's 95% "
                              "interval alone spans \u00b1{:.2f} points.",
                              signed_points(dmin), signed_points(dmax),
                              [&] {
                                const VariantFigures* b = d.baseline ? d.find(*d.baseline) : nullptr;
                                return b && b->accuracy_ci ? (b->accuracy_ci->high - b->accuracy_ci->low) * 50.0 : 0.0;
                              }()));
  }
  out.push_back("Speed depends on the device and the kernels; the figures above hold for the device named with them.");
  return out;
}

}  // namespace

std::string render_text(const ReportData& d) {
  const Findings f = derive_findings(d);
  const SpecSummary spec = summarize_spec(d);
  std::string o;
  o += "\n" + kRule + "\nCOMPREHENSIVE QUANTIZATION COMPARISON REPORT\n" + spec.model_config.substr(0, spec.model_config.find(" (")) +
       " on AG News Dataset\n";
  o += fmt::format("Experiment {} (id {}), state {}; created {}{}; generated {} by qbench {}\n", d.experiment_name,
                   d.experiment_id, d.state, d.created_at, d.finished_at ? ", finished " + *d.finished_at : "",
                   d.generated_at, d.qbench_version);
  o += kRule + "\n\n1. EXECUTIVE SUMMARY\n" + kRule + "\n\n";
  size_t test_n = 0;
  for (const auto& v : d.variants) {
    if (v.metrics) test_n = std::max<size_t>(test_n, v.metrics->n);
  }
  o += wrap("", fmt::format("This report compares {} variants of {} for text classification on the AG News dataset "
                            "({} test samples evaluated per variant at most). The comparison includes:",
                            d.variants.size(), spec.model_config, test_n),
            0);
  for (const auto& v : d.variants) {
    const bool is_base = d.baseline && v.name == *d.baseline;
    o += wrap("  \u2022 ", fmt::format("{}{}: {}, base {}{}", is_base ? "Baseline: " : "", v.name, method_title(v.method),
                                       v.base_dtype,
                                       v.status == VariantStatus::kDone ? "" : fmt::format(" [{}]", to_string(v.status))),
              4);
  }
  o += "\n";
  o += wrap("  Accuracy: ", accuracy_finding(d, f), 4);
  if (!f.lowest_memory.empty()) {
    o += wrap("  Memory:   ", fmt::format("lowest footprint (a): {} ({})", join_and(f.lowest_memory), mib(*f.lowest_memory_bytes)), 4);
  }
  for (const auto& s : f.speed) {
    if (s.lowest_latency_ms) {
      o += wrap("  Speed:    ", fmt::format("lowest batch-1 latency on {}: {} (p50 {})", s.device, join_and(s.lowest_latency),
                                            ms(*s.lowest_latency_ms)),
                4);
    }
  }
  if (!f.warnings.empty()) {
    o += "\n  Warnings:\n";
    for (const auto& w : f.warnings) o += wrap("  ! ", w, 4);
  }

  o += section(2, "DETAILED METRICS COMPARISON");
  for (const auto& v : d.variants) o += variant_block(d, v);

  o += section(3, "KEY FINDINGS AND ANALYSIS");
  o += "\n\nBest Performance:\n";
  o += field("Highest Accuracy", accuracy_finding(d, f), 24, 2);
  o += field("Lowest Memory", f.lowest_memory.empty() ? std::string(kNotMeasured)
                                                      : fmt::format("{} ({}, footprint (a)){}", join_and(f.lowest_memory),
                                                                    mib(*f.lowest_memory_bytes),
                                                                    f.lowest_memory.size() > 1 ? ", tied" : ""),
             24, 2);
  for (const auto& s : f.speed) {
    if (s.lowest_latency_ms) {
      o += field("Lowest Latency", fmt::format("{} (p50 {}{}) on {}", join_and(s.lowest_latency), ms(*s.lowest_latency_ms),
                                               s.lowest_latency.size() > 1 ? ", tied" : "", s.device),
                 24, 2);
    }
    if (s.best_point) {
      o += field("Highest Throughput", fmt::format("{} ({} at batch {}{}) on {}", join_and(s.highest_throughput),
                                                   rate(s.best_point->samples_per_s), s.best_point->batch_size,
                                                   s.highest_throughput.size() > 1 ? ", tied" : "", s.device),
                 24, 2);
    }
  }
  if (f.speed.empty()) o += field("Lowest Latency", kNotMeasured, 24, 2);
  if (!f.speed_not_measured.empty()) o += field("Speed not measured", join_and(f.speed_not_measured), 24, 2);
  if (!f.memory_not_measured.empty()) o += field("Memory not measured", join_and(f.memory_not_measured), 24, 2);

  o += "\nAccuracy vs Baseline (McNemar exact test on the same samples):\n";
  bool any = false;
  for (const auto& v : d.variants) {
    if (!v.vs_baseline) continue;
    any = true;
    o += field(v.name, fmt::format("{} points vs {}, p = {}, {}; agreement {}", signed_points(*v.accuracy_delta), *v.baseline,
                                   pvalue(v.vs_baseline->p_value),
                                   v.vs_baseline->significant ? "significant" : "not significant",
                                   pct(v.vs_baseline->agreement)),
               24, 2);
  }
  if (!any) o += "  \u2022 no paired comparison available\n";

  o += "\nTrade-off Analysis:\n";
  for (const auto& t : f.trade_offs) o += wrap("  \u2022 ", t, 4);
  if (f.trade_offs.empty()) o += "  \u2022 not enough measured figures for a trade-off analysis\n";

  o += section(4, "RECOMMENDATIONS");
  o += "\nBased on the experimental results (rules in docs/report.md):\n\n1. For Production Deployment:\n";
  for (const auto& r : f.recommendations) {
    if (r.rfind("  ", 0) == 0) {
      o += wrap("     ", r.substr(2), 5);
    } else {
      o += wrap("   \u2022 ", r, 5);
    }
  }
  o += "\n2. General Observations:\n";
  for (const auto& s : observations(d)) o += wrap("   \u2022 ", s, 5);

  o += section(5, "TECHNICAL NOTES");
  o += "\nQuantization Methods:\n";
  std::vector<std::string> seen;
  for (const auto& v : d.variants) {
    if (std::find(seen.begin(), seen.end(), v.method) != seen.end()) continue;
    seen.push_back(v.method);
    o += field(method_title(v.method), method_description(v.method), 30, 2);
  }
  o += "  Quantized: the 48 projection matrices of the 12 blocks; embeddings, LayerNorms, biases and the score\n"
       "  head stay in the variant's base dtype.\n";
  o += "\nDataset:\n";
  o += field("AG News", "4-class news article classification", 22, 2);
  o += field("Train", spec.train_rows, 22, 2);
  o += field("Test", spec.test_rows, 22, 2);
  o += field("Classes", join(d.class_names), 22, 2);
  o += "\nModel:\n";
  o += field("Base Model", spec.model_config, 22, 2);
  o += field("Initialisation", spec.model_init, 22, 2);
  o += field("Task", "Text Classification (class logit at the last non-pad token)", 22, 2);
  o += field("Max Length", spec.max_len, 22, 2);
  if (d.training) {
    const TrainingSummary& t = *d.training;
    o += field("Training", fmt::format("{} epochs in {:.1f} s{}{}{} on {}", t.epochs, t.seconds,
                                       t.samples_per_s ? fmt::format(", {}", rate(*t.samples_per_s)) : "",
                                       t.final_loss ? fmt::format(", final loss {:.4f}", *t.final_loss) : "",
                                       t.val_accuracy ? ", validation accuracy " + pct(*t.val_accuracy) : "", t.on.label()),
               22, 2);
  } else {
    o += field("Training", "no training run stored", 22, 2);
  }
  o += "\nMeasurement (SPEC section 3):\n";
  o += wrap("  \u2022 ", "Memory in MiB (1 MiB = 1,048,576 bytes). (a) parameters + registered buffers as Hugging Face "
                         "get_memory_footprint() counts them, with and without the 12 causal-mask buffers; (b) every "
                         "byte the variant needs to run; (c) peak device memory during inference, on the device named "
                         "with it. (a) and (b) are counted from the tensor shapes and dtypes, not measured on a device.", 4);
  o += wrap("  \u2022 ", "Weight SQNR per projection: 10 log10(sum w^2 / sum (w - w')^2) in dB, w the fp32 weight and w' "
                         "the weight the variant stores, dequantized; higher is closer. \"Exact\" projections have no "
                         "error (no finite SQNR). Activation quantization (W8A8, LLM.int8) is not part of it: it shows "
                         "in accuracy and agreement.", 4);
  // 4,096: worker::GPT2ClassifierImpl::kPruneMinTokens (the scheduler does not link the model).
  o += wrap("  \u2022 ", "Latency: batch 1, padded sequence, model forward only, after warm-up runs; p50/p90/p99. "
                         "Throughput: samples/s of the forward pass per batch size; from 4,096 tokens a forward the "
                         "last block runs only at the token the classifier reads. Speed figures are compared only "
                         "between variants measured on the same device.", 4);
  o += wrap("  \u2022 ", "Accuracy 95% interval: Wilson. Macro F1 95% interval: bootstrap, 1,000 resamples, seed 1234. "
                         "Differences: McNemar exact test on the paired predictions; called a difference only when "
                         "p < 0.05.", 4);
  o += "\n" + kRule + "\n\nREPORT END\n" + kRule + "\n";
  return o;
}

// ---------------------------------------------------------------------------------------------------------
// Markdown

namespace {

std::string md_row(const std::vector<std::string>& cells) {
  std::string s = "|";
  for (const auto& c : cells) s += " " + c + " |";
  return s + "\n";
}
std::string md_table(const std::vector<std::string>& head, const std::vector<std::vector<std::string>>& rows) {
  std::string s = md_row(head);
  s += "|";
  for (size_t i = 0; i < head.size(); ++i) s += i == 0 ? " --- |" : " ---: |";
  s += "\n";
  for (const auto& r : rows) s += md_row(r);
  return s;
}

}  // namespace

std::string render_markdown(const ReportData& d) {
  const Findings f = derive_findings(d);
  const SpecSummary spec = summarize_spec(d);
  std::string o;
  o += "# Quantization comparison: " + md_escape(d.experiment_name) + "\n\n";
  o += fmt::format("Experiment id {}, state {}, created {}{}. Generated {} by qbench {}. Model: {}, {}.\n\n",
                   d.experiment_id, d.state, d.created_at, d.finished_at ? ", finished " + *d.finished_at : "",
                   d.generated_at, d.qbench_version, spec.model_config, spec.model_init);
  if (!f.warnings.empty()) {
    o += "**Warnings**\n\n";
    for (const auto& w : f.warnings) o += "- " + md_escape(w) + "\n";
    o += "\n";
  }

  o += "## 1. Summary\n\n";
  std::vector<std::vector<std::string>> rows;
  for (const auto& v : d.variants) {
    const bool m = v.metrics.has_value();
    rows.push_back({md_escape(v.name) + (d.baseline && v.name == *d.baseline ? " (baseline)" : ""),
                    md_escape(method_title(v.method)), v.base_dtype,
                    v.status == VariantStatus::kFailed ? "failed" : to_string(v.status),
                    m ? pct(v.metrics->accuracy) : "n/a",
                    v.accuracy_ci ? pct(v.accuracy_ci->low) + " to " + pct(v.accuracy_ci->high) : "n/a",
                    v.accuracy_delta && v.vs_baseline ? signed_points(*v.accuracy_delta) : "",
                    v.vs_baseline ? pvalue(v.vs_baseline->p_value) + (v.vs_baseline->significant ? "" : " (n.s.)") : "",
                    v.vs_baseline ? pct(v.vs_baseline->agreement) : "",
                    m ? pct(v.metrics->macro_f1) : "n/a",
                    v.macro_f1_ci ? pct(v.macro_f1_ci->low) + " to " + pct(v.macro_f1_ci->high) : "n/a",
                    m ? md_escape(v.evaluated_on.label()) : ""});
  }
  o += md_table({"variant", "method", "base", "status", "accuracy", "accuracy 95% CI", "Δ points", "McNemar p",
                 "agreement", "macro F1", "macro F1 95% CI", "predictions computed on"},
                rows);

  o += "\n## 2. Memory (MiB)\n\n";
  rows.clear();
  for (const auto& v : d.variants) {
    const auto& m = v.memory;
    rows.push_back({md_escape(v.name), opt_mib(m.footprint_bytes), opt_mib(m.footprint_no_buffers_bytes),
                    opt_mib(m.runtime_bytes), opt_mib(m.peak_mem_batch1_bytes),
                    m.peak_mem_max_batch_bytes ? mib(*m.peak_mem_max_batch_bytes) +
                                                     (m.max_batch_size ? fmt::format(" (batch {})", *m.max_batch_size) : "")
                                               : kNotMeasured,
                    v.compression ? fmt::format("{:.2f}x", *v.compression) : kNotMeasured,
                    md_escape(peak_devices(v))});
  }
  o += md_table({"variant", "(a) with mask buffers", "(a) without", "(b) runtime", "(c) peak, batch 1",
                 "(c) peak, largest batch", "compression (a)", "(c) measured on"},
                rows);
  o += "\n(a) and (b) are counted from the tensor shapes and dtypes; (c) is measured on the device named.\n";

  o += "\n## 3. Weight quantization error (SQNR)\n\n";
  rows.clear();
  for (const auto& v : d.variants) {
    if (!v.quant_error) {
      rows.push_back({md_escape(v.name), kNotMeasured, "", "", "", "", ""});
      continue;
    }
    const QuantErrorFigures& q = *v.quant_error;
    rows.push_back({md_escape(v.name), std::to_string(q.projections), q.min_db ? db(*q.min_db) : "exact",
                    md_escape(q.min_at), median_cell(q), std::to_string(q.exact), md_escape(q.on.label())});
  }
  o += md_table({"variant", "projections", "min SQNR", "lowest at", "median SQNR", "exact", "computed on"}, rows);
  o += "\nSQNR = 10 log10(sum w^2 / sum (w - w')^2) per projection, w the fp32 weight, w' the stored weight "
       "dequantized; \"exact\" = no error. Every projection's figure is in the JSON report.\n";

  o += "\n## 4. Speed\n\nCompared only within one device.\n";
  for (const auto& s : f.speed) {
    o += "\n### " + md_escape(s.device) + "\n\n";
    rows.clear();
    std::vector<int> batches;
    for (const auto& v : d.variants) {
      for (const auto& t : v.sweep) {
        if (t.on.device == s.device && std::find(batches.begin(), batches.end(), t.batch_size) == batches.end())
          batches.push_back(t.batch_size);
      }
    }
    std::sort(batches.begin(), batches.end());
    std::vector<std::string> head = {"variant", "p50 ms", "p90 ms", "p99 ms"};
    for (int b : batches) head.push_back(fmt::format("b{} samples/s", b));
    head.push_back("measured on");
    for (const auto& v : d.variants) {
      const bool lat = v.latency && v.latency->on.device == s.device;
      bool thr = false;
      std::vector<std::string> r = {md_escape(v.name)};
      r.push_back(lat ? fmt::format("{:.2f}", v.latency->p50_ms) : "");
      r.push_back(lat ? fmt::format("{:.2f}", v.latency->p90_ms) : "");
      r.push_back(lat ? fmt::format("{:.2f}", v.latency->p99_ms) : "");
      std::string on = lat ? v.latency->on.label() : "";
      for (int b : batches) {
        std::string cell;
        for (const auto& t : v.sweep) {
          if (t.batch_size == b && t.on.device == s.device) {
            cell = fmt::format("{:.2f}", t.samples_per_s);
            thr = true;
            if (on.empty()) on = t.on.label();
          }
        }
        r.push_back(cell);
      }
      r.push_back(md_escape(on));
      if (lat || thr) rows.push_back(r);
    }
    o += md_table(head, rows);
  }
  if (!f.speed_not_measured.empty()) o += "\nLatency not measured: " + md_escape(join(f.speed_not_measured)) + ".\n";
  // End-to-end rates, one table per device: rates from different devices are not set side by side.
  const std::vector<std::string> rate_devices =
      devices_of(d.variants, [](const VariantFigures& v) { return v.dataset_rate ? &v.dataset_rate->on : nullptr; });
  for (const auto& dev : rate_devices) {
    rows.clear();
    for (const auto& v : d.variants) {
      if (!v.dataset_rate || v.dataset_rate->on.device != dev) continue;
      rows.push_back({md_escape(v.name), fmt::format("{:.2f}", v.dataset_rate->samples_per_s),
                      std::to_string(v.dataset_rate->samples), std::to_string(v.dataset_rate->shards),
                      md_escape(v.dataset_rate->on.label())});
    }
    o += "\nEnd-to-end evaluation rate on " + md_escape(dev) + " (tokenize + forward + write, summed worker time):\n\n";
    o += md_table({"variant", "samples/s", "samples", "shards", "measured on"}, rows);
  }
  // The bench jobs' test-set rates, also one table per device.
  const std::vector<std::string> test_devices =
      devices_of(d.variants, [](const VariantFigures& v) { return v.test_set_rate ? &v.test_set_rate->on : nullptr; });
  for (const auto& dev : test_devices) {
    rows.clear();
    for (const auto& v : d.variants) {
      if (!v.test_set_rate || v.test_set_rate->on.device != dev) continue;
      const TestSetRate& t = *v.test_set_rate;
      rows.push_back({md_escape(v.name), fmt::format("{:.2f}", t.samples_per_s), std::to_string(t.rows),
                      std::to_string(t.batch_size), md_escape(t.on.label())});
    }
    o += "\nTest-set rate on " + md_escape(dev) + " (bench job: test rows padded per batch to their longest, forward only):\n\n";
    o += md_table({"variant", "samples/s", "rows", "batch", "measured on"}, rows);
  }

  o += "\n## 5. Per-class F1\n\nFrom the predictions of section 1 (device in its last column).\n\n";
  rows.clear();
  for (const auto& v : d.variants) {
    if (!v.metrics) continue;
    std::vector<std::string> r = {md_escape(v.name)};
    for (const auto& c : v.metrics->per_class) r.push_back(pct(c.f1));
    rows.push_back(r);
  }
  std::vector<std::string> head = {"variant"};
  for (const auto& c : d.class_names) head.push_back(md_escape(c));
  o += md_table(head, rows);

  o += "\n## 6. Key findings\n\n";
  o += "- Accuracy: " + md_escape(accuracy_finding(d, f)) + "\n";
  o += "- Lowest memory: " +
       (f.lowest_memory.empty() ? std::string(kNotMeasured)
                                : md_escape(join_and(f.lowest_memory)) + " (" + mib(*f.lowest_memory_bytes) + ")") +
       "\n";
  for (const auto& s : f.speed) {
    if (s.lowest_latency_ms)
      o += "- Lowest latency on " + md_escape(s.device) + ": " + md_escape(join_and(s.lowest_latency)) + " (p50 " +
           ms(*s.lowest_latency_ms) + ")\n";
    if (s.best_point)
      o += "- Highest throughput on " + md_escape(s.device) + ": " + md_escape(join_and(s.highest_throughput)) + " (" +
           rate(s.best_point->samples_per_s) + " at batch " + std::to_string(s.best_point->batch_size) + ")\n";
  }
  for (const auto& t : f.trade_offs) o += "- " + md_escape(t) + "\n";

  o += "\n## 7. Recommendations\n\n";
  for (const auto& r : f.recommendations) o += (r.rfind("  ", 0) == 0 ? "  - " + md_escape(r.substr(2)) : "- " + md_escape(r)) + "\n";

  o += "\n## 8. Technical notes\n\n";
  std::vector<std::string> seen;
  for (const auto& v : d.variants) {
    if (std::find(seen.begin(), seen.end(), v.method) != seen.end()) continue;
    seen.push_back(v.method);
    o += "- " + md_escape(method_title(v.method)) + ": " + md_escape(method_description(v.method)) + "\n";
  }
  o += "- Data: train " + md_escape(spec.train_rows) + "; test " + md_escape(spec.test_rows) + "; max length " +
       spec.max_len + ".\n";
  if (d.training) {
    o += fmt::format("- Training: {} epochs in {:.1f} s on {}.\n", d.training->epochs, d.training->seconds,
                     md_escape(d.training->on.label()));
  }
  o += "- Memory in MiB. Accuracy 95% interval: Wilson; macro F1: bootstrap (1,000 resamples, seed 1234); "
       "differences: McNemar exact test, significant when p < 0.05.\n";
  return o;
}

}  // namespace evalsvc::scheduler
