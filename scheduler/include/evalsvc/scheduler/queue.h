#pragma once
// The Redis job queue (STYLE item 10, after bullmq): every state move is one Lua script
// (scheduler/lua/<verb>-<numKeys>.lua, compiled into the library), so each move is atomic on the server.
//
// Keys, for prefix P (default "qbench"):
//   P:job:<id>        hash: data (JSON payload), queue, state, attempt, max_attempts, token, worker,
//                     enqueued_ms, claimed_ms, finished_ms, result, error, retryable, progress
//   P:job:<id>:lock   the current lease token, with the lease as TTL
//   P:wait:<queue>    list of waiting job ids (LPUSH to enqueue, RPOP to claim: FIFO)
//   P:wake:<queue>    wake tokens; idle workers BLPOP them instead of polling
//   P:active          sorted set of leased job ids scored by lease deadline (ms, server clock)
//   P:events          stream of completed / failed / requeued / cancelled / dead events for the scheduler
//   P:dead            list of dead letters (JSON: id, queue, reason, data, attempt, at_ms)
//   P:queues          set of queue names that ever had a job
// States: waiting -> active -> completed | failed | dead; waiting|active -> cancelled;
// active -> waiting (lease expired: requeue-stalled, or handed back: release).
// See docs/queue.md.
#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "evalsvc/scheduler/redis.h"

namespace evalsvc::scheduler {

/// One job as it travels through the queue. `queue` is where it waits ("cpu", "cuda"); `attempt` counts
/// claims (1 on the first claim) and is kept by Redis, not by the payload.
struct JobMessage {
  std::string id;
  int64_t experiment_id = 0;
  std::string type;
  nlohmann::json params = nlohmann::json::object();
  int attempt = 0;
  int max_attempts = 1;
  std::string queue = "cpu";
};

/// The payload stored in the job hash: {id, experiment_id, type, params, attempt, max_attempts}.
nlohmann::json to_json(const JobMessage& job);

/// Validates a JobMessage read from Redis. Malformed JSON, a missing field or a field of the wrong type
/// (or an `id` that differs from `job_id`) -> FormatError naming the job id and the field.
JobMessage parse_job_message(std::string_view job_id, std::string_view payload, std::string queue);

/// A claimed job: the worker holds it until `deadline_ms` (server clock) unless it renews.
struct Lease {
  JobMessage job;
  std::string token;      ///< random; required by renew/complete/fail/release
  std::string worker_id;
  int64_t deadline_ms = 0;
};

/// Outcome of a move that needs the lease token.
enum class FinishResult {
  kOk,
  kNotFound,      ///< no such job
  kLeaseExpired,  ///< the lease expired and the job went back to wait (late finish)
  kTakenOver,     ///< another claim holds the job now (late finish from a worker whose lease was taken over)
  kNotActive,     ///< the job is no longer active: completed, failed, cancelled or dead
};
const char* to_string(FinishResult r);

/// Outcome of enqueue.
enum class EnqueueResult {
  kEnqueued,        ///< a new job
  kReenqueued,      ///< a finished job queued again (a retry); its attempt counter continues
  kAlreadyPending,  ///< the job was already waiting or active; nothing changed
};

/// One entry of the events stream.
struct Event {
  std::string id;      ///< stream entry id ("<ms>-<seq>"); pass the last one seen to read_events
  std::string type;    ///< completed | failed | requeued | cancelled | dead
  std::string job_id;
  int attempt = 0;
  std::string queue;
  std::string worker;
  std::map<std::string, std::string> fields;  ///< every field as written (result, error, retryable, ...)

  /// A field, or nullopt when the event has none.
  std::optional<std::string> field(const std::string& name) const;
};

/// A job requeue_stalled acted on.
struct StalledJob {
  std::string id;
  std::string outcome;  ///< "requeued", or "failed" when its attempts were used up
};

/// One dead letter.
struct DeadLetter {
  std::string id;
  std::string queue;
  std::string reason;
  std::string data;  ///< the raw payload, kept for inspection
};

struct QueueStats {
  std::map<std::string, int64_t> waiting;  ///< wait-list length per queue
  int64_t active = 0;
  int64_t dead = 0;
  int64_t events = 0;  ///< entries in the events stream (not yet trimmed)
};

/// The queue protocol over one RedisClient (so, like it, one Queue per thread).
class Queue {
 public:
  explicit Queue(RedisClient& redis, std::string prefix = "qbench");

  /// Puts `job` on the wait list of `job.queue` and wakes one idle worker. InputError for an invalid id
  /// or queue name or max_attempts < 1.
  EnqueueResult enqueue(const JobMessage& job);

  /// Leases the next job from the first of `queues` that has one; waits up to `wait` (blocking on the
  /// wake lists, not polling). Malformed messages met on the way go to the dead-letter list and the claim
  /// goes on. nullopt when nothing came within `wait`.
  std::optional<Lease> claim(const std::vector<std::string>& queues, const std::string& worker_id,
                             std::chrono::milliseconds lease, std::chrono::milliseconds wait);

  /// Extends the lease to now + `lease`; on kOk updates `l.deadline_ms`.
  FinishResult renew(Lease& l, std::chrono::milliseconds lease);
  /// Marks the job completed with `result` and emits a "completed" event.
  FinishResult complete(const Lease& l, const nlohmann::json& result);
  /// Marks the job failed with `error` and emits a "failed" event; the scheduler decides on a retry.
  FinishResult fail(const Lease& l, const std::string& error, bool retryable);
  /// Hands the job back unfinished (front of its wait list, attempt given back).
  FinishResult release(const Lease& l);
  /// Moves a leased job with a malformed message to the dead-letter list with `reason`.
  FinishResult dead_letter(const Lease& l, const std::string& reason);

  /// Jobs whose lease expired go back to wait (or fail when out of attempts); returns what it did.
  std::vector<StalledJob> requeue_stalled(size_t max_jobs = 1000);
  /// Cancels a waiting or active job; false when it was already finished or does not exist.
  bool cancel(const std::string& job_id);

  /// Events after `last_id` ("0" for all), at most `max`, waiting up to `block` for one (0: no wait).
  std::vector<Event> read_events(const std::string& last_id, size_t max, std::chrono::milliseconds block);
  /// Drops events with ids below `min_id` (after the scheduler has recorded them).
  void trim_events(const std::string& min_id);

  QueueStats stats();
  /// The newest `max` dead letters.
  std::vector<DeadLetter> dead_letters(size_t max = 100);
  /// All fields of a job hash; nullopt when there is no such job.
  std::optional<std::map<std::string, std::string>> job_fields(const std::string& job_id);

  std::string job_key(std::string_view id) const { return prefix_ + ":job:" + std::string(id); }
  std::string lock_key(std::string_view id) const { return job_key(id) + ":lock"; }
  std::string wait_key(std::string_view queue) const { return prefix_ + ":wait:" + std::string(queue); }
  std::string wake_key(std::string_view queue) const { return prefix_ + ":wake:" + std::string(queue); }
  std::string active_key() const { return prefix_ + ":active"; }
  std::string events_key() const { return prefix_ + ":events"; }
  std::string dead_key() const { return prefix_ + ":dead"; }
  std::string queues_key() const { return prefix_ + ":queues"; }
  const std::string& prefix() const { return prefix_; }
  RedisClient& redis() { return redis_; }

 private:
  FinishResult finish_code(long long code, const char* script, const Lease& l) const;

  RedisClient& redis_;
  std::string prefix_;
  // Queues whose wait list this Queue last saw empty: the next claim with a wait goes straight to the
  // wake lists (any enqueue since then left a token there), saving a round trip per idle cycle.
  std::map<std::string, bool> seen_empty_;
  RedisScript enqueue_, claim_, renew_, complete_, fail_, release_, dead_letter_, requeue_stalled_, cancel_;
};

/// The source of an embedded Lua script by file name ("claim-5.lua"); InternalError if absent.
const std::string& lua_script_source(const std::string& name);
/// Names of all embedded scripts.
std::vector<std::string> lua_script_names();

/// Throws InputError unless `queue` is a valid queue name ([A-Za-z0-9_.-]{1,64}).
void validate_queue_name(std::string_view queue);
/// Throws InputError unless `id` is a valid job id (1..200 printable characters, no spaces).
void validate_job_id(std::string_view id);

}  // namespace evalsvc::scheduler
