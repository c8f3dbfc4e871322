#include "evalsvc/scheduler/http_server.h"

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <algorithm>
#include <optional>
#include <thread>

#include <nlohmann/json.hpp>

#include "evalsvc/common/error.h"
#include "evalsvc/common/log.h"
#include "evalsvc/scheduler/metrics.h"
#include "evalsvc/scheduler/queue.h"
#include "evalsvc/scheduler/redis.h"
#include "evalsvc/scheduler/store.h"

namespace evalsvc::scheduler {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;

ListenAddress ListenAddress::parse(std::string_view text) {
  auto bad = [&](const char* why) {
    return InputError(fmt::format("listen address '{}': {} (expected HOST:PORT, [IPv6]:PORT or :PORT)", text, why));
  };
  const auto colon = text.rfind(':');
  if (colon == std::string_view::npos) throw bad("no port");
  std::string_view host = text.substr(0, colon), port = text.substr(colon + 1);
  if (port.empty() || port.size() > 5 || !std::all_of(port.begin(), port.end(), ::isdigit)) throw bad("the port is not a number");
  ListenAddress a;
  a.port = std::stoi(std::string(port));
  if (a.port > 65535) throw bad("the port is above 65535");
  if (host.empty()) {
    a.host = "0.0.0.0";
  } else if (host.front() == '[') {
    if (host.size() < 3 || host.back() != ']') throw bad("unbalanced brackets");
    a.host = std::string(host.substr(1, host.size() - 2));
  } else {
    if (host.find(':') != std::string_view::npos) throw bad("an IPv6 address needs brackets");
    a.host = std::string(host);
  }
  return a;
}

namespace {

/// `message` with the Redis password (if any) and the database URL's secrets replaced.
std::string scrub(std::string message, const HttpServerOptions& o) {
  try {
    const auto pw = RedisUrl::parse(o.redis_url).password;
    for (size_t pos; !pw.empty() && (pos = message.find(pw)) != std::string::npos;) message.replace(pos, pw.size(), "***");
  } catch (const Error&) {
    // An unparsable URL never reached a connection, so its text cannot be in the message.
  }
  return o.database_url.empty() ? message : scrub_secrets(std::move(message), o.database_url);
}

}  // namespace

struct HttpServer::Impl {
  explicit Impl(HttpServerOptions opts) : o(std::move(opts)) {}

  HttpServerOptions o;
  // Connections of the serving thread, opened on first use and again after a failed open.
  std::unique_ptr<RedisClient> redis;
  std::unique_ptr<Queue> queue;
  std::unique_ptr<Store> store;
  net::io_context io;
  tcp::acceptor acceptor{io};
  std::thread thread;

  Queue& connect_redis() {
    if (!queue) {
      RedisOptions ro;
      ro.connect_timeout = o.dependency_timeout;
      ro.command_timeout = o.dependency_timeout;
      ro.reconnect_attempts = 1;
      redis = std::make_unique<RedisClient>(o.redis_url, ro);
      queue = std::make_unique<Queue>(*redis, o.prefix);
    }
    return *queue;
  }
  Store& connect_store() {
    if (!store) {
      StoreOptions so;
      so.reconnect_timeout = o.dependency_timeout;
      so.connect_timeout_s = std::max<int>(1, static_cast<int>((o.dependency_timeout.count() + 999) / 1000));
      store = std::make_unique<Store>(o.database_url, so);
    }
    return *store;
  }

  /// nullopt when Redis answers PING, else why not.
  std::optional<std::string> probe_redis() {
    try {
      if (connect_redis().redis().ping()) return std::nullopt;
      return std::string("PING did not answer PONG");
    } catch (const std::exception& e) {
      return scrub(e.what(), o);
    }
  }
  std::optional<std::string> probe_postgres() {
    try {
      connect_store().ping();
      return std::nullopt;
    } catch (const std::exception& e) {
      store.reset();  // a fresh connection next time; the Store already retried within the timeout
      return scrub(e.what(), o);
    }
  }

  http::response<http::string_body> handle(const http::request<http::string_body>& req) {
    http::response<http::string_body> res;
    res.version(req.version());
    res.set(http::field::server, "qbench-scheduler");
    const std::string target(req.target());
    const std::string path = target.substr(0, target.find('?'));
    auto text = [&](http::status s, std::string body, const char* type = "text/plain; charset=utf-8") {
      res.result(s);
      res.set(http::field::content_type, type);
      res.body() = std::move(body);
    };
    if (path != "/healthz" && path != "/metrics") {
      text(http::status::not_found, fmt::format("not found: {} (this server has /healthz and /metrics)\n", path));
      return res;
    }
    if (req.method() != http::verb::get && req.method() != http::verb::head) {
      res.set(http::field::allow, "GET, HEAD");
      text(http::status::method_not_allowed, fmt::format("method {} not allowed on {}: use GET or HEAD\n", std::string(req.method_string()), path));
      return res;
    }
    if (path == "/healthz") {
      nlohmann::json j;
      std::vector<std::string> down;
      for (auto [name, err] : {std::pair<const char*, std::optional<std::string>>{"redis", probe_redis()},
                               std::pair<const char*, std::optional<std::string>>{"postgres", probe_postgres()}}) {
        j[name] = err ? nlohmann::json{{"ok", false}, {"error", *err}} : nlohmann::json{{"ok", true}};
        if (err) down.push_back(name);
      }
      j["status"] = down.empty() ? "ok" : "unavailable";
      if (!down.empty()) j["unavailable"] = down;
      text(down.empty() ? http::status::ok : http::status::service_unavailable, j.dump() + "\n", "application/json");
      return res;
    }
    ServiceMetrics m;
    try {
      collect_queue_metrics(connect_redis(), m);
    } catch (const std::exception& e) {
      m.redis_error = scrub(e.what(), o);
    }
    try {
      collect_store_metrics(connect_store(), m);
    } catch (const std::exception& e) {
      m.postgres_error = scrub(e.what(), o);
    }
    if (m.postgres_error) store.reset();
    if (m.redis_error) spdlog::warn("/metrics: Redis: {}", scrub(*m.redis_error, o));
    if (m.postgres_error) spdlog::warn("/metrics: PostgreSQL: {}", scrub(*m.postgres_error, o));
    text(http::status::ok, render_prometheus(m), kPrometheusContentType);
    return res;
  }

  void accept();
};

namespace {

/// One client connection: read a request, answer it, repeat while the client keeps the connection alive.
class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket socket, HttpServer::Impl& server) : stream_(std::move(socket)), server_(server) {}

  void read() {
    parser_.emplace();
    parser_->header_limit(8 * 1024);
    parser_->body_limit(8 * 1024);  // the endpoints take no body; a small one is read and ignored
    stream_.expires_after(server_.o.io_timeout);
    http::async_read(stream_, buffer_, *parser_,
                     [self = shared_from_this()](beast::error_code ec, size_t) { self->on_read(ec); });
  }

 private:
  void on_read(beast::error_code ec) {
    if (ec == http::error::end_of_stream || ec == beast::error::timeout || ec == net::error::operation_aborted) {
      return close();
    }
    if (ec) {
      // Malformed or oversized: say so once, then hang up.
      res_ = {};
      res_.version(11);
      res_.result(http::status::bad_request);
      res_.set(http::field::content_type, "text/plain; charset=utf-8");
      res_.body() = fmt::format("bad request: {}\n", ec.message());
      res_.keep_alive(false);
      res_.prepare_payload();
      return write(false);
    }
    const auto& req = parser_->get();
    try {
      res_ = server_.handle(req);
    } catch (const std::exception& e) {
      res_ = {};
      res_.version(req.version());
      res_.result(http::status::internal_server_error);
      res_.set(http::field::content_type, "text/plain; charset=utf-8");
      res_.body() = scrub(e.what(), server_.o) + "\n";
    }
    res_.keep_alive(req.keep_alive());
    res_.prepare_payload();
    if (req.method() == http::verb::head) {
      // Same headers as GET (Content-Length included), no body.
      res_.body().clear();
    }
    write(req.keep_alive());
  }

  void write(bool keep_alive) {
    stream_.expires_after(server_.o.io_timeout);
    http::async_write(stream_, res_, [self = shared_from_this(), keep_alive](beast::error_code ec, size_t) {
      if (ec || !keep_alive) return self->close();
      self->read();
    });
  }

  void close() {
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
  }

  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  http::response<http::string_body> res_;
  HttpServer::Impl& server_;
};

}  // namespace

void HttpServer::Impl::accept() {
  acceptor.async_accept([this](beast::error_code ec, tcp::socket socket) {
    if (ec == net::error::operation_aborted) return;
    if (ec) {
      spdlog::warn("http: accept: {}", ec.message());
    } else {
      std::make_shared<Session>(std::move(socket), *this)->read();
    }
    accept();
  });
}

HttpServer::HttpServer(HttpServerOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {
  auto& im = *impl_;
  const auto a = ListenAddress::parse(im.o.listen);
  beast::error_code ec;
  tcp::resolver resolver(im.io);
  auto endpoints = resolver.resolve(a.host, std::to_string(a.port), tcp::resolver::numeric_service, ec);
  if (ec || endpoints.empty()) {
    throw IoError(fmt::format("listen address '{}': cannot resolve '{}': {}", im.o.listen, a.host, ec.message()));
  }
  const tcp::endpoint ep = *endpoints.begin();
  im.acceptor.open(ep.protocol(), ec);
  if (!ec) im.acceptor.set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) im.acceptor.bind(ep, ec);
  if (!ec) im.acceptor.listen(net::socket_base::max_listen_connections, ec);
  if (ec) throw IoError(fmt::format("listen address '{}': cannot listen on {}: {}", im.o.listen, address(), ec.message()));
  im.accept();
  im.thread = std::thread([&im] {
    for (;;) {
      try {
        im.io.run();
        return;
      } catch (const std::exception& e) {
        // A handler threw past its own catch: log it and keep serving.
        spdlog::error("http: {}", e.what());
      }
    }
  });
  spdlog::info("http: serving /healthz and /metrics on {}", address());
}

HttpServer::~HttpServer() {
  impl_->io.stop();
  if (impl_->thread.joinable()) impl_->thread.join();
}

int HttpServer::port() const {
  beast::error_code ec;
  auto ep = impl_->acceptor.local_endpoint(ec);
  return ec ? 0 : ep.port();
}

std::string HttpServer::address() const {
  beast::error_code ec;
  auto ep = impl_->acceptor.local_endpoint(ec);
  if (ec) return impl_->o.listen;
  const auto ip = ep.address();
  return ip.is_v6() ? fmt::format("[{}]:{}", ip.to_string(), ep.port()) : fmt::format("{}:{}", ip.to_string(), ep.port());
}

}  // namespace evalsvc::scheduler
