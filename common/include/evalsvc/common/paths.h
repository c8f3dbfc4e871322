#pragma once
// Where qbench finds its inputs and writes its artifacts, and the file primitives every component uses.
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>

namespace evalsvc {

/// qbench's version string (the CMake project version).
std::string version();

/// The data folder holding ag_news/ and gpt2/: `override` if given, else $QBENCH_DATA_DIR, else the
/// build's default (../shared/data beside the source tree). Throws InputError naming every place tried
/// when none of them holds gpt2/encoder.json.
std::filesystem::path data_dir(const std::optional<std::string>& override = std::nullopt);

/// The source tree root (for committed test fixtures under tests/fixtures).
std::filesystem::path source_dir();

/// Reads a whole file; IoError naming the path and errno text on failure.
std::string read_file(const std::filesystem::path& path);

/// Writes `bytes` to `path` atomically: a temp file in the same folder, fsync, then rename, so a reader
/// (or a retried job) never sees half a file. Creates parent folders.
void write_file_atomic(const std::filesystem::path& path, std::string_view bytes);

/// Removes `path` and everything under it, never following symbolic links; a missing path is no error.
/// Throws IoError naming the entry and errno text. Use this, not std::filesystem::remove_all: PyTorch's
/// CUDA wheels export their own copy of remove_all(const path&) from libtorch.so, which the dynamic linker
/// binds ahead of libstdc++'s and which jumps to a null address on Ubuntu 24.04 (seen on the GPU host).
void remove_tree(const std::filesystem::path& path);
/// The same without throwing: false and `ec` set on the first failure.
bool remove_tree(const std::filesystem::path& path, std::error_code& ec) noexcept;

/// Environment variable or nullopt when unset or empty.
std::optional<std::string> getenv_opt(const char* name);

}  // namespace evalsvc
