// The scheduler's /healthz and /metrics endpoint against a real redis-server and PostgreSQL, fetched over
// TCP: the Prometheus text is parsed line by line (HELP/TYPE before samples, label escapes, histogram
// invariants) and every value is compared with what the store and the queue hold; then each server is
// stopped in turn and the endpoint must name it. Also: 404/405/400, HEAD, keep-alive, bad listen addresses.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <atomic>
#include <cmath>
#include <filesystem>
#include <map>
#include <regex>
#include <set>
#include <thread>

#include "evalsvc/common/paths.h"
#include "evalsvc/common/error.h"
#include "evalsvc/scheduler/http_server.h"
#include "evalsvc/scheduler/local_postgres.h"
#include "evalsvc/scheduler/local_servers.h"
#include "evalsvc/scheduler/metrics.h"
#include "evalsvc/scheduler/store.h"
#include "evalsvc/scheduler/worker_runtime.h"

namespace evalsvc::scheduler {
namespace {

namespace fs = std::filesystem;
namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using nlohmann::json;
using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

fs::path make_temp_dir(const char* prefix) {
  std::string tmpl = (fs::temp_directory_path() / (std::string(prefix) + "-XXXXXX")).string();
  char* p = ::mkdtemp(tmpl.data());
  if (p == nullptr) throw IoError("mkdtemp failed for " + tmpl);
  return p;
}

template <typename Cond>
bool wait_until(Cond cond, milliseconds limit) {
  const auto until = Clock::now() + limit;
  while (Clock::now() < until) {
    if (cond()) return true;
    std::this_thread::sleep_for(milliseconds(20));
  }
  return cond();
}

struct Response {
  int status = 0;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;
};

Response to_response(http::response<http::string_body>& r) {
  Response out;
  out.status = static_cast<int>(r.result_int());
  for (const auto& f : r) {
    std::string name(f.name_string());
    std::transform(name.begin(), name.end(), name.begin(), ::tolower);
    out.headers[name] = std::string(f.value());
  }
  out.body = r.body();
  return out;
}

/// One request on a fresh TCP connection (or, with `n` > 1, the same request `n` times on one kept-alive
/// connection; the last response is returned).
Response fetch(int port, http::verb method, const std::string& target, int n = 1) {
  net::io_context io;
  tcp::socket s(io);
  s.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), static_cast<unsigned short>(port)));
  beast::flat_buffer buf;
  Response last;
  for (int i = 0; i < n; ++i) {
    http::request<http::string_body> req{method, target, 11};
    req.set(http::field::host, "127.0.0.1");
    req.keep_alive(i + 1 < n);
    if (method == http::verb::post) req.body() = "x=1";
    req.prepare_payload();
    http::write(s, req);
    http::response_parser<http::string_body> p;
    p.skip(method == http::verb::head);  // a HEAD response announces a body it does not send
    http::read(s, buf, p);
    last = to_response(p.get());
  }
  return last;
}

/// Sends raw bytes and returns everything the server answers before closing.
std::string raw_exchange(int port, const std::string& bytes) {
  net::io_context io;
  tcp::socket s(io);
  s.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), static_cast<unsigned short>(port)));
  net::write(s, net::buffer(bytes));
  std::string out;
  beast::error_code ec;
  char chunk[4096];
  for (;;) {
    size_t n = s.read_some(net::buffer(chunk), ec);
    out.append(chunk, n);
    if (ec) break;
  }
  return out;
}

// ---- a strict reader of the Prometheus text format --------------------------------------------------------

struct Sample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

struct Exposition {
  std::map<std::string, std::string> type;  // family -> counter|gauge|histogram|...
  std::map<std::string, std::string> help;
  std::vector<Sample> samples;

  /// Samples of `name` whose labels include all of `match`.
  std::vector<Sample> find(const std::string& name, const std::map<std::string, std::string>& match = {}) const {
    std::vector<Sample> out;
    for (const auto& s : samples) {
      if (s.name != name) continue;
      bool ok = true;
      for (const auto& [k, v] : match) ok = ok && s.labels.count(k) && s.labels.at(k) == v;
      if (ok) out.push_back(s);
    }
    return out;
  }
  /// The value of the one sample of `name` with labels `match`; fails the test when there is not exactly one.
  double value(const std::string& name, const std::map<std::string, std::string>& match = {}) const {
    auto v = find(name, match);
    EXPECT_EQ(v.size(), 1u) << name << " with " << json(match).dump();
    return v.empty() ? std::nan("") : v[0].value;
  }
};

double parse_number(const std::string& s) {
  if (s == "+Inf") return INFINITY;
  if (s == "-Inf") return -INFINITY;
  if (s == "NaN") return NAN;
  size_t used = 0;
  double v = std::stod(s, &used);
  if (used != s.size()) throw std::invalid_argument("trailing characters in number '" + s + "'");
  return v;
}

/// Parses the text or fails the test naming the line. Checks: every line is a HELP, a TYPE or a sample;
/// a family has one HELP then one TYPE, both before its first sample; samples of a family are contiguous;
/// a histogram's samples are <family>_bucket (with le), _sum or _count; label values use only the
/// \\ \" \n escapes; the text ends with a newline.
Exposition parse_exposition(const std::string& text) {
  Exposition e;
  EXPECT_FALSE(text.empty());
  EXPECT_EQ(text.back(), '\n');
  static const std::regex name_re("[a-zA-Z_:][a-zA-Z0-9_:]*");
  static const std::regex label_name_re("[a-zA-Z_][a-zA-Z0-9_]*");
  std::string current;  // the family whose samples may follow
  std::set<std::string> finished;
  size_t lineno = 0, start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    const std::string line = text.substr(start, end - start);
    start = end + 1;
    ++lineno;
    SCOPED_TRACE("line " + std::to_string(lineno) + ": " + line);
    if (line.rfind("# HELP ", 0) == 0 || line.rfind("# TYPE ", 0) == 0) {
      const bool is_help = line[2] == 'H';
      const auto sp = line.find(' ', 7);
      const std::string fam = line.substr(7, sp == std::string::npos ? std::string::npos : sp - 7);
      const std::string rest = sp == std::string::npos ? "" : line.substr(sp + 1);
      EXPECT_TRUE(std::regex_match(fam, name_re));
      EXPECT_FALSE(rest.empty());
      if (is_help) {
        EXPECT_EQ(e.help.count(fam), 0u) << "second HELP for " << fam;
        EXPECT_EQ(finished.count(fam), 0u);
        if (!current.empty()) finished.insert(current);
        current = fam;
        e.help[fam] = rest;
      } else {
        EXPECT_EQ(current, fam) << "TYPE without its HELP just before";
        EXPECT_EQ(e.type.count(fam), 0u) << "second TYPE for " << fam;
        EXPECT_TRUE(rest == "gauge" || rest == "counter" || rest == "histogram" || rest == "summary" || rest == "untyped");
        e.type[fam] = rest;
      }
      continue;
    }
    EXPECT_NE(line.rfind("#", 0), 0u) << "unexpected comment";
    Sample s;
    size_t i = 0;
    while (i < line.size() && line[i] != '{' && line[i] != ' ') ++i;
    s.name = line.substr(0, i);
    EXPECT_TRUE(std::regex_match(s.name, name_re));
    if (i < line.size() && line[i] == '{') {
      ++i;
      while (i < line.size() && line[i] != '}') {
        size_t eq = line.find('=', i);
        EXPECT_NE(eq, std::string::npos);
        if (eq == std::string::npos) break;
        const std::string lname = line.substr(i, eq - i);
        EXPECT_TRUE(std::regex_match(lname, label_name_re)) << lname;
        EXPECT_EQ(line[eq + 1], '"');
        std::string v;
        size_t j = eq + 2;
        for (; j < line.size() && line[j] != '"'; ++j) {
          if (line[j] == '\\') {
            ++j;
            EXPECT_TRUE(j < line.size() && (line[j] == '\\' || line[j] == '"' || line[j] == 'n')) << "bad escape";
            v += line[j] == 'n' ? '\n' : line[j];
          } else {
            v += line[j];
          }
        }
        EXPECT_LT(j, line.size()) << "unterminated label value";
        EXPECT_EQ(s.labels.count(lname), 0u) << "label repeated";
        s.labels[lname] = v;
        i = j + 1;
        if (i < line.size() && line[i] == ',') ++i;
      }
      ++i;  // '}'
    }
    EXPECT_TRUE(i < line.size() && line[i] == ' ');
    std::string value = i < line.size() ? line.substr(i + 1) : "";
    EXPECT_EQ(value.find(' '), std::string::npos) << "a timestamp or junk after the value";
    try {
      s.value = parse_number(value);
    } catch (const std::exception& ex) {
      ADD_FAILURE() << "value '" << value << "': " << ex.what();
    }
    // Which family the sample belongs to: the current one, exactly or by a histogram suffix.
    EXPECT_FALSE(current.empty()) << "sample before any HELP/TYPE";
    const std::string& t = e.type[current];
    if (t == "histogram") {
      const bool ok = s.name == current + "_bucket" || s.name == current + "_sum" || s.name == current + "_count";
      EXPECT_TRUE(ok) << s.name << " in histogram " << current;
      if (s.name == current + "_bucket") EXPECT_EQ(s.labels.count("le"), 1u);
    } else {
      EXPECT_EQ(s.name, current) << "sample outside its family";
    }
    e.samples.push_back(std::move(s));
  }
  return e;
}

// ---- fixture ----------------------------------------------------------------------------------------------

class HttpServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = make_temp_dir("qbench-http-pg");  // the cluster folder itself (LocalPostgres hands it to postgres)
    LocalPostgresOptions po;
    po.root = root_;
    po.durable = false;
    pg_ = std::make_unique<LocalPostgres>(po);
  }
  static void TearDownTestSuite() {
    pg_.reset();
    std::error_code ec;
    evalsvc::remove_tree(root_, ec);
  }

  void SetUp() override {
    std::string name = std::string("h_") + ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::transform(name.begin(), name.end(), name.begin(), ::tolower);
    db_url_ = pg_->create_database(name);
    migrate(db_url_, find_migrations_dir());
    store_ = std::make_unique<Store>(db_url_);
    redis_dir_ = make_temp_dir("qbench-http-redis");
    redis_server_ = std::make_unique<LocalRedis>(LocalRedis::Options{.dir = redis_dir_, .password = std::string(kRedisPassword)});
    redis_ = std::make_unique<RedisClient>(redis_server_->url());
    queue_ = std::make_unique<Queue>(*redis_);
  }
  void TearDown() override {
    server_.reset();
    queue_.reset();
    redis_.reset();
    redis_server_.reset();
    store_.reset();
    std::error_code ec;
    evalsvc::remove_tree(redis_dir_, ec);
  }

  HttpServer& start_server() {
    HttpServerOptions o;
    o.listen = "127.0.0.1:0";
    o.redis_url = redis_server_->url();
    o.database_url = db_url_;
    o.dependency_timeout = milliseconds(1500);
    server_ = std::make_unique<HttpServer>(o);
    return *server_;
  }

  static constexpr const char* kRedisPassword = "s3cret-redis-pw";
  static inline fs::path root_;
  static inline std::unique_ptr<LocalPostgres> pg_;
  std::string db_url_;
  fs::path redis_dir_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<LocalRedis> redis_server_;
  std::unique_ptr<RedisClient> redis_;
  std::unique_ptr<Queue> queue_;
  std::unique_ptr<HttpServer> server_;
};

JobRecord job_record(const std::string& id, int64_t exp, const std::string& type, int attempt = 0) {
  JobRecord r;
  r.id = id;
  r.experiment_id = exp;
  r.type = type;
  r.queue = "cpu";
  r.attempt = attempt;
  r.max_attempts = 3;
  return r;
}

JobMessage message(const std::string& id, const std::string& type, const std::string& queue) {
  JobMessage m;
  m.id = id;
  m.experiment_id = 1;
  m.type = type;
  m.queue = queue;
  return m;
}

TEST(ListenAddressTest, ParsesHostPortFormsAndRejectsTheRest) {
  auto a = ListenAddress::parse("0.0.0.0:9464");
  EXPECT_EQ(a.host, "0.0.0.0");
  EXPECT_EQ(a.port, 9464);
  a = ListenAddress::parse(":80");
  EXPECT_EQ(a.host, "0.0.0.0");
  EXPECT_EQ(a.port, 80);
  a = ListenAddress::parse("[::1]:0");
  EXPECT_EQ(a.host, "::1");
  EXPECT_EQ(a.port, 0);
  a = ListenAddress::parse("localhost:9464");
  EXPECT_EQ(a.host, "localhost");
  for (const char* bad : {"9464", "host:", "host:port", "host:70000", "::1:80", "[::1:80", "host:-1", "host:123456"}) {
    try {
      ListenAddress::parse(bad);
      ADD_FAILURE() << "accepted " << bad;
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find(bad), std::string::npos) << e.what();
    }
  }
}

TEST(MetricsTextTest, EscapesLabelValues) {
  EXPECT_EQ(escape_label_value("plain"), "plain");
  EXPECT_EQ(escape_label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
}

TEST_F(HttpServerTest, MetricsMatchTheStoreAndTheQueue) {
  // Two experiments with jobs in every state, some retried, some done with measurable durations.
  const int64_t e1 = store_->create_experiment("one", json::object());
  const int64_t e2 = store_->create_experiment("two", json::object());
  store_->set_experiment_state(e1, RunState::kRunning);
  store_->set_experiment_state(e2, RunState::kFailed, std::string("a job failed"));
  std::vector<JobRecord> jobs = {job_record("e1-prepare", e1, "prepare", 1), job_record("e1-train", e1, "train", 3),
                                 job_record("e1-eval-0", e1, "eval", 2),     job_record("e1-eval-1", e1, "eval", 1),
                                 job_record("e1-eval-2", e1, "eval"),        job_record("e1-report", e1, "report"),
                                 job_record("e2-prepare", e2, "prepare", 1), job_record("e2-train", e2, "train", 3),
                                 job_record("e2-eval-0", e2, "eval")};
  store_->upsert_jobs(jobs);
  auto finish = [&](const std::string& id, JobState end, int sleep_ms) {
    ASSERT_TRUE(store_->set_job_state(id, JobState::kQueued));
    std::this_thread::sleep_for(milliseconds(sleep_ms));
    ASSERT_TRUE(store_->set_job_state(id, end));
  };
  finish("e1-prepare", JobState::kDone, 30);
  finish("e1-train", JobState::kDone, 120);
  finish("e1-eval-0", JobState::kDone, 10);
  finish("e1-eval-1", JobState::kDone, 600);
  finish("e2-prepare", JobState::kDone, 5);
  finish("e2-train", JobState::kFailed, 5);
  ASSERT_TRUE(store_->set_job_state("e1-eval-2", JobState::kQueued));
  ASSERT_TRUE(store_->set_job_state("e2-eval-0", JobState::kBlocked));

  // The queue: two jobs waiting on cpu, one on cuda, one leased by a live worker that is running it.
  queue_->enqueue(message("w-cpu-1", "noop", "cpu"));
  queue_->enqueue(message("w-cpu-2", "noop", "cpu"));
  queue_->enqueue(message("w-cuda-1", "noop", "cuda"));
  queue_->enqueue(message("busy-job", "block", "busy"));
  std::atomic<bool> release{false};
  ExecutorRegistry reg;
  reg["block"] = [&](const JobMessage&, JobContext& ctx) {
    while (!release && !ctx.cancelled()) std::this_thread::sleep_for(milliseconds(10));
    return json{{"ok", true}};
  };
  WorkerOptions wo;
  wo.redis_url = redis_server_->url();
  wo.worker_id = "w-busy";
  wo.queues = {"busy"};
  wo.info = json{{"device", {{"device", "CPU \"test\" \\ box"}}}};
  wo.heartbeat_ttl = milliseconds(3000);
  wo.claim_wait = milliseconds(200);
  wo.max_jobs = 1;
  WorkerRuntime rt(wo, reg);
  std::thread worker([&] { rt.run(); });
  // A registration without a heartbeat: a worker killed before it could unregister.
  redis_->command({"HSET", "qbench:workers", "w-dead", R"({"device":{"device":"gone"},"queues":["cpu"],"job":"x"})"});

  auto& srv = start_server();
  ASSERT_GT(srv.port(), 0);
  // Wait until the worker's heartbeat names its job.
  ASSERT_TRUE(wait_until(
      [&] {
        for (const auto& w : list_worker_states(*queue_)) {
          if (w.id == "w-busy" && w.live && w.job == std::string("busy-job")) return true;
        }
        return false;
      },
      milliseconds(10000)));

  Response r = fetch(srv.port(), http::verb::get, "/metrics");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.headers["content-type"], kPrometheusContentType);
  const Exposition e = parse_exposition(r.body);
  ASSERT_FALSE(::testing::Test::HasFailure()) << r.body;

  EXPECT_EQ(e.value("qbench_dependency_up", {{"dependency", "redis"}}), 1);
  EXPECT_EQ(e.value("qbench_dependency_up", {{"dependency", "postgres"}}), 1);
  EXPECT_EQ(e.value("qbench_queue_waiting", {{"queue", "cpu"}}), 2);
  EXPECT_EQ(e.value("qbench_queue_waiting", {{"queue", "cuda"}}), 1);
  EXPECT_EQ(e.value("qbench_queue_waiting", {{"queue", "busy"}}), 0);
  EXPECT_EQ(e.value("qbench_queue_active"), 1);
  EXPECT_EQ(e.value("qbench_queue_dead_letters"), 0);
  EXPECT_EQ(e.value("qbench_workers_registered"), 2);
  EXPECT_EQ(e.value("qbench_workers_live"), 1);
  EXPECT_EQ(e.value("qbench_workers_busy"), 1);
  EXPECT_EQ(e.value("qbench_worker_info", {{"worker", "w-busy"}, {"job", "busy-job"}, {"queues", "busy"},
                                           {"device", "CPU \"test\" \\ box"}}),
            1);
  EXPECT_TRUE(e.find("qbench_worker_info", {{"worker", "w-dead"}}).empty()) << "a dead worker is not live";
  for (const auto& [k, t] : e.type) EXPECT_EQ(e.help.count(k), 1u) << k;
  EXPECT_EQ(e.type.at("qbench_job_duration_seconds"), "histogram");

  // Jobs by type and state, every state present, against the store's own rows.
  std::map<std::pair<std::string, std::string>, int> expect_jobs;
  std::map<std::string, int> expect_retries;
  std::map<std::string, std::vector<double>> durations;
  for (int64_t exp : {e1, e2}) {
    for (const auto& j : store_->list_jobs(exp)) {
      expect_jobs[{j.type, to_string(j.state)}]++;
      expect_retries[j.type] += std::max(0, j.attempt - 1);
      if (j.state == JobState::kDone) {
        const auto start = j.started_at ? *j.started_at : *j.queued_at;
        durations[j.type].push_back(std::chrono::duration<double>(*j.finished_at - start).count());
      }
    }
  }
  for (const char* type : {"prepare", "train", "eval", "report"}) {
    for (const char* state : {"pending", "queued", "running", "done", "failed", "cancelled", "blocked"}) {
      const auto it = expect_jobs.find({type, state});
      EXPECT_EQ(e.value("qbench_jobs", {{"type", type}, {"state", state}}), it == expect_jobs.end() ? 0 : it->second)
          << type << " " << state;
    }
    EXPECT_EQ(e.value("qbench_job_retries", {{"type", type}}), expect_retries[type]) << type;
  }
  EXPECT_EQ(e.value("qbench_job_retries", {{"type", "train"}}), 4);  // two jobs of 3 attempts
  EXPECT_EQ(e.value("qbench_experiments", {{"state", "running"}}), 1);
  EXPECT_EQ(e.value("qbench_experiments", {{"state", "failed"}}), 1);
  EXPECT_EQ(e.value("qbench_experiments", {{"state", "done"}}), 0);

  // The histogram: buckets cumulative, +Inf = count = done jobs, each bucket the jobs at or under its bound.
  const auto& bounds = default_duration_bounds();
  for (const auto& [type, ds] : durations) {
    SCOPED_TRACE(type);
    double prev = 0;
    for (double b : bounds) {
      const double v = e.value("qbench_job_duration_seconds_bucket", {{"type", type}, {"le", fmt::format("{}", b)}});
      EXPECT_GE(v, prev);
      prev = v;
      EXPECT_EQ(v, std::count_if(ds.begin(), ds.end(), [&](double d) { return d <= b; })) << "le " << b;
    }
    EXPECT_EQ(e.value("qbench_job_duration_seconds_bucket", {{"type", type}, {"le", "+Inf"}}), ds.size());
    EXPECT_EQ(e.value("qbench_job_duration_seconds_count", {{"type", type}}), ds.size());
    double sum = 0;
    for (double d : ds) sum += d;
    EXPECT_NEAR(e.value("qbench_job_duration_seconds_sum", {{"type", type}}), sum, 1e-3);
  }
  // The 0.6 s eval falls between the 0.5 and 1 s bounds: the buckets really separate durations.
  EXPECT_EQ(e.value("qbench_job_duration_seconds_bucket", {{"type", "eval"}, {"le", "0.5"}}), 1);
  EXPECT_EQ(e.value("qbench_job_duration_seconds_bucket", {{"type", "eval"}, {"le", "1"}}), 2);
  EXPECT_TRUE(e.find("qbench_job_duration_seconds_count", {{"type", "report"}}).empty()) << "no done report job";

  // The worker finishes; the next scrape sees it idle.
  release = true;
  worker.join();
  r = fetch(srv.port(), http::verb::get, "/metrics");
  const Exposition after = parse_exposition(r.body);
  EXPECT_EQ(after.value("qbench_queue_active"), 0);
  EXPECT_EQ(after.value("qbench_workers_live"), 0) << "a worker that returned unregisters";
}

TEST_F(HttpServerTest, HealthzNamesTheServerThatIsDown) {
  auto& srv = start_server();
  Response r = fetch(srv.port(), http::verb::get, "/healthz");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.headers["content-type"], "application/json");
  json j = json::parse(r.body);
  EXPECT_EQ(j["status"], "ok");
  EXPECT_EQ(j["redis"]["ok"], true);
  EXPECT_EQ(j["postgres"]["ok"], true);

  redis_server_->stop();
  r = fetch(srv.port(), http::verb::get, "/healthz");
  EXPECT_EQ(r.status, 503) << r.body;
  j = json::parse(r.body);
  EXPECT_EQ(j["status"], "unavailable");
  EXPECT_EQ(j["unavailable"], json::array({"redis"}));
  EXPECT_EQ(j["redis"]["ok"], false);
  EXPECT_FALSE(j["redis"]["error"].get<std::string>().empty());
  EXPECT_EQ(j["postgres"]["ok"], true);
  EXPECT_EQ(r.body.find(kRedisPassword), std::string::npos) << "password leaked: " << r.body;
  // /metrics still answers, says which server is missing and leaves out what only it knows.
  r = fetch(srv.port(), http::verb::get, "/metrics");
  ASSERT_EQ(r.status, 200);
  Exposition e = parse_exposition(r.body);
  EXPECT_EQ(e.value("qbench_dependency_up", {{"dependency", "redis"}}), 0);
  EXPECT_EQ(e.value("qbench_dependency_up", {{"dependency", "postgres"}}), 1);
  EXPECT_EQ(e.type.count("qbench_queue_active"), 0u);
  EXPECT_EQ(e.type.count("qbench_jobs"), 1u);

  redis_server_->start();
  ASSERT_TRUE(wait_until([&] { return fetch(srv.port(), http::verb::get, "/healthz").status == 200; }, milliseconds(10000)));

  pg_->stop();
  r = fetch(srv.port(), http::verb::get, "/healthz");
  pg_->start();
  EXPECT_EQ(r.status, 503) << r.body;
  j = json::parse(r.body);
  EXPECT_EQ(j["unavailable"], json::array({"postgres"}));
  EXPECT_EQ(j["postgres"]["ok"], false);
  EXPECT_EQ(r.body.find(pg_->password()), std::string::npos) << "password leaked: " << r.body;
  ASSERT_TRUE(wait_until([&] { return fetch(srv.port(), http::verb::get, "/healthz").status == 200; }, milliseconds(15000)));
}

TEST_F(HttpServerTest, MethodsPathsAndMalformedRequests) {
  auto& srv = start_server();
  Response r = fetch(srv.port(), http::verb::get, "/nope");
  EXPECT_EQ(r.status, 404);
  EXPECT_NE(r.body.find("/nope"), std::string::npos);
  r = fetch(srv.port(), http::verb::get, "/");
  EXPECT_EQ(r.status, 404);
  r = fetch(srv.port(), http::verb::post, "/metrics");
  EXPECT_EQ(r.status, 405);
  EXPECT_EQ(r.headers["allow"], "GET, HEAD");
  r = fetch(srv.port(), http::verb::delete_, "/healthz");
  EXPECT_EQ(r.status, 405);
  // A query string does not change the path.
  r = fetch(srv.port(), http::verb::get, "/healthz?verbose=1");
  EXPECT_EQ(r.status, 200);
  // HEAD: the GET headers, a Content-Length, no body.
  r = fetch(srv.port(), http::verb::head, "/metrics");
  EXPECT_EQ(r.status, 200);
  EXPECT_GT(std::stoll(r.headers["content-length"]), 0);
  EXPECT_TRUE(r.body.empty());
  // Three requests on one kept-alive connection.
  r = fetch(srv.port(), http::verb::get, "/metrics", 3);
  EXPECT_EQ(r.status, 200);
  EXPECT_NE(r.body.find("qbench_dependency_up"), std::string::npos);
  // Garbage gets a 400 and a closed connection, and the server keeps serving.
  const std::string answer = raw_exchange(srv.port(), "NOT HTTP AT ALL\r\n\r\n");
  EXPECT_EQ(answer.rfind("HTTP/1.1 400", 0), 0u) << answer;
  const std::string huge = raw_exchange(srv.port(), "GET /metrics HTTP/1.1\r\nX-Big: " + std::string(20000, 'a') + "\r\n\r\n");
  EXPECT_EQ(huge.rfind("HTTP/1.1 400", 0), 0u) << huge.substr(0, 200);
  EXPECT_EQ(fetch(srv.port(), http::verb::get, "/healthz").status, 200);
}

TEST_F(HttpServerTest, BindErrorsAreReported) {
  auto& srv = start_server();
  HttpServerOptions o;
  o.redis_url = redis_server_->url();
  o.database_url = db_url_;
  o.listen = fmt::format("127.0.0.1:{}", srv.port());
  try {
    HttpServer second(o);
    ADD_FAILURE() << "bound a port already in use";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find(o.listen), std::string::npos) << e.what();
  }
  o.listen = "no-such-host.invalid:9464";
  EXPECT_THROW(HttpServer{o}, IoError);
  o.listen = "127.0.0.1";
  EXPECT_THROW(HttpServer{o}, InputError);
}

}  // namespace
}  // namespace evalsvc::scheduler
