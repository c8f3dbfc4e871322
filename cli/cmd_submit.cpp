// Experiment commands: `qbench submit`, `status`, `cancel`, `retry`, `workers`.
#include <unistd.h>

#include <iostream>
#include <thread>

#include "commands.h"
#include "evalsvc/common/error.h"
#include "evalsvc/common/experiment_spec.h"
#include "evalsvc/common/paths.h"
#include "evalsvc/scheduler/redis.h"
#include "evalsvc/scheduler/scheduler.h"
#include "evalsvc/worker/ag_news.h"
#include "service_urls.h"

namespace evalsvc::cli {
namespace {

using scheduler::JobState;

/// `EXPERIMENT` may be an id or a name (the most recent experiment of that name).
int64_t find_experiment(scheduler::Store& store, const std::string& ref) {
  if (!ref.empty() && std::all_of(ref.begin(), ref.end(), ::isdigit)) return std::stoll(ref);
  for (const auto& e : store.list_experiments(1000)) {
    if (e.name == ref) return e.id;
  }
  throw InputError(fmt::format("no experiment with id or name '{}'", ref));
}

nlohmann::json status_json(scheduler::Store& store, int64_t id) {
  auto e = store.get_experiment(id);
  if (!e) throw InputError(fmt::format("no experiment {}", id));
  nlohmann::json j{{"id", e->id}, {"name", e->name}, {"state", scheduler::to_string(e->state)},
                   {"error", e->error ? nlohmann::json(*e->error) : nlohmann::json()}};
  std::map<std::string, std::map<std::string, int>> by_type;
  nlohmann::json failed = nlohmann::json::array();
  for (const auto& job : store.list_jobs(id)) {
    by_type[job.type][scheduler::to_string(job.state)]++;
    if (job.state == JobState::kFailed) failed.push_back({{"job", job.id}, {"error", job.error.value_or("")}});
  }
  j["jobs"] = by_type;
  j["failed"] = failed;
  return j;
}

void print_status(const nlohmann::json& j, bool tty) {
  std::cout << fmt::format("experiment {} '{}': {}{}\n", j["id"].get<int64_t>(), j["name"].get<std::string>(),
                           j["state"].get<std::string>(), j["error"].is_string() ? " (" + j["error"].get<std::string>() + ")" : "");
  for (const char* type : {"prepare", "train", "quantize", "eval", "bench", "merge", "report"}) {
    if (!j["jobs"].contains(type)) continue;
    int total = 0, done = 0;
    std::string parts;
    for (auto& [state, n] : j["jobs"][type].items()) {
      total += n.get<int>();
      if (state == "done") done += n.get<int>();
      parts += fmt::format(" {}={}", state, n.get<int>());
    }
    if (tty) {
      const int width = 24, fill = total ? done * width / total : 0;
      std::cout << fmt::format("  {:<9}[{}{}] {:>3}/{:<3}{}\n", type, std::string(fill, '#'), std::string(width - fill, '.'),
                               done, total, parts);
    } else {
      std::cout << fmt::format("  {} {}/{}{}\n", type, done, total, parts);
    }
  }
  for (const auto& f : j["failed"]) std::cout << "  failed " << f["job"].get<std::string>() << ": " << f["error"].get<std::string>() << "\n";
}

bool terminal(const std::string& state) { return state == "done" || state == "failed" || state == "cancelled"; }

CommandRegistrar submit_reg("submit", "Submit an experiment (spec file or preset), optionally wait for it", [](CLI::App& sub) -> RunFn {
  auto svc = std::make_shared<ServiceOptions>();
  auto file = std::make_shared<std::string>();
  auto preset = std::make_shared<std::string>();
  auto sets = std::make_shared<std::vector<std::string>>();
  auto data = std::make_shared<std::string>();
  auto wait = std::make_shared<bool>(false);
  auto timeout = std::make_shared<int>(0);
  svc->add_to(sub);
  sub.add_option("spec", *file, "experiment spec (JSON file; see docs/spec.md)");
  sub.add_option("--preset", *preset, "tiny | seed (instead of a spec file)");
  sub.add_option("--set", *sets, "override a field: --set train.epochs=2 --set 'variants=[\"fp32\",\"nf4\"]'");
  sub.add_option("--data", *data, "data folder (to count the test rows); default QBENCH_DATA_DIR or ../shared/data");
  sub.add_flag("--wait", *wait, "wait until the experiment ends; exit 0 only if it succeeded");
  sub.add_option("--timeout", *timeout, "with --wait: give up after this many seconds (0 = never)");
  return [=] {
    if (file->empty() == preset->empty()) throw InputError("give either a spec file or --preset (not both)");
    // Validate everything before anything is queued.
    ExperimentSpec spec = preset->empty() ? ExperimentSpec::parse_text(read_file(*file), *file) : ExperimentSpec::from_preset(*preset);
    if (!sets->empty()) spec.apply_overrides(*sets);
    const auto dd = data_dir(data->empty() ? std::nullopt : std::optional<std::string>(*data));
    const auto test = spec.data.test ? std::filesystem::path(*spec.data.test) : dd / "ag_news" / "test.csv";
    const int64_t rows = static_cast<int64_t>(worker::read_ag_news_csv(test, static_cast<size_t>(spec.data.test_limit)).size());
    auto urls = svc->resolve();
    scheduler::Store store(urls.database_url);
    scheduler::RedisClient redis(urls.redis_url);
    scheduler::Queue queue(redis);
    const int64_t id = scheduler::submit_experiment(store, queue, spec, rows);
    std::cout << id << std::endl;
    if (!*wait) return kOk;
    const bool tty = ::isatty(1);
    const auto t0 = std::chrono::steady_clock::now();
    nlohmann::json st;
    for (;;) {
      st = status_json(store, id);
      if (terminal(st["state"])) break;
      if (*timeout > 0 && std::chrono::steady_clock::now() - t0 > std::chrono::seconds(*timeout)) {
        std::cerr << "qbench submit: timed out after " << *timeout << " s\n";
        print_status(st, false);
        return kFailed;
      }
      if (tty) {
        std::cout << "\x1b[H\x1b[2J";
        print_status(st, true);
        std::cout.flush();
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(tty ? 500 : 2000));
    }
    print_status(st, tty);
    return st["state"] == "done" && st["failed"].empty() ? kOk : kFailed;
  };
});

CommandRegistrar status_reg("status", "Show experiments and their jobs", [](CLI::App& sub) -> RunFn {
  auto svc = std::make_shared<ServiceOptions>();
  auto ref = std::make_shared<std::string>();
  auto json = std::make_shared<bool>(false);
  svc->add_to(sub);
  sub.add_option("experiment", *ref, "id or name (default: all)");
  sub.add_flag("--json", *json, "machine-readable output");
  return [=] {
    auto urls = svc->resolve();
    scheduler::Store store(urls.database_url);
    nlohmann::json all = nlohmann::json::array();
    if (!ref->empty()) {
      all.push_back(status_json(store, find_experiment(store, *ref)));
    } else {
      for (const auto& e : store.list_experiments(100)) all.push_back(status_json(store, e.id));
    }
    if (*json) {
      std::cout << (ref->empty() ? all : all[0]).dump(2) << std::endl;
    } else {
      for (const auto& j : all) print_status(j, ::isatty(1));
    }
    return kOk;
  };
});

CommandRegistrar cancel_reg("cancel", "Cancel an experiment's open jobs", [](CLI::App& sub) -> RunFn {
  auto svc = std::make_shared<ServiceOptions>();
  auto ref = std::make_shared<std::string>();
  svc->add_to(sub);
  sub.add_option("experiment", *ref, "id or name")->required();
  return [=] {
    auto urls = svc->resolve();
    scheduler::Store store(urls.database_url);
    scheduler::RedisClient redis(urls.redis_url);
    scheduler::Queue queue(redis);
    scheduler::cancel_experiment(store, queue, find_experiment(store, *ref));
    return kOk;
  };
});

CommandRegistrar retry_reg("retry", "Retry an experiment's failed, blocked and cancelled jobs", [](CLI::App& sub) -> RunFn {
  auto svc = std::make_shared<ServiceOptions>();
  auto ref = std::make_shared<std::string>();
  svc->add_to(sub);
  sub.add_option("experiment", *ref, "id or name")->required();
  return [=] {
    auto urls = svc->resolve();
    scheduler::Store store(urls.database_url);
    scheduler::RedisClient redis(urls.redis_url);
    scheduler::Queue queue(redis);
    std::cout << scheduler::retry_experiment(store, queue, find_experiment(store, *ref)) << " jobs queued again\n";
    return kOk;
  };
});

CommandRegistrar workers_reg("workers", "List live workers and what they run", [](CLI::App& sub) -> RunFn {
  auto svc = std::make_shared<ServiceOptions>();
  svc->add_to(sub);
  return [=] {
    auto urls = svc->resolve();
    scheduler::RedisClient redis(urls.redis_url);
    auto r = redis.command({"HGETALL", "qbench:workers"});
    for (size_t i = 0; i + 1 < r.size(); i += 2) {
      const std::string id(r.at(i).str());
      auto alive = redis.command({"EXISTS", "qbench:worker:" + id});
      auto j = nlohmann::json::parse(r.at(i + 1).str(), nullptr, false);
      std::string dev = j.is_object() && j.contains("device") ? j["device"].value("device", "?") : "?";
      std::string job = j.is_object() && j.contains("job") && j["job"].is_string() ? j["job"].get<std::string>() : "-";
      std::cout << fmt::format("{}  {}  {}  job {}\n", id, alive.integer() ? "alive" : "lost", dev, job);
    }
    return kOk;
  };
});

}  // namespace
}  // namespace evalsvc::cli
