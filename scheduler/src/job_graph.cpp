// Experiment spec -> job graph, and the graph queries the scheduler runs as jobs finish (see job_graph.h).
#include "evalsvc/scheduler/job_graph.h"

#include <fmt/format.h>

#include <algorithm>
#include <deque>
#include <unordered_map>
#include <unordered_set>

#include "evalsvc/common/error.h"

namespace evalsvc::scheduler {

using nlohmann::json;

namespace {

/// Job id -> position in the graph; InputError for an empty or repeated id.
std::unordered_map<std::string_view, size_t> index_by_id(const std::vector<JobSpec>& graph) {
  std::unordered_map<std::string_view, size_t> index;
  index.reserve(graph.size());
  for (size_t i = 0; i < graph.size(); ++i) {
    EVALSVC_CHECK(!graph[i].id.empty(), InputError, "job graph: job #{} (type '{}') has an empty id", i, graph[i].type);
    const bool inserted = index.emplace(graph[i].id, i).second;
    EVALSVC_CHECK(inserted, InputError, "job graph: job id '{}' appears twice (#{} and #{})", graph[i].id,
                  index.at(graph[i].id), i);
  }
  return index;
}

/// Reverse edges: for each job, the positions of the jobs that list it in depends_on.
std::vector<std::vector<size_t>> dependants_lists(const std::vector<JobSpec>& graph,
                                                  const std::unordered_map<std::string_view, size_t>& index) {
  std::vector<std::vector<size_t>> out(graph.size());
  for (size_t i = 0; i < graph.size(); ++i) {
    for (const auto& dep : graph[i].depends_on) {
      auto it = index.find(dep);
      EVALSVC_CHECK(it != index.end(), InputError, "job graph: job '{}' depends on '{}', which is not in the graph",
                    graph[i].id, dep);
      EVALSVC_CHECK(it->second != i, InputError, "job graph: job '{}' depends on itself", graph[i].id);
      out[it->second].push_back(i);
    }
  }
  return out;
}

}  // namespace

const std::vector<std::string>& job_types() {
  static const std::vector<std::string> types = {"prepare", "train", "quantize", "eval",
                                                 "bench",   "merge", "report",   "noop"};
  return types;
}

RowRange shard_range(int64_t rows, int64_t shards, int64_t k) {
  EVALSVC_CHECK(rows >= 0, InputError, "shard_range: rows must be >= 0, got {}", rows);
  EVALSVC_CHECK(shards >= 1, InputError, "shard_range: shards must be >= 1, got {}", shards);
  EVALSVC_CHECK(k >= 0 && k < shards, InputError, "shard_range: shard must be in [0, {}), got {}", shards, k);
  // The first `extra` shards take one row more, so sizes differ by at most one and shards stay in row order.
  const int64_t base = rows / shards, extra = rows % shards;
  const int64_t begin = k * base + std::min(k, extra);
  return {begin, begin + base + (k < extra ? 1 : 0)};
}

int64_t evaluated_rows(const ExperimentSpec& spec, int64_t test_rows) {
  return spec.data.test_limit > 0 ? std::min(test_rows, spec.data.test_limit) : test_rows;
}

std::vector<JobSpec> build_job_graph(int64_t experiment_id, const ExperimentSpec& spec, int64_t test_rows) {
  EVALSVC_CHECK(experiment_id >= 1, InputError, "build_job_graph: experiment id must be >= 1, got {}", experiment_id);
  EVALSVC_CHECK(test_rows >= 1, InputError,
                "build_job_graph: experiment {}: the test set must have at least one row, got {}", experiment_id,
                test_rows);
  EVALSVC_CHECK(!spec.variants.empty(), InputError, "build_job_graph: experiment {}: the spec lists no variants",
                experiment_id);
  const int64_t rows = evaluated_rows(spec, test_rows);
  const int64_t shards = spec.eval.shards;
  const json sj = spec.to_json();
  const std::string e = std::to_string(experiment_id);

  std::vector<JobSpec> graph;
  graph.reserve(4 + spec.variants.size() * static_cast<size_t>(shards + 2));
  const auto add = [&](std::string id, std::string type, std::string queue, std::vector<std::string> deps,
                       json params) -> JobSpec& {
    JobSpec j;
    j.id = std::move(id);
    j.type = std::move(type);
    j.queue = std::move(queue);
    j.depends_on = std::move(deps);
    j.params = std::move(params);
    j.max_attempts = spec.max_attempts;
    graph.push_back(std::move(j));
    return graph.back();
  };

  // prepare: the tokenized caches of train and test. `test_rows` lets the worker check that the test file
  // still has the rows the shards were cut for (a changed file must fail the job, not skew the shards).
  json prepare = sj["data"];
  prepare["seed"] = spec.train.seed;  // the validation split is seeded like training
  prepare["test_rows"] = rows;
  prepare["model_config"] = spec.model.config;
  const std::string prepare_id = e + ":prepare";
  add(prepare_id, "prepare", "cpu", {}, std::move(prepare));

  const std::string train_id = e + ":train";
  add(train_id, "train", spec.device, {prepare_id},
      {{"model", sj["model"]},
       {"train", sj["train"]},
       {"max_len", spec.data.max_len},
       {"validation_fraction", spec.data.validation_fraction},
       {"device", spec.device}});

  std::vector<std::string> merge_deps;
  for (const auto& v : spec.variants) {
    const json variant = v.to_json();
    const std::string quantize_id = fmt::format("{}:quantize:{}", e, v.name);
    add(quantize_id, "quantize", spec.device, {train_id},
        {{"variant", variant}, {"model", sj["model"]}, {"device", spec.device}})
        .variant = v.name;

    // The bench job comes before the eval shards: ready jobs are queued in graph order, and starting the
    // longest job of a variant first leaves the short shards to fill in at the end, so with several GPUs
    // fewer of them wait on one last bench (in the 2x H200 seed run a variant's 8 shards took 2-4 s in all,
    // its bench far longer).
    if (spec.bench.enabled) {
      json bench = sj["bench"];
      bench.erase("enabled");
      bench["variant"] = variant;
      bench["device"] = spec.device;
      const std::string bench_id = fmt::format("{}:bench:{}", e, v.name);
      add(bench_id, "bench", spec.device, {quantize_id}, std::move(bench)).variant = v.name;
      merge_deps.push_back(bench_id);
    }

    for (int64_t k = 0; k < shards; ++k) {
      const RowRange r = shard_range(rows, shards, k);
      JobSpec& job = add(fmt::format("{}:eval:{}:{}", e, v.name, k), "eval", spec.device, {quantize_id},
                         {{"variant", variant},
                          {"shard", k},
                          {"shards", shards},
                          {"row_begin", r.begin},
                          {"row_end", r.end},
                          {"rows", r.size()},
                          // An empty shard is a real job that writes an empty result, so merge sees all S.
                          {"empty", r.size() == 0},
                          {"batch_size", spec.eval.batch_size},
                          {"max_len", spec.data.max_len},
                          {"device", spec.device}});
      job.variant = v.name;
      job.shard = static_cast<int>(k);
      job.row_begin = r.begin;
      job.row_end = r.end;
      merge_deps.push_back(job.id);
    }
  }

  std::vector<std::string> names;
  for (const auto& v : spec.variants) names.push_back(v.name);
  const std::string merge_id = e + ":merge";
  add(merge_id, "merge", "cpu", std::move(merge_deps),
      {{"variants", names},
       {"baseline", spec.baseline},
       {"shards", shards},
       {"test_rows", rows},
       {"bench", spec.bench.enabled}});
  add(e + ":report", "report", "cpu", {merge_id},
      {{"name", spec.name}, {"variants", names}, {"baseline", spec.baseline}});
  return graph;
}

std::vector<std::string> ready_jobs(const std::vector<JobSpec>& graph, const std::map<std::string, JobState>& states) {
  const auto state_of = [&](const std::string& id) {
    auto it = states.find(id);
    return it == states.end() ? JobState::kPending : it->second;
  };
  std::vector<std::string> ready;
  for (const auto& job : graph) {
    if (state_of(job.id) != JobState::kPending) continue;
    const bool deps_done = std::all_of(job.depends_on.begin(), job.depends_on.end(),
                                       [&](const std::string& d) { return state_of(d) == JobState::kDone; });
    if (deps_done) ready.push_back(job.id);
  }
  return ready;
}

std::vector<std::string> dependants(const std::vector<JobSpec>& graph, std::string_view job_id) {
  const auto index = index_by_id(graph);
  auto start = index.find(job_id);
  EVALSVC_CHECK(start != index.end(), InputError, "dependants: job '{}' is not in the graph", job_id);
  const auto reverse = dependants_lists(graph, index);
  std::vector<bool> reached(graph.size(), false);
  std::deque<size_t> todo = {start->second};
  while (!todo.empty()) {
    const size_t at = todo.front();
    todo.pop_front();
    for (size_t next : reverse[at]) {
      if (!reached[next]) {
        reached[next] = true;
        todo.push_back(next);
      }
    }
  }
  std::vector<std::string> out;
  for (size_t i = 0; i < graph.size(); ++i) {
    // A cycle through job_id would mark it too; it is not its own dependant.
    if (reached[i] && i != start->second) out.push_back(graph[i].id);
  }
  return out;
}

std::vector<std::string> topological_order(const std::vector<JobSpec>& graph) {
  const auto index = index_by_id(graph);
  const auto reverse = dependants_lists(graph, index);
  std::vector<size_t> waiting(graph.size());
  std::deque<size_t> ready;
  for (size_t i = 0; i < graph.size(); ++i) {
    // Count distinct dependencies: a job listing one twice still needs it only once.
    waiting[i] = std::unordered_set<std::string_view>(graph[i].depends_on.begin(), graph[i].depends_on.end()).size();
    if (waiting[i] == 0) ready.push_back(i);
  }
  std::vector<bool> emitted(graph.size(), false);
  std::vector<std::string> order;
  order.reserve(graph.size());
  while (!ready.empty()) {
    const size_t at = ready.front();
    ready.pop_front();
    emitted[at] = true;
    order.push_back(graph[at].id);
    std::unordered_set<size_t> released;  // a duplicate edge must decrement once
    for (size_t next : reverse[at]) {
      if (released.insert(next).second && --waiting[next] == 0) ready.push_back(next);
    }
  }
  if (order.size() != graph.size()) {
    for (size_t i = 0; i < graph.size(); ++i) {
      if (!emitted[i]) {
        throw InputError(
            fmt::format("job graph: a dependency cycle: job '{}' (and {} other jobs) can never become "
                        "ready",
                        graph[i].id, graph.size() - order.size() - 1));
      }
    }
  }
  return order;
}

}  // namespace evalsvc::scheduler
