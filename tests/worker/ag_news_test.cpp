// The AG News reader on the real files (row and class counts from shared/data/README.md), table-driven
// well-formed edge cases and malformed inputs written to temp files, random corruption that must end in
// InputError rather than a crash, and the stratified split.
#include "evalsvc/worker/ag_news.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <string>

#include "evalsvc/common/error.h"
#include "evalsvc/common/paths.h"

namespace evalsvc::worker {
namespace {

namespace fs = std::filesystem;

class TempCsv {
 public:
  explicit TempCsv(const std::string& content) {
    static int counter = 0;
    path_ = fs::temp_directory_path() / fmt::format("qbench_ag_news_test_{}_{}.csv", ::getpid(), counter++);
    std::ofstream out(path_, std::ios::binary);
    out.write(content.data(), static_cast<std::streamsize>(content.size()));
  }
  ~TempCsv() { fs::remove(path_); }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

std::array<size_t, 4> class_counts(const std::vector<NewsRow>& rows) {
  std::array<size_t, 4> c{};
  for (const auto& r : rows) ++c.at(static_cast<size_t>(r.label));
  return c;
}

TEST(AgNewsCsvTest, RealTestFile) {
  const auto rows = read_ag_news_csv(data_dir() / "ag_news" / "test.csv");
  ASSERT_EQ(rows.size(), 7600u);
  EXPECT_EQ(class_counts(rows), (std::array<size_t, 4>{1900, 1900, 1900, 1900}));
  EXPECT_EQ(rows[0].label, 2);  // class "3" = Business
  EXPECT_EQ(rows[0].text,
            "Fears for T N pension after talks Unions representing workers at Turner   Newall say they are "
            "'disappointed' after talks with stricken parent firm Federal Mogul.");
  // One record per line in this file.
  for (size_t i = 0; i < rows.size(); ++i) ASSERT_EQ(rows[i].line, static_cast<int64_t>(i + 1)) << "row " << i;
}

TEST(AgNewsCsvTest, RealTrainSubset) {
  const auto rows = read_ag_news_csv(data_dir() / "ag_news" / "train_first10429.csv");
  ASSERT_EQ(rows.size(), 10429u);
  EXPECT_EQ(class_counts(rows), (std::array<size_t, 4>{2630, 2452, 2594, 2753}));
  EXPECT_EQ(rows[0].text.rfind("Wall St. Bears Claw Back Into the Black (Reuters) ", 0), 0u) << rows[0].text;
  EXPECT_EQ(rows[1].text.rfind("Carlyle Looks Toward Commercial Aerospace (Reuters) ", 0), 0u) << rows[1].text;
}

TEST(AgNewsCsvTest, LimitStopsEarly) {
  const auto rows = read_ag_news_csv(data_dir() / "ag_news" / "test.csv", 10);
  ASSERT_EQ(rows.size(), 10u);
  EXPECT_EQ(rows[9].line, 10);
}

TEST(AgNewsCsvTest, ClassNames) {
  EXPECT_STREQ(kClassNames[0], "World");
  EXPECT_STREQ(kClassNames[3], "Sci/Tech");
}

struct GoodCase {
  std::string name, content;
  size_t limit;
  std::vector<NewsRow> expected;
};

TEST(AgNewsCsvTest, WellFormedEdgeCases) {
  const std::vector<GoodCase> cases = {
      {"escaped_quotes_crlf_quoted_newline_unquoted_no_final_newline",
       "\"1\",\"He said \"\"hi\"\"\",\"x\"\r\n\"2\",\"multi\nline\",\"d\"\r\n\"3\",t,d",
       0,
       {{0, "He said \"hi\" x", 1}, {1, "multi\nline d", 2}, {2, "t d", 4}}},
      {"trailing_blank_lines_ignored", "\"4\",\"a\",\"b\"\n\n\r\n\n", 0, {{3, "a b", 1}}},
      {"empty_title_or_description_allowed", "\"1\",\"\",\"only desc\"\n\"2\",\"only title\",\"\"\n", 0,
       {{0, " only desc", 1}, {1, "only title ", 2}}},
      {"limit_skips_a_bad_tail", "\"1\",\"a\",\"b\"\n\"9\",\"bad\",\"class\"\n", 1, {{0, "a b", 1}}},
      {"empty_file", "", 0, {}},
      {"commas_inside_quotes", "\"2\",\"a, b\",\"c,d\"\n", 0, {{1, "a, b c,d", 1}}},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    TempCsv f(c.content);
    const auto rows = read_ag_news_csv(f.path(), c.limit);
    ASSERT_EQ(rows.size(), c.expected.size());
    for (size_t i = 0; i < rows.size(); ++i) {
      EXPECT_EQ(rows[i].label, c.expected[i].label) << "row " << i;
      EXPECT_EQ(rows[i].text, c.expected[i].text) << "row " << i;
      EXPECT_EQ(rows[i].line, c.expected[i].line) << "row " << i;
    }
  }
}

struct BadCase {
  std::string name, content;
  std::string where;  // ":LINE:" expected right after the file name
  std::string what;   // a phrase the message must contain
};

TEST(AgNewsCsvTest, MalformedInputsAreInputErrorsWithFileAndLine) {
  const std::vector<BadCase> cases = {
      {"too_few_fields", "\"1\",\"a\"\n", ":1:", "2 field(s), expected 3"},
      {"too_many_fields", "\"1\",\"a\",\"b\",\"c\"\n", ":1:", "4 field(s), expected 3"},
      {"class_zero", "\"0\",\"a\",\"b\"\n", ":1:", "class '0', expected 1..4"},
      {"class_five", "\"5\",\"a\",\"b\"\n", ":1:", "class '5', expected 1..4"},
      {"class_word", "\"World\",\"a\",\"b\"\n", ":1:", "class 'World', expected 1..4"},
      {"class_two_digits", "\"11\",\"a\",\"b\"\n", ":1:", "class '11'"},
      {"class_empty", "\"\",\"a\",\"b\"\n", ":1:", "class '', expected 1..4"},
      {"unterminated_quote", "\"1\",\"a\",\"never closed\nstill going\n", ":1:", "unterminated quoted field 3"},
      {"text_after_closing_quote", "\"1\",\"a\"x,\"b\"\n", ":1:", "'x' after the closing quote of field 2"},
      {"quote_in_unquoted_field", "1,a\"b,c\n", ":1:", "quote inside unquoted field 2"},
      {"empty_text", "\"1\",\"\",\"\"\n", ":1:", "empty text"},
      {"blank_text", "\"1\",\"  \",\"\t\"\n", ":1:", "empty text"},
      {"error_on_second_line", "\"1\",\"a\",\"b\"\n\"9\",\"c\",\"d\"\n", ":2:", "class '9'"},
      {"line_counts_quoted_newlines", "\"1\",\"a\",\"b\nc\"\n\"2\",\"x\"\n", ":3:", "2 field(s)"},
      {"blank_line_in_the_middle", "\"1\",\"a\",\"b\"\n\n\"2\",\"c\",\"d\"\n", ":2:", "1 field(s), expected 3"},
      {"bare_cr", "1,a,b\rc\n", ":1:", "bare CR"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    TempCsv f(c.content);
    try {
      (void)read_ag_news_csv(f.path());
      ADD_FAILURE() << "expected InputError";
    } catch (const InputError& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(f.path().string() + c.where), std::string::npos) << msg;
      EXPECT_NE(msg.find(c.what), std::string::npos) << msg;
    }
  }
}

TEST(AgNewsCsvTest, MissingFileIsIoError) {
  EXPECT_THROW(read_ag_news_csv("/nonexistent/qbench/test.csv"), IoError);
}

// Flipping, inserting and deleting random bytes of valid records must give rows or an InputError,
// never a crash or another exception type.
TEST(AgNewsCsvTest, RandomCorruptionNeverCrashes) {
  const std::string valid =
      "\"1\",\"Title \"\"one\"\"\",\"Desc, with comma\"\n\"2\",\"Two\",\"multi\nline\"\r\n\"3\",\"x\",\"y\"\n";
  static constexpr char kAlphabet[] = "\",\r\n1234a \0\xff";
  const std::string alphabet(kAlphabet, sizeof(kAlphabet) - 1);  // keeps the NUL byte
  std::mt19937_64 rng(7);
  int parsed = 0, rejected = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    std::string s = valid;
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits && !s.empty(); ++e) {
      const size_t pos = rng() % s.size();
      const char ch = alphabet[rng() % alphabet.size()];
      switch (rng() % 3) {
        case 0: s[pos] = ch; break;
        case 1: s.insert(s.begin() + static_cast<std::ptrdiff_t>(pos), ch); break;
        default: s.erase(pos, 1); break;
      }
    }
    try {
      const auto rows = parse_ag_news_csv(s, "fuzz.csv");
      for (const auto& r : rows) {
        ASSERT_GE(r.label, 0);
        ASSERT_LE(r.label, 3);
      }
      ++parsed;
    } catch (const InputError&) {
      ++rejected;
    }
  }
  EXPECT_GT(parsed, 0);
  EXPECT_GT(rejected, 0);
}

TEST(StratifiedSplitTest, SameFractionPerClassDeterministicDisjoint) {
  const auto rows = read_ag_news_csv(data_dir() / "ag_news" / "train_first10429.csv");
  std::vector<int32_t> labels;
  for (const auto& r : rows) labels.push_back(r.label);
  const SplitIndices s = stratified_split(labels, 0.1, 42);
  // round(0.1 x 2630, 2452, 2594, 2753)
  std::array<size_t, 4> val{};
  for (size_t i : s.validation) ++val.at(static_cast<size_t>(labels[i]));
  EXPECT_EQ(val, (std::array<size_t, 4>{263, 245, 259, 275}));
  EXPECT_EQ(s.train.size() + s.validation.size(), labels.size());
  EXPECT_TRUE(std::is_sorted(s.train.begin(), s.train.end()));
  EXPECT_TRUE(std::is_sorted(s.validation.begin(), s.validation.end()));
  std::set<size_t> all(s.train.begin(), s.train.end());
  all.insert(s.validation.begin(), s.validation.end());
  EXPECT_EQ(all.size(), labels.size());  // disjoint and covering
  EXPECT_EQ(*all.rbegin(), labels.size() - 1);

  const SplitIndices again = stratified_split(labels, 0.1, 42);
  EXPECT_EQ(again.validation, s.validation);
  EXPECT_EQ(again.train, s.train);
  const SplitIndices other = stratified_split(labels, 0.1, 43);
  EXPECT_NE(other.validation, s.validation);
  // The validation rows are spread over the file, not the first rows of each class.
  EXPECT_GT(s.validation.back(), labels.size() / 2);
}

TEST(StratifiedSplitTest, EdgeFractionsAndBadInput) {
  const std::vector<int32_t> labels = {0, 0, 1, 1, 1, 7};
  const SplitIndices none = stratified_split(labels, 0.0, 1);
  EXPECT_TRUE(none.validation.empty());
  EXPECT_EQ(none.train.size(), labels.size());
  const SplitIndices all = stratified_split(labels, 1.0, 1);
  EXPECT_TRUE(all.train.empty());
  EXPECT_EQ(all.validation.size(), labels.size());
  const SplitIndices empty = stratified_split({}, 0.5, 1);
  EXPECT_TRUE(empty.train.empty() && empty.validation.empty());
  EXPECT_THROW(stratified_split(labels, -0.1, 1), InputError);
  EXPECT_THROW(stratified_split(labels, 1.5, 1), InputError);
  EXPECT_THROW(stratified_split(labels, std::nan(""), 1), InputError);
}

}  // namespace
}  // namespace evalsvc::worker
