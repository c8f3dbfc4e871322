// Failures the job system must ride out (issue 3): a worker killed during training, Redis restarted and
// crashed, PostgreSQL restarted and crashed, the scheduler killed -9 and started again, and a poison job.
// Each time the experiment must complete with every prediction stored exactly once and equal to the model
// core run directly (or, for the poison job, with exactly its dependants stopped and the rest complete).
#include <cstdio>

#include "pipeline_fixture.h"

namespace evalsvc::e2e {
namespace {

class Recovery : public Pipeline {
 protected:
  /// Submits the small experiment and starts two workers.
  int64_t submit_and_start(scheduler::Store& store, scheduler::Queue& queue, const ExperimentSpec& spec,
                           const std::vector<std::pair<std::string, std::string>>& worker_env = {}) {
    const int64_t id = scheduler::submit_experiment(store, queue, spec, kTestRows);
    start_worker(worker_env);
    start_worker(worker_env);
    return id;
  }

  /// The experiment ended done, every job is done, and the predictions equal the direct run.
  void expect_complete_and_equal(scheduler::Store& store, int64_t id, const ExperimentSpec& spec) {
    ASSERT_EQ(wait_for(store, id, 600s), scheduler::RunState::kDone) << "see the logs in " << root_.string();
    for (const auto& j : store.list_jobs(id)) {
      EXPECT_EQ(j.state, scheduler::JobState::kDone) << j.id << ": " << j.error.value_or("");
    }
    expect_same_predictions(store, id, spec);
  }
};

class SchedulerProcess : public Recovery {
 protected:
  bool scheduler_as_process() const override { return true; }
};

TEST_F(Recovery, WorkerKilledDuringTrainingLosesNothing) {
  scheduler::Store store(pg_->url());
  scheduler::RedisClient rc(redis_->url());
  scheduler::Queue queue(rc);
  const auto spec = small_spec();
  const int64_t id = submit_and_start(store, queue, spec);
  auto train = wait_running(store, id, "train");
  ASSERT_TRUE(train) << "the train job was never seen running";
  std::this_thread::sleep_for(500ms);  // into the training loop, not just its start
  ASSERT_TRUE(kill_worker_of(*train));
  start_worker();
  expect_complete_and_equal(store, id, spec);
  auto j = store.get_job(train->id);
  ASSERT_TRUE(j);
  EXPECT_GE(j->attempt, 2) << "the killed training attempt must have been redelivered";
}

TEST_F(Recovery, RedisRestartedMidExperiment) {
  scheduler::Store store(pg_->url());
  scheduler::RedisClient rc(redis_->url());
  scheduler::Queue queue(rc);
  const auto spec = small_spec();
  const int64_t id = submit_and_start(store, queue, spec);
  ASSERT_TRUE(wait_running(store, id, "eval"));
  redis_->restart();  // SIGTERM: Redis writes its AOF and exits; then started on the same port and data
  expect_complete_and_equal(store, id, spec);
}

TEST_F(Recovery, RedisCrashedMidExperiment) {
  scheduler::Store store(pg_->url());
  scheduler::RedisClient rc(redis_->url());
  scheduler::Queue queue(rc);
  const auto spec = small_spec();
  const int64_t id = submit_and_start(store, queue, spec);
  ASSERT_TRUE(wait_running(store, id, "eval"));
  // kill -9: with appendfsync everysec up to a second of queue writes may be lost; the scheduler's reconcile
  // from PostgreSQL queues again whatever the queue forgot.
  redis_->kill();
  std::this_thread::sleep_for(500ms);
  redis_->start();
  expect_complete_and_equal(store, id, spec);
}

TEST_F(Recovery, PostgresRestartedMidExperiment) {
  scheduler::Store store(pg_->url());
  scheduler::RedisClient rc(redis_->url());
  scheduler::Queue queue(rc);
  const auto spec = small_spec();
  const int64_t id = submit_and_start(store, queue, spec);
  ASSERT_TRUE(wait_running(store, id, "eval"));
  pg_->restart();
  expect_complete_and_equal(store, id, spec);
}

TEST_F(Recovery, PostgresCrashedMidExperiment) {
  scheduler::Store store(pg_->url());
  scheduler::RedisClient rc(redis_->url());
  scheduler::Queue queue(rc);
  const auto spec = small_spec();
  const int64_t id = submit_and_start(store, queue, spec);
  ASSERT_TRUE(wait_running(store, id, "eval"));
  pg_->kill();  // kill -9 of the postmaster; start() runs crash recovery
  std::this_thread::sleep_for(500ms);
  pg_->start();
  expect_complete_and_equal(store, id, spec);
}

TEST_F(SchedulerProcess, SchedulerKilledAndRestartedTwice) {
  scheduler::Store store(pg_->url());
  scheduler::RedisClient rc(redis_->url());
  scheduler::Queue queue(rc);
  const auto spec = small_spec();
  const int64_t id = submit_and_start(store, queue, spec);
  // Once while training runs, once during evaluation; each time it is started again from nothing but the
  // durable state (PostgreSQL's job table and the last event id it recorded in Redis).
  for (const char* type : {"train", "eval"}) {
    ASSERT_TRUE(wait_running(store, id, type)) << "no " << type << " job was seen running";
    kill_scheduler_process();
    std::this_thread::sleep_for(700ms);
    start_scheduler_process();
  }
  expect_complete_and_equal(store, id, spec);
}

TEST_F(Recovery, PoisonJobIsRetriedThenFailsAndStopsOnlyItsDependants) {
  scheduler::Store store(pg_->url());
  scheduler::RedisClient rc(redis_->url());
  scheduler::Queue queue(rc);
  const auto spec = small_spec();  // max_attempts = 3
  const int64_t id = submit_and_start(store, queue, spec, {{"QBENCH_FAULT_INJECT", ":quantize:nf4$"}});
  const auto end = wait_for(store, id, 600s);
  // The report still renders (it shows the failed variant as failed), so the experiment ends done; the
  // failed job and its error are listed by `qbench status` (checked below).
  ASSERT_EQ(end, scheduler::RunState::kDone);
  for (const auto& j : store.list_jobs(id)) {
    if (j.id.ends_with(":quantize:nf4")) {
      EXPECT_EQ(j.state, scheduler::JobState::kFailed);
      EXPECT_EQ(j.attempt, 3) << "tried max_attempts times";
      EXPECT_NE(j.error.value_or("").find("fault injected"), std::string::npos) << j.error.value_or("");
    } else if (j.variant && *j.variant == "nf4") {
      EXPECT_EQ(j.state, scheduler::JobState::kBlocked) << j.id;
    } else {
      EXPECT_EQ(j.state, scheduler::JobState::kDone) << j.id << ": " << j.error.value_or("");
    }
  }
  for (const auto& v : store.list_variants(id)) {
    EXPECT_EQ(v.state, v.name == "nf4" ? scheduler::RunState::kFailed : scheduler::RunState::kDone) << v.name;
  }
  // Users see the error in `qbench status`.
  const std::string cmd = fmt::format("QBENCH_DATABASE_URL='{}' QBENCH_REDIS_URL='{}' {} status {} 2>&1", pg_->url(),
                                      redis_->url(), EVALSVC_QBENCH_BINARY, id);
  std::string out;
  if (FILE* f = ::popen(cmd.c_str(), "r")) {
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) out.append(buf, n);
    ::pclose(f);
  }
  EXPECT_NE(out.find("failed " + std::to_string(id) + ":quantize:nf4"), std::string::npos) << out;
  EXPECT_NE(out.find("fault injected"), std::string::npos) << out;
  expect_same_predictions(store, id, spec, {"nf4"});
}

}  // namespace
}  // namespace evalsvc::e2e
