// safetensors reader/writer: round trips of every dtype, and every kind of malformed file must give a
// FormatError (never a crash or another exception), including random bytes and every truncation.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <random>

#include "evalsvc/common/error.h"
#include "evalsvc/common/paths.h"
#include "evalsvc/worker/safetensors.h"

namespace fs = std::filesystem;
using namespace evalsvc;
using namespace evalsvc::worker;

namespace {

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("qbench_st_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { evalsvc::remove_tree(dir_); }
  fs::path dir_;
};

// A raw file: 8-byte length, header text as given, then `data`.
std::string raw_file(const std::string& header, const std::string& data = "") {
  std::string out(8, '\0');
  const uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  return out + header + data;
}

bool same_bytes(const torch::Tensor& a, const torch::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) return false;
  const auto ac = a.contiguous(), bc = b.contiguous();
  const size_t n = ac.numel() * ac.element_size();
  return n == 0 || std::memcmp(ac.data_ptr(), bc.data_ptr(), n) == 0;
}

// Expects a FormatError whose message contains every one of `parts`.
void expect_format_error(const std::string& bytes, std::initializer_list<std::string> parts) {
  try {
    parse_safetensors(bytes, "bad.safetensors");
    FAIL() << "no error for a malformed file; expected one mentioning " << *parts.begin();
  } catch (const FormatError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("bad.safetensors"), std::string::npos) << msg;
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "missing '" << p << "' in: " << msg;
  }
}

std::map<std::string, torch::Tensor> small_tensors() {
  torch::manual_seed(7);
  return {{"a.weight", torch::randn({3, 4})},
          {"b.bias", torch::arange(5, torch::kInt64)},
          {"c.mask", torch::tensor({1, 0, 1}).to(torch::kBool)},
          {"d.half", torch::randn({2, 2}).to(torch::kHalf)}};
}

}  // namespace

TEST_F(SafetensorsTest, RoundTripsEveryDtype) {
  std::vector<torch::ScalarType> types = {torch::kFloat64, torch::kFloat32, torch::kFloat16, torch::kBFloat16,
                                          torch::kInt64,   torch::kInt32,   torch::kInt16,   torch::kInt8,
                                          torch::kUInt8,   torch::kBool};
#if EVALSVC_HAS_FLOAT8
  types.push_back(torch::kFloat8_e4m3fn);
  types.push_back(torch::kFloat8_e5m2);
#endif
  torch::manual_seed(1);
  for (auto type : types) {
    const auto name = safetensors_dtype_name(type);
    ASSERT_TRUE(name.has_value()) << c10::toString(type);
    EXPECT_EQ(torch_dtype_of(*name), type);
    std::map<std::string, torch::Tensor> in;
    torch::Tensor src = type == torch::kBool ? torch::rand({3, 5}) > 0.5 : (torch::randn({3, 5}) * 20);
    in["matrix"] = src.to(type);
    in["scalar"] = torch::ones({}).to(type);
    in["empty"] = torch::zeros({0, 4}).to(type);
    in["odd"] = torch::ones({7}).to(type);  // odd byte counts leave later tensors unaligned
    const fs::path p = dir_ / (*name + ".safetensors");
    write_safetensors(p, in, {{"dtype", *name}});
    const SafetensorsFile out = read_safetensors(p);
    ASSERT_EQ(out.tensors.size(), in.size()) << *name;
    for (const auto& [k, t] : in) {
      ASSERT_TRUE(out.tensors.count(k)) << *name << " " << k;
      EXPECT_TRUE(same_bytes(out.tensors.at(k), t)) << *name << " " << k;
    }
    EXPECT_EQ(out.metadata.at("dtype"), *name);
  }
}

TEST_F(SafetensorsTest, WriterAlignsSortsAndMakesContiguous) {
  torch::manual_seed(2);
  const torch::Tensor base = torch::randn({4, 6});
  const torch::Tensor transposed = base.t();  // not contiguous
  ASSERT_FALSE(transposed.is_contiguous());
  const std::string bytes = serialize_safetensors({{"z", transposed}, {"a", torch::ones({3})}}, {{"k", "v"}});
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ((8 + n) % 8, 0u) << "data section must start 8-byte aligned";
  EXPECT_EQ(bytes[8], '{');
  const auto h = parse_safetensors_header(bytes, "mem");
  EXPECT_LT(h.entries.at("a").begin, h.entries.at("z").begin) << "data must follow key order";
  EXPECT_EQ(h.metadata.at("k"), "v");
  const auto f = parse_safetensors(bytes, "mem");
  EXPECT_TRUE(torch::equal(f.tensors.at("z"), transposed));
  EXPECT_TRUE(f.tensors.at("z").is_contiguous());
}

TEST_F(SafetensorsTest, WriterRefusesWhatTheFormatCannotHold) {
  EXPECT_THROW(serialize_safetensors({{"c", torch::zeros({2}, torch::kComplexFloat)}}), InputError);
  EXPECT_THROW(serialize_safetensors({{"__metadata__", torch::zeros({2})}}), InputError);
  EXPECT_THROW(serialize_safetensors({{"", torch::zeros({2})}}), InputError);
  EXPECT_THROW(serialize_safetensors({{"bad\xff", torch::zeros({2})}}), InputError);
  EXPECT_THROW(serialize_safetensors({{"x", torch::zeros({2})}}, {{"m", "\xc3"}}), InputError);
}

TEST_F(SafetensorsTest, MissingFileIsIoErrorAndEmptyFileFormatError) {
  EXPECT_THROW(read_safetensors(dir_ / "nope.safetensors"), IoError);
  write_file_atomic(dir_ / "empty.safetensors", "");
  EXPECT_THROW(read_safetensors(dir_ / "empty.safetensors"), FormatError);
}

TEST_F(SafetensorsTest, TruncatedAndBadHeaderLength) {
  expect_format_error("", {"too short"});
  expect_format_error(std::string("\x10\0\0", 3), {"too short"});
  std::string past = raw_file("{}");
  past[0] = 100;  // claims 100 header bytes, file has 2
  expect_format_error(past, {"header length 100", "past the end"});
  std::string huge(8, '\xff');
  expect_format_error(huge + "{}", {"past the end"});
  expect_format_error(raw_file("{}", "") .substr(0, 9), {"header length 2"});
}

TEST_F(SafetensorsTest, HeaderNotJsonOrNotObject) {
  expect_format_error(raw_file("{not json}"), {"not valid JSON"});
  expect_format_error(raw_file("{\"a\": {\"dtype\": \"F32\""), {"not valid JSON"});
  expect_format_error(raw_file("[1, 2]  "), {"must start with '{'"});
  expect_format_error(raw_file("{\"a\": 5}"), {"'a'", "object"});
  expect_format_error(raw_file("{\"a\": {\"dtype\": \"F32\", \"shape\": [1]}}", "1234"), {"'a'", "data_offsets"});
}

TEST_F(SafetensorsTest, UnknownOrBadDtype) {
  expect_format_error(raw_file(R"({"w": {"dtype": "F7", "shape": [1], "data_offsets": [0, 4]}})", "abcd"),
                      {"'w'", "'F7'"});
  expect_format_error(raw_file(R"({"w": {"dtype": 32, "shape": [1], "data_offsets": [0, 4]}})", "abcd"),
                      {"'w'", "dtype must be a string"});
#if !EVALSVC_HAS_FLOAT8
  expect_format_error(raw_file(R"({"w": {"dtype": "F8_E4M3", "shape": [1], "data_offsets": [0, 1]}})", "a"),
                      {"'w'", "F8_E4M3"});
#endif
}

TEST_F(SafetensorsTest, WrongSizeForShape) {
  expect_format_error(raw_file(R"({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]}})",
                               std::string(20, 'x')),
                      {"'w'", "[2, 3]", "needs 24 bytes", "hold 20"});
  expect_format_error(raw_file(R"({"w": {"dtype": "F32", "shape": [-2, 3], "data_offsets": [0, 24]}})",
                               std::string(24, 'x')),
                      {"'w'", "non-negative integer", "-2"});
  expect_format_error(raw_file(R"({"w": {"dtype": "F32", "shape": [2.0, 3], "data_offsets": [0, 24]}})",
                               std::string(24, 'x')),
                      {"'w'", "non-negative integer"});
  expect_format_error(raw_file(R"({"w": {"dtype": "F32", "shape": [4294967296, 4294967296, 16], "data_offsets": [0, 8]}})",
                               std::string(8, 'x')),
                      {"'w'", "overflows"});
}

TEST_F(SafetensorsTest, OffsetsOutOfRangeReversedOrOverlapping) {
  expect_format_error(raw_file(R"({"w": {"dtype": "U8", "shape": [8], "data_offsets": [4, 12]}})", "12345678"),
                      {"'w'", "[4, 12]", "past the data section (8 bytes)"});
  expect_format_error(raw_file(R"({"w": {"dtype": "U8", "shape": [0], "data_offsets": [6, 2]}})", "12345678"),
                      {"'w'", "begin 6 > end 2"});
  expect_format_error(raw_file(R"({"w": {"dtype": "U8", "shape": [2], "data_offsets": [-1, 1]}})", "12345678"),
                      {"'w'", "non-negative"});
  expect_format_error(raw_file(R"({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
                                   "b": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]}})",
                               "12345678"),
                      {"'a' [0, 4]", "'b' [2, 6]", "overlap"});
  // Adjacent ranges and empty tensors anywhere are fine.
  const auto ok = parse_safetensors(raw_file(R"({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
                                                 "b": {"dtype": "U8", "shape": [4], "data_offsets": [4, 8]},
                                                 "e": {"dtype": "F32", "shape": [0, 3], "data_offsets": [2, 2]}})",
                                             "12345678"),
                                    "ok");
  EXPECT_EQ(ok.tensors.at("b")[0].item<uint8_t>(), '5');
  EXPECT_EQ(ok.tensors.at("e").numel(), 0);
}

TEST_F(SafetensorsTest, DuplicateAndLookalikeKeys) {
  const std::string data = "12345678";
  expect_format_error(raw_file(R"({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
                                   "a": {"dtype": "U8", "shape": [4], "data_offsets": [4, 8]}})",
                               data),
                      {"'a' more than once"});
  // \u0061 is "a": the same key spelled differently is still a duplicate.
  expect_format_error(raw_file(R"({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
                                   "\u0061": {"dtype": "U8", "shape": [4], "data_offsets": [4, 8]}})",
                               data),
                      {"'a' more than once"});
  expect_format_error(raw_file(R"({"a": {"dtype": "U8", "dtype": "I8", "shape": [4], "data_offsets": [0, 4]}})",
                               data),
                      {"'dtype' more than once"});
  // Keys that only look alike are different tensors.
  const auto ok = parse_safetensors(raw_file(R"({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
                                                 "a ": {"dtype": "U8", "shape": [4], "data_offsets": [4, 8]}})",
                                             data),
                                    "ok");
  EXPECT_EQ(ok.tensors.size(), 2u);
  EXPECT_EQ(ok.tensors.at("a ")[0].item<uint8_t>(), '5');
}

TEST_F(SafetensorsTest, BadMetadataAndBoolBytes) {
  expect_format_error(raw_file(R"({"__metadata__": {"n": 3}})"), {"__metadata__", "'n'", "string"});
  expect_format_error(raw_file(R"({"__metadata__": ["x"]})"), {"__metadata__", "object"});
  expect_format_error(raw_file(R"({"m": {"dtype": "BOOL", "shape": [3], "data_offsets": [0, 3]}})",
                               std::string("\x01\x00\x02", 3)),
                      {"'m'", "byte 2", "element 2"});
}

TEST_F(SafetensorsTest, EveryTruncationIsFormatError) {
  const std::string valid = serialize_safetensors(small_tensors(), {{"format", "pt"}});
  ASSERT_NO_THROW(parse_safetensors(valid, "valid"));
  for (size_t len = 0; len < valid.size(); ++len) {
    EXPECT_THROW(parse_safetensors(std::string_view(valid).substr(0, len), "cut"), FormatError) << "prefix " << len;
  }
}

TEST_F(SafetensorsTest, RandomBytesAreFormatError) {
  std::mt19937_64 rng(1234);
  for (int i = 0; i < 3000; ++i) {
    std::string bytes(rng() % 300, '\0');
    for (auto& c : bytes) c = static_cast<char>(rng());
    if (i % 2 == 1 && bytes.size() >= 8) {
      // A plausible length field, so that the JSON validation is what gets exercised.
      const uint64_t n = (rng() % (bytes.size() - 7));
      std::memcpy(bytes.data(), &n, 8);
      if (n > 0) bytes[8] = '{';
    }
    EXPECT_THROW(parse_safetensors(bytes, "random"), FormatError) << "iteration " << i;
  }
}

TEST_F(SafetensorsTest, MutatedHeadersNeverCrash) {
  const std::string valid = serialize_safetensors(small_tensors(), {{"format", "pt"}});
  uint64_t header_len = 0;
  std::memcpy(&header_len, valid.data(), 8);
  std::mt19937_64 rng(99);
  const std::string alphabet = "{}[]\",:0123456789-.e aFIUBLO_";
  int rejected = 0;
  for (int i = 0; i < 3000; ++i) {
    std::string bytes = valid;
    const int edits = 1 + static_cast<int>(rng() % 3);
    for (int e = 0; e < edits; ++e) {
      const size_t pos = 8 + rng() % header_len;
      bytes[pos] = alphabet[rng() % alphabet.size()];
    }
    try {
      parse_safetensors(bytes, "mutated");  // some edits (a digit in a float) still give a valid file
    } catch (const FormatError&) {
      ++rejected;
    }
  }
  EXPECT_GT(rejected, 1000);  // most edits must be caught; none may escape as another exception
}
