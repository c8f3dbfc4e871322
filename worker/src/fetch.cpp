#include "evalsvc/worker/fetch.h"

#include <curl/curl.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>

#include <spdlog/spdlog.h>

#include "evalsvc/common/error.h"
#include "evalsvc/common/hash.h"
#include "evalsvc/common/paths.h"
#include "evalsvc/worker/checkpoint.h"
#include "evalsvc/worker/gpt2.h"
#include "evalsvc/worker/safetensors.h"

namespace fs = std::filesystem;

namespace evalsvc::worker {
namespace {

void global_init() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) throw IoError("curl_global_init failed");
  });
}

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return std::string(s);
}

// An entity tag that is a sha256: the hub sends the LFS object id this way (X-Linked-Etag on the
// huggingface.co response, often ETag on the CDN's). Weak tags and quotes are stripped.
std::optional<std::string> sha256_of_etag(std::string tag) {
  tag = trim(tag);
  if (tag.rfind("W/", 0) == 0) tag = tag.substr(2);
  if (tag.size() >= 2 && tag.front() == '"' && tag.back() == '"') tag = tag.substr(1, tag.size() - 2);
  if (tag.size() != 64) return std::nullopt;
  for (char c : tag) {
    if (!std::isxdigit(static_cast<unsigned char>(c))) return std::nullopt;
  }
  return lower(tag);
}

uint64_t size_or_zero(const fs::path& p) {
  std::error_code ec;
  const auto n = fs::file_size(p, ec);
  return ec ? 0 : n;
}

// "bytes START-END/TOTAL" or "bytes */TOTAL"; TOTAL may be "*" (unknown).
struct ContentRange {
  std::optional<uint64_t> start, total;
};
std::optional<ContentRange> parse_content_range(const std::string& v) {
  ContentRange r;
  unsigned long long a = 0, b = 0, t = 0;
  char star = 0;
  if (std::sscanf(v.c_str(), "bytes %llu-%llu/%llu", &a, &b, &t) == 3) {
    r.start = a;
    r.total = t;
    return r;
  }
  if (std::sscanf(v.c_str(), "bytes %llu-%llu/%c", &a, &b, &star) == 3 && star == '*') {
    r.start = a;
    return r;
  }
  if (std::sscanf(v.c_str(), "bytes */%llu", &t) == 1) {
    r.total = t;
    return r;
  }
  return std::nullopt;
}

// State of one curl transfer, shared with the callbacks.
struct Transfer {
  FILE* out = nullptr;
  fs::path part;
  uint64_t offset = 0;     // bytes of the part kept before this transfer (0 after a restart)
  bool is_file_url = false;
  long status = 0;         // status of the last response header block (0 for file://)
  std::map<std::string, std::string> headers;  // last response, lowercase names
  std::string linked_etag;                     // X-Linked-Etag seen anywhere in the redirect chain
  bool first_write = true;
  bool restarted = false;  // the server ignored the Range request and sent everything
  uint64_t written = 0;
  std::string error_body;  // start of an error response, for the message
  std::string abort_reason;
  const FetchOptions* options = nullptr;
  std::string file_name;
};

size_t on_header(char* buf, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const std::string_view line(buf, size * n);
  if (line.rfind("HTTP/", 0) == 0) {
    // A new response (after a redirect, or a 100 Continue): its headers replace the previous ones.
    t->headers.clear();
    const auto sp = line.find(' ');
    t->status = sp == std::string_view::npos ? 0 : std::atol(std::string(line.substr(sp + 1, 3)).c_str());
  } else if (const auto colon = line.find(':'); colon != std::string_view::npos) {
    const std::string name = lower(trim(line.substr(0, colon)));
    std::string value = trim(line.substr(colon + 1));
    if (name == "x-linked-etag") t->linked_etag = value;
    t->headers[name] = std::move(value);
  }
  return size * n;
}

size_t on_body(char* buf, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const size_t len = size * n;
  if (!t->is_file_url && t->status != 200 && t->status != 206) {
    if (t->error_body.size() < 300) t->error_body.append(buf, std::min<size_t>(len, 300 - t->error_body.size()));
    return len;
  }
  if (t->first_write) {
    t->first_write = false;
    if (t->status == 200 && t->offset > 0) {
      // The server ignored our Range: it sends the whole file, so the part starts over.
      std::fflush(t->out);
      if (::ftruncate(::fileno(t->out), 0) != 0) {
        t->abort_reason = fmt::format("cannot truncate '{}': {}", t->part.string(), std::strerror(errno));
        return 0;
      }
      t->offset = 0;
      t->restarted = true;
    } else if (t->status == 206) {
      auto it = t->headers.find("content-range");
      const auto cr = it == t->headers.end() ? std::nullopt : parse_content_range(it->second);
      if (!cr || !cr->start || *cr->start != t->offset) {
        t->abort_reason = fmt::format("server answered the range request for bytes {}- with Content-Range '{}'",
                                      t->offset, it == t->headers.end() ? "(none)" : it->second);
        return 0;  // aborts the transfer before a wrong byte lands in the part
      }
    }
  }
  if (std::fwrite(buf, 1, len, t->out) != len) {
    t->abort_reason = fmt::format("cannot write '{}': {}", t->part.string(), std::strerror(errno));
    return 0;
  }
  t->written += len;
  return len;
}

int on_progress(void* user, curl_off_t dltotal, curl_off_t dlnow, curl_off_t, curl_off_t) {
  auto* t = static_cast<Transfer*>(user);
  if (t->options->progress) {
    const uint64_t total = dltotal > 0 ? t->offset + static_cast<uint64_t>(dltotal) : 0;
    t->options->progress(t->file_name, t->offset + static_cast<uint64_t>(dlnow), total);
  }
  return 0;
}

// Failures where trying again (and resuming) can help.
bool transient(CURLcode c) {
  switch (c) {
    case CURLE_PARTIAL_FILE:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_COULDNT_CONNECT:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_SSL_CONNECT_ERROR:
      return true;
    default:
      return false;
  }
}

struct FileResult {
  uint64_t downloaded = 0;
  int resumed = 0;
  std::optional<std::string> sha256;  // sent by the server
};

// Downloads `url` into `part` (resuming what is there) until the part is complete; throws when it
// cannot be completed. The part is left in place for a later resume unless it is known to be wrong.
FileResult download_to_part(const std::string& url, const fs::path& part, const std::string& file_name,
                            const FetchOptions& options) {
  global_init();
  // An empty part left by a request that failed before any byte arrived is noise; a non-empty one is
  // kept for the next run to resume.
  struct EmptyPartCleanup {
    const fs::path& part;
    ~EmptyPartCleanup() {
      std::error_code ec;
      if (std::uncaught_exceptions() > 0 && fs::exists(part, ec) && fs::file_size(part, ec) == 0) fs::remove(part, ec);
    }
  } cleanup{part};
  FileResult result;
  std::optional<uint64_t> total;  // learned from the server
  const bool is_file_url = lower(url.substr(0, 7)) == "file://";
  long delay_ms = options.retry_delay_ms;
  std::string last_problem;
  for (int attempt = 1; attempt <= std::max(1, options.max_attempts); ++attempt) {
    if (attempt > 1) {
      spdlog::warn("{}: {}; retrying in {} ms (attempt {} of {})", url, last_problem, delay_ms, attempt,
                   options.max_attempts);
      std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
      delay_ms *= 2;
    }
    uint64_t have = size_or_zero(part);
    if (total && have == *total) return result;
    if (total && have > *total) {
      fs::remove(part);
      have = 0;
    }

    std::unique_ptr<FILE, int (*)(FILE*)> out(std::fopen(part.c_str(), "ab"), &std::fclose);
    EVALSVC_CHECK(out != nullptr, IoError, "cannot open '{}' for writing: {}", part.string(), std::strerror(errno));
    Transfer t;
    t.out = out.get();
    t.part = part;
    t.offset = have;
    t.is_file_url = is_file_url;
    t.options = &options;
    t.file_name = file_name;

    std::unique_ptr<CURL, void (*)(CURL*)> curl(curl_easy_init(), &curl_easy_cleanup);
    EVALSVC_CHECK(curl != nullptr, IoError, "curl_easy_init failed");
    char errbuf[CURL_ERROR_SIZE] = {0};
    CURL* h = curl.get();
    const std::string range = fmt::format("{}-", have);
    const std::string agent = "qbench/" + version();
    curl_easy_setopt(h, CURLOPT_URL, url.c_str());
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 1L);  // the hub redirects weights to its CDN
    curl_easy_setopt(h, CURLOPT_MAXREDIRS, 10L);
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https,file");
    curl_easy_setopt(h, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
#else
    curl_easy_setopt(h, CURLOPT_PROTOCOLS, static_cast<long>(CURLPROTO_HTTP | CURLPROTO_HTTPS | CURLPROTO_FILE));
    curl_easy_setopt(h, CURLOPT_REDIR_PROTOCOLS, static_cast<long>(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
    curl_easy_setopt(h, CURLOPT_USERAGENT, agent.c_str());
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, options.connect_timeout_s);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1024L);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, options.stall_timeout_s);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    // Range rather than CURLOPT_RESUME_FROM_LARGE: with the latter curl itself fails a 200 answer, while
    // here on_body can restart the part in place when a server ignores ranges.
    if (have > 0) curl_easy_setopt(h, CURLOPT_RANGE, range.c_str());
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, &on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, &t);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, &on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &t);
    if (options.progress) {
      curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
      curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, &on_progress);
      curl_easy_setopt(h, CURLOPT_XFERINFODATA, &t);
    }
    const CURLcode rc = curl_easy_perform(h);
    const bool flushed = std::fflush(out.get()) == 0;
    out.reset();
    result.downloaded += t.written;
    if (have > 0 && !t.restarted && t.written > 0) ++result.resumed;
    EVALSVC_CHECK(flushed, IoError, "cannot write '{}': {}", part.string(), std::strerror(errno));
    if (!t.abort_reason.empty()) {
      // A wrong Content-Range means the server and our part disagree: start over from zero.
      fs::remove(part);
      last_problem = t.abort_reason;
      continue;
    }
    curl_off_t content_length = -1;
    curl_easy_getinfo(h, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &content_length);

    if (is_file_url) {
      EVALSVC_CHECK(rc == CURLE_OK, IoError, "cannot read {}: {} ({})", url,
                    errbuf[0] ? errbuf : curl_easy_strerror(rc), curl_easy_strerror(rc));
      return result;  // a local copy cannot break off midway
    }

    const long status = t.status;
    if (status == 404 || status == 410) {
      throw IoError(fmt::format("{}: HTTP {}: the file is not there (check the model name and --source)", url, status));
    }
    if (status == 401 || status == 403) {
      throw IoError(fmt::format("{}: HTTP {}: access denied (gated or private models need a token, which qbench "
                                "does not send)",
                                url, status));
    }
    if (status == 416) {
      // Our part reaches at least the end of the file: complete if its size is the file's size.
      auto it = t.headers.find("content-range");
      const auto cr = it == t.headers.end() ? std::nullopt : parse_content_range(it->second);
      if (cr && cr->total && *cr->total == have) return result;
      fs::remove(part);
      last_problem = fmt::format("HTTP 416 for bytes {}- (part larger than the file); starting over", have);
      continue;
    }
    if (status >= 500 || status == 429 || status == 408) {
      last_problem = fmt::format("HTTP {}", status);
      continue;
    }
    if (status >= 300 || (rc == CURLE_OK && status != 200 && status != 206)) {
      throw IoError(fmt::format("{}: unexpected HTTP {}{}", url, status,
                                t.error_body.empty() ? "" : ": " + trim(t.error_body)));
    }
    if (rc != CURLE_OK) {
      const std::string what = errbuf[0] ? errbuf : curl_easy_strerror(rc);
      if (!transient(rc)) throw IoError(fmt::format("{}: {}", url, what));
      last_problem = fmt::format("transfer broke off after {} bytes: {}", have + t.written, what);
    }

    // What the complete file's size is, from this response.
    if (status == 206) {
      auto it = t.headers.find("content-range");
      const auto cr = it == t.headers.end() ? std::nullopt : parse_content_range(it->second);
      if (cr && cr->total) total = *cr->total;
    } else if (status == 200 && content_length >= 0) {
      total = static_cast<uint64_t>(content_length);
    }
    // The server's sha256 is kept only when every attempt agrees: a changed tag means the file changed
    // on the server between attempts, and bytes of two versions must not be stitched together.
    std::optional<std::string> sha = sha256_of_etag(t.linked_etag);
    if (!sha) {
      auto it = t.headers.find("etag");
      if (it != t.headers.end()) sha = sha256_of_etag(it->second);
    }
    if (sha && result.sha256 && *sha != *result.sha256) {
      fs::remove(part);
      result.sha256 = sha;
      total.reset();
      last_problem = "the file changed on the server between attempts; starting over";
      continue;
    }
    if (sha) result.sha256 = sha;

    const uint64_t now = size_or_zero(part);
    if (rc != CURLE_OK) continue;  // resume from `now`
    if (!total) return result;     // no length given (chunked): curl saw the proper end of the body
    if (now == *total) return result;
    if (now > *total) {
      fs::remove(part);
      last_problem = fmt::format("received {} bytes, more than the announced {}; starting over", now, *total);
      total.reset();
      continue;
    }
    last_problem = fmt::format("got {} of {} bytes (Content-Length)", now, *total);
  }
  throw IoError(fmt::format("{}: giving up after {} attempts: {}; '{}' is kept ({} bytes) and a rerun resumes it",
                            url, options.max_attempts, last_problem, part.string(), size_or_zero(part)));
}

}  // namespace

std::string hub_source(const std::string& model) {
  EVALSVC_CHECK(!model.empty() && model.find("..") == std::string::npos && model.front() != '/' &&
                    model.find_first_of(" ?#\\") == std::string::npos,
                InputError, "'{}' is not a hub model name (e.g. gpt2 or openai-community/gpt2)", model);
  return "https://huggingface.co/" + model + "/resolve/main/";
}

FetchReport fetch_model(const std::string& source_base, const fs::path& dest, const FetchOptions& options) {
  EVALSVC_CHECK(!source_base.empty(), InputError, "fetch: empty source URL");
  const std::string base = source_base.back() == '/' ? source_base : source_base + "/";
  FetchReport report;
  const fs::path config_final = dest / "config.json", weights_final = dest / "model.safetensors";
  if (!options.force && fs::exists(config_final) && fs::exists(weights_final)) {
    try {
      inspect_checkpoint(dest);
      report.already_present = true;
      spdlog::info("{} already holds a valid checkpoint; nothing to download (use --force to fetch again)",
                   dest.string());
      return report;
    } catch (const Error& e) {
      spdlog::warn("{} holds an invalid checkpoint ({}); downloading again", dest.string(), e.what());
    }
  }
  fs::create_directories(dest);
  const fs::path config_part = dest / "config.json.part", weights_part = dest / "model.safetensors.part";

  const FileResult cr = download_to_part(base + "config.json", config_part, "config.json", options);
  ModelConfig cfg;
  try {
    const std::string text = read_file(config_part);
    const auto j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    EVALSVC_CHECK(!j.is_discarded(), FormatError, "not valid JSON ({} bytes)", text.size());
    cfg = ModelConfig::from_json(j);
  } catch (const FormatError& e) {
    fs::remove(config_part);
    throw FormatError(fmt::format("{}config.json is not a usable GPT-2 config: {}", base, e.what()));
  }

  const FileResult wr = download_to_part(base + "model.safetensors", weights_part, "model.safetensors", options);
  report.bytes_downloaded = cr.downloaded + wr.downloaded;
  report.resumed_transfers = cr.resumed + wr.resumed;
  try {
    if (wr.sha256) {
      const std::string got = sha256_file_hex(weights_part);
      EVALSVC_CHECK(got == *wr.sha256, FormatError, "sha256 {} does not match the server's {}", got, *wr.sha256);
      report.sha256_verified = true;
    }
    // The whole file is parsed, not only its header, so a body that does not match its header is caught
    // before it is renamed into place.
    SafetensorsFile f = read_safetensors(weights_part);
    CheckpointKind kind{};
    normalize_gpt2_state(std::move(f.tensors), cfg, &kind);
    spdlog::info("{}: {} checkpoint for n_layer={} n_embd={} verified{}", dest.string(), to_string(kind),
                 cfg.n_layer, cfg.n_embd, report.sha256_verified ? " (sha256 matches the server's)" : "");
  } catch (const FormatError& e) {
    fs::remove(weights_part);  // a rerun must not resume from corrupt bytes
    throw FormatError(fmt::format("{}model.safetensors failed verification: {}", base, e.what()));
  }
  // Weights first: a checkpoint is only loadable once config.json is there too.
  fs::rename(weights_part, weights_final);
  fs::rename(config_part, config_final);
  return report;
}

}  // namespace evalsvc::worker
