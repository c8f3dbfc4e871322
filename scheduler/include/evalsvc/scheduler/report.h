#pragma once
// The qbench report (issue "Report and results database"): everything one experiment measured, read from
// PostgreSQL, with every figure of SPEC section 3 computed in C++ from the stored per-sample predictions,
// and rendered as text (the reference report's layout), Markdown, JSON or one self-contained HTML file.
//
// Three layers, so that each can be tested on its own:
//   ReportInputs  the raw database state of one experiment (rows, as the Store returns them);
//   ReportData    plain figures computed from it (metrics, intervals, McNemar, memory, speed);
//   Findings      the key findings and recommendations, from explicit rules over ReportData only.
// A figure that was not measured is an empty std::optional and renders as "not measured", never as 0.
// Speed figures carry the device and software they were measured on; the rules and the renderers compare
// speed only between variants measured on the same device.
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "evalsvc/common/metrics.h"
#include "evalsvc/scheduler/store.h"

namespace evalsvc::scheduler {

// ---------------------------------------------------------------------------------------------------------
// Inputs

/// The raw database state of one experiment: what load_report_data() reads through the Store, and what a
/// test fixture (tests/fixtures/report/*.json) describes.
struct ReportInputs {
  Experiment experiment;
  std::vector<VariantRecord> variants;                        ///< report order = this order
  std::map<std::string, Predictions> predictions;             ///< by variant name; absent = none stored
  std::map<std::string, std::vector<EvalShard>> eval_shards;  ///< by variant name
  std::vector<BenchResult> bench;
  std::vector<TrainingRun> training;
  std::map<std::string, std::vector<LayerError>> layer_errors;  ///< by variant name, rows in layer order
  std::string generated_at;  ///< ISO-8601 UTC; stamped by load_report_data, fixed by fixtures
  std::string qbench_version;
};

/// Reads every table of experiment `experiment_id`. InputError when there is no such experiment.
ReportInputs read_report_inputs(Store& store, int64_t experiment_id);

/// A ReportInputs from its JSON description (the fixture format, documented in docs/report.md). Labels and
/// predictions of a variant may be given as digit strings ("labels": "0123...", "preds": "0133...", sample
/// ids 0..n-1) or as arrays. InputError naming the JSON path of a missing or malformed field.
ReportInputs report_inputs_from_json(const nlohmann::json& j);

// ---------------------------------------------------------------------------------------------------------
// Figures

/// Where a figure was measured (SPEC section 3: device, software versions, date).
struct MeasuredOn {
  std::string device = "unknown device";  ///< "NVIDIA H200", "CPU (2 cores)", ...
  std::string software;                   ///< "libtorch 2.11.0, CUDA 13.0, qbench 0.1.0" ("" when unknown)
  std::string date;                       ///< "2026-11-27" ("" when unknown)
  /// "NVIDIA H200 (libtorch 2.11.0, CUDA 13.0, qbench 0.1.0; 2026-11-27)".
  std::string label() const;
  bool operator==(const MeasuredOn&) const = default;
};

/// MeasuredOn from a device description ({"device"|"name", "libtorch", "cuda", "qbench", "date"}, as
/// worker::describe_device writes it); missing fields stay unknown.
MeasuredOn measured_on_from_json(const nlohmann::json& device);

/// Batch-1 latency (SPEC section 3).
struct LatencyFigures {
  double p50_ms = 0, p90_ms = 0, p99_ms = 0;
  int seq_len = 128;
  std::optional<int> warmup_runs, timed_runs;
  std::optional<int64_t> peak_mem_bytes;
  MeasuredOn on;
};

/// One point of the throughput sweep.
struct ThroughputFigure {
  int batch_size = 1;
  double samples_per_s = 0;
  int seq_len = 128;
  std::optional<int64_t> peak_mem_bytes;
  MeasuredOn on;
};

/// The end-to-end evaluation rate of the sharded evaluation jobs (tokenize + forward + write).
struct DatasetRate {
  int64_t samples = 0;
  double seconds = 0;       ///< summed over shards (worker time, not wall time of the experiment)
  double samples_per_s = 0; ///< samples / seconds
  int shards = 0;
  int max_deliveries = 1;   ///< > 1: a shard was redelivered (counted once)
  MeasuredOn on;            ///< device "mixed: A, B" when shards ran on different devices
};

/// The bench job's test-set rate: real test rows in batches padded to their longest row, forward only (no
/// tokenization, no database writes).
struct TestSetRate {
  double samples_per_s = 0;
  int64_t rows = 0;          ///< rows in the timed pass
  int batch_size = 0;
  std::optional<int64_t> peak_mem_bytes;
  MeasuredOn on;
};

/// Weight quantization error of a variant over its projections (table layer_errors). SQNR in dB per
/// projection = sqnr_db(signal_sq, error_sq) (common/metrics.h); exactly stored projections have none.
struct QuantErrorFigures {
  int projections = 0;               ///< rows stored (GPT-2 Small: 48)
  int exact = 0;                     ///< projections stored exactly (no error, no dB figure)
  std::optional<double> min_db;      ///< lowest SQNR; nullopt when every projection is exact
  std::string min_at;                ///< where: "h.3.mlp.c_proj"
  /// Median SQNR over all projections, exact ones counted as +infinity (middle two averaged for an even
  /// count); nullopt when that median is infinite (at least half the projections are exact).
  std::optional<double> median_db;
  MeasuredOn on;                     ///< where the error was computed (the quantize job's device)
  std::vector<LayerError> layers;    ///< every projection, in layer order
};

/// How far a variant got.
enum class VariantStatus { kDone, kFailed, kIncomplete };
const char* to_string(VariantStatus s);

/// Everything the report says about one variant.
struct VariantFigures {
  std::string name, method, base_dtype;
  std::optional<std::string> baseline;  ///< the variant it is compared with (none for the baseline itself)
  VariantStatus status = VariantStatus::kIncomplete;
  std::string state;                  ///< the database state (done, failed, running, ...)
  std::optional<std::string> error;   ///< why it failed
  int64_t predictions = 0;            ///< stored prediction rows

  std::optional<ClassificationMetrics> metrics;  ///< only for done variants with predictions
  /// Where the stored predictions were computed: the evaluation shards' device ("mixed: A, B" when shards
  /// ran on several; "unknown device" when no shard row says).
  MeasuredOn evaluated_on;
  std::optional<Interval> accuracy_ci;           ///< Wilson 95%
  std::optional<Interval> macro_f1_ci;           ///< bootstrap 95% (1,000 resamples, seed 1234)
  std::optional<PairedComparison> vs_baseline;   ///< on the samples both evaluated (a = this, b = baseline)
  std::optional<double> accuracy_delta;          ///< accuracy - baseline accuracy (fraction)

  VariantMemory memory;                          ///< (a) with/without mask buffers, (b), (c)
  /// Where the two (c) peaks were measured: the device of the bench row (latency at batch 1, throughput at
  /// max_batch_size) that holds the same peak; "unknown device" when no bench row does.
  MeasuredOn peak_mem_batch1_on, peak_mem_max_batch_on;
  std::optional<QuantErrorFigures> quant_error;  ///< nullopt: no layer_errors rows (not measured)
  std::optional<double> compression;             ///< baseline footprint (a) / this footprint (a)
  std::optional<double> memory_reduction;        ///< 1 - this / baseline, footprint (a)

  std::optional<LatencyFigures> latency;         ///< batch 1, the bench's seq_len
  std::vector<ThroughputFigure> sweep;           ///< by batch size
  std::optional<ThroughputFigure> best_throughput;
  std::optional<DatasetRate> dataset_rate;       ///< the eval shards' end-to-end rate
  std::optional<TestSetRate> test_set_rate;      ///< the bench job's forward-only rate
};

/// Summary of the fine-tuning run(s).
struct TrainingSummary {
  int runs = 0;
  int epochs = 0;
  double seconds = 0;
  std::optional<double> samples_per_s, final_loss, val_accuracy;
  MeasuredOn on;
};

/// Plain figures of one experiment; what every renderer reads.
struct ReportData {
  int64_t experiment_id = 0;
  std::string experiment_name;
  nlohmann::json spec = nlohmann::json::object();
  std::string state;
  std::optional<std::string> error;
  std::string created_at, generated_at, qbench_version;
  std::optional<std::string> finished_at;
  std::optional<std::string> baseline;  ///< the spec's baseline variant, when it is listed
  std::vector<std::string> class_names;
  std::optional<TrainingSummary> training;
  std::vector<VariantFigures> variants;
  /// McNemar p-value of every pair of evaluated variants ([i][j], same order as `variants`; nullopt where
  /// either has no metrics or they share no samples). The accuracy rules need all pairs, not only
  /// variant-vs-baseline.
  std::vector<std::vector<std::optional<double>>> pairwise_p;

  /// The variant called `name`, or nullptr.
  const VariantFigures* find(const std::string& name) const;
};

/// Computes every figure from the raw state: metrics, Wilson and bootstrap intervals, McNemar against the
/// baseline and between all pairs, memory ratios, latency, throughput sweep, dataset rate.
/// InputError when stored predictions hold a class id outside 0..15 (the message names the variant).
ReportData build_report_data(const ReportInputs& inputs);

/// The experiment named by `id_or_name`: a decimal id, else the most recent experiment with that name.
/// nullopt when there is none.
std::optional<int64_t> find_experiment(Store& store, const std::string& id_or_name);

/// read_report_inputs + build_report_data.
ReportData load_report_data(Store& store, int64_t experiment_id);

// ---------------------------------------------------------------------------------------------------------
// Rules

/// Two p50 latencies (or other figures) that print the same are a tie: naming one of them "fastest" would
/// contradict the table.
inline constexpr double kLatencyTieMs = 0.005;
/// Significance level of every accuracy claim (SPEC section 3).
inline constexpr double kSignificance = 0.05;

/// The speed findings for the variants measured on one device.
struct SpeedFindings {
  std::string device;                       ///< MeasuredOn::device shared by these figures
  std::vector<std::string> lowest_latency;  ///< lowest p50 at batch 1; several = a tie
  std::optional<double> lowest_latency_ms;
  std::vector<std::string> highest_throughput;  ///< best point of the sweep; several = a tie
  std::optional<ThroughputFigure> best_point;
};

/// Key findings and recommendations, each computed by a rule documented in docs/report.md.
struct Findings {
  enum class Accuracy { kNone, kSingle, kSignificantlyHighest, kIndistinguishable, kTopGroup };
  Accuracy accuracy = Accuracy::kNone;
  std::vector<std::string> top_accuracy;  ///< the highest (kSignificantlyHighest) or the top group
  std::vector<std::string> below_top;     ///< significantly below the highest (kTopGroup)
  double max_p_vs_top = 1;                ///< largest McNemar p of the highest vs another variant

  std::vector<std::string> lowest_memory;  ///< smallest footprint (a); several = a tie
  std::optional<int64_t> lowest_memory_bytes;
  std::vector<std::string> memory_not_measured;

  std::vector<SpeedFindings> speed;  ///< one entry per device, baseline's device first
  std::vector<std::string> speed_not_measured;  ///< variants (not failed) without any latency figure

  /// Variants whose accuracy is not significantly below their baseline (McNemar p >= 0.05 or higher).
  std::vector<std::string> accuracy_preserved;
  /// Variants significantly below their baseline.
  std::vector<std::string> accuracy_degraded;

  std::vector<std::string> trade_offs;       ///< sentences
  std::vector<std::string> recommendations;  ///< sentences
  std::vector<std::string> warnings;         ///< failed/incomplete variants, mixed devices, partial samples
};

/// Applies the rules to `data`. Never names a variant whose figure is not in the data.
Findings derive_findings(const ReportData& data);

// ---------------------------------------------------------------------------------------------------------
// Renderers

enum class ReportFormat { kText, kMarkdown, kJson, kHtml };
/// "text" | "markdown" | "md" | "json" | "html"; nullopt otherwise.
std::optional<ReportFormat> parse_report_format(const std::string& s);

/// The report in the reference's layout: executive summary, detailed metrics per variant (efficiency,
/// performance, per-class F1), key findings, trade-off analysis, recommendations, technical notes.
std::string render_text(const ReportData& data);
/// The same content as Markdown tables.
std::string render_markdown(const ReportData& data);
/// Every figure, findings included (pretty-printed, 2-space indent, trailing newline).
nlohmann::json report_to_json(const ReportData& data);
std::string render_json(const ReportData& data);
/// One self-contained HTML file (no network fetch, no script library) with inline SVG charts:
/// accuracy with 95% interval vs memory, latency p50/p99 and throughput per variant, the batch-size sweep,
/// the per-class F1 heat map, confusion matrices and the per-projection weight SQNR. Every chart is an
/// <svg data-chart="...">.
std::string render_html(const ReportData& data);
/// Dispatches on `format`.
std::string render_report(const ReportData& data, ReportFormat format);

/// The data-chart names render_html() always emits (a chart without data says so inside its SVG).
const std::vector<std::string>& html_chart_names();

/// Two experiments side by side (variants matched by name) with their differences; speed differences only
/// where both figures were measured on the same device. Text, Markdown, JSON or one self-contained HTML file
/// (the single report's style, charts "compare-accuracy" and "compare-sqnr").
std::string render_comparison(const ReportData& a, const ReportData& b, ReportFormat format);
/// The data-chart names the comparison's HTML always emits.
const std::vector<std::string>& comparison_chart_names();

}  // namespace evalsvc::scheduler
