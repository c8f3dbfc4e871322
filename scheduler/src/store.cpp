#include "evalsvc/scheduler/store.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <regex>
#include <set>
#include <thread>
#include <tuple>

#include <pqxx/pqxx>

#include "evalsvc/common/error.h"
#include "evalsvc/common/log.h"
#include "evalsvc/common/metrics.h"
#include "evalsvc/common/paths.h"

namespace evalsvc::scheduler {

// =========================================================================================================
// Connection strings

namespace {

bool is_uri(const std::string& url) {
  return url.rfind("postgresql://", 0) == 0 || url.rfind("postgres://", 0) == 0;
}

std::string pct_encode(std::string_view s) {
  std::string out;
  for (unsigned char ch : s) {
    if (std::isalnum(ch) || ch == '-' || ch == '.' || ch == '_' || ch == '~') {
      out += static_cast<char>(ch);
    } else {
      out += fmt::format("%{:02X}", ch);
    }
  }
  return out;
}

std::string pct_decode(std::string_view s) {
  std::string out;
  auto hex = [](char c) { return std::isxdigit(static_cast<unsigned char>(c)) != 0; };
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size() && hex(s[i + 1]) && hex(s[i + 2])) {
      out += static_cast<char>(std::stoi(std::string(s.substr(i + 1, 2)), nullptr, 16));
      i += 2;
    } else {
      out += s[i];
    }
  }
  return out;
}

/// A postgresql:// URI split at the places that can hold a password.
struct UriParts {
  std::string scheme;    ///< "postgresql://"
  std::string userinfo;  ///< "user:pass" (without '@'), may be empty
  bool has_userinfo = false;
  std::string hostpath;  ///< "host:port/db"
  std::string query;     ///< after '?', may be empty
};

UriParts split_uri(const std::string& url) {
  UriParts p;
  const size_t scheme_end = url.find("://") + 3;
  p.scheme = url.substr(0, scheme_end);
  std::string rest = url.substr(scheme_end);
  const size_t q = rest.find('?');
  if (q != std::string::npos) {
    p.query = rest.substr(q + 1);
    rest = rest.substr(0, q);
  }
  const size_t slash = rest.find('/');
  const std::string authority = rest.substr(0, slash);
  const size_t at = authority.rfind('@');
  if (at != std::string::npos) {
    p.has_userinfo = true;
    p.userinfo = authority.substr(0, at);
    p.hostpath = rest.substr(at + 1);
  } else {
    p.hostpath = rest;
  }
  return p;
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> parts;
  size_t start = 0;
  for (;;) {
    size_t pos = s.find(sep, start);
    parts.push_back(s.substr(start, pos - start));
    if (pos == std::string::npos) break;
    start = pos + 1;
  }
  return parts;
}

const std::regex& keyword_password_regex() {
  static const std::regex re(R"((password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s]+))");
  return re;
}

/// The password inside `url`, if any (decoded).
std::optional<std::string> extract_password(const std::string& url) {
  std::optional<std::string> pw;
  if (is_uri(url)) {
    UriParts p = split_uri(url);
    if (p.has_userinfo) {
      size_t colon = p.userinfo.find(':');
      if (colon != std::string::npos) pw = pct_decode(p.userinfo.substr(colon + 1));
    }
    if (!p.query.empty()) {
      for (const auto& kv : split(p.query, '&')) {
        if (kv.rfind("password=", 0) == 0) pw = pct_decode(kv.substr(9));
      }
    }
    return pw;
  }
  std::smatch m;
  std::string::const_iterator begin = url.begin();
  while (std::regex_search(begin, url.end(), m, keyword_password_regex())) {
    std::string v = m[2].str();
    if (v.size() >= 2 && v.front() == '\'') {
      std::string unq;
      for (size_t i = 1; i + 1 < v.size(); ++i) {
        if (v[i] == '\\' && i + 2 < v.size()) ++i;
        unq += v[i];
      }
      v = unq;
    }
    pw = v;
    begin = m[0].second;
  }
  return pw;
}

/// Adds `key=value` to a URI's query or a conninfo, unless the key is already there.
std::string add_param(const std::string& url, const std::string& key, const std::string& value) {
  if (is_uri(url)) {
    UriParts p = split_uri(url);
    for (const auto& kv : split(p.query, '&'))
      if (kv.rfind(key + "=", 0) == 0) return url;
    return url + (url.find('?') == std::string::npos ? "?" : "&") + key + "=" + pct_encode(value);
  }
  if (url.find(key + "=") != std::string::npos) return url;
  return url + " " + key + "=" + value;
}

std::string trim_ws(std::string s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  size_t i = 0;
  while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
  return s.substr(i);
}

}  // namespace

std::string with_password(const std::string& url, const std::string& password) {
  if (is_uri(url)) {
    // A query parameter overrides a password in the userinfo (libpq reads the query last).
    return url + (url.find('?') == std::string::npos ? "?" : "&") + "password=" + pct_encode(password);
  }
  std::string quoted;
  for (char ch : password) {
    if (ch == '\'' || ch == '\\') quoted += '\\';
    quoted += ch;
  }
  return url + (url.empty() ? "" : " ") + "password='" + quoted + "'";
}

std::string redact_url(const std::string& url) {
  if (is_uri(url)) {
    UriParts p = split_uri(url);
    std::string out = p.scheme;
    if (p.has_userinfo) {
      size_t colon = p.userinfo.find(':');
      out += (colon == std::string::npos ? p.userinfo : p.userinfo.substr(0, colon) + ":***") + "@";
    }
    out += p.hostpath;
    if (!p.query.empty()) {
      std::string q;
      for (const auto& kv : split(p.query, '&')) {
        q += (q.empty() ? "" : "&") + (kv.rfind("password=", 0) == 0 ? std::string("password=***") : kv);
      }
      out += "?" + q;
    }
    return out;
  }
  return std::regex_replace(url, keyword_password_regex(), "$1***");
}

std::string scrub_secrets(std::string message, const std::string& url) {
  auto replace_all = [&message](const std::string& needle, const std::string& by) {
    if (needle.empty()) return;
    for (size_t pos = 0; (pos = message.find(needle, pos)) != std::string::npos; pos += by.size())
      message.replace(pos, needle.size(), by);
  };
  replace_all(url, redact_url(url));
  if (auto pw = extract_password(url)) {
    // Very short passwords would blank out ordinary words; they cannot be hidden in free text anyway.
    if (pw->size() >= 4) {
      replace_all(*pw, "***");
      replace_all(pct_encode(*pw), "***");
    }
  }
  return message;
}

std::string resolve_database_url(const std::optional<std::string>& url_option) {
  std::string url;
  if (url_option && !url_option->empty()) {
    url = *url_option;
  } else if (auto env = getenv_opt("QBENCH_DATABASE_URL")) {
    url = *env;
  } else {
    throw InputError("no database URL: pass --database-url or set QBENCH_DATABASE_URL "
                     "(postgresql://USER@HOST:PORT/DB)");
  }
  if (auto file = getenv_opt("QBENCH_DATABASE_PASSWORD_FILE")) {
    std::string pw = read_file(*file);
    while (!pw.empty() && (pw.back() == '\n' || pw.back() == '\r')) pw.pop_back();
    EVALSVC_CHECK(!pw.empty(), InputError, "QBENCH_DATABASE_PASSWORD_FILE '{}' is empty", *file);
    url = with_password(url, pw);
  }
  return url;
}

// =========================================================================================================
// Enums

const char* to_string(JobState s) {
  switch (s) {
    case JobState::kPending: return "pending";
    case JobState::kQueued: return "queued";
    case JobState::kRunning: return "running";
    case JobState::kDone: return "done";
    case JobState::kFailed: return "failed";
    case JobState::kCancelled: return "cancelled";
    case JobState::kBlocked: return "blocked";
  }
  return "?";
}

const char* to_string(RunState s) {
  switch (s) {
    case RunState::kPending: return "pending";
    case RunState::kRunning: return "running";
    case RunState::kDone: return "done";
    case RunState::kFailed: return "failed";
    case RunState::kCancelled: return "cancelled";
    case RunState::kBlocked: return "blocked";
  }
  return "?";
}

const char* to_string(BenchKind k) {
  switch (k) {
    case BenchKind::kLatency: return "latency";
    case BenchKind::kThroughput: return "throughput";
    case BenchKind::kDataset: return "dataset";
  }
  return "?";
}

std::optional<JobState> parse_job_state(std::string_view s) {
  for (JobState v : {JobState::kPending, JobState::kQueued, JobState::kRunning, JobState::kDone, JobState::kFailed,
                     JobState::kCancelled, JobState::kBlocked})
    if (s == to_string(v)) return v;
  return std::nullopt;
}

std::optional<RunState> parse_run_state(std::string_view s) {
  for (RunState v : {RunState::kPending, RunState::kRunning, RunState::kDone, RunState::kFailed, RunState::kCancelled,
                     RunState::kBlocked})
    if (s == to_string(v)) return v;
  return std::nullopt;
}

std::optional<BenchKind> parse_bench_kind(std::string_view s) {
  for (BenchKind v : {BenchKind::kLatency, BenchKind::kThroughput, BenchKind::kDataset})
    if (s == to_string(v)) return v;
  return std::nullopt;
}

bool is_terminal(JobState s) {
  return s == JobState::kDone || s == JobState::kFailed || s == JobState::kCancelled;
}
bool is_terminal(RunState s) {
  return s == RunState::kDone || s == RunState::kFailed || s == RunState::kCancelled;
}

// =========================================================================================================
// Row conversion helpers

namespace {

Timestamp to_timestamp(const pqxx::field& f) {
  return Timestamp(std::chrono::duration_cast<Timestamp::duration>(std::chrono::duration<double>(f.as<double>())));
}

std::optional<Timestamp> to_opt_timestamp(const pqxx::field& f) {
  if (f.is_null()) return std::nullopt;
  return to_timestamp(f);
}

std::optional<std::string> opt_string(const pqxx::field& f) {
  if (f.is_null()) return std::nullopt;
  return std::string(f.c_str());
}

template <class T>
std::optional<T> opt(const pqxx::field& f) {
  if (f.is_null()) return std::nullopt;
  return f.as<T>();
}

nlohmann::json parse_json(const pqxx::field& f, const char* what) {
  if (f.is_null()) return nlohmann::json();
  try {
    return nlohmann::json::parse(f.c_str());
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(fmt::format("{}: stored JSON does not parse: {}", what, e.what()));
  }
}

/// PostgreSQL array literal of text elements: every element double-quoted, '"' and '\' escaped.
std::string text_array_literal(const std::vector<std::string>& items) {
  std::string s = "{";
  for (size_t i = 0; i < items.size(); ++i) {
    if (i) s += ',';
    s += '"';
    for (char ch : items[i]) {
      if (ch == '"' || ch == '\\') s += '\\';
      s += ch;
    }
    s += '"';
  }
  return s + "}";
}

std::vector<std::string> parse_text_array(const pqxx::field& f) {
  std::vector<std::string> out;
  if (f.is_null()) return out;
  pqxx::array_parser parser = f.as_array();
  for (;;) {
    auto [j, value] = parser.get_next();
    if (j == pqxx::array_parser::done) break;
    if (j == pqxx::array_parser::string_value) out.push_back(value);
  }
  return out;
}

/// real[] literal with shortest round-trip decimals; NaN and infinities in PostgreSQL's spelling.
void append_real_array(std::string& s, const std::vector<float>& values) {
  s += '{';
  for (size_t i = 0; i < values.size(); ++i) {
    if (i) s += ',';
    const float v = values[i];
    if (std::isnan(v)) {
      s += "NaN";
    } else if (std::isinf(v)) {
      s += v > 0 ? "Infinity" : "-Infinity";
    } else {
      fmt::format_to(std::back_inserter(s), "{}", v);
    }
  }
  s += '}';
}

/// Parses a one-dimensional real[] text ("{1.5,-2,NaN,NULL}") into `out`; returns the element count.
size_t parse_real_array(const char* text, std::vector<float>& out, int32_t sample_idx) {
  const char* p = text;
  EVALSVC_CHECK(*p == '{', FormatError, "predictions.logits of sample {}: expected '{{', got '{}'", sample_idx,
                std::string(text).substr(0, 40));
  ++p;
  size_t n = 0;
  if (*p == '}') return 0;
  for (;;) {
    if (std::strncmp(p, "NULL", 4) == 0 && (p[4] == ',' || p[4] == '}')) {
      out.push_back(std::nanf(""));
      p += 4;
    } else {
      char* end = nullptr;
      float v = std::strtof(p, &end);
      EVALSVC_CHECK(end != p, FormatError, "predictions.logits of sample {}: bad element at '{}'", sample_idx,
                    std::string(p).substr(0, 20));
      out.push_back(v);
      p = end;
    }
    ++n;
    if (*p == ',') {
      ++p;
    } else if (*p == '}') {
      return n;
    } else {
      throw FormatError(fmt::format("predictions.logits of sample {}: unexpected '{}' in '{}'", sample_idx,
                                    std::string(p).substr(0, 1), std::string(text).substr(0, 60)));
    }
  }
}

const char* kJobColumns =
    "id, experiment_id, type, variant, shard, state, attempt, max_attempts, depends_on, queue, worker_id, error, "
    "result::text, extract(epoch from created_at), extract(epoch from updated_at), extract(epoch from queued_at), "
    "extract(epoch from started_at), extract(epoch from finished_at)";

JobRecord to_job(const pqxx::row& r) {
  JobRecord j;
  j.id = r[0].c_str();
  j.experiment_id = r[1].as<int64_t>();
  j.type = r[2].c_str();
  j.variant = opt_string(r[3]);
  j.shard = opt<int>(r[4]);
  auto st = parse_job_state(r[5].c_str());
  EVALSVC_CHECK(st.has_value(), FormatError, "jobs.state of job '{}' is '{}', not a known state", j.id, r[5].c_str());
  j.state = *st;
  j.attempt = r[6].as<int>();
  j.max_attempts = r[7].as<int>();
  j.depends_on = parse_text_array(r[8]);
  j.queue = r[9].c_str();
  j.worker_id = opt_string(r[10]);
  j.error = opt_string(r[11]);
  if (!r[12].is_null()) j.result = parse_json(r[12], "jobs.result");
  j.created_at = to_timestamp(r[13]);
  j.updated_at = to_timestamp(r[14]);
  j.queued_at = to_opt_timestamp(r[15]);
  j.started_at = to_opt_timestamp(r[16]);
  j.finished_at = to_opt_timestamp(r[17]);
  return j;
}

const char* kExperimentColumns =
    "id, name, spec::text, state, error, extract(epoch from created_at), extract(epoch from finished_at)";

Experiment to_experiment(const pqxx::row& r) {
  Experiment e;
  e.id = r[0].as<int64_t>();
  e.name = r[1].c_str();
  e.spec = parse_json(r[2], "experiments.spec");
  auto st = parse_run_state(r[3].c_str());
  EVALSVC_CHECK(st.has_value(), FormatError, "experiments.state of experiment {} is '{}'", e.id, r[3].c_str());
  e.state = *st;
  e.error = opt_string(r[4]);
  e.created_at = to_timestamp(r[5]);
  e.finished_at = to_opt_timestamp(r[6]);
  return e;
}

const char* kVariantColumns =
    "experiment_id, name, method, base_dtype, options::text, baseline, state, error, footprint_bytes, "
    "footprint_no_buffers_bytes, runtime_bytes, peak_mem_batch1_bytes, peak_mem_max_batch_bytes, max_batch_size";

VariantRecord to_variant(const pqxx::row& r) {
  VariantRecord v;
  v.experiment_id = r[0].as<int64_t>();
  v.name = r[1].c_str();
  v.method = r[2].c_str();
  v.base_dtype = r[3].c_str();
  v.options = parse_json(r[4], "variants.options");
  v.baseline = opt_string(r[5]);
  auto st = parse_run_state(r[6].c_str());
  EVALSVC_CHECK(st.has_value(), FormatError, "variants.state of '{}' is '{}'", v.name, r[6].c_str());
  v.state = *st;
  v.error = opt_string(r[7]);
  v.memory.footprint_bytes = opt<int64_t>(r[8]);
  v.memory.footprint_no_buffers_bytes = opt<int64_t>(r[9]);
  v.memory.runtime_bytes = opt<int64_t>(r[10]);
  v.memory.peak_mem_batch1_bytes = opt<int64_t>(r[11]);
  v.memory.peak_mem_max_batch_bytes = opt<int64_t>(r[12]);
  v.memory.max_batch_size = opt<int>(r[13]);
  return v;
}

std::optional<std::string> opt_json_text(const std::optional<nlohmann::json>& j) {
  if (!j) return std::nullopt;
  return j->dump();
}

/// Errors that mean "the connection is gone", after which a fresh connection can succeed.
bool is_connection_sqlstate(const std::string& state) {
  return state.rfind("08", 0) == 0 || state == "57P01" || state == "57P02" || state == "57P03";
}

/// Connection failures that retrying cannot fix (credentials, unknown database, bad options).
bool is_permanent_connect_error(const std::string& msg) {
  for (const char* s : {"authentication failed", "no password supplied", "does not exist", "permission denied",
                        "invalid", "missing \"=\"", "unrecognized", "is not permitted to log in"})
    if (msg.find(s) != std::string::npos) return true;
  return false;
}

enum class Retry { kAlways, kUnlessInDoubt };

}  // namespace

// =========================================================================================================
// Store

struct Store::Impl {
  std::string url;  ///< with credentials: never log it
  StoreOptions options;
  std::unique_ptr<pqxx::connection> conn;

  /// Server/libpq text without credentials, on one line (libpq adds "\n\tIs the server running..." hints).
  std::string clean(const std::string& msg) const {
    std::string s = trim_ws(scrub_secrets(msg, url));
    for (char& ch : s)
      if (ch == '\n' || ch == '\t') ch = ' ';
    return s;
  }

  void connect() {
    conn.reset();
    conn = std::make_unique<pqxx::connection>(
        add_param(url, "connect_timeout", std::to_string(options.connect_timeout_s)));
  }

  /// Runs fn(connection) and maps libpqxx failures to DatabaseError naming `what`. A broken connection is
  /// re-opened and fn re-run until options.reconnect_timeout; fn must therefore do all its work in one
  /// transaction. With kUnlessInDoubt, a commit whose outcome is unknown is reported instead of repeated.
  template <class Fn>
  auto run(const std::string& what, Fn&& fn, Retry retry = Retry::kAlways) -> decltype(fn(*conn)) {
    const auto deadline = std::chrono::steady_clock::now() + options.reconnect_timeout;
    auto backoff = std::chrono::milliseconds(50);
    for (int attempt = 1;; ++attempt) {
      std::string transient_error;
      try {
        if (!conn || !conn->is_open()) connect();
        return fn(*conn);
      } catch (const pqxx::in_doubt_error& e) {
        conn.reset();
        if (retry == Retry::kUnlessInDoubt)
          throw DatabaseError(fmt::format("{}: connection lost during commit, outcome unknown ({}) [{}]", what,
                                          clean(e.what()), redact_url(url)));
        transient_error = clean(e.what());
      } catch (const pqxx::broken_connection& e) {
        conn.reset();
        const std::string msg = clean(e.what());
        if (is_permanent_connect_error(msg))
          throw DatabaseError(fmt::format("{}: cannot connect to {}: {}", what, redact_url(url), msg));
        transient_error = msg;
      } catch (const pqxx::sql_error& e) {
        if (!is_connection_sqlstate(e.sqlstate())) {
          throw DatabaseError(fmt::format("{}: {} (SQLSTATE {}) [{}]", what, clean(e.what()), e.sqlstate(),
                                          redact_url(url)));
        }
        conn.reset();
        transient_error = clean(e.what());
      } catch (const pqxx::failure& e) {
        // libpqxx reports some losses (e.g. "Lost connection to the database server") as plain failures.
        if (conn && conn->is_open())
          throw DatabaseError(fmt::format("{}: {} [{}]", what, clean(e.what()), redact_url(url)));
        conn.reset();
        transient_error = clean(e.what());
      }
      if (std::chrono::steady_clock::now() + backoff > deadline)
        throw DatabaseError(fmt::format("{}: database {} unreachable for {} ms ({} attempts): {}", what,
                                        redact_url(url), options.reconnect_timeout.count(), attempt, transient_error));
      spdlog::warn("{}: database connection lost ({}), reconnecting to {} (attempt {})", what, transient_error,
                   redact_url(url), attempt);
      std::this_thread::sleep_for(backoff);
      backoff = std::min(backoff * 2, std::chrono::milliseconds(1000));
    }
  }
};

Store::Store(std::string url, StoreOptions options) : impl_(std::make_unique<Impl>()) {
  impl_->url = std::move(url);
  impl_->options = options;
  impl_->run("connect", [](pqxx::connection&) { return 0; });
}

Store::~Store() = default;
Store::Store(Store&&) noexcept = default;
Store& Store::operator=(Store&&) noexcept = default;

std::string Store::redacted_url() const { return redact_url(impl_->url); }

void Store::ping() {
  impl_->run("ping", [](pqxx::connection& c) {
    pqxx::nontransaction tx(c);
    tx.exec("SELECT 1");
    return 0;
  });
}

int Store::schema_version() {
  return impl_->run("schema_version", [](pqxx::connection& c) {
    pqxx::read_transaction tx(c);
    if (tx.exec1("SELECT to_regclass('schema_migrations') IS NULL")[0].as<bool>()) return 0;
    return tx.exec1("SELECT coalesce(max(version), 0) FROM schema_migrations")[0].as<int>();
  });
}

// ---- experiments ----------------------------------------------------------------------------------------

int64_t Store::create_experiment(const std::string& name, const nlohmann::json& spec) {
  EVALSVC_CHECK(!name.empty(), InputError, "create_experiment: empty experiment name");
  const std::string spec_text = spec.dump();
  return impl_->run(
      fmt::format("create_experiment '{}'", name),
      [&](pqxx::connection& c) {
        pqxx::work tx(c);
        auto r = tx.exec_params1("INSERT INTO experiments (name, spec) VALUES ($1, $2::jsonb) RETURNING id", name,
                                 spec_text);
        tx.commit();
        return r[0].as<int64_t>();
      },
      Retry::kUnlessInDoubt);
}

std::optional<Experiment> Store::get_experiment(int64_t id) {
  return impl_->run(fmt::format("get_experiment {}", id), [&](pqxx::connection& c) -> std::optional<Experiment> {
    pqxx::read_transaction tx(c);
    auto r = tx.exec_params(std::string("SELECT ") + kExperimentColumns + " FROM experiments WHERE id = $1", id);
    if (r.empty()) return std::nullopt;
    return to_experiment(r[0]);
  });
}

std::vector<Experiment> Store::list_experiments(int limit) {
  return impl_->run("list_experiments", [&](pqxx::connection& c) {
    pqxx::read_transaction tx(c);
    auto r = tx.exec_params(
        std::string("SELECT ") + kExperimentColumns + " FROM experiments ORDER BY created_at DESC, id DESC LIMIT $1",
        limit);
    std::vector<Experiment> out;
    for (const auto& row : r) out.push_back(to_experiment(row));
    return out;
  });
}

bool Store::set_experiment_state(int64_t id, RunState state, const std::optional<std::string>& error) {
  return impl_->run(fmt::format("set_experiment_state {} -> {}", id, to_string(state)), [&](pqxx::connection& c) {
    pqxx::work tx(c);
    auto r = tx.exec_params(
        "UPDATE experiments SET state = $2::text, error = CASE WHEN $2::text = 'done' THEN NULL "
        "ELSE coalesce($3, error) END, "
        "finished_at = CASE WHEN $2::text IN ('done', 'failed', 'cancelled') THEN coalesce(finished_at, now()) "
        "ELSE NULL END WHERE id = $1 RETURNING id",
        id, std::string(to_string(state)), error);
    tx.commit();
    return !r.empty();
  });
}

// ---- jobs -----------------------------------------------------------------------------------------------

namespace {

constexpr const char* kUpsertJobSql =
    "INSERT INTO jobs (id, experiment_id, type, variant, shard, state, attempt, max_attempts, depends_on, queue, "
    "worker_id, error, result, queued_at, started_at, finished_at) "
    "VALUES ($1, $2, $3, $4, $5, $6::text, $7, $8, $9::text[], $10, $11, $12, $13::jsonb, "
    "  CASE WHEN $6::text = 'queued' THEN now() END, CASE WHEN $6::text = 'running' THEN now() END, "
    "  CASE WHEN $6::text IN ('done', 'failed', 'cancelled') THEN now() END) "
    "ON CONFLICT (id) DO UPDATE SET experiment_id = EXCLUDED.experiment_id, type = EXCLUDED.type, "
    "  variant = EXCLUDED.variant, shard = EXCLUDED.shard, state = EXCLUDED.state, attempt = EXCLUDED.attempt, "
    "  max_attempts = EXCLUDED.max_attempts, depends_on = EXCLUDED.depends_on, queue = EXCLUDED.queue, "
    "  worker_id = EXCLUDED.worker_id, error = EXCLUDED.error, result = EXCLUDED.result, updated_at = now(), "
    "  queued_at = CASE WHEN EXCLUDED.state = 'queued' AND jobs.state <> 'queued' THEN now() ELSE jobs.queued_at END, "
    "  started_at = CASE WHEN EXCLUDED.state = 'running' AND jobs.state <> 'running' THEN now() "
    "    ELSE jobs.started_at END, "
    "  finished_at = CASE WHEN EXCLUDED.state IN ('done', 'failed', 'cancelled') THEN "
    "    CASE WHEN jobs.state = EXCLUDED.state THEN jobs.finished_at ELSE now() END ELSE NULL END";

void check_job(const JobRecord& j) {
  EVALSVC_CHECK(!j.id.empty(), InputError, "job record without an id (experiment {})", j.experiment_id);
  EVALSVC_CHECK(!j.type.empty(), InputError, "job '{}' has no type", j.id);
  EVALSVC_CHECK(j.attempt >= 0 && j.max_attempts >= 1, InputError,
                "job '{}': attempt {} / max_attempts {} (expected attempt >= 0, max_attempts >= 1)", j.id, j.attempt,
                j.max_attempts);
}

void exec_upsert_job(pqxx::work& tx, const JobRecord& j) {
  tx.exec_params(kUpsertJobSql, j.id, j.experiment_id, j.type, j.variant, j.shard, std::string(to_string(j.state)),
                 j.attempt, j.max_attempts, text_array_literal(j.depends_on), j.queue, j.worker_id, j.error,
                 opt_json_text(j.result));
}

}  // namespace

void Store::upsert_job(const JobRecord& job) {
  check_job(job);
  impl_->run(fmt::format("upsert_job '{}'", job.id), [&](pqxx::connection& c) {
    pqxx::work tx(c);
    exec_upsert_job(tx, job);
    tx.commit();
    return 0;
  });
}

void Store::upsert_jobs(const std::vector<JobRecord>& jobs) {
  for (const auto& j : jobs) check_job(j);
  if (jobs.empty()) return;
  impl_->run(fmt::format("upsert_jobs ({} jobs)", jobs.size()), [&](pqxx::connection& c) {
    pqxx::work tx(c);
    for (const auto& j : jobs) exec_upsert_job(tx, j);
    tx.commit();
    return 0;
  });
}

std::optional<JobRecord> Store::get_job(const std::string& id) {
  return impl_->run(fmt::format("get_job '{}'", id), [&](pqxx::connection& c) -> std::optional<JobRecord> {
    pqxx::read_transaction tx(c);
    auto r = tx.exec_params(std::string("SELECT ") + kJobColumns + " FROM jobs WHERE id = $1", id);
    if (r.empty()) return std::nullopt;
    return to_job(r[0]);
  });
}

std::vector<JobRecord> Store::list_jobs(int64_t experiment_id, std::optional<JobState> state) {
  std::optional<std::string> state_text;
  if (state) state_text = to_string(*state);
  return impl_->run(fmt::format("list_jobs of experiment {}", experiment_id), [&](pqxx::connection& c) {
    pqxx::read_transaction tx(c);
    auto r = tx.exec_params(std::string("SELECT ") + kJobColumns +
                                " FROM jobs WHERE experiment_id = $1 AND ($2::text IS NULL OR state = $2::text) "
                                "ORDER BY id",
                            experiment_id, state_text);
    std::vector<JobRecord> out;
    for (const auto& row : r) out.push_back(to_job(row));
    return out;
  });
}

std::vector<JobRecord> Store::list_open_jobs() {
  return impl_->run("list_open_jobs", [&](pqxx::connection& c) {
    pqxx::read_transaction tx(c);
    auto r = tx.exec(std::string("SELECT ") + kJobColumns +
                     " FROM jobs WHERE state IN ('pending', 'queued', 'running', 'blocked') "
                     "ORDER BY experiment_id, id");
    std::vector<JobRecord> out;
    for (const auto& row : r) out.push_back(to_job(row));
    return out;
  });
}

bool Store::set_job_state(const std::string& id, JobState state, const JobUpdate& update,
                          const std::vector<JobState>& only_from) {
  EVALSVC_CHECK(!update.attempt || *update.attempt >= 0, InputError, "set_job_state '{}': attempt {} < 0", id,
                *update.attempt);
  std::optional<std::string> from;
  if (!only_from.empty()) {
    std::vector<std::string> names;
    for (JobState s : only_from) names.emplace_back(to_string(s));
    from = text_array_literal(names);
  }
  return impl_->run(fmt::format("set_job_state '{}' -> {}", id, to_string(state)), [&](pqxx::connection& c) {
    pqxx::work tx(c);
    auto r = tx.exec_params(
        "UPDATE jobs SET state = $2::text, worker_id = coalesce($3, worker_id), "
        "  error = CASE WHEN $2::text = 'done' THEN NULL ELSE coalesce($4, error) END, "
        "  result = coalesce($5::jsonb, result), attempt = coalesce($6::integer, attempt), updated_at = now(), "
        "  queued_at = CASE WHEN $2::text = 'queued' AND state <> 'queued' THEN now() ELSE queued_at END, "
        "  started_at = CASE WHEN $2::text = 'running' AND state <> 'running' THEN now() ELSE started_at END, "
        "  finished_at = CASE WHEN $2::text IN ('done', 'failed', 'cancelled') THEN "
        "    CASE WHEN state = $2::text THEN finished_at ELSE now() END ELSE NULL END "
        "WHERE id = $1 AND ($7::text[] IS NULL OR state = ANY($7::text[])) RETURNING id",
        id, std::string(to_string(state)), update.worker_id, update.error, opt_json_text(update.result),
        update.attempt, from);
    tx.commit();
    return !r.empty();
  });
}

std::map<JobState, int64_t> Store::job_state_counts(int64_t experiment_id) {
  return impl_->run(fmt::format("job_state_counts of experiment {}", experiment_id), [&](pqxx::connection& c) {
    pqxx::read_transaction tx(c);
    auto r = tx.exec_params("SELECT state, count(*) FROM jobs WHERE experiment_id = $1 GROUP BY state", experiment_id);
    std::map<JobState, int64_t> out;
    for (const auto& row : r) {
      auto st = parse_job_state(row[0].c_str());
      EVALSVC_CHECK(st.has_value(), FormatError, "jobs.state '{}' in experiment {}", row[0].c_str(), experiment_id);
      out[*st] = row[1].as<int64_t>();
    }
    return out;
  });
}

ServiceStats Store::service_stats(const std::vector<double>& duration_bounds) {
  EVALSVC_CHECK(!duration_bounds.empty(), InputError, "service_stats: no duration bounds");
  for (size_t i = 0; i < duration_bounds.size(); ++i) {
    EVALSVC_CHECK(std::isfinite(duration_bounds[i]) && (i == 0 || duration_bounds[i] > duration_bounds[i - 1]),
                  InputError, "service_stats: duration bound {} ({}) must be finite and above the one before it", i,
                  duration_bounds[i]);
  }
  // The bounds travel as one float8[] parameter (a text array literal), never spliced into the SQL.
  std::string bounds = "{";
  for (size_t i = 0; i < duration_bounds.size(); ++i) bounds += fmt::format("{}{:.17g}", i ? "," : "", duration_bounds[i]);
  bounds += "}";
  return impl_->run("service_stats", [&](pqxx::connection& c) {
    pqxx::read_transaction tx(c);
    ServiceStats out;
    for (const auto& row : tx.exec("SELECT type, state, count(*), sum(greatest(attempt - 1, 0)) FROM jobs GROUP BY type, state")) {
      auto st = parse_job_state(row[1].c_str());
      EVALSVC_CHECK(st.has_value(), FormatError, "jobs.state '{}' (type {})", row[1].c_str(), row[0].c_str());
      out.jobs[{row[0].c_str(), *st}] = row[2].as<int64_t>();
      out.retries[row[0].c_str()] += row[3].as<int64_t>();
    }
    for (const auto& row : tx.exec("SELECT state, count(*) FROM experiments GROUP BY state")) {
      auto st = parse_run_state(row[0].c_str());
      EVALSVC_CHECK(st.has_value(), FormatError, "experiments.state '{}'", row[0].c_str());
      out.experiments[*st] = row[1].as<int64_t>();
    }
    // Durations of done jobs, one statement so that buckets, count and sum agree; a clock step backwards
    // must not make a negative duration. Every job row meets every bound, so count(*) per (type, bound)
    // is the type's count.
    auto r = tx.exec_params(
        "SELECT s.type, b.i, count(*) FILTER (WHERE s.d <= b.le), count(*), sum(s.d) FROM ("
        "SELECT type, greatest(0, extract(epoch FROM finished_at - coalesce(started_at, queued_at)))::float8 AS d "
        "FROM jobs WHERE state = 'done' AND finished_at IS NOT NULL AND coalesce(started_at, queued_at) IS NOT NULL"
        ") s CROSS JOIN unnest($1::float8[]) WITH ORDINALITY AS b(le, i) GROUP BY s.type, b.i",
        bounds);
    for (const auto& row : r) {
      auto& d = out.durations[row[0].c_str()];
      d.cumulative.resize(duration_bounds.size(), 0);
      const auto i = row[1].as<int64_t>() - 1;  // ORDINALITY counts from 1
      EVALSVC_CHECK(i >= 0 && static_cast<size_t>(i) < d.cumulative.size(), InternalError,
                    "service_stats: bucket {} out of range", i);
      d.cumulative[static_cast<size_t>(i)] = row[2].as<int64_t>();
      d.count = row[3].as<int64_t>();
      d.sum_seconds = row[4].as<double>();
    }
    return out;
  });
}

// ---- workers --------------------------------------------------------------------------------------------

void Store::upsert_worker(const WorkerRecord& worker) {
  EVALSVC_CHECK(!worker.id.empty(), InputError, "upsert_worker: empty worker id (host '{}')", worker.host);
  const std::string devices = worker.devices.dump();
  impl_->run(fmt::format("upsert_worker '{}'", worker.id), [&](pqxx::connection& c) {
    pqxx::work tx(c);
    tx.exec_params(
        "INSERT INTO workers (id, host, devices) VALUES ($1, $2, $3::jsonb) ON CONFLICT (id) DO UPDATE SET "
        "host = EXCLUDED.host, devices = EXCLUDED.devices, last_seen = now()",
        worker.id, worker.host, devices);
    tx.commit();
    return 0;
  });
}

bool Store::touch_worker(const std::string& id) {
  return impl_->run(fmt::format("touch_worker '{}'", id), [&](pqxx::connection& c) {
    pqxx::work tx(c);
    auto r = tx.exec_params("UPDATE workers SET last_seen = now() WHERE id = $1 RETURNING id", id);
    tx.commit();
    return !r.empty();
  });
}

std::vector<WorkerRecord> Store::list_workers() {
  return impl_->run("list_workers", [&](pqxx::connection& c) {
    pqxx::read_transaction tx(c);
    auto r = tx.exec(
        "SELECT id, host, devices::text, extract(epoch from started_at), extract(epoch from last_seen) "
        "FROM workers ORDER BY id");
    std::vector<WorkerRecord> out;
    for (const auto& row : r) {
      WorkerRecord w;
      w.id = row[0].c_str();
      w.host = row[1].c_str();
      w.devices = parse_json(row[2], "workers.devices");
      w.started_at = to_timestamp(row[3]);
      w.last_seen = to_timestamp(row[4]);
      out.push_back(std::move(w));
    }
    return out;
  });
}

// ---- variants -------------------------------------------------------------------------------------------

void Store::upsert_variant(const VariantRecord& v) {
  EVALSVC_CHECK(!v.name.empty() && !v.method.empty() && !v.base_dtype.empty(), InputError,
                "upsert_variant (experiment {}): name '{}', method '{}', base_dtype '{}' must all be set",
                v.experiment_id, v.name, v.method, v.base_dtype);
  const std::string options = v.options.dump();
  impl_->run(fmt::format("upsert_variant '{}' of experiment {}", v.name, v.experiment_id), [&](pqxx::connection& c) {
    pqxx::work tx(c);
    tx.exec_params(
        "INSERT INTO variants (experiment_id, name, method, base_dtype, options, baseline, state, error, "
        "  footprint_bytes, footprint_no_buffers_bytes, runtime_bytes, peak_mem_batch1_bytes, "
        "  peak_mem_max_batch_bytes, max_batch_size) "
        "VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8, $9, $10, $11, $12, $13, $14) "
        "ON CONFLICT (experiment_id, name) DO UPDATE SET method = EXCLUDED.method, "
        "  base_dtype = EXCLUDED.base_dtype, options = EXCLUDED.options, baseline = EXCLUDED.baseline, "
        "  updated_at = now()",
        v.experiment_id, v.name, v.method, v.base_dtype, options, v.baseline, std::string(to_string(v.state)),
        v.error, v.memory.footprint_bytes, v.memory.footprint_no_buffers_bytes, v.memory.runtime_bytes,
        v.memory.peak_mem_batch1_bytes, v.memory.peak_mem_max_batch_bytes, v.memory.max_batch_size);
    tx.commit();
    return 0;
  });
}

std::optional<VariantRecord> Store::get_variant(int64_t experiment_id, const std::string& name) {
  return impl_->run(fmt::format("get_variant '{}' of experiment {}", name, experiment_id),
                    [&](pqxx::connection& c) -> std::optional<VariantRecord> {
                      pqxx::read_transaction tx(c);
                      auto r = tx.exec_params(std::string("SELECT ") + kVariantColumns +
                                                  " FROM variants WHERE experiment_id = $1 AND name = $2",
                                              experiment_id, name);
                      if (r.empty()) return std::nullopt;
                      return to_variant(r[0]);
                    });
}

std::vector<VariantRecord> Store::list_variants(int64_t experiment_id) {
  return impl_->run(fmt::format("list_variants of experiment {}", experiment_id), [&](pqxx::connection& c) {
    pqxx::read_transaction tx(c);
    auto r = tx.exec_params(
        std::string("SELECT ") + kVariantColumns + " FROM variants WHERE experiment_id = $1 ORDER BY created_at, name",
        experiment_id);
    std::vector<VariantRecord> out;
    for (const auto& row : r) out.push_back(to_variant(row));
    return out;
  });
}

bool Store::set_variant_state(int64_t experiment_id, const std::string& name, RunState state,
                              const std::optional<std::string>& error) {
  return impl_->run(
      fmt::format("set_variant_state '{}' of experiment {} -> {}", name, experiment_id, to_string(state)),
      [&](pqxx::connection& c) {
        pqxx::work tx(c);
        auto r = tx.exec_params(
            "UPDATE variants SET state = $3::text, error = CASE WHEN $3::text = 'done' THEN NULL "
            "ELSE coalesce($4, error) END, updated_at = now() WHERE experiment_id = $1 AND name = $2 RETURNING name",
            experiment_id, name, std::string(to_string(state)), error);
        tx.commit();
        return !r.empty();
      });
}

bool Store::set_variant_memory(int64_t experiment_id, const std::string& name, const VariantMemory& m) {
  return impl_->run(fmt::format("set_variant_memory '{}' of experiment {}", name, experiment_id),
                    [&](pqxx::connection& c) {
                      pqxx::work tx(c);
                      auto r = tx.exec_params(
                          "UPDATE variants SET footprint_bytes = coalesce($3, footprint_bytes), "
                          "  footprint_no_buffers_bytes = coalesce($4, footprint_no_buffers_bytes), "
                          "  runtime_bytes = coalesce($5, runtime_bytes), "
                          "  peak_mem_batch1_bytes = coalesce($6, peak_mem_batch1_bytes), "
                          "  peak_mem_max_batch_bytes = coalesce($7, peak_mem_max_batch_bytes), "
                          "  max_batch_size = coalesce($8, max_batch_size), updated_at = now() "
                          "WHERE experiment_id = $1 AND name = $2 RETURNING name",
                          experiment_id, name, m.footprint_bytes, m.footprint_no_buffers_bytes, m.runtime_bytes,
                          m.peak_mem_batch1_bytes, m.peak_mem_max_batch_bytes, m.max_batch_size);
                      tx.commit();
                      return !r.empty();
                    });
}

// ---- predictions ----------------------------------------------------------------------------------------

WriteResult Store::write_predictions(int64_t experiment_id, const std::string& variant, int shard,
                                     const std::string& job_id, const std::vector<PredictionRow>& rows,
                                     const ShardTiming& timing) {
  EVALSVC_CHECK(shard >= 0, InputError, "write_predictions '{}' (job '{}'): shard {} < 0", variant, job_id, shard);
  EVALSVC_CHECK(!job_id.empty(), InputError, "write_predictions '{}' shard {}: empty job id", variant, shard);
  EVALSVC_CHECK(timing.seconds >= 0 && std::isfinite(timing.seconds), InputError,
                "write_predictions job '{}': shard seconds {} (expected a finite value >= 0)", job_id, timing.seconds);
  // Render the COPY fields once, outside the retry loop.
  std::vector<std::optional<std::string>> logits(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    const PredictionRow& r = rows[i];
    EVALSVC_CHECK(r.sample_idx >= 0 && r.label >= 0 && r.pred >= 0, InputError,
                  "write_predictions job '{}' row {}: sample_idx {}, label {}, pred {} (expected all >= 0)", job_id, i,
                  r.sample_idx, r.label, r.pred);
    if (!r.logits.empty()) {
      std::string s;
      append_real_array(s, r.logits);
      logits[i] = std::move(s);
    }
  }
  std::optional<double> rate;
  if (timing.seconds > 0) rate = static_cast<double>(rows.size()) / timing.seconds;
  const std::string device = timing.device.dump();
  return impl_->run(
      fmt::format("write_predictions '{}' shard {} of experiment {} (job '{}')", variant, shard, experiment_id,
                  job_id),
      [&](pqxx::connection& c) {
        pqxx::work tx(c);
        // COPY is ~10x faster than row INSERTs; the staging table lets the final INSERT skip rows that a
        // previous delivery of this (or an overlapping) shard already stored.
        tx.exec(
            "CREATE TEMP TABLE qbench_pred_stage (sample_idx integer NOT NULL, label smallint NOT NULL, "
            "pred smallint NOT NULL, logits real[]) ON COMMIT DROP");
        {
          pqxx::stream_to copy(tx, "qbench_pred_stage", std::vector<std::string>{"sample_idx", "label", "pred", "logits"});
          for (size_t i = 0; i < rows.size(); ++i)
            copy << std::make_tuple(rows[i].sample_idx, rows[i].label, rows[i].pred, logits[i]);
          copy.complete();
        }
        auto ins = tx.exec_params(
            "INSERT INTO predictions (experiment_id, variant, sample_idx, shard, label, pred, logits) "
            "SELECT $1, $2, sample_idx, $3, label, pred, logits FROM qbench_pred_stage ON CONFLICT DO NOTHING",
            experiment_id, variant, shard);
        auto shard_row = tx.exec_params1(
            "INSERT INTO eval_shards (experiment_id, variant, shard, job_id, n, seconds, samples_per_s, device) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb) "
            "ON CONFLICT (experiment_id, variant, shard) DO UPDATE SET deliveries = eval_shards.deliveries + 1, "
            "updated_at = now() RETURNING deliveries",
            experiment_id, variant, shard, job_id, static_cast<int64_t>(rows.size()), timing.seconds, rate, device);
        tx.commit();
        WriteResult w;
        w.inserted = static_cast<int64_t>(ins.affected_rows());
        w.duplicates = static_cast<int64_t>(rows.size()) - w.inserted;
        w.deliveries = shard_row[0].as<int>();
        return w;
      });
}

Predictions Store::read_predictions(int64_t experiment_id, const std::string& variant) {
  return impl_->run(fmt::format("read_predictions '{}' of experiment {}", variant, experiment_id),
                    [&](pqxx::connection& c) {
                      pqxx::read_transaction tx(c);
                      auto r = tx.exec_params(
                          "SELECT sample_idx, label, pred, logits FROM predictions "
                          "WHERE experiment_id = $1 AND variant = $2 ORDER BY sample_idx",
                          experiment_id, variant);
                      Predictions p;
                      p.sample_idx.reserve(r.size());
                      p.label.reserve(r.size());
                      p.pred.reserve(r.size());
                      std::vector<float> row_logits;
                      std::vector<size_t> null_rows;  // rows without logits, filled with NaN once the width is known
                      bool width_known = false;
                      for (const auto& row : r) {
                        const int32_t idx = row[0].as<int32_t>();
                        p.sample_idx.push_back(idx);
                        p.label.push_back(row[1].as<int16_t>());
                        p.pred.push_back(row[2].as<int16_t>());
                        if (row[3].is_null()) {
                          null_rows.push_back(p.size() - 1);
                          if (width_known) p.logits.insert(p.logits.end(), p.num_logits, std::nanf(""));
                          continue;
                        }
                        row_logits.clear();
                        const size_t n = parse_real_array(row[3].c_str(), row_logits, idx);
                        if (!width_known) {
                          width_known = true;
                          p.num_logits = static_cast<int>(n);
                          // earlier rows had no logits
                          p.logits.assign(null_rows.size() * n, std::nanf(""));
                        }
                        EVALSVC_CHECK(n == static_cast<size_t>(p.num_logits), FormatError,
                                      "predictions of '{}' (experiment {}): sample {} has {} logits, earlier rows {}",
                                      variant, experiment_id, idx, n, p.num_logits);
                        p.logits.insert(p.logits.end(), row_logits.begin(), row_logits.end());
                      }
                      return p;
                    });
}

std::vector<EvalShard> Store::list_eval_shards(int64_t experiment_id, const std::string& variant) {
  return impl_->run(fmt::format("list_eval_shards '{}' of experiment {}", variant, experiment_id),
                    [&](pqxx::connection& c) {
                      pqxx::read_transaction tx(c);
                      auto r = tx.exec_params(
                          "SELECT experiment_id, variant, shard, job_id, n, seconds, samples_per_s, device::text, "
                          "deliveries FROM eval_shards WHERE experiment_id = $1 AND variant = $2 ORDER BY shard",
                          experiment_id, variant);
                      std::vector<EvalShard> out;
                      for (const auto& row : r) {
                        EvalShard s;
                        s.experiment_id = row[0].as<int64_t>();
                        s.variant = row[1].c_str();
                        s.shard = row[2].as<int>();
                        s.job_id = row[3].c_str();
                        s.n = row[4].as<int>();
                        s.seconds = row[5].as<double>();
                        s.samples_per_s = opt<double>(row[6]);
                        s.device = parse_json(row[7], "eval_shards.device");
                        s.deliveries = row[8].as<int>();
                        out.push_back(std::move(s));
                      }
                      return out;
                    });
}

std::vector<VariantMetrics> Store::variant_metrics(int64_t experiment_id) {
  return impl_->run(fmt::format("variant_metrics of experiment {}", experiment_id), [&](pqxx::connection& c) {
    pqxx::read_transaction tx(c);
    auto r = tx.exec_params(
        "SELECT experiment_id, variant, n, correct, accuracy FROM variant_metrics WHERE experiment_id = $1 "
        "ORDER BY variant",
        experiment_id);
    std::vector<VariantMetrics> out;
    for (const auto& row : r)
      out.push_back({row[0].as<int64_t>(), row[1].c_str(), row[2].as<int64_t>(), row[3].as<int64_t>(),
                     row[4].as<double>()});
    return out;
  });
}

// ---- bench and training ---------------------------------------------------------------------------------

void Store::upsert_bench_result(const BenchResult& b) {
  EVALSVC_CHECK(b.batch_size >= 1 && b.seq_len >= 0, InputError,
                "upsert_bench_result '{}': batch_size {} seq_len {} (expected >= 1 and >= 0)", b.variant, b.batch_size,
                b.seq_len);
  const std::string device = b.device.dump();
  impl_->run(fmt::format("upsert_bench_result '{}' {} batch {} of experiment {}", b.variant, to_string(b.kind),
                         b.batch_size, b.experiment_id),
             [&](pqxx::connection& c) {
               pqxx::work tx(c);
               tx.exec_params(
                   "INSERT INTO bench_results (experiment_id, variant, kind, batch_size, seq_len, p50_ms, p90_ms, "
                   "  p99_ms, samples_per_s, peak_mem_bytes, warmup_runs, timed_runs, device) "
                   "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13::jsonb) "
                   "ON CONFLICT (experiment_id, variant, kind, batch_size, seq_len) DO UPDATE SET "
                   "  p50_ms = EXCLUDED.p50_ms, p90_ms = EXCLUDED.p90_ms, p99_ms = EXCLUDED.p99_ms, "
                   "  samples_per_s = EXCLUDED.samples_per_s, peak_mem_bytes = EXCLUDED.peak_mem_bytes, "
                   "  warmup_runs = EXCLUDED.warmup_runs, timed_runs = EXCLUDED.timed_runs, "
                   "  device = EXCLUDED.device, created_at = now()",
                   b.experiment_id, b.variant, std::string(to_string(b.kind)), b.batch_size, b.seq_len, b.p50_ms,
                   b.p90_ms, b.p99_ms, b.samples_per_s, b.peak_mem_bytes, b.warmup_runs, b.timed_runs, device);
               tx.commit();
               return 0;
             });
}

std::vector<BenchResult> Store::list_bench_results(int64_t experiment_id) {
  return impl_->run(fmt::format("list_bench_results of experiment {}", experiment_id), [&](pqxx::connection& c) {
    pqxx::read_transaction tx(c);
    auto r = tx.exec_params(
        "SELECT experiment_id, variant, kind, batch_size, seq_len, p50_ms, p90_ms, p99_ms, samples_per_s, "
        "peak_mem_bytes, warmup_runs, timed_runs, device::text FROM bench_results WHERE experiment_id = $1 "
        "ORDER BY variant, kind, batch_size, seq_len",
        experiment_id);
    std::vector<BenchResult> out;
    for (const auto& row : r) {
      BenchResult b;
      b.experiment_id = row[0].as<int64_t>();
      b.variant = row[1].c_str();
      auto kind = parse_bench_kind(row[2].c_str());
      EVALSVC_CHECK(kind.has_value(), FormatError, "bench_results.kind '{}'", row[2].c_str());
      b.kind = *kind;
      b.batch_size = row[3].as<int>();
      b.seq_len = row[4].as<int>();
      b.p50_ms = opt<double>(row[5]);
      b.p90_ms = opt<double>(row[6]);
      b.p99_ms = opt<double>(row[7]);
      b.samples_per_s = opt<double>(row[8]);
      b.peak_mem_bytes = opt<int64_t>(row[9]);
      b.warmup_runs = opt<int>(row[10]);
      b.timed_runs = opt<int>(row[11]);
      b.device = parse_json(row[12], "bench_results.device");
      out.push_back(std::move(b));
    }
    return out;
  });
}

int64_t Store::insert_training_run(const TrainingRun& t) {
  EVALSVC_CHECK(t.epochs >= 0 && t.seconds >= 0, InputError,
                "insert_training_run (experiment {}): epochs {} seconds {} (expected >= 0)", t.experiment_id, t.epochs,
                t.seconds);
  const std::string device = t.device.dump();
  const std::string history = t.history.dump();
  return impl_->run(
      fmt::format("insert_training_run of experiment {}", t.experiment_id),
      [&](pqxx::connection& c) {
        pqxx::work tx(c);
        auto r = tx.exec_params1(
            "INSERT INTO training_runs (experiment_id, job_id, epochs, seconds, samples_per_s, final_loss, "
            "  val_accuracy, device, history) VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9::jsonb) "
            "ON CONFLICT (job_id) DO UPDATE SET experiment_id = EXCLUDED.experiment_id, epochs = EXCLUDED.epochs, "
            "  seconds = EXCLUDED.seconds, samples_per_s = EXCLUDED.samples_per_s, "
            "  final_loss = EXCLUDED.final_loss, val_accuracy = EXCLUDED.val_accuracy, device = EXCLUDED.device, "
            "  history = EXCLUDED.history, created_at = now() RETURNING id",
            t.experiment_id, t.job_id, t.epochs, t.seconds, t.samples_per_s, t.final_loss, t.val_accuracy, device,
            history);
        tx.commit();
        return r[0].as<int64_t>();
      },
      // Without a job_id a repeated insert would add a second row.
      t.job_id ? Retry::kAlways : Retry::kUnlessInDoubt);
}

std::vector<TrainingRun> Store::list_training_runs(int64_t experiment_id) {
  return impl_->run(fmt::format("list_training_runs of experiment {}", experiment_id), [&](pqxx::connection& c) {
    pqxx::read_transaction tx(c);
    auto r = tx.exec_params(
        "SELECT id, experiment_id, job_id, epochs, seconds, samples_per_s, final_loss, val_accuracy, device::text, "
        "history::text FROM training_runs WHERE experiment_id = $1 ORDER BY created_at, id",
        experiment_id);
    std::vector<TrainingRun> out;
    for (const auto& row : r) {
      TrainingRun t;
      t.id = row[0].as<int64_t>();
      t.experiment_id = row[1].as<int64_t>();
      t.job_id = opt_string(row[2]);
      t.epochs = row[3].as<int>();
      t.seconds = row[4].as<double>();
      t.samples_per_s = opt<double>(row[5]);
      t.final_loss = opt<double>(row[6]);
      t.val_accuracy = opt<double>(row[7]);
      t.device = parse_json(row[8], "training_runs.device");
      t.history = parse_json(row[9], "training_runs.history");
      out.push_back(std::move(t));
    }
    return out;
  });
}

// ---- quantization error ---------------------------------------------------------------------------------

namespace {
// The four block projections in Hugging Face order; the migration's CHECK allows exactly these.
const std::vector<std::string> kProjections = {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"};
}  // namespace

void Store::write_layer_errors(int64_t experiment_id, const std::string& variant, const std::vector<LayerError>& rows) {
  std::vector<LayerError> checked = rows;
  std::set<std::pair<int, std::string>> seen;
  for (size_t i = 0; i < checked.size(); ++i) {
    LayerError& e = checked[i];
    const std::string where = fmt::format("write_layer_errors '{}' of experiment {}, row {} (layer {} {})", variant,
                                          experiment_id, i, e.layer, e.projection);
    EVALSVC_CHECK(e.experiment_id == experiment_id && e.variant == variant, InputError,
                  "{}: the row belongs to variant '{}' of experiment {}", where, e.variant, e.experiment_id);
    EVALSVC_CHECK(e.layer >= 0, InputError, "{}: layer must be >= 0", where);
    EVALSVC_CHECK(std::find(kProjections.begin(), kProjections.end(), e.projection) != kProjections.end(), InputError,
                  "{}: projection must be one of attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj", where);
    EVALSVC_CHECK(seen.insert({e.layer, e.projection}).second, InputError, "{}: duplicate (layer, projection)", where);
    EVALSVC_CHECK(e.numel > 0, InputError, "{}: numel must be > 0, got {}", where, e.numel);
    EVALSVC_CHECK(std::isfinite(e.max_abs_error) && e.max_abs_error >= 0, InputError,
                  "{}: max_abs_error must be finite and >= 0, got {}", where, e.max_abs_error);
    try {
      e.sqnr_db = sqnr_db(e.signal_sq, e.error_sq);
    } catch (const InputError& err) {
      throw InputError(fmt::format("{}: {}", where, err.what()));
    }
  }
  impl_->run(fmt::format("write_layer_errors '{}' of experiment {}", variant, experiment_id), [&](pqxx::connection& c) {
    pqxx::work tx(c);
    tx.exec_params("DELETE FROM layer_errors WHERE experiment_id = $1 AND variant = $2", experiment_id, variant);
    for (const auto& e : checked) {
      tx.exec_params(
          "INSERT INTO layer_errors (experiment_id, variant, layer, projection, numel, signal_sq, error_sq, "
          "  max_abs_error, sqnr_db, device, job_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb, $11)",
          experiment_id, variant, e.layer, e.projection, e.numel, e.signal_sq, e.error_sq, e.max_abs_error, e.sqnr_db,
          e.device.dump(), e.job_id);
    }
    tx.commit();
    return 0;
  });
}

std::vector<LayerError> Store::list_layer_errors(int64_t experiment_id) {
  return impl_->run(fmt::format("list_layer_errors of experiment {}", experiment_id), [&](pqxx::connection& c) {
    pqxx::read_transaction tx(c);
    auto r = tx.exec_params(
        "SELECT experiment_id, variant, layer, projection, numel, signal_sq, error_sq, max_abs_error, sqnr_db, "
        "device::text, job_id FROM layer_errors WHERE experiment_id = $1 ORDER BY variant, layer, "
        "array_position(ARRAY['attn.c_attn', 'attn.c_proj', 'mlp.c_fc', 'mlp.c_proj'], projection)",
        experiment_id);
    std::vector<LayerError> out;
    for (const auto& row : r) {
      LayerError e;
      e.experiment_id = row[0].as<int64_t>();
      e.variant = row[1].c_str();
      e.layer = row[2].as<int>();
      e.projection = row[3].c_str();
      e.numel = row[4].as<int64_t>();
      e.signal_sq = row[5].as<double>();
      e.error_sq = row[6].as<double>();
      e.max_abs_error = row[7].as<double>();
      e.sqnr_db = opt<double>(row[8]);
      e.device = parse_json(row[9], "layer_errors.device");
      e.job_id = opt_string(row[10]);
      out.push_back(std::move(e));
    }
    return out;
  });
}

}  // namespace evalsvc::scheduler
