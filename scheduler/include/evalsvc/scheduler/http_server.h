#pragma once
// The scheduler's monitoring endpoint (Boost.Beast over Boost.Asio):
//   GET /healthz  200 {"status":"ok","redis":"ok","postgres":"ok"} when both servers answer, else 503 with
//                 "unavailable" and, for the one that failed, its error (credentials masked)
//   GET /metrics  the Prometheus text exposition of metrics.h
// HEAD is accepted wherever GET is; another method on a known path is 405 (with Allow), an unknown path 404.
//
// It runs on its own thread with its own io_context, Redis connection and PostgreSQL connection rather than
// on the scheduler loop's io_context: that loop makes blocking hiredis/libpq calls inside its handlers (a
// blocking XREAD per tick, reconcile's queries), so a scrape sharing it would wait behind them and a slow
// scrape (the aggregates over every job row) would delay scheduling; and RedisClient and Store are not
// thread-safe, so the endpoint needs connections of its own anyway. Requests are served one at a time
// (scrapes are rare); reads and writes have deadlines so that a stalled client cannot hold the thread.
#include <chrono>
#include <memory>
#include <string>
#include <string_view>

namespace evalsvc::scheduler {

/// Where to listen: "HOST:PORT" (HOST an IPv4 address, a name, or "[IPv6]"), or ":PORT" (all IPv4
/// interfaces). PORT 0 picks a free port. InputError naming the text for anything else.
struct ListenAddress {
  std::string host;
  int port = 0;
  static ListenAddress parse(std::string_view text);
};

struct HttpServerOptions {
  std::string listen = "127.0.0.1:9464";
  std::string redis_url;     ///< with its password: for connecting, never echoed
  std::string database_url;  ///< idem
  std::string prefix = "qbench";
  /// How long a health probe or a scrape waits for each server before reporting it unavailable.
  std::chrono::milliseconds dependency_timeout{2000};
  /// Deadline for reading a request and for writing a response.
  std::chrono::milliseconds io_timeout{10000};
};

class HttpServer {
 public:
  /// Binds the address and starts serving on a thread of its own. InputError for a malformed address,
  /// IoError when the address cannot be resolved or bound (in use, not local, no permission).
  explicit HttpServer(HttpServerOptions options);
  /// Stops accepting, closes connections, joins the thread.
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  /// The bound port (the chosen one when the address said 0).
  int port() const;
  /// The bound address as "host:port" (for logs).
  std::string address() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace evalsvc::scheduler
