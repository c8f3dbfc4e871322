#pragma once
// The job graph of one experiment: what the scheduler queues, in which order, on which queue.
//
//   E:prepare -> E:train -> E:quantize:<v> --> E:eval:<v>:<k> (k = 0..S-1) --+--> E:merge -> E:report
//                           (one per variant) +-> E:bench:<v> (bench.enabled) -+
//
// prepare tokenizes and caches train and test; train fine-tunes; quantize:<v> builds variant v from the
// trained weights; eval:<v>:<k> evaluates test rows [row_begin, row_end) (shard k of S, contiguous, sizes
// differ by at most 1); bench:<v> measures latency and throughput; merge waits for every eval and bench job
// and computes the metrics; report renders them. Every job's `params` carry what its worker needs besides
// the experiment's stored spec, so a message plus the spec is enough to run it.
// Free of libtorch and of any server: the graph is pure data, tested without Redis or PostgreSQL.
#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "evalsvc/common/experiment_spec.h"
#include "evalsvc/scheduler/store.h"

namespace evalsvc::scheduler {

/// The job types, in pipeline order, plus "noop" (the queue's test job; never produced by build_job_graph).
const std::vector<std::string>& job_types();

/// One node of the graph. Field names match the `jobs` table and the queue's JobMessage.
struct JobSpec {
  std::string id;                       ///< "<experiment>:<type>[:<variant>[:<shard>]]", e.g. "7:eval:nf4:3"
  std::string type;                     ///< prepare | train | quantize | eval | bench | merge | report | noop
  std::string variant;                  ///< the variant name for quantize/eval/bench; empty otherwise
  int shard = -1;                       ///< eval: the shard index k in [0, S); -1 otherwise
  int64_t row_begin = 0, row_end = 0;   ///< eval: test rows [row_begin, row_end); may be empty (S > rows)
  std::string queue;                    ///< "cpu" for prepare/merge/report, else the spec's device
  std::vector<std::string> depends_on;  ///< ids of the jobs that must be done first
  nlohmann::json params = nlohmann::json::object();  ///< what the worker needs (see docs/spec.md)
  int max_attempts = 1;

  bool operator==(const JobSpec&) const = default;
};

/// Rows [begin, end) of shard `k` of `shards` over `rows` rows: contiguous, in order, the first rows % shards
/// shards one row longer. An empty range when shards > rows. InputError for rows < 0, shards < 1 or k outside
/// [0, shards).
struct RowRange {
  int64_t begin = 0, end = 0;
  int64_t size() const { return end - begin; }
};
RowRange shard_range(int64_t rows, int64_t shards, int64_t k);

/// Expands `spec` for experiment `experiment_id` into its jobs, in a topological order (every job after the
/// jobs it depends on). `test_rows` is the number of rows in the test file; the spec's data.test_limit, when
/// set, caps it. InputError for experiment_id < 1 or test_rows < 1.
std::vector<JobSpec> build_job_graph(int64_t experiment_id, const ExperimentSpec& spec, int64_t test_rows);

/// The rows the evaluation covers: test_rows capped by spec.data.test_limit (0 = no cap).
int64_t evaluated_rows(const ExperimentSpec& spec, int64_t test_rows);

/// Ids of the jobs that can be queued now, in graph order: jobs whose state is kPending (a job missing from
/// `states` counts as pending) and whose every dependency is kDone.
std::vector<std::string> ready_jobs(const std::vector<JobSpec>& graph, const std::map<std::string, JobState>& states);

/// Every job that depends on `job_id` directly or through others (not `job_id` itself), in graph order: what
/// to block when `job_id` fails for good. InputError when `job_id` is not in the graph.
std::vector<std::string> dependants(const std::vector<JobSpec>& graph, std::string_view job_id);

/// The ids in an order where every job comes after its dependencies (Kahn's algorithm; ties keep graph
/// order). InputError naming the job for an empty or duplicate id, a dependency on an unknown job or on
/// itself, or a cycle. For a graph read back from storage, this is the check that it is still a DAG.
std::vector<std::string> topological_order(const std::vector<JobSpec>& graph);

}  // namespace evalsvc::scheduler
