#include "evalsvc/common/paths.h"

#include <fcntl.h>
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
