// Store and LocalPostgres against a real PostgreSQL: idempotent shard writes, COPY speed, the
// variant_metrics view, reconnects after a restart or a crash, credentials kept out of errors, and SQL
// injection attempts stored verbatim.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cmath>
#include <limits>
#include <random>
#include <thread>

#include <pqxx/pqxx>

#include "evalsvc/common/error.h"
#include "evalsvc/common/paths.h"
#include "evalsvc/scheduler/local_postgres.h"
#include "evalsvc/scheduler/store.h"

namespace evalsvc::scheduler {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

fs::path make_temp_dir(const char* prefix) {
  std::string tmpl = (fs::temp_directory_path() / (std::string(prefix) + "-XXXXXX")).string();
  char* p = ::mkdtemp(tmpl.data());
  if (p == nullptr) throw IoError("mkdtemp failed for " + tmpl);
  return p;
}

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

/// `n` predictions with fixed-seed labels, about `accuracy` of them correct, 4 logits each.
std::vector<PredictionRow> make_rows(int first, int n, double accuracy, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-8.f, 8.f);
  std::vector<PredictionRow> rows;
  for (int i = first; i < first + n; ++i) {
    PredictionRow r;
    r.sample_idx = i;
    r.label = static_cast<int16_t>(rng() % 4);
    r.pred = (u(rng) + 8.f) / 16.f < accuracy ? r.label : static_cast<int16_t>((r.label + 1 + rng() % 3) % 4);
    r.logits = {u(rng), u(rng), u(rng), u(rng)};
    rows.push_back(std::move(r));
  }
  return rows;
}

class StoreTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = make_temp_dir("qbench-store-pg");
    LocalPostgresOptions o;
    o.root = root_;
    o.durable = false;
    pg_ = std::make_unique<LocalPostgres>(o);
  }
  static void TearDownTestSuite() {
    pg_.reset();
    std::error_code ec;
    evalsvc::remove_tree(root_, ec);
  }

  void SetUp() override {
    std::string name = std::string("s_") + ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
    url_ = pg_->create_database(name);
    migrate(url_, find_migrations_dir());
    StoreOptions so;
    so.reconnect_timeout = std::chrono::seconds(30);
    store_ = std::make_unique<Store>(url_, so);
  }

  /// An experiment with variants "fp32" and "int8" registered.
  int64_t experiment_with_variants() {
    const int64_t id = store_->create_experiment("exp", {{"variants", {"fp32", "int8"}}});
    for (const char* v : {"fp32", "int8"}) {
      VariantRecord rec;
      rec.experiment_id = id;
      rec.name = v;
      rec.method = v;
      rec.base_dtype = "fp32";
      store_->upsert_variant(rec);
    }
    return id;
  }

  static inline std::unique_ptr<LocalPostgres> pg_;
  static inline fs::path root_;
  std::string url_;
  std::unique_ptr<Store> store_;
};

// ---- LocalPostgres --------------------------------------------------------------------------------------

TEST_F(StoreTest, LocalPostgresUrlAndPasswordFile) {
  const std::string url = pg_->url();
  EXPECT_EQ(url, fmt::format("postgresql://qbench:{}@127.0.0.1:{}/qbench", pg_->password(), pg_->port()));
  EXPECT_GE(pg_->password().size(), 32u);
  struct stat st {};
  ASSERT_EQ(::stat(pg_->password_file().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600);
  EXPECT_TRUE(pg_->running());
  // Password authentication is really on for TCP.
  EXPECT_THROW(pqxx::connection(fmt::format("postgresql://qbench:wrong@127.0.0.1:{}/qbench", pg_->port())),
               pqxx::broken_connection);
  EXPECT_THROW(pg_->create_database("Bad-Name; DROP"), InputError);
}

TEST_F(StoreTest, LocalPostgresReopensTheSameFolderWithPortAndData) {
  const fs::path root = make_temp_dir("qbench-reopen-pg");
  int port = 0;
  std::string password;
  {
    LocalPostgresOptions o;
    o.root = root;
    o.durable = false;
    LocalPostgres pg(o);
    port = pg.port();
    password = pg.password();
    migrate(pg.url(), find_migrations_dir());
    Store(pg.url()).create_experiment("survives", nlohmann::json::object());
  }
  {
    LocalPostgresOptions o;
    o.root = root;
    o.durable = false;
    LocalPostgres pg(o);
    EXPECT_EQ(pg.port(), port);
    EXPECT_EQ(pg.password(), password);
    auto list = Store(pg.url()).list_experiments();
    ASSERT_EQ(list.size(), 1u);
    EXPECT_EQ(list[0].name, "survives");
  }
  std::error_code ec;
  evalsvc::remove_tree(root, ec);
}

// ---- experiments, jobs, workers, variants ---------------------------------------------------------------

TEST_F(StoreTest, ExperimentLifecycle) {
  const nlohmann::json spec = {{"variants", {"fp32", "nf4"}}, {"batch_sizes", {1, 8, 32}}};
  const int64_t id = store_->create_experiment("ag-news", spec);
  auto e = store_->get_experiment(id);
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->name, "ag-news");
  EXPECT_EQ(e->spec, spec);
  EXPECT_EQ(e->state, RunState::kPending);
  EXPECT_FALSE(e->finished_at.has_value());
  EXPECT_LE(std::chrono::abs(std::chrono::system_clock::now() - e->created_at), std::chrono::minutes(5));

  EXPECT_TRUE(store_->set_experiment_state(id, RunState::kFailed, std::string("worker w1 died")));
  e = store_->get_experiment(id);
  EXPECT_EQ(e->state, RunState::kFailed);
  EXPECT_EQ(e->error, "worker w1 died");
  EXPECT_TRUE(e->finished_at.has_value());

  EXPECT_FALSE(store_->set_experiment_state(id + 1000, RunState::kDone));
  EXPECT_FALSE(store_->get_experiment(id + 1000).has_value());
  EXPECT_THROW(store_->create_experiment("", {}), InputError);
}

TEST_F(StoreTest, JobsMirrorStatesAndGuardMoves) {
  const int64_t exp = experiment_with_variants();
  std::vector<JobRecord> jobs;
  for (int s = 0; s < 3; ++s) {
    JobRecord j;
    j.id = fmt::format("eval-int8-{}", s);
    j.experiment_id = exp;
    j.type = "evaluate";
    j.variant = "int8";
    j.shard = s;
    j.queue = "gpu";
    j.depends_on = {"quantize-int8", "odd \"quoted\", {braced} \\ name"};
    jobs.push_back(j);
  }
  store_->upsert_jobs(jobs);
  auto got = store_->get_job("eval-int8-1");
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->depends_on, jobs[1].depends_on);
  EXPECT_EQ(got->shard, 1);
  EXPECT_EQ(got->state, JobState::kPending);
  EXPECT_FALSE(got->queued_at.has_value());

  EXPECT_TRUE(store_->set_job_state("eval-int8-1", JobState::kQueued, {}, {JobState::kPending}));
  JobUpdate claim;
  claim.worker_id = "w1";
  claim.attempt = 1;
  EXPECT_TRUE(store_->set_job_state("eval-int8-1", JobState::kRunning, claim, {JobState::kQueued}));
  // A second claim of the same job must lose.
  EXPECT_FALSE(store_->set_job_state("eval-int8-1", JobState::kRunning, claim, {JobState::kQueued}));
  JobUpdate fail;
  fail.error = "CUDA out of memory";
  EXPECT_TRUE(store_->set_job_state("eval-int8-1", JobState::kFailed, fail));
  got = store_->get_job("eval-int8-1");
  EXPECT_EQ(got->state, JobState::kFailed);
  EXPECT_EQ(got->worker_id, "w1");
  EXPECT_EQ(got->attempt, 1);
  EXPECT_EQ(got->error, "CUDA out of memory");
  EXPECT_TRUE(got->queued_at && got->started_at && got->finished_at);

  JobUpdate done;
  done.result = nlohmann::json{{"n", 1900}};
  EXPECT_TRUE(store_->set_job_state("eval-int8-1", JobState::kDone, done));
  got = store_->get_job("eval-int8-1");
  EXPECT_FALSE(got->error.has_value()) << "done clears the error of earlier attempts";
  EXPECT_EQ(got->result, (nlohmann::json{{"n", 1900}}));
  EXPECT_FALSE(store_->set_job_state("no-such-job", JobState::kDone));

  auto counts = store_->job_state_counts(exp);
  EXPECT_EQ(counts[JobState::kPending], 2);
  EXPECT_EQ(counts[JobState::kDone], 1);
  EXPECT_EQ(store_->list_jobs(exp).size(), 3u);
  EXPECT_EQ(store_->list_jobs(exp, JobState::kDone).size(), 1u);
  EXPECT_EQ(store_->list_open_jobs().size(), 2u);

  // upsert_job overwrites: the scheduler's view wins.
  jobs[0].state = JobState::kCancelled;
  store_->upsert_job(jobs[0]);
  EXPECT_EQ(store_->get_job("eval-int8-0")->state, JobState::kCancelled);
  EXPECT_TRUE(store_->get_job("eval-int8-0")->finished_at.has_value());

  JobRecord orphan = jobs[0];
  orphan.id = "orphan";
  orphan.experiment_id = exp + 999;
  EXPECT_THROW(store_->upsert_job(orphan), DatabaseError);  // foreign key
  orphan.type = "";
  EXPECT_THROW(store_->upsert_job(orphan), InputError);
}

TEST_F(StoreTest, WorkersAndVariants) {
  WorkerRecord w;
  w.id = "w1";
  w.host = "gpu-box";
  w.devices = nlohmann::json::array({{{"name", "NVIDIA H100"}, {"memory", 80}}});
  store_->upsert_worker(w);
  w.host = "gpu-box-2";
  store_->upsert_worker(w);
  auto workers = store_->list_workers();
  ASSERT_EQ(workers.size(), 1u);
  EXPECT_EQ(workers[0].host, "gpu-box-2");
  EXPECT_EQ(workers[0].devices, w.devices);
  EXPECT_TRUE(store_->touch_worker("w1"));
  EXPECT_FALSE(store_->touch_worker("w2"));

  const int64_t exp = experiment_with_variants();
  VariantMemory m;
  m.footprint_bytes = 510342960;
  m.max_batch_size = 512;
  EXPECT_TRUE(store_->set_variant_memory(exp, "fp32", m));
  VariantMemory m2;
  m2.peak_mem_batch1_bytes = 600000000;
  EXPECT_TRUE(store_->set_variant_memory(exp, "fp32", m2));
  EXPECT_TRUE(store_->set_variant_state(exp, "int8", RunState::kFailed, std::string("kernel missing")));
  auto fp32 = store_->get_variant(exp, "fp32");
  ASSERT_TRUE(fp32.has_value());
  EXPECT_EQ(fp32->memory.footprint_bytes, 510342960);
  EXPECT_EQ(fp32->memory.peak_mem_batch1_bytes, 600000000);
  EXPECT_EQ(fp32->memory.max_batch_size, 512);
  EXPECT_FALSE(fp32->memory.runtime_bytes.has_value());
  auto int8 = store_->get_variant(exp, "int8");
  EXPECT_EQ(int8->state, RunState::kFailed);
  EXPECT_EQ(int8->error, "kernel missing");
  // Re-registering the definition keeps state and figures.
  VariantRecord again = *fp32;
  again.options = {{"granularity", "channel"}};
  again.memory = {};
  store_->upsert_variant(again);
  fp32 = store_->get_variant(exp, "fp32");
  EXPECT_EQ(fp32->options, again.options);
  EXPECT_EQ(fp32->memory.footprint_bytes, 510342960);
  EXPECT_EQ(store_->list_variants(exp).size(), 2u);
  EXPECT_FALSE(store_->set_variant_state(exp, "nope", RunState::kDone));
}

// ---- predictions ----------------------------------------------------------------------------------------

TEST_F(StoreTest, RedeliveredShardCountsOnce) {
  const int64_t exp = experiment_with_variants();
  const auto rows = make_rows(0, 100, 0.8, 1);
  WriteResult first = store_->write_predictions(exp, "int8", 0, "eval-int8-0", rows, {2.0, {{"name", "cpu"}}});
  EXPECT_EQ(first.inserted, 100);
  EXPECT_EQ(first.duplicates, 0);
  EXPECT_EQ(first.deliveries, 1);

  WriteResult again = store_->write_predictions(exp, "int8", 0, "eval-int8-0", rows, {2.5, {}});
  EXPECT_EQ(again.inserted, 0);
  EXPECT_EQ(again.duplicates, 100);
  EXPECT_EQ(again.deliveries, 2);

  // A redelivery cut at other boundaries overlaps half of shard 0.
  const auto overlap = make_rows(50, 100, 0.8, 1);
  WriteResult third = store_->write_predictions(exp, "int8", 1, "eval-int8-1", overlap, {1.0, {}});
  EXPECT_EQ(third.inserted, 50);
  EXPECT_EQ(third.duplicates, 50);

  auto metrics = store_->variant_metrics(exp);
  ASSERT_EQ(metrics.size(), 1u);
  EXPECT_EQ(metrics[0].n, 150);

  auto shards = store_->list_eval_shards(exp, "int8");
  ASSERT_EQ(shards.size(), 2u);
  EXPECT_EQ(shards[0].deliveries, 2);
  EXPECT_EQ(shards[0].n, 100);
  EXPECT_DOUBLE_EQ(*shards[0].samples_per_s, 50.0);  // the first delivery's timing is kept
  EXPECT_EQ(shards[0].device, (nlohmann::json{{"name", "cpu"}}));
  EXPECT_EQ(shards[1].deliveries, 1);
}

TEST_F(StoreTest, ConcurrentDeliveriesOfOneShardCountOnce) {
  const int64_t exp = experiment_with_variants();
  const auto rows = make_rows(0, 1900, 0.9, 7);
  std::vector<WriteResult> results(2);
  std::vector<std::string> errors(2);
  std::vector<std::thread> threads;
  for (int i = 0; i < 2; ++i) {
    threads.emplace_back([&, i] {
      try {
        Store s(url_);  // one Store per thread
        results[i] = s.write_predictions(exp, "fp32", 3, "eval-fp32-3", rows, {1.0, {}});
      } catch (const std::exception& e) {
        errors[i] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(errors[0], "");
  EXPECT_EQ(errors[1], "");
  EXPECT_EQ(results[0].inserted + results[1].inserted, 1900);
  EXPECT_EQ(store_->variant_metrics(exp).at(0).n, 1900);
  EXPECT_EQ(store_->list_eval_shards(exp, "fp32").at(0).deliveries, 2);
}

TEST_F(StoreTest, Writes7600PredictionsQuicklyAndReadsThemBack) {
  const int64_t exp = experiment_with_variants();
  auto rows = make_rows(0, 7600, 0.83, 42);
  // Values that text formats get wrong: extremes, subnormals, NaN, infinities, negative zero.
  rows[0].logits = {std::numeric_limits<float>::max(), std::numeric_limits<float>::denorm_min(),
                    std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::infinity()};
  rows[1].logits = {-0.0f, 1e-30f, 0.1f, std::numeric_limits<float>::infinity()};
  std::shuffle(rows.begin(), rows.end(), std::mt19937(3));  // arrival order is not sample order

  const auto t0 = Clock::now();
  WriteResult w = store_->write_predictions(exp, "fp32", 0, "eval-fp32-all", rows, {3.0, {}});
  const double write_s = seconds_since(t0);
  std::printf("[ timing ] write_predictions of 7,600 rows (4 logits each) via COPY: %.3f s (%.0f rows/s)\n", write_s,
              7600 / write_s);
  EXPECT_EQ(w.inserted, 7600);
  EXPECT_LT(write_s, 10.0) << "COPY of one test set should take well under a second on an idle machine";

  const auto t1 = Clock::now();
  Predictions p = store_->read_predictions(exp, "fp32");
  std::printf("[ timing ] read_predictions of 7,600 rows: %.3f s\n", seconds_since(t1));
  ASSERT_EQ(p.size(), 7600u);
  ASSERT_EQ(p.num_logits, 4);
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.sample_idx < b.sample_idx; });
  int64_t correct = 0;
  for (size_t i = 0; i < rows.size(); ++i) {
    ASSERT_EQ(p.sample_idx[i], rows[i].sample_idx);
    ASSERT_EQ(p.label[i], rows[i].label);
    ASSERT_EQ(p.pred[i], rows[i].pred);
    for (int k = 0; k < 4; ++k) {
      const float want = rows[i].logits[k], got = p.logits[i * 4 + k];
      if (std::isnan(want)) {
        ASSERT_TRUE(std::isnan(got)) << "sample " << i << " logit " << k;
      } else {
        ASSERT_EQ(std::memcmp(&want, &got, sizeof want), 0) << "sample " << i << " logit " << k << ": " << want
                                                             << " came back as " << got;
      }
    }
    correct += rows[i].label == rows[i].pred;
  }
  auto m = store_->variant_metrics(exp);
  ASSERT_EQ(m.size(), 1u);
  EXPECT_EQ(m[0].n, 7600);
  EXPECT_EQ(m[0].correct, correct);
  EXPECT_DOUBLE_EQ(m[0].accuracy, static_cast<double>(correct) / 7600);
}

TEST_F(StoreTest, VariantMetricsViewPerVariant) {
  const int64_t exp = experiment_with_variants();
  const int64_t other = experiment_with_variants();
  std::vector<PredictionRow> a, b;
  for (int i = 0; i < 10; ++i) {
    a.push_back({i, static_cast<int16_t>(i % 4), static_cast<int16_t>(i < 7 ? i % 4 : (i + 1) % 4), {}});
    b.push_back({i, static_cast<int16_t>(i % 4), static_cast<int16_t>(i < 4 ? i % 4 : (i + 2) % 4), {}});
  }
  store_->write_predictions(exp, "fp32", 0, "j1", a);
  store_->write_predictions(exp, "int8", 0, "j2", b);
  store_->write_predictions(other, "fp32", 0, "j3", b);
  auto m = store_->variant_metrics(exp);
  ASSERT_EQ(m.size(), 2u);
  EXPECT_EQ(m[0].variant, "fp32");
  EXPECT_EQ(m[0].n, 10);
  EXPECT_EQ(m[0].correct, 7);
  EXPECT_DOUBLE_EQ(m[0].accuracy, 0.7);
  EXPECT_EQ(m[1].variant, "int8");
  EXPECT_EQ(m[1].correct, 4);
  EXPECT_DOUBLE_EQ(m[1].accuracy, 0.4);
  EXPECT_EQ(store_->variant_metrics(other).at(0).correct, 4);
  EXPECT_TRUE(store_->variant_metrics(exp + 1000).empty());

  // Rows stored without logits read back as NaN; an empty variant reads back empty.
  Predictions p = store_->read_predictions(exp, "fp32");
  EXPECT_EQ(p.size(), 10u);
  EXPECT_EQ(p.num_logits, 0);
  EXPECT_EQ(store_->read_predictions(exp, "nope").size(), 0u);
}

TEST_F(StoreTest, BadPredictionInputIsRefusedCleanly) {
  const int64_t exp = experiment_with_variants();
  EXPECT_THROW(store_->write_predictions(exp, "fp32", 0, "j", {{-1, 0, 0, {}}}), InputError);
  EXPECT_THROW(store_->write_predictions(exp, "fp32", 0, "j", {{0, 0, -2, {}}}), InputError);
  EXPECT_THROW(store_->write_predictions(exp, "fp32", -1, "j", {}), InputError);
  EXPECT_THROW(store_->write_predictions(exp, "fp32", 0, "", {}), InputError);
  EXPECT_THROW(store_->write_predictions(exp, "fp32", 0, "j", {}, {std::nan(""), {}}), InputError);
  try {
    store_->write_predictions(exp, "unregistered", 0, "j", {{0, 1, 1, {}}});
    FAIL() << "predictions for an unknown variant were stored";
  } catch (const DatabaseError& e) {
    EXPECT_NE(std::string(e.what()).find("foreign key"), std::string::npos) << e.what();
  }
  // Nothing of the failed transaction remains, and the connection is usable.
  EXPECT_TRUE(store_->list_eval_shards(exp, "unregistered").empty());
  // Mixed logit widths cannot be turned into one matrix.
  store_->write_predictions(exp, "int8", 0, "j", {{0, 1, 1, {1.f, 2.f}}, {1, 1, 1, {1.f, 2.f, 3.f}}});
  EXPECT_THROW(store_->read_predictions(exp, "int8"), FormatError);
}

// ---- bench and training ---------------------------------------------------------------------------------

TEST_F(StoreTest, BenchAndTrainingResultsAreUpserted) {
  const int64_t exp = experiment_with_variants();
  BenchResult b;
  b.experiment_id = exp;
  b.variant = "int8";
  b.kind = BenchKind::kLatency;
  b.batch_size = 1;
  b.seq_len = 128;
  b.p50_ms = 5.0;
  b.p90_ms = 5.5;
  b.p99_ms = 7.25;
  b.warmup_runs = 20;
  b.timed_runs = 200;
  b.device = {{"name", "cpu"}, {"cores", 2}};
  store_->upsert_bench_result(b);
  b.p50_ms = 4.5;  // a re-run replaces the row
  store_->upsert_bench_result(b);
  BenchResult t = b;
  t.kind = BenchKind::kThroughput;
  t.batch_size = 32;
  t.p50_ms = t.p90_ms = t.p99_ms = std::nullopt;
  t.samples_per_s = 1234.5;
  t.peak_mem_bytes = int64_t{3} << 30;
  store_->upsert_bench_result(t);
  auto list = store_->list_bench_results(exp);
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[0].kind, BenchKind::kLatency);
  EXPECT_DOUBLE_EQ(*list[0].p50_ms, 4.5);
  EXPECT_EQ(list[0].device, b.device);
  EXPECT_EQ(list[1].kind, BenchKind::kThroughput);
  EXPECT_FALSE(list[1].p50_ms.has_value());
  EXPECT_EQ(list[1].peak_mem_bytes, int64_t{3} << 30);
  b.batch_size = 0;
  EXPECT_THROW(store_->upsert_bench_result(b), InputError);

  TrainingRun tr;
  tr.experiment_id = exp;
  tr.job_id = "train-1";
  tr.epochs = 10;
  tr.seconds = 72.0;
  tr.val_accuracy = 0.832;
  tr.history = nlohmann::json::array({{{"epoch", 1}, {"loss", 1.2}}});
  const int64_t id1 = store_->insert_training_run(tr);
  tr.seconds = 71.0;
  const int64_t id2 = store_->insert_training_run(tr);  // redelivered job: same row
  EXPECT_EQ(id1, id2);
  tr.job_id.reset();
  store_->insert_training_run(tr);
  auto runs = store_->list_training_runs(exp);
  ASSERT_EQ(runs.size(), 2u);
  EXPECT_DOUBLE_EQ(runs[0].seconds, 71.0);
  EXPECT_EQ(runs[0].history, tr.history);
  EXPECT_FALSE(runs[1].job_id.has_value());
}

TEST_F(StoreTest, LayerErrorsAreReplacedPerVariantWithTheirSqnr) {
  const int64_t exp = experiment_with_variants();
  const nlohmann::json cpu = {{"device", "CPU (2 cores)"}, {"libtorch", "2.11.0"}};
  auto row = [&](const std::string& variant, int layer, const std::string& proj, double signal, double error) {
    LayerError e;
    e.experiment_id = exp;
    e.variant = variant;
    e.layer = layer;
    e.projection = proj;
    e.numel = 768 * 2304;
    e.signal_sq = signal;
    e.error_sq = error;
    e.max_abs_error = error > 0 ? 0.004 : 0.0;
    e.device = cpu;
    e.job_id = "quantize-" + variant;
    return e;
  };
  // Written out of order: read back in (layer, Hugging Face projection) order.
  std::vector<LayerError> int8 = {row("int8", 1, "attn.c_attn", 100, 1), row("int8", 0, "mlp.c_proj", 250, 0.025),
                                  row("int8", 0, "attn.c_attn", 1000, 0.1), row("int8", 0, "mlp.c_fc", 9, 9)};
  store_->write_layer_errors(exp, "int8", int8);
  store_->write_layer_errors(exp, "int8", int8);  // a redelivered quantize job: no duplicate, no error
  store_->write_layer_errors(exp, "fp32", {row("fp32", 0, "attn.c_attn", 1000, 0)});
  auto got = store_->list_layer_errors(exp);
  ASSERT_EQ(got.size(), 5u);
  EXPECT_EQ(got[0].variant, "fp32");
  EXPECT_FALSE(got[0].sqnr_db.has_value());  // stored exactly: no dB figure
  EXPECT_EQ(got[1].projection, "attn.c_attn");
  EXPECT_EQ(got[1].layer, 0);
  EXPECT_DOUBLE_EQ(*got[1].sqnr_db, 40.0);  // 10 log10(1000 / 0.1)
  EXPECT_EQ(got[2].projection, "mlp.c_fc");
  EXPECT_DOUBLE_EQ(*got[2].sqnr_db, 0.0);
  EXPECT_EQ(got[3].projection, "mlp.c_proj");
  EXPECT_DOUBLE_EQ(*got[3].sqnr_db, 40.0);
  EXPECT_EQ(got[4].layer, 1);
  EXPECT_DOUBLE_EQ(*got[4].sqnr_db, 20.0);
  EXPECT_EQ(got[4].device, cpu);
  EXPECT_EQ(got[4].job_id, "quantize-int8");
  EXPECT_EQ(got[4].numel, 768 * 2304);
  // The database computes the same figure from the stored sums (the psql query in docs/results-schema.md).
  pqxx::connection c(url_);
  pqxx::read_transaction tx(c);
  EXPECT_NEAR(tx.exec1("SELECT 10 * log(signal_sq / error_sq) FROM layer_errors WHERE variant = 'int8' AND layer = 1")[0]
                  .as<double>(),
              20.0, 1e-12);
  tx.abort();
  // A re-run with fewer rows leaves only its own rows.
  store_->write_layer_errors(exp, "int8", {int8[0]});
  EXPECT_EQ(store_->list_layer_errors(exp).size(), 2u);

  // Bad rows are refused before anything is written, naming the row.
  auto refused = [&](LayerError bad, const std::string& fragment) {
    try {
      store_->write_layer_errors(exp, "int8", {int8[0], bad});
      ADD_FAILURE() << "accepted: " << fragment;
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
    }
  };
  refused(row("int8", 0, "lm_head", 1, 1), "projection must be one of");
  refused(row("int8", 1, "attn.c_attn", 1, 1), "duplicate (layer, projection)");
  refused(row("int8", -1, "attn.c_attn", 1, 1), "layer must be >= 0");
  refused(row("int8", 2, "attn.c_attn", -1, 1), "row 1 (layer 2 attn.c_attn): sqnr_db: signal and error");
  refused(row("int8", 2, "attn.c_attn", 1, std::nan("")), "must be finite");
  refused(row("int8", 2, "attn.c_attn", 0, 1), "all zeros");
  refused(row("fp32", 2, "attn.c_attn", 1, 1), "belongs to variant 'fp32'");
  LayerError no_numel = row("int8", 2, "attn.c_attn", 1, 1);
  no_numel.numel = 0;
  refused(no_numel, "numel must be > 0");
  EXPECT_EQ(store_->list_layer_errors(exp).size(), 2u);
  // Rows of an unknown variant violate the foreign key: a DatabaseError, nothing written.
  LayerError ghost = row("ghost", 0, "attn.c_attn", 1, 1);
  EXPECT_THROW(store_->write_layer_errors(exp, "ghost", {ghost}), DatabaseError);
}

// ---- robustness -----------------------------------------------------------------------------------------

TEST_F(StoreTest, ReconnectsAfterRestartAndAfterKill9) {
  const int64_t exp = experiment_with_variants();
  store_->write_predictions(exp, "fp32", 0, "j0", make_rows(0, 100, 0.5, 1));

  pg_->restart();  // every session is terminated; the Store's connection is dead now
  const auto t0 = Clock::now();
  WriteResult w = store_->write_predictions(exp, "fp32", 1, "j1", make_rows(100, 100, 0.5, 2));
  EXPECT_EQ(w.inserted, 100);
  std::printf("[ timing ] first write after a restart (reconnect included): %.3f s\n", seconds_since(t0));

  // A crash: the server is gone while the Store works, and comes back 1.5 s later.
  pg_->kill();
  EXPECT_FALSE(pg_->running());
  std::thread restarter([] {
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    pg_->start();
  });
  const auto t1 = Clock::now();
  WriteResult w2;
  EXPECT_NO_THROW(w2 = store_->write_predictions(exp, "fp32", 2, "j2", make_rows(200, 100, 0.5, 3)));
  const double waited = seconds_since(t1);
  restarter.join();
  EXPECT_EQ(w2.inserted, 100);
  EXPECT_GE(waited, 1.0) << "the write cannot have succeeded while the server was down";
  std::printf("[ timing ] write during a kill -9 + restart 1.5 s later: %.3f s\n", waited);
  EXPECT_EQ(store_->variant_metrics(exp).at(0).n, 300);

  // A server that stays away: a DatabaseError within the reconnect timeout, not a hang.
  pg_->stop();
  StoreOptions quick;
  quick.reconnect_timeout = std::chrono::milliseconds(1500);
  const auto t2 = Clock::now();
  EXPECT_THROW(Store(url_, quick), DatabaseError);
  EXPECT_LT(seconds_since(t2), 15.0);
  pg_->start();
}

TEST_F(StoreTest, WrongPasswordIsAClearDatabaseErrorWithoutThePassword) {
  const std::string wrong = "Wr0ngPassw0rd-do-not-print";
  const std::string url = fmt::format("postgresql://qbench:{}@127.0.0.1:{}/qbench", wrong, pg_->port());
  const auto t0 = Clock::now();
  try {
    Store s(url);
    FAIL() << "connected with a wrong password";
  } catch (const DatabaseError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("password authentication failed"), std::string::npos) << msg;
    EXPECT_NE(msg.find("127.0.0.1"), std::string::npos) << msg;
    EXPECT_EQ(msg.find(wrong), std::string::npos) << msg;
    EXPECT_EQ(msg.find(pg_->password()), std::string::npos) << msg;
  }
  EXPECT_LT(seconds_since(t0), 5.0) << "a wrong password must not be retried";
  // The same through the key=value form and a password file.
  const std::string kv = with_password(fmt::format("host=127.0.0.1 port={} user=qbench dbname=qbench", pg_->port()),
                                       wrong);
  try {
    Store s(kv);
    FAIL();
  } catch (const DatabaseError& e) {
    EXPECT_EQ(std::string(e.what()).find(wrong), std::string::npos) << e.what();
  }
}

TEST_F(StoreTest, InjectionAttemptsAreStoredVerbatim) {
  const std::string evil_name = "x'); DROP TABLE experiments; --";
  const std::string evil_variant = "v\"'; DELETE FROM predictions; -- \\ \t{},ü😀";
  const int64_t exp = store_->create_experiment(evil_name, {{"note", "'; DROP TABLE jobs; --"}});
  VariantRecord v;
  v.experiment_id = exp;
  v.name = evil_variant;
  v.method = "nf4'); --";
  v.base_dtype = "fp16";
  store_->upsert_variant(v);
  store_->write_predictions(exp, evil_variant, 0, "job\"'\\", {{0, 1, 1, {0.5f}}, {1, 2, 3, {0.25f}}});
  JobRecord j;
  j.id = "id'; DROP TABLE workers; --";
  j.experiment_id = exp;
  j.type = "evaluate";
  j.depends_on = {"a\",\"b", "{c}", "NULL", ""};
  store_->upsert_job(j);

  EXPECT_EQ(store_->get_experiment(exp)->name, evil_name);
  EXPECT_EQ(store_->get_experiment(exp)->spec["note"], "'; DROP TABLE jobs; --");
  EXPECT_EQ(store_->list_variants(exp).at(0).name, evil_variant);
  EXPECT_EQ(store_->list_variants(exp).at(0).method, "nf4'); --");
  EXPECT_EQ(store_->read_predictions(exp, evil_variant).size(), 2u);
  EXPECT_EQ(store_->variant_metrics(exp).at(0).variant, evil_variant);
  EXPECT_EQ(store_->list_eval_shards(exp, evil_variant).at(0).job_id, "job\"'\\");
  auto got = store_->get_job(j.id);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->depends_on, j.depends_on);
  EXPECT_EQ(store_->list_workers().size(), 0u);  // the table is still there
  EXPECT_EQ(store_->list_experiments().size(), 1u);
}

// ---- connection strings ---------------------------------------------------------------------------------

TEST_F(StoreTest, UrlsAreRedactedAndPasswordFilesApplied) {
  EXPECT_EQ(redact_url("postgresql://qbench:s3cr%40t@db:5432/qbench?sslmode=disable&password=other"),
            "postgresql://qbench:***@db:5432/qbench?sslmode=disable&password=***");
  EXPECT_EQ(redact_url("postgres://db/qbench"), "postgres://db/qbench");
  EXPECT_EQ(redact_url("host=db password='a b\\'c' user=q"), "host=db password=*** user=q");
  EXPECT_EQ(scrub_secrets("failed for s3cr@t at postgresql://u:s3cr%40t@h/d", "postgresql://u:s3cr%40t@h/d"),
            "failed for *** at postgresql://u:***@h/d");

  // QBENCH_DATABASE_PASSWORD_FILE supplies the password to a URL that has none.
  const fs::path file = root_ / "client-password";
  write_file_atomic(file, pg_->password() + "\n");
  ::setenv("QBENCH_DATABASE_PASSWORD_FILE", file.c_str(), 1);
  const std::string url = resolve_database_url(fmt::format("postgresql://qbench@127.0.0.1:{}/qbench", pg_->port()));
  ::unsetenv("QBENCH_DATABASE_PASSWORD_FILE");
  EXPECT_NO_THROW(Store(url).ping());
  EXPECT_EQ(redact_url(url).find(pg_->password()), std::string::npos);

  ::unsetenv("QBENCH_DATABASE_URL");
  EXPECT_THROW(resolve_database_url(std::nullopt), InputError);
  ::setenv("QBENCH_DATABASE_URL", pg_->url().c_str(), 1);
  EXPECT_EQ(resolve_database_url(std::nullopt), pg_->url());
  ::unsetenv("QBENCH_DATABASE_URL");
  // The highest migration file is the schema version.
  int newest = 0;
  for (const auto& f : fs::directory_iterator(find_migrations_dir())) newest = std::max(newest, std::atoi(f.path().filename().c_str()));
  EXPECT_GE(newest, 2);
  EXPECT_EQ(store_->schema_version(), newest);
  EXPECT_EQ(Store(pg_->url()).schema_version(), 0);  // the suite never migrates the default database
}

}  // namespace
}  // namespace evalsvc::scheduler
