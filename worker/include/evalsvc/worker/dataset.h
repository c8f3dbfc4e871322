#pragma once
// The tokenized dataset (SPEC section 1: GPT-2 BPE, truncate to max_len keeping the first tokens) and
// its on-disk cache, so repeated jobs on the same CSV skip tokenization. Free of torch on purpose.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <vector>

#include "evalsvc/worker/ag_news.h"
#include "evalsvc/worker/tokenizer.h"

namespace evalsvc::worker {

/// Rows of token ids in one flat buffer (CSR layout: row i is tokens[offsets[i] .. offsets[i+1])).
struct TokenizedDataset {
  std::vector<int32_t> labels;   ///< n
  std::vector<int64_t> offsets;  ///< n+1, into tokens
  std::vector<int32_t> tokens;   ///< each row truncated to max_len tokens (keep the first max_len)
  int64_t max_len = 128;
  size_t truncated_rows = 0;     ///< rows longer than max_len before truncation
  std::vector<int32_t> full_lengths;  ///< n, each row's token count before truncation (length statistics)

  /// Number of rows.
  size_t size() const { return labels.size(); }
  /// Row i's tokens; InternalError when i >= size() (a caller bug).
  std::span<const int32_t> row(size_t i) const;
};

/// Tokenizes rows in parallel threads (the Tokenizer is shared read-only); threads = 0 uses the
/// hardware concurrency. Output order = input order. InputError for max_len < 1, and for a row the
/// tokenizer rejects (invalid UTF-8) or that gives no tokens, naming the row's CSV line.
TokenizedDataset tokenize_rows(const std::vector<NewsRow>& rows, const Tokenizer& tok, int64_t max_len,
                               int threads = 0);

/// Versioned binary cache file in cache_dir, keyed by sha256 of the CSV file, the tokenizer fingerprint,
/// max_len and limit; a second call loads it instead of tokenizing. A corrupt/truncated/other-version cache
/// is detected (magic, version, sizes, a checksum) and rebuilt with a warning, never trusted. Written
/// atomically. A cache that cannot be written costs a warning, not the job. `cache_hit` (if given) says
/// whether the cache was used. Errors of read_ag_news_csv and tokenize_rows pass through.
TokenizedDataset load_or_tokenize(const std::filesystem::path& csv, const Tokenizer& tok, int64_t max_len,
                                  const std::filesystem::path& cache_dir, size_t limit = 0,
                                  bool* cache_hit = nullptr);

/// The cache file load_or_tokenize uses for these inputs (hashes the CSV; for tools and tests).
std::filesystem::path cache_path(const std::filesystem::path& csv, const Tokenizer& tok, int64_t max_len,
                                 const std::filesystem::path& cache_dir, size_t limit = 0);

/// Subset by indices (for the validation split and test shards), in the order of `idx` (repeats allowed).
/// InputError naming the first index >= d.size().
TokenizedDataset select(const TokenizedDataset& d, const std::vector<size_t>& idx);

/// The first min(n, d.size()) rows, in order (select over 0..n-1).
TokenizedDataset head(const TokenizedDataset& d, size_t n);

}  // namespace evalsvc::worker
