// The worker loop against a real redis-server: in-process runtimes on threads, and forked worker
// processes that are killed (-9) or asked to stop (SIGTERM) in the middle of a job.
#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <thread>

#include "evalsvc/common/paths.h"
#include "evalsvc/scheduler/local_servers.h"
#include "evalsvc/scheduler/worker_runtime.h"

namespace evalsvc::scheduler {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

fs::path make_temp_dir() {
  std::string tmpl = (fs::temp_directory_path() / "qbench-worker-XXXXXX").string();
  char* p = ::mkdtemp(tmpl.data());
  if (p == nullptr) throw IoError("mkdtemp failed");
  return p;
}

JobMessage job(const std::string& id, const std::string& type, json params = json::object(), int max_attempts = 3) {
  JobMessage m;
  m.id = id;
  m.experiment_id = 1;
  m.type = type;
  m.params = std::move(params);
  m.max_attempts = max_attempts;
  return m;
}

// Sleeps params.sleep_ms in small steps, stopping early when the job is cancelled.
json sleep_executor(const JobMessage& m, JobContext& ctx) {
  const int total = m.params.value("sleep_ms", 0);
  const auto until = Clock::now() + milliseconds(total);
  while (Clock::now() < until && !ctx.cancelled()) std::this_thread::sleep_for(milliseconds(5));
  return json{{"slept_ms", total}, {"cancelled", ctx.cancelled()}};
}

// Polls `cond` every 10 ms for up to `limit`; keeps every wait in these tests bounded.
template <typename Cond>
bool wait_until(Cond cond, milliseconds limit) {
  const auto until = Clock::now() + limit;
  while (Clock::now() < until) {
    if (cond()) return true;
    std::this_thread::sleep_for(milliseconds(10));
  }
  return cond();
}

class WorkerRuntimeServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = make_temp_dir();
    server_ = std::make_unique<LocalRedis>(LocalRedis::Options{.dir = dir_});
    redis_ = std::make_unique<RedisClient>(server_->url());
    queue_ = std::make_unique<Queue>(*redis_);
  }
  void TearDown() override {
    queue_.reset();
    redis_.reset();
    server_.reset();
    std::error_code ec;
    evalsvc::remove_tree(dir_, ec);
  }
  WorkerOptions options(const std::string& id) {
    WorkerOptions o;
    o.redis_url = server_->url();
    o.worker_id = id;
    o.queues = {"cpu"};
    o.info = json{{"devices", {"cpu"}}, {"version", "test"}};
    o.lease = milliseconds(600);
    o.heartbeat_ttl = milliseconds(1500);
    o.claim_wait = milliseconds(100);
    o.shutdown_grace = milliseconds(5000);
    o.stalled_check_interval = milliseconds(100);
    o.exit_process_on_grace_timeout = false;
    return o;
  }
  std::string state(const std::string& id) { return queue_->job_fields(id).value_or(std::map<std::string, std::string>{})["state"]; }
  std::vector<Event> events(const std::string& id) {
    std::vector<Event> out;
    for (auto& e : queue_->read_events("0", 10000, milliseconds(0))) {
      if (e.job_id == id) out.push_back(e);
    }
    return out;
  }
  // Forks a worker process serving "cpu" with the sleep executor; the child never returns.
  pid_t fork_worker(const std::string& id, milliseconds grace, bool exit_on_grace) {
    WorkerOptions o = options(id);
    o.shutdown_grace = grace;
    o.exit_process_on_grace_timeout = exit_on_grace;
    o.stalled_check_interval = milliseconds(0);
    pid_t pid = ::fork();
    if (pid == 0) {
      int code = 0;
      try {
        WorkerRuntime::install_signal_handlers();
        ExecutorRegistry reg;
        reg["sleep"] = sleep_executor;
        WorkerRuntime rt(o, reg);
        WorkerStats s = rt.run();
        code = s.completed > 0 ? 0 : 10;
      } catch (...) {
        code = 20;
      }
      ::_exit(code);
    }
    return pid;
  }
  int wait_exit(pid_t pid, milliseconds limit) {
    int status = 0;
    if (!wait_until([&] { return ::waitpid(pid, &status, WNOHANG) == pid; }, limit)) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      return -1;
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

  fs::path dir_;
  std::unique_ptr<LocalRedis> server_;
  std::unique_ptr<RedisClient> redis_;
  std::unique_ptr<Queue> queue_;
};

TEST_F(WorkerRuntimeServerTest, RunsNoopJobsRegistersAndUnregisters) {
  for (int i = 0; i < 20; ++i) queue_->enqueue(job("n" + std::to_string(i), "noop"));
  ExecutorRegistry reg;
  register_noop_executor(reg);
  WorkerOptions o = options("rt-1");
  o.max_jobs = 20;
  WorkerRuntime rt(o, reg);
  EXPECT_EQ(rt.registration()["devices"], json({"cpu"}));
  EXPECT_EQ(rt.registration()["id"], "rt-1");
  std::optional<WorkerStats> stats;
  std::thread t([&] { stats = rt.run(); });
  t.join();
  ASSERT_TRUE(stats);
  EXPECT_EQ(stats->completed, 20u);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(state("n" + std::to_string(i)), "completed");
  EXPECT_EQ(json::parse(queue_->job_fields("n3")->at("result")), json({{"ok", true}}));
  // Unregistered on exit.
  EXPECT_TRUE(redis_->command({"HGET", "qbench:workers", "rt-1"}).is_nil());
  EXPECT_EQ(redis_->command({"EXISTS", "qbench:worker:rt-1"}).integer(), 0);
}

TEST_F(WorkerRuntimeServerTest, HeartbeatRegistrationWhileRunningAndStopRequest) {
  ExecutorRegistry reg;
  register_noop_executor(reg);
  WorkerRuntime rt(options("rt-hb"), reg);
  std::thread t([&] { rt.run(); });
  ASSERT_TRUE(wait_until([&] { return !redis_->command({"HGET", "qbench:workers", "rt-hb"}).is_nil(); }, milliseconds(3000)));
  json reg_json = json::parse(redis_->command({"HGET", "qbench:workers", "rt-hb"}).str());
  EXPECT_EQ(reg_json["version"], "test");
  EXPECT_EQ(reg_json["queues"], json({"cpu"}));
  long long ttl = redis_->command({"PTTL", "qbench:worker:rt-hb"}).integer();
  EXPECT_GT(ttl, 0);
  EXPECT_LE(ttl, 1500);
  const auto t0 = Clock::now();
  rt.request_stop();
  t.join();
  EXPECT_LT(Clock::now() - t0, milliseconds(1500));  // an idle worker notices within one claim wait
}

TEST_F(WorkerRuntimeServerTest, FailuresUnknownTypesAndProgress) {
  ExecutorRegistry reg;
  reg["transient"] = [](const JobMessage&, JobContext&) -> json { throw IoError("disk full on /scratch"); };
  reg["broken"] = [](const JobMessage&, JobContext&) -> json { throw InputError("bad spec: batch size 0"); };
  reg["progress"] = [](const JobMessage&, JobContext& ctx) {
    ctx.report_progress(0.5, "half way");
    std::this_thread::sleep_for(milliseconds(500));  // longer than a renew interval (200 ms)
    return json{{"done", true}};
  };
  queue_->enqueue(job("j-transient", "transient"));
  queue_->enqueue(job("j-broken", "broken"));
  queue_->enqueue(job("j-unknown", "no-such-type"));
  queue_->enqueue(job("j-progress", "progress"));
  WorkerOptions o = options("rt-f");
  o.max_jobs = 4;
  WorkerRuntime rt(o, reg);
  WorkerStats s = rt.run();
  EXPECT_EQ(s.completed, 1u);
  EXPECT_EQ(s.failed, 3u);
  auto tr = events("j-transient");
  ASSERT_EQ(tr.size(), 1u);
  EXPECT_EQ(tr[0].type, "failed");
  EXPECT_EQ(tr[0].field("retryable"), "1");
  EXPECT_NE(tr[0].field("error")->find("disk full"), std::string::npos);
  auto br = events("j-broken");
  ASSERT_EQ(br.size(), 1u);
  EXPECT_EQ(br[0].field("retryable"), "0");
  auto un = events("j-unknown");
  ASSERT_EQ(un.size(), 1u);
  EXPECT_NE(un[0].field("error")->find("no executor for job type 'no-such-type'"), std::string::npos);
  auto f = queue_->job_fields("j-progress");
  EXPECT_EQ(f->at("state"), "completed");
  EXPECT_EQ(json::parse(f->at("progress"))["message"], "half way");
}

TEST_F(WorkerRuntimeServerTest, LeaseIsRenewedWhileALongJobRuns) {
  ExecutorRegistry reg;
  reg["sleep"] = sleep_executor;
  queue_->enqueue(job("long", "sleep", json{{"sleep_ms", 2000}}));  // > 3 leases of 600 ms
  WorkerOptions o = options("rt-long");
  o.max_jobs = 1;
  WorkerRuntime rt(o, reg);
  // A second worker keeps checking for stalled leases the whole time: it must find none.
  WorkerOptions o2 = options("rt-watch");
  // It serves another queue: on "cpu" it could claim the long job first (and fail it: it has no "sleep"
  // executor), leaving rt-long waiting forever - seen once in a CI-like run under load.
  o2.queues = {"watch-only"};
  ExecutorRegistry reg2;
  register_noop_executor(reg2);
  WorkerRuntime watcher(o2, reg2);
  std::thread tw([&] { watcher.run(); });
  WorkerStats s = rt.run();
  watcher.request_stop();
  tw.join();
  EXPECT_EQ(s.completed, 1u);
  EXPECT_EQ(s.rejected, 0u);
  auto ev = events("long");
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].type, "completed");
  EXPECT_EQ(ev[0].attempt, 1);
  EXPECT_EQ(json::parse(*ev[0].field("result"))["cancelled"], false);
}

TEST_F(WorkerRuntimeServerTest, CancellingAnActiveJobReachesTheExecutor) {
  ExecutorRegistry reg;
  reg["sleep"] = sleep_executor;
  queue_->enqueue(job("victim", "sleep", json{{"sleep_ms", 20000}}));
  WorkerOptions o = options("rt-c");
  o.max_jobs = 1;
  o.renew_interval = milliseconds(100);
  WorkerRuntime rt(o, reg);
  std::optional<WorkerStats> s;
  const auto t0 = Clock::now();
  std::thread t([&] { s = rt.run(); });
  ASSERT_TRUE(wait_until([&] { return state("victim") == "active"; }, milliseconds(3000)));
  EXPECT_TRUE(queue_->cancel("victim"));
  t.join();
  EXPECT_LT(Clock::now() - t0, milliseconds(5000));
  EXPECT_EQ(s->rejected, 1u);  // its finish was refused: the job stays cancelled
  EXPECT_EQ(state("victim"), "cancelled");
}

TEST_F(WorkerRuntimeServerTest, KilledWorkerJobIsRedeliveredAndCompletedOnce) {
  queue_->enqueue(job("k9", "sleep", json{{"sleep_ms", 60000}}, 3));
  pid_t child = fork_worker("doomed", milliseconds(60000), false);
  ASSERT_GT(child, 0);
  ASSERT_TRUE(wait_until([&] { return state("k9") == "active"; }, milliseconds(5000)));
  EXPECT_EQ(queue_->job_fields("k9")->at("worker"), "doomed");
  ::kill(child, SIGKILL);
  EXPECT_EQ(wait_exit(child, milliseconds(5000)), 128 + SIGKILL);

  // A healthy worker: its keeper requeues the expired lease, then it claims the job as attempt 2.
  ExecutorRegistry reg;
  reg["sleep"] = [](const JobMessage& m, JobContext&) { return json{{"attempt", m.attempt}}; };
  WorkerOptions o = options("rescuer");
  o.max_jobs = 1;
  WorkerRuntime rt(o, reg);
  const auto t0 = Clock::now();
  WorkerStats s = rt.run();
  EXPECT_LT(Clock::now() - t0, milliseconds(5000));
  EXPECT_EQ(s.completed, 1u);
  auto ev = events("k9");
  int completed = 0, requeued = 0;
  for (auto& e : ev) {
    completed += e.type == "completed";
    requeued += e.type == "requeued";
  }
  EXPECT_EQ(completed, 1);
  EXPECT_EQ(requeued, 1);
  EXPECT_EQ(ev.back().type, "completed");
  EXPECT_EQ(ev.back().attempt, 2);
  EXPECT_EQ(ev.back().worker, "rescuer");
  // The dead worker's heartbeat key runs out by itself.
  EXPECT_TRUE(wait_until([&] { return redis_->command({"EXISTS", "qbench:worker:doomed"}).integer() == 0; },
                         milliseconds(3000)));
}

TEST_F(WorkerRuntimeServerTest, SigtermFinishesTheCurrentJobThenExits) {
  queue_->enqueue(job("graceful", "sleep", json{{"sleep_ms", 800}}));
  queue_->enqueue(job("next", "sleep", json{{"sleep_ms", 0}}));
  pid_t child = fork_worker("polite", milliseconds(10000), true);
  ASSERT_GT(child, 0);
  ASSERT_TRUE(wait_until([&] { return state("graceful") == "active"; }, milliseconds(5000)));
  ::kill(child, SIGTERM);
  EXPECT_EQ(wait_exit(child, milliseconds(5000)), 0);
  EXPECT_EQ(state("graceful"), "completed");
  EXPECT_EQ(state("next"), "waiting");  // no new job after the stop request
  EXPECT_TRUE(redis_->command({"HGET", "qbench:workers", "polite"}).is_nil());
}

TEST_F(WorkerRuntimeServerTest, SigtermPastTheGracePeriodHandsTheJobBack) {
  queue_->enqueue(job("stubborn", "sleep", json{{"sleep_ms", 60000}}));
  // sleep_executor honours cancellation, so to model an executor that cannot be interrupted the child
  // exits from the keeper (exit_process_on_grace_timeout) as a real worker would.
  pid_t child = fork_worker("impatient", milliseconds(300), true);
  ASSERT_GT(child, 0);
  ASSERT_TRUE(wait_until([&] { return state("stubborn") == "active"; }, milliseconds(5000)));
  ::kill(child, SIGTERM);
  EXPECT_EQ(wait_exit(child, milliseconds(5000)), kExitHandedBack);
  auto f = queue_->job_fields("stubborn");
  EXPECT_EQ(f->at("state"), "waiting");
  EXPECT_EQ(f->at("attempt"), "0");  // a hand-back does not use up an attempt
  auto ev = events("stubborn");
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].type, "requeued");
  EXPECT_EQ(ev[0].field("reason"), "released");
  EXPECT_EQ(queue_->stats().waiting["cpu"], 1);
}

}  // namespace
}  // namespace evalsvc::scheduler
