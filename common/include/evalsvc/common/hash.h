#pragma once
// SHA-256 (FIPS 180-4) and MD5 (RFC 1321), written here so that cache keys and data checks need no
// crypto library. SHA-256 keys caches and identifies files; MD5 exists only because the AG News
// release publishes MD5 checksums (SPEC section 1) that a user's copy must be checked against.
#include <array>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

namespace evalsvc {

/// Streaming SHA-256: update() any number of times, then digest() once.
class Sha256 {
 public:
  static constexpr size_t kDigestSize = 32;
  using Digest = std::array<uint8_t, kDigestSize>;

  Sha256();
  /// Feeds `size` more bytes. InternalError after digest() (a finished hash cannot be extended).
  void update(const void* data, size_t size);
  /// Feeds the bytes of `bytes`.
  void update(std::string_view bytes) { update(bytes.data(), bytes.size()); }
  /// Pads and finishes; the object cannot be updated afterwards.
  Digest digest();
  /// digest() as 64 lowercase hex characters.
  std::string hex_digest();

 private:
  void compress_(const uint8_t* block);

  std::array<uint32_t, 8> state_;
  std::array<uint8_t, 64> buffer_{};
  size_t buffered_ = 0;
  uint64_t total_bytes_ = 0;
  bool finished_ = false;
};

/// Streaming MD5: update() any number of times, then digest() once.
class Md5 {
 public:
  static constexpr size_t kDigestSize = 16;
  using Digest = std::array<uint8_t, kDigestSize>;

  Md5();
  /// Feeds `size` more bytes. InternalError after digest().
  void update(const void* data, size_t size);
  /// Feeds the bytes of `bytes`.
  void update(std::string_view bytes) { update(bytes.data(), bytes.size()); }
  /// Pads and finishes; the object cannot be updated afterwards.
  Digest digest();
  /// digest() as 32 lowercase hex characters.
  std::string hex_digest();

 private:
  void compress_(const uint8_t* block);

  std::array<uint32_t, 4> state_;
  std::array<uint8_t, 64> buffer_{};
  size_t buffered_ = 0;
  uint64_t total_bytes_ = 0;
  bool finished_ = false;
};

/// Lowercase hex of arbitrary bytes.
std::string to_hex(const uint8_t* data, size_t size);

/// SHA-256 of `bytes` as lowercase hex.
std::string sha256_hex(std::string_view bytes);
/// SHA-256 of a file's content, read in 1 MiB chunks (the file is never held in memory whole).
/// IoError naming the path when it cannot be opened or read.
std::string sha256_file_hex(const std::filesystem::path& path);

/// MD5 of `bytes` as lowercase hex.
std::string md5_hex(std::string_view bytes);
/// MD5 of a file's content, read in 1 MiB chunks. IoError naming the path on failure.
std::string md5_file_hex(const std::filesystem::path& path);

}  // namespace evalsvc
