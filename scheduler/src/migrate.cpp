// Schema migrations (STYLE item 12, after bullmq's migrator): numbered files migrations/NNNN_name.sql,
// applied in one transaction under an advisory lock and recorded in schema_migrations with a checksum.
#include <unistd.h>

#include <algorithm>
#include <map>
#include <regex>

#include <pqxx/pqxx>

#include "evalsvc/common/error.h"
#include "evalsvc/common/log.h"
#include "evalsvc/common/paths.h"
#include "evalsvc/scheduler/store.h"

namespace fs = std::filesystem;

namespace evalsvc::scheduler {
namespace {

/// Key of the transaction-level advisory lock that serialises migrate() callers ("qbench.migrate").
constexpr int64_t kMigrateLockKey = 0x71626e63'6d696772;

struct MigrationFile {
  int version = 0;
  std::string name;  ///< the part after NNNN_
  fs::path path;
};

/// The NNNN_name.sql files of `dir`, by version. Other .sql names and duplicate versions are errors, so a
/// typo cannot silently skip a migration.
std::vector<MigrationFile> list_migrations(const fs::path& dir) {
  static const std::regex kName(R"((\d{4})_([a-z0-9_]+)\.sql)");
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) throw IoError(fmt::format("migrations folder '{}' does not exist", dir.string()));
  std::vector<MigrationFile> files;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string fname = entry.path().filename().string();
    if (entry.path().extension() != ".sql") continue;
    std::smatch m;
    if (!std::regex_match(fname, m, kName))
      throw InputError(fmt::format("migration file '{}' is not named NNNN_lowercase_name.sql",
                                   entry.path().string()));
    files.push_back({std::stoi(m[1].str()), m[2].str(), entry.path()});
  }
  std::sort(files.begin(), files.end(), [](const auto& a, const auto& b) { return a.version < b.version; });
  for (size_t i = 1; i < files.size(); ++i)
    if (files[i].version == files[i - 1].version)
      throw InputError(fmt::format("migrations '{}' and '{}' share version {}", files[i - 1].path.string(),
                                   files[i].path.string(), files[i].version));
  return files;
}

/// libpq/server text on one line, without credentials.
std::string clean_message(const std::string& what, const std::string& url) {
  std::string s = scrub_secrets(what, url);
  for (char& ch : s)
    if (ch == '\n' || ch == '\t') ch = ' ';
  while (!s.empty() && s.back() == ' ') s.pop_back();
  return s;
}

bool has_migrations(const fs::path& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return false;
  for (const auto& entry : fs::directory_iterator(dir, ec))
    if (entry.path().extension() == ".sql") return true;
  return false;
}

}  // namespace

fs::path find_migrations_dir() {
  std::vector<fs::path> candidates;
  if (auto env = getenv_opt("QBENCH_MIGRATIONS_DIR")) {
    if (has_migrations(*env)) return *env;
    throw IoError(fmt::format("QBENCH_MIGRATIONS_DIR='{}' holds no .sql migrations", *env));
  }
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    candidates.push_back(exe.parent_path() / ".." / "share" / "qbench" / "migrations");
    candidates.push_back(exe.parent_path() / "migrations");
  }
  candidates.push_back(EVALSVC_MIGRATIONS_DIR);
  for (const auto& c : candidates)
    if (has_migrations(c)) return fs::weakly_canonical(c);
  std::string list;
  for (const auto& c : candidates) list += "\n  " + c.string();
  throw IoError("no migrations folder found (set QBENCH_MIGRATIONS_DIR); tried:" + list);
}

MigrateResult migrate(const std::string& conn_url, const fs::path& dir) {
  const std::vector<MigrationFile> files = list_migrations(dir);
  EVALSVC_CHECK(!files.empty(), InputError, "migrations folder '{}' has no NNNN_name.sql files", dir.string());
  std::map<int, std::string> sql;
  for (const auto& f : files) sql[f.version] = read_file(f.path);

  MigrateResult result;
  std::string step = "connect";
  try {
    pqxx::connection c(conn_url);
    pqxx::work tx(c, "migrate");
    // Taken before anything else, so a concurrent caller waits here and then sees our committed ledger.
    step = "advisory lock";
    tx.exec_params("SELECT pg_advisory_xact_lock($1)", kMigrateLockKey);
    step = "schema_migrations";
    tx.exec(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, name text NOT NULL, "
        "checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())");
    std::map<int, std::pair<std::string, std::string>> recorded;  // version -> (name, checksum)
    for (const auto& row : tx.exec("SELECT version, name, checksum FROM schema_migrations"))
      recorded[row[0].as<int>()] = {row[1].c_str(), row[2].c_str()};

    for (const auto& f : files) {
      step = "checksum of " + f.path.string();
      // sha256 in the server: the same function a DBA can run by hand (see docs/results-schema.md).
      const std::string checksum =
          tx.exec_params1("SELECT encode(sha256(convert_to($1, 'UTF8')), 'hex')", sql[f.version])[0].c_str();
      auto it = recorded.find(f.version);
      if (it != recorded.end()) {
        if (it->second.second != checksum)
          throw InputError(fmt::format(
              "migration '{}' was edited after it was applied (recorded checksum {}, file now {}); landed "
              "migrations are never edited: restore it and add a new NNNN_*.sql",
              f.path.string(), it->second.second, checksum));
        continue;
      }
      step = "apply " + f.path.string();
      tx.exec(sql[f.version]);
      tx.exec_params("INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)", f.version, f.name,
                     checksum);
      result.applied.push_back(f.path.filename().string());
    }
    for (const auto& [version, rec] : recorded) {
      if (std::none_of(files.begin(), files.end(), [v = version](const auto& f) { return f.version == v; }))
        spdlog::warn("database has migration {:04d}_{} which '{}' does not have (a newer qbench migrated it)", version,
                     rec.first, dir.string());
    }
    step = "read version";
    result.version = tx.exec("SELECT coalesce(max(version), 0) FROM schema_migrations")[0][0].as<int>();
    step = "commit";
    tx.commit();
  } catch (const Error&) {
    throw;
  } catch (const pqxx::sql_error& e) {
    throw DatabaseError(fmt::format("migrate ({}) on {}: {} (SQLSTATE {}); nothing was applied", step,
                                    redact_url(conn_url), clean_message(e.what(), conn_url), e.sqlstate()));
  } catch (const std::exception& e) {
    throw DatabaseError(fmt::format("migrate ({}) on {}: {}; nothing was applied", step, redact_url(conn_url),
                                    clean_message(e.what(), conn_url)));
  }
  for (const auto& a : result.applied) spdlog::info("applied migration {}", a);
  return result;
}

}  // namespace evalsvc::scheduler
