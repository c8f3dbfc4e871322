#pragma once
// safetensors (https://github.com/huggingface/safetensors) read and written by qbench's own code:
//   [8 bytes: header length N, little-endian u64][N bytes: JSON header][data section]
// The header maps each tensor name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative
// to the data section) and may hold "__metadata__": {string: string}. Files come from users and from the
// network, so every field is validated before a byte of tensor data is touched.
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "evalsvc/kernels/torch_compat.h"

namespace evalsvc::worker {

/// The content of one safetensors file: tensors on CPU, contiguous, and the free-form string metadata.
struct SafetensorsFile {
  std::map<std::string, torch::Tensor> tensors;
  std::map<std::string, std::string> metadata;
};

/// The safetensors dtype string of a torch dtype ("F32", "BF16", ...), or nullopt when the format has no
/// name for it (complex, quantized) or this build does not map it.
std::optional<std::string> safetensors_dtype_name(torch::ScalarType dtype);

/// The torch dtype of a safetensors dtype string, or nullopt for a name this libtorch cannot hold
/// (F8_E4M3/F8_E5M2 need libtorch >= 2.1; U16/U32/U64 and the 4/6-bit float types are not mapped).
std::optional<torch::ScalarType> torch_dtype_of(std::string_view safetensors_dtype);

/// Reads a whole file (memory-mapped, so peak memory is one copy of the tensors). Validates: 8-byte
/// little-endian header length within the file, JSON header, dtypes F32/F16/BF16/I8/U8/I16/I32/I64/F64/
/// BOOL (F8_E4M3/F8_E5M2 where the torch build has them), data_offsets inside the data section,
/// begin <= end, size == numel * itemsize, offsets not overlapping, shapes non-negative integers, no
/// duplicate keys, BOOL bytes 0/1. Any violation -> FormatError naming the file, tensor key and values;
/// a file that cannot be opened -> IoError.
SafetensorsFile read_safetensors(const std::filesystem::path& path);

/// The same validation and result for bytes already in memory; `name_for_errors` stands for the file.
SafetensorsFile parse_safetensors(std::string_view bytes, const std::string& name_for_errors);

/// The header only (dtype, shape, offsets of every tensor, and the metadata) without materialising
/// tensors: what `qbench model info` and download checks need. Same validation as parse_safetensors
/// except that tensor bytes are not inspected (BOOL values).
struct SafetensorsEntry {
  std::string dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  ///< offsets inside the data section
};
struct SafetensorsHeader {
  std::map<std::string, SafetensorsEntry> entries;
  std::map<std::string, std::string> metadata;
  uint64_t data_start = 0;  ///< absolute file offset of the data section (8 + header length)
};
SafetensorsHeader parse_safetensors_header(std::string_view bytes, const std::string& name_for_errors);
/// parse_safetensors_header of a file, memory-mapped so only the header pages are read from disk.
SafetensorsHeader read_safetensors_header(const std::filesystem::path& path);

/// Serialises tensors (made contiguous, copied to CPU) sorted by key, with the JSON header padded with
/// spaces so the data section starts at a multiple of 8 bytes, and `metadata` as "__metadata__" when
/// non-empty. InputError for an empty key, the reserved key "__metadata__", keys or metadata that are not
/// valid UTF-8, or a dtype safetensors cannot name.
std::string serialize_safetensors(const std::map<std::string, torch::Tensor>& tensors,
                                  const std::map<std::string, std::string>& metadata = {});

/// serialize_safetensors written atomically (evalsvc::write_file_atomic): readers never see half a file.
void write_safetensors(const std::filesystem::path& path, const std::map<std::string, torch::Tensor>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace evalsvc::worker
