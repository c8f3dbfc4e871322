#pragma once
// GPT-2 byte-level BPE (SPEC section 1): the pre-tokenizer pattern through PCRE2 (UTF + UCP, JIT when
// available), bytes mapped to the 256 base tokens, then the 50,000 merges applied lowest rank first.
// Output equals tiktoken's encode_ordinary / Hugging Face GPT2Tokenizer on the same encoder.json and
// vocab.bpe (see docs/tokenizer.md for the few documented edge cases).
//
// A Tokenizer is immutable after load() and cheap to copy (shared state); one object may be used by
// any number of threads at once. Each thread keeps its own cache of multi-token words, so encoding
// takes no lock. Kept free of PCRE2 and torch includes on purpose: many translation units include it.
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace evalsvc::worker {

class Tokenizer {
 public:
  static constexpr int32_t kEndOfText = 50256;
  /// The literal text of kEndOfText, split out by encode_with_special().
  static constexpr std::string_view kEndOfTextText = "<|endoftext|>";

  /// Loads encoder.json (token -> id) + vocab.bpe (merges) from `dir`; FormatError naming file and line on
  /// bad input (malformed JSON, ids not 0..n-1, a token outside the byte alphabet, a merge whose parts or
  /// result are not in the vocabulary, a duplicate merge); IoError when a file cannot be read.
  static Tokenizer load(const std::filesystem::path& dir);

  /// Ordinary text encoding (like tiktoken encode_ordinary): "<|endoftext|>" is NOT special here.
  /// `text` must be valid UTF-8: otherwise InputError naming the byte offset of the first bad sequence
  /// (overlong forms, surrogates, code points above U+10FFFF, truncated or stray continuation bytes).
  std::vector<int32_t> encode(std::string_view text) const;
  /// Same, but the literal "<|endoftext|>" becomes id 50256 (Hugging Face GPT2Tokenizer behaviour).
  std::vector<int32_t> encode_with_special(std::string_view text) const;
  /// Appends the ids of `text` to `out` (encode() without a fresh vector; for batch tokenizers).
  void encode_into(std::string_view text, std::vector<int32_t>& out) const;

  /// Bytes of the ids joined; InputError for an id outside the vocabulary. The result is not
  /// necessarily valid UTF-8 (an id sequence may end inside a multi-byte character).
  std::string decode(const std::vector<int32_t>& ids) const;
  /// The bytes of one token; InputError for an id outside the vocabulary.
  std::string_view token_bytes(int32_t id) const;

  /// The pre-tokenizer's pieces of `text` (views into `text`); InputError on invalid UTF-8 as encode().
  std::vector<std::string_view> pretokenize(std::string_view text) const;

  int32_t vocab_size() const;
  /// Number of merges read from vocab.bpe.
  int32_t merge_count() const;
  /// Stable hex fingerprint of the vocabulary + merges (keys the tokenized-dataset cache): SHA-256 of a
  /// canonical form (token bytes in id order, then merge pairs in rank order), so JSON formatting does
  /// not change it.
  const std::string& fingerprint() const;
  /// Whether PCRE2 JIT-compiled the pre-tokenizer pattern (false only where JIT is unsupported).
  bool jit_compiled() const;

  struct Impl;  // defined in tokenizer.cpp

 private:
  explicit Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;
};

}  // namespace evalsvc::worker
