// Tokenizer tests: the 93 reference cases, an independent naive BPE as oracle on random and AG News text,
// round trips over mixed scripts, invalid UTF-8, malformed vocabulary files, threads, and hostile sizes.
#include "evalsvc/worker/tokenizer.h"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "evalsvc/common/error.h"
#include "evalsvc/common/paths.h"

namespace evalsvc::worker {
namespace {

namespace fs = std::filesystem;

const Tokenizer& gpt2() {
  static const Tokenizer tok = Tokenizer::load(data_dir() / "gpt2");
  return tok;
}

std::string utf8(uint32_t cp) {
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else if (cp < 0x800) {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    s += static_cast<char>(0xE0 | (cp >> 12));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    s += static_cast<char>(0xF0 | (cp >> 18));
    s += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return s;
}

/// GPT-2's bytes_to_unicode, written again here so the oracle does not share code with the tokenizer.
std::map<uint32_t, unsigned char> unicode_to_byte() {
  std::map<uint32_t, unsigned char> m;
  uint32_t extra = 0;
  for (uint32_t b = 0; b < 256; ++b) {
    bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    m[printable ? b : 256 + extra++] = static_cast<unsigned char>(b);
  }
  return m;
}

std::string alphabet_string_to_bytes(const std::string& s, const std::map<uint32_t, unsigned char>& u2b) {
  std::string out;
  for (size_t i = 0; i < s.size();) {
    auto c = static_cast<unsigned char>(s[i]);
    uint32_t cp;
    int len;
    if (c < 0x80) {
      cp = c, len = 1;
    } else if (c < 0xE0) {
      cp = c & 0x1F, len = 2;
    } else {
      cp = c & 0x0F, len = 3;
    }
    for (int k = 1; k < len; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
    i += len;
    out += static_cast<char>(u2b.at(cp));
  }
  return out;
}

/// The textbook algorithm (GPT-2's encoder.py `bpe`): repeatedly find the lowest-ranked adjacent pair and
/// merge every occurrence of it, left to right. Slow and obviously faithful: the oracle for the fast one.
class NaiveBpe {
 public:
  NaiveBpe(const Tokenizer& tok, const fs::path& dir) {
    for (int32_t id = 0; id < tok.vocab_size(); ++id) ids_[std::string(tok.token_bytes(id))] = id;
    const auto u2b = unicode_to_byte();
    std::ifstream in(dir / "vocab.bpe");
    std::string line;
    std::getline(in, line);  // #version
    int rank = 0;
    while (std::getline(in, line)) {
      if (line.empty()) continue;
      const size_t sp = line.find(' ');
      ranks_[{alphabet_string_to_bytes(line.substr(0, sp), u2b), alphabet_string_to_bytes(line.substr(sp + 1), u2b)}] =
          rank++;
    }
  }
  std::vector<int32_t> word(const std::string& w) const {
    std::vector<std::string> parts;
    for (char c : w) parts.emplace_back(1, c);
    while (parts.size() > 1) {
      int best = -1;
      std::pair<std::string, std::string> best_pair;
      for (size_t i = 0; i + 1 < parts.size(); ++i) {
        auto it = ranks_.find({parts[i], parts[i + 1]});
        if (it != ranks_.end() && (best < 0 || it->second < best)) {
          best = it->second;
          best_pair = it->first;
        }
      }
      if (best < 0) break;
      std::vector<std::string> merged;
      for (size_t i = 0; i < parts.size();) {
        if (i + 1 < parts.size() && parts[i] == best_pair.first && parts[i + 1] == best_pair.second) {
          merged.push_back(parts[i] + parts[i + 1]);
          i += 2;
        } else {
          merged.push_back(parts[i++]);
        }
      }
      parts = std::move(merged);
    }
    std::vector<int32_t> out;
    for (const auto& p : parts) out.push_back(ids_.at(p));
    return out;
  }
  std::vector<int32_t> text(const Tokenizer& tok, std::string_view t) const {
    std::vector<int32_t> out;
    for (std::string_view piece : tok.pretokenize(t)) {
      auto ids = word(std::string(piece));
      out.insert(out.end(), ids.begin(), ids.end());
    }
    return out;
  }

 private:
  std::map<std::string, int32_t> ids_;
  std::map<std::pair<std::string, std::string>, int> ranks_;
};

/// Random valid UTF-8 drawn from pools that exercise every branch of the pre-tokenizer pattern.
std::string random_text(std::mt19937& rng, size_t max_chars) {
  static const std::vector<std::vector<uint32_t>> pools = {
      {'a', 'b', 'e', 'n', 's', 't', 'z', 'A', 'Q', 'T'},                                         // ASCII letters
      {'0', '1', '5', '9'},                                                                       // digits
      {'\'', '.', ',', '!', '?', '-', '$', '%', '\\', '"', '<', '|', '>', '_'},                   // punctuation
      {' ', ' ', ' ', '\t', '\n', '\r', 0x0B, 0x0C, 0xA0, 0x3000, 0x2028, 0x85, 0x180E, 0x200B},  // (not) spaces
      {0xE9, 0xFC, 0xF1, 0x3B1, 0x3A9, 0x416, 0x44F, 0x5D0, 0x627, 0x915, 0x94D},  // accented, Greek, ...
      {0x4E2D, 0x6587, 0x65E5, 0x672C, 0xAC00, 0xD55C, 0x3042, 0x30AB},            // CJK, Hangul, kana
      {0x1F600, 0x1F44D, 0x1F3FD, 0x200D, 0xFE0F, 0x2764, 0x1F1FA, 0x1F1F8},       // emoji, ZWJ, flags
      {0x301, 0x308, 0xB2, 0xBD, 0x2167, 0x0, 0x7F, 0xFFFD, 0x10FFFF, 0xE000},     // marks, odd numbers, edges
      {0x2019, 0x201C, 0x2014, 0x2026, 0x20AC, 0xA3},                              // typographic
  };
  std::uniform_int_distribution<size_t> len_dist(0, max_chars);
  std::uniform_int_distribution<size_t> pool_dist(0, pools.size() - 1);
  std::string s;
  const size_t n = len_dist(rng);
  size_t pool = pool_dist(rng);
  for (size_t i = 0; i < n; ++i) {
    if (rng() % 4 == 0) pool = pool_dist(rng);  // runs within one pool make longer words
    const auto& p = pools[pool];
    s += utf8(p[rng() % p.size()]);
  }
  return s;
}

std::vector<std::string> ag_news_texts(size_t limit) {
  // The data files are pure ASCII with RFC 4180 quoting; this small reader keeps the test self-contained.
  std::vector<std::string> texts;
  std::ifstream in(data_dir() / "ag_news" / "test.csv");
  std::string line;
  while (texts.size() < limit && std::getline(in, line)) {
    std::vector<std::string> fields;
    std::string cur;
    bool quoted = false;
    for (size_t i = 0; i < line.size(); ++i) {
      char c = line[i];
      if (quoted) {
        if (c == '"' && i + 1 < line.size() && line[i + 1] == '"') {
          cur += '"';
          ++i;
        } else if (c == '"') {
          quoted = false;
        } else {
          cur += c;
        }
      } else if (c == '"') {
        quoted = true;
      } else if (c == ',') {
        fields.push_back(std::move(cur));
        cur.clear();
      } else {
        cur += c;
      }
    }
    fields.push_back(std::move(cur));
    if (fields.size() == 3) texts.push_back(fields[1] + " " + fields[2]);
  }
  return texts;
}

// ---------------------------------------------------------------------------------------------------------

TEST(Tokenizer, LoadsGpt2Vocabulary) {
  const Tokenizer& tok = gpt2();
  EXPECT_EQ(tok.vocab_size(), 50257);
  EXPECT_EQ(tok.merge_count(), 50000);
  EXPECT_EQ(tok.token_bytes(Tokenizer::kEndOfText), "<|endoftext|>");
  EXPECT_EQ(tok.token_bytes(220), " ");
  EXPECT_EQ(tok.token_bytes(198), "\n");
  EXPECT_EQ(tok.token_bytes(0), "!");
  EXPECT_TRUE(tok.jit_compiled()) << "this PCRE2 has JIT (pcre2_config says so); the interpreter is the fallback";
}

TEST(Tokenizer, FingerprintIsStableHex) {
  const Tokenizer again = Tokenizer::load(data_dir() / "gpt2");
  EXPECT_EQ(gpt2().fingerprint(), again.fingerprint());
  ASSERT_EQ(gpt2().fingerprint().size(), 64u);
  EXPECT_EQ(gpt2().fingerprint().find_first_not_of("0123456789abcdef"), std::string::npos);
  // Pinned: a change here invalidates every tokenized-dataset cache, so it must be deliberate. The same
  // value comes from the canonical form in docs/tokenizer.md computed in Python from the two files.
  EXPECT_EQ(gpt2().fingerprint(), "1a2fdc05dd383a133474211851ee3bdc815e970156b379070afa31195ff59408");
}

TEST(Tokenizer, ReproducesAllReferenceCases) {
  const auto j = nlohmann::json::parse(read_file(data_dir() / "gpt2" / "tokenizer_cases.json"));
  const auto& cases = j.at("cases");
  ASSERT_EQ(cases.size(), 93u);
  int failures = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    const std::string text = cases[i].at("text").get<std::string>();
    const auto want = cases[i].at("ids").get<std::vector<int32_t>>();
    const auto got = gpt2().encode(text);
    if (got != want) {
      ++failures;
      ADD_FAILURE() << "case " << i << " (" << cases[i].at("source").get<std::string>() << ") text "
                    << nlohmann::json(text).dump() << "\n want " << nlohmann::json(want).dump() << "\n  got "
                    << nlohmann::json(got).dump();
    }
    EXPECT_EQ(gpt2().decode(want), text) << "case " << i;
  }
  EXPECT_EQ(failures, 0);
}

TEST(Tokenizer, KnownEncodings) {
  const Tokenizer& tok = gpt2();
  EXPECT_EQ(tok.encode(""), std::vector<int32_t>{});
  EXPECT_EQ(tok.encode("Hello world"), (std::vector<int32_t>{15496, 995}));
  EXPECT_EQ(tok.encode(" "), (std::vector<int32_t>{220}));
  // Ordinary encoding: the special token's text is plain text.
  EXPECT_EQ(tok.encode("<|endoftext|>"), (std::vector<int32_t>{27, 91, 437, 1659, 5239, 91, 29}));
}

TEST(Tokenizer, SpecialTokenOnlyInEncodeWithSpecial) {
  const Tokenizer& tok = gpt2();
  EXPECT_EQ(tok.encode_with_special("<|endoftext|>"), std::vector<int32_t>{Tokenizer::kEndOfText});
  EXPECT_EQ(tok.encode_with_special("<|endoftext|><|endoftext|>"),
            (std::vector<int32_t>{Tokenizer::kEndOfText, Tokenizer::kEndOfText}));
  std::vector<int32_t> want = tok.encode("Hello ");
  want.push_back(Tokenizer::kEndOfText);
  for (int32_t id : tok.encode(" world")) want.push_back(id);
  EXPECT_EQ(tok.encode_with_special("Hello <|endoftext|> world"), want);
  EXPECT_EQ(tok.encode_with_special("no special here"), tok.encode("no special here"));
  EXPECT_EQ(tok.encode_with_special("<|endoftext|"), tok.encode("<|endoftext|"));
  EXPECT_EQ(tok.decode(tok.encode_with_special("a<|endoftext|>b")), "a<|endoftext|>b");
}

TEST(Tokenizer, PretokenizerMatchesPythonRegex) {
  // Expected pieces from Python's `regex` module on SPEC section 1's pattern (GPT-2's encoder.py).
  const std::vector<std::pair<std::string, std::vector<std::string>>> cases = {
      {"Hello  world", {"Hello", " ", " world"}},
      {"x   \n\n  y", {"x", "   \n\n ", " y"}},
      {"I'm 12.5% sure\xE3\x80\x80ok", {"I", "'m", " 12", ".", "5", "%", " sure", "\xE3\x80\x80", "ok"}},
      {"tab\tend  ", {"tab", "\t", "end", "  "}},
      // U+180E is not White_Space (PCRE2's own \s would say it is).
      {" \xE1\xA0\x8E", {" \xE1\xA0\x8E"}},
      {"a\xE1\xA0\x8E"
       "b",
       {"a", "\xE1\xA0\x8E", "b"}},
      {"don't DON'T", {"don", "'t", " DON", "'", "T"}},
  };
  for (const auto& [text, want] : cases) {
    const auto got = gpt2().pretokenize(text);
    EXPECT_EQ(std::vector<std::string>(got.begin(), got.end()), want) << nlohmann::json(text).dump();
  }
}

TEST(Tokenizer, MatchesNaiveBpeOnRandomAndAgNewsText) {
  const NaiveBpe naive(gpt2(), data_dir() / "gpt2");
  std::mt19937 rng(20240917);
  for (int i = 0; i < 300; ++i) {
    const std::string text = random_text(rng, 60);
    ASSERT_EQ(gpt2().encode(text), naive.text(gpt2(), text)) << nlohmann::json(text).dump();
  }
  // Words longer than the linear-scan limit take the heap path.
  for (int i = 0; i < 20; ++i) {
    std::string word;
    const std::string letters = "etaoinshrdlucmfw";
    for (int k = 0; k < 150 + i * 17; ++k) word += letters[rng() % letters.size()];
    ASSERT_EQ(gpt2().encode(word), naive.text(gpt2(), word)) << word;
  }
  for (const std::string& text : ag_news_texts(200)) {
    ASSERT_EQ(gpt2().encode(text), naive.text(gpt2(), text)) << text;
  }
}

TEST(Tokenizer, RandomRoundTrip) {
  std::mt19937 rng(7);
  for (int i = 0; i < 3000; ++i) {
    const std::string text = random_text(rng, 200);
    const auto ids = gpt2().encode(text);
    for (int32_t id : ids) ASSERT_TRUE(id >= 0 && id < Tokenizer::kEndOfText) << id;
    ASSERT_EQ(gpt2().decode(ids), text) << nlohmann::json(text).dump();
  }
}

TEST(Tokenizer, InvalidUtf8IsAnInputErrorNamingTheOffset) {
  const std::vector<std::pair<std::string, size_t>> cases = {
      {"\x80", 0},  // lone continuation byte
      {"abc\xBF"
       "def",
       3},                               // continuation byte in ASCII
      {"ab\xC3", 2},                     // truncated 2-byte sequence at the end
      {"ab\xE2\x82", 2},                 // truncated 3-byte sequence at the end
      {"\xF0\x9F\x98", 0},               // truncated 4-byte sequence at the end
      {"ok\xE2\x82x", 2},                // cut short by ASCII
      {"\xC0\xAF", 0},                   // overlong '/'
      {"\xE0\x80\xAF", 0},               // overlong 3-byte
      {"\xF0\x80\x80\xAF", 0},           // overlong 4-byte
      {"x\xED\xA0\x80", 1},              // surrogate U+D800
      {"\xF4\x90\x80\x80", 0},           // above U+10FFFF
      {"hello \xFF", 6},                 // never valid
      {"\xF8\x88\x80\x80\x80", 0},       // 5-byte form
      {"12345678\xE2\x82\xAC\xC3", 11},  // after the 8-byte ASCII fast path and a valid euro sign
  };
  for (const auto& [text, offset] : cases) {
    for (int mode = 0; mode < 3; ++mode) {
      try {
        if (mode == 0) gpt2().encode(text);
        if (mode == 1) gpt2().encode_with_special(text);
        if (mode == 2) gpt2().pretokenize(text);
        ADD_FAILURE() << "no error for " << nlohmann::json::binary({text.begin(), text.end()}).dump();
      } catch (const InputError& e) {
        EXPECT_NE(std::string(e.what()).find(fmt::format("byte offset {} ", offset)), std::string::npos) << e.what();
      }
    }
  }
  // Valid edge code points pass.
  for (uint32_t cp : {0x0u, 0x7Fu, 0x80u, 0x7FFu, 0x800u, 0xD7FFu, 0xE000u, 0xFFFFu, 0x10000u, 0x10FFFFu}) {
    EXPECT_EQ(gpt2().decode(gpt2().encode(utf8(cp))), utf8(cp)) << cp;
  }
}

TEST(Tokenizer, DecodeRejectsIdsOutsideTheVocabulary) {
  EXPECT_EQ(gpt2().decode({}), "");
  EXPECT_THROW(gpt2().decode({15496, -1}), InputError);
  EXPECT_THROW(gpt2().decode({50257}), InputError);
  EXPECT_THROW(gpt2().token_bytes(1 << 30), InputError);
  // Ids may split a character: decode returns the bytes as they are.
  const auto ids = gpt2().encode("\xF0\x9F\x98\x80");
  ASSERT_GT(ids.size(), 1u);
  EXPECT_EQ(gpt2().decode({ids[0]}).size(), gpt2().token_bytes(ids[0]).size());
}

TEST(Tokenizer, SharedAcrossThreadsGivesTheSameIds) {
  const auto texts = ag_news_texts(400);
  std::vector<std::vector<int32_t>> want;
  for (const auto& t : texts) want.push_back(gpt2().encode(t));
  std::vector<std::thread> threads;
  std::vector<int> mismatches(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int rep = 0; rep < 3; ++rep) {
        for (size_t i = 0; i < texts.size(); ++i) {
          size_t k = (i * 7 + t * 101) % texts.size();
          if (gpt2().encode(texts[k]) != want[k]) ++mismatches[t];
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < 4; ++t) EXPECT_EQ(mismatches[t], 0) << "thread " << t;
}

TEST(Tokenizer, HostileSizesAreFastAndExact) {
  const auto start = std::chrono::steady_clock::now();
  const std::string spaces = std::string(1 << 20, ' ') + "a";
  const auto s_ids = gpt2().encode(spaces);
  EXPECT_EQ(gpt2().decode(s_ids), spaces);
  std::string letters;
  for (int i = 0; i < 200000; ++i) letters += static_cast<char>('a' + (i * 7919) % 26);
  EXPECT_EQ(gpt2().decode(gpt2().encode(letters)), letters);
  std::string emoji;
  for (int i = 0; i < 50000; ++i) emoji += utf8(0x1F600 + i % 64);
  EXPECT_EQ(gpt2().decode(gpt2().encode(emoji)), emoji);
  std::string nuls(100000, '\0');
  EXPECT_EQ(gpt2().decode(gpt2().encode(nuls)), nuls);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  // Quadratic merging of a 200k-letter word would take minutes; the heap path takes well under a second.
  EXPECT_LT(seconds, 20.0);
}

// ---------------------------------------------------------------------------------------------------------
// Malformed vocabulary files: a tiny vocabulary (256 byte tokens + merges) written to a temp folder.

class TinyVocab : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / fmt::format("qbench_tok_{}_{}", ::getpid(), counter_++);
    fs::create_directories(dir_);
    uint32_t extra = 0;
    for (uint32_t b = 0; b < 256; ++b) {
      bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      alpha_[b] = printable ? b : 256 + extra++;
    }
  }
  void TearDown() override { evalsvc::remove_tree(dir_); }

  /// JSON key (\u escapes) for a token given as raw bytes.
  std::string key(const std::string& bytes) const {
    std::string k = "\"";
    for (unsigned char c : bytes) k += fmt::format("\\u{:04x}", alpha_[c]);
    return k + "\"";
  }
  /// The merge-line spelling of raw bytes (alphabet code points as UTF-8).
  std::string spell(const std::string& bytes) const {
    std::string s;
    for (unsigned char c : bytes) s += utf8(alpha_[c]);
    return s;
  }
  /// encoder.json with the 256 bytes then `extra_tokens`; vocab.bpe with `merges` lines as given.
  void write(const std::vector<std::string>& extra_tokens, const std::string& merges_text,
             const std::string& suffix_json = "") {
    std::string j = "{\n";
    int id = 0;
    for (int b = 0; b < 256; ++b) j += fmt::format("{}: {},\n", key(std::string(1, static_cast<char>(b))), id++);
    for (const auto& t : extra_tokens) j += fmt::format("{}: {},\n", key(t), id++);
    j += suffix_json.empty() ? fmt::format("{}: {}\n}}", key("<|endoftext|>"), id) : suffix_json;
    write_file_atomic(dir_ / "encoder.json", j);
    write_file_atomic(dir_ / "vocab.bpe", "#version: 0.2\n" + merges_text);
  }
  std::string load_error() {
    try {
      Tokenizer::load(dir_);
    } catch (const FormatError& e) {
      return e.what();
    }
    return "(no FormatError)";
  }

  fs::path dir_;
  std::array<uint32_t, 256> alpha_{};
  static inline int counter_ = 0;
};

TEST_F(TinyVocab, LoadsAndMergesByRank) {
  write({"ab", "abc", "bc"}, spell("a") + " " + spell("b") + "\n" + spell("ab") + " " + spell("c") + "\n" + spell("b") +
                                 " " + spell("c") + "\n");
  const Tokenizer tok = Tokenizer::load(dir_);
  EXPECT_EQ(tok.vocab_size(), 260);
  EXPECT_EQ(tok.merge_count(), 3);
  // "abc": (a,b) rank 0 first, then (ab,c) -> abc. "bc": only (b,c).
  EXPECT_EQ(tok.encode("abc"), std::vector<int32_t>{257});
  EXPECT_EQ(tok.encode("bcab"), (std::vector<int32_t>{258, 256}));
  EXPECT_EQ(tok.encode_with_special("a<|endoftext|>"), (std::vector<int32_t>{'a', 259}));
  EXPECT_NE(tok.fingerprint(), gpt2().fingerprint());
}

TEST_F(TinyVocab, MissingFileIsAnIoError) { EXPECT_THROW(Tokenizer::load(dir_ / "nowhere"), IoError); }

TEST_F(TinyVocab, MalformedJsonNamesLineAndColumn) {
  write({}, "", "\"x\": }");
  EXPECT_NE(load_error().find("encoder.json:258:6: expected an integer token id"), std::string::npos) << load_error();
  write({}, "", "\"x\": 256,\n");
  EXPECT_NE(load_error().find("encoder.json:259:1: expected a string key, got end of file"), std::string::npos)
      << load_error();
  write({}, "", "\"\\uZZ00\": 256}");
  EXPECT_NE(load_error().find("bad hex digit"), std::string::npos) << load_error();
  write({}, "", "\"\\ud800\": 256}");
  EXPECT_NE(load_error().find("high surrogate without a low one"), std::string::npos) << load_error();
  write({}, "", "\"x\": 2.5}");
  EXPECT_NE(load_error().find("must be an integer"), std::string::npos) << load_error();
  write({}, "", "\"x\": 256} trailing");
  EXPECT_NE(load_error().find("after the closing"), std::string::npos) << load_error();
  write({}, "", "\"x\xC3\": 256}");
  EXPECT_NE(load_error().find("invalid UTF-8"), std::string::npos) << load_error();
}

TEST_F(TinyVocab, BadIdsAndTokensAreFormatErrors) {
  write({}, "", "\"x\": 300}");
  EXPECT_NE(load_error().find("token id 300 out of range"), std::string::npos) << load_error();
  write({}, "", "\"x\": 5}");
  EXPECT_NE(load_error().find("token id 5 assigned twice"), std::string::npos) << load_error();
  write({}, "", "\"x\": -1}");
  EXPECT_NE(load_error().find("non-negative"), std::string::npos) << load_error();
  write({}, "", "\"\\u4e2d\": 256}");
  EXPECT_NE(load_error().find("U+4E2D, outside GPT-2's byte alphabet"), std::string::npos) << load_error();
  write({}, "", "\"\": 256}");
  EXPECT_NE(load_error().find("empty string"), std::string::npos) << load_error();
  write({}, "", "\"!\": 256}");
  EXPECT_NE(load_error().find("repeats the bytes of token 33"), std::string::npos) << load_error();
  // A vocabulary without every single byte cannot encode arbitrary text.
  std::string j = "{";
  for (int b = 0; b < 255; ++b)
    j += fmt::format("{}{}: {}", b ? "," : "", key(std::string(1, static_cast<char>(b))), b);
  write_file_atomic(dir_ / "encoder.json", j + "}");
  write_file_atomic(dir_ / "vocab.bpe", "#version: 0.2\n");
  EXPECT_NE(load_error().find("no token for the single byte 0xFF"), std::string::npos) << load_error();
}

TEST_F(TinyVocab, BadMergesNameTheLine) {
  write({"ab"}, spell("a") + " " + spell("b") + "\n" + spell("a") + " " + spell("c") + "\n");
  EXPECT_NE(load_error().find("vocab.bpe:3: merged token"), std::string::npos) << load_error();
  write({"ab"}, spell("a") + " " + spell("b") + "\n" + spell("a") + " " + spell("b") + "\n");
  EXPECT_NE(load_error().find("vocab.bpe:3: duplicate merge"), std::string::npos) << load_error();
  write({"ab"}, spell("a") + spell("b") + "\n");
  EXPECT_NE(load_error().find("vocab.bpe:2: expected two tokens"), std::string::npos) << load_error();
  write({"ab"}, spell("a") + "  " + spell("b") + "\n");
  EXPECT_NE(load_error().find("vocab.bpe:2: expected two tokens"), std::string::npos) << load_error();
  write({"ab"}, spell("ab") + " " + spell("b") + "\n");
  EXPECT_NE(load_error().find("vocab.bpe:2: merged token"), std::string::npos) << load_error();
  write({"ab"}, "\n" + spell("a") + " " + spell("b") + "\n");
  EXPECT_NE(load_error().find("vocab.bpe:3: merge after a blank line"), std::string::npos) << load_error();
  write({"ab"}, "\xE4\xB8\xAD " + spell("b") + "\n");
  EXPECT_NE(load_error().find("vocab.bpe:2: '\xE4\xB8\xAD' has code point U+4E2D"), std::string::npos) << load_error();
  write({"ab"}, "a \xC3\n");
  EXPECT_NE(load_error().find("vocab.bpe:2:3: invalid UTF-8"), std::string::npos) << load_error();
  write({"ab"}, spell("q") + " " + spell("r") + "\n");
  EXPECT_NE(load_error().find("vocab.bpe:2: merged token"), std::string::npos) << load_error();
}

TEST_F(TinyVocab, NoEndOfTextTokenMeansEncodeWithSpecialFails) {
  std::string j = "{";
  for (int b = 0; b < 256; ++b)
    j += fmt::format("{}{}: {}", b ? "," : "", key(std::string(1, static_cast<char>(b))), b);
  write_file_atomic(dir_ / "encoder.json", j + "}");
  write_file_atomic(dir_ / "vocab.bpe", "#version: 0.2\n");
  const Tokenizer tok = Tokenizer::load(dir_);
  EXPECT_EQ(tok.encode("<|endoftext|>").size(), 13u);
  EXPECT_EQ(tok.encode_with_special("plain").size(), 5u);
  EXPECT_THROW(tok.encode_with_special("x<|endoftext|>"), InputError);
}

}  // namespace
}  // namespace evalsvc::worker
