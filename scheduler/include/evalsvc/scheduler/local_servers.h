#pragma once
// Real servers started as child processes, for the server tests, the benchmarks and the embedded
// single-machine stack. Only Redis lives here for now; the PostgreSQL twin (LocalPostgres) belongs beside
// it with the same shape (RAII, free port, data folder, stop/kill/restart).
#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <optional>
#include <string>

namespace evalsvc::scheduler {

/// A free TCP port on 127.0.0.1 at the time of the call (bind to port 0, read it back, close).
int find_free_port();

/// A redis-server child process on 127.0.0.1 with its data (AOF, log, config) in a given folder.
/// The port is chosen once and kept across stop()/kill() and start(), so clients can reconnect to the
/// same URL after a restart. The destructor stops the server (SIGTERM, then SIGKILL after 5 s).
class LocalRedis {
 public:
  struct Options {
    std::filesystem::path dir;               ///< data folder (created); holds redis.conf, the AOF and redis.log
    std::optional<std::string> password;     ///< requirepass; written to a 0600 config file, not argv
    bool appendonly = true;                  ///< AOF on with appendfsync everysec
    std::string redis_server = "redis-server";  ///< binary (looked up on PATH)
    std::chrono::milliseconds start_timeout{10000};
    int port = 0;                            ///< 0: pick a free port
    bool unix_socket = false;                ///< also listen on <dir>/redis.sock (mode 0700)
  };

  /// Starts the server and waits until it answers PING; RedisError (with the log's tail) on failure.
  explicit LocalRedis(Options options);
  ~LocalRedis();
  LocalRedis(const LocalRedis&) = delete;
  LocalRedis& operator=(const LocalRedis&) = delete;

  /// Starts it again after stop()/kill() (same port, same data); no-op while running.
  void start();
  /// Graceful stop: SIGTERM (Redis flushes the AOF), wait for exit (SIGKILL after `grace`).
  void stop(std::chrono::milliseconds grace = std::chrono::milliseconds(5000));
  /// SIGKILL, as a crash would; waits for the process to be gone.
  void kill();
  /// stop() then start().
  void restart();
  bool running() const { return pid_ > 0; }

  int port() const { return port_; }
  pid_t pid() const { return pid_; }
  /// redis://[:password@]127.0.0.1:<port>/0 (with the real password: for connecting, not for logs).
  std::string url() const;
  const std::filesystem::path& dir() const { return options_.dir; }
  /// unix://[:password@]<dir>/redis.sock; InputError unless Options::unix_socket was set.
  std::string socket_url() const;

 private:
  void wait_ready();
  void reap(std::chrono::milliseconds timeout);

  Options options_;
  int port_ = 0;
  pid_t pid_ = -1;
};

}  // namespace evalsvc::scheduler
