// The job graph: counts for the presets, shard ranges that cover every test row exactly once, the
// dependency edges, the ready set as jobs complete, the dependants a failure blocks, and the DAG check.
// Pure data: no Redis or PostgreSQL is started.
#include "evalsvc/scheduler/job_graph.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "evalsvc/common/error.h"
#include "evalsvc/scheduler/queue.h"

namespace evalsvc::scheduler {
namespace {

using nlohmann::json;

const JobSpec& job(const std::vector<JobSpec>& graph, const std::string& id) {
  auto it = std::find_if(graph.begin(), graph.end(), [&](const JobSpec& j) { return j.id == id; });
  if (it == graph.end()) throw std::runtime_error("no job " + id);
  return *it;
}

std::map<std::string, int> count_types(const std::vector<JobSpec>& graph) {
  std::map<std::string, int> counts;
  for (const auto& j : graph) ++counts[j.type];
  return counts;
}

TEST(JobGraphTest, JobCountsForPresets) {
  const auto tiny = build_job_graph(7, ExperimentSpec::from_preset("tiny"), 7600);
  // 8 variants, 4 shards: prepare + train + 8 quantize + 32 eval + 8 bench + merge + report.
  EXPECT_EQ(tiny.size(), 52u);
  EXPECT_EQ(
      count_types(tiny),
      (std::map<std::string, int>{
          {"prepare", 1}, {"train", 1}, {"quantize", 8}, {"eval", 32}, {"bench", 8}, {"merge", 1}, {"report", 1}}));
  const auto seed = build_job_graph(8, ExperimentSpec::from_preset("seed"), 7600);
  // 8 variants, 8 shards.
  EXPECT_EQ(seed.size(), 84u);
  EXPECT_EQ(count_types(seed)["eval"], 64);

  auto no_bench = ExperimentSpec::from_preset("tiny");
  no_bench.apply_override("bench.enabled=false");
  const auto nb = build_job_graph(9, no_bench, 7600);
  EXPECT_EQ(nb.size(), 44u);
  EXPECT_EQ(count_types(nb).count("bench"), 0u);
  EXPECT_EQ(job(nb, "9:merge").depends_on.size(), 32u);
}

TEST(JobGraphTest, IdsTypesQueuesAndAttempts) {
  auto spec = ExperimentSpec::from_preset("seed");
  spec.apply_override("max_attempts=5");
  const auto graph = build_job_graph(42, spec, 7600);
  for (const auto& j : graph) {
    EXPECT_NO_THROW(validate_job_id(j.id)) << j.id;  // the queue accepts every id
    EXPECT_NO_THROW(validate_queue_name(j.queue));
    EXPECT_NE(std::find(job_types().begin(), job_types().end(), j.type), job_types().end()) << j.type;
    EXPECT_EQ(j.max_attempts, 5) << j.id;
    const bool on_cpu = j.type == "prepare" || j.type == "merge" || j.type == "report";
    EXPECT_EQ(j.queue, on_cpu ? "cpu" : "cuda") << j.id;
    const bool per_variant = j.type == "quantize" || j.type == "eval" || j.type == "bench";
    EXPECT_EQ(j.variant.empty(), !per_variant) << j.id;
    EXPECT_EQ(j.shard >= 0, j.type == "eval") << j.id;
    EXPECT_EQ(j.id.rfind("42:" + j.type, 0), 0u) << j.id;
  }
  const auto& e = job(graph, "42:eval:nf4:3");
  EXPECT_EQ(e.type, "eval");
  EXPECT_EQ(e.variant, "nf4");
  EXPECT_EQ(e.shard, 3);
  EXPECT_EQ(job(graph, "42:bench:fp8-e4m3").variant, "fp8-e4m3");
  EXPECT_EQ(graph.front().id, "42:prepare");
  EXPECT_EQ(graph.back().id, "42:report");

  const auto tiny = build_job_graph(1, ExperimentSpec::from_preset("tiny"), 100);
  for (const auto& j : tiny) EXPECT_EQ(j.queue, "cpu") << j.id;
}

TEST(JobGraphTest, ShardRangesCoverEveryRowOnce) {
  for (int64_t rows : {1, 2, 3, 7, 8, 100, 7600, 7601}) {
    for (int64_t shards : {1, 2, 3, 4, 7, 8, 1024}) {
      int64_t next = 0, min_size = rows, max_size = 0, empty = 0;
      for (int64_t k = 0; k < shards; ++k) {
        const RowRange r = shard_range(rows, shards, k);
        ASSERT_EQ(r.begin, next) << rows << " rows, shard " << k << "/" << shards;  // contiguous, in order
        ASSERT_GE(r.end, r.begin);
        next = r.end;
        min_size = std::min(min_size, r.size());
        max_size = std::max(max_size, r.size());
        empty += r.size() == 0;
      }
      EXPECT_EQ(next, rows) << rows << "/" << shards;  // every row, none twice
      EXPECT_LE(max_size - min_size, 1) << rows << "/" << shards;
      EXPECT_EQ(empty, std::max<int64_t>(0, shards - rows)) << rows << "/" << shards;
    }
  }
  EXPECT_EQ(shard_range(10, 3, 0).size(), 4);
  EXPECT_EQ(shard_range(10, 3, 2).begin, 7);
  EXPECT_THROW(shard_range(-1, 3, 0), InputError);
  EXPECT_THROW(shard_range(10, 0, 0), InputError);
  EXPECT_THROW(shard_range(10, 3, 3), InputError);
  EXPECT_THROW(shard_range(10, 3, -1), InputError);
}

TEST(JobGraphTest, EvalJobsCoverTheTestRowsPerVariant) {
  auto spec = ExperimentSpec::from_preset("tiny");
  spec.apply_override("eval.shards=7");
  const auto graph = build_job_graph(3, spec, 7600);
  for (const auto& v : spec.variants) {
    std::vector<int> seen(7600, 0);
    int shards = 0;
    for (const auto& j : graph) {
      if (j.type != "eval" || j.variant != v.name) continue;
      ++shards;
      EXPECT_EQ(j.params["row_begin"], j.row_begin);
      EXPECT_EQ(j.params["row_end"], j.row_end);
      EXPECT_EQ(j.params["rows"], j.row_end - j.row_begin);
      EXPECT_EQ(j.params["shard"], j.shard);
      EXPECT_EQ(j.params["shards"], 7);
      for (int64_t r = j.row_begin; r < j.row_end; ++r) ++seen[static_cast<size_t>(r)];
    }
    EXPECT_EQ(shards, 7);
    EXPECT_TRUE(std::all_of(seen.begin(), seen.end(), [](int c) { return c == 1; })) << v.name;
  }
}

TEST(JobGraphTest, MoreShardsThanRowsGivesExplicitEmptyShards) {
  auto spec = ExperimentSpec::from_preset("tiny");
  spec.apply_override("variants=[\"fp32\"]");
  spec.apply_override("eval.shards=5");
  const auto graph = build_job_graph(2, spec, 3);
  EXPECT_EQ(count_types(graph)["eval"], 5);
  for (int k = 0; k < 5; ++k) {
    const auto& j = job(graph, "2:eval:fp32:" + std::to_string(k));
    EXPECT_EQ(j.row_end - j.row_begin, k < 3 ? 1 : 0);
    EXPECT_EQ(j.params["empty"], k >= 3);
  }
  EXPECT_EQ(job(graph, "2:eval:fp32:4").row_begin, 3);
  EXPECT_EQ(job(graph, "2:merge").depends_on.size(), 6u);  // 5 evals (empty ones too) + bench
}

TEST(JobGraphTest, TestLimitCapsTheRows) {
  auto spec = ExperimentSpec::from_preset("tiny");
  spec.apply_override("data.test_limit=100");
  EXPECT_EQ(evaluated_rows(spec, 7600), 100);
  EXPECT_EQ(evaluated_rows(spec, 50), 50);
  const auto graph = build_job_graph(4, spec, 7600);
  EXPECT_EQ(job(graph, "4:eval:fp32:3").row_end, 100);
  EXPECT_EQ(job(graph, "4:prepare").params["test_rows"], 100);
  EXPECT_EQ(job(graph, "4:merge").params["test_rows"], 100);
  EXPECT_EQ(evaluated_rows(ExperimentSpec::from_preset("tiny"), 7600), 7600);
}

TEST(JobGraphTest, DependenciesAreThePipeline) {
  const auto spec = ExperimentSpec::from_preset("tiny");
  const auto graph = build_job_graph(5, spec, 7600);
  EXPECT_TRUE(job(graph, "5:prepare").depends_on.empty());
  EXPECT_EQ(job(graph, "5:train").depends_on, std::vector<std::string>{"5:prepare"});
  std::set<std::string> merge_expected;
  for (const auto& v : spec.variants) {
    const std::string q = "5:quantize:" + v.name;
    EXPECT_EQ(job(graph, q).depends_on, std::vector<std::string>{"5:train"});
    EXPECT_EQ(job(graph, "5:bench:" + v.name).depends_on, std::vector<std::string>{q});
    merge_expected.insert("5:bench:" + v.name);
    for (int k = 0; k < 4; ++k) {
      const std::string e = "5:eval:" + v.name + ":" + std::to_string(k);
      EXPECT_EQ(job(graph, e).depends_on, std::vector<std::string>{q});
      merge_expected.insert(e);
    }
  }
  const auto& merge_deps = job(graph, "5:merge").depends_on;
  EXPECT_EQ(std::set<std::string>(merge_deps.begin(), merge_deps.end()), merge_expected);
  EXPECT_EQ(merge_deps.size(), merge_expected.size());
  EXPECT_EQ(job(graph, "5:report").depends_on, std::vector<std::string>{"5:merge"});
}

TEST(JobGraphTest, GraphIsInTopologicalOrderAndAcyclic) {
  for (const char* preset : {"tiny", "seed"}) {
    const auto graph = build_job_graph(6, ExperimentSpec::from_preset(preset), 7600);
    const auto order = topological_order(graph);
    ASSERT_EQ(order.size(), graph.size());
    std::map<std::string, size_t> pos, graph_pos;
    for (size_t i = 0; i < order.size(); ++i) pos[order[i]] = i;
    for (size_t i = 0; i < graph.size(); ++i) graph_pos[graph[i].id] = i;
    for (const auto& j : graph) {
      for (const auto& d : j.depends_on) {
        EXPECT_LT(pos.at(d), pos.at(j.id)) << d << " -> " << j.id;
        EXPECT_LT(graph_pos.at(d), graph_pos.at(j.id)) << d << " -> " << j.id;  // build order is topological
      }
    }
  }
}

TEST(JobGraphTest, TopologicalOrderRejectsBrokenGraphs) {
  const auto node = [](std::string id, std::vector<std::string> deps) {
    JobSpec j;
    j.id = std::move(id);
    j.type = "noop";
    j.depends_on = std::move(deps);
    return j;
  };
  const auto error = [](const std::vector<JobSpec>& g) -> std::string {
    try {
      topological_order(g);
    } catch (const InputError& e) {
      return e.what();
    }
    return "(no error)";
  };
  EXPECT_EQ(error({node("a", {}), node("b", {"c"}), node("c", {"b"}), node("d", {"c"})}),
            "job graph: a dependency cycle: job 'b' (and 2 other jobs) can never become ready");
  EXPECT_EQ(error({node("a", {"a"})}), "job graph: job 'a' depends on itself");
  EXPECT_EQ(error({node("a", {}), node("b", {"x"})}), "job graph: job 'b' depends on 'x', which is not in the graph");
  EXPECT_EQ(error({node("a", {}), node("a", {})}), "job graph: job id 'a' appears twice (#0 and #1)");
  EXPECT_EQ(error({node("", {})}), "job graph: job #0 (type 'noop') has an empty id");
  // A dependency listed twice is still one edge.
  EXPECT_EQ(topological_order({node("b", {"a", "a"}), node("a", {})}), (std::vector<std::string>{"a", "b"}));
  EXPECT_TRUE(topological_order({}).empty());
}

TEST(JobGraphTest, ReadySetEvolvesAsJobsComplete) {
  auto spec = ExperimentSpec::from_preset("tiny");
  spec.apply_override("variants=[\"fp32\",\"nf4\"]");
  spec.apply_override("eval.shards=2");
  const auto graph = build_job_graph(11, spec, 100);
  std::map<std::string, JobState> st;
  using V = std::vector<std::string>;

  EXPECT_EQ(ready_jobs(graph, st), V{"11:prepare"});
  st["11:prepare"] = JobState::kQueued;
  EXPECT_EQ(ready_jobs(graph, st), V{});  // queued is no longer pending
  st["11:prepare"] = JobState::kDone;
  EXPECT_EQ(ready_jobs(graph, st), V{"11:train"});
  st["11:train"] = JobState::kRunning;
  EXPECT_EQ(ready_jobs(graph, st), V{});
  st["11:train"] = JobState::kDone;
  EXPECT_EQ(ready_jobs(graph, st), (V{"11:quantize:fp32", "11:quantize:nf4"}));
  st["11:quantize:fp32"] = JobState::kDone;
  st["11:quantize:nf4"] = JobState::kFailed;
  // nf4's evals and bench wait on a failed job: never ready. The bench comes first (the longest job starts first).
  EXPECT_EQ(ready_jobs(graph, st), (V{"11:bench:fp32", "11:eval:fp32:0", "11:eval:fp32:1"}));
  st["11:quantize:nf4"] = JobState::kDone;  // retried and done
  for (const auto& id : V{"11:eval:fp32:0", "11:eval:fp32:1", "11:bench:fp32", "11:eval:nf4:0", "11:bench:nf4"}) {
    st[id] = JobState::kDone;
  }
  EXPECT_EQ(ready_jobs(graph, st), V{"11:eval:nf4:1"});  // merge waits for the last shard
  st["11:eval:nf4:1"] = JobState::kDone;
  EXPECT_EQ(ready_jobs(graph, st), V{"11:merge"});
  st["11:merge"] = JobState::kDone;
  EXPECT_EQ(ready_jobs(graph, st), V{"11:report"});
  st["11:report"] = JobState::kDone;
  EXPECT_EQ(ready_jobs(graph, st), V{});
}

TEST(JobGraphTest, CompletingWavesRunsThePipelineInSixSteps) {
  const auto graph = build_job_graph(12, ExperimentSpec::from_preset("seed"), 7600);
  std::map<std::string, JobState> st;
  std::vector<size_t> wave_sizes;
  for (auto ready = ready_jobs(graph, st); !ready.empty(); ready = ready_jobs(graph, st)) {
    wave_sizes.push_back(ready.size());
    for (const auto& id : ready) {
      EXPECT_EQ(st.count(id), 0u) << id << " offered twice";
      st[id] = JobState::kDone;
    }
  }
  // prepare, train, 8 quantize, 64 eval + 8 bench, merge, report.
  EXPECT_EQ(wave_sizes, (std::vector<size_t>{1, 1, 8, 72, 1, 1}));
  EXPECT_EQ(st.size(), graph.size());
}

TEST(JobGraphTest, DependantsAreEverythingDownstream) {
  const auto spec = ExperimentSpec::from_preset("tiny");
  const auto graph = build_job_graph(13, spec, 7600);
  std::vector<std::string> all_but_first_two;
  for (size_t i = 2; i < graph.size(); ++i) all_but_first_two.push_back(graph[i].id);
  EXPECT_EQ(dependants(graph, "13:train"), all_but_first_two);

  std::vector<std::string> everything_after_prepare;
  for (size_t i = 1; i < graph.size(); ++i) everything_after_prepare.push_back(graph[i].id);
  EXPECT_EQ(dependants(graph, "13:prepare"), everything_after_prepare);

  EXPECT_EQ(dependants(graph, "13:quantize:nf4"),
            (std::vector<std::string>{"13:bench:nf4", "13:eval:nf4:0", "13:eval:nf4:1", "13:eval:nf4:2",
                                      "13:eval:nf4:3", "13:merge", "13:report"}));
  EXPECT_EQ(dependants(graph, "13:eval:fp16:2"), (std::vector<std::string>{"13:merge", "13:report"}));
  EXPECT_EQ(dependants(graph, "13:merge"), std::vector<std::string>{"13:report"});
  EXPECT_TRUE(dependants(graph, "13:report").empty());
  EXPECT_THROW(dependants(graph, "13:quantize:nf5"), InputError);
}

TEST(JobGraphTest, ParamsCarryWhatAWorkerNeeds) {
  auto spec = ExperimentSpec::from_preset("tiny");
  spec.apply_override(
      R"(variants=["fp32",{"name":"q4","method":"nf4","base_dtype":"bf16","options":{"block_size":128}}])");
  spec.apply_override("data.train=/data/train.csv");
  const auto graph = build_job_graph(14, spec, 7600);
  const json q4 = spec.variants[1].to_json();

  const auto& prepare = job(graph, "14:prepare");
  EXPECT_EQ(prepare.params["train"], "/data/train.csv");
  EXPECT_TRUE(prepare.params["test"].is_null());
  EXPECT_EQ(prepare.params["max_len"], 128);
  EXPECT_EQ(prepare.params["test_rows"], 7600);
  EXPECT_EQ(prepare.params["seed"], 42);

  const auto& train = job(graph, "14:train");
  EXPECT_EQ(train.params["model"]["config"], "tiny");
  EXPECT_EQ(train.params["train"]["epochs"], 3);
  EXPECT_EQ(train.params["train"]["lr"], 1e-3);

  EXPECT_EQ(job(graph, "14:quantize:q4").params["variant"], q4);
  EXPECT_EQ(q4["options"]["block_size"], 128);
  EXPECT_EQ(q4["base_dtype"], "bf16");

  const auto& eval = job(graph, "14:eval:q4:1");
  EXPECT_EQ(eval.params["variant"], q4);
  EXPECT_EQ(eval.params["batch_size"], 256);
  EXPECT_EQ(eval.params["row_begin"], 1900);
  EXPECT_EQ(eval.params["row_end"], 3800);

  const auto& bench = job(graph, "14:bench:q4");
  EXPECT_EQ(bench.params["variant"], q4);
  EXPECT_EQ(bench.params["batch_sizes"], json::array({1, 8, 32}));
  EXPECT_EQ(bench.params["warmup"], 3);
  EXPECT_EQ(bench.params["iters"], 20);
  EXPECT_EQ(bench.params["seq_len"], 128);

  const auto& merge = job(graph, "14:merge");
  EXPECT_EQ(merge.params["variants"], json::array({"fp32", "q4"}));
  EXPECT_EQ(merge.params["baseline"], "fp32");
  EXPECT_EQ(merge.params["shards"], 4);
  EXPECT_EQ(job(graph, "14:report").params["name"], "tiny");
}

TEST(JobGraphTest, BadArgumentsAreInputErrors) {
  const auto spec = ExperimentSpec::from_preset("tiny");
  EXPECT_THROW(build_job_graph(0, spec, 7600), InputError);
  EXPECT_THROW(build_job_graph(-3, spec, 7600), InputError);
  EXPECT_THROW(build_job_graph(1, spec, 0), InputError);
  EXPECT_THROW(build_job_graph(1, spec, -5), InputError);
  ExperimentSpec empty = spec;
  empty.variants.clear();
  EXPECT_THROW(build_job_graph(1, empty, 7600), InputError);
}

TEST(JobGraphTest, LargestGraphStaysTractable) {
  // 64 variants x 1024 shards: the biggest spec the validator accepts (~65,700 jobs).
  auto spec = ExperimentSpec::from_preset("tiny");
  json variants = json::array();
  for (int i = 0; i < 64; ++i) variants.push_back({{"name", "v" + std::to_string(i)}, {"method", "int8-sym"}});
  spec.apply_overrides({"variants=" + variants.dump(), "baseline=v0", "eval.shards=1024"});
  const auto graph = build_job_graph(2147483648LL, spec, 7600);
  EXPECT_EQ(graph.size(), 2u + 64u * (1 + 1024 + 1) + 2u);
  EXPECT_EQ(topological_order(graph).size(), graph.size());
  EXPECT_EQ(dependants(graph, "2147483648:train").size(), graph.size() - 2);
  EXPECT_EQ(ready_jobs(graph, {}).size(), 1u);
}

}  // namespace
}  // namespace evalsvc::scheduler
