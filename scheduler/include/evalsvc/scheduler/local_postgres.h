#pragma once
// A private PostgreSQL 15 cluster owned by this process: the server behind tests and the embedded stack
// (`qbench up`). It lives entirely inside one folder:
//   <root>/pgdata         the cluster (initdb, UTF8, C locale)
//   <root>/password       the generated password of role `qbench`, mode 0600
//   <root>/port           the TCP port, so a later LocalPostgres on the same folder keeps it
//   <root>/postgres.log   the server log (quoted in errors when the server will not start)
// The server listens on 127.0.0.1 only, with scram-sha-256 password auth; no unix socket is opened.
// PostgreSQL refuses to run as root, so when geteuid() == 0 every server binary runs through
// `runuser -u postgres --` and the folder is chowned to that user (CI runs as root).
#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace evalsvc::scheduler {

/// How to create and run a LocalPostgres.
struct LocalPostgresOptions {
  /// Folder that holds the cluster; created if missing. An existing cluster in it is reused.
  std::filesystem::path root;
  /// Folder with initdb/pg_ctl/postgres; default: $QBENCH_PG_BIN, `pg_config --bindir`,
  /// /usr/lib/postgresql/15/bin.
  std::optional<std::filesystem::path> bin_dir;
  /// TCP port; 0 picks the port recorded in <root>/port when it is free, else any free port.
  int port = 0;
  /// false (tests): initdb --no-sync and fsync=off: commits survive a server crash, not an OS crash.
  bool durable = true;
  /// How long start() waits for the server to accept connections.
  std::chrono::seconds start_timeout{60};
};

/// RAII owner of a local PostgreSQL server: the constructor initialises (if needed) and starts it, the
/// destructor stops it. Not thread-safe: one thread controls the server.
class LocalPostgres {
 public:
  /// Runs initdb when <root>/pgdata has no cluster, then start(). Throws IoError (binaries, folder,
  /// initdb or start failures, quoting their output) or DatabaseError (database creation).
  explicit LocalPostgres(LocalPostgresOptions options);
  /// Stops the server (fast shutdown; kill -9 if that fails). Never throws.
  ~LocalPostgres();
  LocalPostgres(const LocalPostgres&) = delete;
  LocalPostgres& operator=(const LocalPostgres&) = delete;

  /// postgresql://qbench:PASSWORD@127.0.0.1:PORT/qbench
  std::string url() const { return url_for("qbench"); }
  /// The same URL for another database of this cluster.
  std::string url_for(const std::string& database) const;
  /// The URL without the password (for logs).
  std::string redacted_url() const;
  int port() const { return port_; }
  const std::string& password() const { return password_; }
  std::filesystem::path password_file() const { return root_ / "password"; }
  std::filesystem::path data_dir() const { return root_ / "pgdata"; }
  std::filesystem::path log_file() const { return root_ / "postgres.log"; }

  /// Creates database `name` (lowercase letters, digits, '_'; at most 63) unless it exists; returns its URL.
  /// InputError for a bad name, DatabaseError when the server refuses.
  std::string create_database(const std::string& name);

  /// Starts the server on the same port and data (after stop() or kill()) and waits until it accepts
  /// connections. No-op when already running.
  void start();
  /// Fast shutdown (pg_ctl stop -m fast), waiting for it. No-op when not running.
  void stop();
  /// kill -9 of the postmaster, as a crash would; waits until it is gone. start() recovers afterwards.
  void kill();
  /// stop() then start(), keeping port and data.
  void restart();
  /// Whether the postmaster recorded in pgdata/postmaster.pid is alive.
  bool running() const;
  /// The postmaster's pid while running.
  std::optional<pid_t> postmaster_pid() const;

  /// Where the PostgreSQL server binaries are (see LocalPostgresOptions::bin_dir); IoError naming every
  /// place tried when none has pg_ctl.
  static std::filesystem::path find_bin_dir(const std::optional<std::filesystem::path>& override_dir = std::nullopt);

 private:
  void init_cluster();
  void start_once();
  void wait_accepting();
  void remove_stale_pid_file();
  /// argv, prefixed with `runuser -u postgres --` when running as root.
  std::vector<std::string> server_command(std::vector<std::string> argv) const;

  LocalPostgresOptions options_;
  std::filesystem::path root_;
  std::filesystem::path bin_dir_;
  std::string password_;
  int port_ = 0;
  bool as_postgres_user_ = false;  ///< running as root: server binaries run via runuser -u postgres
};

}  // namespace evalsvc::scheduler
