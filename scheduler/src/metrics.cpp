#include "evalsvc/scheduler/metrics.h"

#include <cmath>
#include <set>

#include <nlohmann/json.hpp>

#include "evalsvc/common/error.h"
#include "evalsvc/common/log.h"
#include "evalsvc/scheduler/redis.h"

namespace evalsvc::scheduler {

namespace {

const JobState kJobStates[] = {JobState::kPending, JobState::kQueued,    JobState::kRunning, JobState::kDone,
                               JobState::kFailed,  JobState::kCancelled, JobState::kBlocked};
const RunState kRunStates[] = {RunState::kPending, RunState::kRunning,   RunState::kDone,
                               RunState::kFailed,  RunState::kCancelled, RunState::kBlocked};

/// A sample value: integers exactly, other numbers in the shortest form that reads back the same, and the
/// spellings the format reserves for the special values.
std::string format_value(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  return fmt::format("{}", v);
}

/// Appends one metric family to the exposition text.
class Family {
 public:
  Family(std::string& out, std::string name, const char* type, const char* help) : out_(out), name_(std::move(name)) {
    out_ += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name_, help, name_, type);
  }
  /// One sample; `suffix` is appended to the family name (_bucket, _sum, _count for histograms).
  void sample(const std::vector<std::pair<std::string, std::string>>& labels, double value, std::string_view suffix = "") {
    out_ += name_;
    out_ += suffix;
    if (!labels.empty()) {
      out_ += '{';
      for (size_t i = 0; i < labels.size(); ++i) {
        out_ += fmt::format("{}{}=\"{}\"", i ? "," : "", labels[i].first, escape_label_value(labels[i].second));
      }
      out_ += '}';
    }
    out_ += ' ';
    out_ += format_value(value);
    out_ += '\n';
  }

 private:
  std::string& out_;
  std::string name_;
};

std::string join(const std::vector<std::string>& v, const char* sep) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? sep : "") + v[i];
  return s;
}

}  // namespace

std::string escape_label_value(std::string_view v) {
  std::string o;
  o.reserve(v.size());
  for (char c : v) {
    if (c == '\\') {
      o += "\\\\";
    } else if (c == '"') {
      o += "\\\"";
    } else if (c == '\n') {
      o += "\\n";
    } else {
      o += c;
    }
  }
  return o;
}

const std::vector<double>& default_duration_bounds() {
  // Jobs range from sub-second (merge, report on small sets) to an hour or more (training on a GPU).
  static const std::vector<double> b = {0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200};
  return b;
}

std::vector<WorkerState> list_worker_states(Queue& queue) {
  auto& redis = queue.redis();
  Reply all = redis.command({"HGETALL", queue.prefix() + ":workers"}, CallOptions{.idempotent = true});
  std::vector<WorkerState> out;
  std::vector<std::vector<std::string>> exists;
  for (size_t i = 0; i + 1 < all.size(); i += 2) {
    WorkerState w;
    w.id = std::string(all.at(i).str());
    const auto reg = nlohmann::json::parse(all.at(i + 1).str(), nullptr, false);
    if (reg.is_object()) {
      // The worker writes {"device": {"device": "<name>", ...}, "queues": [...], "job": "<id>"|null, ...}.
      const auto dev = reg.value("device", nlohmann::json());
      if (dev.is_object()) {
        w.device = dev.value("device", "");
      } else if (dev.is_string()) {
        w.device = dev.get<std::string>();
      }
      if (reg.contains("queues") && reg["queues"].is_array()) {
        for (const auto& q : reg["queues"]) {
          if (q.is_string()) w.queues.push_back(q.get<std::string>());
        }
      }
      if (reg.contains("job") && reg["job"].is_string()) w.job = reg["job"].get<std::string>();
    } else {
      spdlog::warn("worker {}: registration in {}:workers is not a JSON object", w.id, queue.prefix());
    }
    exists.push_back({"EXISTS", queue.prefix() + ":worker:" + w.id});
    out.push_back(std::move(w));
  }
  if (!exists.empty()) {
    auto replies = redis.pipeline(exists);
    for (size_t i = 0; i < out.size(); ++i) {
      EVALSVC_REDIS_CHECK(!replies[i].is_error(), "EXISTS heartbeat of worker {}: {}", out[i].id, replies[i].str());
      out[i].live = replies[i].integer() == 1;
    }
  }
  std::sort(out.begin(), out.end(), [](const WorkerState& a, const WorkerState& b) { return a.id < b.id; });
  return out;
}

void collect_queue_metrics(Queue& queue, ServiceMetrics& m) {
  try {
    m.queue = queue.stats();
    m.workers = list_worker_states(queue);
  } catch (const Error& e) {
    // RedisError text masks passwords already.
    m.redis_error = e.what();
    m.queue.reset();
    m.workers.reset();
  }
}

void collect_store_metrics(Store& store, ServiceMetrics& m) {
  try {
    m.jobs = store.service_stats(m.duration_bounds);
  } catch (const Error& e) {
    // Store errors are scrubbed of credentials by the Store itself.
    m.postgres_error = e.what();
    m.jobs.reset();
  }
}

std::string render_prometheus(const ServiceMetrics& m) {
  std::string o;
  {
    Family f(o, "qbench_dependency_up", "gauge", "Whether the scheduler reached the server in this scrape (1) or not (0).");
    f.sample({{"dependency", "redis"}}, m.queue && !m.redis_error ? 1 : 0);
    f.sample({{"dependency", "postgres"}}, m.jobs && !m.postgres_error ? 1 : 0);
  }
  if (m.queue) {
    {
      Family f(o, "qbench_queue_waiting", "gauge", "Jobs waiting on each Redis queue's wait list.");
      for (const auto& [q, n] : m.queue->waiting) f.sample({{"queue", q}}, static_cast<double>(n));
    }
    Family(o, "qbench_queue_active", "gauge", "Jobs leased by a worker now (all queues).").sample({}, static_cast<double>(m.queue->active));
    Family(o, "qbench_queue_dead_letters", "gauge", "Malformed job messages kept on the dead-letter list.")
        .sample({}, static_cast<double>(m.queue->dead));
    Family(o, "qbench_queue_events", "gauge", "Queue events not yet trimmed by the scheduler (a growing value means it lags).")
        .sample({}, static_cast<double>(m.queue->events));
  }
  if (m.workers) {
    int64_t live = 0, busy = 0;
    for (const auto& w : *m.workers) {
      live += w.live ? 1 : 0;
      busy += w.live && w.job ? 1 : 0;
    }
    Family(o, "qbench_workers_registered", "gauge",
           "Worker registrations in Redis, including workers that died without unregistering.")
        .sample({}, static_cast<double>(m.workers->size()));
    Family(o, "qbench_workers_live", "gauge", "Workers whose heartbeat has not expired.").sample({}, static_cast<double>(live));
    Family(o, "qbench_workers_busy", "gauge", "Live workers running a job now.").sample({}, static_cast<double>(busy));
    Family f(o, "qbench_worker_info", "gauge", "One series per live worker (value 1): its device, queues and current job (\"\" when idle).");
    for (const auto& w : *m.workers) {
      if (!w.live) continue;
      f.sample({{"worker", w.id}, {"device", w.device}, {"queues", join(w.queues, ",")}, {"job", w.job.value_or("")}}, 1);
    }
  }
  if (m.jobs) {
    {
      Family f(o, "qbench_experiments", "gauge", "Experiments in PostgreSQL by state.");
      for (RunState s : kRunStates) {
        auto it = m.jobs->experiments.find(s);
        f.sample({{"state", to_string(s)}}, it == m.jobs->experiments.end() ? 0 : static_cast<double>(it->second));
      }
    }
    std::set<std::string> types;
    for (const auto& [key, n] : m.jobs->jobs) types.insert(key.first);
    {
      // Every state of every known type, zeros included, so that a rate or an alert never sees a series vanish.
      Family f(o, "qbench_jobs", "gauge", "Jobs in PostgreSQL by type and state (queued includes jobs a worker runs now).");
      for (const auto& t : types) {
        for (JobState s : kJobStates) {
          auto it = m.jobs->jobs.find({t, s});
          f.sample({{"type", t}, {"state", to_string(s)}}, it == m.jobs->jobs.end() ? 0 : static_cast<double>(it->second));
        }
      }
    }
    {
      Family f(o, "qbench_job_retries", "gauge",
               "Attempts beyond the first, summed over the jobs of each type (failed attempts that were retried or "
               "lost leases).");
      for (const auto& t : types) {
        auto it = m.jobs->retries.find(t);
        f.sample({{"type", t}}, it == m.jobs->retries.end() ? 0 : static_cast<double>(it->second));
      }
    }
    {
      Family f(o, "qbench_job_duration_seconds", "histogram",
               "Done jobs by type: seconds from started (queued, where the start is not recorded) to finished.");
      for (const auto& [t, d] : m.jobs->durations) {
        for (size_t i = 0; i < m.duration_bounds.size() && i < d.cumulative.size(); ++i) {
          f.sample({{"type", t}, {"le", format_value(m.duration_bounds[i])}}, static_cast<double>(d.cumulative[i]), "_bucket");
        }
        f.sample({{"type", t}, {"le", "+Inf"}}, static_cast<double>(d.count), "_bucket");
        f.sample({{"type", t}}, d.sum_seconds, "_sum");
        f.sample({{"type", t}}, static_cast<double>(d.count), "_count");
      }
    }
  }
  return o;
}

}  // namespace evalsvc::scheduler
