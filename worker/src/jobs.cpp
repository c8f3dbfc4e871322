#include "evalsvc/worker/jobs.h"

#include <algorithm>
#include <chrono>
#include <memory>
#include <mutex>

#include "evalsvc/common/error.h"
#include "evalsvc/common/experiment_spec.h"
#include "evalsvc/common/log.h"
#include "evalsvc/common/metrics.h"
#include "evalsvc/common/paths.h"
#include "evalsvc/kernels/memory.h"
#include "evalsvc/scheduler/report.h"
#include "evalsvc/scheduler/store.h"
#include "evalsvc/worker/benchmark.h"
#include "evalsvc/worker/checkpoint.h"
#include "evalsvc/worker/dataset.h"
#include "evalsvc/worker/device.h"
#include "evalsvc/worker/evaluate.h"
#include "evalsvc/worker/preset.h"
#include "evalsvc/worker/quant_error.h"
#include "evalsvc/worker/safetensors.h"
#include "evalsvc/worker/tokenizer.h"

namespace fs = std::filesystem;

namespace evalsvc::worker {

fs::path experiment_dir(const fs::path& artifacts, int64_t experiment_id) {
  return artifacts / fmt::format("exp-{}", experiment_id);
}

namespace {

using scheduler::JobContext;
using scheduler::JobMessage;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

/// State shared by the executors of one worker process: one database connection (executors run one at a
/// time) and caches that make consecutive shards of one variant cheap.
struct Shared {
  JobEnvironment env;
  std::unique_ptr<scheduler::Store> store;
  std::unique_ptr<Tokenizer> tokenizer;
  std::mutex mu;
  // The last variant model loaded, keyed "experiment/variant" (eval shards of one variant follow each other).
  std::string model_key;
  std::unique_ptr<GPT2Classifier> model;

  scheduler::Store& db() {
    if (!store) store = std::make_unique<scheduler::Store>(env.database_url);
    return *store;
  }
  const Tokenizer& tok() {
    if (!tokenizer) tokenizer = std::make_unique<Tokenizer>(Tokenizer::load(env.data / "gpt2"));
    return *tokenizer;
  }
};

ExperimentSpec spec_of(Shared& s, int64_t experiment_id) {
  auto e = s.db().get_experiment(experiment_id);
  if (!e) throw InputError(fmt::format("experiment {} does not exist", experiment_id));
  return ExperimentSpec::parse(e->spec);
}

fs::path train_csv(const Shared& s, const ExperimentSpec& spec) {
  return spec.data.train ? fs::path(*spec.data.train) : s.env.data / "ag_news" / "train_first10429.csv";
}
fs::path test_csv(const Shared& s, const ExperimentSpec& spec) {
  return spec.data.test ? fs::path(*spec.data.test) : s.env.data / "ag_news" / "test.csv";
}

TokenizedDataset dataset(Shared& s, const ExperimentSpec& spec, bool train, bool* hit = nullptr) {
  return load_or_tokenize(train ? train_csv(s, spec) : test_csv(s, spec), s.tok(), spec.data.max_len,
                          s.env.artifacts / "cache",
                          static_cast<size_t>(train ? spec.data.train_limit : spec.data.test_limit), hit);
}

const VariantSpec& variant_of(const ExperimentSpec& spec, const JobMessage& job) {
  const auto& pv = job.params.contains("variant") ? job.params["variant"] : nlohmann::json();
  const std::string name = pv.is_object() ? pv.value("name", "") : pv.is_string() ? pv.get<std::string>() : "";
  const VariantSpec* v = spec.find_variant(name);
  if (!v) throw InputError(fmt::format("job {}: variant '{}' is not in the experiment's spec", job.id, name));
  return *v;
}

fs::path variant_file(const Shared& s, int64_t exp, const std::string& variant) {
  return experiment_dir(s.env.artifacts, exp) / "variants" / variant / "model.safetensors";
}

/// The variant's model on the worker's device, from the quantize job's artifact (cached per process).
GPT2Classifier& load_variant(Shared& s, const ExperimentSpec& spec, int64_t exp, const VariantSpec& v) {
  const std::string key = fmt::format("{}/{}", exp, v.name);
  if (s.model && s.model_key == key) return *s.model;
  s.model.reset();
  auto file = read_safetensors(variant_file(s, exp, v.name));
  // A model initialised from a checkpoint has that checkpoint's shape: read its config.json and header only
  // (loading the whole fp32 checkpoint here cost ~1.5 s per variant and worker). Every tensor is then
  // overwritten from the variant file, so the model is built without random initialisation.
  const ModelConfig cfg =
      spec.model.init ? inspect_checkpoint(*spec.model.init).config : ModelConfig::preset(spec.model.config);
  auto model = std::make_unique<GPT2Classifier>(cfg, spec.train.seed, /*random_init=*/false);
  (*model)->load_variant_state_dict(file.tensors, kernels::parse_method(v.method), dtype_of(v.base_dtype),
                                    quant_options(v));
  (*model)->to_device(s.env.device);
  s.model = std::move(model);
  s.model_key = key;
  return *s.model;
}

nlohmann::json run_prepare(Shared& s, const JobMessage& job, JobContext&) {
  const auto spec = spec_of(s, job.experiment_id);
  const auto t0 = Clock::now();
  bool hit_train = false, hit_test = false;
  auto train = dataset(s, spec, true, &hit_train);
  auto test = dataset(s, spec, false, &hit_test);
  return {{"train_rows", train.size()}, {"test_rows", test.size()}, {"train_truncated", train.truncated_rows},
          {"train_cache_hit", hit_train}, {"test_cache_hit", hit_test}, {"seconds", seconds_since(t0)}};
}

nlohmann::json run_train(Shared& s, const JobMessage& job, JobContext&) {
  const auto spec = spec_of(s, job.experiment_id);
  RunConfig rc = run_config(spec);
  auto all = dataset(s, spec, true);
  TokenizedDataset train_set = all, validation;
  if (rc.validation_fraction > 0) {
    auto split = stratified_split(all.labels, rc.validation_fraction, rc.train.seed);
    train_set = select(all, split.train);
    validation = select(all, split.validation);
  }
  GPT2Classifier model(rc.model, rc.train.seed);
  bool init_is_classifier = false;
  if (spec.model.init) {
    Checkpoint ck = load_checkpoint(*spec.model.init);
    init_is_classifier = ck.kind == CheckpointKind::kClassifier;
    model = GPT2Classifier(ck.config, rc.train.seed);
    model->load_hf_state_dict(ck.state, init_is_classifier);
    rc.model = ck.config;
  }
  const fs::path dir = experiment_dir(s.env.artifacts, job.experiment_id);
  if (rc.train.epochs == 0) {
    // Nothing to train: model.init is the fine-tuned classifier to quantize and evaluate (one trained
    // elsewhere, or by an earlier experiment, so that two experiments compare on exactly the same weights).
    EVALSVC_CHECK(init_is_classifier, InputError,
                  "job {}: train.epochs is 0 but model.init ({}) has no classification head: it is a base model "
                  "that must be fine-tuned first",
                  job.id, *spec.model.init);
    EVALSVC_CHECK(rc.model.num_labels == 4, InputError, "job {}: model.init ({}) has {} labels; AG News has 4",
                  job.id, *spec.model.init, rc.model.num_labels);
    save_checkpoint(dir / "model", rc.model, model->hf_state_dict(),
                    {{"qbench_experiment", std::to_string(job.experiment_id)}, {"qbench_init", *spec.model.init}});
    return {{"seconds", 0.0}, {"trained", false}, {"init", *spec.model.init}};
  }
  rc.train.state_dir = dir / "train_state";  // a redelivered train job resumes from the last epoch
  rc.train.progress = false;
  TrainResult tr = train(model, train_set, validation, rc.train, s.env.device);
  save_checkpoint(dir / "model", rc.model, model->hf_state_dict(), {{"qbench_experiment", std::to_string(job.experiment_id)}});
  scheduler::TrainingRun run;
  run.experiment_id = job.experiment_id;
  run.job_id = job.id;
  run.epochs = static_cast<int>(rc.train.epochs);
  run.seconds = tr.seconds;
  run.samples_per_s = tr.samples_per_s;
  run.final_loss = tr.final_loss;
  if (!tr.epochs.empty() && tr.epochs.back().validation_accuracy >= 0) run.val_accuracy = tr.epochs.back().validation_accuracy;
  run.device = describe_device(s.env.device);
  run.history = tr.to_json()["epochs"];
  s.db().insert_training_run(run);
  return {{"seconds", tr.seconds}, {"samples_per_s", tr.samples_per_s}, {"final_loss", tr.final_loss},
          {"resumed_from_step", tr.resumed_from_step}};
}

nlohmann::json run_quantize(Shared& s, const JobMessage& job, JobContext&) {
  const auto spec = spec_of(s, job.experiment_id);
  const VariantSpec& v = variant_of(spec, job);
  const fs::path dir = experiment_dir(s.env.artifacts, job.experiment_id);
  Checkpoint ck = load_checkpoint(dir / "model");
  GPT2Classifier model(ck.config, 0);
  model->load_hf_state_dict(ck.state, true);
  const auto method = kernels::parse_method(v.method);
  const auto base = dtype_of(v.base_dtype);
  const auto opts = quant_options(v);
  model->quantize(method, base, opts);
  // Weight quantization error of each projection, written to layer_errors (the report's SQNR). The model
  // was quantized on the CPU here, so that is the device the rows name. A redelivered job replaces them.
  const auto errors = projection_errors(model, ck.state);
  std::vector<scheduler::LayerError> rows;
  std::vector<double> finite_db;
  int exact = 0;
  const auto cpu = describe_device(torch::kCPU);
  for (const auto& e : errors) {
    scheduler::LayerError r;
    r.experiment_id = job.experiment_id;
    r.variant = v.name;
    r.layer = static_cast<int>(e.layer);
    r.projection = projection_name(e.projection);
    r.numel = e.numel;
    r.signal_sq = e.signal_sq;
    r.error_sq = e.error_sq;
    r.max_abs_error = e.max_abs_error;
    r.device = cpu;
    r.job_id = job.id;
    rows.push_back(std::move(r));
    if (auto db = sqnr_db(e.signal_sq, e.error_sq)) {
      finite_db.push_back(*db);
    } else {
      ++exact;
    }
  }
  s.db().write_layer_errors(job.experiment_id, v.name, rows);
  auto state = model->variant_state_dict();
  write_safetensors(variant_file(s, job.experiment_id, v.name), state,
                    {{"qbench_method", v.method}, {"qbench_base_dtype", v.base_dtype}, {"qbench_variant", v.name}});
  const kernels::ModelShape shape{ck.config.vocab_size, ck.config.n_positions, ck.config.n_embd,
                                  ck.config.n_layer,   ck.config.inner(),       ck.config.num_labels};
  const auto mem = kernels::model_memory(shape, method, base, opts);
  scheduler::VariantMemory vm;
  vm.footprint_bytes = mem.hf_with_mask_buffers;
  vm.footprint_no_buffers_bytes = mem.hf_without_mask_buffers;
  vm.runtime_bytes = mem.runtime;
  s.db().set_variant_memory(job.experiment_id, v.name, vm);
  s.db().set_variant_state(job.experiment_id, v.name, scheduler::RunState::kRunning);
  // A summary for the job record; every projection's figure is in layer_errors.
  const auto min_db = std::min_element(finite_db.begin(), finite_db.end());
  return {{"footprint_bytes", mem.hf_with_mask_buffers},
          {"runtime_bytes", mem.runtime},
          {"layer_errors", rows.size()},
          {"exact_projections", exact},
          {"sqnr_db_min", min_db == finite_db.end() ? nlohmann::json(nullptr) : nlohmann::json(*min_db)}};
}

nlohmann::json run_eval(Shared& s, const JobMessage& job, JobContext&) {
  const auto t0 = Clock::now();
  const auto spec = spec_of(s, job.experiment_id);
  const VariantSpec& v = variant_of(spec, job);
  const int64_t b = job.params.value("row_begin", int64_t{0}), e = job.params.value("row_end", int64_t{0});
  const int shard = job.params.value("shard", 0);
  auto test = dataset(s, spec, false);
  EVALSVC_CHECK(b >= 0 && b <= e && e <= static_cast<int64_t>(test.size()), InputError,
                "job {}: rows [{}, {}) outside the test set of {} rows", job.id, b, e, test.size());
  std::vector<size_t> idx;
  for (int64_t i = b; i < e; ++i) idx.push_back(static_cast<size_t>(i));
  std::vector<scheduler::PredictionRow> rows;
  if (!idx.empty()) {
    GPT2Classifier& model = load_variant(s, spec, job.experiment_id, v);
    auto part = select(test, idx);
    Predictions p = predict(model, part, spec.eval.batch_size, s.env.device);
    rows.reserve(idx.size());
    for (size_t i = 0; i < idx.size(); ++i) {
      scheduler::PredictionRow r;
      r.sample_idx = static_cast<int32_t>(idx[i]);
      r.label = static_cast<int16_t>(p.labels[i]);
      r.pred = static_cast<int16_t>(p.preds[i]);
      r.logits.assign(p.logits.begin() + static_cast<std::ptrdiff_t>(i * static_cast<size_t>(p.num_labels)),
                      p.logits.begin() + static_cast<std::ptrdiff_t>((i + 1) * static_cast<size_t>(p.num_labels)));
      rows.push_back(std::move(r));
    }
  }
  scheduler::ShardTiming timing;
  timing.device = describe_device(s.env.device);
  timing.seconds = seconds_since(t0);  // end to end: load + tokenize (cache) + forward + write below
  auto wr = s.db().write_predictions(job.experiment_id, v.name, shard, job.id, rows, timing);
  return {{"rows", rows.size()}, {"inserted", wr.inserted}, {"duplicates", wr.duplicates}, {"seconds", seconds_since(t0)}};
}

nlohmann::json run_bench(Shared& s, const JobMessage& job, JobContext&) {
  const auto spec = spec_of(s, job.experiment_id);
  const VariantSpec& v = variant_of(spec, job);
  GPT2Classifier& model = load_variant(s, spec, job.experiment_id, v);
  BenchOptions o;
  o.batch_sizes = spec.bench.batch_sizes;
  o.seq_len = spec.bench.seq_len;
  o.warmup = spec.bench.warmup;
  o.iters = spec.bench.iters;
  BenchResult r = run_benchmark(model, s.env.device, o);
  const auto dev = describe_device(s.env.device);
  scheduler::BenchResult lat;
  lat.experiment_id = job.experiment_id;
  lat.variant = v.name;
  lat.kind = scheduler::BenchKind::kLatency;
  lat.batch_size = 1;
  lat.seq_len = static_cast<int>(o.seq_len);
  lat.p50_ms = r.latency.p50_ms;
  lat.p90_ms = r.latency.p90_ms;
  lat.p99_ms = r.latency.p99_ms;
  lat.samples_per_s = 1000.0 / r.latency.p50_ms;
  if (r.latency_peak_memory_bytes >= 0) lat.peak_mem_bytes = r.latency_peak_memory_bytes;
  lat.warmup_runs = static_cast<int>(o.warmup);
  lat.timed_runs = static_cast<int>(o.iters);
  lat.device = dev;
  s.db().upsert_bench_result(lat);
  scheduler::VariantMemory vm;
  if (r.latency_peak_memory_bytes >= 0) vm.peak_mem_batch1_bytes = r.latency_peak_memory_bytes;
  for (const auto& p : r.sweep) {
    scheduler::BenchResult t;
    t.experiment_id = job.experiment_id;
    t.variant = v.name;
    t.kind = scheduler::BenchKind::kThroughput;
    t.batch_size = static_cast<int>(p.batch_size);
    t.seq_len = static_cast<int>(o.seq_len);
    t.samples_per_s = p.samples_per_s;
    t.p50_ms = p.ms_per_batch;
    if (p.peak_memory_bytes >= 0) t.peak_mem_bytes = p.peak_memory_bytes;
    t.device = dev;
    s.db().upsert_bench_result(t);
    if (p.peak_memory_bytes >= 0 && (!vm.max_batch_size || p.batch_size > *vm.max_batch_size)) {
      vm.peak_mem_max_batch_bytes = p.peak_memory_bytes;
      vm.max_batch_size = static_cast<int>(p.batch_size);
    }
  }
  s.db().set_variant_memory(job.experiment_id, v.name, vm);

  // The test-set rate: real rows, dynamic padding, forward only, with the device to this job.
  TokenizedDataset test = dataset(s, spec, false);
  if (spec.bench.test_set_rows > 0) test = head(test, static_cast<size_t>(spec.bench.test_set_rows));
  const TestSetRate tr = run_test_set_rate(model, test, spec.eval.batch_size, s.env.device);
  scheduler::BenchResult ds;
  ds.experiment_id = job.experiment_id;
  ds.variant = v.name;
  ds.kind = scheduler::BenchKind::kDataset;
  ds.batch_size = static_cast<int>(tr.batch_size);
  ds.seq_len = 0;  // dynamic: each batch padded to its longest row
  ds.samples_per_s = tr.samples_per_s;
  ds.p50_ms = tr.seconds * 1000.0;
  ds.warmup_runs = 1;
  ds.timed_runs = static_cast<int>(tr.rows);
  if (tr.peak_memory_bytes >= 0) ds.peak_mem_bytes = tr.peak_memory_bytes;
  ds.device = dev;
  s.db().upsert_bench_result(ds);
  nlohmann::json out = r.to_json();
  out["test_set"] = tr.to_json();
  return out;
}

nlohmann::json run_merge(Shared& s, const JobMessage& job, JobContext&) {
  const auto spec = spec_of(s, job.experiment_id);
  const int64_t expected = spec.data.test_limit;
  nlohmann::json out = nlohmann::json::object();
  for (const auto& v : spec.variants) {
    auto rec = s.db().get_variant(job.experiment_id, v.name);
    if (rec && rec->state == scheduler::RunState::kFailed) {
      out[v.name] = {{"state", "failed"}};
      continue;
    }
    auto p = s.db().read_predictions(job.experiment_id, v.name);
    int64_t correct = 0;
    for (size_t i = 0; i < p.size(); ++i) correct += p.label[i] == p.pred[i];
    const bool complete = static_cast<int64_t>(p.size()) == expected;
    s.db().set_variant_state(job.experiment_id, v.name, complete ? scheduler::RunState::kDone : scheduler::RunState::kFailed,
                             complete ? std::nullopt
                                      : std::optional<std::string>(fmt::format("{} of {} predictions stored", p.size(), expected)));
    out[v.name] = {{"n", p.size()}, {"expected", expected}, {"correct", correct},
                   {"accuracy", p.size() ? static_cast<double>(correct) / static_cast<double>(p.size()) : 0.0}};
  }
  return out;
}

nlohmann::json run_report(Shared& s, const JobMessage& job, JobContext&) {
  // Rendered from PostgreSQL alone; `qbench report` renders the same from the database at any time.
  const auto data = scheduler::load_report_data(s.db(), job.experiment_id);
  const fs::path dir = experiment_dir(s.env.artifacts, job.experiment_id) / "report";
  nlohmann::json files = nlohmann::json::array();
  for (const auto& [fmt_name, ext] : std::vector<std::pair<std::string, std::string>>{
           {"text", "txt"}, {"markdown", "md"}, {"json", "json"}, {"html", "html"}}) {
    const auto f = scheduler::parse_report_format(fmt_name);
    if (!f) continue;
    const fs::path file = dir / ("report." + ext);
    write_file_atomic(file, scheduler::render_report(data, *f));
    files.push_back(file.string());
  }
  return {{"files", files}};
}

}  // namespace

void register_job_executors(scheduler::ExecutorRegistry& registry, const JobEnvironment& env) {
  auto shared = std::make_shared<Shared>();
  shared->env = env;
  set_cpu_threads(env.threads);
  auto wrap = [shared](auto fn) {
    return [shared, fn](const JobMessage& job, JobContext& ctx) -> nlohmann::json {
      std::lock_guard<std::mutex> lock(shared->mu);
      // The durable record says the job runs here now (status shows it; a later event may overwrite).
      scheduler::JobUpdate u;
      u.worker_id = ctx.worker_id();
      u.attempt = job.attempt;
      shared->db().set_job_state(job.id, scheduler::JobState::kRunning, u,
                                 {scheduler::JobState::kQueued, scheduler::JobState::kPending});
      return fn(*shared, job, ctx);
    };
  };
  registry["prepare"] = wrap(run_prepare);
  registry["train"] = wrap(run_train);
  registry["quantize"] = wrap(run_quantize);
  registry["eval"] = wrap(run_eval);
  registry["bench"] = wrap(run_bench);
  registry["merge"] = wrap(run_merge);
  registry["report"] = wrap(run_report);
  scheduler::register_noop_executor(registry);
}

}  // namespace evalsvc::worker
