// fetch_model against a loopback HTTP server started in the test (Range requests, cut transfers,
// redirects, entity tags) and against file:// URLs. Nothing here leaves 127.0.0.1.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <mutex>
#include <thread>

#include "evalsvc/common/error.h"
#include "evalsvc/common/hash.h"
#include "evalsvc/common/paths.h"
#include "evalsvc/worker/checkpoint.h"
#include "evalsvc/worker/fetch.h"

namespace fs = std::filesystem;
using namespace evalsvc;
using namespace evalsvc::worker;

namespace {

// A small blocking HTTP/1.1 server on 127.0.0.1 (free port), one connection at a time, in a thread.
class LoopbackServer {
 public:
  struct Resource {
    std::string body;
    std::string etag;           // sent as ETag when not empty
    bool honor_range = true;    // false: answers every request with 200 and the whole body
    std::string redirect_to;    // when set: 302 to this path, with X-Linked-Etag = linked_etag
    std::string linked_etag;
  };
  struct Request {
    std::string path, range;
  };

  LoopbackServer() {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    EXPECT_GE(fd_, 0);
    int one = 1;
    ::setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;  // the kernel picks a free port
    EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    EXPECT_EQ(::listen(fd_, 16), 0);
    socklen_t len = sizeof addr;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    thread_ = std::thread([this] { loop(); });
  }
  ~LoopbackServer() {
    stop_ = true;
    thread_.join();
    ::close(fd_);
  }
  std::string base() const { return "http://127.0.0.1:" + std::to_string(port_) + "/"; }
  void serve(const std::string& path, Resource r) {
    std::lock_guard<std::mutex> lock(mu_);
    resources_[path] = std::move(r);
  }
  /// The next `times` GETs of `path` announce the full length, send `bytes` body bytes, then hang up.
  void cut(const std::string& path, size_t bytes, int times = 1) {
    std::lock_guard<std::mutex> lock(mu_);
    cuts_[path] = {bytes, times};
  }
  std::vector<Request> requests(const std::string& path) const {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<Request> out;
    for (const auto& r : log_) {
      if (r.path == path) out.push_back(r);
    }
    return out;
  }
  size_t request_count() const {
    std::lock_guard<std::mutex> lock(mu_);
    return log_.size();
  }

 private:
  void loop() {
    while (!stop_) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 50) <= 0) continue;
      int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) continue;
      timeval tv{5, 0};
      ::setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
      handle(c);
      ::close(c);
    }
  }
  static void send_all(int c, std::string_view s) {
    while (!s.empty()) {
      ssize_t n = ::send(c, s.data(), s.size(), MSG_NOSIGNAL);
      if (n <= 0) return;
      s.remove_prefix(static_cast<size_t>(n));
    }
  }
  void handle(int c) {
    std::string req;
    char buf[4096];
    while (req.find("\r\n\r\n") == std::string::npos) {
      ssize_t n = ::recv(c, buf, sizeof buf, 0);
      if (n <= 0) return;
      req.append(buf, static_cast<size_t>(n));
    }
    const auto sp1 = req.find(' '), sp2 = req.find(' ', sp1 + 1);
    Request r{req.substr(sp1 + 1, sp2 - sp1 - 1), ""};
    std::string lower = req;
    for (auto& ch : lower) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    if (auto pos = lower.find("\r\nrange: "); pos != std::string::npos) {
      r.range = req.substr(pos + 9, req.find("\r\n", pos + 2) - pos - 9);
    }
    Resource res;
    bool found = false;
    std::pair<size_t, int> cut{0, 0};
    {
      std::lock_guard<std::mutex> lock(mu_);
      log_.push_back(r);
      if (auto it = resources_.find(r.path); it != resources_.end()) {
        res = it->second;
        found = true;
      }
      if (auto it = cuts_.find(r.path); it != cuts_.end() && it->second.second > 0) {
        cut = it->second;
        --it->second.second;
      }
    }
    if (!found) {
      send_all(c, "HTTP/1.1 404 Not Found\r\nContent-Length: 15\r\nConnection: close\r\n\r\nEntry not found");
      return;
    }
    if (!res.redirect_to.empty()) {
      send_all(c, "HTTP/1.1 302 Found\r\nLocation: " + res.redirect_to + "\r\nX-Linked-Etag: \"" + res.linked_etag +
                      "\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
      return;
    }
    const size_t size = res.body.size();
    size_t start = 0;
    std::string status = "200 OK", extra;
    if (!r.range.empty() && res.honor_range) {
      start = std::stoull(r.range.substr(r.range.find('=') + 1));
      if (start >= size) {
        send_all(c, "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */" + std::to_string(size) +
                        "\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
      }
      status = "206 Partial Content";
      extra = "Content-Range: bytes " + std::to_string(start) + "-" + std::to_string(size - 1) + "/" +
              std::to_string(size) + "\r\n";
    }
    if (!res.etag.empty()) extra += "ETag: \"" + res.etag + "\"\r\n";
    send_all(c, "HTTP/1.1 " + status + "\r\nContent-Length: " + std::to_string(size - start) + "\r\n" + extra +
                    "Accept-Ranges: bytes\r\nConnection: close\r\n\r\n");
    const std::string_view body = std::string_view(res.body).substr(start);
    send_all(c, cut.second > 0 ? body.substr(0, std::min(cut.first, body.size())) : body);
  }

  int fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  mutable std::mutex mu_;
  std::map<std::string, Resource> resources_;
  std::map<std::string, std::pair<size_t, int>> cuts_;
  std::vector<Request> log_;
};

ModelConfig small_config() {
  ModelConfig c;
  c.vocab_size = 96;
  c.n_positions = 32;
  c.n_embd = 16;
  c.n_layer = 2;
  c.n_head = 2;
  c.pad_token_id = 95;
  return c;
}

class FetchTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("qbench_fetch_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
    // A base model as the hub holds gpt2: body only.
    torch::manual_seed(5);
    for (const auto& [k, shape] : expected_gpt2_shapes(small_config(), false)) state_[k] = torch::randn(shape);
    save_checkpoint(dir_ / "src", small_config(), state_);
    config_ = read_file(dir_ / "src" / "config.json");
    weights_ = read_file(dir_ / "src" / "model.safetensors");
    options_.retry_delay_ms = 5;
    options_.connect_timeout_s = 5;
  }
  void TearDown() override { evalsvc::remove_tree(dir_); }

  void serve_all(LoopbackServer& s, bool with_etag = true) {
    s.serve("/config.json", {config_});
    s.serve("/model.safetensors", {weights_, with_etag ? sha256_hex(weights_) : ""});
  }
  void expect_fetched(const fs::path& dest) {
    EXPECT_EQ(read_file(dest / "model.safetensors"), weights_);
    EXPECT_EQ(read_file(dest / "config.json"), config_);
    EXPECT_FALSE(fs::exists(dest / "model.safetensors.part"));
    EXPECT_FALSE(fs::exists(dest / "config.json.part"));
    const Checkpoint ck = load_checkpoint(dest);
    EXPECT_EQ(ck.kind, CheckpointKind::kBaseModel);
    EXPECT_TRUE(torch::equal(ck.state.at("transformer.wte.weight"), state_.at("transformer.wte.weight")));
  }
  void expect_no_final_files(const fs::path& dest) {
    EXPECT_FALSE(fs::exists(dest / "model.safetensors"));
    EXPECT_FALSE(fs::exists(dest / "config.json"));
  }

  fs::path dir_;
  std::map<std::string, torch::Tensor> state_;
  std::string config_, weights_;
  FetchOptions options_;
};

}  // namespace

TEST(HubSourceTest, BuildsResolveUrls) {
  EXPECT_EQ(hub_source("gpt2"), "https://huggingface.co/gpt2/resolve/main/");
  EXPECT_EQ(hub_source("openai-community/gpt2"), "https://huggingface.co/openai-community/gpt2/resolve/main/");
  EXPECT_THROW(hub_source(""), InputError);
  EXPECT_THROW(hub_source("../etc"), InputError);
  EXPECT_THROW(hub_source("gpt2?x=1"), InputError);
}

TEST_F(FetchTest, DownloadsAndVerifiesSha256) {
  LoopbackServer s;
  serve_all(s);
  uint64_t last_done = 0;
  options_.progress = [&](const std::string&, uint64_t done, uint64_t) { last_done = std::max(last_done, done); };
  const FetchReport r = fetch_model(s.base(), dir_ / "dest", options_);
  expect_fetched(dir_ / "dest");
  EXPECT_TRUE(r.sha256_verified);
  EXPECT_EQ(r.bytes_downloaded, config_.size() + weights_.size());
  EXPECT_EQ(r.resumed_transfers, 0);
  EXPECT_GT(last_done, 0u);
  EXPECT_EQ(s.requests("/model.safetensors").size(), 1u);

  // A second fetch finds the valid checkpoint and asks the server nothing.
  const size_t before = s.request_count();
  EXPECT_TRUE(fetch_model(s.base(), dir_ / "dest", options_).already_present);
  EXPECT_EQ(s.request_count(), before);
  options_.force = true;
  EXPECT_FALSE(fetch_model(s.base(), dir_ / "dest", options_).already_present);
  EXPECT_EQ(s.request_count(), before + 2);
}

TEST_F(FetchTest, ResumesACutTransferWithARangeRequest) {
  LoopbackServer s;
  serve_all(s);
  const size_t half = weights_.size() / 2;
  s.cut("/model.safetensors", half);
  const FetchReport r = fetch_model(s.base(), dir_ / "dest", options_);
  expect_fetched(dir_ / "dest");
  const auto reqs = s.requests("/model.safetensors");
  ASSERT_EQ(reqs.size(), 2u);
  EXPECT_EQ(reqs[0].range, "");
  EXPECT_EQ(reqs[1].range, "bytes=" + std::to_string(half) + "-");
  EXPECT_EQ(r.resumed_transfers, 1);
  EXPECT_EQ(r.bytes_downloaded, config_.size() + weights_.size());  // no byte fetched twice
  EXPECT_TRUE(r.sha256_verified);
}

TEST_F(FetchTest, ResumesAPartLeftByAnEarlierRun) {
  LoopbackServer s;
  serve_all(s);
  fs::create_directories(dir_ / "dest");
  write_file_atomic(dir_ / "dest" / "model.safetensors.part", weights_.substr(0, 1000));
  const FetchReport r = fetch_model(s.base(), dir_ / "dest", options_);
  expect_fetched(dir_ / "dest");
  ASSERT_EQ(s.requests("/model.safetensors").size(), 1u);
  EXPECT_EQ(s.requests("/model.safetensors")[0].range, "bytes=1000-");
  EXPECT_EQ(r.bytes_downloaded, config_.size() + weights_.size() - 1000);

  // A part that is already complete is answered 416 and kept.
  fs::remove(dir_ / "dest" / "model.safetensors");
  write_file_atomic(dir_ / "dest" / "model.safetensors.part", weights_);
  fetch_model(s.base(), dir_ / "dest", options_);
  expect_fetched(dir_ / "dest");
}

TEST_F(FetchTest, GivesUpAfterMaxAttemptsKeepsThePartAndARerunFinishes) {
  LoopbackServer s;
  serve_all(s);
  s.cut("/model.safetensors", 100, /*times=*/3);
  options_.max_attempts = 3;
  try {
    fetch_model(s.base(), dir_ / "dest", options_);
    FAIL() << "three cut transfers must exhaust three attempts";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("giving up after 3 attempts"), std::string::npos) << e.what();
  }
  expect_no_final_files(dir_ / "dest");
  EXPECT_EQ(fs::file_size(dir_ / "dest" / "model.safetensors.part"), 300u);
  fetch_model(s.base(), dir_ / "dest", options_);
  expect_fetched(dir_ / "dest");
  EXPECT_EQ(s.requests("/model.safetensors").back().range, "bytes=300-");
}

TEST_F(FetchTest, ServerIgnoringRangeStartsThePartOver) {
  LoopbackServer s;
  s.serve("/config.json", {config_});
  s.serve("/model.safetensors", {weights_, "", /*honor_range=*/false});
  fs::create_directories(dir_ / "dest");
  write_file_atomic(dir_ / "dest" / "model.safetensors.part", std::string(500, 'x'));  // stale junk
  fetch_model(s.base(), dir_ / "dest", options_);
  expect_fetched(dir_ / "dest");
}

TEST_F(FetchTest, FollowsRedirectAndChecksTheLinkedEtag) {
  LoopbackServer s;
  s.serve("/config.json", {config_});
  LoopbackServer::Resource redirect;
  redirect.redirect_to = "/cdn/blob";
  redirect.linked_etag = sha256_hex(weights_);
  s.serve("/model.safetensors", redirect);
  s.serve("/cdn/blob", {weights_});
  EXPECT_TRUE(fetch_model(s.base(), dir_ / "dest", options_).sha256_verified);
  expect_fetched(dir_ / "dest");
}

TEST_F(FetchTest, NotFoundIsAClearErrorAndLeavesNoFile) {
  LoopbackServer s;
  s.serve("/config.json", {config_});  // weights missing
  try {
    fetch_model(s.base(), dir_ / "dest", options_);
    FAIL() << "a 404 must fail";
  } catch (const IoError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("HTTP 404"), std::string::npos) << m;
    EXPECT_NE(m.find(s.base() + "model.safetensors"), std::string::npos) << m;
  }
  expect_no_final_files(dir_ / "dest");
  EXPECT_FALSE(fs::exists(dir_ / "dest" / "model.safetensors.part"));
  EXPECT_EQ(s.requests("/model.safetensors").size(), 1u) << "a 404 is not retried";
}

TEST_F(FetchTest, CorruptBodyOrWrongShaIsFormatErrorAndLeavesNoFile) {
  {
    LoopbackServer s;
    s.serve("/config.json", {config_});
    std::string corrupt = weights_;
    corrupt.resize(corrupt.size() - 4);  // torn body; the server announces exactly these bytes
    s.serve("/model.safetensors", {corrupt});
    EXPECT_THROW(fetch_model(s.base(), dir_ / "a", options_), FormatError);
    expect_no_final_files(dir_ / "a");
    EXPECT_FALSE(fs::exists(dir_ / "a" / "model.safetensors.part")) << "a corrupt part must not be resumed";
  }
  {
    LoopbackServer s;
    s.serve("/config.json", {config_});
    s.serve("/model.safetensors", {weights_, sha256_hex("something else")});
    try {
      fetch_model(s.base(), dir_ / "b", options_);
      FAIL() << "a sha256 mismatch must fail";
    } catch (const FormatError& e) {
      EXPECT_NE(std::string(e.what()).find("sha256"), std::string::npos) << e.what();
    }
    expect_no_final_files(dir_ / "b");
  }
  {
    // Valid safetensors, but weights for another config.
    LoopbackServer s;
    ModelConfig other = small_config();
    other.n_embd = 32;
    s.serve("/config.json", {other.to_json().dump()});
    s.serve("/model.safetensors", {weights_});
    try {
      fetch_model(s.base(), dir_ / "c", options_);
      FAIL() << "weights that do not fit the config must fail";
    } catch (const FormatError& e) {
      EXPECT_NE(std::string(e.what()).find("expected"), std::string::npos) << e.what();
    }
    expect_no_final_files(dir_ / "c");
  }
  {
    LoopbackServer s;
    s.serve("/config.json", {"<html>not json</html>"});
    s.serve("/model.safetensors", {weights_});
    EXPECT_THROW(fetch_model(s.base(), dir_ / "d", options_), FormatError);
    expect_no_final_files(dir_ / "d");
    EXPECT_EQ(s.requests("/model.safetensors").size(), 0u) << "a bad config stops before the weights";
  }
}

TEST_F(FetchTest, FileUrls) {
  const std::string base = "file://" + (dir_ / "src").string();  // no trailing slash: added
  const FetchReport r = fetch_model(base, dir_ / "dest", options_);
  expect_fetched(dir_ / "dest");
  EXPECT_FALSE(r.sha256_verified);

  // Resume from a local part.
  fs::remove(dir_ / "dest" / "model.safetensors");
  write_file_atomic(dir_ / "dest" / "model.safetensors.part", weights_.substr(0, 777));
  fetch_model(base, dir_ / "dest", options_);
  expect_fetched(dir_ / "dest");

  EXPECT_THROW(fetch_model("file://" + (dir_ / "nowhere").string(), dir_ / "x", options_), IoError);
  expect_no_final_files(dir_ / "x");
}

TEST_F(FetchTest, RefusesUnsupportedSchemesAndDeadServers) {
  EXPECT_THROW(fetch_model("ftp://127.0.0.1/", dir_ / "x", options_), IoError);
  // A port nobody listens on: connection refused, retried, then a clear IoError.
  int port = 0;
  {
    LoopbackServer s;
    port = std::stoi(s.base().substr(17));
  }
  options_.max_attempts = 2;
  try {
    fetch_model("http://127.0.0.1:" + std::to_string(port) + "/", dir_ / "x", options_);
    FAIL() << "nothing listens there";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("giving up after 2 attempts"), std::string::npos) << e.what();
  }
  expect_no_final_files(dir_ / "x");
  EXPECT_FALSE(fs::exists(dir_ / "x" / "config.json.part"));
}
