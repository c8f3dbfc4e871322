// The job system running the model core end to end: a small tiny-preset experiment through the scheduler
// and worker processes must finish with every job done and with exactly the predictions the model core gives
// when run directly in this process (fixture: pipeline_fixture.h).
#include "pipeline_fixture.h"

namespace evalsvc::e2e {
namespace {

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
  // Each bench job also timed the test set with dynamic padding: one "dataset" row over every test row.
  std::map<std::string, int> test_set_rows;
  for (const auto& b : store.list_bench_results(id)) {
    if (b.kind != scheduler::BenchKind::kDataset) continue;
    test_set_rows[b.variant] = b.timed_runs.value_or(-1);
    EXPECT_GT(b.samples_per_s.value_or(0), 0.0) << b.variant;
    EXPECT_EQ(b.seq_len, 0) << b.variant;
  }
  EXPECT_EQ(test_set_rows, (std::map<std::string, int>{{"fp32", static_cast<int>(kTestRows)}, {"int8-sym", static_cast<int>(kTestRows)}, {"nf4", static_cast<int>(kTestRows)}}));
  // The quantize jobs' weight error: one row per projection (tiny: 2 blocks x 4), fp32 exact, the others not.
  std::map<std::string, int> rows, exact;
  for (const auto& e : store.list_layer_errors(id)) {
    ++rows[e.variant];
    exact[e.variant] += !e.sqnr_db.has_value();
    EXPECT_EQ(e.device.value("kind", ""), "cpu") << e.variant;
  }
  EXPECT_EQ(rows, (std::map<std::string, int>{{"fp32", 8}, {"int8-sym", 8}, {"nf4", 8}}));
  EXPECT_EQ(exact["fp32"], 8);
  EXPECT_EQ(exact["int8-sym"], 0);
  EXPECT_EQ(exact["nf4"], 0);
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
  auto eval = wait_running(store, id, "eval");
  ASSERT_TRUE(eval) << "no evaluation job was seen running";
  ASSERT_TRUE(kill_worker_of(*eval));
  start_worker();
  ASSERT_EQ(wait_for(store, id, 600s), scheduler::RunState::kDone);
  expect_same_predictions(store, id, spec);
}

}  // namespace
}  // namespace evalsvc::e2e
