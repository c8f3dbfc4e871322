// SHA-256 against FIPS 180-4 / NIST examples, MD5 against the RFC 1321 test suite, streaming at every
// split point, and the published checksums of the AG News test file.
#include "evalsvc/common/hash.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <unistd.h>

#include "evalsvc/common/error.h"
#include "evalsvc/common/paths.h"

namespace evalsvc {
namespace {

struct Vector {
  std::string input;
  const char* hex;
};

TEST(Sha256Test, FipsVectors) {
  const std::vector<Vector> cases = {
      {"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
      {"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
      {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
       "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
      {"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrs"
       "tnopqrstu",
       "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1"},
      {std::string(1000000, 'a'), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"},
  };
  for (const auto& c : cases) {
    EXPECT_EQ(sha256_hex(c.input), c.hex) << "input of " << c.input.size() << " bytes";
  }
}

TEST(Md5Test, Rfc1321Vectors) {
  const std::vector<Vector> cases = {
      {"", "d41d8cd98f00b204e9800998ecf8427e"},
      {"a", "0cc175b9c0f1b6a831c399e269772661"},
      {"abc", "900150983cd24fb0d6963f7d28e17f72"},
      {"message digest", "f96b697d7cb7938d525a2f31aaf161d0"},
      {"abcdefghijklmnopqrstuvwxyz", "c3fcd3d76192e4007dfb496cca67e13b"},
      {"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", "d174ab98d277d9f5a5611c2c9f419d9f"},
      {"12345678901234567890123456789012345678901234567890123456789012345678901234567890",
       "57edf4a22be3c955ac49da2e2107b67a"},
  };
  for (const auto& c : cases) {
    EXPECT_EQ(md5_hex(c.input), c.hex) << "input '" << c.input << "'";
  }
}

// Lengths around the 56- and 64-byte padding boundaries, fed in two pieces split at every position:
// the streaming result must equal the one-shot result.
TEST(HashStreamingTest, EverySplitMatchesOneShot) {
  for (size_t len : {0u, 1u, 55u, 56u, 57u, 63u, 64u, 65u, 119u, 120u, 128u, 200u}) {
    std::string msg;
    for (size_t i = 0; i < len; ++i) msg.push_back(static_cast<char>((i * 131 + 7) & 0xff));
    const std::string sha_ref = sha256_hex(msg);
    const std::string md5_ref = md5_hex(msg);
    for (size_t split = 0; split <= len; ++split) {
      Sha256 s;
      s.update(std::string_view(msg).substr(0, split));
      s.update(std::string_view(msg).substr(split));
      EXPECT_EQ(s.hex_digest(), sha_ref) << "len " << len << " split " << split;
      Md5 m;
      m.update(std::string_view(msg).substr(0, split));
      m.update(std::string_view(msg).substr(split));
      EXPECT_EQ(m.hex_digest(), md5_ref) << "len " << len << " split " << split;
    }
  }
}

TEST(HashStreamingTest, UpdateAfterDigestIsRejected) {
  Sha256 s;
  s.update("x");
  (void)s.digest();
  EXPECT_THROW(s.update("y"), InternalError);
  Md5 m;
  (void)m.digest();
  EXPECT_THROW((void)m.digest(), InternalError);
}

TEST(HashFileTest, AgNewsTestCsvPublishedChecksums) {
  const auto csv = data_dir() / "ag_news" / "test.csv";
  // MD5 published by torchtext (SPEC section 1); sha256 from shared/data/README.md.
  EXPECT_EQ(md5_file_hex(csv), "d52ea96a97a2d943681189a97654912d");
  EXPECT_EQ(sha256_file_hex(csv), "521465c2428ed7f02f8d6db6ffdd4b5447c1c701962353eb2c40d548c3c85699");
}

// A file larger than the 1 MiB read chunk, with a length that is not a multiple of it.
TEST(HashFileTest, MultiChunkFileMatchesInMemory) {
  const auto path = std::filesystem::temp_directory_path() / ("qbench_hash_test_" + std::to_string(::getpid()));
  std::string content;
  for (size_t i = 0; i < (3u << 20) + 12345; ++i) content.push_back(static_cast<char>((i * 2654435761u) >> 13));
  {
    std::ofstream out(path, std::ios::binary);
    out.write(content.data(), static_cast<std::streamsize>(content.size()));
  }
  EXPECT_EQ(sha256_file_hex(path), sha256_hex(content));
  EXPECT_EQ(md5_file_hex(path), md5_hex(content));
  std::filesystem::remove(path);
}

TEST(HashFileTest, MissingFileIsIoError) {
  EXPECT_THROW(sha256_file_hex("/nonexistent/qbench/file.csv"), IoError);
  EXPECT_THROW(md5_file_hex("/nonexistent/qbench/file.csv"), IoError);
}

}  // namespace
}  // namespace evalsvc
