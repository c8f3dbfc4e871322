// The job system running the model core end to end: real redis-server and postgres on loopback, the
// scheduler in this process, worker processes of the real `qbench` binary. A small tiny-preset experiment
// (so CI stays quick) must finish with every job done and with exactly the predictions the model core gives
// when run directly in this process.
#include <gtest/gtest.h>
#include <signal.h>
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <thread>

#include "evalsvc/common/experiment_spec.h"
#include "evalsvc/common/paths.h"
#include "evalsvc/scheduler/local_postgres.h"
#include "evalsvc/scheduler/local_servers.h"
#include "evalsvc/scheduler/scheduler.h"
#include "evalsvc/worker/dataset.h"
#include "evalsvc/worker/evaluate.h"
#include "evalsvc/worker/preset.h"
#include "evalsvc/worker/tokenizer.h"

namespace evalsvc {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

constexpr int64_t kTestRows = 300;

ExperimentSpec small_spec() {
  ExperimentSpec spec = ExperimentSpec::from_preset("tiny");
  spec.apply_overrides({"name=e2e", "train.epochs=1", "data.train_limit=800", "data.test_limit=300",
                        R"(variants=["fp32","int8-sym","nf4"])", "eval.shards=3", "bench.batch_sizes=[1,4]",
                        "bench.warmup=1", "bench.iters=3", "max_attempts=3"});
  return spec;
}

class Pipeline : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::path(EVALSVC_TEST_BINARY_DIR) / "e2e" / ::testing::UnitTest::GetInstance()->current_test_info()->name();
    fs::remove_all(root_);
    fs::create_directories(root_);
    scheduler::LocalRedis::Options ro;
    ro.dir = root_ / "redis";
    ro.password = "e2e-redis-secret";
    redis_ = std::make_unique<scheduler::LocalRedis>(ro);
    scheduler::LocalPostgresOptions po;
    po.root = root_ / "postgres";
    po.durable = false;
    pg_ = std::make_unique<scheduler::LocalPostgres>(po);
    scheduler::migrate(pg_->url(), scheduler::find_migrations_dir());
    sched_thread_ = std::thread([this] {
      scheduler::Store store(pg_->url());
      scheduler::RedisClient rc(redis_->url());
      scheduler::Queue queue(rc);
      scheduler::SchedulerOptions so;
      so.stall_check = 300ms;
      so.backoff_base = 200ms;
      scheduler::Scheduler s(store, queue, so);
      while (!stop_) s.step();
    });
  }
  void TearDown() override {
    for (pid_t p : workers_) ::kill(p, SIGKILL);
    for (pid_t p : workers_) ::waitpid(p, nullptr, 0);
    stop_ = true;
    if (sched_thread_.joinable()) sched_thread_.join();
  }

  pid_t start_worker() {
    pid_t pid = ::fork();
    if (pid == 0) {
      ::setenv("QBENCH_REDIS_URL", redis_->url().c_str(), 1);
      ::setenv("QBENCH_DATABASE_URL", pg_->url().c_str(), 1);
      const std::string log = (root_ / fmt::format("worker-{}.log", ::getpid())).string();
      int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      const std::string data = data_dir().string(), art = (root_ / "artifacts").string();
      ::execl(EVALSVC_QBENCH_BINARY, "qbench", "worker", "--device", "cpu", "--threads", "1", "--data", data.c_str(),
              "--artifacts", art.c_str(), "--lease-ms", "3000", nullptr);
      ::_exit(127);
    }
    workers_.push_back(pid);
    return pid;
  }

  /// Waits until the experiment ends; returns its final state.
  scheduler::RunState wait_for(scheduler::Store& store, int64_t id, std::chrono::seconds limit) {
    const auto t0 = std::chrono::steady_clock::now();
    while (std::chrono::steady_clock::now() - t0 < limit) {
      auto e = store.get_experiment(id);
      if (e && scheduler::is_terminal(e->state)) return e->state;
      std::this_thread::sleep_for(200ms);
    }
    return scheduler::RunState::kRunning;
  }

  /// The model core run directly, as `qbench train` does: same spec, same seed, one thread.
  std::map<std::string, worker::Predictions> direct_predictions(const ExperimentSpec& spec) {
    torch::set_num_threads(1);
    auto rc = worker::run_config(spec);
    auto tok = worker::Tokenizer::load(data_dir() / "gpt2");
    auto cache = root_ / "direct-cache";
    auto train = worker::load_or_tokenize(data_dir() / "ag_news" / "train_first10429.csv", tok, rc.max_len, cache,
                                          rc.train_limit);
    auto test = worker::load_or_tokenize(data_dir() / "ag_news" / "test.csv", tok, rc.max_len, cache, kTestRows);
    rc.train.progress = false;
    worker::GPT2Classifier model(rc.model, rc.train.seed);
    worker::train(model, train, {}, rc.train, torch::Device(torch::kCPU));
    auto state = model->hf_state_dict();
    std::map<std::string, worker::Predictions> out;
    for (const auto& v : spec.variants) {
      worker::GPT2Classifier m(rc.model, 0);
      m->load_hf_state_dict(state, true);
      kernels::QuantOptions o;
      o.double_quant = v.options.double_quant;
      o.outlier_threshold = v.options.outlier_threshold;
      o.block_size = v.options.block_size;
      const auto base = v.base_dtype == "fp32" ? torch::kFloat32 : v.base_dtype == "fp16" ? torch::kFloat16 : torch::kBFloat16;
      m->quantize(kernels::parse_method(v.method), base, o);
      out[v.name] = worker::predict(m, test, spec.eval.batch_size, torch::Device(torch::kCPU));
    }
    return out;
  }

  void expect_same_predictions(scheduler::Store& store, int64_t id, const ExperimentSpec& spec) {
    auto direct = direct_predictions(spec);
    for (const auto& v : spec.variants) {
      auto p = store.read_predictions(id, v.name);
      ASSERT_EQ(static_cast<int64_t>(p.size()), kTestRows) << v.name;
      // Shards batch rows differently from one whole-set pass, so logits may differ in the last bits (BLAS
      // blocking); predictions must agree wherever the top two logits are not within that noise.
      const auto& d = direct[v.name];
      ASSERT_EQ(p.num_logits, d.num_labels);
      int differ = 0;
      double max_diff = 0;
      for (size_t i = 0; i < p.size(); ++i) {
        EXPECT_EQ(p.sample_idx[i], static_cast<int32_t>(i));
        std::vector<float> row(d.logits.begin() + static_cast<std::ptrdiff_t>(i * 4), d.logits.begin() + static_cast<std::ptrdiff_t>(i * 4 + 4));
        for (int c = 0; c < 4; ++c) max_diff = std::max(max_diff, double(std::abs(row[c] - p.logits[i * 4 + c])));
        std::sort(row.begin(), row.end());
        const bool clear = row[3] - row[2] > 1e-3f;
        differ += clear && p.pred[i] != d.preds[i];
      }
      EXPECT_EQ(differ, 0) << v.name << ": predictions differ from the model core run directly";
      EXPECT_LE(max_diff, 1e-3) << v.name;
    }
  }

  fs::path root_;
  std::unique_ptr<scheduler::LocalRedis> redis_;
  std::unique_ptr<scheduler::LocalPostgres> pg_;
  std::thread sched_thread_;
  std::atomic<bool> stop_{false};
  std::vector<pid_t> workers_;
};

TEST_F(Pipeline, TinyPresetThroughSchedulerAndTwoWorkers) {
  scheduler::Store store(pg_->url());
  scheduler::RedisClient rc(redis_->url());
  scheduler::Queue queue(rc);
  const auto spec = small_spec();
  const int64_t id = scheduler::submit_experiment(store, queue, spec, kTestRows);
  start_worker();
  start_worker();
  ASSERT_EQ(wait_for(store, id, 600s), scheduler::RunState::kDone) << "see the worker logs in " << root_.string();
  for (const auto& j : store.list_jobs(id)) EXPECT_EQ(j.state, scheduler::JobState::kDone) << j.id << ": " << j.error.value_or("");
  for (const auto& v : store.list_variants(id)) {
    EXPECT_EQ(v.state, scheduler::RunState::kDone) << v.name;
    EXPECT_TRUE(v.memory.footprint_bytes.has_value()) << v.name;
  }
  EXPECT_FALSE(store.list_bench_results(id).empty());
  EXPECT_TRUE(fs::exists(root_ / "artifacts" / fmt::format("exp-{}", id) / "report" / "report.txt"));
  expect_same_predictions(store, id, spec);
}

TEST_F(Pipeline, WorkerKilledDuringEvaluationLosesNothing) {
  scheduler::Store store(pg_->url());
  scheduler::RedisClient rc(redis_->url());
  scheduler::Queue queue(rc);
  const auto spec = small_spec();
  const int64_t id = scheduler::submit_experiment(store, queue, spec, kTestRows);
  start_worker();
  start_worker();
  // Wait for an evaluation shard to run, then kill -9 the worker running it and start a fresh one.
  bool killed = false;
  for (int i = 0; i < 3000 && !killed; ++i) {
    for (const auto& j : store.list_jobs(id, scheduler::JobState::kRunning)) {
      if (j.type != "eval" || !j.worker_id) continue;
      // Worker ids are <host>-<pid>-<random>: find the process.
      for (pid_t p : workers_) {
        if (j.worker_id->find(fmt::format("-{}-", p)) != std::string::npos) {
          ::kill(p, SIGKILL);
          ::waitpid(p, nullptr, 0);
          killed = true;
          break;
        }
      }
      if (killed) break;
    }
    std::this_thread::sleep_for(100ms);
  }
  ASSERT_TRUE(killed) << "no evaluation job was seen running";
  start_worker();
  ASSERT_EQ(wait_for(store, id, 600s), scheduler::RunState::kDone);
  expect_same_predictions(store, id, spec);
}

}  // namespace
}  // namespace evalsvc
