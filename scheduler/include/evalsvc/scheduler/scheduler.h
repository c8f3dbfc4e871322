#pragma once
// The scheduler: turns experiments into queued jobs and keeps PostgreSQL (the durable record) and Redis (the
// queue) in step. It is restart-safe by construction: every decision is re-derived from PostgreSQL's job table
// and the queue's event stream (read from the last processed id, kept in Redis), so a scheduler killed at any
// point and started again carries on; processing an event twice changes nothing.
//
// Job life: pending (in PostgreSQL) -> queued (enqueued on Redis when every dependency is done) -> running
// (the worker says so when it starts) -> done | failed. A failed attempt that may succeed again goes back to
// pending after an exponential backoff, up to max_attempts; a job failed for good blocks its dependants.
// merge and report are finalizers: they run once every job before them has ended, done or not, so one
// failed variant never hides the results of the others.
#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "evalsvc/common/experiment_spec.h"
#include "evalsvc/scheduler/job_graph.h"
#include "evalsvc/scheduler/queue.h"
#include "evalsvc/scheduler/store.h"

namespace evalsvc::scheduler {

struct SchedulerOptions {
  std::chrono::milliseconds tick{20};             ///< event wait per loop iteration
  std::chrono::milliseconds stall_check{1000};    ///< requeue expired leases this often
  std::chrono::milliseconds backoff_base{500};    ///< first retry delay; doubles per attempt
  std::chrono::milliseconds backoff_max{30000};
};

/// Validates nothing (the spec is already parsed), stores the experiment, its variants and its job graph in
/// PostgreSQL (all jobs pending) and queues the jobs that are ready. Returns the experiment id.
int64_t submit_experiment(Store& store, Queue& queue, const ExperimentSpec& spec, int64_t test_rows);

/// Cancels every open job of the experiment (queue and database); the experiment ends as cancelled.
void cancel_experiment(Store& store, Queue& queue, int64_t experiment_id);

/// Puts the failed, blocked and cancelled jobs of an experiment back to pending (attempts reset) and
/// reopens it; the scheduler queues them again.
int retry_experiment(Store& store, Queue& queue, int64_t experiment_id);

class Scheduler {
 public:
  Scheduler(Store& store, Queue& queue, SchedulerOptions options = {});

  /// One iteration: process queue events, requeue stalled leases (when due), queue ready jobs, finish
  /// experiments whose jobs all ended. Returns the number of state changes made.
  int step();
  /// Loops step() until `stop` becomes true (driven by a Boost.Asio timer, with SIGINT/SIGTERM handled).
  void run(std::atomic<bool>& stop);

 private:
  int process_events();
  int reconcile();
  void fail_for_good(const JobRecord& job, const std::string& error, std::optional<int> attempt = std::nullopt);
  /// Upserts live workers (Redis registrations with a fresh heartbeat) into the workers table.
  void mirror_workers();

  Store& store_;
  Queue& queue_;
  SchedulerOptions options_;
  std::string last_event_id_;
  std::chrono::steady_clock::time_point next_stall_check_{};
  std::map<std::string, std::chrono::steady_clock::time_point> not_before_;  // backoff of retried jobs
  std::set<std::string> seen_workers_;  // workers already upserted; later beats only touch last_seen
};

}  // namespace evalsvc::scheduler
