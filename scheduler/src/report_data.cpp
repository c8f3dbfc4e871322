// ReportInputs (raw rows, from the Store or a JSON fixture) -> ReportData (every figure of SPEC section 3).
// Metrics, intervals and McNemar come from common/metrics.h; nothing here re-derives those formulas.
#include <algorithm>
#include <cmath>
#include <ctime>
#include <future>
#include <limits>
#include <set>
#include <string_view>

#include "evalsvc/common/error.h"
#include "evalsvc/common/metrics.h"
#include "evalsvc/common/paths.h"
#include "evalsvc/scheduler/report.h"
#include "report_internal.h"

namespace evalsvc::scheduler {
namespace {

using nlohmann::json;

constexpr int kMaxClasses = 16;
const std::vector<std::string> kAgNewsClasses = {"World", "Sports", "Business", "Sci/Tech"};

std::string format_time(Timestamp t) {
  std::time_t tt = std::chrono::system_clock::to_time_t(t);
  std::tm tm{};
  ::gmtime_r(&tt, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

/// "2026-11-27T04:08:20Z" (or with fractional seconds / no Z) -> time point; InputError naming `path`.
Timestamp parse_time(const std::string& s, const std::string& path) {
  std::tm tm{};
  int y, mo, d, h = 0, mi = 0, sec = 0;
  int got = std::sscanf(s.c_str(), "%d-%d-%dT%d:%d:%d", &y, &mo, &d, &h, &mi, &sec);
  EVALSVC_CHECK(got == 3 || got == 6, InputError, "{}: expected an ISO-8601 UTC time like 2026-11-27T04:08:20Z, got '{}'",
                path, s);
  tm.tm_year = y - 1900;
  tm.tm_mon = mo - 1;
  tm.tm_mday = d;
  tm.tm_hour = h;
  tm.tm_min = mi;
  tm.tm_sec = sec;
  return std::chrono::system_clock::from_time_t(::timegm(&tm));
}

// --- JSON fixture reading: small typed accessors that name the path of a bad field -----------------------

const json& need(const json& j, const std::string& key, const std::string& path) {
  EVALSVC_CHECK(j.is_object(), InputError, "{}: expected an object, got {}", path, j.type_name());
  auto it = j.find(key);
  EVALSVC_CHECK(it != j.end(), InputError, "{}.{}: required field is missing", path, key);
  return *it;
}
template <typename T>
T get_as(const json& v, const std::string& path) {
  try {
    return v.get<T>();
  } catch (const json::exception& e) {
    throw InputError(fmt::format("{}: wrong type ({}): {}", path, v.type_name(), e.what()));
  }
}
template <typename T>
T req(const json& j, const std::string& key, const std::string& path) {
  return get_as<T>(need(j, key, path), path + "." + key);
}
template <typename T>
std::optional<T> opt(const json& j, const std::string& key, const std::string& path) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return std::nullopt;
  return get_as<T>(*it, path + "." + key);
}
template <typename T>
T opt_or(const json& j, const std::string& key, const std::string& path, T fallback) {
  return opt<T>(j, key, path).value_or(fallback);
}

RunState run_state(const json& j, const std::string& key, const std::string& path) {
  std::string s = opt_or<std::string>(j, key, path, "pending");
  auto st = parse_run_state(s);
  EVALSVC_CHECK(st.has_value(), InputError, "{}.{}: unknown state '{}'", path, key, s);
  return *st;
}

/// Class ids from "0123..." or [0, 1, 2, 3, ...].
std::vector<int16_t> class_ids(const json& v, const std::string& path) {
  std::vector<int16_t> out;
  if (v.is_string()) {
    const std::string s = v.get<std::string>();
    out.reserve(s.size());
    for (size_t i = 0; i < s.size(); ++i) {
      EVALSVC_CHECK(s[i] >= '0' && s[i] <= '9', InputError, "{}[{}]: expected a digit, got '{}'", path, i, s[i]);
      out.push_back(static_cast<int16_t>(s[i] - '0'));
    }
    return out;
  }
  EVALSVC_CHECK(v.is_array(), InputError, "{}: expected a digit string or an array of class ids", path);
  for (size_t i = 0; i < v.size(); ++i) {
    int id = get_as<int>(v[i], fmt::format("{}[{}]", path, i));
    EVALSVC_CHECK(id >= 0 && id < kMaxClasses, InputError, "{}[{}]: class id {} outside 0..{}", path, i, id,
                  kMaxClasses - 1);
    out.push_back(static_cast<int16_t>(id));
  }
  return out;
}

std::optional<int64_t> opt_bytes(const json& j, const std::string& key, const std::string& path) {
  auto v = opt<int64_t>(j, key, path);
  EVALSVC_CHECK(!v || *v >= 0, InputError, "{}.{}: expected bytes >= 0, got {}", path, key, *v);
  return v;
}

// --- figure computation ------------------------------------------------------------------------------------

std::vector<int32_t> widen(const std::vector<int16_t>& v) { return std::vector<int32_t>(v.begin(), v.end()); }

/// Labels and both prediction vectors on the samples that `a` and `b` both evaluated (both sorted by id).
struct Paired {
  std::vector<int32_t> labels, a, b;
};
Paired pair_up(const Predictions& a, const Predictions& b, const std::string& name_a, const std::string& name_b) {
  Paired p;
  size_t i = 0, j = 0;
  while (i < a.size() && j < b.size()) {
    if (a.sample_idx[i] < b.sample_idx[j]) {
      ++i;
    } else if (b.sample_idx[j] < a.sample_idx[i]) {
      ++j;
    } else {
      EVALSVC_CHECK(a.label[i] == b.label[j], FormatError,
                    "sample {}: label {} stored with variant '{}' but {} with variant '{}'", a.sample_idx[i],
                    a.label[i], name_a, b.label[j], name_b);
      p.labels.push_back(a.label[i]);
      p.a.push_back(a.pred[i]);
      p.b.push_back(b.pred[j]);
      ++i;
      ++j;
    }
  }
  return p;
}

/// Predictions sorted by sample id (the Store returns them so; a fixture may not).
Predictions sorted(Predictions p) {
  if (std::is_sorted(p.sample_idx.begin(), p.sample_idx.end())) return p;
  std::vector<size_t> order(p.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t x, size_t y) { return p.sample_idx[x] < p.sample_idx[y]; });
  Predictions q;
  for (size_t k : order) {
    q.sample_idx.push_back(p.sample_idx[k]);
    q.label.push_back(p.label[k]);
    q.pred.push_back(p.pred[k]);
  }
  return q;
}

/// The rows of the most frequent seq_len (a bench re-run at another length must not mix into one sweep).
int dominant_seq_len(const std::vector<const BenchResult*>& rows, int preferred) {
  std::map<int, int> count;
  for (const auto* r : rows) ++count[r->seq_len];
  if (count.count(preferred)) return preferred;
  int best = preferred, best_n = 0;
  for (auto [len, n] : count) {
    if (n > best_n) best = len, best_n = n;
  }
  return best;
}

/// The device of a (c) peak: the bench row of that kind and batch size that holds the same byte count.
MeasuredOn peak_device(const std::vector<BenchResult>& bench, const std::string& variant,
                       const std::optional<int64_t>& bytes, BenchKind kind, const std::optional<int>& batch);

/// SQNR summary of one variant's layer_errors rows; the dB figures are recomputed from the stored sums
/// (one definition: common/metrics.h sqnr_db). InputError naming the variant and projection for bad sums.
QuantErrorFigures quant_error_figures(const std::string& variant, std::vector<LayerError> rows);

}  // namespace

const char* to_string(VariantStatus s) {
  switch (s) {
    case VariantStatus::kDone: return "done";
    case VariantStatus::kFailed: return "failed";
    case VariantStatus::kIncomplete: return "incomplete";
  }
  return "?";
}

std::string MeasuredOn::label() const {
  std::string out = device;
  std::string extra = software;
  if (!date.empty()) extra += (extra.empty() ? "" : "; ") + date;
  if (!extra.empty()) out += " (" + extra + ")";
  return out;
}

MeasuredOn measured_on_from_json(const json& device) {
  MeasuredOn on;
  if (!device.is_object()) return on;
  auto str = [&](const char* key) -> std::string {
    auto it = device.find(key);
    return it != device.end() && it->is_string() ? it->get<std::string>() : std::string();
  };
  std::string name = str("device");
  if (name.empty()) name = str("name");
  if (!name.empty()) on.device = name;
  std::vector<std::string> sw;
  if (auto v = str("libtorch"); !v.empty()) sw.push_back("libtorch " + v);
  if (auto v = str("cuda"); !v.empty()) sw.push_back("CUDA " + v);
  if (auto v = str("qbench"); !v.empty()) sw.push_back("qbench " + v);
  on.software = report_detail::join(sw);
  on.date = str("date").substr(0, 10);
  return on;
}

namespace {

MeasuredOn peak_device(const std::vector<BenchResult>& bench, const std::string& variant,
                       const std::optional<int64_t>& bytes, BenchKind kind, const std::optional<int>& batch) {
  if (!bytes) return {};
  for (const auto& br : bench) {
    if (br.variant == variant && br.kind == kind && br.peak_mem_bytes == bytes && (!batch || br.batch_size == *batch))
      return measured_on_from_json(br.device);
  }
  return {};
}

QuantErrorFigures quant_error_figures(const std::string& variant, std::vector<LayerError> rows) {
  QuantErrorFigures q;
  // Layer order, projections in Hugging Face order (rows from a fixture may come in any order).
  static const std::vector<std::string> order = {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"};
  auto rank = [&](const LayerError& e) {
    return std::make_pair(e.layer, std::find(order.begin(), order.end(), e.projection) - order.begin());
  };
  std::stable_sort(rows.begin(), rows.end(), [&](const LayerError& a, const LayerError& b) { return rank(a) < rank(b); });
  q.projections = static_cast<int>(rows.size());
  std::vector<double> all;  // exact projections as +infinity
  std::vector<std::string> devices;
  for (auto& e : rows) {
    try {
      e.sqnr_db = sqnr_db(e.signal_sq, e.error_sq);
    } catch (const InputError& err) {
      throw InputError(fmt::format("variant '{}', layer {} {}: {}", variant, e.layer, e.projection, err.what()));
    }
    all.push_back(e.sqnr_db.value_or(std::numeric_limits<double>::infinity()));
    if (!e.sqnr_db) ++q.exact;
    if (e.sqnr_db && (!q.min_db || *e.sqnr_db < *q.min_db)) {
      q.min_db = e.sqnr_db;
      q.min_at = fmt::format("h.{}.{}", e.layer, e.projection);
    }
    const MeasuredOn on = measured_on_from_json(e.device);
    if (devices.empty()) q.on = on;
    if (std::find(devices.begin(), devices.end(), on.device) == devices.end()) devices.push_back(on.device);
  }
  if (devices.size() > 1) q.on = MeasuredOn{"mixed: " + report_detail::join(devices), "", ""};
  if (!all.empty()) {
    std::sort(all.begin(), all.end());
    const size_t n = all.size();
    const double median = n % 2 ? all[n / 2] : (all[n / 2 - 1] + all[n / 2]) / 2;
    if (std::isfinite(median)) q.median_db = median;
  }
  q.layers = std::move(rows);
  return q;
}

}  // namespace

const VariantFigures* ReportData::find(const std::string& name) const {
  for (const auto& v : variants) {
    if (v.name == name) return &v;
  }
  return nullptr;
}

ReportInputs read_report_inputs(Store& store, int64_t experiment_id) {
  ReportInputs in;
  auto exp = store.get_experiment(experiment_id);
  EVALSVC_CHECK(exp.has_value(), InputError, "report: no experiment with id {} in {}", experiment_id,
                store.redacted_url());
  in.experiment = *exp;
  in.variants = store.list_variants(experiment_id);
  for (const auto& v : in.variants) {
    Predictions p = store.read_predictions(experiment_id, v.name);
    if (p.size() > 0) in.predictions.emplace(v.name, std::move(p));
    auto shards = store.list_eval_shards(experiment_id, v.name);
    if (!shards.empty()) in.eval_shards.emplace(v.name, std::move(shards));
  }
  in.bench = store.list_bench_results(experiment_id);
  in.training = store.list_training_runs(experiment_id);
  for (auto& e : store.list_layer_errors(experiment_id)) in.layer_errors[e.variant].push_back(std::move(e));
  in.generated_at = format_time(std::chrono::system_clock::now());
  in.qbench_version = version();
  return in;
}

ReportInputs report_inputs_from_json(const json& j) {
  ReportInputs in;
  const std::string root = "$";
  const json& e = need(j, "experiment", root);
  const std::string ep = root + ".experiment";
  in.experiment.id = req<int64_t>(e, "id", ep);
  in.experiment.name = req<std::string>(e, "name", ep);
  in.experiment.spec = e.value("spec", json::object());
  in.experiment.state = run_state(e, "state", ep);
  in.experiment.error = opt<std::string>(e, "error", ep);
  in.experiment.created_at = parse_time(req<std::string>(e, "created_at", ep), ep + ".created_at");
  if (auto f = opt<std::string>(e, "finished_at", ep)) in.experiment.finished_at = parse_time(*f, ep + ".finished_at");
  in.generated_at = req<std::string>(j, "generated_at", root);
  in.qbench_version = req<std::string>(j, "qbench_version", root);

  const json& vs = need(j, "variants", root);
  EVALSVC_CHECK(vs.is_array(), InputError, "$.variants: expected an array, got {}", vs.type_name());
  std::set<std::string> names;
  for (size_t i = 0; i < vs.size(); ++i) {
    const json& v = vs[i];
    const std::string vp = fmt::format("$.variants[{}]", i);
    VariantRecord r;
    r.experiment_id = in.experiment.id;
    r.name = req<std::string>(v, "name", vp);
    EVALSVC_CHECK(names.insert(r.name).second, InputError, "{}.name: duplicate variant '{}'", vp, r.name);
    r.method = req<std::string>(v, "method", vp);
    r.base_dtype = req<std::string>(v, "base_dtype", vp);
    r.baseline = opt<std::string>(v, "baseline", vp);
    r.state = run_state(v, "state", vp);
    r.error = opt<std::string>(v, "error", vp);
    if (auto m = v.find("memory"); m != v.end() && !m->is_null()) {
      const std::string mp = vp + ".memory";
      r.memory.footprint_bytes = opt_bytes(*m, "footprint_bytes", mp);
      r.memory.footprint_no_buffers_bytes = opt_bytes(*m, "footprint_no_buffers_bytes", mp);
      r.memory.runtime_bytes = opt_bytes(*m, "runtime_bytes", mp);
      r.memory.peak_mem_batch1_bytes = opt_bytes(*m, "peak_mem_batch1_bytes", mp);
      r.memory.peak_mem_max_batch_bytes = opt_bytes(*m, "peak_mem_max_batch_bytes", mp);
      r.memory.max_batch_size = opt<int>(*m, "max_batch_size", mp);
    }
    if (v.contains("preds")) {
      Predictions p;
      p.label = class_ids(need(v, "labels", vp), vp + ".labels");
      p.pred = class_ids(v["preds"], vp + ".preds");
      EVALSVC_CHECK(p.label.size() == p.pred.size(), InputError, "{}: {} labels but {} preds", vp, p.label.size(),
                    p.pred.size());
      if (auto ids = v.find("sample_idx"); ids != v.end()) {
        p.sample_idx = get_as<std::vector<int32_t>>(*ids, vp + ".sample_idx");
        EVALSVC_CHECK(p.sample_idx.size() == p.label.size(), InputError, "{}.sample_idx: {} ids for {} labels", vp,
                      p.sample_idx.size(), p.label.size());
      } else {
        for (size_t k = 0; k < p.label.size(); ++k) p.sample_idx.push_back(static_cast<int32_t>(k));
      }
      if (p.size() > 0) in.predictions.emplace(r.name, std::move(p));
    }
    if (auto sh = v.find("shards"); sh != v.end()) {
      for (size_t k = 0; k < sh->size(); ++k) {
        const json& s = (*sh)[k];
        const std::string sp = fmt::format("{}.shards[{}]", vp, k);
        EvalShard es;
        es.experiment_id = in.experiment.id;
        es.variant = r.name;
        es.shard = req<int>(s, "shard", sp);
        es.job_id = opt_or<std::string>(s, "job_id", sp, fmt::format("eval-{}-{}", r.name, es.shard));
        es.n = req<int>(s, "n", sp);
        es.seconds = req<double>(s, "seconds", sp);
        EVALSVC_CHECK(es.n >= 0 && es.seconds >= 0, InputError, "{}: n and seconds must be >= 0", sp);
        es.samples_per_s = opt<double>(s, "samples_per_s", sp);
        es.device = s.value("device", json::object());
        es.deliveries = opt_or<int>(s, "deliveries", sp, 1);
        in.eval_shards[r.name].push_back(std::move(es));
      }
    }
    if (auto bench = v.find("bench"); bench != v.end()) {
      for (size_t k = 0; k < bench->size(); ++k) {
        const json& b = (*bench)[k];
        const std::string bp = fmt::format("{}.bench[{}]", vp, k);
        BenchResult br;
        br.experiment_id = in.experiment.id;
        br.variant = r.name;
        std::string kind = req<std::string>(b, "kind", bp);
        auto bk = parse_bench_kind(kind);
        EVALSVC_CHECK(bk.has_value(), InputError, "{}.kind: expected latency, throughput or dataset, got '{}'", bp, kind);
        br.kind = *bk;
        br.batch_size = opt_or<int>(b, "batch_size", bp, 1);
        br.seq_len = opt_or<int>(b, "seq_len", bp, 128);
        br.p50_ms = opt<double>(b, "p50_ms", bp);
        br.p90_ms = opt<double>(b, "p90_ms", bp);
        br.p99_ms = opt<double>(b, "p99_ms", bp);
        br.samples_per_s = opt<double>(b, "samples_per_s", bp);
        br.peak_mem_bytes = opt_bytes(b, "peak_mem_bytes", bp);
        br.warmup_runs = opt<int>(b, "warmup_runs", bp);
        br.timed_runs = opt<int>(b, "timed_runs", bp);
        br.device = b.value("device", json::object());
        in.bench.push_back(std::move(br));
      }
    }
    if (auto le = v.find("layer_errors"); le != v.end() && !le->is_null()) {
      EVALSVC_CHECK(le->is_array(), InputError, "{}.layer_errors: expected an array, got {}", vp, le->type_name());
      for (size_t k = 0; k < le->size(); ++k) {
        const json& x = (*le)[k];
        const std::string lp = fmt::format("{}.layer_errors[{}]", vp, k);
        LayerError e;
        e.experiment_id = in.experiment.id;
        e.variant = r.name;
        e.layer = req<int>(x, "layer", lp);
        e.projection = req<std::string>(x, "projection", lp);
        e.numel = req<int64_t>(x, "numel", lp);
        e.signal_sq = req<double>(x, "signal_sq", lp);
        e.error_sq = req<double>(x, "error_sq", lp);
        e.max_abs_error = opt_or<double>(x, "max_abs_error", lp, 0.0);
        EVALSVC_CHECK(e.layer >= 0 && e.numel > 0, InputError, "{}: layer must be >= 0 and numel > 0", lp);
        e.device = x.value("device", json::object());
        in.layer_errors[r.name].push_back(std::move(e));
      }
    }
    in.variants.push_back(std::move(r));
  }
  if (auto tr = j.find("training"); tr != j.end()) {
    for (size_t k = 0; k < tr->size(); ++k) {
      const json& t = (*tr)[k];
      const std::string tp = fmt::format("$.training[{}]", k);
      TrainingRun run;
      run.experiment_id = in.experiment.id;
      run.epochs = req<int>(t, "epochs", tp);
      run.seconds = req<double>(t, "seconds", tp);
      run.samples_per_s = opt<double>(t, "samples_per_s", tp);
      run.final_loss = opt<double>(t, "final_loss", tp);
      run.val_accuracy = opt<double>(t, "val_accuracy", tp);
      run.device = t.value("device", json::object());
      run.history = t.value("history", json::array());
      in.training.push_back(std::move(run));
    }
  }
  return in;
}

ReportData build_report_data(const ReportInputs& in) {
  ReportData d;
  const Experiment& e = in.experiment;
  d.experiment_id = e.id;
  d.experiment_name = e.name;
  d.spec = e.spec;
  d.state = to_string(e.state);
  d.error = e.error;
  d.created_at = format_time(e.created_at);
  if (e.finished_at) d.finished_at = format_time(*e.finished_at);
  d.generated_at = in.generated_at;
  d.qbench_version = in.qbench_version;

  std::string spec_baseline = "fp32";
  if (auto it = e.spec.find("baseline"); it != e.spec.end() && it->is_string()) spec_baseline = it->get<std::string>();
  for (const auto& v : in.variants) {
    if (v.name == spec_baseline) d.baseline = spec_baseline;
  }

  // Sorted predictions and the class count (AG News has 4; a larger id widens the table, never crashes).
  std::map<std::string, Predictions> preds;
  int num_classes = static_cast<int>(kAgNewsClasses.size());
  for (const auto& [name, p] : in.predictions) {
    EVALSVC_CHECK(p.label.size() == p.size() && p.pred.size() == p.size(), FormatError,
                  "variant '{}': {} sample ids, {} labels, {} predictions", name, p.size(), p.label.size(),
                  p.pred.size());
    for (size_t i = 0; i < p.size(); ++i) {
      const int hi = std::max(p.label[i], p.pred[i]), lo = std::min(p.label[i], p.pred[i]);
      EVALSVC_CHECK(lo >= 0 && hi < kMaxClasses, InputError,
                    "variant '{}', sample {}: class id {} outside 0..{}", name, p.sample_idx[i], lo < 0 ? lo : hi,
                    kMaxClasses - 1);
      num_classes = std::max(num_classes, hi + 1);
    }
    preds.emplace(name, sorted(p));
  }
  d.class_names = kAgNewsClasses;
  for (int c = static_cast<int>(d.class_names.size()); c < num_classes; ++c) d.class_names.push_back(fmt::format("class {}", c));

  // Per-variant status and metrics. The bootstrap dominates (1,000 resamples a variant): run it on threads.
  std::vector<std::future<Interval>> boots;
  for (const auto& r : in.variants) {
    VariantFigures v;
    v.name = r.name;
    v.method = r.method;
    v.base_dtype = r.base_dtype;
    v.state = to_string(r.state);
    v.error = r.error;
    v.memory = r.memory;
    if (r.baseline && *r.baseline != r.name) {
      v.baseline = r.baseline;
    } else if (!r.baseline && d.baseline && *d.baseline != r.name) {
      v.baseline = d.baseline;
    }
    auto pit = preds.find(r.name);
    v.predictions = pit == preds.end() ? 0 : static_cast<int64_t>(pit->second.size());
    if (r.state == RunState::kFailed || r.state == RunState::kCancelled) {
      v.status = VariantStatus::kFailed;
    } else if (r.state == RunState::kDone && v.predictions > 0) {
      v.status = VariantStatus::kDone;
    }
    if (v.status == VariantStatus::kDone) {
      const Predictions& p = pit->second;
      auto labels = std::make_shared<std::vector<int32_t>>(widen(p.label));
      auto pr = std::make_shared<std::vector<int32_t>>(widen(p.pred));
      v.metrics = compute_metrics(*labels, *pr, num_classes);
      int64_t correct = 0;
      for (int c = 0; c < num_classes; ++c) correct += v.metrics->confusion[c][c];
      v.accuracy_ci = wilson_interval(correct, v.metrics->n);
      boots.push_back(std::async(std::launch::async, [labels, pr, num_classes] {
        return bootstrap_macro_f1(*labels, *pr, num_classes, 1000, 1234);
      }));
    } else {
      boots.emplace_back();
    }
    d.variants.push_back(std::move(v));
  }
  for (size_t i = 0; i < d.variants.size(); ++i) {
    if (boots[i].valid()) d.variants[i].macro_f1_ci = boots[i].get();
  }

  // Against the baseline: McNemar on shared samples, accuracy delta, memory ratios.
  for (auto& v : d.variants) {
    if (!v.baseline) continue;
    const VariantFigures* b = d.find(*v.baseline);
    if (b == nullptr) continue;
    if (v.metrics && b->metrics) {
      Paired p = pair_up(preds.at(v.name), preds.at(b->name), v.name, b->name);
      if (!p.labels.empty()) v.vs_baseline = mcnemar_exact(p.labels, p.a, p.b);
      v.accuracy_delta = v.metrics->accuracy - b->metrics->accuracy;
    }
    if (v.memory.footprint_bytes && b->memory.footprint_bytes && *v.memory.footprint_bytes > 0 &&
        *b->memory.footprint_bytes > 0) {
      v.compression = static_cast<double>(*b->memory.footprint_bytes) / static_cast<double>(*v.memory.footprint_bytes);
      v.memory_reduction = 1.0 - static_cast<double>(*v.memory.footprint_bytes) / static_cast<double>(*b->memory.footprint_bytes);
    }
  }
  // The baseline itself: ratio 1 by definition when its footprint is known.
  for (auto& v : d.variants) {
    if (!v.baseline && d.baseline && v.name == *d.baseline && v.memory.footprint_bytes && *v.memory.footprint_bytes > 0) {
      v.compression = 1.0;
      v.memory_reduction = 0.0;
      if (v.metrics) v.accuracy_delta = 0.0;
    }
  }

  // Every pair, for the "highest accuracy" rule.
  const size_t nv = d.variants.size();
  d.pairwise_p.assign(nv, std::vector<std::optional<double>>(nv));
  for (size_t i = 0; i < nv; ++i) {
    for (size_t k = i + 1; k < nv; ++k) {
      if (!d.variants[i].metrics || !d.variants[k].metrics) continue;
      Paired p = pair_up(preds.at(d.variants[i].name), preds.at(d.variants[k].name), d.variants[i].name,
                         d.variants[k].name);
      if (p.labels.empty()) continue;
      const double pv = mcnemar_exact(p.labels, p.a, p.b).p_value;
      d.pairwise_p[i][k] = d.pairwise_p[k][i] = pv;
    }
  }

  // Bench figures.
  int preferred_seq = 128;
  if (auto b = e.spec.find("bench"); b != e.spec.end() && b->is_object()) {
    if (auto s = b->find("seq_len"); s != b->end() && s->is_number_integer()) preferred_seq = s->get<int>();
  }
  for (auto& v : d.variants) {
    std::vector<const BenchResult*> lat, thr, dataset;
    for (const auto& br : in.bench) {
      if (br.variant != v.name) continue;
      if (br.kind == BenchKind::kLatency) lat.push_back(&br);
      if (br.kind == BenchKind::kThroughput) thr.push_back(&br);
      if (br.kind == BenchKind::kDataset) dataset.push_back(&br);
    }
    std::vector<const BenchResult*> lat1;
    for (const auto* br : lat) {
      // A non-positive or non-finite time is not a measurement (and would divide by zero downstream).
      if (br->batch_size == 1 && br->p50_ms && std::isfinite(*br->p50_ms) && *br->p50_ms > 0) lat1.push_back(br);
    }
    if (!lat1.empty()) {
      const int seq = dominant_seq_len(lat1, preferred_seq);
      for (const auto* br : lat1) {
        if (br->seq_len != seq) continue;
        LatencyFigures l;
        l.p50_ms = *br->p50_ms;
        l.p90_ms = br->p90_ms.value_or(*br->p50_ms);
        l.p99_ms = br->p99_ms.value_or(l.p90_ms);
        l.seq_len = br->seq_len;
        l.warmup_runs = br->warmup_runs;
        l.timed_runs = br->timed_runs;
        l.peak_mem_bytes = br->peak_mem_bytes;
        l.on = measured_on_from_json(br->device);
        v.latency = l;
        break;
      }
    }
    std::vector<const BenchResult*> thr_ok;
    for (const auto* br : thr) {
      if (br->samples_per_s && std::isfinite(*br->samples_per_s) && *br->samples_per_s > 0) thr_ok.push_back(br);
    }
    if (!thr_ok.empty()) {
      const int seq = dominant_seq_len(thr_ok, preferred_seq);
      for (const auto* br : thr_ok) {
        if (br->seq_len != seq) continue;
        ThroughputFigure t;
        t.batch_size = br->batch_size;
        t.samples_per_s = *br->samples_per_s;
        t.seq_len = br->seq_len;
        t.peak_mem_bytes = br->peak_mem_bytes;
        t.on = measured_on_from_json(br->device);
        v.sweep.push_back(t);
      }
      std::sort(v.sweep.begin(), v.sweep.end(), [](const auto& a, const auto& b) { return a.batch_size < b.batch_size; });
      for (const auto& t : v.sweep) {
        if (!v.best_throughput || t.samples_per_s > v.best_throughput->samples_per_s) v.best_throughput = t;
      }
    }
    for (const auto* br : dataset) {
      if (!br->samples_per_s || !std::isfinite(*br->samples_per_s) || *br->samples_per_s <= 0) continue;
      TestSetRate t;
      t.samples_per_s = *br->samples_per_s;
      t.rows = br->timed_runs.value_or(0);
      t.batch_size = br->batch_size;
      t.peak_mem_bytes = br->peak_mem_bytes;
      t.on = measured_on_from_json(br->device);
      v.test_set_rate = t;
      break;
    }
    // End-to-end evaluation rate: from the eval shards' rows.
    if (auto sh = in.eval_shards.find(v.name); sh != in.eval_shards.end() && !sh->second.empty()) {
      DatasetRate r;
      std::vector<std::string> devices;
      for (const auto& s : sh->second) {
        r.samples += s.n;
        r.seconds += s.seconds;
        ++r.shards;
        r.max_deliveries = std::max(r.max_deliveries, s.deliveries);
        MeasuredOn on = measured_on_from_json(s.device);
        if (std::find(devices.begin(), devices.end(), on.device) == devices.end()) devices.push_back(on.device);
        if (r.shards == 1) r.on = on;
      }
      if (devices.size() > 1) r.on = MeasuredOn{"mixed: " + report_detail::join(devices), "", ""};
      v.evaluated_on = r.on;
      if (r.seconds > 0) {
        r.samples_per_s = static_cast<double>(r.samples) / r.seconds;
        v.dataset_rate = r;
      }
    }
  }

  // Where the (c) peaks were measured, and the weight quantization error.
  for (auto& v : d.variants) {
    const VariantMemory& m = v.memory;
    v.peak_mem_batch1_on = peak_device(in.bench, v.name, m.peak_mem_batch1_bytes, BenchKind::kLatency, 1);
    v.peak_mem_max_batch_on =
        peak_device(in.bench, v.name, m.peak_mem_max_batch_bytes, BenchKind::kThroughput, m.max_batch_size);
    if (auto le = in.layer_errors.find(v.name); le != in.layer_errors.end() && !le->second.empty())
      v.quant_error = quant_error_figures(v.name, le->second);
  }

  if (!in.training.empty()) {
    const TrainingRun& last = in.training.back();
    TrainingSummary t;
    t.runs = static_cast<int>(in.training.size());
    t.epochs = last.epochs;
    t.seconds = last.seconds;
    t.samples_per_s = last.samples_per_s;
    t.final_loss = last.final_loss;
    t.val_accuracy = last.val_accuracy;
    t.on = measured_on_from_json(last.device);
    d.training = t;
  }
  return d;
}

std::optional<int64_t> find_experiment(Store& store, const std::string& id_or_name) {
  if (!id_or_name.empty() && id_or_name.size() <= 18 &&
      std::all_of(id_or_name.begin(), id_or_name.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    const int64_t id = std::stoll(id_or_name);
    if (store.get_experiment(id)) return id;
    return std::nullopt;
  }
  // list_experiments is most recent first, so the first match is the latest run of that name.
  for (const auto& e : store.list_experiments(100000)) {
    if (e.name == id_or_name) return e.id;
  }
  return std::nullopt;
}

ReportData load_report_data(Store& store, int64_t experiment_id) {
  return build_report_data(read_report_inputs(store, experiment_id));
}

}  // namespace evalsvc::scheduler
