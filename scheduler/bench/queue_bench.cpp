// queue_bench: the job system's own overhead, measured with `noop` jobs (they do no work) on a real
// redis-server over loopback.
//   1. claim-to-finish throughput with 1, 2 and 4 worker threads, each with its own connection:
//      "queue_api"  - a bare claim -> noop -> complete loop over Queue;
//      "runtime"    - WorkerRuntime (the real worker loop, with its lease keeper and heartbeat).
//   2. ready-to-claimed latency: idle workers block on their wake lists while a producer enqueues jobs at
//      a steady pace; latency = claim returned - enqueue call started (same process, steady clock).
// Prints one JSON object on stdout. Targets on a 2-core machine: >= 2,000 jobs/s, p99 <= 10 ms.
//
// Usage: queue_bench [--jobs N] [--latency-jobs N] [--pace-us N] [--redis-url URL] [--no-aof]
// Without --redis-url a redis-server (AOF on, appendfsync everysec) is started in a temp folder.
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <thread>

#include "evalsvc/common/log.h"
#include "evalsvc/common/paths.h"
#include "evalsvc/scheduler/local_servers.h"
#include "evalsvc/scheduler/queue.h"
#include "evalsvc/scheduler/worker_runtime.h"

using namespace evalsvc;
using namespace evalsvc::scheduler;
using nlohmann::json;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace {

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  }
  return "unknown";
}

std::string utc_now() {
  std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

// Enqueues `n` noop jobs through the enqueue script, pipelined in batches (setup, not measured).
void fill(RedisClient& r, Queue& q, int n, const std::string& tag) {
  RedisScript enqueue("enqueue-4", lua_script_source("enqueue-4.lua"));
  r.command({"SCRIPT", "LOAD", enqueue.source()});
  for (int start = 0; start < n; start += 1000) {
    std::vector<std::vector<std::string>> cmds;
    for (int i = start; i < std::min(n, start + 1000); ++i) {
      JobMessage m;
      m.id = fmt::format("{}-{}", tag, i);
      m.type = "noop";
      cmds.push_back({"EVALSHA", enqueue.sha1(), "4", q.job_key(m.id), q.wait_key("cpu"), q.wake_key("cpu"),
                      q.queues_key(), m.id, to_json(m).dump(), "cpu", "1", "64"});
    }
    for (auto& rep : r.pipeline(cmds)) {
      if (rep.is_error()) throw RedisError(fmt::format("enqueue in bench setup failed: {}", rep.str()));
    }
  }
}

json throughput_queue_api(const std::string& url, int threads, int jobs) {
  RedisClient r(url);
  Queue q(r);
  r.command({"FLUSHALL"});
  fill(r, q, jobs, fmt::format("tq{}", threads));
  std::atomic<int> done{0};
  std::barrier start(threads + 1);
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t) {
    ts.emplace_back([&, t] {
      RedisClient rc(url);
      Queue qc(rc);
      ExecutorRegistry reg;
      register_noop_executor(reg);
      JobContext ctx("bench-" + std::to_string(t));
      const std::string wid = "bench-" + std::to_string(t);
      start.arrive_and_wait();
      while (auto l = qc.claim({"cpu"}, wid, milliseconds(30000), milliseconds(0))) {
        json result = reg.at(l->job.type)(l->job, ctx);
        if (qc.complete(*l, result) != FinishResult::kOk) throw InternalError("complete refused in bench");
        done.fetch_add(1);
      }
    });
  }
  start.arrive_and_wait();
  const auto t0 = Clock::now();
  for (auto& th : ts) th.join();
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  if (done.load() != jobs) throw InternalError(fmt::format("bench: {} of {} jobs completed", done.load(), jobs));
  return json{{"mode", "queue_api"}, {"threads", threads}, {"jobs", jobs}, {"seconds", secs}, {"jobs_per_s", jobs / secs}};
}

json throughput_runtime(const std::string& url, int threads, int jobs) {
  RedisClient r(url);
  Queue q(r);
  r.command({"FLUSHALL"});
  fill(r, q, jobs, fmt::format("tr{}", threads));
  std::vector<std::unique_ptr<WorkerRuntime>> rts;
  for (int t = 0; t < threads; ++t) {
    WorkerOptions o;
    o.redis_url = url;
    o.worker_id = fmt::format("rt-{}", t);
    o.max_jobs = jobs / threads + (t < jobs % threads ? 1 : 0);
    o.stalled_check_interval = milliseconds(0);
    ExecutorRegistry reg;
    register_noop_executor(reg);
    rts.push_back(std::make_unique<WorkerRuntime>(o, reg));
  }
  std::atomic<size_t> completed{0};
  const auto t0 = Clock::now();
  std::vector<std::thread> ts;
  for (auto& rt : rts) ts.emplace_back([&, p = rt.get()] { completed += p->run().completed; });
  for (auto& th : ts) th.join();
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  if (static_cast<int>(completed.load()) != jobs) {
    throw InternalError(fmt::format("bench: {} of {} jobs completed", completed.load(), jobs));
  }
  return json{{"mode", "runtime"}, {"threads", threads}, {"jobs", jobs}, {"seconds", secs}, {"jobs_per_s", jobs / secs}};
}

json latency(const std::string& url, int workers, int jobs, std::chrono::microseconds pace) {
  RedisClient r(url);
  Queue q(r);
  r.command({"FLUSHALL"});
  std::mutex mu;
  std::vector<double> lat_ms;
  std::atomic<int> done{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> ts;
  for (int t = 0; t < workers; ++t) {
    ts.emplace_back([&, t] {
      RedisClient rc(url);
      Queue qc(rc);
      const std::string wid = "lat-" + std::to_string(t);
      while (!stop.load()) {
        auto l = qc.claim({"cpu"}, wid, milliseconds(30000), milliseconds(200));
        if (!l) continue;
        const auto claimed = Clock::now().time_since_epoch().count();
        const double ms = (claimed - l->job.params.at("t_ns").get<int64_t>()) / 1e6;
        qc.complete(*l, json{{"ok", true}});
        {
          std::lock_guard<std::mutex> lock(mu);
          lat_ms.push_back(ms);
        }
        done.fetch_add(1);
      }
    });
  }
  std::this_thread::sleep_for(milliseconds(300));  // let the workers go idle (blocked on BLPOP)
  auto next = Clock::now();
  for (int i = 0; i < jobs; ++i) {
    std::this_thread::sleep_until(next);
    next += pace;
    JobMessage m;
    m.id = fmt::format("lat{}-{}", workers, i);
    m.type = "noop";
    m.params = json{{"t_ns", Clock::now().time_since_epoch().count()}};
    q.enqueue(m);
  }
  const auto until = Clock::now() + std::chrono::seconds(30);
  while (done.load() < jobs && Clock::now() < until) std::this_thread::sleep_for(milliseconds(5));
  stop = true;
  for (auto& th : ts) th.join();
  std::sort(lat_ms.begin(), lat_ms.end());
  auto pct = [&](double p) {
    if (lat_ms.empty()) return 0.0;
    size_t idx = std::min(lat_ms.size() - 1, static_cast<size_t>(p / 100.0 * (lat_ms.size() - 1) + 0.5));
    return lat_ms[idx];
  };
  return json{{"workers", workers},          {"jobs", jobs},
              {"claimed", lat_ms.size()},    {"pace_us", pace.count()},
              {"p50_ms", pct(50)},           {"p90_ms", pct(90)},
              {"p99_ms", pct(99)},           {"max_ms", lat_ms.empty() ? 0.0 : lat_ms.back()}};
}

}  // namespace

int main(int argc, char** argv) {
  init_logging("warn");
  int jobs = 20000, latency_jobs = 2000;
  int64_t pace_us = 2000;
  std::optional<std::string> url_arg;
  bool aof = true;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw InputError(fmt::format("{} needs a value", a));
      return argv[++i];
    };
    try {
      if (a == "--jobs") jobs = std::stoi(next());
      else if (a == "--latency-jobs") latency_jobs = std::stoi(next());
      else if (a == "--pace-us") pace_us = std::stoll(next());
      else if (a == "--redis-url") url_arg = next();
      else if (a == "--no-aof") aof = false;
      else throw InputError(fmt::format("unknown argument '{}'", a));
    } catch (const std::exception& e) {
      std::cerr << "queue_bench: " << e.what()
                << "\nusage: queue_bench [--jobs N] [--latency-jobs N] [--pace-us N] [--redis-url URL] [--no-aof]\n";
      return 2;
    }
  }
  if (jobs < 1 || latency_jobs < 1 || pace_us < 0) {
    std::cerr << "queue_bench: --jobs and --latency-jobs must be >= 1, --pace-us >= 0\n";
    return 2;
  }
  try {
    std::unique_ptr<LocalRedis> server;
    std::filesystem::path dir;
    std::string url;
    if (url_arg) {
      url = *url_arg;
    } else {
      std::string tmpl = (std::filesystem::temp_directory_path() / "qbench-bench-XXXXXX").string();
      if (::mkdtemp(tmpl.data()) == nullptr) throw IoError("mkdtemp failed");
      dir = tmpl;
      server = std::make_unique<LocalRedis>(LocalRedis::Options{.dir = dir, .appendonly = aof});
      url = server->url();
    }
    RedisClient info_client(url);
    std::string info(info_client.command({"INFO", "server"}).str());
    std::string redis_version = "unknown";
    if (auto p = info.find("redis_version:"); p != std::string::npos) {
      redis_version = info.substr(p + 14, info.find('\r', p) - p - 14);
    }
    json out;
    out["device"] = {{"cpu", cpu_model()}, {"cores", std::thread::hardware_concurrency()}};
    out["redis"] = {{"version", redis_version}, {"url", RedisUrl::parse(url).str(true)},
                    {"aof", url_arg ? "as configured" : (aof ? "everysec" : "off")}};
    out["date"] = utc_now();
    out["qbench_version"] = evalsvc::version();
    out["throughput"] = json::array();
    for (int t : {1, 2, 4}) out["throughput"].push_back(throughput_queue_api(url, t, jobs));
    for (int t : {1, 2, 4}) out["throughput"].push_back(throughput_runtime(url, t, jobs));
    out["latency"] = json::array();
    for (int w : {1, 4}) out["latency"].push_back(latency(url, w, latency_jobs, std::chrono::microseconds(pace_us)));
    std::cout << out.dump(2) << std::endl;
    server.reset();
    if (!dir.empty()) evalsvc::remove_tree(dir);
  } catch (const std::exception& e) {
    std::cerr << "queue_bench: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
