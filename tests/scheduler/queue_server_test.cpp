// The queue protocol (scheduler/lua/*.lua through Queue) against a real redis-server.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <thread>

#include "evalsvc/common/paths.h"
#include "evalsvc/scheduler/local_servers.h"
#include "evalsvc/scheduler/queue.h"

namespace evalsvc::scheduler {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using std::chrono::milliseconds;

fs::path make_temp_dir() {
  std::string tmpl = (fs::temp_directory_path() / "qbench-queue-XXXXXX").string();
  char* p = ::mkdtemp(tmpl.data());
  if (p == nullptr) throw IoError("mkdtemp failed");
  return p;
}

JobMessage job(const std::string& id, const std::string& queue = "cpu", int max_attempts = 3) {
  JobMessage m;
  m.id = id;
  m.experiment_id = 7;
  m.type = "noop";
  m.params = json{{"shard", 1}};
  m.max_attempts = max_attempts;
  m.queue = queue;
  return m;
}

std::vector<Event> events_of(Queue& q, const std::string& job_id) {
  std::vector<Event> out;
  for (auto& e : q.read_events("0", 10000, milliseconds(0))) {
    if (e.job_id == job_id) out.push_back(e);
  }
  return out;
}

class QueueServerTest : public ::testing::Test {
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
  Lease must_claim(const std::string& queue = "cpu", milliseconds lease = milliseconds(10000)) {
    auto l = queue_->claim({queue}, "w1", lease, milliseconds(0));
    if (!l) throw InternalError("nothing to claim");
    return *l;
  }
  fs::path dir_;
  std::unique_ptr<LocalRedis> server_;
  std::unique_ptr<RedisClient> redis_;
  std::unique_ptr<Queue> queue_;
};

TEST(JobMessageTest, RoundTripAndValidation) {
  JobMessage m = job("j1");
  JobMessage back = parse_job_message("j1", to_json(m).dump(), "cpu");
  EXPECT_EQ(back.id, "j1");
  EXPECT_EQ(back.experiment_id, 7);
  EXPECT_EQ(back.type, "noop");
  EXPECT_EQ(back.params, m.params);
  EXPECT_EQ(back.max_attempts, 3);
  EXPECT_EQ(back.queue, "cpu");

  auto expect_format = [](const std::string& payload, const std::string& needle) {
    try {
      parse_job_message("j9", payload, "cpu");
      ADD_FAILURE() << "accepted " << payload;
    } catch (const FormatError& e) {
      std::string w = e.what();
      EXPECT_NE(w.find("job j9"), std::string::npos) << w;
      EXPECT_NE(w.find(needle), std::string::npos) << w;
    }
  };
  json good = to_json(job("j9"));
  expect_format("{not json", "not valid JSON");
  expect_format("[1,2]", "JSON object");
  for (const char* field : {"id", "experiment_id", "type", "params", "attempt", "max_attempts"}) {
    json j = good;
    j.erase(field);
    expect_format(j.dump(), std::string("'") + field + "'");
  }
  json j = good;
  j["experiment_id"] = "7";
  expect_format(j.dump(), "'experiment_id' must be an integer");
  j = good;
  j["id"] = "other";
  expect_format(j.dump(), "'id' is 'other'");
  j = good;
  j["max_attempts"] = 0;
  expect_format(j.dump(), "'max_attempts' is 0");
  j = good;
  j["params"] = "x";
  expect_format(j.dump(), "'params' must be an object");
  j = good;
  j["type"] = "";
  expect_format(j.dump(), "'type' must be a non-empty string");
}

TEST(LuaScriptsTest, NamedVerbDashNumKeysWithHeaders) {
  auto names = lua_script_names();
  EXPECT_GE(names.size(), 9u);
  const std::regex name_re(R"(([a-z-]+)-(\d+)\.lua)");
  for (const auto& n : names) {
    std::smatch m;
    ASSERT_TRUE(std::regex_match(n, m, name_re)) << n;
    const int num_keys = std::stoi(m[2]);
    const std::string& src = lua_script_source(n);
    // The header lists every KEYS slot, and the body uses no slot beyond the name's count.
    for (int k = 1; k <= num_keys; ++k) {
      EXPECT_NE(src.find("KEYS[" + std::to_string(k) + "]"), std::string::npos) << n << " lacks KEYS[" << k << "]";
    }
    EXPECT_EQ(src.find("KEYS[" + std::to_string(num_keys + 1) + "]"), std::string::npos) << n;
    EXPECT_NE(src.find("Returns"), std::string::npos) << n << " has no return-code header";
    EXPECT_TRUE(src.starts_with("--[[")) << n;
  }
  EXPECT_THROW(lua_script_source("nope-1.lua"), InternalError);
}

TEST_F(QueueServerTest, EnqueueClaimCompleteHappyPath) {
  EXPECT_EQ(queue_->enqueue(job("a")), EnqueueResult::kEnqueued);
  EXPECT_EQ(queue_->enqueue(job("a")), EnqueueResult::kAlreadyPending);  // idempotent
  QueueStats s = queue_->stats();
  EXPECT_EQ(s.waiting["cpu"], 1);
  EXPECT_EQ(s.active, 0);

  Lease l = must_claim();
  EXPECT_EQ(l.job.id, "a");
  EXPECT_EQ(l.job.attempt, 1);
  EXPECT_EQ(l.job.params["shard"], 1);
  EXPECT_EQ(l.token.size(), 32u);
  auto f = queue_->job_fields("a");
  ASSERT_TRUE(f);
  EXPECT_EQ((*f)["state"], "active");
  EXPECT_EQ((*f)["worker"], "w1");
  EXPECT_EQ(redis_->command({"GET", queue_->lock_key("a")}).str(), l.token);
  long long pttl = redis_->command({"PTTL", queue_->lock_key("a")}).integer();
  EXPECT_GT(pttl, 8000);
  EXPECT_LE(pttl, 10000);
  s = queue_->stats();
  EXPECT_EQ(s.waiting["cpu"], 0);
  EXPECT_EQ(s.active, 1);
  EXPECT_EQ(queue_->enqueue(job("a")), EnqueueResult::kAlreadyPending);  // active: unchanged

  EXPECT_EQ(queue_->complete(l, json{{"accuracy", 0.83}}), FinishResult::kOk);
  EXPECT_EQ(queue_->complete(l, json{}), FinishResult::kNotActive);  // twice: refused
  f = queue_->job_fields("a");
  EXPECT_EQ((*f)["state"], "completed");
  EXPECT_EQ(json::parse((*f)["result"])["accuracy"], 0.83);
  EXPECT_EQ(redis_->command({"EXISTS", queue_->lock_key("a")}).integer(), 0);
  EXPECT_EQ(queue_->stats().active, 0);

  auto ev = events_of(*queue_, "a");
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].type, "completed");
  EXPECT_EQ(ev[0].attempt, 1);
  EXPECT_EQ(ev[0].queue, "cpu");
  EXPECT_EQ(ev[0].worker, "w1");
  EXPECT_EQ(json::parse(*ev[0].field("result"))["accuracy"], 0.83);

  // The scheduler retries a finished job by enqueueing it again: the attempt counter continues.
  EXPECT_EQ(queue_->enqueue(job("a")), EnqueueResult::kReenqueued);
  EXPECT_EQ(must_claim().job.attempt, 2);
}

TEST_F(QueueServerTest, FifoPerQueueAndQueuesAreSeparate) {
  for (int i = 0; i < 5; ++i) queue_->enqueue(job("c" + std::to_string(i), "cpu"));
  queue_->enqueue(job("g0", "cuda"));
  EXPECT_FALSE(queue_->claim({"other"}, "w", milliseconds(1000), milliseconds(0)));
  EXPECT_EQ(must_claim("cuda").job.id, "g0");
  for (int i = 0; i < 5; ++i) EXPECT_EQ(must_claim("cpu").job.id, "c" + std::to_string(i));
  EXPECT_FALSE(queue_->claim({"cpu", "cuda"}, "w", milliseconds(1000), milliseconds(0)));
  // The wake list is dropped once a queue drains, so idle workers are not woken for nothing.
  EXPECT_EQ(redis_->command({"EXISTS", queue_->wake_key("cpu")}).integer(), 0);
  EXPECT_THROW(queue_->enqueue(job("bad id")), InputError);
  EXPECT_THROW(queue_->enqueue(job("x", "bad:queue")), InputError);
  EXPECT_THROW(queue_->enqueue(job("x", "cpu", 0)), InputError);
}

TEST_F(QueueServerTest, IdleClaimWaitsWithoutPollingAndWakesOnEnqueue) {
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_FALSE(queue_->claim({"cpu"}, "w", milliseconds(1000), milliseconds(300)));
  auto waited = std::chrono::steady_clock::now() - t0;
  EXPECT_GE(waited, milliseconds(290));
  EXPECT_LT(waited, milliseconds(2000));

  std::optional<Lease> got;
  std::chrono::steady_clock::time_point claimed_at;
  std::thread worker([&] {
    RedisClient r(server_->url());
    Queue q(r);
    got = q.claim({"cuda", "cpu"}, "w2", milliseconds(5000), milliseconds(5000));
    claimed_at = std::chrono::steady_clock::now();
  });
  std::this_thread::sleep_for(milliseconds(200));
  const auto enqueued_at = std::chrono::steady_clock::now();
  queue_->enqueue(job("late"));
  worker.join();
  ASSERT_TRUE(got);
  EXPECT_EQ(got->job.id, "late");
  EXPECT_LT(claimed_at - enqueued_at, milliseconds(200));  // woken, not the 1 s BLPOP slice
}

TEST_F(QueueServerTest, TokenIsRequiredForEveryLeaseMove) {
  queue_->enqueue(job("t"));
  Lease l = must_claim();
  Lease forged = l;
  forged.token = "not-the-token";
  EXPECT_EQ(queue_->renew(forged, milliseconds(5000)), FinishResult::kTakenOver);
  EXPECT_EQ(queue_->complete(forged, json{}), FinishResult::kTakenOver);
  EXPECT_EQ(queue_->fail(forged, "x", true), FinishResult::kTakenOver);
  EXPECT_EQ(queue_->release(forged), FinishResult::kTakenOver);
  EXPECT_EQ(queue_->dead_letter(forged, "x"), FinishResult::kTakenOver);
  Lease ghost = l;
  ghost.job.id = "ghost";
  EXPECT_EQ(queue_->complete(ghost, json{}), FinishResult::kNotFound);

  const int64_t before = l.deadline_ms;
  std::this_thread::sleep_for(milliseconds(20));
  EXPECT_EQ(queue_->renew(l, milliseconds(60000)), FinishResult::kOk);
  EXPECT_GT(l.deadline_ms, before + 40000);
  EXPECT_GT(redis_->command({"PTTL", queue_->lock_key("t")}).integer(), 50000);
  EXPECT_EQ(redis_->command({"ZSCORE", queue_->active_key(), "t"}).integer(), l.deadline_ms);

  EXPECT_EQ(queue_->fail(l, "CUDA out of memory", true), FinishResult::kOk);
  auto f = queue_->job_fields("t");
  EXPECT_EQ((*f)["state"], "failed");
  EXPECT_EQ((*f)["error"], "CUDA out of memory");
  auto ev = events_of(*queue_, "t");
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].type, "failed");
  EXPECT_EQ(ev[0].field("retryable"), "1");
  EXPECT_EQ(ev[0].field("max_attempts"), "3");
  EXPECT_EQ(ev[0].field("error"), "CUDA out of memory");
}

TEST_F(QueueServerTest, ExpiredLeaseIsRequeuedAndLateFinishesAreRejected) {
  queue_->enqueue(job("s", "cpu", 3));
  Lease first = must_claim("cpu", milliseconds(150));
  EXPECT_TRUE(queue_->requeue_stalled().empty());  // lease still valid
  std::this_thread::sleep_for(milliseconds(250));
  auto stalled = queue_->requeue_stalled();
  ASSERT_EQ(stalled.size(), 1u);
  EXPECT_EQ(stalled[0].id, "s");
  EXPECT_EQ(stalled[0].outcome, "requeued");
  EXPECT_EQ(queue_->job_fields("s")->at("state"), "waiting");
  EXPECT_EQ(queue_->complete(first, json{}), FinishResult::kLeaseExpired);

  Lease second = must_claim();
  EXPECT_EQ(second.job.attempt, 2);
  EXPECT_NE(second.token, first.token);
  // The first worker comes back late: the job is someone else's now.
  EXPECT_EQ(queue_->complete(first, json{}), FinishResult::kTakenOver);
  EXPECT_EQ(queue_->renew(first, milliseconds(1000)), FinishResult::kTakenOver);
  EXPECT_EQ(queue_->complete(second, json{{"ok", true}}), FinishResult::kOk);

  auto ev = events_of(*queue_, "s");
  ASSERT_EQ(ev.size(), 2u);
  EXPECT_EQ(ev[0].type, "requeued");
  EXPECT_EQ(ev[0].field("reason"), "lease expired");
  EXPECT_EQ(ev[1].type, "completed");
  EXPECT_EQ(ev[1].attempt, 2);
}

TEST_F(QueueServerTest, ExpiredLeaseWithoutAttemptsLeftFails) {
  queue_->enqueue(job("once", "cpu", 1));
  Lease l = must_claim("cpu", milliseconds(100));
  std::this_thread::sleep_for(milliseconds(200));
  auto stalled = queue_->requeue_stalled();
  ASSERT_EQ(stalled.size(), 1u);
  EXPECT_EQ(stalled[0].outcome, "failed");
  EXPECT_EQ(queue_->job_fields("once")->at("state"), "failed");
  EXPECT_EQ(queue_->complete(l, json{}), FinishResult::kNotActive);
  EXPECT_FALSE(queue_->claim({"cpu"}, "w", milliseconds(1000), milliseconds(0)));
  auto ev = events_of(*queue_, "once");
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].type, "failed");
  EXPECT_NE(ev[0].field("error")->find("lease expired"), std::string::npos);
}

TEST_F(QueueServerTest, ReleaseHandsBackToTheFrontWithoutUsingAnAttempt) {
  queue_->enqueue(job("r1"));
  queue_->enqueue(job("r2"));
  Lease l = must_claim();
  ASSERT_EQ(l.job.id, "r1");
  EXPECT_EQ(queue_->release(l), FinishResult::kOk);
  EXPECT_EQ(queue_->release(l), FinishResult::kLeaseExpired);
  Lease again = must_claim();
  EXPECT_EQ(again.job.id, "r1");  // front of the line, before r2
  EXPECT_EQ(again.job.attempt, 1);
}

TEST_F(QueueServerTest, CancelWaitingActiveAndFinishedJobs) {
  queue_->enqueue(job("w"));
  queue_->enqueue(job("act"));
  EXPECT_TRUE(queue_->cancel("w"));
  Lease l = must_claim();
  EXPECT_EQ(l.job.id, "act");  // "w" left the wait list
  EXPECT_TRUE(queue_->cancel("act"));
  EXPECT_EQ(queue_->renew(l, milliseconds(1000)), FinishResult::kNotActive);
  EXPECT_EQ(queue_->complete(l, json{}), FinishResult::kNotActive);
  EXPECT_FALSE(queue_->cancel("act"));   // already cancelled
  EXPECT_FALSE(queue_->cancel("nope"));  // no such job
  EXPECT_EQ(queue_->stats().active, 0);
  auto ev = events_of(*queue_, "act");
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].type, "cancelled");
  EXPECT_EQ(ev[0].field("previous"), "active");
}

TEST_F(QueueServerTest, MalformedMessagesAreDeadLetteredNotLost) {
  // A job id on the wait list with no hash, a hash with broken JSON, one with a missing field, then a
  // good job: one claim call parks the three bad ones and returns the good one.
  redis_->command({"LPUSH", queue_->wait_key("cpu"), "orphan"});
  redis_->command({"HSET", queue_->job_key("badjson"), "data", "{\"id\": \"badjson\", ", "queue", "cpu", "state",
                   "waiting", "attempt", "0", "max_attempts", "3"});
  redis_->command({"LPUSH", queue_->wait_key("cpu"), "badjson"});
  json nofield = to_json(job("nofield"));
  nofield.erase("type");
  redis_->command({"HSET", queue_->job_key("nofield"), "data", nofield.dump(), "queue", "cpu", "state", "waiting",
                   "attempt", "0", "max_attempts", "3"});
  redis_->command({"LPUSH", queue_->wait_key("cpu"), "nofield"});
  redis_->command({"HSET", queue_->job_key("nodata"), "queue", "cpu", "state", "waiting", "attempt", "0"});
  redis_->command({"LPUSH", queue_->wait_key("cpu"), "nodata"});
  queue_->enqueue(job("good"));

  auto l = queue_->claim({"cpu"}, "w1", milliseconds(5000), milliseconds(0));
  ASSERT_TRUE(l);
  EXPECT_EQ(l->job.id, "good");

  auto dead = queue_->dead_letters();
  ASSERT_EQ(dead.size(), 4u);
  std::map<std::string, DeadLetter> by_id;
  for (auto& d : dead) by_id[d.id] = d;
  EXPECT_NE(by_id["orphan"].reason.find("no job hash"), std::string::npos) << by_id["orphan"].reason;
  EXPECT_NE(by_id["badjson"].reason.find("not valid JSON"), std::string::npos) << by_id["badjson"].reason;
  EXPECT_EQ(by_id["badjson"].data, "{\"id\": \"badjson\", ");  // the raw message is kept
  EXPECT_NE(by_id["nofield"].reason.find("'type'"), std::string::npos) << by_id["nofield"].reason;
  EXPECT_NE(by_id["nodata"].reason.find("job nodata"), std::string::npos) << by_id["nodata"].reason;
  EXPECT_EQ(queue_->job_fields("badjson")->at("state"), "dead");
  EXPECT_EQ(queue_->stats().dead, 4);
  EXPECT_EQ(queue_->stats().active, 1);  // only "good"
  int dead_events = 0;
  for (auto& e : queue_->read_events("0", 100, milliseconds(0))) dead_events += e.type == "dead";
  EXPECT_EQ(dead_events, 4);
}

TEST_F(QueueServerTest, EventsAreReadIncrementallyAndBlockBriefly) {
  for (int i = 0; i < 5; ++i) {
    queue_->enqueue(job("e" + std::to_string(i)));
    queue_->complete(must_claim(), json{{"i", i}});
  }
  auto first = queue_->read_events("0", 3, milliseconds(0));
  ASSERT_EQ(first.size(), 3u);
  auto rest = queue_->read_events(first.back().id, 100, milliseconds(0));
  ASSERT_EQ(rest.size(), 2u);
  EXPECT_EQ(rest.back().job_id, "e4");
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_TRUE(queue_->read_events(rest.back().id, 10, milliseconds(200)).empty());
  EXPECT_GE(std::chrono::steady_clock::now() - t0, milliseconds(190));
  queue_->trim_events(rest.front().id);
  EXPECT_EQ(queue_->read_events("0", 100, milliseconds(0)).size(), 2u);
}

TEST_F(QueueServerTest, JobsSurviveARedisRestartWithAof) {
  for (int i = 0; i < 50; ++i) queue_->enqueue(job("p" + std::to_string(i)));
  Lease l = must_claim("cpu", milliseconds(60000));
  EXPECT_EQ(l.job.id, "p0");
  server_->stop();  // graceful
  server_->start();
  QueueStats s = queue_->stats();  // the client reconnects by itself
  EXPECT_EQ(s.waiting["cpu"], 49);
  EXPECT_EQ(s.active, 1);
  // Scripts are not persisted: the first EVALSHA after the restart goes through the NOSCRIPT fallback.
  EXPECT_EQ(queue_->complete(l, json{{"ok", true}}), FinishResult::kOk);

  // A crash (SIGKILL) right after a write. Under appendfsync everysec Redis writes the AOF before it replies,
  // except while the previous second's fsync is still running: then it postpones the write (up to 2 s) and
  // replies anyway, so the claim may be lost (seen once on a loaded 2-core CI machine). Either way the queue
  // comes back whole: the job is active under the claim, or waiting again; none is lost or duplicated.
  Lease l2 = must_claim("cpu", milliseconds(60000));
  EXPECT_EQ(l2.job.id, "p1");
  server_->kill();
  server_->start();
  s = queue_->stats();
  const bool kept = s.active == 1;
  EXPECT_EQ(s.waiting["cpu"], kept ? 48 : 49);
  EXPECT_EQ(s.active, kept ? 1 : 0);
  EXPECT_EQ(queue_->complete(l2, json{}), kept ? FinishResult::kOk : FinishResult::kLeaseExpired);
  for (int i = kept ? 2 : 1; i < 50; ++i) EXPECT_EQ(must_claim().job.id, "p" + std::to_string(i));
  EXPECT_EQ(queue_->stats().waiting["cpu"], 0);
  int completed = 0;
  for (auto& e : queue_->read_events("0", 1000, milliseconds(0))) completed += e.type == "completed";
  EXPECT_EQ(completed, kept ? 2 : 1);
}

TEST(QueuePasswordTest, WorksAgainstAPasswordProtectedRedis) {
  fs::path dir = make_temp_dir();
  {
    LocalRedis server({.dir = dir, .password = "queue-secret"});
    RedisClient r(server.url());
    Queue q(r);
    q.enqueue(job("pw"));
    auto l = q.claim({"cpu"}, "w", milliseconds(1000), milliseconds(0));
    ASSERT_TRUE(l);
    EXPECT_EQ(q.complete(*l, json{}), FinishResult::kOk);
    EXPECT_THROW(
        {
          RedisClient anon(fmt::format("redis://127.0.0.1:{}", server.port()));
          Queue q2(anon);
          q2.stats();
        },
        RedisError);
  }
  evalsvc::remove_tree(dir);
}

}  // namespace
}  // namespace evalsvc::scheduler
