#pragma once
// AG News (Xiang Zhang's ag_news_csv, SPEC section 1): a strict RFC 4180 reader and a seeded,
// stratified train/validation split. Kept free of torch so that light tools can include it.
#include <array>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace evalsvc::worker {

/// One AG News record.
struct NewsRow {
  int32_t label = 0;  ///< 0..3 = World, Sports, Business, Sci/Tech (the file's class 1..4 minus one)
  std::string text;   ///< title + " " + description, bytes unchanged (backslash sequences kept)
  int64_t line = 0;   ///< 1-based line where the record starts (records may span lines)
};

/// RFC 4180 reader (quoted fields, "" escapes, quoted newlines, CRLF or LF); `limit` rows max (0 = all).
/// Every record must be `"class","title","description"` with class 1..4. Wrong field count, class outside
/// 1..4, unterminated quote, a stray quote, empty text (title and description both blank) ->
/// InputError "FILE:LINE: what, expected what". Blank lines at the end of the file are ignored; elsewhere
/// they are records with the wrong field count. IoError when the file cannot be read.
std::vector<NewsRow> read_ag_news_csv(const std::filesystem::path& csv, size_t limit = 0);

/// The same parser over bytes already in memory; `name` stands in for FILE in messages.
std::vector<NewsRow> parse_ag_news_csv(std::string_view bytes, std::string_view name, size_t limit = 0);

/// Class names indexed by NewsRow::label (classes.txt order).
extern const std::array<const char*, 4> kClassNames;

/// Row indices of the two parts of a split, each in ascending order.
struct SplitIndices {
  std::vector<size_t> train, validation;
};

/// Seeded, stratified: the same fraction of each class goes to validation; deterministic for a seed.
/// Each class (any label value) sends round(fraction x its count) of its rows, chosen by a Fisher-Yates
/// shuffle driven by std::mt19937_64(seed) with a bounded draw written out here, so the split is the same
/// with every standard library. InputError for a fraction outside [0, 1] or NaN.
SplitIndices stratified_split(const std::vector<int32_t>& labels, double validation_fraction, uint64_t seed);

}  // namespace evalsvc::worker
