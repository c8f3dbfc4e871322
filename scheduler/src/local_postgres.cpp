#include "evalsvc/scheduler/local_postgres.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <random>
#include <regex>
#include <thread>
#include <vector>

#include <pqxx/pqxx>

#include "evalsvc/common/error.h"
#include "evalsvc/common/log.h"
#include "evalsvc/common/paths.h"

namespace fs = std::filesystem;

namespace evalsvc::scheduler {
namespace {

constexpr const char* kRole = "qbench";
constexpr const char* kServerUser = "postgres";  // the system user that runs the server when we are root

struct CommandResult {
  int exit_code = -1;
  std::string output;  ///< stdout and stderr interleaved
};

/// Runs argv (argv[0] an absolute path) with stdin from /dev/null, capturing stdout+stderr, and waits.
CommandResult run_command(const std::vector<std::string>& argv) {
  std::vector<char*> cargv;
  for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) throw IoError(fmt::format("pipe() failed: {}", std::strerror(errno)));
  pid_t pid = ::fork();
  if (pid < 0) {
    int e = errno;
    ::close(fds[0]);
    ::close(fds[1]);
    throw IoError(fmt::format("fork() for '{}' failed: {}", argv[0], std::strerror(e)));
  }
  if (pid == 0) {
    // Child: only async-signal-safe calls until exec. "/" so the postgres user can always read its cwd.
    int devnull = ::open("/dev/null", O_RDONLY);
    if (devnull >= 0) ::dup2(devnull, 0);
    ::dup2(fds[1], 1);
    ::dup2(fds[1], 2);
    if (::chdir("/") != 0) ::_exit(126);
    ::execv(cargv[0], cargv.data());
    ::_exit(127);
  }
  ::close(fds[1]);
  CommandResult r;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(fds[0], buf, sizeof buf);
    if (n > 0) {
      r.output.append(buf, static_cast<size_t>(n));
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else {
      break;
    }
  }
  ::close(fds[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) throw IoError(fmt::format("waitpid for '{}' failed: {}", argv[0], std::strerror(errno)));
  }
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  if (r.exit_code == 127 && r.output.empty()) r.output = "could not execute " + argv[0];
  return r;
}

std::string join_argv(const std::vector<std::string>& argv) {
  std::string s;
  for (const auto& a : argv) s += (s.empty() ? "" : " ") + a;
  return s;
}

/// Last `max_lines` lines of a file, for error messages; empty when unreadable.
std::string tail_of(const fs::path& path, size_t max_lines = 20) {
  std::ifstream in(path);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) {
    lines.push_back(line);
    if (lines.size() > max_lines) lines.erase(lines.begin());
  }
  std::string s;
  for (const auto& l : lines) s += "\n  " + l;
  return s;
}

std::string random_password() {
  std::random_device rd;  // /dev/urandom on Linux
  std::string s;
  for (int i = 0; i < 6; ++i) s += fmt::format("{:08x}", rd());
  return s;
}

/// A port nobody listens on right now (the kernel's choice for port 0).
int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw IoError(fmt::format("socket() failed: {}", std::strerror(errno)));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof addr;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    int e = errno;
    ::close(fd);
    throw IoError(fmt::format("cannot find a free TCP port on 127.0.0.1: {}", std::strerror(e)));
  }
  ::close(fd);
  return ntohs(addr.sin_port);
}

bool port_is_free(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);  // as postgres does: TIME_WAIT is fine
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  ::close(fd);
  return ok;
}

/// Alive and not a zombie: an orphaned postmaster killed with -9 stays a zombie until init reaps it,
/// and some container inits never do.
bool process_alive(pid_t pid) {
  if (pid <= 0) return false;
  if (::kill(pid, 0) != 0 && errno == ESRCH) return false;
  std::ifstream stat(fmt::format("/proc/{}/stat", pid));
  std::string content;
  if (!std::getline(stat, content)) return false;
  auto close_paren = content.rfind(')');
  if (close_paren == std::string::npos || close_paren + 2 >= content.size()) return true;
  char state = content[close_paren + 2];
  return state != 'Z' && state != 'X';
}

/// Pids of live processes whose working directory is `dir`: postgres backends chdir into the data folder,
/// so this finds the children of a killed postmaster that have not noticed its death yet.
std::vector<pid_t> processes_in(const fs::path& dir) {
  std::vector<pid_t> pids;
  std::error_code ec;
  const fs::path want = fs::weakly_canonical(dir, ec);
  for (const auto& entry : fs::directory_iterator("/proc", ec)) {
    const std::string name = entry.path().filename().string();
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::error_code ec2;
    fs::path cwd = fs::read_symlink(entry.path() / "cwd", ec2);
    if (ec2 || cwd != want) continue;
    pid_t pid = static_cast<pid_t>(std::stol(name));
    if (process_alive(pid)) pids.push_back(pid);
  }
  return pids;
}

void write_private_file(const fs::path& path, const std::string& content) {
  ::unlink(path.c_str());
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) throw IoError(fmt::format("cannot create '{}': {}", path.string(), std::strerror(errno)));
  ssize_t n = ::write(fd, content.data(), content.size());
  int e = errno;
  ::close(fd);
  if (n != static_cast<ssize_t>(content.size()))
    throw IoError(fmt::format("cannot write '{}': {}", path.string(), std::strerror(e)));
}

std::string trim(std::string s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  size_t i = 0;
  while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
  return s.substr(i);
}

struct ServerUser {
  uid_t uid;
  gid_t gid;
};

ServerUser server_user() {
  passwd* pw = ::getpwnam(kServerUser);
  if (pw == nullptr)
    throw IoError(fmt::format("running as root, PostgreSQL needs the system user '{}', which does not exist "
                              "(apt-get install postgresql creates it)",
                              kServerUser));
  return {pw->pw_uid, pw->pw_gid};
}

void chown_to_server_user(const fs::path& path) {
  ServerUser u = server_user();
  if (::chown(path.c_str(), u.uid, u.gid) != 0)
    throw IoError(fmt::format("cannot chown '{}' to {}: {}", path.string(), kServerUser, std::strerror(errno)));
}

fs::path runuser_path() {
  for (const char* p : {"/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser", "/bin/runuser"})
    if (::access(p, X_OK) == 0) return p;
  throw IoError("running as root, PostgreSQL must run as user 'postgres', but runuser was not found");
}

}  // namespace

fs::path LocalPostgres::find_bin_dir(const std::optional<fs::path>& override_dir) {
  auto has_pg_ctl = [](const fs::path& d) { return ::access((d / "pg_ctl").c_str(), X_OK) == 0; };
  if (override_dir) {
    if (has_pg_ctl(*override_dir)) return *override_dir;
    throw IoError(fmt::format("PostgreSQL bin folder '{}' has no executable pg_ctl", override_dir->string()));
  }
  std::vector<fs::path> tried;
  if (auto env = getenv_opt("QBENCH_PG_BIN")) {
    if (has_pg_ctl(*env)) return *env;
    throw IoError(fmt::format("QBENCH_PG_BIN='{}' has no executable pg_ctl", *env));
  }
  for (const char* pg_config : {"/usr/bin/pg_config", "/usr/local/bin/pg_config"}) {
    if (::access(pg_config, X_OK) != 0) continue;
    CommandResult r = run_command({pg_config, "--bindir"});
    if (r.exit_code == 0) {
      fs::path d = trim(r.output);
      if (has_pg_ctl(d)) return d;
      tried.push_back(d);
    }
  }
  for (const char* d : {"/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/17/bin",
                        "/usr/local/pgsql/bin"}) {
    if (has_pg_ctl(d)) return d;
    tried.push_back(d);
  }
  std::string list;
  for (const auto& p : tried) list += "\n  " + p.string();
  throw IoError("PostgreSQL server binaries (pg_ctl) not found; set QBENCH_PG_BIN. Tried:" + list);
}

LocalPostgres::LocalPostgres(LocalPostgresOptions options) : options_(std::move(options)) {
  EVALSVC_CHECK(!options_.root.empty(), InputError, "LocalPostgres: options.root (the cluster folder) is empty");
  EVALSVC_CHECK(options_.port >= 0 && options_.port <= 65535, InputError, "LocalPostgres: port {} out of range",
                options_.port);
  bin_dir_ = find_bin_dir(options_.bin_dir);
  as_postgres_user_ = ::geteuid() == 0;
  std::error_code ec;
  fs::create_directories(options_.root, ec);
  if (ec) throw IoError(fmt::format("cannot create '{}': {}", options_.root.string(), ec.message()));
  root_ = fs::canonical(options_.root);
  if (as_postgres_user_) {
    // The server user must be able to walk down to its folder (mkdtemp folders are 0700, /root is 0700).
    chown_to_server_user(root_);
    for (fs::path p = root_.parent_path(); !p.empty(); p = p.parent_path()) {
      struct stat st {};
      if (::stat(p.c_str(), &st) == 0 && (st.st_mode & S_IXOTH) == 0)
        throw IoError(fmt::format("user '{}' cannot enter '{}' (mode {:o}) on the way to '{}'; put the cluster "
                                  "under /tmp or chmod o+x it",
                                  kServerUser, p.string(), st.st_mode & 07777, root_.string()));
      if (p == p.parent_path()) break;
    }
  }
  if (!fs::exists(data_dir() / "PG_VERSION")) init_cluster();
  password_ = trim(read_file(password_file()));
  EVALSVC_CHECK(!password_.empty(), FormatError, "password file '{}' is empty", password_file().string());

  port_ = options_.port;
  if (port_ == 0 && fs::exists(root_ / "port")) {
    try {
      int recorded = std::stoi(read_file(root_ / "port"));
      if (recorded > 0 && recorded <= 65535 && port_is_free(recorded)) port_ = recorded;
    } catch (const std::exception&) {
      // an unreadable port file only loses the old port
    }
  }
  const bool pick_port = port_ == 0;
  for (int attempt = 1;; ++attempt) {
    if (pick_port) port_ = free_port();
    try {
      start();
      break;
    } catch (const IoError& e) {
      // Another process may take the port between free_port() and the server's bind: try another one.
      if (!pick_port || attempt >= 3 || running()) throw;
      spdlog::warn("postgres did not start on port {} (attempt {}), trying another port", port_, attempt);
    }
  }
  try {
    write_file_atomic(root_ / "port", std::to_string(port_) + "\n");
    create_database("qbench");
  } catch (...) {
    // No destructor runs for a half-constructed object: do not leave the server behind.
    try {
      stop();
    } catch (const std::exception&) {
      kill();
    }
    throw;
  }
}

LocalPostgres::~LocalPostgres() {
  try {
    stop();
  } catch (const std::exception& e) {
    spdlog::warn("stopping postgres in '{}' failed ({}); killing it", root_.string(), e.what());
    try {
      kill();
    } catch (const std::exception& e2) {
      spdlog::error("could not kill postgres in '{}': {}", root_.string(), e2.what());
    }
  }
}

std::string LocalPostgres::url_for(const std::string& database) const {
  // The password is hex and database names are checked identifiers: nothing needs percent-encoding.
  return fmt::format("postgresql://{}:{}@127.0.0.1:{}/{}", kRole, password_, port_, database);
}

std::string LocalPostgres::redacted_url() const {
  return fmt::format("postgresql://{}:***@127.0.0.1:{}/qbench", kRole, port_);
}

void LocalPostgres::init_cluster() {
  write_private_file(password_file(), random_password() + "\n");
  std::error_code ec;
  evalsvc::remove_tree(data_dir(), ec);  // a half-made cluster from an interrupted initdb
  if (as_postgres_user_) chown_to_server_user(password_file());  // initdb reads it as the server user
  std::vector<std::string> argv = server_command(
      {(bin_dir_ / "initdb").string(), "-D", data_dir().string(), "-U", kRole, "-E", "UTF8", "--locale=C",
       "--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "--pwfile=" + password_file().string()});
  if (!options_.durable) argv.push_back("--no-sync");
  CommandResult r = run_command(argv);
  if (r.exit_code != 0)
    throw IoError(fmt::format("initdb failed (exit {}): {}\n{}", r.exit_code, join_argv(argv), r.output));
  spdlog::debug("initialised PostgreSQL cluster in {}", data_dir().string());
}

std::vector<std::string> LocalPostgres::server_command(std::vector<std::string> argv) const {
  if (!as_postgres_user_) return argv;
  std::vector<std::string> wrapped = {runuser_path().string(), "-u", kServerUser, "--"};
  wrapped.insert(wrapped.end(), argv.begin(), argv.end());
  return wrapped;
}

std::optional<pid_t> LocalPostgres::postmaster_pid() const {
  std::ifstream in(data_dir() / "postmaster.pid");
  long pid = 0;
  if (!(in >> pid) || pid <= 0) return std::nullopt;
  if (!process_alive(static_cast<pid_t>(pid))) return std::nullopt;
  return static_cast<pid_t>(pid);
}

bool LocalPostgres::running() const { return postmaster_pid().has_value(); }

void LocalPostgres::remove_stale_pid_file() {
  const fs::path pid_file = data_dir() / "postmaster.pid";
  if (!fs::exists(pid_file)) return;
  // The postmaster is dead; its backends exit once they notice. Wait for them, because a new postmaster
  // must not share the data folder with old backends. Then drop the pid file: postgres itself would keep
  // refusing to start while the dead postmaster lingers as an unreaped zombie.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  std::vector<pid_t> left;
  while (!(left = processes_in(data_dir())).empty()) {
    if (std::chrono::steady_clock::now() > deadline)
      throw IoError(fmt::format("old postgres processes (first pid {}) still use '{}' 30 s after the postmaster "
                                "died",
                                left.front(), data_dir().string()));
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  std::error_code ec;
  fs::remove(pid_file, ec);
}

void LocalPostgres::start() {
  if (running()) return;
  remove_stale_pid_file();
  start_once();
  wait_accepting();
}

void LocalPostgres::start_once() {
  const fs::path log = log_file();
  if (!fs::exists(log)) std::ofstream(log).flush();
  if (as_postgres_user_) chown_to_server_user(log);
  // Options go to the server command line, not postgresql.conf, so an existing cluster picks up a new port.
  std::string server_opts = fmt::format("-c listen_addresses=127.0.0.1 -p {} -c unix_socket_directories=''", port_);
  // fsync=off only loses data when the OS crashes; synchronous_commit stays on, so a committed transaction
  // survives kill -9 of the server (which the tests do).
  if (!options_.durable) server_opts += " -c fsync=off -c full_page_writes=off";
  std::vector<std::string> argv =
      server_command({(bin_dir_ / "pg_ctl").string(), "start", "-D", data_dir().string(), "-l", log.string(), "-w",
                      "-t", std::to_string(options_.start_timeout.count()), "-o", server_opts});
  const auto log_size_before = fs::file_size(log);
  CommandResult r = run_command(argv);
  if (r.exit_code != 0) {
    // Only this start's part of the log matters.
    std::string log_text;
    try {
      log_text = read_file(log).substr(log_size_before);
    } catch (const std::exception&) {
    }
    throw IoError(fmt::format("pg_ctl start failed (exit {}) for '{}' on port {}: {}\nserver log:\n{}", r.exit_code,
                              data_dir().string(), port_, trim(r.output), trim(log_text)));
  }
}

void LocalPostgres::wait_accepting() {
  // pg_ctl -w has seen "ready" in postmaster.pid; confirm that a client really gets in over TCP.
  const auto deadline = std::chrono::steady_clock::now() + options_.start_timeout;
  std::string last_error;
  for (;;) {
    try {
      pqxx::connection c(url_for("postgres") + "?connect_timeout=5");
      return;
    } catch (const std::exception& e) {
      last_error = e.what();
    }
    if (std::chrono::steady_clock::now() > deadline || !running())
      throw IoError(fmt::format("postgres in '{}' does not accept connections on 127.0.0.1:{}: {}server log:{}",
                                data_dir().string(), port_, last_error, tail_of(log_file())));
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

void LocalPostgres::stop() {
  if (!running()) return;
  std::vector<std::string> argv =
      server_command({(bin_dir_ / "pg_ctl").string(), "stop", "-D", data_dir().string(), "-m", "fast", "-w", "-t", "60"});
  CommandResult r = run_command(argv);
  if (r.exit_code != 0 && running())
    throw IoError(fmt::format("pg_ctl stop failed (exit {}) for '{}': {}", r.exit_code, data_dir().string(),
                              trim(r.output)));
}

void LocalPostgres::kill() {
  std::optional<pid_t> pid = postmaster_pid();
  if (!pid) return;
  if (::kill(*pid, SIGKILL) != 0 && errno != ESRCH)
    throw IoError(fmt::format("kill -9 {} (postmaster of '{}') failed: {}", *pid, data_dir().string(),
                              std::strerror(errno)));
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (process_alive(*pid)) {
    if (std::chrono::steady_clock::now() > deadline)
      throw IoError(fmt::format("postmaster {} still alive 10 s after kill -9", *pid));
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

void LocalPostgres::restart() {
  stop();
  start();
}

std::string LocalPostgres::create_database(const std::string& name) {
  static const std::regex kIdent("[a-z_][a-z0-9_]{0,62}");
  EVALSVC_CHECK(std::regex_match(name, kIdent), InputError,
                "database name '{}' must be lowercase letters, digits and '_' (at most 63, not starting with a digit)",
                name);
  try {
    pqxx::connection c(url_for("postgres"));
    pqxx::nontransaction tx(c);
    // CREATE DATABASE takes no parameters; the name is a checked identifier, quoted anyway.
    auto exists = tx.exec_params("SELECT 1 FROM pg_database WHERE datname = $1", name);
    if (exists.empty()) tx.exec("CREATE DATABASE " + tx.quote_name(name) + " ENCODING 'UTF8'");
  } catch (const pqxx::sql_error& e) {
    if (e.sqlstate() != "42P04")  // duplicate_database: created concurrently, which is what we wanted
      throw DatabaseError(fmt::format("cannot create database '{}' on 127.0.0.1:{}: {}", name, port_, trim(e.what())));
  } catch (const std::exception& e) {
    throw DatabaseError(fmt::format("cannot create database '{}' on 127.0.0.1:{}: {}", name, port_, trim(e.what())));
  }
  return url_for(name);
}

}  // namespace evalsvc::scheduler
