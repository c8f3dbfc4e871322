#pragma once
// The fixture of the end-to-end tests: real redis-server and postgres on loopback, the scheduler (in this
// process, or as a `qbench scheduler` child process that a test can kill -9), worker processes of the real
// `qbench` binary, and the model core run directly in this process as the yardstick for the results.
// A small tiny-preset experiment keeps each test within seconds on 2 CPU cores.
#include <gtest/gtest.h>
#include <signal.h>
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <set>
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
namespace e2e {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

constexpr int64_t kTestRows = 300;

inline ExperimentSpec small_spec() {
  ExperimentSpec spec = ExperimentSpec::from_preset("tiny");
  spec.apply_overrides({"name=e2e", "train.epochs=1", "data.train_limit=800", "data.test_limit=300",
                        R"(variants=["fp32","int8-sym","nf4"])", "eval.shards=3", "bench.batch_sizes=[1,4]",
                        "bench.warmup=1", "bench.iters=3", "max_attempts=3"});
  return spec;
}

class Pipeline : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    root_ = fs::path(EVALSVC_TEST_BINARY_DIR) / "e2e" / fmt::format("{}.{}", info->test_suite_name(), info->name());
    evalsvc::remove_tree(root_);
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
    if (!scheduler_as_process()) start_scheduler_thread();
    else start_scheduler_process();
  }
  void TearDown() override {
    for (pid_t p : workers_) ::kill(p, SIGKILL);
    for (pid_t p : workers_) ::waitpid(p, nullptr, 0);
    kill_scheduler_process();
    stop_ = true;
    if (sched_thread_.joinable()) sched_thread_.join();
  }

  /// Tests that kill the scheduler override this: it then runs as a `qbench scheduler` process.
  virtual bool scheduler_as_process() const { return false; }

  void start_scheduler_thread() {
    sched_thread_ = std::thread([this] {
      scheduler::Store store(pg_->url());
      scheduler::RedisClient rc(redis_->url());
      scheduler::Queue queue(rc);
      scheduler::SchedulerOptions so;
      so.stall_check = 300ms;
      so.backoff_base = 200ms;
      scheduler::Scheduler s(store, queue, so);
      while (!stop_) {
        try {
          s.step();
        } catch (const Error& e) {
          // A server restarting under the test: carry on from durable state, as Scheduler::run does.
          std::this_thread::sleep_for(100ms);
        }
      }
    });
  }

  /// `qbench scheduler` as a child process (its log in the test folder), so a test can kill -9 it.
  void start_scheduler_process() {
    scheduler_pid_ = spawn({"scheduler"}, root_ / "scheduler.log", {});
  }
  void kill_scheduler_process() {
    if (scheduler_pid_ <= 0) return;
    ::kill(scheduler_pid_, SIGKILL);
    ::waitpid(scheduler_pid_, nullptr, 0);
    scheduler_pid_ = -1;
  }

  /// Forks and execs the qbench binary with the servers' URLs in its environment, output to `log`.
  pid_t spawn(const std::vector<std::string>& args, const fs::path& log,
              const std::vector<std::pair<std::string, std::string>>& env) {
    pid_t pid = ::fork();
    if (pid == 0) {
      ::setenv("QBENCH_REDIS_URL", redis_->url().c_str(), 1);
      ::setenv("QBENCH_DATABASE_URL", pg_->url().c_str(), 1);
      for (const auto& [k, v] : env) ::setenv(k.c_str(), v.c_str(), 1);
      int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      std::vector<std::string> argv_s = {"qbench"};
      argv_s.insert(argv_s.end(), args.begin(), args.end());
      std::vector<char*> argv;
      for (auto& a : argv_s) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(EVALSVC_QBENCH_BINARY, argv.data());
      ::_exit(127);
    }
    return pid;
  }

  pid_t start_worker(const std::vector<std::pair<std::string, std::string>>& env = {}) {
    const std::string data = data_dir().string(), art = (root_ / "artifacts").string();
    const pid_t pid = spawn({"worker", "--device", "cpu", "--threads", "1", "--data", data, "--artifacts", art,
                             "--lease-ms", "3000"},
                            root_ / fmt::format("worker-{}.log", workers_.size()), env);
    workers_.push_back(pid);
    return pid;
  }

  /// The worker process (of those this fixture started) behind a worker id (<host>-<pid>-<random>).
  std::optional<pid_t> worker_pid(const std::string& worker_id) const {
    for (pid_t p : workers_) {
      if (worker_id.find(fmt::format("-{}-", p)) != std::string::npos) return p;
    }
    return std::nullopt;
  }

  /// Waits (up to `limit`) until a job of `type` is running; returns it.
  std::optional<scheduler::JobRecord> wait_running(scheduler::Store& store, int64_t id, const std::string& type,
                                                   std::chrono::seconds limit = 300s) {
    const auto t0 = std::chrono::steady_clock::now();
    while (std::chrono::steady_clock::now() - t0 < limit) {
      for (const auto& j : store.list_jobs(id, scheduler::JobState::kRunning)) {
        if (j.type == type && j.worker_id) return j;
      }
      std::this_thread::sleep_for(50ms);
    }
    return std::nullopt;
  }

  /// kill -9 of the worker running `job` (and reaping it); false when the job's worker is not ours.
  bool kill_worker_of(const scheduler::JobRecord& job) {
    auto p = worker_pid(job.worker_id.value_or(""));
    if (!p) return false;
    ::kill(*p, SIGKILL);
    ::waitpid(*p, nullptr, 0);
    workers_.erase(std::find(workers_.begin(), workers_.end(), *p));
    return true;
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
      m->quantize(kernels::parse_method(v.method), worker::dtype_of(v.base_dtype), worker::quant_options(v));
      out[v.name] = worker::predict(m, test, spec.eval.batch_size, torch::Device(torch::kCPU));
    }
    return out;
  }

  /// Every variant's stored predictions (except `skip`'s) equal the model core's run directly.
  void expect_same_predictions(scheduler::Store& store, int64_t id, const ExperimentSpec& spec,
                               const std::set<std::string>& skip = {}) {
    auto direct = direct_predictions(spec);
    for (const auto& v : spec.variants) {
      if (skip.count(v.name)) continue;
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
  pid_t scheduler_pid_ = -1;
};

}  // namespace e2e
}  // namespace evalsvc
