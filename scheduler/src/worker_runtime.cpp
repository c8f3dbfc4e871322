#include "evalsvc/scheduler/worker_runtime.h"

#include <signal.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cmath>
#include <condition_variable>
#include <random>
#include <regex>
#include <thread>

#include "evalsvc/common/paths.h"

namespace evalsvc::scheduler {

using nlohmann::json;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace {

// Set from the signal handler: a lock-free atomic store is async-signal-safe.
std::atomic<bool> g_signal_stop{false};
static_assert(std::atomic<bool>::is_always_lock_free);

extern "C" void on_stop_signal(int /*sig*/) { g_signal_stop.store(true); }

std::string host_name() {
  char buf[256] = {0};
  if (::gethostname(buf, sizeof(buf) - 1) != 0) return "unknown-host";
  return buf;
}

int64_t wall_ms() {
  return std::chrono::duration_cast<milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// Sleeps up to `d` but returns early once `stop()` says so, so shutdown is not delayed by backoff.
template <typename Stop>
void sleep_unless(milliseconds d, Stop stop) {
  const auto until = Clock::now() + d;
  while (Clock::now() < until && !stop()) std::this_thread::sleep_for(std::min(d, milliseconds(20)));
}

}  // namespace

// ---------------------------------------------------------------------------------------------------

void JobContext::report_progress(double fraction, const std::string& message) {
  if (!std::isfinite(fraction)) fraction = 0.0;
  fraction = std::clamp(fraction, 0.0, 1.0);
  std::lock_guard<std::mutex> lock(mu_);
  progress_ = json{{"fraction", fraction}, {"message", message}};
}

std::optional<json> JobContext::take_progress() {
  std::lock_guard<std::mutex> lock(mu_);
  std::optional<json> out = std::move(progress_);
  progress_.reset();
  return out;
}

void register_noop_executor(ExecutorRegistry& registry) {
  registry["noop"] = [](const JobMessage&, JobContext&) { return json{{"ok", true}}; };
}

// ---------------------------------------------------------------------------------------------------

struct WorkerRuntime::Current {
  Lease lease;                      // deadline updated by the keeper (under WorkerRuntime::mu_)
  std::shared_ptr<JobContext> ctx;
  Clock::time_point next_renew;     // keeper-only
  bool lost = false;                // renew was refused (under WorkerRuntime::mu_)
  // Finishing and handing back race (executor returns just as the grace period ends): whoever takes
  // finish_mu first decides, the other sees the flag and does nothing.
  std::mutex finish_mu;
  bool finished = false;
  bool handed_back = false;
};

WorkerRuntime::WorkerRuntime(WorkerOptions options, ExecutorRegistry executors)
    : options_(std::move(options)), executors_(std::move(executors)) {
  if (options_.queues.empty()) throw InputError("worker: no queues to serve");
  for (const auto& q : options_.queues) validate_queue_name(q);
  if (options_.lease < milliseconds(100)) {
    throw InputError(fmt::format("worker: lease {} ms is too short (>= 100 ms)", options_.lease.count()));
  }
  if (options_.renew_interval.count() <= 0) options_.renew_interval = options_.lease / 3;
  if (options_.renew_interval >= options_.lease) {
    throw InputError(fmt::format("worker: renew interval {} ms must be shorter than the lease {} ms",
                                 options_.renew_interval.count(), options_.lease.count()));
  }
  const std::string host = host_name();
  if (options_.worker_id.empty()) {
    std::random_device rd;
    options_.worker_id = fmt::format("{}-{}-{:04x}", host, ::getpid(), rd() & 0xffff);
  }
  try {
    validate_job_id(options_.worker_id);  // same character rules: it becomes part of a key
  } catch (const InputError&) {
    throw InputError(fmt::format("worker id '{}' is invalid (expected 1..200 printable characters, no spaces)",
                                 options_.worker_id));
  }
  if (!options_.fail_jobs_matching.empty()) {
    try {
      fault_ = std::regex(options_.fail_jobs_matching, std::regex::ECMAScript);
    } catch (const std::regex_error& e) {
      throw InputError(fmt::format("worker: fault-injection pattern '{}' is not a valid regex: {}",
                                   options_.fail_jobs_matching, e.what()));
    }
    spdlog::warn("worker: fault injection on: jobs matching '{}' will fail", options_.fail_jobs_matching);
  }
  registration_ = options_.info.is_object() ? options_.info : json{{"info", options_.info}};
  registration_["id"] = options_.worker_id;
  if (!registration_.contains("host")) registration_["host"] = host;
  registration_["pid"] = static_cast<int64_t>(::getpid());
  registration_["queues"] = options_.queues;
  registration_["started_ms"] = wall_ms();
  if (!registration_.contains("version")) registration_["version"] = evalsvc::version();
}

WorkerRuntime::~WorkerRuntime() = default;

void WorkerRuntime::install_signal_handlers() {
  struct sigaction sa {};
  sa.sa_handler = &on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART: a blocking read returns EINTR and the loop notices the stop
  ::sigaction(SIGTERM, &sa, nullptr);
  ::sigaction(SIGINT, &sa, nullptr);
}

void WorkerRuntime::request_stop() { stop_ = true; }

bool WorkerRuntime::stopping() const { return stop_.load() || g_signal_stop.load(); }

void WorkerRuntime::heartbeat(Queue& q) {
  json reg = registration_;
  reg["beat_ms"] = wall_ms();
  {
    std::lock_guard<std::mutex> lock(mu_);
    reg["job"] = current_ ? json(current_->lease.job.id) : json(nullptr);
  }
  const std::string ttl = std::to_string(options_.heartbeat_ttl.count());
  auto replies = q.redis().pipeline({{"HSET", q.prefix() + ":workers", options_.worker_id, reg.dump()},
                                     {"SET", q.prefix() + ":worker:" + options_.worker_id, std::to_string(wall_ms()), "PX", ttl}});
  for (const auto& r : replies) {
    EVALSVC_REDIS_CHECK(!r.is_error(), "heartbeat of worker {}: {}", options_.worker_id, r.str());
  }
}

void WorkerRuntime::keeper_loop() {
  std::unique_ptr<RedisClient> redis;
  std::unique_ptr<Queue> queue;
  const milliseconds beat_every = std::max(milliseconds(10), options_.heartbeat_ttl / 3);
  auto next_beat = Clock::now() + beat_every;  // run() sent the first beat
  auto next_stalled = Clock::now() + options_.stalled_check_interval;
  std::optional<Clock::time_point> grace_deadline;
  const milliseconds tick = std::clamp(std::min(options_.renew_interval, beat_every) / 4, milliseconds(5), milliseconds(50));
  while (!done_.load()) {
    try {
      if (!queue) {
        redis = std::make_unique<RedisClient>(options_.redis_url);
        queue = std::make_unique<Queue>(*redis, options_.prefix);
      }
      auto now = Clock::now();
      std::shared_ptr<Current> cur;
      {
        std::lock_guard<std::mutex> lock(mu_);
        cur = current_;
      }
      if (cur) {
        if (stopping()) {
          cur->ctx->set_stop_requested();
          if (!grace_deadline) grace_deadline = now + options_.shutdown_grace;
        }
        Lease l;
        bool lost = false;
        {
          std::lock_guard<std::mutex> lock(mu_);
          l = cur->lease;
          lost = cur->lost;
        }
        if (!lost && now >= cur->next_renew) {
          FinishResult r = queue->renew(l, options_.lease);
          std::lock_guard<std::mutex> lock(mu_);
          if (r == FinishResult::kOk) {
            cur->lease.deadline_ms = l.deadline_ms;
          } else if (current_ == cur) {  // after the job finished a refusal is expected, not news
            cur->lost = true;
            cur->ctx->set_cancelled();
            spdlog::warn("worker {}: lease on job {} lost ({}); its result will not be recorded", options_.worker_id,
                         l.job.id, to_string(r));
          }
          cur->next_renew = now + options_.renew_interval;
        }
        if (auto p = cur->ctx->take_progress()) {
          redis->command({"HSET", queue->job_key(l.job.id), "progress", p->dump()}, CallOptions{.idempotent = true});
        }
        if (grace_deadline && now >= *grace_deadline) {
          std::lock_guard<std::mutex> fl(cur->finish_mu);
          if (!cur->finished && !cur->handed_back) {
            FinishResult r = lost ? FinishResult::kNotActive : queue->release(l);
            cur->handed_back = true;
            cur->ctx->set_cancelled();
            spdlog::warn("worker {}: shutdown grace of {} ms passed; job {} handed back ({})", options_.worker_id,
                         options_.shutdown_grace.count(), l.job.id, to_string(r));
            if (options_.exit_process_on_grace_timeout) {
              try {
                redis->pipeline({{"HDEL", queue->prefix() + ":workers", options_.worker_id},
                                 {"DEL", queue->prefix() + ":worker:" + options_.worker_id}});
              } catch (const std::exception&) {
                // The heartbeat key expires on its own.
              }
              std::_Exit(kExitHandedBack);
            }
          }
        }
      }
      if (now >= next_beat) {
        heartbeat(*queue);
        next_beat = now + beat_every;
      }
      if (options_.stalled_check_interval.count() > 0 && now >= next_stalled) {
        for (const auto& s : queue->requeue_stalled()) {
          spdlog::warn("worker {}: job {} had an expired lease: {}", options_.worker_id, s.id, s.outcome);
        }
        next_stalled = now + options_.stalled_check_interval;
      }
    } catch (const Error& e) {
      spdlog::warn("worker {} lease keeper: {}", options_.worker_id, e.what());
      queue.reset();
      redis.reset();
      sleep_unless(milliseconds(200), [this] { return done_.load(); });
      continue;
    }
    std::this_thread::sleep_for(tick);
  }
}

WorkerStats WorkerRuntime::run() {
  RedisClient redis(options_.redis_url);
  Queue queue(redis, options_.prefix);
  heartbeat(queue);
  spdlog::info("worker {} serving queues [{}] on {}", options_.worker_id, fmt::join(options_.queues, ","),
               redis.describe());
  done_ = false;
  std::thread keeper([this] { keeper_loop(); });

  WorkerStats stats;
  size_t jobs = 0;
  milliseconds backoff(100);
  auto stop_now = [this] { return stopping(); };
  while (!stopping() && !(options_.max_jobs && jobs >= *options_.max_jobs)) {
    std::optional<Lease> lease;
    try {
      lease = queue.claim(options_.queues, options_.worker_id, options_.lease, options_.claim_wait);
      backoff = milliseconds(100);
    } catch (const RedisError& e) {
      spdlog::warn("worker {}: claim failed: {}; retrying in {} ms", options_.worker_id, e.what(), backoff.count());
      sleep_unless(backoff, stop_now);
      backoff = std::min(backoff * 2, milliseconds(2000));
      continue;
    }
    if (!lease) continue;

    auto cur = std::make_shared<Current>();
    cur->lease = *lease;
    cur->ctx = std::make_shared<JobContext>(options_.worker_id);
    cur->next_renew = Clock::now() + options_.renew_interval;
    if (stopping()) cur->ctx->set_stop_requested();
    {
      std::lock_guard<std::mutex> lock(mu_);
      current_ = cur;
    }
    const JobMessage& job = cur->lease.job;
    json result;
    std::optional<std::string> error;
    bool retryable = false;
    auto it = executors_.find(job.type);
    if (fault_ && std::regex_search(job.id, *fault_)) {
      error = fmt::format("fault injected by worker {} (QBENCH_FAULT_INJECT='{}' matches job {})", options_.worker_id,
                          options_.fail_jobs_matching, job.id);
      retryable = true;
    } else if (it == executors_.end()) {
      std::vector<std::string> known;
      for (const auto& [name, fn] : executors_) known.push_back(name);
      error = fmt::format("worker {} has no executor for job type '{}' (it runs: {})", options_.worker_id, job.type,
                          fmt::join(known, ", "));
    } else {
      try {
        result = it->second(job, *cur->ctx);
      } catch (const Error& e) {
        error = e.what();
        retryable = e.transient();
      } catch (const std::exception& e) {
        error = e.what();
      } catch (...) {
        error = "executor threw a non-standard exception";
      }
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      current_.reset();
    }
    ++jobs;

    std::lock_guard<std::mutex> fl(cur->finish_mu);
    if (cur->handed_back) {
      ++stats.handed_back;
      continue;
    }
    Lease l;
    {
      std::lock_guard<std::mutex> lock(mu_);
      l = cur->lease;
    }
    std::optional<FinishResult> outcome;
    for (int attempt = 1; attempt <= 5 && !outcome; ++attempt) {
      try {
        outcome = error ? queue.fail(l, *error, retryable) : queue.complete(l, result);
      } catch (const RedisError& e) {
        spdlog::warn("worker {}: finishing job {} failed (try {} of 5): {}", options_.worker_id, job.id, attempt, e.what());
        std::this_thread::sleep_for(milliseconds(200) * attempt);
      }
    }
    cur->finished = true;
    if (!outcome) {
      ++stats.rejected;
      spdlog::error("worker {}: could not record the outcome of job {}; its lease will expire and it will be redelivered",
                    options_.worker_id, job.id);
    } else if (*outcome != FinishResult::kOk) {
      ++stats.rejected;
      spdlog::warn("worker {}: finish of job {} attempt {} refused: {}", options_.worker_id, job.id, job.attempt,
                   to_string(*outcome));
    } else if (error) {
      ++stats.failed;
      spdlog::warn("worker {}: job {} ({}) failed: {}", options_.worker_id, job.id, job.type, *error);
    } else {
      ++stats.completed;
    }
  }

  done_ = true;
  keeper.join();
  try {
    redis.pipeline({{"HDEL", options_.prefix + ":workers", options_.worker_id},
                    {"DEL", options_.prefix + ":worker:" + options_.worker_id}});
  } catch (const RedisError& e) {
    spdlog::warn("worker {}: unregister failed (the heartbeat key expires on its own): {}", options_.worker_id, e.what());
  }
  spdlog::info("worker {} stopped: {} completed, {} failed, {} refused, {} handed back", options_.worker_id,
               stats.completed, stats.failed, stats.rejected, stats.handed_back);
  return stats;
}

}  // namespace evalsvc::scheduler
