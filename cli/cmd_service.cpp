// The long-running processes: `qbench scheduler` and `qbench worker`.
#include <unistd.h>

#include <iostream>

#include "commands.h"
#include "evalsvc/common/log.h"
#include "evalsvc/common/paths.h"
#include "evalsvc/scheduler/http_server.h"
#include "evalsvc/scheduler/redis.h"
#include "evalsvc/scheduler/scheduler.h"
#include "evalsvc/scheduler/worker_runtime.h"
#include "evalsvc/worker/device.h"
#include "evalsvc/worker/jobs.h"
#include "service_urls.h"

namespace evalsvc::cli {
namespace {

CommandRegistrar scheduler_reg("scheduler", "Run the scheduler: queue ready jobs, consume results, retry, requeue stalled",
                               [](CLI::App& sub) -> RunFn {
  auto svc = std::make_shared<ServiceOptions>();
  auto http_listen = std::make_shared<std::string>();
  svc->add_to(sub);
  sub.add_option("--http-listen", *http_listen,
                 "serve GET /healthz and /metrics (Prometheus) on HOST:PORT, e.g. 127.0.0.1:9464 (default: "
                 "QBENCH_HTTP_LISTEN, else off)");
  return [svc, http_listen] {
    auto urls = svc->resolve();
    scheduler::migrate(urls.database_url, scheduler::find_migrations_dir());
    scheduler::Store store(urls.database_url);
    scheduler::RedisClient redis(urls.redis_url);
    scheduler::Queue queue(redis);
    scheduler::Scheduler s(store, queue);
    std::atomic<bool> stop{false};
    // Off unless asked for: the endpoint is meant for a monitoring network, not for every host.
    const std::string listen = !http_listen->empty() ? *http_listen : getenv_opt("QBENCH_HTTP_LISTEN").value_or("");
    std::unique_ptr<scheduler::HttpServer> http;
    if (!listen.empty()) {
      scheduler::HttpServerOptions ho;
      ho.listen = listen;
      ho.redis_url = urls.redis_url;
      ho.database_url = urls.database_url;
      http = std::make_unique<scheduler::HttpServer>(ho);
    }
    spdlog::info("scheduler running (redis {}, database {})", scheduler::mask_url(urls.redis_url), store.redacted_url());
    s.run(stop);
    spdlog::info("scheduler stopped");
    return kOk;
  };
});

CommandRegistrar worker_reg("worker", "Run a worker: claim jobs and execute them on this machine's CPU or GPU",
                            [](CLI::App& sub) -> RunFn {
  auto svc = std::make_shared<ServiceOptions>();
  auto device = std::make_shared<std::string>("auto");
  auto artifacts = std::make_shared<std::string>();
  auto data = std::make_shared<std::string>();
  auto queues = std::make_shared<std::vector<std::string>>();
  auto threads = std::make_shared<int>(0);
  auto max_jobs = std::make_shared<size_t>(0);
  auto lease_ms = std::make_shared<int64_t>(30000);
  svc->add_to(sub);
  sub.add_option("--device", *device, "auto | cpu | cuda | cuda:N")->capture_default_str();
  sub.add_option("--artifacts", *artifacts, "shared artifact folder (default QBENCH_ARTIFACTS or var/artifacts)");
  sub.add_option("--data", *data, "data folder with ag_news/ and gpt2/");
  sub.add_option("--queues", *queues, "queues to serve (default: cuda and cpu on a GPU, cpu otherwise)");
  sub.add_option("--threads", *threads, "libtorch CPU threads");
  sub.add_option("--max-jobs", *max_jobs, "exit after this many jobs (tests)");
  sub.add_option("--lease-ms", *lease_ms, "job lease; a worker silent this long loses its job to another")->capture_default_str();
  return [=] {
    auto urls = svc->resolve();
    worker::JobEnvironment env;
    env.database_url = urls.database_url;
    env.device = worker::pick_device(*device);
    env.artifacts = !artifacts->empty() ? *artifacts : getenv_opt("QBENCH_ARTIFACTS").value_or("var/artifacts");
    env.data = data_dir(data->empty() ? std::nullopt : std::optional<std::string>(*data));
    env.threads = *threads;
    scheduler::ExecutorRegistry registry;
    worker::register_job_executors(registry, env);
    scheduler::WorkerOptions o;
    o.redis_url = urls.redis_url;
    o.queues = !queues->empty() ? *queues
                                : (env.device.is_cuda() ? std::vector<std::string>{"cuda", "cpu"} : std::vector<std::string>{"cpu"});
    auto dev = worker::describe_device(env.device);
    o.info = {{"device", dev}, {"artifacts", env.artifacts.string()}};
    if (*max_jobs > 0) o.max_jobs = *max_jobs;
    o.lease = std::chrono::milliseconds(*lease_ms);
    // Chaos testing (documented in docs/queue.md): jobs whose id matches fail on this worker.
    o.fail_jobs_matching = getenv_opt("QBENCH_FAULT_INJECT").value_or("");
    scheduler::WorkerRuntime::install_signal_handlers();
    scheduler::WorkerRuntime rt(o, registry);
    spdlog::info("worker {} on {} serving {}", rt.worker_id(), dev.value("device", "?"), fmt::join(o.queues, ","));
    auto st = rt.run();
    spdlog::info("worker {} done: {} completed, {} failed, {} rejected, {} handed back", rt.worker_id(), st.completed,
                 st.failed, st.rejected, st.handed_back);
    return st.handed_back > 0 ? scheduler::kExitHandedBack : kOk;
  };
});

}  // namespace
}  // namespace evalsvc::cli
