#include "service_urls.h"

#include <nlohmann/json.hpp>

#include "evalsvc/common/error.h"
#include "evalsvc/common/paths.h"
#include "evalsvc/scheduler/store.h"

namespace evalsvc::cli {

void ServiceOptions::add_to(CLI::App& app) {
  app.add_option("--redis-url", redis_url, "redis://[:password@]host:port (default: QBENCH_REDIS_URL or the embedded stack)");
  app.add_option("--database-url", database_url,
                 "postgresql://user@host:port/db (default: QBENCH_DATABASE_URL or the embedded stack)");
  app.add_option("--stack", stack_dir, "folder of the embedded stack (qbench up)")->capture_default_str();
}

ServiceUrls ServiceOptions::resolve() const {
  ServiceUrls u;
  u.redis_url = redis_url.empty() ? getenv_opt("QBENCH_REDIS_URL").value_or("") : redis_url;
  u.database_url = database_url;
  if (u.database_url.empty() && getenv_opt("QBENCH_DATABASE_URL")) {
    u.database_url = scheduler::resolve_database_url(std::nullopt);
  }
  const auto file = std::filesystem::path(stack_dir) / "stack.json";
  if ((u.redis_url.empty() || u.database_url.empty()) && std::filesystem::exists(file)) {
    auto j = nlohmann::json::parse(read_file(file));
    if (u.redis_url.empty()) u.redis_url = j.value("redis_url", "");
    if (u.database_url.empty()) u.database_url = j.value("database_url", "");
  }
  if (u.redis_url.empty() || u.database_url.empty()) {
    throw InputError(fmt::format("no {} URL: pass --{}, set {}, or start the embedded stack with `qbench up` ({} not found)",
                                 u.redis_url.empty() ? "Redis" : "PostgreSQL",
                                 u.redis_url.empty() ? "redis-url" : "database-url",
                                 u.redis_url.empty() ? "QBENCH_REDIS_URL" : "QBENCH_DATABASE_URL", file.string()));
  }
  return u;
}

std::string database_url_or_stack(const std::string& flag, const std::string& stack_dir) {
  if (!flag.empty() || getenv_opt("QBENCH_DATABASE_URL")) {
    return scheduler::resolve_database_url(flag.empty() ? std::nullopt : std::optional<std::string>(flag));
  }
  ServiceOptions o;
  o.stack_dir = stack_dir;
  const auto file = std::filesystem::path(stack_dir) / "stack.json";
  if (std::filesystem::exists(file)) {
    auto j = nlohmann::json::parse(read_file(file), nullptr, false);
    if (j.is_object() && j.contains("database_url")) return j["database_url"].get<std::string>();
  }
  throw InputError(fmt::format("no PostgreSQL URL: pass --database-url, set QBENCH_DATABASE_URL, or start the "
                               "embedded stack with `qbench up` ({} not found)", file.string()));
}

}  // namespace evalsvc::cli
