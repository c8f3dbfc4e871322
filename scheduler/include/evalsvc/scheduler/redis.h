#pragma once
// The one RAII wrapper over hiredis (STYLE item 9). Ownership goes through unique_ptr deleters, commands are
// sent in argv form only (binary-safe: keys and payloads may hold any byte), every reply's type is checked
// before it is read, and failures become evalsvc::RedisError naming the command, the server (with any
// password masked) and the server's own text. Credentials never appear in messages or logs.
//
// RedisClient is synchronous and not thread-safe: one per thread. AsyncRedisClient plugs hiredis's async
// context into a Boost.Asio io_context (through the `ev` hooks) for the scheduler's event loop.
#include <hiredis/hiredis.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <source_location>
#include <string>
#include <string_view>
#include <vector>

#include "evalsvc/common/error.h"

struct redisAsyncContext;
namespace boost::asio {
class io_context;
}  // namespace boost::asio

namespace evalsvc::scheduler {

namespace detail {
[[noreturn]] void throw_redis(const char* file, int line, const std::string& message);
}  // namespace detail

/// Throws RedisError("<file>:<line>: <message>") when `cond` is false; used for reply-shape checks.
#define EVALSVC_REDIS_CHECK(cond, ...)                                                           \
  do {                                                                                           \
    if (!(cond)) ::evalsvc::scheduler::detail::throw_redis(__FILE__, __LINE__, fmt::format(__VA_ARGS__)); \
  } while (0)

/// Where a Redis server is: `redis://[[user]:password@]host[:port][/db]` (host may be `[v6addr]`),
/// `unix://[[user]:password@]/path/to.sock[?db=N]`, or a bare absolute socket path.
struct RedisUrl {
  std::string host = "127.0.0.1";
  int port = 6379;
  std::string socket_path;  ///< non-empty: connect through this unix socket instead of TCP
  std::string username;     ///< Redis 6 ACL user; empty: AUTH with the password only
  std::string password;     ///< empty: no AUTH
  int db = 0;

  /// Parses a URL; InputError (with any password masked) when it is malformed.
  static RedisUrl parse(std::string_view url);
  /// The URL again; with `mask_password` the password reads `***` (safe for logs and errors).
  std::string str(bool mask_password = true) const;
};

/// `url` with the userinfo part (`user:password@`) masked; for echoing strings that failed to parse.
std::string mask_url(std::string_view url);

/// Connection behaviour.
struct RedisOptions {
  std::chrono::milliseconds connect_timeout{2000};
  std::chrono::milliseconds command_timeout{5000};  ///< socket read/write timeout per command
  int reconnect_attempts = 5;                       ///< tries per (re)connect before giving up
  std::chrono::milliseconds reconnect_backoff{50};  ///< first pause between tries; doubles, capped at 1 s
};

/// Per-call behaviour of RedisClient::command.
struct CallOptions {
  /// Socket timeout for this call (blocking commands such as BLPOP need more than command_timeout).
  std::optional<std::chrono::milliseconds> timeout;
  /// The command may be sent again after the connection broke (a repeat has the same effect).
  bool idempotent = false;
  /// An error reply (REDIS_REPLY_ERROR) throws RedisError; false returns it for the caller to inspect.
  bool throw_on_error_reply = true;
};

struct ReplyDeleter {
  void operator()(redisReply* r) const;
};
/// Owns one reply tree (freeReplyObject).
using ReplyPtr = std::unique_ptr<redisReply, ReplyDeleter>;

/// A non-owning, type-checked view of a reply (or of one element of an array reply). Every accessor
/// checks reply->type first and throws RedisError naming the expected and the actual type.
class ReplyView {
 public:
  ReplyView() = default;
  explicit ReplyView(const redisReply* r) : r_(r) {}

  /// REDIS_REPLY_* of this reply; REDIS_REPLY_NIL for an empty view.
  int type() const { return r_ ? r_->type : REDIS_REPLY_NIL; }
  /// Human name of the type ("string", "array", "integer", "nil", "status", "error", ...).
  const char* type_name() const;
  bool is_nil() const { return type() == REDIS_REPLY_NIL; }
  bool is_string() const { return type() == REDIS_REPLY_STRING; }
  bool is_integer() const { return type() == REDIS_REPLY_INTEGER; }
  bool is_array() const { return type() == REDIS_REPLY_ARRAY; }
  bool is_status() const { return type() == REDIS_REPLY_STATUS; }
  bool is_error() const { return type() == REDIS_REPLY_ERROR; }

  /// The bytes of a string, status or error reply.
  std::string_view str() const;
  /// A string reply, or nullopt for nil.
  std::optional<std::string> opt_string() const;
  /// An integer reply (also accepts a string holding a decimal integer, as Lua tables return numbers).
  long long integer() const;
  /// Number of elements of an array reply (0 for nil).
  size_t size() const;
  /// Element `i` of an array reply; RedisError when out of range.
  ReplyView at(size_t i) const;
  /// The raw reply (nullptr for an empty view).
  const redisReply* get() const { return r_; }

 protected:
  const redisReply* r_ = nullptr;
};

/// An owned reply: a ReplyView that frees the tree when destroyed. Views taken from it (at()) must not
/// outlive it.
class Reply : public ReplyView {
 public:
  Reply() = default;
  explicit Reply(ReplyPtr p) : ReplyView(p.get()), owner_(std::move(p)) {}

 private:
  ReplyPtr owner_;
};

/// A Lua script run with EVALSHA; its SHA1 is computed locally so the first call needs no SCRIPT LOAD.
class RedisScript {
 public:
  RedisScript(std::string name, std::string source);
  const std::string& name() const { return name_; }
  const std::string& source() const { return source_; }
  const std::string& sha1() const { return sha1_; }

 private:
  std::string name_;
  std::string source_;
  std::string sha1_;
};

/// Lowercase hex SHA-1 of `bytes` (what Redis names scripts by).
std::string sha1_hex(std::string_view bytes);

/// A synchronous connection. Connects in the constructor (RedisError if the server cannot be reached or
/// AUTH/SELECT fail). A broken connection is re-established before the next command; a command that was
/// in flight when it broke is re-sent only when CallOptions::idempotent says so, else its RedisError
/// propagates (the caller cannot know whether the server applied it).
class RedisClient {
 public:
  explicit RedisClient(const std::string& url, RedisOptions options = {});
  RedisClient(RedisUrl url, RedisOptions options);
  ~RedisClient();
  RedisClient(const RedisClient&) = delete;
  RedisClient& operator=(const RedisClient&) = delete;

  /// Sends one command (argv form) and returns its reply. Error replies throw RedisError unless
  /// `opts.throw_on_error_reply` is false. `loc` is recorded in error messages.
  Reply command(const std::vector<std::string_view>& args, const CallOptions& opts = {},
                std::source_location loc = std::source_location::current());

  /// Sends several commands in one round trip and returns their replies in order. Error replies are
  /// returned, not thrown (check is_error()). Not retried after a broken connection.
  std::vector<Reply> pipeline(const std::vector<std::vector<std::string>>& commands,
                              std::source_location loc = std::source_location::current());

  /// EVALSHA of `script`; on NOSCRIPT (a restarted server, SCRIPT FLUSH) loads it with SCRIPT LOAD and
  /// retries once. Errors name the script.
  Reply eval(const RedisScript& script, const std::vector<std::string_view>& keys,
             const std::vector<std::string_view>& args, const CallOptions& opts = {},
             std::source_location loc = std::source_location::current());

  /// PING round trip; true when the server answered PONG.
  bool ping();
  /// Whether the underlying connection is currently usable (false after an I/O error until reconnected).
  bool connected() const;
  /// Drops the connection and connects again (with the configured attempts and backoff).
  void reconnect();
  /// The server URL with the password masked.
  std::string describe() const { return url_.str(true); }
  const RedisUrl& url() const { return url_; }

 private:
  struct ContextDeleter {
    void operator()(redisContext* c) const;
  };
  void connect_once();
  void ensure_connected();
  void set_timeout(std::chrono::milliseconds t);
  [[noreturn]] void throw_error(const std::source_location& loc, const std::string& what,
                                const std::string& detail) const;

  RedisUrl url_;
  RedisOptions options_;
  std::unique_ptr<redisContext, ContextDeleter> ctx_;
  std::chrono::milliseconds current_timeout_{0};
};

/// Short description of a command for messages: the command name and, unless it may carry secrets
/// (AUTH, HELLO, CONFIG, ACL, MIGRATE), its first argument, truncated.
std::string describe_command(const std::vector<std::string_view>& args);

/// Redis through a Boost.Asio io_context: hiredis's redisAsyncContext with its `ev` hooks bound to a
/// boost::asio::posix::stream_descriptor on the connection's socket. All calls and all callbacks happen
/// on the thread running the io_context. Pub/sub pushes are not supported.
class AsyncRedisClient {
 public:
  /// Error (nullptr on success) and the reply; the reply view is valid only during the callback.
  using Callback = std::function<void(const RedisError* error, ReplyView reply)>;
  /// Called once when the connection (including AUTH and SELECT) is ready or has failed.
  using ConnectCallback = std::function<void(const RedisError* error)>;

  AsyncRedisClient(boost::asio::io_context& io, RedisUrl url);
  AsyncRedisClient(boost::asio::io_context& io, const std::string& url);
  /// Frees the connection; callbacks of commands still pending run with an error first.
  ~AsyncRedisClient();
  AsyncRedisClient(const AsyncRedisClient&) = delete;
  AsyncRedisClient& operator=(const AsyncRedisClient&) = delete;

  /// Starts a non-blocking connect. Commands may be issued right away; hiredis queues them.
  /// Throws RedisError when the socket cannot even be created.
  void connect(ConnectCallback done);
  /// Queues one command (argv form); `cb` runs exactly once with its reply or an error (error replies,
  /// a lost connection, or the client being destroyed). RedisError when not connected.
  void command(const std::vector<std::string>& args, Callback cb);
  /// Graceful close: pending replies are delivered, then the connection closes.
  void disconnect();
  /// Whether a connection exists (connecting or connected, not yet closed).
  bool connected() const;

  struct Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace evalsvc::scheduler
