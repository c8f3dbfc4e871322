// The embedded stack for one machine: `qbench up` starts Redis, PostgreSQL, the scheduler and N workers on
// loopback (data under var/stack), `qbench down` stops them. `qbench stack` is the supervisor process that
// `up` starts in the background; it restarts a worker that dies, so a killed worker's jobs are redelivered
// to a fresh one.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <iostream>
#include <random>
#include <thread>

#include "commands.h"
#include "evalsvc/common/error.h"
#include "evalsvc/common/log.h"
#include "evalsvc/common/paths.h"
#include "evalsvc/scheduler/local_postgres.h"
#include "evalsvc/scheduler/local_servers.h"
#include "evalsvc/scheduler/scheduler.h"

namespace evalsvc::cli {
namespace {

namespace fs = std::filesystem;

std::atomic<bool> g_stop{false};
void on_signal(int) { g_stop = true; }

std::string random_secret() {
  std::random_device rd;
  return fmt::format("{:016x}{:016x}", (uint64_t(rd()) << 32) | rd(), (uint64_t(rd()) << 32) | rd());
}

/// One worker process; `gpu` (when not empty) becomes its CUDA_VISIBLE_DEVICES, so that worker owns that GPU.
pid_t spawn_worker(const std::string& device, int threads, const fs::path& log, const std::string& gpu) {
  pid_t pid = ::fork();
  if (pid < 0) throw IoError(fmt::format("fork: {}", std::strerror(errno)));
  if (pid == 0) {
    int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (fd >= 0) {
      ::dup2(fd, 1);
      ::dup2(fd, 2);
    }
    if (!gpu.empty()) ::setenv("CUDA_VISIBLE_DEVICES", gpu.c_str(), 1);
    const std::string th = std::to_string(threads);
    // URLs (with passwords) travel in the environment, set by the parent, never in argv.
    ::execl("/proc/self/exe", "qbench", "worker", "--device", device.c_str(), "--threads", th.c_str(), nullptr);
    ::_exit(127);
  }
  return pid;
}

/// The GPU of worker i: the i-th of `gpus` (round robin), or "" (inherit the environment) when none are given.
std::string gpu_of(const std::vector<std::string>& gpus, size_t i) { return gpus.empty() ? "" : gpus[i % gpus.size()]; }

int run_stack(const fs::path& dir, int workers, const std::string& device, int threads,
              const std::vector<std::string>& gpus) {
  fs::create_directories(dir);
  ::signal(SIGTERM, on_signal);
  ::signal(SIGINT, on_signal);
  const fs::path secret_file = dir / "redis.password";
  if (!fs::exists(secret_file)) write_file_atomic(secret_file, random_secret());
  fs::permissions(secret_file, fs::perms::owner_read | fs::perms::owner_write);
  scheduler::LocalRedis::Options ro;
  ro.dir = dir / "redis";
  ro.password = read_file(secret_file);
  scheduler::LocalRedis redis(ro);
  scheduler::LocalPostgresOptions po;
  po.root = dir / "postgres";
  scheduler::LocalPostgres pg(po);
  scheduler::migrate(pg.url(), scheduler::find_migrations_dir());
  ::setenv("QBENCH_REDIS_URL", redis.url().c_str(), 1);
  ::setenv("QBENCH_DATABASE_URL", pg.url().c_str(), 1);

  std::thread sched([&] {
    try {
      scheduler::Store store(pg.url());
      scheduler::RedisClient rc(redis.url());
      scheduler::Queue queue(rc);
      scheduler::Scheduler s(store, queue);
      s.run(g_stop);
    } catch (const std::exception& e) {
      spdlog::error("scheduler ended: {}", e.what());
      g_stop = true;
    }
  });
  std::vector<pid_t> pids;
  for (int i = 0; i < workers; ++i) {
    pids.push_back(spawn_worker(device, threads, dir / fmt::format("worker-{}.log", i), gpu_of(gpus, size_t(i))));
  }
  nlohmann::json info{{"pid", ::getpid()},          {"redis_url", redis.url()}, {"database_url", pg.url()},
                      {"workers", workers},         {"device", device},         {"gpus", gpus},
                      {"started", std::time(nullptr)}};
  write_file_atomic(dir / "stack.json", info.dump(2));
  fs::permissions(dir / "stack.json", fs::perms::owner_read | fs::perms::owner_write);
  spdlog::info("stack up: redis {}, postgres {}, {} workers", redis.port(), pg.port(), workers);
  while (!g_stop) {
    int status = 0;
    pid_t done = ::waitpid(-1, &status, WNOHANG);
    if (done > 0) {
      for (size_t i = 0; i < pids.size(); ++i) {
        if (pids[i] == done) {
          spdlog::warn("worker {} (pid {}) exited ({}); starting a new one", i, done, status);
          pids[i] = spawn_worker(device, threads, dir / fmt::format("worker-{}.log", i), gpu_of(gpus, i));
        }
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  for (pid_t p : pids) ::kill(p, SIGTERM);
  for (pid_t p : pids) ::waitpid(p, nullptr, 0);
  sched.join();
  fs::remove(dir / "stack.json");
  spdlog::info("stack down");
  return kOk;
}

std::optional<pid_t> running_stack(const fs::path& dir) {
  const auto f = dir / "stack.json";
  if (!fs::exists(f)) return std::nullopt;
  auto j = nlohmann::json::parse(read_file(f), nullptr, false);
  if (!j.is_object()) return std::nullopt;
  pid_t pid = j.value("pid", 0);
  if (pid > 0 && ::kill(pid, 0) == 0) return pid;
  return std::nullopt;
}

struct StackArgs {
  std::string dir = "var/stack";
  int workers = 2;
  std::string device = "cpu";
  int threads = 1;
  std::vector<std::string> gpus;
};

void add_stack_options(CLI::App& sub, StackArgs& a) {
  sub.add_option("--stack", a.dir, "folder for the servers' data and logs")->capture_default_str();
  sub.add_option("--workers", a.workers, "worker processes")->capture_default_str();
  sub.add_option("--device", a.device, "device of the workers: cpu | cuda | cuda:N")->capture_default_str();
  sub.add_option("--threads", a.threads, "CPU threads per worker (libtorch's, and OpenBLAS's where it is the BLAS)")->capture_default_str();
  sub.add_option("--gpus", a.gpus, "GPU indices, one per worker in turn (worker i gets CUDA_VISIBLE_DEVICES=gpus[i])")
      ->delimiter(',');
}

CommandRegistrar stack_reg("stack", "Run the embedded stack in the foreground (what `qbench up` starts)", [](CLI::App& sub) -> RunFn {
  auto a = std::make_shared<StackArgs>();
  add_stack_options(sub, *a);
  return [a] { return run_stack(a->dir, a->workers, a->device, a->threads, a->gpus); };
});

CommandRegistrar up_reg("up", "Start the embedded stack (Redis, PostgreSQL, scheduler, workers) in the background",
                        [](CLI::App& sub) -> RunFn {
  auto a = std::make_shared<StackArgs>();
  add_stack_options(sub, *a);
  return [a] {
    if (auto pid = running_stack(a->dir)) {
      std::cout << "stack already running (pid " << *pid << ")\n";
      return kOk;
    }
    fs::create_directories(a->dir);
    fs::remove(fs::path(a->dir) / "stack.json");
    const fs::path log = fs::path(a->dir) / "stack.log";
    pid_t pid = ::fork();
    if (pid == 0) {
      ::setsid();
      int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
      if (fd >= 0) {
        ::dup2(fd, 1);
        ::dup2(fd, 2);
      }
      const std::string w = std::to_string(a->workers), t = std::to_string(a->threads);
      const std::string g = fmt::format("{}", fmt::join(a->gpus, ","));
      std::vector<const char*> argv = {"qbench", "stack", "--stack", a->dir.c_str(), "--workers", w.c_str(),
                                       "--device", a->device.c_str(), "--threads", t.c_str()};
      if (!a->gpus.empty()) {
        argv.push_back("--gpus");
        argv.push_back(g.c_str());
      }
      argv.push_back(nullptr);
      ::execv("/proc/self/exe", const_cast<char* const*>(argv.data()));
      ::_exit(127);
    }
    for (int i = 0; i < 1200; ++i) {
      if (running_stack(a->dir)) {
        std::cout << "stack up in " << a->dir << " (" << a->workers << " " << a->device << " workers; log "
                  << log.string() << ")\n";
        return kOk;
      }
      int st = 0;
      if (::waitpid(pid, &st, WNOHANG) == pid) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    std::cerr << "qbench up: the stack did not start; see " << log.string() << "\n";
    return kUnavailable;
  };
});

CommandRegistrar down_reg("down", "Stop the embedded stack", [](CLI::App& sub) -> RunFn {
  auto dir = std::make_shared<std::string>("var/stack");
  sub.add_option("--stack", *dir, "folder of the stack")->capture_default_str();
  return [dir] {
    auto pid = running_stack(*dir);
    if (!pid) {
      std::cout << "no stack running in " << *dir << "\n";
      return kOk;
    }
    ::kill(*pid, SIGTERM);
    for (int i = 0; i < 600 && ::kill(*pid, 0) == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    std::cout << "stack stopped\n";
    return kOk;
  };
});

}  // namespace
}  // namespace evalsvc::cli
