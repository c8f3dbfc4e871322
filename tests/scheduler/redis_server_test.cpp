// RedisClient / AsyncRedisClient / LocalRedis against a real redis-server on 127.0.0.1.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <boost/asio/io_context.hpp>
#include <filesystem>
#include <thread>

#include "evalsvc/common/paths.h"
#include "evalsvc/scheduler/local_servers.h"
#include "evalsvc/scheduler/redis.h"

namespace evalsvc::scheduler {
namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;

fs::path make_temp_dir() {
  std::string tmpl = (fs::temp_directory_path() / "qbench-redis-XXXXXX").string();
  char* p = ::mkdtemp(tmpl.data());
  if (p == nullptr) throw IoError("mkdtemp failed");
  return p;
}

class RedisServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = make_temp_dir();
    server_ = std::make_unique<LocalRedis>(LocalRedis::Options{.dir = dir_});
  }
  void TearDown() override {
    server_.reset();
    std::error_code ec;
    evalsvc::remove_tree(dir_, ec);
  }
  fs::path dir_;
  std::unique_ptr<LocalRedis> server_;
};

TEST(RedisUrlTest, ParsesTcpUnixAndCredentials) {
  RedisUrl a = RedisUrl::parse("redis://127.0.0.1:6390/3");
  EXPECT_EQ(a.host, "127.0.0.1");
  EXPECT_EQ(a.port, 6390);
  EXPECT_EQ(a.db, 3);
  EXPECT_TRUE(a.password.empty());

  RedisUrl b = RedisUrl::parse("redis://:s3cr%40t@redis.example:7000");
  EXPECT_EQ(b.password, "s3cr@t");
  EXPECT_EQ(b.host, "redis.example");
  EXPECT_EQ(b.db, 0);
  EXPECT_EQ(b.str(true), "redis://:***@redis.example:7000/0");
  EXPECT_EQ(RedisUrl::parse(b.str(false)).password, "s3cr@t");

  RedisUrl c = RedisUrl::parse("redis://alice:pw@[::1]:6379/1");
  EXPECT_EQ(c.username, "alice");
  EXPECT_EQ(c.password, "pw");
  EXPECT_EQ(c.host, "::1");
  EXPECT_EQ(c.db, 1);

  RedisUrl d = RedisUrl::parse("redis://localhost");
  EXPECT_EQ(d.port, 6379);

  RedisUrl e = RedisUrl::parse("unix://:pw@/run/redis.sock?db=2");
  EXPECT_EQ(e.socket_path, "/run/redis.sock");
  EXPECT_EQ(e.db, 2);
  EXPECT_EQ(e.password, "pw");
  EXPECT_EQ(RedisUrl::parse("/tmp/r.sock").socket_path, "/tmp/r.sock");
}

TEST(RedisUrlTest, MalformedUrlsThrowWithoutTheirPassword) {
  for (const char* bad : {"", "localhost:6379", "http://:hunter2@h:1", "redis://:hunter2@h:99999",
                          "redis://:hunter2@h:12/x", "redis://:hunter2@:12", "unix://:hunter2@relative.sock",
                          "redis://:hunter2@[::1:5"}) {
    try {
      RedisUrl::parse(bad);
      ADD_FAILURE() << "accepted " << bad;
    } catch (const InputError& e) {
      EXPECT_EQ(std::string(e.what()).find("hunter2"), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW(RedisUrl::parse("rediss://h:1"), UnsupportedError);
  EXPECT_EQ(mask_url("redis://u:hunter2@h:1/0"), "redis://***@h:1/0");
}

TEST(RedisSha1Test, KnownVectors) {
  EXPECT_EQ(sha1_hex(""), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
  EXPECT_EQ(sha1_hex("abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
  EXPECT_EQ(sha1_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "84983e441c3bd26ebaae4aa1f95129e5e54670f1");
  EXPECT_EQ(sha1_hex(std::string(1000000, 'a')), "34aa973cd4c4daa4f61eeb2bdbad27316534016f");
}

TEST(RedisDescribeTest, SecretsAreNotDescribed) {
  EXPECT_EQ(describe_command({"auth", "hunter2"}), "AUTH");
  EXPECT_EQ(describe_command({"CONFIG", "SET", "requirepass", "x"}), "CONFIG");
  EXPECT_EQ(describe_command({"get", "k1"}), "GET k1");
  EXPECT_EQ(describe_command({"get", std::string_view("\0\1", 2)}), "GET <binary>");
}

TEST_F(RedisServerTest, CommandsAreBinarySafeAndRepliesTypeChecked) {
  RedisClient c(server_->url());
  const std::string value("a\0b\r\nc", 6);
  const std::string key("k\0ey", 4);
  EXPECT_EQ(c.command({"SET", key, value}).str(), "OK");
  Reply got = c.command({"GET", key});
  ASSERT_TRUE(got.is_string());
  EXPECT_EQ(got.str(), value);
  EXPECT_TRUE(c.command({"GET", "missing"}).is_nil());
  EXPECT_EQ(c.command({"GET", "missing"}).opt_string(), std::nullopt);
  EXPECT_EQ(c.command({"INCRBY", "n", "41"}).integer(), 41);
  c.command({"RPUSH", "l", "x", "y", "z"});
  Reply l = c.command({"LRANGE", "l", "0", "-1"});
  ASSERT_EQ(l.size(), 3u);
  EXPECT_EQ(l.at(2).str(), "z");
  EXPECT_THROW(l.at(3), RedisError);
  EXPECT_THROW(l.integer(), RedisError);
  EXPECT_THROW(got.size(), RedisError);
  try {
    c.command({"INCR", "l"});  // wrong type
    FAIL() << "error reply did not throw";
  } catch (const RedisError& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("INCR l"), std::string::npos) << m;
    EXPECT_NE(m.find("WRONGTYPE"), std::string::npos) << m;
    EXPECT_NE(m.find("redis_server_test.cpp:"), std::string::npos) << m;
  }
  Reply err = c.command({"INCR", "l"}, CallOptions{.throw_on_error_reply = false});
  EXPECT_TRUE(err.is_error());
  EXPECT_TRUE(c.ping());
}

TEST_F(RedisServerTest, PipelineReturnsRepliesInOrder) {
  RedisClient c(server_->url());
  std::vector<std::vector<std::string>> cmds;
  for (int i = 0; i < 100; ++i) cmds.push_back({"RPUSH", "p", std::to_string(i)});
  cmds.push_back({"INCR", "p"});
  auto replies = c.pipeline(cmds);
  ASSERT_EQ(replies.size(), 101u);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(replies[i].integer(), i + 1);
  EXPECT_TRUE(replies[100].is_error());
  EXPECT_EQ(c.command({"LLEN", "p"}).integer(), 100);
}

TEST_F(RedisServerTest, EvalshaFallsBackToScriptLoadOnNoscript) {
  RedisClient c(server_->url());
  RedisScript s("add-1", "return redis.call('INCRBY', KEYS[1], ARGV[1])");
  EXPECT_EQ(c.command({"SCRIPT", "EXISTS", s.sha1()}).at(0).integer(), 0);
  EXPECT_EQ(c.eval(s, {"ctr"}, {"5"}).integer(), 5);
  EXPECT_EQ(c.command({"SCRIPT", "EXISTS", s.sha1()}).at(0).integer(), 1);
  c.command({"SCRIPT", "FLUSH"});
  EXPECT_EQ(c.eval(s, {"ctr"}, {"2"}).integer(), 7);
  RedisScript bad("broken-0", "return redis.call('NOSUCHCOMMAND')");
  try {
    c.eval(bad, {}, {});
    FAIL();
  } catch (const RedisError& e) {
    EXPECT_NE(std::string(e.what()).find("broken-0"), std::string::npos) << e.what();
  }
}

TEST_F(RedisServerTest, ReconnectsAfterTheServerRestarts) {
  RedisOptions opts;
  opts.reconnect_attempts = 20;
  RedisClient c(server_->url(), opts);
  c.command({"SET", "a", "1"});
  server_->stop();  // AOF is flushed on a graceful stop
  // While it is down a command fails with a RedisError, never a crash.
  EXPECT_THROW(c.command({"GET", "a"}), RedisError);
  server_->start();
  EXPECT_EQ(c.command({"GET", "a"}, CallOptions{.idempotent = true}).str(), "1");
  EXPECT_TRUE(c.connected());
  // A command in flight when the connection broke: retried when idempotent.
  server_->kill();
  server_->start();
  EXPECT_EQ(c.command({"GET", "a"}, CallOptions{.idempotent = true}).str(), "1");
}

TEST_F(RedisServerTest, TimeoutBreaksTheConnectionThenRecovers) {
  RedisOptions opts;
  opts.command_timeout = milliseconds(200);
  RedisClient c(server_->url(), opts);
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_THROW(c.command({"BLPOP", "nothing", "2"}), RedisError);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, milliseconds(1500));
  EXPECT_FALSE(c.connected());
  EXPECT_TRUE(c.command({"BLPOP", "nothing", "0.3"}, CallOptions{.timeout = milliseconds(2000)}).is_nil());
}

TEST(RedisConnectTest, RefusedConnectionNamesTheServer) {
  int port = find_free_port();
  RedisOptions opts;
  opts.reconnect_attempts = 2;
  opts.reconnect_backoff = milliseconds(10);
  try {
    RedisClient c(fmt::format("redis://:hunter2@127.0.0.1:{}", port), opts);
    FAIL();
  } catch (const RedisError& e) {
    std::string m = e.what();
    EXPECT_NE(m.find(std::to_string(port)), std::string::npos) << m;
    EXPECT_EQ(m.find("hunter2"), std::string::npos) << m;
  }
}

TEST(RedisPasswordTest, AuthRequiredAndNeverLeaked) {
  fs::path dir = make_temp_dir();
  {
    LocalRedis server({.dir = dir, .password = "pa55-word"});
    EXPECT_NE(server.url().find("pa55-word"), std::string::npos);
    RedisClient ok(server.url());
    EXPECT_EQ(ok.command({"SET", "x", "1"}).str(), "OK");
    EXPECT_EQ(ok.describe().find("pa55-word"), std::string::npos);

    const std::string no_pw = fmt::format("redis://127.0.0.1:{}", server.port());
    RedisClient anon(no_pw);  // connecting works, commands are refused
    try {
      anon.command({"GET", "x"});
      FAIL();
    } catch (const RedisError& e) {
      EXPECT_NE(std::string(e.what()).find("NOAUTH"), std::string::npos) << e.what();
    }
    try {
      RedisClient wrong(fmt::format("redis://:wr0ng-pw@127.0.0.1:{}", server.port()));
      FAIL();
    } catch (const RedisError& e) {
      std::string m = e.what();
      EXPECT_NE(m.find("AUTH"), std::string::npos) << m;
      EXPECT_EQ(m.find("wr0ng-pw"), std::string::npos) << m;
    }
    // The config file with the password is private to its owner.
    EXPECT_EQ(fs::status(dir / "redis.conf").permissions() & fs::perms::others_read, fs::perms::none);
  }
  evalsvc::remove_tree(dir);
}

// ---- Boost.Asio adapter ----

TEST_F(RedisServerTest, AsyncCommandsRunInOrderOnAnIoContext) {
  boost::asio::io_context io;
  AsyncRedisClient c(io, server_->url());
  bool connected = false;
  c.connect([&](const RedisError* e) {
    EXPECT_EQ(e, nullptr) << (e ? e->what() : "");
    connected = true;
  });
  std::vector<long long> seen;
  for (int i = 0; i < 1000; ++i) {
    c.command({"INCR", "ctr"}, [&](const RedisError* e, ReplyView r) {
      ASSERT_EQ(e, nullptr);
      seen.push_back(r.integer());
    });
  }
  std::string got;
  const std::string value("bin\0ary", 7);
  c.command({"SET", "k", value}, [](const RedisError* e, ReplyView r) {
    ASSERT_EQ(e, nullptr);
    EXPECT_EQ(r.str(), "OK");
  });
  c.command({"GET", "k"}, [&](const RedisError* e, ReplyView r) {
    ASSERT_EQ(e, nullptr);
    got = std::string(r.str());
  });
  std::string error_text;
  c.command({"INCR", "k"}, [&](const RedisError* e, ReplyView r) {
    ASSERT_NE(e, nullptr);
    EXPECT_TRUE(r.is_error());
    error_text = e->what();
  });
  bool closed = false;
  c.command({"PING"}, [&](const RedisError* e, ReplyView) {
    EXPECT_EQ(e, nullptr);
    c.disconnect();  // graceful: nothing pending is lost
    closed = true;
  });
  io.run_for(std::chrono::seconds(10));
  EXPECT_TRUE(connected);
  ASSERT_EQ(seen.size(), 1000u);
  for (int i = 0; i < 1000; ++i) EXPECT_EQ(seen[i], i + 1);
  EXPECT_EQ(got, value);
  EXPECT_NE(error_text.find("INCR k"), std::string::npos) << error_text;
  EXPECT_TRUE(closed);
  EXPECT_FALSE(c.connected());
}

TEST_F(RedisServerTest, AsyncReportsServerLossToPendingCallbacks) {
  boost::asio::io_context io;
  AsyncRedisClient c(io, server_->url());
  c.connect([](const RedisError* e) { EXPECT_EQ(e, nullptr); });
  bool blocked_done = false;
  std::string err;
  c.command({"PING"}, [&](const RedisError* e, ReplyView) {
    ASSERT_EQ(e, nullptr);
    // The BLPOP is pending on the server when the server dies.
    c.command({"BLPOP", "never", "30"}, [&](const RedisError* e2, ReplyView) {
      blocked_done = true;
      if (e2) err = e2->what();
    });
  });
  std::thread killer([&] {
    std::this_thread::sleep_for(milliseconds(300));
    server_->kill();
  });
  io.run_for(std::chrono::seconds(10));
  killer.join();
  EXPECT_TRUE(blocked_done);
  EXPECT_NE(err.find("BLPOP never"), std::string::npos) << err;
  EXPECT_FALSE(c.connected());
}

TEST(AsyncRedisTest, ConnectFailuresAndAuth) {
  boost::asio::io_context io;
  int port = find_free_port();
  AsyncRedisClient refused(io, fmt::format("redis://127.0.0.1:{}", port));
  std::string refused_err;
  refused.connect([&](const RedisError* e) { refused_err = e ? e->what() : "connected?!"; });
  io.run_for(std::chrono::seconds(5));
  EXPECT_NE(refused_err.find(std::to_string(port)), std::string::npos) << refused_err;
  EXPECT_FALSE(refused.connected());

  fs::path dir = make_temp_dir();
  {
    LocalRedis server({.dir = dir, .password = "async-pw"});
    boost::asio::io_context io2;
    AsyncRedisClient good(io2, server.url());
    std::string value;
    good.connect([](const RedisError* e) { EXPECT_EQ(e, nullptr) << (e ? e->what() : ""); });
    good.command({"SET", "a", "b"}, [](const RedisError* e, ReplyView) { EXPECT_EQ(e, nullptr); });
    good.command({"GET", "a"}, [&](const RedisError*, ReplyView r) { value = std::string(r.str()); });
    AsyncRedisClient bad(io2, fmt::format("redis://:nope-pw@127.0.0.1:{}", server.port()));
    std::string bad_err;
    bad.connect([&](const RedisError* e) { bad_err = e ? e->what() : "accepted?!"; });
    io2.run_for(std::chrono::seconds(3));
    EXPECT_EQ(value, "b");
    EXPECT_NE(bad_err.find("AUTH"), std::string::npos) << bad_err;
    EXPECT_EQ(bad_err.find("nope-pw"), std::string::npos) << bad_err;
  }
  evalsvc::remove_tree(dir);
}

TEST(RedisUnixSocketTest, SyncAndAsyncOverAUnixSocket) {
  fs::path dir = make_temp_dir();
  {
    LocalRedis server({.dir = dir, .password = "sock-pw", .unix_socket = true});
    const std::string url = server.socket_url();
    EXPECT_TRUE(url.starts_with("unix://"));
    RedisClient c(url);
    EXPECT_EQ(c.command({"SET", "via", "socket"}).str(), "OK");
    EXPECT_EQ(c.describe().find("sock-pw"), std::string::npos);
    boost::asio::io_context io;
    AsyncRedisClient ac(io, url);
    std::string got;
    ac.connect([](const RedisError* e) { EXPECT_EQ(e, nullptr) << (e ? e->what() : ""); });
    ac.command({"GET", "via"}, [&](const RedisError* e, ReplyView r) {
      ASSERT_EQ(e, nullptr);
      got = std::string(r.str());
      ac.disconnect();
    });
    io.run_for(std::chrono::seconds(5));
    EXPECT_EQ(got, "socket");
  }
  evalsvc::remove_tree(dir);
}

TEST_F(RedisServerTest, LocalRedisKeepsPortAndDataAcrossRestarts) {
  const int port = server_->port();
  {
    RedisClient c(server_->url());
    c.command({"SET", "persist", "yes"});
  }
  server_->restart();
  EXPECT_EQ(server_->port(), port);
  RedisClient c(server_->url());
  EXPECT_EQ(c.command({"GET", "persist"}).str(), "yes");
  EXPECT_TRUE(fs::exists(dir_ / "redis.log"));
}

}  // namespace
}  // namespace evalsvc::scheduler
