#include "evalsvc/common/paths.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>

#include "evalsvc/common/error.h"

namespace fs = std::filesystem;

namespace evalsvc {

std::string version() { return EVALSVC_VERSION; }

namespace {

/// Empties the directory open as `dir_fd` and closes it; errno of the first failure, 0 on success.
int empty_directory(int dir_fd) {
  DIR* d = ::fdopendir(dir_fd);
  if (d == nullptr) {
    const int e = errno;
    ::close(dir_fd);
    return e;
  }
  int err = 0;
  while (err == 0) {
    errno = 0;
    const dirent* ent = ::readdir(d);
    if (ent == nullptr) {
      err = errno;
      break;
    }
    const char* name = ent->d_name;
    if (std::strcmp(name, ".") == 0 || std::strcmp(name, "..") == 0) continue;
    struct stat st {};
    if (::fstatat(dir_fd, name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
      err = errno;
      break;
    }
    if (S_ISDIR(st.st_mode)) {
      const int sub = ::openat(dir_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (sub < 0) {
        err = errno;
        break;
      }
      err = empty_directory(sub);
      if (err == 0 && ::unlinkat(dir_fd, name, AT_REMOVEDIR) != 0) err = errno;
    } else if (::unlinkat(dir_fd, name, 0) != 0) {
      err = errno;
    }
  }
  ::closedir(d);  // also closes dir_fd
  return err;
}

}  // namespace

bool remove_tree(const fs::path& path, std::error_code& ec) noexcept {
  ec.clear();
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno != ENOENT) ec.assign(errno, std::generic_category());
    return !ec;
  }
  int err = 0;
  if (S_ISDIR(st.st_mode)) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    err = fd < 0 ? errno : empty_directory(fd);
    if (err == 0 && ::rmdir(path.c_str()) != 0) err = errno;
  } else if (::unlink(path.c_str()) != 0) {
    err = errno;
  }
  if (err != 0) ec.assign(err, std::generic_category());
  return !ec;
}

void remove_tree(const fs::path& path) {
  std::error_code ec;
  if (!remove_tree(path, ec)) throw IoError(fmt::format("cannot remove {}: {}", path.string(), ec.message()));
}

std::optional<std::string> getenv_opt(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return std::nullopt;
  return std::string(v);
}

fs::path source_dir() { return fs::path(EVALSVC_SOURCE_DIR); }

fs::path data_dir(const std::optional<std::string>& override_dir) {
  std::vector<fs::path> tried;
  auto ok = [](const fs::path& p) { return fs::exists(p / "gpt2" / "encoder.json"); };
  if (override_dir) {
    if (ok(*override_dir)) return *override_dir;
    throw InputError(fmt::format("data folder '{}' (from --data) has no gpt2/encoder.json", *override_dir));
  }
  if (auto env = getenv_opt("QBENCH_DATA_DIR")) {
    if (ok(*env)) return *env;
    throw InputError(fmt::format("data folder '{}' (from QBENCH_DATA_DIR) has no gpt2/encoder.json", *env));
  }
  for (const fs::path& p : {fs::path(EVALSVC_DEFAULT_DATA_DIR), fs::current_path() / "../shared/data",
                            fs::current_path() / "shared/data", fs::path("/data")}) {
    if (ok(p)) return fs::weakly_canonical(p);
    tried.push_back(p);
  }
  std::string list;
  for (const auto& p : tried) list += "\n  " + p.string();
  throw InputError("no data folder found (set --data or QBENCH_DATA_DIR); tried:" + list);
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError(fmt::format("cannot open '{}': {}", path.string(), std::strerror(errno)));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw IoError(fmt::format("error reading '{}'", path.string()));
  return ss.str();
}

void write_file_atomic(const fs::path& path, std::string_view bytes) {
  if (path.has_parent_path()) fs::create_directories(path.parent_path());
  std::random_device rd;
  const fs::path tmp = path.string() + fmt::format(".tmp-{}-{:x}", ::getpid(), rd());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw IoError(fmt::format("cannot create '{}': {}", tmp.string(), std::strerror(errno)));
  size_t off = 0;
  while (off < bytes.size()) {
    ssize_t n = ::write(fd, bytes.data() + off, bytes.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      throw IoError(fmt::format("cannot write '{}': {}", tmp.string(), std::strerror(e)));
    }
    off += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    int e = errno;
    ::unlink(tmp.c_str());
    throw IoError(fmt::format("cannot flush '{}': {}", tmp.string(), std::strerror(e)));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int e = errno;
    ::unlink(tmp.c_str());
    throw IoError(fmt::format("cannot rename '{}' to '{}': {}", tmp.string(), path.string(), std::strerror(e)));
  }
}

}  // namespace evalsvc
