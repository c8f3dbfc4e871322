#include "evalsvc/worker/ag_news.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <random>

#include "evalsvc/common/error.h"
#include "evalsvc/common/paths.h"

namespace evalsvc::worker {

const std::array<const char*, 4> kClassNames = {"World", "Sports", "Business", "Sci/Tech"};

namespace {

constexpr size_t kFields = 3;

// A field's value for an error message: bounded and with control characters made visible, so a
// binary file or a runaway quoted field cannot flood the log.
std::string shown(std::string_view v) {
  std::string out;
  for (char c : v.substr(0, 40)) {
    if (c == '\n') out += "\\n";
    else if (c == '\r') out += "\\r";
    else if (static_cast<unsigned char>(c) < 0x20) out += fmt::format("\\x{:02x}", static_cast<unsigned char>(c));
    else out.push_back(c);
  }
  if (v.size() > 40) out += "...";
  return out;
}

std::string shown_char(char c) { return shown(std::string_view(&c, 1)); }

bool blank(std::string_view v) {
  return std::all_of(v.begin(), v.end(), [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; });
}

// Uniform integer in [0, bound) by rejection (std::uniform_int_distribution differs between standard
// libraries, and a split must be reproducible anywhere for a seed).
uint64_t bounded_draw(std::mt19937_64& rng, uint64_t bound) {
  const uint64_t max = std::numeric_limits<uint64_t>::max();
  const uint64_t limit = max - (max % bound);
  uint64_t x;
  do {
    x = rng();
  } while (x >= limit);
  return x % bound;
}

}  // namespace

std::vector<NewsRow> parse_ag_news_csv(std::string_view s, std::string_view name, size_t limit) {
  std::vector<NewsRow> rows;
  const size_t n = s.size();
  size_t i = 0;
  int64_t line = 1;
  std::vector<std::string> fields;
  while (i < n && (limit == 0 || rows.size() < limit)) {
    // Blank lines that run to the end of the file are a harmless trailing newline, not a record.
    if (s[i] == '\n' || s[i] == '\r') {
      size_t j = i;
      while (j < n && (s[j] == '\n' || s[j] == '\r')) ++j;
      if (j == n) break;
    }
    const int64_t record_line = line;
    fields.clear();
    while (true) {
      std::string field;
      const size_t field_no = fields.size() + 1;
      if (i < n && s[i] == '"') {
        const int64_t quote_line = line;
        ++i;
        bool closed = false;
        while (i < n) {
          const char c = s[i];
          if (c == '"') {
            if (i + 1 < n && s[i + 1] == '"') {  // "" is an escaped quote
              field.push_back('"');
              i += 2;
              continue;
            }
            ++i;
            closed = true;
            break;
          }
          if (c == '\n') ++line;
          field.push_back(c);
          ++i;
        }
        EVALSVC_CHECK(closed, InputError,
                      "{}:{}: unterminated quoted field {} (opened on this line), expected a closing '\"' before the "
                      "end of the file",
                      name, quote_line, field_no);
        const bool at_end = i == n || s[i] == ',' || s[i] == '\n' || (s[i] == '\r' && i + 1 < n && s[i + 1] == '\n');
        EVALSVC_CHECK(at_end, InputError,
                      "{}:{}: '{}' after the closing quote of field {}, expected ',' or the end of the line "
                      "(a quote inside a quoted field must be doubled)",
                      name, line, shown_char(s[i]), field_no);
      } else {
        while (i < n && s[i] != ',' && s[i] != '\n' && s[i] != '\r') {
          EVALSVC_CHECK(s[i] != '"', InputError,
                        "{}:{}: quote inside unquoted field {}, expected the whole field to be quoted", name, line,
                        field_no);
          field.push_back(s[i]);
          ++i;
        }
        EVALSVC_CHECK(!(i < n && s[i] == '\r' && !(i + 1 < n && s[i + 1] == '\n')), InputError,
                      "{}:{}: bare CR in field {}, expected LF or CRLF line endings", name, line, field_no);
      }
      fields.push_back(std::move(field));
      if (i < n && s[i] == ',') {
        ++i;
        continue;
      }
      if (i < n && s[i] == '\r') ++i;
      if (i < n && s[i] == '\n') {
        ++i;
        ++line;
      }
      break;
    }

    EVALSVC_CHECK(fields.size() == kFields, InputError,
                  "{}:{}: {} field(s), expected {} (\"class\",\"title\",\"description\")", name, record_line,
                  fields.size(), kFields);
    const std::string& cls = fields[0];
    EVALSVC_CHECK(cls.size() == 1 && cls[0] >= '1' && cls[0] <= '4', InputError,
                  "{}:{}: class '{}', expected 1..4 (World, Sports, Business, Sci/Tech)", name, record_line,
                  shown(cls));
    EVALSVC_CHECK(!(blank(fields[1]) && blank(fields[2])), InputError,
                  "{}:{}: empty text (title and description are both blank), expected some text", name, record_line);
    NewsRow row;
    row.label = cls[0] - '1';
    row.text.reserve(fields[1].size() + 1 + fields[2].size());
    row.text.append(fields[1]).append(" ").append(fields[2]);
    row.line = record_line;
    rows.push_back(std::move(row));
  }
  return rows;
}

std::vector<NewsRow> read_ag_news_csv(const std::filesystem::path& csv, size_t limit) {
  const std::string bytes = read_file(csv);
  return parse_ag_news_csv(bytes, csv.string(), limit);
}

SplitIndices stratified_split(const std::vector<int32_t>& labels, double validation_fraction, uint64_t seed) {
  EVALSVC_CHECK(validation_fraction >= 0.0 && validation_fraction <= 1.0, InputError,
                "stratified_split: validation fraction {}, expected a value in [0, 1]", validation_fraction);
  // std::map: classes are visited in label order, which keeps the draw sequence independent of hashing.
  std::map<int32_t, std::vector<size_t>> by_class;
  for (size_t i = 0; i < labels.size(); ++i) by_class[labels[i]].push_back(i);
  std::mt19937_64 rng(seed);
  SplitIndices out;
  for (auto& [label, idx] : by_class) {
    for (size_t k = idx.size(); k > 1; --k) std::swap(idx[k - 1], idx[bounded_draw(rng, k)]);
    const auto n_val = static_cast<size_t>(std::llround(validation_fraction * double(idx.size())));
    out.validation.insert(out.validation.end(), idx.begin(), idx.begin() + static_cast<std::ptrdiff_t>(n_val));
    out.train.insert(out.train.end(), idx.begin() + static_cast<std::ptrdiff_t>(n_val), idx.end());
  }
  std::sort(out.train.begin(), out.train.end());
  std::sort(out.validation.begin(), out.validation.end());
  return out;
}

}  // namespace evalsvc::worker
