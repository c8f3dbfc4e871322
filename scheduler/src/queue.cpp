#include "evalsvc/scheduler/queue.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cctype>
#include <random>
#include <thread>

namespace evalsvc::scheduler {

namespace detail {
// Generated at configure time from scheduler/lua/*.lua (see scheduler/CMakeLists.txt).
const std::map<std::string_view, std::string_view>& embedded_lua_scripts();
}  // namespace detail

using nlohmann::json;

namespace {

constexpr int kWakeCap = 64;                 // woken workers drain a queue; more tokens only wake idlers
constexpr int kMaxMalformedPerClaim = 64;    // dead-lettered messages skipped within one claim() call
constexpr auto kWakePoll = std::chrono::milliseconds(1000);  // BLPOP slice: bounds a lost wake-up

std::string random_token() {
  thread_local std::mt19937_64 rng([] {
    std::random_device rd;
    std::seed_seq seq{rd(), rd(), rd(), rd(),
                      static_cast<unsigned>(std::hash<std::thread::id>{}(std::this_thread::get_id())),
                      static_cast<unsigned>(std::chrono::steady_clock::now().time_since_epoch().count())};
    return std::mt19937_64(seq);
  }());
  return fmt::format("{:016x}{:016x}", rng(), rng());
}

std::string snippet(std::string_view s, size_t n = 60) {
  std::string out(s.substr(0, n));
  for (char& c : out) {
    if (!std::isprint(static_cast<unsigned char>(c))) c = '?';
  }
  return s.size() > n ? out + "..." : out;
}

const json& require(const json& j, std::string_view job_id, const char* field) {
  auto it = j.find(field);
  if (it == j.end()) throw FormatError(fmt::format("job {}: payload has no field '{}'", job_id, field));
  return *it;
}

int64_t require_int(const json& j, std::string_view job_id, const char* field) {
  const json& v = require(j, job_id, field);
  if (!v.is_number_integer()) {
    throw FormatError(fmt::format("job {}: field '{}' must be an integer, got {} {}", job_id, field, v.type_name(),
                                  snippet(v.dump())));
  }
  return v.get<int64_t>();
}

}  // namespace

// ---------------------------------------------------------------------------------------------------
// Messages

json to_json(const JobMessage& job) {
  return json{{"id", job.id},         {"experiment_id", job.experiment_id}, {"type", job.type},
              {"params", job.params}, {"attempt", job.attempt},             {"max_attempts", job.max_attempts}};
}

JobMessage parse_job_message(std::string_view job_id, std::string_view payload, std::string queue) {
  json j;
  try {
    j = json::parse(payload);
  } catch (const json::parse_error& e) {
    throw FormatError(fmt::format("job {}: payload is not valid JSON ({} bytes, starts '{}'): {}", job_id,
                                  payload.size(), snippet(payload), e.what()));
  }
  if (!j.is_object()) throw FormatError(fmt::format("job {}: payload must be a JSON object, got {}", job_id, j.type_name()));
  JobMessage m;
  const json& id = require(j, job_id, "id");
  if (!id.is_string()) throw FormatError(fmt::format("job {}: field 'id' must be a string, got {}", job_id, id.type_name()));
  m.id = id.get<std::string>();
  if (m.id != job_id) {
    throw FormatError(fmt::format("job {}: field 'id' is '{}', expected the job's own id", job_id, snippet(m.id)));
  }
  m.experiment_id = require_int(j, job_id, "experiment_id");
  const json& type = require(j, job_id, "type");
  if (!type.is_string() || type.get_ref<const std::string&>().empty()) {
    throw FormatError(fmt::format("job {}: field 'type' must be a non-empty string, got {} {}", job_id, type.type_name(),
                                  snippet(type.dump())));
  }
  m.type = type.get<std::string>();
  const json& params = require(j, job_id, "params");
  if (!params.is_object()) {
    throw FormatError(fmt::format("job {}: field 'params' must be an object, got {}", job_id, params.type_name()));
  }
  m.params = params;
  int64_t attempt = require_int(j, job_id, "attempt");
  int64_t max_attempts = require_int(j, job_id, "max_attempts");
  if (attempt < 0 || attempt > 1'000'000) {
    throw FormatError(fmt::format("job {}: field 'attempt' is {}, expected 0..1000000", job_id, attempt));
  }
  if (max_attempts < 1 || max_attempts > 1'000'000) {
    throw FormatError(fmt::format("job {}: field 'max_attempts' is {}, expected 1..1000000", job_id, max_attempts));
  }
  m.attempt = static_cast<int>(attempt);
  m.max_attempts = static_cast<int>(max_attempts);
  m.queue = std::move(queue);
  return m;
}

const char* to_string(FinishResult r) {
  switch (r) {
    case FinishResult::kOk: return "ok";
    case FinishResult::kNotFound: return "no such job";
    case FinishResult::kLeaseExpired: return "lease expired (job requeued)";
    case FinishResult::kTakenOver: return "lease taken over by another claim";
    case FinishResult::kNotActive: return "job no longer active";
  }
  return "unknown";
}

std::optional<std::string> Event::field(const std::string& name) const {
  auto it = fields.find(name);
  if (it == fields.end()) return std::nullopt;
  return it->second;
}

void validate_queue_name(std::string_view q) {
  bool ok = !q.empty() && q.size() <= 64 && std::all_of(q.begin(), q.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.';
  });
  if (!ok) throw InputError(fmt::format("queue name '{}' is invalid (expected [A-Za-z0-9_.-], 1..64 chars)", snippet(q)));
}

void validate_job_id(std::string_view id) {
  bool ok = !id.empty() && id.size() <= 200 && std::all_of(id.begin(), id.end(), [](char c) {
    return std::isgraph(static_cast<unsigned char>(c));
  });
  if (!ok) throw InputError(fmt::format("job id '{}' is invalid (expected 1..200 printable characters, no spaces)", snippet(id)));
}

const std::string& lua_script_source(const std::string& name) {
  // Copied once into std::strings so RedisScript and callers can hold references.
  static const std::map<std::string, std::string> scripts = [] {
    std::map<std::string, std::string> m;
    for (const auto& [k, v] : detail::embedded_lua_scripts()) m.emplace(std::string(k), std::string(v));
    return m;
  }();
  auto it = scripts.find(name);
  if (it == scripts.end()) {
    throw InternalError(fmt::format("Lua script '{}' is not embedded in this build (scheduler/lua/ has {} scripts)",
                                    name, scripts.size()));
  }
  return it->second;
}

std::vector<std::string> lua_script_names() {
  std::vector<std::string> out;
  for (const auto& [k, v] : detail::embedded_lua_scripts()) out.emplace_back(k);
  return out;
}

// ---------------------------------------------------------------------------------------------------
// Queue

Queue::Queue(RedisClient& redis, std::string prefix)
    : redis_(redis),
      prefix_(std::move(prefix)),
      enqueue_("enqueue-4", lua_script_source("enqueue-4.lua")),
      claim_("claim-5", lua_script_source("claim-5.lua")),
      renew_("renew-3", lua_script_source("renew-3.lua")),
      complete_("complete-4", lua_script_source("complete-4.lua")),
      fail_("fail-4", lua_script_source("fail-4.lua")),
      release_("release-4", lua_script_source("release-4.lua")),
      dead_letter_("dead-letter-5", lua_script_source("dead-letter-5.lua")),
      requeue_stalled_("requeue-stalled-2", lua_script_source("requeue-stalled-2.lua")),
      cancel_("cancel-4", lua_script_source("cancel-4.lua")) {
  if (prefix_.empty() || prefix_.find_first_of(" \t\r\n") != std::string::npos) {
    throw InputError(fmt::format("queue key prefix '{}' must be non-empty without whitespace", prefix_));
  }
}

EnqueueResult Queue::enqueue(const JobMessage& job) {
  validate_job_id(job.id);
  validate_queue_name(job.queue);
  if (job.type.empty()) throw InputError(fmt::format("job {}: type is empty", job.id));
  if (job.max_attempts < 1) throw InputError(fmt::format("job {}: max_attempts is {}, expected >= 1", job.id, job.max_attempts));
  if (!job.params.is_object()) throw InputError(fmt::format("job {}: params must be a JSON object", job.id));
  const std::string payload = to_json(job).dump();
  const std::string jk = job_key(job.id), wk = wait_key(job.queue), wake = wake_key(job.queue), qk = queues_key();
  const std::string max_attempts = std::to_string(job.max_attempts), cap = std::to_string(kWakeCap);
  // Idempotent: a repeat after a lost reply finds the job waiting and changes nothing.
  Reply r = redis_.eval(enqueue_, {jk, wk, wake, qk}, {job.id, payload, job.queue, max_attempts, cap},
                        CallOptions{.idempotent = true});
  long long code = r.integer();
  switch (code) {
    case 1: return EnqueueResult::kEnqueued;
    case 2: return EnqueueResult::kReenqueued;
    case 0: return EnqueueResult::kAlreadyPending;
    default: EVALSVC_REDIS_CHECK(false, "script enqueue-4 for job {} returned unknown code {}", job.id, code);
  }
  return EnqueueResult::kAlreadyPending;  // unreachable
}

std::optional<Lease> Queue::claim(const std::vector<std::string>& queues, const std::string& worker_id,
                                  std::chrono::milliseconds lease, std::chrono::milliseconds wait) {
  if (queues.empty()) throw InputError("claim: no queues given");
  for (const auto& q : queues) validate_queue_name(q);
  if (lease.count() < 1) throw InputError(fmt::format("claim: lease must be >= 1 ms, got {}", lease.count()));
  const auto deadline = std::chrono::steady_clock::now() + wait;
  const std::string lease_ms = std::to_string(lease.count());
  const std::string jprefix = prefix_ + ":job:";
  const std::string ak = active_key(), dk = dead_key(), ek = events_key();
  int malformed = 0;
  bool skip_scripts = wait.count() > 0 && std::all_of(queues.begin(), queues.end(), [&](const std::string& q) {
    auto it = seen_empty_.find(q);
    return it != seen_empty_.end() && it->second;
  });
  for (;;) {
    for (const auto& q : queues) {
      if (skip_scripts) break;
      const std::string wk = wait_key(q), wake = wake_key(q);
      for (;;) {
        const std::string token = random_token();
        Reply r = redis_.eval(claim_, {wk, ak, wake, dk, ek}, {jprefix, worker_id, token, lease_ms, q});
        if (r.is_nil()) {
          seen_empty_[q] = true;
          break;
        }
        EVALSVC_REDIS_CHECK(r.is_array() && r.size() == 5, "script claim-5 on queue {} returned {} with {} elements",
                            q, r.type_name(), r.is_array() ? r.size() : 0);
        Lease l;
        l.token = token;
        l.worker_id = worker_id;
        const std::string id(r.at(0).str());
        const std::string_view payload = r.at(1).str();
        l.deadline_ms = r.at(3).integer();
        seen_empty_[q] = r.at(4).integer() == 0;
        try {
          l.job = parse_job_message(id, payload, q);
        } catch (const FormatError& e) {
          // Never crash on or lose a bad message: park it with the reason and keep claiming.
          spdlog::error("dead-lettering job {} from queue {}: {}", id, q, e.what());
          l.job.id = id;
          l.job.queue = q;
          FinishResult fr = dead_letter(l, e.what());
          if (fr != FinishResult::kOk) spdlog::warn("dead-letter of job {} refused: {}", id, to_string(fr));
          if (++malformed >= kMaxMalformedPerClaim) return std::nullopt;
          continue;
        }
        l.job.attempt = static_cast<int>(r.at(2).integer());  // the server's counter is authoritative
        return l;
      }
    }
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline && !skip_scripts) return std::nullopt;
    skip_scripts = false;  // after one wait, always look at the wait lists (bounds a missed wake token)
    auto slice = std::min(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now), kWakePoll);
    if (slice.count() < 10) slice = std::chrono::milliseconds(10);  // BLPOP 0 would block forever
    std::vector<std::string> keys;
    for (const auto& q : queues) keys.push_back(wake_key(q));
    std::vector<std::string_view> argv = {"BLPOP"};
    argv.insert(argv.end(), keys.begin(), keys.end());
    const std::string timeout = fmt::format("{:.3f}", slice.count() / 1000.0);
    argv.push_back(timeout);
    redis_.command(argv, CallOptions{.timeout = slice + std::chrono::milliseconds(5000), .idempotent = true});
  }
}

FinishResult Queue::finish_code(long long code, const char* script, const Lease& l) const {
  switch (code) {
    case 1: return FinishResult::kOk;
    case -1: return FinishResult::kNotFound;
    case -2: return FinishResult::kLeaseExpired;
    case -3: return FinishResult::kTakenOver;
    case -4: return FinishResult::kNotActive;
    default: EVALSVC_REDIS_CHECK(false, "script {} for job {} returned unknown code {}", script, l.job.id, code);
  }
  return FinishResult::kNotActive;  // unreachable
}

FinishResult Queue::renew(Lease& l, std::chrono::milliseconds lease) {
  const std::string jk = job_key(l.job.id), lk = lock_key(l.job.id), ak = active_key();
  const std::string ms = std::to_string(lease.count());
  Reply r = redis_.eval(renew_, {jk, lk, ak}, {l.job.id, l.token, ms}, CallOptions{.idempotent = true});
  long long code = r.integer();
  if (code > 0) {
    l.deadline_ms = code;
    return FinishResult::kOk;
  }
  return finish_code(code, "renew-3", l);
}

FinishResult Queue::complete(const Lease& l, const json& result) {
  const std::string jk = job_key(l.job.id), lk = lock_key(l.job.id), ak = active_key(), ek = events_key();
  const std::string res = result.dump();
  Reply r = redis_.eval(complete_, {jk, lk, ak, ek}, {l.job.id, l.token, res});
  return finish_code(r.integer(), "complete-4", l);
}

FinishResult Queue::fail(const Lease& l, const std::string& error, bool retryable) {
  const std::string jk = job_key(l.job.id), lk = lock_key(l.job.id), ak = active_key(), ek = events_key();
  Reply r = redis_.eval(fail_, {jk, lk, ak, ek}, {l.job.id, l.token, error, retryable ? "1" : "0"});
  return finish_code(r.integer(), "fail-4", l);
}

FinishResult Queue::release(const Lease& l) {
  const std::string jk = job_key(l.job.id), lk = lock_key(l.job.id), ak = active_key(), ek = events_key();
  const std::string wp = prefix_ + ":wait:", kp = prefix_ + ":wake:";
  Reply r = redis_.eval(release_, {jk, lk, ak, ek}, {l.job.id, l.token, wp, kp});
  return finish_code(r.integer(), "release-4", l);
}

FinishResult Queue::dead_letter(const Lease& l, const std::string& reason) {
  const std::string jk = job_key(l.job.id), lk = lock_key(l.job.id), ak = active_key(), dk = dead_key(),
                    ek = events_key();
  Reply r = redis_.eval(dead_letter_, {jk, lk, ak, dk, ek}, {l.job.id, l.token, reason});
  return finish_code(r.integer(), "dead-letter-5", l);
}

std::vector<StalledJob> Queue::requeue_stalled(size_t max_jobs) {
  const std::string ak = active_key(), ek = events_key();
  const std::string jp = prefix_ + ":job:", wp = prefix_ + ":wait:", kp = prefix_ + ":wake:";
  const std::string max = std::to_string(std::max<size_t>(1, max_jobs));
  Reply r = redis_.eval(requeue_stalled_, {ak, ek}, {jp, wp, kp, max});
  EVALSVC_REDIS_CHECK(r.is_array() && r.size() % 2 == 0, "script requeue-stalled-2 returned {} with {} elements",
                      r.type_name(), r.is_array() ? r.size() : 0);
  std::vector<StalledJob> out;
  for (size_t i = 0; i + 1 < r.size(); i += 2) out.push_back({std::string(r.at(i).str()), std::string(r.at(i + 1).str())});
  return out;
}

bool Queue::cancel(const std::string& job_id) {
  validate_job_id(job_id);
  const std::string jk = job_key(job_id), lk = lock_key(job_id), ak = active_key(), ek = events_key();
  const std::string wp = prefix_ + ":wait:";
  Reply r = redis_.eval(cancel_, {jk, lk, ak, ek}, {job_id, wp}, CallOptions{.idempotent = true});
  long long code = r.integer();
  EVALSVC_REDIS_CHECK(code >= -1 && code <= 2, "script cancel-4 for job {} returned unknown code {}", job_id, code);
  return code > 0;
}

std::vector<Event> Queue::read_events(const std::string& last_id, size_t max, std::chrono::milliseconds block) {
  const std::string count = std::to_string(std::max<size_t>(1, max));
  const std::string ek = events_key();
  const std::string block_ms = std::to_string(block.count());
  std::vector<std::string_view> argv = {"XREAD", "COUNT", count};
  if (block.count() > 0) argv.insert(argv.end(), {"BLOCK", block_ms});
  argv.insert(argv.end(), {"STREAMS", ek, last_id});
  Reply r = redis_.command(argv, CallOptions{.timeout = block + std::chrono::milliseconds(5000), .idempotent = true});
  std::vector<Event> out;
  if (r.is_nil()) return out;
  EVALSVC_REDIS_CHECK(r.is_array() && r.size() == 1, "XREAD {} returned {} with {} streams", ek, r.type_name(), r.size());
  ReplyView entries = r.at(0).at(1);
  for (size_t i = 0; i < entries.size(); ++i) {
    ReplyView entry = entries.at(i);
    EVALSVC_REDIS_CHECK(entry.size() == 2, "XREAD {}: entry {} has {} parts, expected id and fields", ek, i, entry.size());
    Event e;
    e.id = std::string(entry.at(0).str());
    ReplyView kv = entry.at(1);
    for (size_t k = 0; k + 1 < kv.size(); k += 2) e.fields.emplace(std::string(kv.at(k).str()), std::string(kv.at(k + 1).str()));
    e.type = e.field("type").value_or("");
    e.job_id = e.field("job").value_or("");
    e.queue = e.field("queue").value_or("");
    e.worker = e.field("worker").value_or("");
    if (auto a = e.field("attempt")) {
      try {
        e.attempt = std::stoi(*a);
      } catch (const std::exception&) {
        throw FormatError(fmt::format("event {} of job {}: attempt '{}' is not an integer", e.id, e.job_id, snippet(*a)));
      }
    }
    out.push_back(std::move(e));
  }
  return out;
}

void Queue::trim_events(const std::string& min_id) {
  redis_.command({"XTRIM", events_key(), "MINID", min_id}, CallOptions{.idempotent = true});
}

QueueStats Queue::stats() {
  QueueStats s;
  Reply names = redis_.command({"SMEMBERS", queues_key()}, CallOptions{.idempotent = true});
  std::vector<std::string> queues;
  for (size_t i = 0; i < names.size(); ++i) queues.emplace_back(names.at(i).str());
  std::sort(queues.begin(), queues.end());
  std::vector<std::vector<std::string>> cmds;
  for (const auto& q : queues) cmds.push_back({"LLEN", wait_key(q)});
  cmds.push_back({"ZCARD", active_key()});
  cmds.push_back({"LLEN", dead_key()});
  cmds.push_back({"XLEN", events_key()});
  auto replies = redis_.pipeline(cmds);
  for (size_t i = 0; i < queues.size(); ++i) s.waiting[queues[i]] = replies[i].integer();
  s.active = replies[queues.size()].integer();
  s.dead = replies[queues.size() + 1].integer();
  s.events = replies[queues.size() + 2].integer();
  return s;
}

std::vector<DeadLetter> Queue::dead_letters(size_t max) {
  const std::string stop = std::to_string(max == 0 ? 0 : static_cast<long long>(max) - 1);
  Reply r = redis_.command({"LRANGE", dead_key(), "0", stop}, CallOptions{.idempotent = true});
  std::vector<DeadLetter> out;
  for (size_t i = 0; i < r.size() && max > 0; ++i) {
    std::string raw(r.at(i).str());
    json j = json::parse(raw, nullptr, false);
    DeadLetter d;
    if (j.is_object()) {
      d.id = j.value("id", "");
      d.queue = j.value("queue", "");
      d.reason = j.value("reason", "");
      d.data = j.value("data", "");
    } else {
      // The list is ours, but a hand-edited entry must still show up rather than throw.
      d.reason = "unparseable dead-letter entry";
      d.data = raw;
    }
    out.push_back(std::move(d));
  }
  return out;
}

std::optional<std::map<std::string, std::string>> Queue::job_fields(const std::string& job_id) {
  Reply r = redis_.command({"HGETALL", job_key(job_id)}, CallOptions{.idempotent = true});
  if (r.size() == 0) return std::nullopt;
  std::map<std::string, std::string> m;
  for (size_t i = 0; i + 1 < r.size(); i += 2) m.emplace(std::string(r.at(i).str()), std::string(r.at(i + 1).str()));
  return m;
}

}  // namespace evalsvc::scheduler
