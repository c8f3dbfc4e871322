#pragma once
// The worker process loop, independent of what jobs do: register with a heartbeat, claim one job at a time
// from the queues this worker serves, keep its lease alive from a background thread while an executor
// runs, finish the job with the lease token, and on SIGTERM/SIGINT finish the current job (or hand it back
// when the grace period runs out) and exit.
#include <atomic>
#include <chrono>
#include <cstddef>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <regex>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "evalsvc/scheduler/queue.h"

namespace evalsvc::scheduler {

/// What an executor may ask of the runtime while it runs. Thread-safe.
class JobContext {
 public:
  explicit JobContext(std::string worker_id) : worker_id_(std::move(worker_id)) {}

  /// Records progress (fraction 0..1 and a short message); the runtime writes it to the job hash
  /// (field `progress`) at its next lease renewal, so calling this often costs nothing.
  void report_progress(double fraction, const std::string& message = "");
  /// True once the result can no longer be recorded: the job was cancelled, its lease was taken over or
  /// lost, or the worker handed it back on shutdown. A cooperative executor returns early.
  bool cancelled() const { return cancelled_.load(); }
  /// True once the worker was asked to stop (SIGTERM/SIGINT): finish soon, the job still counts.
  bool stop_requested() const { return stop_requested_.load(); }
  const std::string& worker_id() const { return worker_id_; }

  /// The latest progress as JSON {fraction, message}, or nullopt if none was reported since the last call.
  std::optional<nlohmann::json> take_progress();
  /// Used by the runtime.
  void set_cancelled() { cancelled_ = true; }
  void set_stop_requested() { stop_requested_ = true; }

 private:
  std::string worker_id_;
  std::atomic<bool> cancelled_{false};
  std::atomic<bool> stop_requested_{false};
  mutable std::mutex mu_;
  std::optional<nlohmann::json> progress_;
};

/// Runs one job type: returns the result JSON, or throws (evalsvc::Error: retryable when transient()).
using Executor = std::function<nlohmann::json(const JobMessage&, JobContext&)>;
using ExecutorRegistry = std::map<std::string, Executor>;

/// Adds the `noop` job type: returns {"ok": true} at once. It exists only for benchmarks and tests of the
/// queue and this runtime (it measures the job system's own overhead); it does no evaluation work.
void register_noop_executor(ExecutorRegistry& registry);

struct WorkerOptions {
  std::string redis_url;                       ///< redis://[:password@]host:port[/db] or a socket path
  std::string prefix = "qbench";               ///< key prefix of the queue
  std::string worker_id;                       ///< empty: <host>-<pid>-<random>
  std::vector<std::string> queues = {"cpu"};   ///< served in priority order
  nlohmann::json info = nlohmann::json::object();  ///< registration (devices, GPU model/memory, version, ...)
  std::chrono::milliseconds lease{30000};
  std::chrono::milliseconds renew_interval{0};     ///< 0: lease / 3
  std::chrono::milliseconds heartbeat_ttl{15000};  ///< P:worker:<id> expires this long after the last beat
  std::chrono::milliseconds claim_wait{1000};      ///< one claim wait; bounds how fast a stop is noticed
  std::chrono::milliseconds shutdown_grace{60000}; ///< after SIGTERM the current job may run this long
  std::chrono::milliseconds stalled_check_interval{5000};  ///< requeue expired leases this often (0: never)
  std::optional<size_t> max_jobs;              ///< return after this many jobs (tests, benchmarks)
  /// After handing a job back at the end of the grace period, end the process with _exit(kExitHandedBack):
  /// an executor cannot be interrupted, and the job is safe. false: wait for the executor to return.
  bool exit_process_on_grace_timeout = true;
  /// Chaos testing only (QBENCH_FAULT_INJECT): a job whose id matches this ECMAScript regex fails on this
  /// worker with a retryable "fault injected" error instead of running, so the retry, backoff and
  /// blocked-dependant paths can be exercised on the real queue. Empty: off.
  std::string fail_jobs_matching;
};

/// Exit code of a worker process that handed its job back on shutdown.
inline constexpr int kExitHandedBack = 75;

struct WorkerStats {
  size_t completed = 0;    ///< jobs finished with complete
  size_t failed = 0;       ///< jobs finished with fail (executor threw, or unknown type)
  size_t rejected = 0;     ///< finishes the queue refused (lease lost, taken over, cancelled)
  size_t handed_back = 0;  ///< jobs released unfinished at shutdown
};

class WorkerRuntime {
 public:
  WorkerRuntime(WorkerOptions options, ExecutorRegistry executors);
  ~WorkerRuntime();
  WorkerRuntime(const WorkerRuntime&) = delete;
  WorkerRuntime& operator=(const WorkerRuntime&) = delete;

  /// Registers, serves jobs until a stop is requested or max_jobs were done, unregisters. Redis outages
  /// are ridden out (logged, retried with backoff); RedisError only if the first connect fails.
  WorkerStats run();
  /// Asks run() to finish the current job and return. Thread-safe.
  void request_stop();
  /// SIGTERM/SIGINT request a stop of every WorkerRuntime in this process (async-signal-safe flag).
  static void install_signal_handlers();
  /// Whether a stop was requested (by request_stop or a signal).
  bool stopping() const;

  const std::string& worker_id() const { return options_.worker_id; }
  /// The registration JSON written to P:workers (the caller's info plus id, host, pid, queues, started_ms).
  const nlohmann::json& registration() const { return registration_; }

 private:
  struct Current;
  void keeper_loop();
  void heartbeat(Queue& q);

  WorkerOptions options_;
  ExecutorRegistry executors_;
  nlohmann::json registration_;
  std::optional<std::regex> fault_;  ///< compiled WorkerOptions::fail_jobs_matching
  std::atomic<bool> stop_{false};
  std::atomic<bool> done_{false};
  std::mutex mu_;
  std::shared_ptr<Current> current_;  // the job being run, guarded by mu_
};

}  // namespace evalsvc::scheduler
