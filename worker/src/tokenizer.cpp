#include "evalsvc/worker/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <fmt/format.h>
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstring>
#include <limits>
#include <optional>
#include <queue>
#include <utility>

#include "evalsvc/common/error.h"
#include "evalsvc/common/hash.h"
#include "evalsvc/common/paths.h"

namespace evalsvc::worker {
namespace {

// SPEC section 1's pattern, with `\s` spelled out as Unicode White_Space. PCRE2's UCP `\s` also matches
// U+180E (MONGOLIAN VOWEL SEPARATOR, no longer White_Space since Unicode 6.3), while Python's `regex`
// (GPT-2's encoder.py, Hugging Face) and Rust's regex (tiktoken) do not; the explicit class keeps the
// three in agreement.
#define EVALSVC_WS \
  "\\t\\n\\x{0B}\\f\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"
constexpr const char* kPattern = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" EVALSVC_WS
                                 "\\p{L}\\p{N}]+|[" EVALSVC_WS "]+(?![^" EVALSVC_WS "])|[" EVALSVC_WS "]+";
#undef EVALSVC_WS

constexpr uint32_t kNoRank = std::numeric_limits<uint32_t>::max();
// Words longer than this (in bytes) use the O(n log n) heap merge; shorter ones a linear scan, which is
// faster for the handful of symbols a typical word has.
constexpr size_t kLinearBpeMax = 96;
// Only words up to this many bytes enter the per-thread cache: longer ones rarely repeat.
constexpr size_t kCacheMaxWordBytes = 64;
// The per-thread cache is dropped wholesale past these sizes (bounded memory, no LRU bookkeeping).
constexpr size_t kCacheMaxEntries = 1 << 16;
constexpr size_t kCacheMaxIds = 1 << 20;
// The per-thread hot cache in front of everything: direct-mapped, words of up to 16 bytes and 3 ids held
// inline (32 bytes an entry, 1 MiB a thread). Word frequencies are Zipfian: on AG News 32k entries could
// hold 98% of the pieces, and a hit touches one cache line instead of probing the 50k-entry tables, whose
// probes are mostly cache misses (they were 60% of the time before this cache).
constexpr size_t kHotEntries = 1 << 15;
constexpr size_t kHotMaxBytes = 16;
constexpr size_t kHotMaxIds = 3;

// ---------------------------------------------------------------------------------------------------------
// Byte <-> unicode alphabet of GPT-2's encoder.py (bytes_to_unicode): printable Latin-1 bytes map to
// themselves, the other 68 bytes to U+0100.. in byte order, so every token is a printable string.

struct ByteAlphabet {
  std::array<uint32_t, 256> to_cp{};
  std::array<int16_t, 324> to_byte{};  // code point -> byte, -1 when not in the alphabet
  ByteAlphabet() {
    to_byte.fill(-1);
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      to_cp[b] = printable ? b : next++;
      to_byte[to_cp[b]] = static_cast<int16_t>(b);
    }
  }
};
const ByteAlphabet& alphabet() {
  static const ByteAlphabet a;
  return a;
}

// ---------------------------------------------------------------------------------------------------------
// UTF-8 validation (strict, as PCRE2 and Python define it).

struct Utf8Problem {
  size_t offset;
  const char* what;
};

std::optional<Utf8Problem> find_invalid_utf8(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  auto cont = [&](size_t k) { return k < n && (p[k] & 0xC0) == 0x80; };
  while (i < n) {
    if (i + 8 <= n) {
      uint64_t w;
      std::memcpy(&w, p + i, 8);
      if ((w & 0x8080808080808080ull) == 0) {
        i += 8;
        continue;
      }
    }
    const unsigned c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    if (c < 0xC0) return Utf8Problem{i, "continuation byte without a lead byte"};
    if (c < 0xC2) return Utf8Problem{i, "overlong 2-byte sequence"};
    size_t need;
    unsigned lo = 0x80, hi = 0xBF;  // allowed range of the first continuation byte
    if (c < 0xE0) {
      need = 1;
    } else if (c < 0xF0) {
      need = 2;
      if (c == 0xE0) lo = 0xA0;  // overlong
      if (c == 0xED) hi = 0x9F;  // UTF-16 surrogates
    } else if (c < 0xF5) {
      need = 3;
      if (c == 0xF0) lo = 0x90;  // overlong
      if (c == 0xF4) hi = 0x8F;  // above U+10FFFF
    } else {
      return Utf8Problem{i, "byte never used in UTF-8 (0xF5..0xFF)"};
    }
    if (i + 1 >= n) return Utf8Problem{i, "truncated multi-byte sequence at end of text"};
    if (p[i + 1] < lo || p[i + 1] > hi) {
      if (!cont(i + 1)) return Utf8Problem{i, "multi-byte sequence cut short by a non-continuation byte"};
      if (c == 0xED) return Utf8Problem{i, "UTF-16 surrogate code point"};
      if (c == 0xF4) return Utf8Problem{i, "code point above U+10FFFF"};
      return Utf8Problem{i, "overlong sequence"};
    }
    for (size_t k = 2; k <= need; ++k) {
      if (i + k >= n) return Utf8Problem{i, "truncated multi-byte sequence at end of text"};
      if (!cont(i + k)) return Utf8Problem{i, "multi-byte sequence cut short by a non-continuation byte"};
    }
    i += need + 1;
  }
  return std::nullopt;
}

void check_utf8(std::string_view s) {
  if (auto bad = find_invalid_utf8(s)) {
    std::string bytes;
    for (size_t k = bad->offset; k < std::min(s.size(), bad->offset + 4); ++k) {
      bytes += fmt::format("{}0x{:02X}", bytes.empty() ? "" : " ", static_cast<unsigned char>(s[k]));
    }
    throw InputError(
        fmt::format("invalid UTF-8 at byte offset {} of {} (bytes {}): {}", bad->offset, s.size(), bytes, bad->what));
  }
}

// ---------------------------------------------------------------------------------------------------------
// Hash tables. Open addressing with linear probing: one cache line per probe in the common case, and no
// node allocations (std::unordered_map costs a heap node and a pointer chase per entry).

inline uint64_t mix64(uint64_t h) {
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ull;
  h ^= h >> 33;
  return h;
}

inline uint64_t hash_bytes(std::string_view s) {
  const char* p = s.data();
  size_t n = s.size();
  uint64_t h = 0x9E3779B97F4A7C15ull ^ (static_cast<uint64_t>(n) * 0xbf58476d1ce4e5b9ull);
  while (n >= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    h = (h ^ w) * 0x94d049bb133111ebull;
    h ^= h >> 29;
    p += 8;
    n -= 8;
  }
  if (n > 0) {
    uint64_t w = 0;
    std::memcpy(&w, p, n);
    h = (h ^ w) * 0x94d049bb133111ebull;
  }
  return mix64(h);
}

/// Byte string -> two uint32 payloads; keys live in one arena.
class StringTable {
 public:
  struct Slot {
    uint64_t hash;
    uint32_t key_off;
    uint32_t key_len;  // kEmpty marks a free slot
    uint32_t a;
    uint32_t b;
  };
  static constexpr uint32_t kEmpty = std::numeric_limits<uint32_t>::max();

  explicit StringTable(size_t expected = 16) { rehash(capacity_for(expected)); }

  const Slot* find(std::string_view key, uint64_t h) const {
    for (size_t i = h & mask_;; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.key_len == kEmpty) return nullptr;
      if (s.hash == h && s.key_len == key.size() &&
          std::memcmp(arena_.data() + s.key_off, key.data(), key.size()) == 0) {
        return &s;
      }
    }
  }

  /// Inserts `key` (which must be absent) with payload (a, b).
  void insert(std::string_view key, uint64_t h, uint32_t a, uint32_t b) {
    if ((size_ + 1) * 2 > slots_.size()) rehash(slots_.size() * 2);
    place(Slot{h, static_cast<uint32_t>(arena_.size()), static_cast<uint32_t>(key.size()), a, b});
    arena_.append(key);
    ++size_;
  }

  void clear() {
    std::fill(slots_.begin(), slots_.end(), Slot{0, 0, kEmpty, 0, 0});
    arena_.clear();
    size_ = 0;
  }
  size_t size() const { return size_; }

 private:
  static size_t capacity_for(size_t n) {
    size_t c = 16;
    while (c < n * 2) c *= 2;
    return c;
  }
  void place(const Slot& slot) {
    size_t i = slot.hash & mask_;
    while (slots_[i].key_len != kEmpty) i = (i + 1) & mask_;
    slots_[i] = slot;
  }
  void rehash(size_t capacity) {
    std::vector<Slot> old = std::move(slots_);
    slots_.assign(capacity, Slot{0, 0, kEmpty, 0, 0});
    mask_ = capacity - 1;
    for (const Slot& s : old) {
      if (s.key_len != kEmpty) place(s);
    }
  }

  std::vector<Slot> slots_;
  std::string arena_;
  size_t mask_ = 0;
  size_t size_ = 0;
};

/// (left id, right id) -> (merge rank, merged id).
class PairTable {
 public:
  struct Value {
    uint32_t rank;
    int32_t merged;
  };
  void reserve(size_t n) {
    size_t c = 16;
    while (c < n * 2) c *= 2;
    keys_.assign(c, kEmptyKey);
    values_.assign(c, Value{kNoRank, -1});
    mask_ = c - 1;
  }
  static uint64_t key(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
  }
  /// False when the pair is already present.
  bool insert(int32_t left, int32_t right, Value v) {
    const uint64_t k = key(left, right);
    for (size_t i = mix64(k) & mask_;; i = (i + 1) & mask_) {
      if (keys_[i] == k) return false;
      if (keys_[i] == kEmptyKey) {
        keys_[i] = k;
        values_[i] = v;
        return true;
      }
    }
  }
  Value find(int32_t left, int32_t right) const {
    const uint64_t k = key(left, right);
    for (size_t i = mix64(k) & mask_;; i = (i + 1) & mask_) {
      if (keys_[i] == k) return values_[i];
      if (keys_[i] == kEmptyKey) return Value{kNoRank, -1};
    }
  }

 private:
  static constexpr uint64_t kEmptyKey = std::numeric_limits<uint64_t>::max();
  std::vector<uint64_t> keys_;
  std::vector<Value> values_;
  size_t mask_ = 0;
};

/// Little-endian u32 into the fingerprint hash (fixed width, so lengths and ids cannot run together).
void sha_u32(Sha256& sha, uint32_t v) {
  const unsigned char b[4] = {static_cast<unsigned char>(v), static_cast<unsigned char>(v >> 8),
                              static_cast<unsigned char>(v >> 16), static_cast<unsigned char>(v >> 24)};
  sha.update(b, 4);
}

// ---------------------------------------------------------------------------------------------------------
// File parsing helpers.

/// 1-based line and column of byte `offset` in `text`.
std::pair<size_t, size_t> line_col(std::string_view text, size_t offset) {
  offset = std::min(offset, text.size());
  size_t line = 1, col = 1;
  for (size_t i = 0; i < offset; ++i) {
    if (text[i] == '\n') {
      ++line;
      col = 1;
    } else {
      ++col;
    }
  }
  return {line, col};
}

/// Decodes one UTF-8 code point at `p[i]` (already known valid); advances i.
uint32_t next_code_point(std::string_view s, size_t& i) {
  const auto c = static_cast<unsigned char>(s[i]);
  if (c < 0x80) {
    ++i;
    return c;
  }
  int extra = c < 0xE0 ? 1 : c < 0xF0 ? 2 : 3;
  uint32_t cp = c & (0x3F >> extra);
  for (int k = 1; k <= extra; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  i += extra + 1;
  return cp;
}

/// Maps a string of alphabet code points to token bytes; nullopt + the bad code point if one is outside.
std::optional<std::string> alphabet_to_bytes(const std::vector<uint32_t>& cps, uint32_t* bad) {
  std::string out;
  out.reserve(cps.size());
  for (uint32_t cp : cps) {
    if (cp >= alphabet().to_byte.size() || alphabet().to_byte[cp] < 0) {
      *bad = cp;
      return std::nullopt;
    }
    out.push_back(static_cast<char>(alphabet().to_byte[cp]));
  }
  return out;
}

/// A minimal reader for encoder.json's shape, {"token": id, ...}, that knows where it is: every error
/// names the line and column (nlohmann::json only keeps positions for syntax errors).
class EncoderJsonReader {
 public:
  EncoderJsonReader(std::string_view text, std::string file) : t_(text), file_(std::move(file)) {}

  struct Entry {
    std::vector<uint32_t> key;  // code points
    int64_t id;
    size_t offset;  // of the key, for messages
  };

  std::vector<Entry> read() {
    std::vector<Entry> out;
    if (auto bad = find_invalid_utf8(t_)) fail(bad->offset, std::string("invalid UTF-8: ") + bad->what);
    skip_ws();
    expect('{');
    skip_ws();
    if (peek() == '}') {
      ++i_;
    } else {
      for (;;) {
        skip_ws();
        Entry e;
        e.offset = i_;
        e.key = read_string();
        skip_ws();
        expect(':');
        skip_ws();
        e.id = read_id();
        out.push_back(std::move(e));
        skip_ws();
        if (peek() == ',') {
          ++i_;
          continue;
        }
        expect('}');
        break;
      }
    }
    skip_ws();
    if (i_ != t_.size()) fail(i_, "unexpected content after the closing '}'");
    return out;
  }

  [[noreturn]] void fail(size_t offset, const std::string& what) const {
    auto [line, col] = line_col(t_, offset);
    throw FormatError(fmt::format("{}:{}:{}: {}", file_, line, col, what));
  }

 private:
  char peek() const { return i_ < t_.size() ? t_[i_] : '\0'; }
  void skip_ws() {
    while (i_ < t_.size() && (t_[i_] == ' ' || t_[i_] == '\n' || t_[i_] == '\r' || t_[i_] == '\t')) ++i_;
  }
  void expect(char c) {
    if (i_ >= t_.size()) fail(i_, fmt::format("expected '{}', got end of file", c));
    if (t_[i_] != c) fail(i_, fmt::format("expected '{}', got '{}'", c, t_[i_]));
    ++i_;
  }
  uint32_t hex4() {
    if (i_ + 4 > t_.size()) fail(i_, "truncated \\u escape");
    uint32_t v = 0;
    for (int k = 0; k < 4; ++k) {
      char c = t_[i_ + k];
      int d = c >= '0' && c <= '9'   ? c - '0'
              : c >= 'a' && c <= 'f' ? c - 'a' + 10
              : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                     : -1;
      if (d < 0) fail(i_ + k, fmt::format("bad hex digit '{}' in \\u escape", c));
      v = v * 16 + d;
    }
    i_ += 4;
    return v;
  }
  std::vector<uint32_t> read_string() {
    if (peek() != '"') fail(i_, i_ >= t_.size() ? "expected a string key, got end of file" : "expected a string key");
    ++i_;
    std::vector<uint32_t> cps;
    for (;;) {
      if (i_ >= t_.size()) fail(i_, "unterminated string");
      const auto c = static_cast<unsigned char>(t_[i_]);
      if (c == '"') {
        ++i_;
        return cps;
      }
      if (c < 0x20) fail(i_, fmt::format("control character 0x{:02X} inside a string", c));
      if (c != '\\') {
        cps.push_back(next_code_point(t_, i_));
        continue;
      }
      const size_t esc = i_++;
      if (i_ >= t_.size()) fail(esc, "unterminated escape");
      const char e = t_[i_++];
      switch (e) {
        case '"':
          cps.push_back('"');
          break;
        case '\\':
          cps.push_back('\\');
          break;
        case '/':
          cps.push_back('/');
          break;
        case 'b':
          cps.push_back('\b');
          break;
        case 'f':
          cps.push_back('\f');
          break;
        case 'n':
          cps.push_back('\n');
          break;
        case 'r':
          cps.push_back('\r');
          break;
        case 't':
          cps.push_back('\t');
          break;
        case 'u': {
          uint32_t v = hex4();
          if (v >= 0xD800 && v <= 0xDBFF) {
            if (i_ + 2 > t_.size() || t_[i_] != '\\' || t_[i_ + 1] != 'u')
              fail(esc, "high surrogate without a low one");
            i_ += 2;
            uint32_t lo = hex4();
            if (lo < 0xDC00 || lo > 0xDFFF) fail(esc, "high surrogate followed by a non-low surrogate");
            v = 0x10000 + ((v - 0xD800) << 10) + (lo - 0xDC00);
          } else if (v >= 0xDC00 && v <= 0xDFFF) {
            fail(esc, "lone low surrogate");
          }
          cps.push_back(v);
          break;
        }
        default:
          fail(esc, fmt::format("unknown escape '\\{}'", e));
      }
    }
  }
  int64_t read_id() {
    const size_t start = i_;
    if (peek() == '-') fail(i_, "token id must be non-negative");
    int64_t v = 0;
    while (i_ < t_.size() && t_[i_] >= '0' && t_[i_] <= '9') {
      v = v * 10 + (t_[i_] - '0');
      if (v > std::numeric_limits<int32_t>::max()) fail(start, "token id above 2^31-1");
      ++i_;
    }
    if (i_ == start) fail(i_, "expected an integer token id");
    if (i_ < t_.size() && (t_[i_] == '.' || t_[i_] == 'e' || t_[i_] == 'E')) fail(start, "token id must be an integer");
    return v;
  }

  std::string_view t_;
  std::string file_;
  size_t i_ = 0;
};

// ---------------------------------------------------------------------------------------------------------
// Per-thread state: PCRE2 match data + JIT stack (not shareable between threads) and the word cache.

struct Pcre2Scratch {
  pcre2_match_data* md = nullptr;
  pcre2_match_context* mctx = nullptr;
  pcre2_jit_stack* jit_stack = nullptr;
  Pcre2Scratch() {
    md = pcre2_match_data_create(1, nullptr);
    mctx = pcre2_match_context_create(nullptr);
    // A generous JIT stack: the pattern only backtracks inside one run of spaces, but a hostile input could
    // be a megabyte of them.
    jit_stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
    if (md == nullptr || mctx == nullptr || jit_stack == nullptr) {
      release();
      throw std::bad_alloc();
    }
    pcre2_jit_stack_assign(mctx, nullptr, jit_stack);
  }
  ~Pcre2Scratch() { release(); }
  Pcre2Scratch(const Pcre2Scratch&) = delete;
  Pcre2Scratch& operator=(const Pcre2Scratch&) = delete;
  void release() {
    if (md) pcre2_match_data_free(md);
    if (mctx) pcre2_match_context_free(mctx);
    if (jit_stack) pcre2_jit_stack_free(jit_stack);
    md = nullptr;
    mctx = nullptr;
    jit_stack = nullptr;
  }
};

struct HotEntry {
  uint64_t k0 = 0, k1 = 0;  // the word's bytes, zero-padded
  uint32_t len = 0;         // 0 = empty (pieces are never empty)
  int32_t ids[kHotMaxIds] = {};
};
static_assert(sizeof(HotEntry) == 32);

/// Up to 16 bytes of `s` as two zero-padded words.
inline void load16(std::string_view s, uint64_t& k0, uint64_t& k1) {
  char buf[16] = {};
  std::memcpy(buf, s.data(), s.size());
  std::memcpy(&k0, buf, 8);
  std::memcpy(&k1, buf + 8, 8);
}

struct ThreadState {
  Pcre2Scratch pcre;
  uint64_t cache_owner = 0;  // Impl::uid of the tokenizer the caches belong to
  std::vector<HotEntry> hot = std::vector<HotEntry>(kHotEntries);
  StringTable cache{1024};  // word -> (offset, count) into cache_ids
  std::vector<int32_t> cache_ids;
  // BPE scratch, reused so a word costs no allocation.
  std::vector<int32_t> sym;
  std::vector<uint32_t> rank;
  std::vector<int32_t> next, prev;
};

ThreadState& thread_state() {
  thread_local ThreadState state;
  return state;
}

std::atomic<uint64_t> g_next_uid{1};

}  // namespace

// ---------------------------------------------------------------------------------------------------------

struct Tokenizer::Impl {
  uint64_t uid = g_next_uid.fetch_add(1);
  std::string token_arena;             // bytes of every token, in id order
  std::vector<uint32_t> token_offset;  // size vocab+1
  std::array<int32_t, 256> byte_id{};  // id of each single-byte token
  PairTable ranks;
  int32_t n_merges = 0;
  StringTable whole{1};  // bytes -> id, for tokens that BPE reproduces as a single token
  size_t max_token_bytes = 0;
  int32_t eot_id = -1;  // id whose bytes are "<|endoftext|>", -1 if none
  std::string fingerprint;
  pcre2_code* code = nullptr;
  bool jit = false;

  Impl() = default;
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;
  ~Impl() {
    if (code) pcre2_code_free(code);
  }

  int32_t vocab() const { return static_cast<int32_t>(token_offset.size()) - 1; }
  std::string_view bytes_of(int32_t id) const {
    return std::string_view(token_arena).substr(token_offset[id], token_offset[id + 1] - token_offset[id]);
  }

  void compile_pattern() {
    int err = 0;
    PCRE2_SIZE err_off = 0;
    code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(kPattern), PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &err,
                         &err_off, nullptr);
    if (code == nullptr) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof msg);
      throw InternalError(fmt::format("PCRE2 rejected the pre-tokenizer pattern at offset {}: {}", err_off,
                                      reinterpret_cast<const char*>(msg)));
    }
    // JIT is optional: PCRE2 builds without it (or with W^X memory policies) fall back to the interpreter.
    jit = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
  }

  /// Calls f(piece) for each pre-tokenizer piece of valid UTF-8 `text`, in order.
  template <typename F>
  void for_each_piece(std::string_view text, ThreadState& ts, F&& f) const {
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    const size_t n = text.size();
    size_t off = 0;
    PCRE2_SIZE* ov = pcre2_get_ovector_pointer(ts.pcre.md);
    while (off < n) {
      int rc = jit ? pcre2_jit_match(code, subject, n, off, 0, ts.pcre.md, ts.pcre.mctx)
                   : pcre2_match(code, subject, n, off, PCRE2_NO_UTF_CHECK, ts.pcre.md, ts.pcre.mctx);
      if (rc == PCRE2_ERROR_NOMATCH) break;  // cannot happen: every character is \s, \p{L}, \p{N} or other
      if (rc < 0) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(rc, msg, sizeof msg);
        throw InputError(fmt::format("pre-tokenizer failed at byte offset {} of {}: {}", off, n,
                                     reinterpret_cast<const char*>(msg)));
      }
      const size_t start = ov[0], end = ov[1];
      EVALSVC_ASSERT(end > start && start >= off && end <= n, "empty or out-of-range match [{}, {}) at {}", start, end,
                     off);
      f(text.substr(start, end - start));
      off = end;
    }
  }

  /// BPE of one word (no fast path, no cache): appends ids to `out`.
  void bpe(std::string_view word, ThreadState& ts, std::vector<int32_t>& out) const {
    const size_t n = word.size();
    if (n == 0) return;
    if (n == 1) {
      out.push_back(byte_id[static_cast<unsigned char>(word[0])]);
      return;
    }
    if (n > kLinearBpeMax) {
      bpe_heap(word, ts, out);
      return;
    }
    auto& sym = ts.sym;
    auto& rank = ts.rank;
    sym.resize(n);
    rank.resize(n);
    for (size_t i = 0; i < n; ++i) sym[i] = byte_id[static_cast<unsigned char>(word[i])];
    // rank[i] is the rank of the pair (sym[i], sym[i+1]); merged ids are looked up again on merge, which is
    // cheaper than carrying them through every erase.
    size_t m = n;
    for (size_t i = 0; i + 1 < m; ++i) rank[i] = ranks.find(sym[i], sym[i + 1]).rank;
    rank[m - 1] = kNoRank;
    for (;;) {
      uint32_t best = kNoRank;
      size_t at = 0;
      for (size_t i = 0; i + 1 < m; ++i) {
        if (rank[i] < best) {  // strict: the leftmost of equal ranks wins, as in tiktoken
          best = rank[i];
          at = i;
        }
      }
      if (best == kNoRank) break;
      sym[at] = ranks.find(sym[at], sym[at + 1]).merged;
      std::memmove(&sym[at + 1], &sym[at + 2], (m - at - 2) * sizeof(int32_t));
      std::memmove(&rank[at + 1], &rank[at + 2], (m - at - 2) * sizeof(uint32_t));
      --m;
      rank[m - 1] = kNoRank;
      if (at + 1 < m) rank[at] = ranks.find(sym[at], sym[at + 1]).rank;
      if (at > 0) rank[at - 1] = ranks.find(sym[at - 1], sym[at]).rank;
    }
    out.insert(out.end(), sym.begin(), sym.begin() + static_cast<std::ptrdiff_t>(m));
  }

  /// Same result as the linear scan, O(n log n): a min-heap of (rank, position) over a linked list, with
  /// stale entries skipped on pop. Positions are original byte indices, so equal ranks pop leftmost first.
  void bpe_heap(std::string_view word, ThreadState& ts, std::vector<int32_t>& out) const {
    const int32_t n = static_cast<int32_t>(word.size());
    auto& sym = ts.sym;
    auto& next = ts.next;
    auto& prev = ts.prev;
    sym.resize(n);
    next.resize(n);
    prev.resize(n);
    for (int32_t i = 0; i < n; ++i) {
      sym[i] = byte_id[static_cast<unsigned char>(word[i])];
      next[i] = i + 1 < n ? i + 1 : -1;
      prev[i] = i - 1;
    }
    struct Cand {
      uint32_t rank;
      int32_t pos, left, right;
      bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
    auto push = [&](int32_t i) {
      if (i < 0 || next[i] < 0) return;
      const uint32_t r = ranks.find(sym[i], sym[next[i]]).rank;
      if (r != kNoRank) heap.push(Cand{r, i, sym[i], sym[next[i]]});
    };
    for (int32_t i = 0; i + 1 < n; ++i) push(i);
    while (!heap.empty()) {
      const Cand c = heap.top();
      heap.pop();
      const int32_t j = next[c.pos];
      if (sym[c.pos] != c.left || j < 0 || sym[j] != c.right) continue;  // stale
      sym[c.pos] = ranks.find(c.left, c.right).merged;
      sym[j] = -1;  // dead; its position is never reachable again through next/prev
      next[c.pos] = next[j];
      if (next[j] >= 0) prev[next[j]] = c.pos;
      push(prev[c.pos]);
      push(c.pos);
    }
    for (int32_t i = 0; i >= 0; i = next[i]) out.push_back(sym[i]);
  }

  /// Encodes valid UTF-8 `text`, appending to `out`.
  void encode_valid(std::string_view text, std::vector<int32_t>& out) const {
    ThreadState& ts = thread_state();
    if (ts.cache_owner != uid) {
      ts.cache.clear();
      ts.cache_ids.clear();
      std::fill(ts.hot.begin(), ts.hot.end(), HotEntry{});
      ts.cache_owner = uid;
    }
    for_each_piece(text, ts, [&](std::string_view piece) {
      if (piece.size() > kHotMaxBytes) {
        encode_word(piece, ts, out);
        return;
      }
      uint64_t k0, k1;
      load16(piece, k0, k1);
      HotEntry& e = ts.hot[mix64(k0 * 0x9E3779B97F4A7C15ull ^ k1 ^ piece.size()) & (kHotEntries - 1)];
      if (e.len == piece.size() && e.k0 == k0 && e.k1 == k1) {
        out.insert(out.end(), e.ids, e.ids + hot_count(e));
        return;
      }
      const size_t before = out.size();
      encode_word(piece, ts, out);
      const size_t count = out.size() - before;
      if (count <= kHotMaxIds) {
        e.k0 = k0;
        e.k1 = k1;
        e.len = static_cast<uint32_t>(piece.size());
        for (size_t k = 0; k < kHotMaxIds; ++k) e.ids[k] = k < count ? out[before + k] : -1;
      }
    });
  }

  static size_t hot_count(const HotEntry& e) { return e.ids[2] >= 0 ? 3 : e.ids[1] >= 0 ? 2 : 1; }

  /// One pre-tokenizer piece: whole-token table, then the thread's word cache, then BPE.
  void encode_word(std::string_view piece, ThreadState& ts, std::vector<int32_t>& out) const {
    const uint64_t h = hash_bytes(piece);
    if (piece.size() <= max_token_bytes) {
      if (const auto* s = whole.find(piece, h)) {
        out.push_back(static_cast<int32_t>(s->a));
        return;
      }
    }
    if (piece.size() > kCacheMaxWordBytes) {
      bpe(piece, ts, out);
      return;
    }
    if (const auto* s = ts.cache.find(piece, h)) {
      out.insert(out.end(), ts.cache_ids.begin() + s->a, ts.cache_ids.begin() + s->a + s->b);
      return;
    }
    const size_t before = out.size();
    bpe(piece, ts, out);
    if (ts.cache.size() >= kCacheMaxEntries || ts.cache_ids.size() >= kCacheMaxIds) {
      ts.cache.clear();
      ts.cache_ids.clear();
    }
    ts.cache.insert(piece, h, static_cast<uint32_t>(ts.cache_ids.size()), static_cast<uint32_t>(out.size() - before));
    ts.cache_ids.insert(ts.cache_ids.end(), out.begin() + static_cast<std::ptrdiff_t>(before), out.end());
  }
};

// ---------------------------------------------------------------------------------------------------------

Tokenizer Tokenizer::load(const std::filesystem::path& dir) {
  auto impl = std::make_shared<Impl>();
  const std::filesystem::path enc_path = dir / "encoder.json";
  const std::filesystem::path bpe_path = dir / "vocab.bpe";
  const std::string enc_text = read_file(enc_path);
  const std::string bpe_text = read_file(bpe_path);

  // encoder.json: token -> id, ids exactly 0..n-1.
  EncoderJsonReader reader(enc_text, enc_path.string());
  std::vector<EncoderJsonReader::Entry> entries = reader.read();
  if (entries.empty()) reader.fail(0, "empty vocabulary");
  const size_t n = entries.size();
  std::vector<std::string> tokens(n);
  std::vector<bool> seen(n, false);
  StringTable by_bytes(n);
  for (const auto& e : entries) {
    if (e.id >= static_cast<int64_t>(n)) {
      reader.fail(e.offset, fmt::format("token id {} out of range: {} entries need ids 0..{}", e.id, n, n - 1));
    }
    if (seen[e.id]) reader.fail(e.offset, fmt::format("token id {} assigned twice", e.id));
    seen[e.id] = true;
    uint32_t bad = 0;
    auto bytes = alphabet_to_bytes(e.key, &bad);
    if (!bytes)
      reader.fail(e.offset, fmt::format("token {} has code point U+{:04X}, outside GPT-2's byte alphabet", e.id, bad));
    if (bytes->empty()) reader.fail(e.offset, fmt::format("token {} is the empty string", e.id));
    const uint64_t h = hash_bytes(*bytes);
    if (const auto* s = by_bytes.find(*bytes, h)) {
      reader.fail(e.offset, fmt::format("token {} repeats the bytes of token {}", e.id, s->a));
    }
    by_bytes.insert(*bytes, h, static_cast<uint32_t>(e.id), 0);
    tokens[e.id] = std::move(*bytes);
  }
  impl->token_offset.reserve(n + 1);
  for (const auto& t : tokens) {
    impl->token_offset.push_back(static_cast<uint32_t>(impl->token_arena.size()));
    impl->token_arena += t;
    impl->max_token_bytes = std::max(impl->max_token_bytes, t.size());
  }
  impl->token_offset.push_back(static_cast<uint32_t>(impl->token_arena.size()));
  for (int b = 0; b < 256; ++b) {
    const std::string one(1, static_cast<char>(b));
    const auto* s = by_bytes.find(one, hash_bytes(one));
    if (s == nullptr) {
      throw FormatError(
          fmt::format("{}: no token for the single byte 0x{:02X} (code point U+{:04X}); every byte needs one",
                      enc_path.string(), b, alphabet().to_cp[b]));
    }
    impl->byte_id[b] = static_cast<int32_t>(s->a);
  }
  if (const auto* s = by_bytes.find(kEndOfTextText, hash_bytes(kEndOfTextText)))
    impl->eot_id = static_cast<int32_t>(s->a);

  // vocab.bpe: "#version" header, then one "left right" merge a line, rank = order.
  std::vector<std::pair<int32_t, int32_t>> merges;
  {
    impl->ranks.reserve(std::count(bpe_text.begin(), bpe_text.end(), '\n') + 1);
    if (auto bad = find_invalid_utf8(bpe_text)) {
      auto [line, col] = line_col(bpe_text, bad->offset);
      throw FormatError(fmt::format("{}:{}:{}: invalid UTF-8: {}", bpe_path.string(), line, col, bad->what));
    }
    std::string_view rest(bpe_text);
    size_t line_no = 0;
    bool trailing_blank = false;
    while (!rest.empty()) {
      size_t nl = rest.find('\n');
      std::string_view line = rest.substr(0, nl);
      rest = nl == std::string_view::npos ? std::string_view() : rest.substr(nl + 1);
      ++line_no;
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);  // tolerate a CRLF checkout
      auto fail = [&](const std::string& what) {
        throw FormatError(fmt::format("{}:{}: {}", bpe_path.string(), line_no, what));
      };
      if (line_no == 1 && line.starts_with("#version")) continue;
      if (line.empty()) {
        trailing_blank = true;
        continue;
      }
      if (trailing_blank) fail("merge after a blank line (blank lines may only end the file)");
      const size_t sp = line.find(' ');
      if (sp == std::string_view::npos || sp == 0 || sp + 1 == line.size() ||
          line.find(' ', sp + 1) != std::string_view::npos) {
        fail(fmt::format("expected two tokens separated by one space, got '{}'", line));
      }
      auto to_bytes = [&](std::string_view part) {
        std::vector<uint32_t> cps;
        for (size_t i = 0; i < part.size();) cps.push_back(next_code_point(part, i));
        uint32_t bad = 0;
        auto b = alphabet_to_bytes(cps, &bad);
        if (!b) fail(fmt::format("'{}' has code point U+{:04X}, outside GPT-2's byte alphabet", part, bad));
        return *b;
      };
      const std::string left = to_bytes(line.substr(0, sp));
      const std::string right = to_bytes(line.substr(sp + 1));
      const auto* l = by_bytes.find(left, hash_bytes(left));
      const auto* r = by_bytes.find(right, hash_bytes(right));
      if (l == nullptr) fail(fmt::format("left part '{}' is not in encoder.json", line.substr(0, sp)));
      if (r == nullptr) fail(fmt::format("right part '{}' is not in encoder.json", line.substr(sp + 1)));
      const std::string joined = left + right;
      const auto* j = by_bytes.find(joined, hash_bytes(joined));
      if (j == nullptr)
        fail(fmt::format("merged token '{}{}' is not in encoder.json", line.substr(0, sp), line.substr(sp + 1)));
      const auto rank = static_cast<uint32_t>(merges.size());
      if (!impl->ranks.insert(static_cast<int32_t>(l->a), static_cast<int32_t>(r->a),
                              {rank, static_cast<int32_t>(j->a)})) {
        fail(fmt::format("duplicate merge '{}'", line));
      }
      merges.emplace_back(static_cast<int32_t>(l->a), static_cast<int32_t>(r->a));
    }
  }
  impl->n_merges = static_cast<int32_t>(merges.size());

  // Whole-word fast path: a word that is itself a token is usually encoded as that token, but BPE may not
  // reach a token through the merges (e.g. "<|endoftext|>"), so only tokens that BPE reproduces qualify.
  // That keeps the shortcut exact instead of assuming it.
  {
    ThreadState& ts = thread_state();
    std::vector<int32_t> ids;
    impl->whole = StringTable(n);
    for (int32_t id = 0; id < static_cast<int32_t>(n); ++id) {
      ids.clear();
      const std::string_view bytes = impl->bytes_of(id);
      impl->bpe(bytes, ts, ids);
      if (ids.size() == 1 && ids[0] == id) impl->whole.insert(bytes, hash_bytes(bytes), static_cast<uint32_t>(id), 0);
    }
  }

  Sha256 sha;
  const std::string_view tag = "qbench-gpt2-bpe-v1";
  sha.update(tag.data(), tag.size());
  sha_u32(sha, static_cast<uint32_t>(n));
  for (int32_t id = 0; id < static_cast<int32_t>(n); ++id) {
    const auto b = impl->bytes_of(id);
    sha_u32(sha, static_cast<uint32_t>(b.size()));
    sha.update(b.data(), b.size());
  }
  sha_u32(sha, static_cast<uint32_t>(merges.size()));
  for (const auto& [l, r] : merges) {
    sha_u32(sha, static_cast<uint32_t>(l));
    sha_u32(sha, static_cast<uint32_t>(r));
  }
  impl->fingerprint = sha.hex_digest();

  impl->compile_pattern();
  return Tokenizer(std::move(impl));
}

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 4);
  encode_into(text, out);
  return out;
}

void Tokenizer::encode_into(std::string_view text, std::vector<int32_t>& out) const {
  check_utf8(text);
  impl_->encode_valid(text, out);
}

std::vector<int32_t> Tokenizer::encode_with_special(std::string_view text) const {
  check_utf8(text);
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 4);
  size_t pos = 0;
  for (;;) {
    const size_t hit = text.find(kEndOfTextText, pos);
    impl_->encode_valid(text.substr(pos, hit == std::string_view::npos ? std::string_view::npos : hit - pos), out);
    if (hit == std::string_view::npos) break;
    EVALSVC_CHECK(impl_->eot_id >= 0, InputError,
                  "text has \"<|endoftext|>\" at byte offset {}, but this vocabulary has no such token", hit);
    out.push_back(impl_->eot_id);
    pos = hit + kEndOfTextText.size();
  }
  return out;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  const int32_t v = impl_->vocab();
  size_t total = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    EVALSVC_CHECK(ids[i] >= 0 && ids[i] < v, InputError, "decode: id {} at position {} is outside the vocabulary 0..{}",
                  ids[i], i, v - 1);
    total += impl_->token_offset[ids[i] + 1] - impl_->token_offset[ids[i]];
  }
  std::string out;
  out.reserve(total);
  for (int32_t id : ids) out += impl_->bytes_of(id);
  return out;
}

std::string_view Tokenizer::token_bytes(int32_t id) const {
  EVALSVC_CHECK(id >= 0 && id < impl_->vocab(), InputError, "token id {} is outside the vocabulary 0..{}", id,
                impl_->vocab() - 1);
  return impl_->bytes_of(id);
}

std::vector<std::string_view> Tokenizer::pretokenize(std::string_view text) const {
  check_utf8(text);
  std::vector<std::string_view> pieces;
  impl_->for_each_piece(text, thread_state(), [&](std::string_view p) { pieces.push_back(p); });
  return pieces;
}

int32_t Tokenizer::vocab_size() const { return impl_->vocab(); }
int32_t Tokenizer::merge_count() const { return impl_->n_merges; }
const std::string& Tokenizer::fingerprint() const { return impl_->fingerprint; }
bool Tokenizer::jit_compiled() const { return impl_->jit; }

}  // namespace evalsvc::worker
