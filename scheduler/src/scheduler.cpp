#include "evalsvc/scheduler/scheduler.h"

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>

#include <algorithm>
#include <thread>
#include <set>

#include "evalsvc/common/error.h"
#include "evalsvc/common/log.h"

namespace evalsvc::scheduler {

namespace {

using Clock = std::chrono::steady_clock;

bool is_finalizer(const std::string& type) { return type == "merge" || type == "report"; }

bool ended(JobState s) {
  return s == JobState::kDone || s == JobState::kFailed || s == JobState::kCancelled || s == JobState::kBlocked;
}

/// The graph of a stored experiment. The stored spec has data.test_limit set to the rows evaluated
/// (submit_experiment fills it in), so the graph is reproducible from the spec alone.
std::vector<JobSpec> graph_of(const Experiment& e) {
  ExperimentSpec spec = ExperimentSpec::parse(e.spec);
  return build_job_graph(e.id, spec, std::max<int64_t>(1, spec.data.test_limit));
}

JobMessage message_of(const JobSpec& j, int64_t experiment_id) {
  JobMessage m;
  m.id = j.id;
  m.experiment_id = experiment_id;
  m.type = j.type;
  m.params = j.params;
  m.max_attempts = j.max_attempts;
  m.queue = j.queue;
  return m;
}

}  // namespace

int64_t submit_experiment(Store& store, Queue& queue, const ExperimentSpec& spec_in, int64_t test_rows) {
  EVALSVC_CHECK(test_rows > 0, InputError, "the test set has no rows");
  ExperimentSpec spec = spec_in;
  spec.data.test_limit = evaluated_rows(spec, test_rows);
  const int64_t id = store.create_experiment(spec.name, spec.to_json());
  const auto graph = build_job_graph(id, spec, spec.data.test_limit);
  for (const auto& v : spec.variants) {
    VariantRecord r;
    r.experiment_id = id;
    r.name = v.name;
    r.method = v.method;
    r.base_dtype = v.base_dtype;
    r.options = v.to_json().value("options", nlohmann::json::object());
    r.baseline = spec.baseline;
    store.upsert_variant(r);
  }
  std::vector<JobRecord> jobs;
  for (const auto& j : graph) {
    JobRecord r;
    r.id = j.id;
    r.experiment_id = id;
    r.type = j.type;
    if (!j.variant.empty()) r.variant = j.variant;
    if (j.shard >= 0) r.shard = j.shard;
    r.max_attempts = j.max_attempts;
    r.depends_on = j.depends_on;
    r.queue = j.queue;
    jobs.push_back(r);
  }
  store.upsert_jobs(jobs);
  store.set_experiment_state(id, RunState::kRunning);
  // Queue the roots now so work starts even before a scheduler loop runs; the loop does the rest.
  Scheduler s(store, queue);
  s.step();
  spdlog::info("experiment {} '{}' submitted: {} jobs, {} variants", id, spec.name, graph.size(), spec.variants.size());
  return id;
}

void cancel_experiment(Store& store, Queue& queue, int64_t experiment_id) {
  EVALSVC_CHECK(store.get_experiment(experiment_id).has_value(), InputError, "no experiment {}", experiment_id);
  for (const auto& j : store.list_jobs(experiment_id)) {
    if (ended(j.state) && j.state != JobState::kBlocked) continue;
    queue.cancel(j.id);
    store.set_job_state(j.id, JobState::kCancelled);
  }
  store.set_experiment_state(experiment_id, RunState::kCancelled, std::string("cancelled by request"));
}

int retry_experiment(Store& store, Queue& queue, int64_t experiment_id) {
  (void)queue;
  EVALSVC_CHECK(store.get_experiment(experiment_id).has_value(), InputError, "no experiment {}", experiment_id);
  int n = 0;
  for (const auto& j : store.list_jobs(experiment_id)) {
    if (j.state == JobState::kFailed || j.state == JobState::kBlocked || j.state == JobState::kCancelled) {
      JobUpdate u;
      u.attempt = 0;
      store.set_job_state(j.id, JobState::kPending, u);
      ++n;
    }
  }
  if (n > 0) store.set_experiment_state(experiment_id, RunState::kRunning);
  return n;
}

Scheduler::Scheduler(Store& store, Queue& queue, SchedulerOptions options)
    : store_(store), queue_(queue), options_(options) {
  auto r = queue_.redis().command({"GET", queue_.prefix() + ":scheduler:last_event"});
  last_event_id_ = r.opt_string().value_or("0");
}

void Scheduler::fail_for_good(const JobRecord& job, const std::string& error, std::optional<int> attempt) {
  JobUpdate u;
  u.error = error;
  u.attempt = attempt;  // the attempt that failed, so the record says how often it was tried
  store_.set_job_state(job.id, JobState::kFailed, u);
  spdlog::warn("job {} failed for good: {}", job.id, error);
  auto e = store_.get_experiment(job.experiment_id);
  if (!e) return;
  const auto graph = graph_of(*e);
  for (const auto& id : dependants(graph, job.id)) {
    auto it = std::find_if(graph.begin(), graph.end(), [&](const JobSpec& j) { return j.id == id; });
    if (it != graph.end() && is_finalizer(it->type)) continue;  // finalizers decide for themselves
    JobUpdate b;
    b.error = "blocked: " + job.id + " failed";
    store_.set_job_state(id, JobState::kBlocked, b, {JobState::kPending});
  }
  if (job.variant) {
    store_.set_variant_state(job.experiment_id, *job.variant, RunState::kFailed, job.id + ": " + error);
  }
}

int Scheduler::process_events() {
  auto events = queue_.read_events(last_event_id_, 500, options_.tick);
  int changes = 0;
  for (const auto& ev : events) {
    auto job = store_.get_job(ev.job_id);
    if (job) {
      JobUpdate u;
      u.attempt = ev.attempt;
      if (!ev.worker.empty()) u.worker_id = ev.worker;
      if (ev.type == "completed") {
        if (auto r = ev.field("result")) {
          try {
            u.result = nlohmann::json::parse(*r);
          } catch (const nlohmann::json::exception&) {
            u.result = nlohmann::json{{"raw", *r}};
          }
        }
        store_.set_job_state(job->id, JobState::kDone, u);
      } else if (ev.type == "failed") {
        const std::string error = ev.field("error").value_or("unknown error");
        const std::string retryable = ev.field("retryable").value_or("0");
        const bool can_retry = (retryable == "1" || retryable == "true") && ev.attempt < job->max_attempts;
        if (can_retry) {
          u.error = error;
          store_.set_job_state(job->id, JobState::kPending, u);
          auto delay = options_.backoff_base * (1LL << std::min(ev.attempt - 1, 16));
          delay = std::min<std::chrono::milliseconds>(delay, options_.backoff_max);
          not_before_[job->id] = Clock::now() + delay;
          spdlog::info("job {} attempt {} failed ({}); retry in {} ms", job->id, ev.attempt, error, delay.count());
        } else {
          fail_for_good(*job, fmt::format("attempt {}/{}: {}", ev.attempt, job->max_attempts, error), ev.attempt);
        }
      } else if (ev.type == "requeued") {
        store_.set_job_state(job->id, JobState::kQueued, u);
      } else if (ev.type == "cancelled") {
        store_.set_job_state(job->id, JobState::kCancelled, u);
      } else if (ev.type == "dead") {
        fail_for_good(*job, "malformed job message: " + ev.field("reason").value_or("?"));
      }
      ++changes;
    }
    last_event_id_ = ev.id;
  }
  if (!events.empty()) {
    queue_.redis().command({"SET", queue_.prefix() + ":scheduler:last_event", last_event_id_});
  }
  return changes;
}

int Scheduler::reconcile() {
  int changes = 0;
  std::set<int64_t> experiments;
  for (const auto& j : store_.list_open_jobs()) experiments.insert(j.experiment_id);
  for (const auto& e : store_.list_experiments(1000)) {
    if (e.state == RunState::kRunning || e.state == RunState::kPending) experiments.insert(e.id);
  }
  const auto now = Clock::now();
  for (int64_t exp_id : experiments) {
    auto e = store_.get_experiment(exp_id);
    if (!e || e->state == RunState::kCancelled) continue;
    const auto graph = graph_of(*e);
    std::map<std::string, JobRecord> rec;
    for (auto& j : store_.list_jobs(exp_id)) rec[j.id] = j;
    bool all_ended = true;
    for (const auto& js : graph) {
      auto it = rec.find(js.id);
      if (it == rec.end()) continue;
      JobRecord& job = it->second;
      if (!ended(job.state)) all_ended = false;
      if (job.state == JobState::kQueued || job.state == JobState::kRunning) {
        // The queue lost the job (Redis restarted without its last writes, or with an emptied data folder):
        // queue it again. A worker still running it then finishes into a job it no longer leases and is
        // refused; the requeued copy produces the result (idempotent writes keep it single).
        if (!queue_.job_fields(job.id)) {
          spdlog::warn("job {} is {} in the database but unknown to the queue: queueing it again", job.id,
                       to_string(job.state));
          queue_.enqueue(message_of(js, exp_id));
          if (job.state == JobState::kRunning) store_.set_job_state(job.id, JobState::kQueued, {}, {JobState::kRunning});
          ++changes;
        }
        continue;
      }
      if (job.state != JobState::kPending) continue;
      if (auto nb = not_before_.find(job.id); nb != not_before_.end() && nb->second > now) continue;
      bool ready = true, any_done = false, dep_failed = false;
      for (const auto& d : js.depends_on) {
        const JobState s = rec.count(d) ? rec[d].state : JobState::kPending;
        any_done = any_done || s == JobState::kDone;
        dep_failed = dep_failed || (s == JobState::kFailed || s == JobState::kBlocked || s == JobState::kCancelled);
        ready = ready && (is_finalizer(js.type) ? ended(s) : s == JobState::kDone);
      }
      if (!is_finalizer(js.type) && dep_failed) {
        JobUpdate b;
        b.error = "blocked: a job it depends on did not succeed";
        store_.set_job_state(job.id, JobState::kBlocked, b, {JobState::kPending});
        job.state = JobState::kBlocked;
        ++changes;
        continue;
      }
      if (ready && is_finalizer(js.type) && !js.depends_on.empty() && !any_done) {
        JobUpdate b;
        b.error = "blocked: nothing before it succeeded";
        store_.set_job_state(job.id, JobState::kBlocked, b, {JobState::kPending});
        job.state = JobState::kBlocked;
        ++changes;
        continue;
      }
      if (!ready) continue;
      queue_.enqueue(message_of(js, exp_id));
      store_.set_job_state(job.id, JobState::kQueued, {}, {JobState::kPending});
      job.state = JobState::kQueued;
      not_before_.erase(job.id);
      all_ended = false;
      ++changes;
    }
    if (all_ended && !rec.empty() && (e->state == RunState::kRunning || e->state == RunState::kPending)) {
      std::vector<std::string> failed;
      for (const auto& [id, j] : rec)
        if (j.state == JobState::kFailed) failed.push_back(id);
      const bool report_done = std::any_of(rec.begin(), rec.end(), [](const auto& kv) {
        return kv.second.type == "report" && kv.second.state == JobState::kDone;
      });
      if (failed.empty() && report_done) {
        store_.set_experiment_state(exp_id, RunState::kDone);
      } else {
        store_.set_experiment_state(exp_id, report_done ? RunState::kDone : RunState::kFailed,
                                    fmt::format("{} job(s) failed: {}", failed.size(), fmt::join(failed, ", ")));
      }
      spdlog::info("experiment {} ended ({} failed jobs)", exp_id, failed.size());
      ++changes;
    }
  }
  return changes;
}

void Scheduler::mirror_workers() {
  // Workers register in Redis (a hash of registrations plus a heartbeat key with a TTL); the database keeps
  // the durable history (who ran what: jobs.worker_id joins workers.id), refreshed here for live workers.
  auto all = queue_.redis().command({"HGETALL", queue_.prefix() + ":workers"});
  for (size_t i = 0; i + 1 < all.size(); i += 2) {
    const std::string id(all.at(i).str());
    if (queue_.redis().command({"EXISTS", queue_.prefix() + ":worker:" + id}).integer() == 0) continue;  // silent
    nlohmann::json reg = nlohmann::json::parse(all.at(i + 1).str(), nullptr, false);
    if (reg.is_discarded() || !reg.is_object()) {
      spdlog::warn("worker {}: registration is not JSON; not mirrored", id);
      continue;
    }
    if (seen_workers_.insert(id).second) {
      WorkerRecord w;
      w.id = id;
      w.host = reg.value("host", "");
      nlohmann::json dev = reg.value("device", nlohmann::json::object());
      if (!dev.is_object()) dev = nlohmann::json{{"device", dev}};
      dev["queues"] = reg.value("queues", nlohmann::json::array());
      dev["version"] = reg.value("version", "");
      w.devices = nlohmann::json::array({dev});
      store_.upsert_worker(w);
    } else if (!store_.touch_worker(id)) {
      seen_workers_.erase(id);  // the row went away (e.g. a restored database): upsert next time
    }
  }
}

int Scheduler::step() {
  int changes = process_events();
  if (Clock::now() >= next_stall_check_) {
    for (const auto& s : queue_.requeue_stalled()) {
      spdlog::warn("job {} lease expired: {}", s.id, s.outcome);
      ++changes;
    }
    mirror_workers();
    next_stall_check_ = Clock::now() + options_.stall_check;
  }
  changes += reconcile();
  return changes;
}

void Scheduler::run(std::atomic<bool>& stop) {
  boost::asio::io_context io;
  boost::asio::signal_set signals(io, SIGINT, SIGTERM);
  signals.async_wait([&](const boost::system::error_code& ec, int) {
    if (!ec) stop = true;
  });
  boost::asio::steady_timer timer(io);
  std::function<void()> tick = [&] {
    if (stop) {
      signals.cancel();
      return;
    }
    try {
      step();
    } catch (const Error& e) {
      // Servers come and go (restarts); keep going, the next tick retries from durable state.
      spdlog::error("scheduler step: {}", e.what());
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    timer.expires_after(std::chrono::milliseconds(1));
    timer.async_wait([&](const boost::system::error_code& ec) {
      if (!ec) tick();
    });
  };
  boost::asio::post(io, tick);
  io.run();
}

}  // namespace evalsvc::scheduler
