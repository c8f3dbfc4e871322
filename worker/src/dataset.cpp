#include "evalsvc/worker/dataset.h"

#include <algorithm>
#include <numeric>
#include <cstring>
#include <exception>
#include <optional>
#include <string>
#include <thread>

#include <spdlog/spdlog.h>

#include "evalsvc/common/error.h"
#include "evalsvc/common/hash.h"
#include "evalsvc/common/paths.h"

namespace fs = std::filesystem;

namespace evalsvc::worker {
namespace {

// Cache file layout (host byte order, checked by a marker; version bumps on any change):
//   char magic[8] "QBTOKDS\0" | u32 version | u32 byte-order marker 0x01020304 | char key[64] (hex)
//   i64 max_len | u64 n | u64 n_tokens | u64 truncated_rows
//   i32 labels[n] | i32 full_lengths[n] | i64 offsets[n+1] | i32 tokens[n_tokens]
//   u8 sha256[32] of every byte before it
constexpr char kMagic[8] = {'Q', 'B', 'T', 'O', 'K', 'D', 'S', '\0'};
constexpr uint32_t kVersion = 1;
constexpr uint32_t kByteOrder = 0x01020304;
constexpr size_t kKeyLen = 64;
constexpr size_t kHeaderSize = sizeof(kMagic) + 4 + 4 + kKeyLen + 8 * 4;
constexpr size_t kChecksumSize = Sha256::kDigestSize;
constexpr int32_t kNumClasses = static_cast<int32_t>(kClassNames.size());

template <typename T>
void put(std::string& out, const T& v) {
  out.append(reinterpret_cast<const char*>(&v), sizeof(T));
}
template <typename T>
void put_array(std::string& out, const std::vector<T>& v) {
  out.append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

// Bounds-checked reader over the cache bytes; every read is preceded by a size check in parse_cache.
struct Reader {
  std::string_view bytes;
  size_t pos = 0;
  template <typename T>
  T get() {
    T v;
    std::memcpy(&v, bytes.data() + pos, sizeof(T));
    pos += sizeof(T);
    return v;
  }
  template <typename T>
  void get_array(std::vector<T>& v, size_t count) {
    v.resize(count);
    std::memcpy(v.data(), bytes.data() + pos, count * sizeof(T));
    pos += count * sizeof(T);
  }
};

std::string cache_key(const std::string& csv_sha256, const Tokenizer& tok, int64_t max_len, size_t limit) {
  return sha256_hex(fmt::format("qbench tokenized dataset v{}\ncsv_sha256={}\ntokenizer={}\nmax_len={}\nlimit={}\n",
                                kVersion, csv_sha256, tok.fingerprint(), max_len, limit));
}

fs::path cache_file(const fs::path& csv, const fs::path& cache_dir, const std::string& key) {
  return cache_dir / fmt::format("{}-{}.qbtok", csv.stem().string(), key.substr(0, 16));
}

std::string serialize(const TokenizedDataset& d, const std::string& key) {
  std::string out;
  out.reserve(kHeaderSize + d.labels.size() * 16 + d.tokens.size() * 4 + 8 + kChecksumSize);
  out.append(kMagic, sizeof(kMagic));
  put(out, kVersion);
  put(out, kByteOrder);
  out.append(key);
  put(out, d.max_len);
  put(out, static_cast<uint64_t>(d.labels.size()));
  put(out, static_cast<uint64_t>(d.tokens.size()));
  put(out, static_cast<uint64_t>(d.truncated_rows));
  put_array(out, d.labels);
  put_array(out, d.full_lengths);
  put_array(out, d.offsets);
  put_array(out, d.tokens);
  Sha256 h;
  h.update(out);
  const Sha256::Digest digest = h.digest();
  out.append(reinterpret_cast<const char*>(digest.data()), digest.size());
  return out;
}

// The dataset in `bytes`, or why it cannot be trusted. Checks run cheapest first; the structural checks
// after the checksum catch a file that is intact but was written by a buggy or foreign producer.
std::optional<TokenizedDataset> parse_cache(std::string_view bytes, const std::string& key, int64_t max_len,
                                            int32_t vocab_size, std::string& why) {
  if (bytes.size() < kHeaderSize + kChecksumSize) {
    why = fmt::format("{} bytes, expected at least {}", bytes.size(), kHeaderSize + kChecksumSize);
    return std::nullopt;
  }
  if (std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) != 0) {
    why = "bad magic, expected a qbench token cache";
    return std::nullopt;
  }
  Reader r{bytes, sizeof(kMagic)};
  const auto version = r.get<uint32_t>();
  if (version != kVersion) {
    why = fmt::format("version {}, expected {}", version, kVersion);
    return std::nullopt;
  }
  if (r.get<uint32_t>() != kByteOrder) {
    why = "written with another byte order";
    return std::nullopt;
  }
  if (bytes.substr(r.pos, kKeyLen) != key) {
    why = "key mismatch (another CSV, tokenizer, max_len or limit)";
    return std::nullopt;
  }
  r.pos += kKeyLen;
  TokenizedDataset d;
  d.max_len = r.get<int64_t>();
  const auto n = r.get<uint64_t>();
  const auto n_tokens = r.get<uint64_t>();
  const auto truncated = r.get<uint64_t>();
  if (d.max_len != max_len) {
    why = fmt::format("max_len {}, expected {}", d.max_len, max_len);
    return std::nullopt;
  }
  // Bound the counts by the file size before multiplying, so a corrupt count cannot overflow.
  if (n > bytes.size() || n_tokens > bytes.size()) {
    why = fmt::format("counts n = {}, tokens = {} exceed the file size {}", n, n_tokens, bytes.size());
    return std::nullopt;
  }
  const uint64_t expected = kHeaderSize + n * 4 + n * 4 + (n + 1) * 8 + n_tokens * 4 + kChecksumSize;
  if (bytes.size() != expected) {
    why = fmt::format("{} bytes, expected {} for {} rows and {} tokens", bytes.size(), expected, n, n_tokens);
    return std::nullopt;
  }
  Sha256 h;
  h.update(bytes.substr(0, bytes.size() - kChecksumSize));
  const Sha256::Digest digest = h.digest();
  if (std::memcmp(digest.data(), bytes.data() + bytes.size() - kChecksumSize, kChecksumSize) != 0) {
    why = "checksum mismatch";
    return std::nullopt;
  }
  r.get_array(d.labels, n);
  r.get_array(d.full_lengths, n);
  r.get_array(d.offsets, n + 1);
  r.get_array(d.tokens, n_tokens);
  d.truncated_rows = truncated;

  if (d.offsets.front() != 0 || d.offsets.back() != static_cast<int64_t>(n_tokens)) {
    why = "offsets do not span the token buffer";
    return std::nullopt;
  }
  size_t truncated_count = 0;
  for (size_t i = 0; i < n; ++i) {
    const int64_t len = d.offsets[i + 1] - d.offsets[i];
    if (d.labels[i] < 0 || d.labels[i] >= kNumClasses || len < 1 || len > max_len ||
        len != std::min<int64_t>(d.full_lengths[i], max_len)) {
      why = fmt::format("row {} is inconsistent (label {}, {} tokens, {} before truncation)", i, d.labels[i], len,
                        d.full_lengths[i]);
      return std::nullopt;
    }
    truncated_count += d.full_lengths[i] > max_len;
  }
  if (truncated_count != d.truncated_rows) {
    why = fmt::format("truncated_rows {} but {} rows are truncated", d.truncated_rows, truncated_count);
    return std::nullopt;
  }
  for (size_t t = 0; t < d.tokens.size(); ++t) {
    if (d.tokens[t] < 0 || d.tokens[t] >= vocab_size) {
      why = fmt::format("token {} = {} is outside the vocabulary of {}", t, d.tokens[t], vocab_size);
      return std::nullopt;
    }
  }
  return d;
}

}  // namespace

std::span<const int32_t> TokenizedDataset::row(size_t i) const {
  EVALSVC_ASSERT(i < labels.size(), "row {} of a dataset of {} rows", i, labels.size());
  const auto begin = static_cast<size_t>(offsets[i]);
  const auto end = static_cast<size_t>(offsets[i + 1]);
  return {tokens.data() + begin, end - begin};
}

TokenizedDataset tokenize_rows(const std::vector<NewsRow>& rows, const Tokenizer& tok, int64_t max_len, int threads) {
  EVALSVC_CHECK(max_len >= 1, InputError, "tokenize_rows: max_len = {}, expected >= 1", max_len);
  const size_t n = rows.size();
  size_t workers = threads > 0 ? static_cast<size_t>(threads) : std::max(1u, std::thread::hardware_concurrency());
  // A thread per few hundred rows at least: below that, starting threads costs more than it saves.
  workers = std::max<size_t>(1, std::min(workers, (n + 255) / 256));

  struct Chunk {
    size_t begin = 0, end = 0;
    std::vector<int32_t> tokens;
    std::vector<int32_t> lengths, full_lengths;
    std::exception_ptr error;
  };
  std::vector<Chunk> chunks(workers);
  auto work = [&](Chunk& c) {
    size_t i = c.begin;
    try {
      for (; i < c.end; ++i) {
        const size_t before = c.tokens.size();
        tok.encode_into(rows[i].text, c.tokens);
        const size_t full = c.tokens.size() - before;
        EVALSVC_CHECK(full > 0, InputError, "text gives no tokens, expected at least one");
        EVALSVC_CHECK(full <= static_cast<size_t>(INT32_MAX), InputError, "{} tokens, expected at most {}", full,
                      INT32_MAX);
        const size_t kept = std::min(full, static_cast<size_t>(max_len));
        c.tokens.resize(before + kept);
        c.lengths.push_back(static_cast<int32_t>(kept));
        c.full_lengths.push_back(static_cast<int32_t>(full));
      }
    } catch (const std::exception& e) {
      c.error = std::make_exception_ptr(
          InputError(fmt::format("row {} (CSV line {}): {}", i, rows[i].line, e.what())));
    }
  };
  std::vector<std::thread> pool;
  for (size_t w = 0; w < workers; ++w) {
    chunks[w].begin = n * w / workers;
    chunks[w].end = n * (w + 1) / workers;
    if (w + 1 < workers) pool.emplace_back(work, std::ref(chunks[w]));
  }
  work(chunks[workers - 1]);  // the calling thread takes the last chunk
  for (auto& t : pool) t.join();
  // Chunks are in row order, so the first error found is the one of the earliest bad row.
  for (const auto& c : chunks) {
    if (c.error) std::rethrow_exception(c.error);
  }

  TokenizedDataset d;
  d.max_len = max_len;
  d.labels.reserve(n);
  d.offsets.reserve(n + 1);
  d.full_lengths.reserve(n);
  size_t total = 0;
  for (const auto& c : chunks) total += c.tokens.size();
  d.tokens.reserve(total);
  d.offsets.push_back(0);
  for (const auto& c : chunks) {
    d.tokens.insert(d.tokens.end(), c.tokens.begin(), c.tokens.end());
    for (size_t k = 0; k < c.lengths.size(); ++k) {
      d.offsets.push_back(d.offsets.back() + c.lengths[k]);
      d.full_lengths.push_back(c.full_lengths[k]);
      d.truncated_rows += c.full_lengths[k] > max_len;
    }
  }
  for (const auto& r : rows) d.labels.push_back(r.label);
  return d;
}

fs::path cache_path(const fs::path& csv, const Tokenizer& tok, int64_t max_len, const fs::path& cache_dir,
                    size_t limit) {
  return cache_file(csv, cache_dir, cache_key(sha256_file_hex(csv), tok, max_len, limit));
}

TokenizedDataset load_or_tokenize(const fs::path& csv, const Tokenizer& tok, int64_t max_len, const fs::path& cache_dir,
                                  size_t limit, bool* cache_hit) {
  EVALSVC_CHECK(max_len >= 1, InputError, "load_or_tokenize: max_len = {}, expected >= 1", max_len);
  if (cache_hit != nullptr) *cache_hit = false;
  const std::string key = cache_key(sha256_file_hex(csv), tok, max_len, limit);
  const fs::path path = cache_file(csv, cache_dir, key);

  std::error_code ec;
  if (fs::exists(path, ec)) {
    std::string why;
    std::optional<TokenizedDataset> cached;
    try {
      cached = parse_cache(read_file(path), key, max_len, tok.vocab_size(), why);
    } catch (const IoError& e) {
      why = e.what();
    }
    if (cached) {
      if (cache_hit != nullptr) *cache_hit = true;
      spdlog::debug("token cache hit: {} ({} rows)", path.string(), cached->size());
      return std::move(*cached);
    }
    spdlog::warn("token cache {} is unusable ({}); tokenizing {} again", path.string(), why, csv.string());
  }

  TokenizedDataset d = tokenize_rows(read_ag_news_csv(csv, limit), tok, max_len);
  try {
    write_file_atomic(path, serialize(d, key));
  } catch (const std::exception& e) {
    spdlog::warn("cannot write token cache {}: {} (continuing without it)", path.string(), e.what());
  }
  return d;
}

TokenizedDataset head(const TokenizedDataset& d, size_t n) {
  std::vector<size_t> idx(std::min(n, d.size()));
  std::iota(idx.begin(), idx.end(), size_t{0});
  return select(d, idx);
}

TokenizedDataset select(const TokenizedDataset& d, const std::vector<size_t>& idx) {
  TokenizedDataset out;
  out.max_len = d.max_len;
  out.labels.reserve(idx.size());
  out.full_lengths.reserve(idx.size());
  out.offsets.reserve(idx.size() + 1);
  out.offsets.push_back(0);
  for (size_t k = 0; k < idx.size(); ++k) {
    const size_t i = idx[k];
    EVALSVC_CHECK(i < d.size(), InputError, "select: index[{}] = {}, expected < {} (the dataset's size)", k, i,
                  d.size());
    const auto r = d.row(i);
    out.tokens.insert(out.tokens.end(), r.begin(), r.end());
    out.offsets.push_back(static_cast<int64_t>(out.tokens.size()));
    out.labels.push_back(d.labels[i]);
    // A dataset assembled by hand may lack full lengths; then the kept length is the best we know.
    const int32_t full = i < d.full_lengths.size() ? d.full_lengths[i] : static_cast<int32_t>(r.size());
    out.full_lengths.push_back(full);
    out.truncated_rows += full > d.max_len;
  }
  return out;
}

}  // namespace evalsvc::worker
