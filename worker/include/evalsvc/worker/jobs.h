#pragma once
// The executors of the job types a worker runs (scheduler/job_graph.h): prepare, train, quantize, eval,
// bench, merge. Each reads the experiment's stored spec from PostgreSQL, works from the shared artifact
// store (a folder every worker sees), writes results to PostgreSQL idempotently and returns a small JSON
// summary that the queue records. Artifacts are written atomically (temp + rename), so a retried job never
// sees half a file.
#include <filesystem>
#include <string>

#include "evalsvc/kernels/torch_compat.h"
#include "evalsvc/scheduler/worker_runtime.h"

namespace evalsvc::worker {

struct JobEnvironment {
  std::string database_url;
  std::filesystem::path artifacts;  ///< shared artifact store
  std::filesystem::path data;       ///< folder with ag_news/ and gpt2/
  torch::Device device{torch::kCPU};
  int threads = 0;                  ///< libtorch CPU threads (0 = libtorch default)
};

/// Adds prepare, train, quantize, eval, bench, merge and report to `registry` (and noop).
void register_job_executors(scheduler::ExecutorRegistry& registry, const JobEnvironment& env);

/// Where an experiment's artifacts live: <artifacts>/exp-<id>.
std::filesystem::path experiment_dir(const std::filesystem::path& artifacts, int64_t experiment_id);

}  // namespace evalsvc::worker
