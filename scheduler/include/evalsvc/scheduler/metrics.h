#pragma once
// What the scheduler's /metrics endpoint reports, gathered from the two places that hold the truth: Redis
// (the live queue: waiting and leased jobs, dead letters, worker registrations and heartbeats) and
// PostgreSQL (the durable job table: jobs by type and state, retries, durations, experiments). Nothing is
// counted in process memory, so every scheduler replica, and a restarted one, reports the same figures.
//
// The text is the Prometheus exposition format 0.0.4: for every family a `# HELP` and a `# TYPE` line, then
// its samples `name{label="value",...} number`. Families whose source is unreachable are left out and
// `qbench_dependency_up{dependency="redis"|"postgres"}` reads 0, so a scrape still says what is wrong.
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "evalsvc/scheduler/queue.h"
#include "evalsvc/scheduler/store.h"

namespace evalsvc::scheduler {

/// One registered worker, as the scheduler sees it in Redis.
struct WorkerState {
  std::string id;
  bool live = false;               ///< its heartbeat key has not expired
  std::string device;              ///< e.g. "NVIDIA H100 80GB HBM3" or "CPU (...)"; "" when not registered
  std::vector<std::string> queues;
  std::optional<std::string> job;  ///< the job it runs now; nullopt when idle
};

/// The registered workers (P:workers) and whether each one's heartbeat (P:worker:<id>) is alive, by id.
/// A registration that is not JSON is reported with an empty device, not skipped.
std::vector<WorkerState> list_worker_states(Queue& queue);

/// Upper bounds (seconds) of the job duration histogram: 0.1 s .. 2 h.
const std::vector<double>& default_duration_bounds();

/// Everything one scrape reports. Each half is filled by its collector; nullopt means "not reachable".
struct ServiceMetrics {
  std::optional<std::string> redis_error;     ///< set when Redis did not answer (message without secrets)
  std::optional<std::string> postgres_error;  ///< set when PostgreSQL did not answer
  std::optional<QueueStats> queue;
  std::optional<std::vector<WorkerState>> workers;
  std::optional<ServiceStats> jobs;
  std::vector<double> duration_bounds = default_duration_bounds();
};

/// Fills the Redis half of `m` (queue stats, workers); on failure records the error in m.redis_error.
void collect_queue_metrics(Queue& queue, ServiceMetrics& m);
/// Fills the PostgreSQL half of `m`; on failure records the error in m.postgres_error.
void collect_store_metrics(Store& store, ServiceMetrics& m);

/// The Prometheus text exposition of `m` (ends with a newline).
std::string render_prometheus(const ServiceMetrics& m);

/// A label value escaped for the text format: backslash, double quote and newline become \\, \" and \n.
std::string escape_label_value(std::string_view v);

/// The Content-Type of render_prometheus' output.
inline constexpr const char* kPrometheusContentType = "text/plain; version=0.0.4; charset=utf-8";

}  // namespace evalsvc::scheduler
