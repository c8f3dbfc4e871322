#pragma once
// The PostgreSQL side of qbench: experiments, the durable mirror of job states, workers, variants, and every
// result (per-sample predictions, evaluation shards, bench figures, training runs). The schema lives in
// migrations/*.sql (see docs/results-schema.md); migrate() applies it.
//
// Every statement is parameterized; values never become SQL text. Credentials never reach logs or error
// messages (redact_url). A broken connection (server restart, network blip) is re-opened and the operation
// retried until StoreOptions::reconnect_timeout; that is safe because every operation runs in one
// transaction that either committed or did not (an unknown commit outcome is reported, never retried).
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace evalsvc::scheduler {

using Timestamp = std::chrono::system_clock::time_point;

// ---------------------------------------------------------------------------------------------------------
// Connection strings

/// The database URL to use: `url_option` if given, else $QBENCH_DATABASE_URL (InputError when neither is set).
/// When $QBENCH_DATABASE_PASSWORD_FILE is set, the password in that file (trailing newline trimmed) is used.
std::string resolve_database_url(const std::optional<std::string>& url_option);

/// `url` (a postgresql:// URI or a key=value conninfo) with `password` added, percent-encoded or quoted.
std::string with_password(const std::string& url, const std::string& password);

/// `url` with any password replaced by "***", for logs and messages.
std::string redact_url(const std::string& url);

/// `message` with every occurrence of `url`'s password (and of `url` itself) replaced, so that error text
/// from libpq or the server can be shown safely.
std::string scrub_secrets(std::string message, const std::string& url);

// ---------------------------------------------------------------------------------------------------------
// Migrations (implemented in migrate.cpp)

/// What migrate() did.
struct MigrateResult {
  std::vector<std::string> applied;  ///< file names applied by this call, in order
  int version = 0;                   ///< highest version recorded after the call
};

/// Where the migrations are: $QBENCH_MIGRATIONS_DIR, then <binary dir>/../share/qbench/migrations,
/// <binary dir>/migrations, then the source tree's migrations/ (EVALSVC_MIGRATIONS_DIR).
/// IoError naming every place tried when none holds a NNNN_*.sql file.
std::filesystem::path find_migrations_dir();

/// Applies every migrations/NNNN_name.sql not yet recorded in schema_migrations, in version order, in ONE
/// transaction under pg_advisory_xact_lock, so concurrent callers serialise and the second one finds nothing
/// to do. InputError when a recorded migration's file changed (checksum) or a file name is malformed;
/// DatabaseError (naming the file) when the server rejects a migration, and then nothing is applied.
MigrateResult migrate(const std::string& conn_url, const std::filesystem::path& dir);

// ---------------------------------------------------------------------------------------------------------
// Records

/// Lifecycle of a job, mirrored from the scheduler (the column jobs.state).
enum class JobState { kPending, kQueued, kRunning, kDone, kFailed, kCancelled, kBlocked };
/// Lifecycle of an experiment or a variant.
enum class RunState { kPending, kRunning, kDone, kFailed, kCancelled, kBlocked };
/// What a bench_results row measures (SPEC section 3).
enum class BenchKind { kLatency, kThroughput, kDataset };

const char* to_string(JobState s);
const char* to_string(RunState s);
const char* to_string(BenchKind k);
/// Parses the database spelling ("queued", ...); nullopt for anything else.
std::optional<JobState> parse_job_state(std::string_view s);
std::optional<RunState> parse_run_state(std::string_view s);
std::optional<BenchKind> parse_bench_kind(std::string_view s);
/// done, failed, cancelled.
bool is_terminal(JobState s);
bool is_terminal(RunState s);

/// A row of `experiments`.
struct Experiment {
  int64_t id = 0;
  std::string name;
  nlohmann::json spec = nlohmann::json::object();
  RunState state = RunState::kPending;
  std::optional<std::string> error;
  Timestamp created_at{};
  std::optional<Timestamp> finished_at;
};

/// A row of `jobs`. The timestamps are kept by the database (upsert_job ignores them).
struct JobRecord {
  std::string id;
  int64_t experiment_id = 0;
  std::string type;
  std::optional<std::string> variant;
  std::optional<int> shard;
  JobState state = JobState::kPending;
  int attempt = 0;
  int max_attempts = 3;
  std::vector<std::string> depends_on;
  std::string queue;
  std::optional<std::string> worker_id;
  std::optional<std::string> error;
  std::optional<nlohmann::json> result;
  Timestamp created_at{};
  Timestamp updated_at{};
  std::optional<Timestamp> queued_at, started_at, finished_at;
};

/// Fields set_job_state() may change besides the state; unset fields keep their value.
struct JobUpdate {
  std::optional<std::string> worker_id;
  std::optional<std::string> error;  ///< a move to kDone clears the error of earlier attempts
  std::optional<nlohmann::json> result;
  std::optional<int> attempt;
};

/// A row of `workers`.
struct WorkerRecord {
  std::string id;
  std::string host;
  nlohmann::json devices = nlohmann::json::array();
  Timestamp started_at{};
  Timestamp last_seen{};
};

/// Memory figures of a variant, in bytes (SPEC section 3); unset = not measured yet.
struct VariantMemory {
  std::optional<int64_t> footprint_bytes;             ///< (a) get_memory_footprint() with the mask buffers
  std::optional<int64_t> footprint_no_buffers_bytes;  ///< (a) without them (recent transformers)
  std::optional<int64_t> runtime_bytes;               ///< (b) all bytes the variant needs to run
  std::optional<int64_t> peak_mem_batch1_bytes;       ///< (c) peak device memory at batch 1
  std::optional<int64_t> peak_mem_max_batch_bytes;    ///< (c) ... at the largest batch
  std::optional<int> max_batch_size;                  ///< that largest batch
};

/// A row of `variants`.
struct VariantRecord {
  int64_t experiment_id = 0;
  std::string name;        ///< e.g. "int8-sym-channel"
  std::string method;      ///< e.g. "int8_sym", "nf4", "fp32"
  std::string base_dtype;  ///< dtype of the kept parts: "fp32", "fp16", "bf16"
  nlohmann::json options = nlohmann::json::object();
  std::optional<std::string> baseline;  ///< the variant McNemar compares against
  RunState state = RunState::kPending;
  std::optional<std::string> error;
  VariantMemory memory;
};

/// One evaluated sample. Class ids are 0-based (0 World .. 3 Sci/Tech).
struct PredictionRow {
  int32_t sample_idx = 0;
  int16_t label = 0;
  int16_t pred = 0;
  std::vector<float> logits;  ///< may be empty (stored as NULL)
};

/// Timing of one evaluation shard, stored in eval_shards.
struct ShardTiming {
  double seconds = 0;  ///< tokenize + forward + write, wall clock
  nlohmann::json device = nlohmann::json::object();
};

/// What write_predictions() did.
struct WriteResult {
  int64_t inserted = 0;    ///< new prediction rows
  int64_t duplicates = 0;  ///< rows already stored (a redelivered or overlapping shard) and skipped
  int deliveries = 0;      ///< how often this shard's results have arrived, this call included
};

/// All predictions of one variant, ordered by sample_idx, as columns for the metrics module.
struct Predictions {
  std::vector<int32_t> sample_idx;
  std::vector<int16_t> label;
  std::vector<int16_t> pred;
  int num_logits = 0;         ///< logits per row (0 when none were stored)
  std::vector<float> logits;  ///< row-major [size() x num_logits]; NaN for rows stored without logits
  size_t size() const { return sample_idx.size(); }
};

/// A row of `eval_shards`.
struct EvalShard {
  int64_t experiment_id = 0;
  std::string variant;
  int shard = 0;
  std::string job_id;
  int n = 0;
  double seconds = 0;
  std::optional<double> samples_per_s;
  nlohmann::json device = nlohmann::json::object();
  int deliveries = 1;
};

/// A row of the `variant_metrics` view.
struct VariantMetrics {
  int64_t experiment_id = 0;
  std::string variant;
  int64_t n = 0;
  int64_t correct = 0;
  double accuracy = 0;
};

/// A row of `bench_results`; one per (experiment, variant, kind, batch_size, seq_len).
/// kLatency: batch 1, p50/p90/p99 over timed_runs. kThroughput: samples_per_s at batch_size, p50_ms = ms per
/// batch. kDataset: the test-set rate (dynamic padding, so seq_len = 0): samples_per_s over one timed pass of
/// timed_runs test rows in batches of batch_size, p50_ms = that pass's time.
struct BenchResult {
  int64_t experiment_id = 0;
  std::string variant;
  BenchKind kind = BenchKind::kLatency;
  int batch_size = 1;
  int seq_len = 128;
  std::optional<double> p50_ms, p90_ms, p99_ms;
  std::optional<double> samples_per_s;
  std::optional<int64_t> peak_mem_bytes;
  std::optional<int> warmup_runs, timed_runs;
  nlohmann::json device = nlohmann::json::object();
};

/// A row of `layer_errors`: the weight quantization error of one projection matrix of a variant.
struct LayerError {
  int64_t experiment_id = 0;
  std::string variant;
  int layer = 0;           ///< block index
  std::string projection;  ///< "attn.c_attn", "attn.c_proj", "mlp.c_fc" or "mlp.c_proj"
  int64_t numel = 0;       ///< weights in the matrix
  double signal_sq = 0;    ///< sum of w^2 over the original fp32 weight
  double error_sq = 0;     ///< sum of (w - dequantized)^2 over the weight the variant stores
  double max_abs_error = 0;
  /// sqnr_db(signal_sq, error_sq) (common/metrics.h); nullopt = stored exactly. write_layer_errors computes
  /// it from the two sums, so a row can never carry a figure that disagrees with them.
  std::optional<double> sqnr_db;
  nlohmann::json device = nlohmann::json::object();  ///< where the error was computed (describe_device)
  std::optional<std::string> job_id;
};

/// A row of `training_runs`.
struct TrainingRun {
  int64_t id = 0;  ///< set by the database
  int64_t experiment_id = 0;
  std::optional<std::string> job_id;  ///< when set, a second insert with the same job_id replaces the row
  int epochs = 0;
  double seconds = 0;
  std::optional<double> samples_per_s, final_loss, val_accuracy;
  nlohmann::json device = nlohmann::json::object();
  nlohmann::json history = nlohmann::json::array();
};

/// Aggregates over every experiment for monitoring (the scheduler's /metrics endpoint).
struct ServiceStats {
  /// Jobs per (type, state); pairs without jobs are absent.
  std::map<std::pair<std::string, JobState>, int64_t> jobs;
  /// Experiments per state; states without experiments are absent.
  std::map<RunState, int64_t> experiments;
  /// Per job type: attempts beyond the first, summed over its jobs (a job that needed 3 attempts adds 2).
  std::map<std::string, int64_t> retries;
  /// Durations of done jobs of one type: from started_at (queued_at where the start was not recorded)
  /// to finished_at, so for jobs without a recorded start they include the wait in the queue.
  struct Durations {
    std::vector<int64_t> cumulative;  ///< cumulative[i]: jobs with duration <= bounds[i]
    int64_t count = 0;
    double sum_seconds = 0;
  };
  std::map<std::string, Durations> durations;
};

/// Connection behaviour of a Store.
struct StoreOptions {
  /// How long an operation keeps re-opening a broken connection before it gives up with DatabaseError.
  std::chrono::milliseconds reconnect_timeout{30000};
  /// libpq connect_timeout of each attempt, in seconds.
  int connect_timeout_s = 5;
};

// ---------------------------------------------------------------------------------------------------------

/// The results database over one libpqxx connection. Connects in the constructor (wrong credentials or an
/// unreachable server fail there with DatabaseError). Not thread-safe: one Store per thread.
class Store {
 public:
  /// `url`: postgresql://user:pass@host:port/db or a key=value conninfo.
  explicit Store(std::string url, StoreOptions options = {});
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;
  Store(Store&&) noexcept;
  Store& operator=(Store&&) noexcept;

  /// The URL with its password replaced by "***".
  std::string redacted_url() const;
  /// Round trip to the server (reconnecting if needed).
  void ping();
  /// Highest applied migration version (0 when none).
  int schema_version();

  // Experiments
  /// Inserts a pending experiment; returns its id. Not retried when the commit outcome is unknown.
  int64_t create_experiment(const std::string& name, const nlohmann::json& spec);
  std::optional<Experiment> get_experiment(int64_t id);
  /// Most recent first.
  std::vector<Experiment> list_experiments(int limit = 100);
  /// Sets state (and error when given); a terminal state stamps finished_at. False when no such experiment.
  bool set_experiment_state(int64_t id, RunState state, const std::optional<std::string>& error = std::nullopt);

  // Jobs
  /// Inserts the job or overwrites every field of an existing one (the scheduler's view wins).
  void upsert_job(const JobRecord& job);
  /// upsert_job for many jobs in one transaction (an experiment's job graph at submit).
  void upsert_jobs(const std::vector<JobRecord>& jobs);
  std::optional<JobRecord> get_job(const std::string& id);
  /// Jobs of one experiment (optionally in one state), by id.
  std::vector<JobRecord> list_jobs(int64_t experiment_id, std::optional<JobState> state = std::nullopt);
  /// Jobs of all experiments in pending, queued, running or blocked: what reconcile must look at.
  std::vector<JobRecord> list_open_jobs();
  /// Moves a job to `state` if it is in one of `only_from` (any state when empty); stamps queued_at,
  /// started_at, finished_at. Returns false when the job does not exist or was in another state.
  bool set_job_state(const std::string& id, JobState state, const JobUpdate& update = {},
                     const std::vector<JobState>& only_from = {});
  /// Number of jobs per state for one experiment (states without jobs are absent).
  std::map<JobState, int64_t> job_state_counts(int64_t experiment_id);
  /// Job counts, experiment counts, retries and duration histograms (upper bounds `duration_bounds`, in
  /// seconds, ascending) over all experiments, in one read-only transaction. InputError when there are no
  /// bounds or they are not finite and ascending.
  ServiceStats service_stats(const std::vector<double>& duration_bounds);

  // Workers
  /// Inserts or updates host and devices; last_seen = now().
  void upsert_worker(const WorkerRecord& worker);
  /// last_seen = now(); false when the worker is unknown.
  bool touch_worker(const std::string& id);
  std::vector<WorkerRecord> list_workers();

  // Variants
  /// Inserts the variant or updates its definition (method, base_dtype, options, baseline); state, error
  /// and memory figures of an existing row are kept.
  void upsert_variant(const VariantRecord& variant);
  std::optional<VariantRecord> get_variant(int64_t experiment_id, const std::string& name);
  std::vector<VariantRecord> list_variants(int64_t experiment_id);
  /// False when no such variant. A move to kDone clears the error.
  bool set_variant_state(int64_t experiment_id, const std::string& name, RunState state,
                         const std::optional<std::string>& error = std::nullopt);
  /// Sets the figures present in `memory`, keeping the others. False when no such variant.
  bool set_variant_memory(int64_t experiment_id, const std::string& name, const VariantMemory& memory);

  // Predictions and evaluation shards
  /// Stores one shard's predictions: COPY into a temp table, then INSERT ... ON CONFLICT DO NOTHING into
  /// predictions and the eval_shards upsert, all in one transaction. A redelivered (or overlapping) shard
  /// adds no row twice. InputError for rows with negative ids or a class id over 32767.
  WriteResult write_predictions(int64_t experiment_id, const std::string& variant, int shard,
                                const std::string& job_id, const std::vector<PredictionRow>& rows,
                                const ShardTiming& timing = {});
  /// Every prediction of a variant, by sample_idx. FormatError when rows have different logit counts.
  Predictions read_predictions(int64_t experiment_id, const std::string& variant);
  std::vector<EvalShard> list_eval_shards(int64_t experiment_id, const std::string& variant);
  /// The variant_metrics view for one experiment, by variant name.
  std::vector<VariantMetrics> variant_metrics(int64_t experiment_id);

  // Bench and training results
  /// Inserts or replaces the row of (experiment, variant, kind, batch_size, seq_len).
  void upsert_bench_result(const BenchResult& result);
  /// By variant, kind, batch_size, seq_len.
  std::vector<BenchResult> list_bench_results(int64_t experiment_id);
  /// Inserts a training run (or replaces the one with the same job_id); returns its id.
  int64_t insert_training_run(const TrainingRun& run);
  /// Oldest first.
  std::vector<TrainingRun> list_training_runs(int64_t experiment_id);

  // Quantization error
  /// Replaces every layer_errors row of the variant with `rows` in one transaction, so a redelivered
  /// quantize job leaves exactly its own rows. sqnr_db is computed here from signal_sq and error_sq.
  /// InputError for a row of another experiment/variant, a duplicate (layer, projection), an unknown
  /// projection, numel <= 0, or negative / non-finite sums (the message names the row).
  void write_layer_errors(int64_t experiment_id, const std::string& variant, const std::vector<LayerError>& rows);
  /// Every row of the experiment, by variant, layer and projection (Hugging Face order).
  std::vector<LayerError> list_layer_errors(int64_t experiment_id);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace evalsvc::scheduler
