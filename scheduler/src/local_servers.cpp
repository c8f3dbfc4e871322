#include "evalsvc/scheduler/local_servers.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <sys/prctl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <thread>

#include "evalsvc/common/error.h"
#include "evalsvc/common/paths.h"
#include "evalsvc/scheduler/redis.h"

namespace evalsvc::scheduler {

namespace fs = std::filesystem;

int find_free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw IoError(fmt::format("socket(): {}", std::strerror(errno)));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    int e = errno;
    ::close(fd);
    throw IoError(fmt::format("bind(127.0.0.1:0): {}", std::strerror(e)));
  }
  socklen_t len = sizeof(addr);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

namespace {
std::string log_tail(const fs::path& log, size_t max_chars = 2000) {
  std::error_code ec;
  if (!fs::exists(log, ec)) return "(no log)";
  std::string text = read_file(log);
  if (text.size() > max_chars) text = "..." + text.substr(text.size() - max_chars);
  return text;
}
}  // namespace

LocalRedis::LocalRedis(Options options) : options_(std::move(options)) {
  if (options_.dir.empty()) throw InputError("LocalRedis: Options::dir (data folder) is empty");
  fs::create_directories(options_.dir);
  options_.dir = fs::absolute(options_.dir);
  if (options_.password && options_.password->find_first_of("\"\\\r\n") != std::string::npos) {
    throw InputError("LocalRedis: the password must not contain quotes, backslashes or line breaks");
  }
  port_ = options_.port != 0 ? options_.port : find_free_port();
  // Written once: the config holds the password, so it must not be world-readable or on argv (ps).
  const fs::path conf = options_.dir / "redis.conf";
  {
    std::ofstream out(conf, std::ios::trunc);
    if (!out) throw IoError(fmt::format("cannot write '{}': {}", conf.string(), std::strerror(errno)));
    out << "bind 127.0.0.1\n"
        << "port " << port_ << "\n"
        << "dir " << options_.dir.string() << "\n"
        << "daemonize no\n"
        << "save \"\"\n"
        << "logfile " << (options_.dir / "redis.log").string() << "\n"
        << "appendonly " << (options_.appendonly ? "yes" : "no") << "\n"
        << "appendfsync everysec\n"
        << "protected-mode yes\n";
    if (options_.password) out << "requirepass \"" << *options_.password << "\"\n";
    if (options_.unix_socket) out << "unixsocket " << (options_.dir / "redis.sock").string() << "\nunixsocketperm 700\n";
  }
  ::chmod(conf.c_str(), 0600);
  start();
}

LocalRedis::~LocalRedis() {
  try {
    stop();
  } catch (const std::exception& e) {
    spdlog::warn("LocalRedis on port {}: stop failed: {}", port_, e.what());
  }
}

std::string LocalRedis::url() const {
  RedisUrl u;
  u.host = "127.0.0.1";
  u.port = port_;
  if (options_.password) u.password = *options_.password;
  return u.str(false);
}

std::string LocalRedis::socket_url() const {
  if (!options_.unix_socket) throw InputError("LocalRedis: started without Options::unix_socket");
  RedisUrl u;
  u.socket_path = (options_.dir / "redis.sock").string();
  if (options_.password) u.password = *options_.password;
  return u.str(false);
}

void LocalRedis::start() {
  if (pid_ > 0) return;
  const fs::path conf = options_.dir / "redis.conf";
  pid_t pid = ::fork();
  if (pid < 0) throw IoError(fmt::format("fork() for redis-server: {}", std::strerror(errno)));
  if (pid == 0) {
    // Child: own process group so a Ctrl-C on the test does not reach it before the parent cleans up.
    ::setpgid(0, 0);
    // If the owner dies without stopping it (a test killed at its timeout), the server goes too, instead
    // of living on as an orphan that also holds the owner's output pipe open (ctest then waits forever).
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);
    int devnull = ::open("/dev/null", O_RDWR);
    if (devnull >= 0) {
      ::dup2(devnull, STDIN_FILENO);
      ::dup2(devnull, STDOUT_FILENO);
    }
    // stderr to the log file (redis logs there too), not to the owner's stderr.
    const std::string log = (options_.dir / "redis.log").string();
    int logfd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (logfd >= 0) ::dup2(logfd, STDERR_FILENO);
    ::execlp(options_.redis_server.c_str(), options_.redis_server.c_str(), conf.c_str(), static_cast<char*>(nullptr));
    std::fprintf(stderr, "exec %s: %s\n", options_.redis_server.c_str(), std::strerror(errno));
    ::_exit(127);
  }
  pid_ = pid;
  wait_ready();
}

void LocalRedis::wait_ready() {
  const auto deadline = std::chrono::steady_clock::now() + options_.start_timeout;
  RedisOptions ro;
  ro.connect_timeout = std::chrono::milliseconds(200);
  ro.command_timeout = std::chrono::milliseconds(1000);
  ro.reconnect_attempts = 1;
  std::string last = "not tried";
  while (std::chrono::steady_clock::now() < deadline) {
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      throw RedisError(fmt::format("redis-server on port {} exited during start (status {}); log:\n{}", port_, status,
                                   log_tail(options_.dir / "redis.log")));
    }
    try {
      RedisClient c(url(), ro);
      // While loading a big AOF Redis answers -LOADING; only PONG means ready.
      if (c.ping()) return;
      last = "PING did not answer PONG";
    } catch (const RedisError& e) {
      last = e.what();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  kill();
  throw RedisError(fmt::format("redis-server on port {} did not answer PING within {} ms (last: {}); log:\n{}", port_,
                               options_.start_timeout.count(), last, log_tail(options_.dir / "redis.log")));
}

void LocalRedis::reap(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (pid_ > 0) {
    int status = 0;
    pid_t r = ::waitpid(pid_, &status, WNOHANG);
    if (r == pid_ || (r < 0 && errno == ECHILD)) {
      pid_ = -1;
      return;
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, &status, 0);
      pid_ = -1;
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

void LocalRedis::stop(std::chrono::milliseconds grace) {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGTERM);
  reap(grace);
}

void LocalRedis::kill() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGKILL);
  reap(std::chrono::milliseconds(5000));
}

void LocalRedis::restart() {
  stop();
  start();
}

}  // namespace evalsvc::scheduler
