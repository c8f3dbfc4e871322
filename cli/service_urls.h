#pragma once
// Where the CLI finds Redis and PostgreSQL: a flag, else QBENCH_REDIS_URL / QBENCH_DATABASE_URL, else the
// embedded stack started by `qbench up` (its stack.json, mode 0600, holds the URLs with their passwords).
#include <filesystem>
#include <optional>
#include <string>

#include <CLI/CLI.hpp>

namespace evalsvc::cli {

struct ServiceUrls {
  std::string redis_url;
  std::string database_url;
};

struct ServiceOptions {
  std::string redis_url, database_url;
  std::string stack_dir = "var/stack";
  /// Adds --redis-url, --database-url and --stack to `app`.
  void add_to(CLI::App& app);
  /// Resolves both URLs; InputError naming the three places tried when one is missing.
  ServiceUrls resolve() const;
};

/// The database URL alone (report, results, migrate): `flag`, else QBENCH_DATABASE_URL (+ password file),
/// else the embedded stack's stack.json in `stack_dir`.
std::string database_url_or_stack(const std::string& flag, const std::string& stack_dir = "var/stack");

}  // namespace evalsvc::cli
