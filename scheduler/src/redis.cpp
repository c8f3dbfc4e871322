#include "evalsvc/scheduler/redis.h"

#include <hiredis/async.h>
#include <spdlog/spdlog.h>
#include <sys/time.h>

#include <algorithm>
#include <array>
#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <cctype>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <thread>

namespace evalsvc::scheduler {

namespace detail {
void throw_redis(const char* file, int line, const std::string& message) {
  throw RedisError(fmt::format("{}:{}: {}", std::filesystem::path(file).filename().string(), line, message));
}
}  // namespace detail

namespace {

std::optional<int> parse_int(std::string_view s) {
  int v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size() || s.empty()) return std::nullopt;
  return v;
}

std::string percent_decode(std::string_view s, std::string_view masked_url) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%') {
      auto hex = [](char c) -> int {
        if (c >= '0' && c <= '9') return c - '0';
        c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        if (c >= 'a' && c <= 'f') return c - 'a' + 10;
        return -1;
      };
      if (i + 2 >= s.size()) {
        throw InputError(fmt::format("Redis URL '{}': truncated %-escape in the credentials", masked_url));
      }
      int hi = hex(s[i + 1]), lo = hex(s[i + 2]);
      if (hi < 0 || lo < 0) {
        throw InputError(fmt::format("Redis URL '{}': bad %-escape in the credentials", masked_url));
      }
      out.push_back(static_cast<char>(hi * 16 + lo));
      i += 2;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

std::string percent_encode(std::string_view s) {
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      out += fmt::format("%{:02X}", c);
    }
  }
  return out;
}

timeval to_timeval(std::chrono::milliseconds ms) {
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(ms.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((ms.count() % 1000) * 1000);
  return tv;
}

std::string upper(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------
// URLs

std::string mask_url(std::string_view url) {
  size_t start = url.find("://");
  start = start == std::string_view::npos ? 0 : start + 3;
  size_t at = url.rfind('@');
  if (at == std::string_view::npos || at < start) return std::string(url);
  return std::string(url.substr(0, start)) + "***" + std::string(url.substr(at));
}

RedisUrl RedisUrl::parse(std::string_view url) {
  const std::string masked = mask_url(url);
  RedisUrl u;
  if (url.empty()) throw InputError("empty Redis URL (expected redis://host:port[/db] or a socket path)");
  if (url.front() == '/') {
    u.socket_path = std::string(url);
    return u;
  }
  size_t sep = url.find("://");
  if (sep == std::string_view::npos) {
    throw InputError(fmt::format("Redis URL '{}' has no scheme (expected redis://[:password@]host:port[/db] "
                                 "or unix:///path/to.sock)",
                                 masked));
  }
  std::string scheme = upper(url.substr(0, sep));
  std::string_view rest = url.substr(sep + 3);
  if (scheme == "REDISS") {
    throw UnsupportedError(fmt::format("Redis URL '{}': TLS (rediss://) is not supported by this build", masked));
  }
  if (scheme != "REDIS" && scheme != "UNIX") {
    throw InputError(fmt::format("Redis URL '{}': unknown scheme '{}' (expected redis or unix)", masked,
                                 url.substr(0, sep)));
  }
  size_t at = rest.rfind('@');
  if (at != std::string_view::npos) {
    std::string_view userinfo = rest.substr(0, at);
    rest = rest.substr(at + 1);
    size_t colon = userinfo.find(':');
    if (colon == std::string_view::npos) {
      u.password = percent_decode(userinfo, masked);  // redis-cli convention: redis://password@host
    } else {
      u.username = percent_decode(userinfo.substr(0, colon), masked);
      u.password = percent_decode(userinfo.substr(colon + 1), masked);
    }
  }
  auto parse_db = [&](std::string_view s) {
    auto db = parse_int(s);
    if (!db || *db < 0) throw InputError(fmt::format("Redis URL '{}': database '{}' is not a number >= 0", masked, s));
    return *db;
  };
  if (scheme == "UNIX") {
    size_t q = rest.find('?');
    std::string_view path = rest.substr(0, q);
    if (path.empty() || path.front() != '/') {
      throw InputError(fmt::format("Redis URL '{}': socket path must be absolute (unix:///path)", masked));
    }
    u.socket_path = std::string(path);
    if (q != std::string_view::npos) {
      std::string_view query = rest.substr(q + 1);
      if (!query.starts_with("db=")) {
        throw InputError(fmt::format("Redis URL '{}': only ?db=N is understood after the socket path", masked));
      }
      u.db = parse_db(query.substr(3));
    }
    return u;
  }
  size_t slash = rest.find('/');
  std::string_view hostport = rest.substr(0, slash);
  if (slash != std::string_view::npos && slash + 1 < rest.size()) u.db = parse_db(rest.substr(slash + 1));
  std::string_view port_str;
  if (!hostport.empty() && hostport.front() == '[') {
    size_t close = hostport.find(']');
    if (close == std::string_view::npos) throw InputError(fmt::format("Redis URL '{}': unclosed '[' in host", masked));
    u.host = std::string(hostport.substr(1, close - 1));
    std::string_view after = hostport.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') throw InputError(fmt::format("Redis URL '{}': junk after ']'", masked));
      port_str = after.substr(1);
    }
  } else {
    size_t colon = hostport.rfind(':');
    u.host = std::string(hostport.substr(0, colon));
    if (colon != std::string_view::npos) port_str = hostport.substr(colon + 1);
  }
  if (u.host.empty()) throw InputError(fmt::format("Redis URL '{}' has no host", masked));
  if (!port_str.empty() || (hostport.find(':') != std::string_view::npos && hostport.front() != '[')) {
    auto port = parse_int(port_str);
    if (!port || *port < 1 || *port > 65535) {
      throw InputError(fmt::format("Redis URL '{}': port '{}' is not in 1..65535", masked, port_str));
    }
    u.port = *port;
  }
  return u;
}

std::string RedisUrl::str(bool mask_password) const {
  std::string userinfo;
  if (!password.empty() || !username.empty()) {
    userinfo = percent_encode(username) + ":" + (mask_password ? std::string("***") : percent_encode(password)) + "@";
  }
  if (!socket_path.empty()) {
    return "unix://" + userinfo + socket_path + (db != 0 ? fmt::format("?db={}", db) : std::string());
  }
  std::string h = host.find(':') != std::string::npos ? "[" + host + "]" : host;
  return fmt::format("redis://{}{}:{}/{}", userinfo, h, port, db);
}

// ---------------------------------------------------------------------------------------------------
// Replies

void ReplyDeleter::operator()(redisReply* r) const {
  if (r != nullptr) freeReplyObject(r);
}

const char* ReplyView::type_name() const {
  switch (type()) {
    case REDIS_REPLY_STRING: return "string";
    case REDIS_REPLY_ARRAY: return "array";
    case REDIS_REPLY_INTEGER: return "integer";
    case REDIS_REPLY_NIL: return "nil";
    case REDIS_REPLY_STATUS: return "status";
    case REDIS_REPLY_ERROR: return "error";
    default: return "unknown";
  }
}

std::string_view ReplyView::str() const {
  EVALSVC_REDIS_CHECK(is_string() || is_status() || is_error(), "expected a string reply, got {}", type_name());
  return {r_->str, r_->len};
}

std::optional<std::string> ReplyView::opt_string() const {
  if (is_nil()) return std::nullopt;
  EVALSVC_REDIS_CHECK(is_string() || is_status(), "expected a string or nil reply, got {}", type_name());
  return std::string(r_->str, r_->len);
}

long long ReplyView::integer() const {
  if (is_integer()) return r_->integer;
  if (is_string()) {
    long long v = 0;
    auto [p, ec] = std::from_chars(r_->str, r_->str + r_->len, v);
    EVALSVC_REDIS_CHECK(ec == std::errc() && p == r_->str + r_->len && r_->len > 0,
                        "expected an integer reply, got string '{}'", std::string_view(r_->str, std::min<size_t>(r_->len, 40)));
    return v;
  }
  EVALSVC_REDIS_CHECK(false, "expected an integer reply, got {}", type_name());
  return 0;  // unreachable
}

size_t ReplyView::size() const {
  if (is_nil()) return 0;
  EVALSVC_REDIS_CHECK(is_array(), "expected an array reply, got {}", type_name());
  return r_->elements;
}

ReplyView ReplyView::at(size_t i) const {
  EVALSVC_REDIS_CHECK(is_array(), "expected an array reply, got {}", type_name());
  EVALSVC_REDIS_CHECK(i < r_->elements, "array reply has {} elements, element {} requested", r_->elements, i);
  return ReplyView(r_->element[i]);
}

// ---------------------------------------------------------------------------------------------------
// Scripts

std::string sha1_hex(std::string_view data) {
  uint32_t h[5] = {0x67452301u, 0xEFCDAB89u, 0x98BADCFEu, 0x10325476u, 0xC3D2E1F0u};
  std::string msg(data);
  const uint64_t bits = static_cast<uint64_t>(data.size()) * 8;
  msg.push_back(static_cast<char>(0x80));
  while (msg.size() % 64 != 56) msg.push_back('\0');
  for (int i = 7; i >= 0; --i) msg.push_back(static_cast<char>((bits >> (i * 8)) & 0xff));
  auto rol = [](uint32_t x, int n) { return (x << n) | (x >> (32 - n)); };
  for (size_t off = 0; off < msg.size(); off += 64) {
    uint32_t w[80];
    for (int i = 0; i < 16; ++i) {
      const auto* p = reinterpret_cast<const unsigned char*>(msg.data() + off + 4 * i);
      w[i] = (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
    }
    for (int i = 16; i < 80; ++i) w[i] = rol(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
    for (int i = 0; i < 80; ++i) {
      uint32_t f, k;
      if (i < 20) {
        f = (b & c) | (~b & d), k = 0x5A827999u;
      } else if (i < 40) {
        f = b ^ c ^ d, k = 0x6ED9EBA1u;
      } else if (i < 60) {
        f = (b & c) | (b & d) | (c & d), k = 0x8F1BBCDCu;
      } else {
        f = b ^ c ^ d, k = 0xCA62C1D6u;
      }
      uint32_t t = rol(a, 5) + f + e + k + w[i];
      e = d, d = c, c = rol(b, 30), b = a, a = t;
    }
    h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e;
  }
  return fmt::format("{:08x}{:08x}{:08x}{:08x}{:08x}", h[0], h[1], h[2], h[3], h[4]);
}

RedisScript::RedisScript(std::string name, std::string source)
    : name_(std::move(name)), source_(std::move(source)), sha1_(sha1_hex(source_)) {}

// ---------------------------------------------------------------------------------------------------
// Synchronous client

std::string describe_command(const std::vector<std::string_view>& args) {
  if (args.empty()) return "(empty command)";
  std::string name = upper(args[0]);
  static const std::array<std::string_view, 5> secret = {"AUTH", "HELLO", "CONFIG", "ACL", "MIGRATE"};
  if (args.size() < 2 || std::find(secret.begin(), secret.end(), name) != secret.end()) return name;
  std::string_view first = args[1];
  bool printable = std::all_of(first.begin(), first.end(), [](char c) { return std::isprint(static_cast<unsigned char>(c)); });
  if (!printable) return name + " <binary>";
  if (first.size() > 64) return name + " " + std::string(first.substr(0, 61)) + "...";
  return name + " " + std::string(first);
}

void RedisClient::ContextDeleter::operator()(redisContext* c) const {
  if (c != nullptr) redisFree(c);
}

RedisClient::RedisClient(const std::string& url, RedisOptions options) : RedisClient(RedisUrl::parse(url), options) {}

RedisClient::RedisClient(RedisUrl url, RedisOptions options) : url_(std::move(url)), options_(options) {
  ensure_connected();
}

RedisClient::~RedisClient() = default;

void RedisClient::throw_error(const std::source_location& loc, const std::string& what, const std::string& detail) const {
  throw RedisError(fmt::format("{}:{}: redis {} on {}: {}", std::filesystem::path(loc.file_name()).filename().string(),
                               loc.line(), what, url_.str(true), detail));
}

void RedisClient::set_timeout(std::chrono::milliseconds t) {
  if (t == current_timeout_) return;
  if (redisSetTimeout(ctx_.get(), to_timeval(t)) != REDIS_OK) {
    throw RedisError(fmt::format("cannot set a {} ms socket timeout on {}", t.count(), url_.str(true)));
  }
  current_timeout_ = t;
}

namespace {
// One raw command on a fresh context during connect (AUTH, SELECT); returns the error text or "".
std::string handshake(redisContext* c, const std::vector<std::string>& args) {
  std::vector<const char*> argv;
  std::vector<size_t> lens;
  for (const auto& a : args) argv.push_back(a.data()), lens.push_back(a.size());
  ReplyPtr r(static_cast<redisReply*>(redisCommandArgv(c, static_cast<int>(argv.size()), argv.data(), lens.data())));
  if (!r) return std::string("connection error: ") + c->errstr;
  if (r->type == REDIS_REPLY_ERROR) return std::string(r->str, r->len);
  return "";
}
}  // namespace

void RedisClient::connect_once() {
  ctx_.reset();
  current_timeout_ = std::chrono::milliseconds(0);
  const timeval tv = to_timeval(options_.connect_timeout);
  redisContext* c = url_.socket_path.empty() ? redisConnectWithTimeout(url_.host.c_str(), url_.port, tv)
                                             : redisConnectUnixWithTimeout(url_.socket_path.c_str(), tv);
  if (c == nullptr) throw RedisError(fmt::format("cannot allocate a hiredis context for {}", url_.str(true)));
  std::unique_ptr<redisContext, ContextDeleter> owned(c);
  if (c->err != 0) throw RedisError(fmt::format("cannot connect to {}: {}", url_.str(true), c->errstr));
  if (url_.socket_path.empty()) redisEnableKeepAlive(c);
  if (redisSetTimeout(c, to_timeval(options_.command_timeout)) != REDIS_OK) {
    throw RedisError(fmt::format("cannot set the socket timeout on {}", url_.str(true)));
  }
  if (!url_.password.empty()) {
    std::vector<std::string> auth = {"AUTH"};
    if (!url_.username.empty()) auth.push_back(url_.username);
    auth.push_back(url_.password);
    std::string err = handshake(c, auth);
    if (!err.empty()) throw RedisError(fmt::format("AUTH on {} failed: {}", url_.str(true), err));
  }
  if (url_.db != 0) {
    std::string err = handshake(c, {"SELECT", std::to_string(url_.db)});
    if (!err.empty()) throw RedisError(fmt::format("SELECT {} on {} failed: {}", url_.db, url_.str(true), err));
  }
  ctx_ = std::move(owned);
  current_timeout_ = options_.command_timeout;
}

void RedisClient::ensure_connected() {
  if (ctx_ && ctx_->err == 0) return;
  auto pause = options_.reconnect_backoff;
  std::string last;
  const int attempts = std::max(1, options_.reconnect_attempts);
  for (int i = 0; i < attempts; ++i) {
    try {
      connect_once();
      if (i > 0) spdlog::info("reconnected to {} after {} attempts", url_.str(true), i + 1);
      return;
    } catch (const RedisError& e) {
      last = e.what();
      // A refused AUTH or SELECT will not get better by retrying.
      if (last.find("AUTH on") != std::string::npos || last.find("SELECT ") != std::string::npos) throw;
    }
    if (i + 1 < attempts) {
      std::this_thread::sleep_for(pause);
      pause = std::min(pause * 2, std::chrono::milliseconds(1000));
    }
  }
  throw RedisError(fmt::format("{} (gave up after {} attempts)", last, attempts));
}

bool RedisClient::connected() const { return ctx_ && ctx_->err == 0; }

void RedisClient::reconnect() {
  ctx_.reset();
  ensure_connected();
}

Reply RedisClient::command(const std::vector<std::string_view>& args, const CallOptions& opts, std::source_location loc) {
  EVALSVC_REDIS_CHECK(!args.empty(), "empty command (called from {}:{})", loc.file_name(), loc.line());
  std::vector<const char*> argv(args.size());
  std::vector<size_t> lens(args.size());
  for (size_t i = 0; i < args.size(); ++i) argv[i] = args[i].data(), lens[i] = args[i].size();
  for (int attempt = 0;; ++attempt) {
    ensure_connected();
    set_timeout(opts.timeout.value_or(options_.command_timeout));
    auto* raw = static_cast<redisReply*>(
        redisCommandArgv(ctx_.get(), static_cast<int>(args.size()), argv.data(), lens.data()));
    if (raw == nullptr) {
      std::string err = ctx_->errstr[0] != '\0' ? ctx_->errstr : "unknown I/O error";
      ctx_.reset();  // a half-read reply would desynchronise every later command
      if (opts.idempotent && attempt == 0) {
        spdlog::warn("redis {} on {}: {}; reconnecting and retrying", describe_command(args), url_.str(true), err);
        continue;
      }
      throw_error(loc, describe_command(args),
                  "connection error: " + err +
                      (opts.idempotent ? " (also after a reconnect)"
                                       : " (not retried: the server may or may not have applied it)"));
    }
    Reply reply{ReplyPtr(raw)};
    if (reply.is_error() && opts.throw_on_error_reply) throw_error(loc, describe_command(args), std::string(reply.str()));
    return reply;
  }
}

std::vector<Reply> RedisClient::pipeline(const std::vector<std::vector<std::string>>& commands, std::source_location loc) {
  ensure_connected();
  set_timeout(options_.command_timeout);
  for (const auto& cmd : commands) {
    EVALSVC_REDIS_CHECK(!cmd.empty(), "empty command in a pipeline (called from {}:{})", loc.file_name(), loc.line());
    std::vector<const char*> argv;
    std::vector<size_t> lens;
    for (const auto& a : cmd) argv.push_back(a.data()), lens.push_back(a.size());
    if (redisAppendCommandArgv(ctx_.get(), static_cast<int>(argv.size()), argv.data(), lens.data()) != REDIS_OK) {
      std::string err = ctx_->errstr;
      ctx_.reset();
      throw_error(loc, "pipeline", "cannot buffer a command: " + err);
    }
  }
  std::vector<Reply> out;
  out.reserve(commands.size());
  for (size_t i = 0; i < commands.size(); ++i) {
    void* raw = nullptr;
    if (redisGetReply(ctx_.get(), &raw) != REDIS_OK || raw == nullptr) {
      std::string err = ctx_->errstr;
      ctx_.reset();
      throw_error(loc, fmt::format("pipeline of {} commands", commands.size()),
                  fmt::format("connection error after {} replies: {}", i, err));
    }
    out.emplace_back(ReplyPtr(static_cast<redisReply*>(raw)));
  }
  return out;
}

Reply RedisClient::eval(const RedisScript& script, const std::vector<std::string_view>& keys,
                        const std::vector<std::string_view>& args, const CallOptions& opts, std::source_location loc) {
  const std::string numkeys = std::to_string(keys.size());
  std::vector<std::string_view> argv = {"EVALSHA", script.sha1(), numkeys};
  argv.insert(argv.end(), keys.begin(), keys.end());
  argv.insert(argv.end(), args.begin(), args.end());
  CallOptions o = opts;
  o.throw_on_error_reply = false;
  Reply r = command(argv, o, loc);
  if (r.is_error() && r.str().starts_with("NOSCRIPT")) {
    // The server lost its script cache (restart, SCRIPT FLUSH): load it and try once more.
    Reply loaded = command({"SCRIPT", "LOAD", script.source()}, CallOptions{.idempotent = true}, loc);
    if (!loaded.is_string() || loaded.str() != script.sha1()) {
      throw_error(loc, "SCRIPT LOAD " + script.name(),
                  fmt::format("server returned {} '{}', expected sha1 {}", loaded.type_name(),
                              loaded.is_string() ? std::string(loaded.str()) : std::string(), script.sha1()));
    }
    r = command(argv, o, loc);
  }
  if (r.is_error() && opts.throw_on_error_reply) throw_error(loc, "script " + script.name(), std::string(r.str()));
  return r;
}

bool RedisClient::ping() {
  try {
    Reply r = command({"PING"}, CallOptions{.idempotent = true});
    return r.is_status() && r.str() == "PONG";
  } catch (const RedisError&) {
    return false;
  }
}

// ---------------------------------------------------------------------------------------------------
// Asynchronous client on Boost.Asio

struct AsyncRedisClient::Impl : std::enable_shared_from_this<AsyncRedisClient::Impl> {
  Impl(boost::asio::io_context& io_in, RedisUrl url_in) : io(io_in), url(std::move(url_in)) {}

  boost::asio::io_context& io;
  RedisUrl url;
  redisAsyncContext* ac = nullptr;
  std::unique_ptr<boost::asio::posix::stream_descriptor> sd;
  bool want_read = false, want_write = false, read_armed = false, write_armed = false;
  std::string handshake_error;  // first failure of AUTH/SELECT, reported by the connect callback

  struct Pending {
    Callback cb;
    std::string what;
    std::string where;
  };

  static Impl* self(void* p) { return static_cast<Impl*>(p); }

  // hiredis `ev` hooks. hiredis expects level-triggered interest that stays on until del*, so each wait
  // re-arms itself after the handler ran as long as the interest is still on.
  static void add_read(void* p) {
    self(p)->want_read = true;
    self(p)->arm_read();
  }
  static void del_read(void* p) { self(p)->want_read = false; }
  static void add_write(void* p) {
    self(p)->want_write = true;
    self(p)->arm_write();
  }
  static void del_write(void* p) { self(p)->want_write = false; }
  static void cleanup(void* p) {
    Impl* s = self(p);
    s->want_read = s->want_write = false;
    if (s->sd) {
      // hiredis owns and closes the socket: release it so asio does not close it twice; release also
      // aborts the pending waits (their handlers hold a shared_ptr and see operation_aborted).
      s->sd->release();
      s->sd.reset();
    }
  }

  void arm_read() {
    if (read_armed || !want_read || !sd) return;
    read_armed = true;
    sd->async_wait(boost::asio::posix::stream_descriptor::wait_read,
                   [s = shared_from_this()](const boost::system::error_code& ec) {
                     s->read_armed = false;
                     if (ec || s->ac == nullptr || !s->sd) return;
                     if (s->want_read) redisAsyncHandleRead(s->ac);
                     s->arm_read();
                   });
  }
  void arm_write() {
    if (write_armed || !want_write || !sd) return;
    write_armed = true;
    sd->async_wait(boost::asio::posix::stream_descriptor::wait_write,
                   [s = shared_from_this()](const boost::system::error_code& ec) {
                     s->write_armed = false;
                     if (ec || s->ac == nullptr || !s->sd) return;
                     if (s->want_write) redisAsyncHandleWrite(s->ac);
                     s->arm_write();
                   });
  }

  static void on_connect(const redisAsyncContext* ac, int status) {
    if (status != REDIS_OK) {
      Impl* s = self(ac->data);
      // hiredis frees the context right after this callback.
      if (s != nullptr) s->ac = nullptr;
    }
  }
  static void on_disconnect(const redisAsyncContext* ac, int /*status*/) {
    Impl* s = self(ac->data);
    if (s != nullptr) s->ac = nullptr;
  }

  static void on_reply(redisAsyncContext* ac, void* r, void* privdata) {
    std::unique_ptr<Pending> p(static_cast<Pending*>(privdata));
    auto* reply = static_cast<redisReply*>(r);
    // User callbacks must not unwind through hiredis's C frames.
    try {
      if (reply == nullptr) {
        const char* why = (ac != nullptr && ac->errstr != nullptr && ac->errstr[0] != '\0') ? ac->errstr
                                                                                             : "connection closed";
        RedisError e(fmt::format("redis {} on {}: no reply: {}", p->what, p->where, why));
        p->cb(&e, ReplyView());
      } else if (reply->type == REDIS_REPLY_ERROR) {
        RedisError e(fmt::format("redis {} on {}: {}", p->what, p->where, std::string_view(reply->str, reply->len)));
        p->cb(&e, ReplyView(reply));
      } else {
        p->cb(nullptr, ReplyView(reply));
      }
    } catch (const std::exception& e) {
      spdlog::error("async redis callback for {} threw: {}", p->what, e.what());
    } catch (...) {
      spdlog::error("async redis callback for {} threw a non-std exception", p->what);
    }
  }

  void send(const std::vector<std::string>& args, Callback cb) {
    std::vector<std::string_view> views(args.begin(), args.end());
    auto pending = std::make_unique<Pending>(Pending{std::move(cb), describe_command(views), url.str(true)});
    if (ac == nullptr) throw RedisError(fmt::format("redis {} on {}: not connected", pending->what, pending->where));
    std::vector<const char*> argv;
    std::vector<size_t> lens;
    for (const auto& a : args) argv.push_back(a.data()), lens.push_back(a.size());
    if (redisAsyncCommandArgv(ac, &Impl::on_reply, pending.get(), static_cast<int>(argv.size()), argv.data(),
                              lens.data()) != REDIS_OK) {
      throw RedisError(fmt::format("redis {} on {}: cannot queue the command (connection closing)", pending->what,
                                   pending->where));
    }
    pending.release();  // hiredis now owns it until on_reply
  }
};

AsyncRedisClient::AsyncRedisClient(boost::asio::io_context& io, RedisUrl url)
    : impl_(std::make_shared<Impl>(io, std::move(url))) {}

AsyncRedisClient::AsyncRedisClient(boost::asio::io_context& io, const std::string& url)
    : AsyncRedisClient(io, RedisUrl::parse(url)) {}

AsyncRedisClient::~AsyncRedisClient() {
  if (impl_->ac != nullptr) {
    redisAsyncContext* ac = impl_->ac;
    impl_->ac = nullptr;
    redisAsyncFree(ac);
  }
}

void AsyncRedisClient::connect(ConnectCallback done) {
  Impl& s = *impl_;
  if (s.ac != nullptr) throw RedisError(fmt::format("async redis client for {} is already connected", s.url.str(true)));
  redisAsyncContext* ac = s.url.socket_path.empty() ? redisAsyncConnect(s.url.host.c_str(), s.url.port)
                                                     : redisAsyncConnectUnix(s.url.socket_path.c_str());
  if (ac == nullptr) throw RedisError(fmt::format("cannot allocate an async hiredis context for {}", s.url.str(true)));
  if (ac->err != 0) {
    std::string err = ac->errstr;
    redisAsyncFree(ac);
    throw RedisError(fmt::format("cannot connect to {}: {}", s.url.str(true), err));
  }
  s.ac = ac;
  ac->data = impl_.get();
  s.sd = std::make_unique<boost::asio::posix::stream_descriptor>(s.io, ac->c.fd);
  ac->ev.data = impl_.get();
  ac->ev.addRead = &Impl::add_read;
  ac->ev.delRead = &Impl::del_read;
  ac->ev.addWrite = &Impl::add_write;
  ac->ev.delWrite = &Impl::del_write;
  ac->ev.cleanup = &Impl::cleanup;
  redisAsyncSetConnectCallback(ac, &Impl::on_connect);
  redisAsyncSetDisconnectCallback(ac, &Impl::on_disconnect);

  // hiredis sends queued commands in order once the socket connects: AUTH and SELECT go first, and the
  // PING after them tells whether the whole handshake worked.
  std::weak_ptr<Impl> weak = impl_;
  auto record = [weak](const RedisError* e, ReplyView) {
    auto s2 = weak.lock();
    if (s2 && e != nullptr && s2->handshake_error.empty()) s2->handshake_error = e->what();
  };
  if (!s.url.password.empty()) {
    std::vector<std::string> auth = {"AUTH"};
    if (!s.url.username.empty()) auth.push_back(s.url.username);
    auth.push_back(s.url.password);
    s.send(auth, record);
  }
  if (s.url.db != 0) s.send({"SELECT", std::to_string(s.url.db)}, record);
  s.send({"PING"}, [weak, done = std::move(done)](const RedisError* e, ReplyView) {
    auto s2 = weak.lock();
    if (s2 && !s2->handshake_error.empty()) {
      RedisError he(s2->handshake_error);
      done(&he);
    } else {
      done(e);
    }
  });
}

void AsyncRedisClient::command(const std::vector<std::string>& args, Callback cb) {
  EVALSVC_REDIS_CHECK(!args.empty(), "empty async command");
  impl_->send(args, std::move(cb));
}

void AsyncRedisClient::disconnect() {
  if (impl_->ac != nullptr) redisAsyncDisconnect(impl_->ac);
}

bool AsyncRedisClient::connected() const { return impl_->ac != nullptr; }

}  // namespace evalsvc::scheduler
