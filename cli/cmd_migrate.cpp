// `qbench migrate [--database-url URL] [--migrations DIR]`: brings the results database's schema up to date.
// Safe to run from several hosts at once (migrate() serialises on an advisory lock).
#ifdef EVALSVC_WITH_SCHEDULER
#include <iostream>

#include "commands.h"
#include "evalsvc/common/log.h"
#include "evalsvc/scheduler/store.h"

namespace evalsvc::cli {
namespace {

CommandRegistrar reg(
    "migrate", "Apply the results-database migrations (migrations/NNNN_*.sql) that are not applied yet",
    [](CLI::App& sub) -> RunFn {
      auto url = std::make_shared<std::string>();
      auto dir = std::make_shared<std::string>();
      sub.add_option("--database-url", *url,
                     "postgresql://USER[:PASS]@HOST:PORT/DB (default $QBENCH_DATABASE_URL; the password may come "
                     "from the file named by $QBENCH_DATABASE_PASSWORD_FILE)");
      sub.add_option("--migrations", *dir, "folder of NNNN_name.sql files (default: found next to qbench)");
      return [url, dir] {
        const std::string conn = scheduler::resolve_database_url(
            url->empty() ? std::nullopt : std::optional<std::string>(*url));
        const std::filesystem::path folder = dir->empty() ? scheduler::find_migrations_dir()
                                                          : std::filesystem::path(*dir);
        spdlog::info("migrating {} with {}", scheduler::redact_url(conn), folder.string());
        scheduler::MigrateResult r = scheduler::migrate(conn, folder);
        for (const auto& name : r.applied) std::cout << "applied " << name << "\n";
        std::cout << "schema version " << r.version << (r.applied.empty() ? " (already up to date)" : "") << "\n";
        return static_cast<int>(kOk);
      };
    });

}  // namespace
}  // namespace evalsvc::cli
#endif  // EVALSVC_WITH_SCHEDULER
