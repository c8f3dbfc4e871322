#include "evalsvc/common/error.h"

namespace evalsvc {

const char* to_string(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kInput: return "input";
    case ErrorKind::kFormat: return "format";
    case ErrorKind::kIo: return "io";
    case ErrorKind::kRedis: return "redis";
    case ErrorKind::kDatabase: return "database";
    case ErrorKind::kCuda: return "cuda";
    case ErrorKind::kInternal: return "internal";
    case ErrorKind::kUnsupported: return "unsupported";
  }
  return "unknown";
}

namespace detail {
void throw_internal(const char* file, int line, const char* cond, const std::string& msg) {
  throw InternalError(fmt::format("{}:{}: internal error: check `{}` failed: {}", file, line, cond, msg));
}
}  // namespace detail

}  // namespace evalsvc
