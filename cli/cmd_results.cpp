// `qbench results [EXPERIMENT] [--variant V] [--format table|csv|json]`: the stored results as rows. Without
// EXPERIMENT: the recent experiments. With it: one row per variant with every headline figure (the same
// numbers as `qbench report`, computed from the stored predictions). "not measured" is an empty CSV cell,
// null in JSON and "-" in the table, never 0.
#ifdef EVALSVC_WITH_SCHEDULER
#include <iostream>

#include "commands.h"
#include "service_urls.h"
#include "evalsvc/common/error.h"
#include "evalsvc/scheduler/report.h"
#include "evalsvc/scheduler/store.h"

namespace evalsvc::cli {
namespace {

using nlohmann::json;

/// Rows as JSON objects with a fixed column order (nlohmann sorts keys, so the order is kept aside).
struct Rows {
  std::vector<std::string> columns;
  std::vector<json> rows;
};

std::string cell_text(const json& v) {
  if (v.is_null()) return "";
  if (v.is_string()) return v.get<std::string>();
  if (v.is_number_float()) return fmt::format("{:.6g}", v.get<double>());
  return v.dump();
}

std::string csv_quote(const std::string& s) {
  if (s.find_first_of(",\"\n\r") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

void print(const Rows& r, const std::string& format) {
  if (format == "json") {
    json arr = json::array();
    for (const auto& row : r.rows) arr.push_back(row);
    std::cout << arr.dump(2) << "\n";
    return;
  }
  if (format == "csv") {
    for (size_t i = 0; i < r.columns.size(); ++i) std::cout << (i ? "," : "") << csv_quote(r.columns[i]);
    std::cout << "\n";
    for (const auto& row : r.rows) {
      for (size_t i = 0; i < r.columns.size(); ++i) std::cout << (i ? "," : "") << csv_quote(cell_text(row[r.columns[i]]));
      std::cout << "\n";
    }
    return;
  }
  std::vector<std::vector<std::string>> cells;
  std::vector<size_t> w;
  for (const auto& c : r.columns) w.push_back(c.size());
  for (const auto& row : r.rows) {
    std::vector<std::string> line;
    for (size_t i = 0; i < r.columns.size(); ++i) {
      std::string s = cell_text(row[r.columns[i]]);
      if (s.empty()) s = "-";
      w[i] = std::max(w[i], s.size());
      line.push_back(std::move(s));
    }
    cells.push_back(std::move(line));
  }
  auto emit = [&](const std::vector<std::string>& line) {
    std::string s;
    for (size_t i = 0; i < line.size(); ++i) s += (i ? "  " : "") + line[i] + std::string(w[i] - line[i].size(), ' ');
    while (!s.empty() && s.back() == ' ') s.pop_back();
    std::cout << s << "\n";
  };
  emit(r.columns);
  for (const auto& line : cells) emit(line);
}

json opt(const std::optional<double>& v) { return v ? json(*v) : json(nullptr); }
json opt_mib(const std::optional<int64_t>& b) {
  return b ? json(std::round(static_cast<double>(*b) / 1048576.0 * 100.0) / 100.0) : json(nullptr);
}
std::string iso(scheduler::Timestamp t) {
  std::time_t tt = std::chrono::system_clock::to_time_t(t);
  std::tm tm{};
  ::gmtime_r(&tt, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

Rows experiment_rows(scheduler::Store& store) {
  Rows r;
  r.columns = {"id", "name", "state", "created_at", "variants", "evaluated", "best_accuracy"};
  for (const auto& e : store.list_experiments(100)) {
    const auto metrics = store.variant_metrics(e.id);
    std::optional<double> best;
    for (const auto& m : metrics) best = std::max(best.value_or(0.0), m.accuracy);
    r.rows.push_back({{"id", e.id},
                      {"name", e.name},
                      {"state", scheduler::to_string(e.state)},
                      {"created_at", iso(e.created_at)},
                      {"variants", store.list_variants(e.id).size()},
                      {"evaluated", metrics.size()},
                      {"best_accuracy", opt(best)}});
  }
  return r;
}

Rows variant_rows(const scheduler::ReportData& d, const std::string& only) {
  Rows r;
  r.columns = {"experiment_id", "variant", "method", "base_dtype", "status", "n", "accuracy", "accuracy_ci_low",
               "accuracy_ci_high", "macro_f1", "macro_f1_ci_low", "macro_f1_ci_high", "baseline", "delta_points",
               "mcnemar_p", "significant", "agreement", "footprint_mib", "footprint_no_buffers_mib", "runtime_mib",
               "peak_batch1_mib", "p50_ms", "p90_ms", "p99_ms", "best_samples_per_s", "best_batch", "speed_device",
               "error"};
  for (const auto& v : d.variants) {
    if (!only.empty() && v.name != only) continue;
    json row;
    row["experiment_id"] = d.experiment_id;
    row["variant"] = v.name;
    row["method"] = v.method;
    row["base_dtype"] = v.base_dtype;
    row["status"] = scheduler::to_string(v.status);
    row["n"] = v.metrics ? json(v.metrics->n) : json(nullptr);
    row["accuracy"] = v.metrics ? json(v.metrics->accuracy) : json(nullptr);
    row["accuracy_ci_low"] = v.accuracy_ci ? json(v.accuracy_ci->low) : json(nullptr);
    row["accuracy_ci_high"] = v.accuracy_ci ? json(v.accuracy_ci->high) : json(nullptr);
    row["macro_f1"] = v.metrics ? json(v.metrics->macro_f1) : json(nullptr);
    row["macro_f1_ci_low"] = v.macro_f1_ci ? json(v.macro_f1_ci->low) : json(nullptr);
    row["macro_f1_ci_high"] = v.macro_f1_ci ? json(v.macro_f1_ci->high) : json(nullptr);
    row["baseline"] = v.baseline ? json(*v.baseline) : json(nullptr);
    row["delta_points"] = v.accuracy_delta && v.vs_baseline ? json(*v.accuracy_delta * 100.0) : json(nullptr);
    row["mcnemar_p"] = v.vs_baseline ? json(v.vs_baseline->p_value) : json(nullptr);
    row["significant"] = v.vs_baseline ? json(v.vs_baseline->significant) : json(nullptr);
    row["agreement"] = v.vs_baseline ? json(v.vs_baseline->agreement) : json(nullptr);
    row["footprint_mib"] = opt_mib(v.memory.footprint_bytes);
    row["footprint_no_buffers_mib"] = opt_mib(v.memory.footprint_no_buffers_bytes);
    row["runtime_mib"] = opt_mib(v.memory.runtime_bytes);
    row["peak_batch1_mib"] = opt_mib(v.memory.peak_mem_batch1_bytes);
    row["p50_ms"] = v.latency ? json(v.latency->p50_ms) : json(nullptr);
    row["p90_ms"] = v.latency ? json(v.latency->p90_ms) : json(nullptr);
    row["p99_ms"] = v.latency ? json(v.latency->p99_ms) : json(nullptr);
    row["best_samples_per_s"] = v.best_throughput ? json(v.best_throughput->samples_per_s) : json(nullptr);
    row["best_batch"] = v.best_throughput ? json(v.best_throughput->batch_size) : json(nullptr);
    row["speed_device"] = v.latency ? json(v.latency->on.device)
                                    : (v.best_throughput ? json(v.best_throughput->on.device) : json(nullptr));
    row["error"] = v.error ? json(*v.error) : json(nullptr);
    r.rows.push_back(std::move(row));
  }
  return r;
}

CommandRegistrar reg(
    "results", "List stored results: recent experiments, or one experiment's variants (table, csv or json)",
    [](CLI::App& sub) -> RunFn {
      struct Options {
        std::string experiment, variant, format = "table", url, stack = "var/stack";
      };
      auto o = std::make_shared<Options>();
      sub.add_option("experiment", o->experiment, "experiment id or name; without it, the recent experiments");
      sub.add_option("--variant", o->variant, "only this variant");
      sub.add_option("--format,-f", o->format, "table | csv | json (default table)");
      sub.add_option("--stack", o->stack, "embedded stack folder (qbench up), used when no URL is given");
      sub.add_option("--database-url", o->url, "postgresql://... (default $QBENCH_DATABASE_URL)");
      return [o] {
        EVALSVC_CHECK(o->format == "table" || o->format == "csv" || o->format == "json", InputError,
                      "results --format: expected table, csv or json, got '{}'", o->format);
        scheduler::Store store(
            database_url_or_stack(o->url, o->stack));
        if (o->experiment.empty()) {
          EVALSVC_CHECK(o->variant.empty(), InputError, "results --variant needs an EXPERIMENT");
          print(experiment_rows(store), o->format);
          return static_cast<int>(kOk);
        }
        auto id = scheduler::find_experiment(store, o->experiment);
        EVALSVC_CHECK(id.has_value(), InputError, "results: no experiment '{}' in {}", o->experiment,
                      store.redacted_url());
        const scheduler::ReportData d = scheduler::load_report_data(store, *id);
        Rows rows = variant_rows(d, o->variant);
        EVALSVC_CHECK(o->variant.empty() || !rows.rows.empty(), InputError,
                      "results: experiment {} has no variant '{}'", *id, o->variant);
        print(rows, o->format);
        return static_cast<int>(kOk);
      };
    });

}  // namespace
}  // namespace evalsvc::cli
#endif  // EVALSVC_WITH_SCHEDULER
