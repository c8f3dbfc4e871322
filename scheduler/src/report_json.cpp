// JSON renderer (every figure; "not measured" = null) and the side-by-side comparison of two experiments.
#include <algorithm>
#include <cmath>

#include "evalsvc/common/error.h"
#include "evalsvc/scheduler/report.h"
#include "report_internal.h"

namespace evalsvc::scheduler {

using namespace report_detail;
using nlohmann::json;

namespace {

/// Rounded to 10 significant digits, so golden files do not depend on the last bits of a libm.
json num(double v) {
  if (!std::isfinite(v)) return nullptr;
  if (v == 0) return 0.0;
  const double mag = std::pow(10.0, 9 - static_cast<int>(std::floor(std::log10(std::fabs(v)))));
  return std::round(v * mag) / mag;
}
template <typename T>
json opt_num(const std::optional<T>& v) {
  if (!v) return nullptr;
  if constexpr (std::is_floating_point_v<T>) return num(*v);
  else return *v;
}
json on_json(const MeasuredOn& on) { return {{"device", on.device}, {"software", on.software}, {"date", on.date}}; }
json interval(const std::optional<Interval>& i) {
  if (!i) return nullptr;
  return {{"low", num(i->low)}, {"high", num(i->high)}};
}
json names(const std::vector<std::string>& v) { return v; }

}  // namespace

json report_to_json(const ReportData& d) {
  json j;
  j["experiment"] = {{"id", d.experiment_id},  {"name", d.experiment_name},        {"state", d.state},
                     {"error", d.error ? json(*d.error) : json(nullptr)},           {"created_at", d.created_at},
                     {"finished_at", d.finished_at ? json(*d.finished_at) : json(nullptr)},
                     {"spec", d.spec}};
  j["generated_at"] = d.generated_at;
  j["qbench_version"] = d.qbench_version;
  j["baseline"] = d.baseline ? json(*d.baseline) : json(nullptr);
  j["class_names"] = d.class_names;
  if (d.training) {
    const auto& t = *d.training;
    j["training"] = {{"runs", t.runs},
                     {"epochs", t.epochs},
                     {"seconds", num(t.seconds)},
                     {"samples_per_s", opt_num(t.samples_per_s)},
                     {"final_loss", opt_num(t.final_loss)},
                     {"val_accuracy", opt_num(t.val_accuracy)},
                     {"measured_on", on_json(t.on)}};
  } else {
    j["training"] = nullptr;
  }
  json vs = json::array();
  for (const auto& v : d.variants) {
    json x;
    x["name"] = v.name;
    x["method"] = v.method;
    x["base_dtype"] = v.base_dtype;
    x["baseline"] = v.baseline ? json(*v.baseline) : json(nullptr);
    x["status"] = to_string(v.status);
    x["state"] = v.state;
    x["error"] = v.error ? json(*v.error) : json(nullptr);
    x["predictions"] = v.predictions;
    x["predictions_measured_on"] = v.metrics ? on_json(v.evaluated_on) : json(nullptr);
    if (v.metrics) {
      const auto& m = *v.metrics;
      json pc = json::array();
      for (size_t c = 0; c < m.per_class.size(); ++c) {
        pc.push_back({{"class", d.class_names[c]},
                      {"precision", num(m.per_class[c].precision)},
                      {"recall", num(m.per_class[c].recall)},
                      {"f1", num(m.per_class[c].f1)},
                      {"support", m.per_class[c].support}});
      }
      x["metrics"] = {{"n", m.n},
                      {"accuracy", num(m.accuracy)},
                      {"accuracy_ci95_wilson", interval(v.accuracy_ci)},
                      {"macro_precision", num(m.macro_precision)},
                      {"macro_recall", num(m.macro_recall)},
                      {"macro_f1", num(m.macro_f1)},
                      {"macro_f1_ci95_bootstrap", interval(v.macro_f1_ci)},
                      {"per_class", pc},
                      {"confusion", m.confusion}};
    } else {
      x["metrics"] = nullptr;
    }
    if (v.vs_baseline) {
      const auto& p = *v.vs_baseline;
      x["vs_baseline"] = {{"baseline", *v.baseline},
                          {"n", p.n},
                          {"accuracy_delta", opt_num(v.accuracy_delta)},
                          {"agreement", num(p.agreement)},
                          {"both_correct", p.both_correct},
                          {"only_variant_correct", p.only_a_correct},
                          {"only_baseline_correct", p.only_b_correct},
                          {"both_wrong", p.both_wrong},
                          {"mcnemar_p", num(p.p_value)},
                          {"significant", p.significant}};
    } else {
      x["vs_baseline"] = nullptr;
    }
    const auto& m = v.memory;
    x["memory"] = {{"footprint_bytes", opt_num(m.footprint_bytes)},
                   {"footprint_no_buffers_bytes", opt_num(m.footprint_no_buffers_bytes)},
                   {"runtime_bytes", opt_num(m.runtime_bytes)},
                   {"peak_mem_batch1_bytes", opt_num(m.peak_mem_batch1_bytes)},
                   {"peak_mem_max_batch_bytes", opt_num(m.peak_mem_max_batch_bytes)},
                   {"max_batch_size", opt_num(m.max_batch_size)},
                   {"peak_mem_batch1_measured_on", m.peak_mem_batch1_bytes ? on_json(v.peak_mem_batch1_on) : json(nullptr)},
                   {"peak_mem_max_batch_measured_on",
                    m.peak_mem_max_batch_bytes ? on_json(v.peak_mem_max_batch_on) : json(nullptr)},
                   {"compression", opt_num(v.compression)},
                   {"memory_reduction", opt_num(v.memory_reduction)}};
    if (v.quant_error) {
      const QuantErrorFigures& q = *v.quant_error;
      json layers = json::array();
      for (const auto& e : q.layers) {
        layers.push_back({{"layer", e.layer},
                          {"projection", e.projection},
                          {"numel", e.numel},
                          {"signal_sq", num(e.signal_sq)},
                          {"error_sq", num(e.error_sq)},
                          {"max_abs_error", num(e.max_abs_error)},
                          {"sqnr_db", opt_num(e.sqnr_db)}});
      }
      x["quantization_error"] = {{"projections", q.projections},
                                 {"exact_projections", q.exact},
                                 {"min_sqnr_db", opt_num(q.min_db)},
                                 {"min_at", q.min_db ? json(q.min_at) : json(nullptr)},
                                 {"median_sqnr_db", opt_num(q.median_db)},
                                 {"measured_on", on_json(q.on)},
                                 {"layers", layers}};
    } else {
      x["quantization_error"] = nullptr;
    }
    if (v.latency) {
      const auto& l = *v.latency;
      x["latency"] = {{"batch_size", 1},
                      {"seq_len", l.seq_len},
                      {"p50_ms", num(l.p50_ms)},
                      {"p90_ms", num(l.p90_ms)},
                      {"p99_ms", num(l.p99_ms)},
                      {"warmup_runs", opt_num(l.warmup_runs)},
                      {"timed_runs", opt_num(l.timed_runs)},
                      {"peak_mem_bytes", opt_num(l.peak_mem_bytes)},
                      {"measured_on", on_json(l.on)}};
    } else {
      x["latency"] = nullptr;
    }
    json sweep = json::array();
    for (const auto& t : v.sweep) {
      sweep.push_back({{"batch_size", t.batch_size},
                       {"seq_len", t.seq_len},
                       {"samples_per_s", num(t.samples_per_s)},
                       {"peak_mem_bytes", opt_num(t.peak_mem_bytes)},
                       {"measured_on", on_json(t.on)}});
    }
    x["throughput_sweep"] = sweep;
    x["best_throughput"] = v.best_throughput ? json{{"batch_size", v.best_throughput->batch_size},
                                                    {"samples_per_s", num(v.best_throughput->samples_per_s)}}
                                             : json(nullptr);
    if (v.dataset_rate) {
      const auto& r = *v.dataset_rate;
      x["dataset_rate"] = {{"samples", r.samples},     {"seconds", num(r.seconds)},
                           {"samples_per_s", num(r.samples_per_s)}, {"shards", r.shards},
                           {"max_deliveries", r.max_deliveries},    {"measured_on", on_json(r.on)}};
    } else {
      x["dataset_rate"] = nullptr;
    }
    if (v.test_set_rate) {
      const auto& t = *v.test_set_rate;
      x["test_set_rate"] = {{"samples_per_s", num(t.samples_per_s)}, {"rows", t.rows},
                            {"batch_size", t.batch_size},           {"peak_mem_bytes", opt_num(t.peak_mem_bytes)},
                            {"measured_on", on_json(t.on)}};
    } else {
      x["test_set_rate"] = nullptr;
    }
    vs.push_back(std::move(x));
  }
  j["variants"] = vs;
  json pw = json::object();
  for (size_t i = 0; i < d.variants.size(); ++i) {
    for (size_t k = i + 1; k < d.variants.size(); ++k) {
      if (d.pairwise_p[i][k]) pw[d.variants[i].name + " vs " + d.variants[k].name] = num(*d.pairwise_p[i][k]);
    }
  }
  j["pairwise_mcnemar_p"] = pw;

  const Findings f = derive_findings(d);
  static const char* kAcc[] = {"none", "single", "significantly_highest", "indistinguishable", "top_group"};
  json speed = json::array();
  for (const auto& s : f.speed) {
    speed.push_back({{"device", s.device},
                     {"lowest_latency", names(s.lowest_latency)},
                     {"lowest_latency_ms", opt_num(s.lowest_latency_ms)},
                     {"highest_throughput", names(s.highest_throughput)},
                     {"best_point", s.best_point ? json{{"batch_size", s.best_point->batch_size},
                                                        {"samples_per_s", num(s.best_point->samples_per_s)}}
                                                 : json(nullptr)}});
  }
  j["findings"] = {{"accuracy", kAcc[static_cast<int>(f.accuracy)]},
                   {"top_accuracy", names(f.top_accuracy)},
                   {"below_top", names(f.below_top)},
                   {"max_p_vs_top", num(f.max_p_vs_top)},
                   {"lowest_memory", names(f.lowest_memory)},
                   {"lowest_memory_bytes", opt_num(f.lowest_memory_bytes)},
                   {"memory_not_measured", names(f.memory_not_measured)},
                   {"speed", speed},
                   {"speed_not_measured", names(f.speed_not_measured)},
                   {"accuracy_preserved", names(f.accuracy_preserved)},
                   {"accuracy_degraded", names(f.accuracy_degraded)},
                   {"trade_offs", f.trade_offs},
                   {"recommendations", f.recommendations},
                   {"warnings", f.warnings}};
  return j;
}

std::string render_json(const ReportData& d) { return report_to_json(d).dump(2) + "\n"; }

// ---------------------------------------------------------------------------------------------------------
// Comparison of two experiments

namespace {

struct CompareRow {
  std::string variant;
  const VariantFigures* a = nullptr;
  const VariantFigures* b = nullptr;
};

std::vector<CompareRow> match(const ReportData& a, const ReportData& b) {
  std::vector<CompareRow> rows;
  for (const auto& v : a.variants) rows.push_back({v.name, &v, b.find(v.name)});
  for (const auto& v : b.variants) {
    if (!a.find(v.name)) rows.push_back({v.name, nullptr, &v});
  }
  return rows;
}

std::optional<double> acc(const VariantFigures* v) {
  return v && v->metrics ? std::optional<double>(v->metrics->accuracy) : std::nullopt;
}
std::optional<double> f1(const VariantFigures* v) {
  return v && v->metrics ? std::optional<double>(v->metrics->macro_f1) : std::nullopt;
}
std::optional<int64_t> mem(const VariantFigures* v) { return v ? v->memory.footprint_bytes : std::nullopt; }
const LatencyFigures* lat(const VariantFigures* v) { return v && v->latency ? &*v->latency : nullptr; }

/// Whether the two Wilson intervals overlap (a rough "could be the same" flag across experiments; the
/// paired test needs both experiments' predictions on the same samples, which two experiments need not have).
std::optional<bool> ci_overlap(const VariantFigures* a, const VariantFigures* b) {
  if (!a || !b || !a->accuracy_ci || !b->accuracy_ci) return std::nullopt;
  return a->accuracy_ci->low <= b->accuracy_ci->high && b->accuracy_ci->low <= a->accuracy_ci->high;
}

std::string cell_pct(std::optional<double> v) { return v ? pct(*v) : "n/a"; }
std::string cell_mib(std::optional<int64_t> v) { return v ? mib(*v) : kNotMeasured; }
std::optional<double> min_sqnr(const VariantFigures* v) {
  return v && v->quant_error ? v->quant_error->min_db : std::nullopt;
}
std::string cell_sqnr(const VariantFigures* v) {
  if (!v || !v->quant_error) return kNotMeasured;
  return v->quant_error->min_db ? db(*v->quant_error->min_db) : "exact";
}

/// The distinct labels of `labels`, in first-seen order, joined with "; ".
std::string distinct(const std::vector<std::string>& labels) {
  std::vector<std::string> out;
  for (const auto& l : labels) {
    if (std::find(out.begin(), out.end(), l) == out.end()) out.push_back(l);
  }
  return out.empty() ? std::string(kNotMeasured) : join(out, "; ");
}

}  // namespace

namespace report_detail {

ComparisonTable comparison_table(const ReportData& a, const ReportData& b) {
  ComparisonTable t;
  t.head = {"variant", "acc A",  "acc B", "diff points", "95% CIs overlap", "macro F1 A", "macro F1 B",
            "(a) A",   "(a) B",  "min SQNR A", "min SQNR B", "p50 A", "p50 B",     "diff p50"};
  for (const auto& r : match(a, b)) {
    const LatencyFigures *la = lat(r.a), *lb = lat(r.b);
    auto status = [](const VariantFigures* v, std::optional<double> x) {
      if (!v) return std::string("absent");
      if (v->status != VariantStatus::kDone) return std::string(to_string(v->status));
      return cell_pct(x);
    };
    auto ov = ci_overlap(r.a, r.b);
    std::string dp50;
    if (la && lb) dp50 = la->on.device == lb->on.device ? fmt::format("{:+.2f} ms", lb->p50_ms - la->p50_ms)
                                                        : "different devices";
    t.cells.push_back({r.variant, status(r.a, acc(r.a)), status(r.b, acc(r.b)),
                       acc(r.a) && acc(r.b) ? signed_points(*acc(r.b) - *acc(r.a)) : "", ov ? (*ov ? "yes" : "no") : "",
                       cell_pct(f1(r.a)), cell_pct(f1(r.b)), cell_mib(mem(r.a)), cell_mib(mem(r.b)), cell_sqnr(r.a),
                       cell_sqnr(r.b), la ? ms(la->p50_ms) : kNotMeasured, lb ? ms(lb->p50_ms) : kNotMeasured, dp50});
  }
  // Where the figures were measured: every device label of each experiment, so no number in the table
  // stands without its device and software.
  for (const ReportData* d : {&a, &b}) {
    std::vector<std::string> preds, lats, sqnr;
    for (const auto& v : d->variants) {
      if (v.metrics) preds.push_back(v.evaluated_on.label());
      if (v.latency) lats.push_back(v.latency->on.label());
      if (v.quant_error) sqnr.push_back(v.quant_error->on.label());
    }
    t.measured_on.push_back(fmt::format("{}: predictions computed on {}; latency measured on {}; SQNR computed on {}.",
                                        d == &a ? "A" : "B", distinct(preds), distinct(lats), distinct(sqnr)));
  }
  t.note = "Accuracy differences across experiments are not paired tests; overlapping 95% intervals mean the "
           "difference may be noise. Latency differences are given only for figures measured on the same device. "
           "(a) is counted from the tensor shapes. Min SQNR: the lowest weight SQNR over the variant's projections.";
  return t;
}

}  // namespace report_detail

std::string render_comparison(const ReportData& a, const ReportData& b, ReportFormat format) {
  if (format == ReportFormat::kHtml) return report_detail::render_comparison_html(a, b);
  const auto rows = match(a, b);
  if (format == ReportFormat::kJson) {
    json j;
    j["a"] = {{"id", a.experiment_id}, {"name", a.experiment_name}};
    j["b"] = {{"id", b.experiment_id}, {"name", b.experiment_name}};
    json vs = json::array();
    for (const auto& r : rows) {
      json x = {{"variant", r.variant}};
      x["status_a"] = r.a ? json(to_string(r.a->status)) : json("absent");
      x["status_b"] = r.b ? json(to_string(r.b->status)) : json("absent");
      x["accuracy_a"] = opt_num(acc(r.a));
      x["accuracy_b"] = opt_num(acc(r.b));
      x["accuracy_delta"] = acc(r.a) && acc(r.b) ? num(*acc(r.b) - *acc(r.a)) : json(nullptr);
      auto ov = ci_overlap(r.a, r.b);
      x["accuracy_ci95_overlap"] = ov ? json(*ov) : json(nullptr);
      x["predictions_measured_on_a"] = r.a && r.a->metrics ? on_json(r.a->evaluated_on) : json(nullptr);
      x["predictions_measured_on_b"] = r.b && r.b->metrics ? on_json(r.b->evaluated_on) : json(nullptr);
      x["macro_f1_a"] = opt_num(f1(r.a));
      x["macro_f1_b"] = opt_num(f1(r.b));
      x["footprint_bytes_a"] = opt_num(mem(r.a));
      x["footprint_bytes_b"] = opt_num(mem(r.b));
      x["footprint_delta_bytes"] = mem(r.a) && mem(r.b) ? json(*mem(r.b) - *mem(r.a)) : json(nullptr);
      x["min_sqnr_db_a"] = opt_num(min_sqnr(r.a));
      x["min_sqnr_db_b"] = opt_num(min_sqnr(r.b));
      x["sqnr_measured_a"] = r.a && r.a->quant_error.has_value();
      x["sqnr_measured_b"] = r.b && r.b->quant_error.has_value();
      const LatencyFigures *la = lat(r.a), *lb = lat(r.b);
      x["p50_ms_a"] = la ? num(la->p50_ms) : json(nullptr);
      x["p50_ms_b"] = lb ? num(lb->p50_ms) : json(nullptr);
      x["p50_measured_on_a"] = la ? on_json(la->on) : json(nullptr);
      x["p50_measured_on_b"] = lb ? on_json(lb->on) : json(nullptr);
      x["p50_same_device"] = la && lb ? json(la->on.device == lb->on.device) : json(nullptr);
      x["p50_delta_ms"] = la && lb && la->on.device == lb->on.device ? num(lb->p50_ms - la->p50_ms) : json(nullptr);
      vs.push_back(x);
    }
    j["variants"] = vs;
    return j.dump(2) + "\n";
  }

  const bool md = format == ReportFormat::kMarkdown;
  const report_detail::ComparisonTable t = report_detail::comparison_table(a, b);
  std::string o;
  const std::string an = fmt::format("A = {} (id {})", a.experiment_name, a.experiment_id);
  const std::string bn = fmt::format("B = {} (id {})", b.experiment_name, b.experiment_id);
  o += md ? "# Comparison\n\n" + md_escape(an) + ", " + md_escape(bn) + ".\n\n"
          : "COMPARISON OF TWO EXPERIMENTS\n" + an + "\n" + bn + "\n\n";
  if (md) {
    std::string s = "|";
    for (const auto& h : t.head) s += " " + h + " |";
    s += "\n|";
    for (size_t i = 0; i < t.head.size(); ++i) s += i ? " ---: |" : " --- |";
    s += "\n";
    for (const auto& r : t.cells) {
      s += "|";
      for (const auto& c : r) s += " " + md_escape(c) + " |";
      s += "\n";
    }
    o += s;
  } else {
    std::vector<size_t> w(t.head.size());
    for (size_t i = 0; i < t.head.size(); ++i) {
      w[i] = t.head[i].size();
      for (const auto& r : t.cells) w[i] = std::max(w[i], r[i].size());
    }
    auto line = [&](const std::vector<std::string>& r) {
      std::string s;
      for (size_t i = 0; i < r.size(); ++i) s += (i ? "  " : "") + r[i] + std::string(w[i] - r[i].size(), ' ');
      while (!s.empty() && s.back() == ' ') s.pop_back();
      return s + "\n";
    };
    o += line(t.head);
    for (const auto& r : t.cells) o += line(r);
  }
  o += "\n";
  for (const auto& m : t.measured_on) o += (md ? "- " + md_escape(m) : m) + "\n";
  o += "\n" + (md ? md_escape(t.note) : t.note) + "\n";
  return o;
}

}  // namespace evalsvc::scheduler
