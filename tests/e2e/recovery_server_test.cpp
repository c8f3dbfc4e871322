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
  /// The test's own connections (the scheduler and the workers have theirs).
  struct Clients {
    scheduler::Store store;
    scheduler::RedisClient redis;
    scheduler::Queue queue;
    Clients(const std::string& database_url, const std::string& redis_url)
        : store(database_url), redis(redis_url), queue(redis) {}
  };

  /// Submits the small experiment and starts two workers; returns the experiment id.
  int64_t submit_and_start(const std::vector<std::pair<std::string, std::string>>& worker_env = {}) {
    c_ = std::make_unique<Clients>(pg_->url(), redis_->url());
    const int64_t id = scheduler::submit_experiment(c_->store, c_->queue, spec_, kTestRows);
    start_worker(worker_env);
    start_worker(worker_env);
    return id;
  }

  /// The experiment ended done, every job is done, and the predictions equal the direct run.
  void expect_complete_and_equal(int64_t id) {
    ASSERT_EQ(wait_for(c_->store, id, 600s), scheduler::RunState::kDone) << "see the logs in " << root_.string();
    for (const auto& j : c_->store.list_jobs(id)) {
      EXPECT_EQ(j.state, scheduler::JobState::kDone) << j.id << ": " << j.error.value_or("");
    }
    expect_same_predictions(c_->store, id, spec_);
  }

  std::optional<scheduler::JobRecord> running(int64_t id, const std::string& type) {
    return wait_running(c_->store, id, type);
  }

  const ExperimentSpec spec_ = small_spec();  // max_attempts = 3
  std::unique_ptr<Clients> c_;
};

class SchedulerProcess : public Recovery {
 protected:
  bool scheduler_as_process() const override { return true; }
};

TEST_F(Recovery, WorkerKilledDuringTrainingLosesNothing) {
  const int64_t id = submit_and_start();
  auto train = running(id, "train");
  ASSERT_TRUE(train) << "the train job was never seen running";
  std::this_thread::sleep_for(500ms);  // into the training loop, not just its start
  ASSERT_TRUE(kill_worker_of(*train));
  start_worker();
  expect_complete_and_equal(id);
  auto j = c_->store.get_job(train->id);
  ASSERT_TRUE(j);
  EXPECT_GE(j->attempt, 2) << "the killed training attempt must have been redelivered";
}

TEST_F(Recovery, RedisRestartedMidExperiment) {
  const int64_t id = submit_and_start();
  ASSERT_TRUE(running(id, "eval"));
  redis_->restart();  // SIGTERM: Redis writes its AOF and exits; then started on the same port and data
  expect_complete_and_equal(id);
}

TEST_F(Recovery, RedisCrashedMidExperiment) {
  const int64_t id = submit_and_start();
  ASSERT_TRUE(running(id, "eval"));
  // kill -9: with appendfsync everysec up to about two seconds of queue writes may be lost; the scheduler's
  // reconcile from PostgreSQL queues again whatever the queue forgot.
  redis_->kill();
  std::this_thread::sleep_for(500ms);
  redis_->start();
  expect_complete_and_equal(id);
}

TEST_F(Recovery, PostgresRestartedMidExperiment) {
  const int64_t id = submit_and_start();
  ASSERT_TRUE(running(id, "eval"));
  pg_->restart();
  expect_complete_and_equal(id);
}

TEST_F(Recovery, PostgresCrashedMidExperiment) {
  const int64_t id = submit_and_start();
  ASSERT_TRUE(running(id, "eval"));
  pg_->kill();  // kill -9 of the postmaster; start() runs crash recovery
  std::this_thread::sleep_for(500ms);
  pg_->start();
  expect_complete_and_equal(id);
}

TEST_F(SchedulerProcess, SchedulerKilledAndRestartedTwice) {
  const int64_t id = submit_and_start();
  // Once while training runs, once during evaluation; each time it is started again from nothing but the
  // durable state (PostgreSQL's job table and the last event id it recorded in Redis).
  for (const char* type : {"train", "eval"}) {
    ASSERT_TRUE(running(id, type)) << "no " << type << " job was seen running";
    kill_scheduler_process();
    std::this_thread::sleep_for(700ms);
    start_scheduler_process();
  }
  expect_complete_and_equal(id);
}

TEST_F(Recovery, PoisonJobIsRetriedThenFailsAndStopsOnlyItsDependants) {
  const int64_t id = submit_and_start({{"QBENCH_FAULT_INJECT", ":quantize:nf4$"}});
  const auto end = wait_for(c_->store, id, 600s);
  // The report still renders (it shows the failed variant as failed), so the experiment ends done; the
  // failed job and its error are listed by `qbench status` (checked below).
  ASSERT_EQ(end, scheduler::RunState::kDone);
  for (const auto& j : c_->store.list_jobs(id)) {
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
  for (const auto& v : c_->store.list_variants(id)) {
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
  expect_same_predictions(c_->store, id, spec_, {"nf4"});
}

}  // namespace
}  // namespace evalsvc::e2e
