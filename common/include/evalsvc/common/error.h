#pragma once
// Typed errors shared by every component. Policy (see STYLE.md): throw when an operation cannot go on,
// return std::optional for expected outcomes (an empty queue), assert only on bugs.
#include <stdexcept>
#include <string>

#include <fmt/format.h>

namespace evalsvc {

/// What kind of failure an Error is; used by job executors to decide whether a retry can help.
enum class ErrorKind {
  kInput,     ///< bad user input: a file, a spec, a CLI argument (retrying will not help)
  kFormat,    ///< a malformed file or message (checkpoint, cache, queue payload)
  kIo,        ///< filesystem or network I/O
  kRedis,     ///< Redis protocol or connection
  kDatabase,  ///< PostgreSQL
  kCuda,      ///< CUDA runtime / kernel launch
  kInternal,  ///< a bug
  kUnsupported,  ///< the request is valid but this build or device cannot do it (e.g. FP8 below sm_89)
};

const char* to_string(ErrorKind kind);

/// Base of all qbench exceptions. `what()` is the full message, including the location when known.
class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  ErrorKind kind() const { return kind_; }
  /// Whether a retry of the same job could succeed (I/O, Redis, database, CUDA hiccups).
  bool transient() const {
    return kind_ == ErrorKind::kIo || kind_ == ErrorKind::kRedis || kind_ == ErrorKind::kDatabase;
  }

 private:
  ErrorKind kind_;
};

class InputError : public Error {
 public:
  explicit InputError(const std::string& m) : Error(ErrorKind::kInput, m) {}
};
class FormatError : public Error {
 public:
  explicit FormatError(const std::string& m) : Error(ErrorKind::kFormat, m) {}
};
class IoError : public Error {
 public:
  explicit IoError(const std::string& m) : Error(ErrorKind::kIo, m) {}
};
class RedisError : public Error {
 public:
  explicit RedisError(const std::string& m) : Error(ErrorKind::kRedis, m) {}
};
class DatabaseError : public Error {
 public:
  explicit DatabaseError(const std::string& m) : Error(ErrorKind::kDatabase, m) {}
};
class CudaError : public Error {
 public:
  explicit CudaError(const std::string& m) : Error(ErrorKind::kCuda, m) {}
};
class UnsupportedError : public Error {
 public:
  explicit UnsupportedError(const std::string& m) : Error(ErrorKind::kUnsupported, m) {}
};
class InternalError : public Error {
 public:
  explicit InternalError(const std::string& m) : Error(ErrorKind::kInternal, m) {}
};

namespace detail {
[[noreturn]] void throw_internal(const char* file, int line, const char* cond, const std::string& msg);
}  // namespace detail

}  // namespace evalsvc

/// Throws InternalError with file and line when `cond` is false: for invariants that only a bug breaks.
#define EVALSVC_ASSERT(cond, ...)                                                                  \
  do {                                                                                             \
    if (!(cond)) ::evalsvc::detail::throw_internal(__FILE__, __LINE__, #cond, fmt::format(__VA_ARGS__)); \
  } while (0)

/// Throws ErrorType(message) when `cond` is false; the message names what was expected and what came.
#define EVALSVC_CHECK(cond, ErrorType, ...)                    \
  do {                                                         \
    if (!(cond)) throw ErrorType(fmt::format(__VA_ARGS__));    \
  } while (0)
