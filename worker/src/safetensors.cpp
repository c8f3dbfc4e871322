#include "evalsvc/worker/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <set>
#include <vector>

#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "evalsvc/common/error.h"
#include "evalsvc/common/paths.h"

namespace evalsvc::worker {
namespace {

// The format is little-endian; tensors are memcpy'd as they are, which is only right on such a host.
static_assert(std::endian::native == std::endian::little, "safetensors I/O assumes a little-endian host");

// The reference implementation refuses headers above 100 MB; a larger length is a corrupt file, and
// refusing it early keeps a hostile length from turning into a huge allocation.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
constexpr const char* kMetadataKey = "__metadata__";

struct DtypeInfo {
  const char* name;
  torch::ScalarType type;
};

const std::vector<DtypeInfo>& dtype_table() {
  static const std::vector<DtypeInfo> table = {
      {"F64", torch::kFloat64}, {"F32", torch::kFloat32}, {"F16", torch::kFloat16},
      {"BF16", torch::kBFloat16}, {"I64", torch::kInt64}, {"I32", torch::kInt32},
      {"I16", torch::kInt16}, {"I8", torch::kInt8}, {"U8", torch::kUInt8},
      {"BOOL", torch::kBool},
#if EVALSVC_HAS_FLOAT8
      {"F8_E4M3", torch::kFloat8_e4m3fn}, {"F8_E5M2", torch::kFloat8_e5m2},
#endif
  };
  return table;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

// Reads a non-negative JSON integer; rejects floats (2.0), negatives and strings.
std::optional<uint64_t> as_u64(const nlohmann::json& j) {
  if (!j.is_number_unsigned()) return std::nullopt;
  return j.get<uint64_t>();
}

// Parses the JSON header, rejecting duplicate keys at any object level: nlohmann keeps the last of two
// equal keys silently, which would let a file show one tensor to us and another to other readers.
nlohmann::json parse_header_json(std::string_view text, const std::string& name) {
  std::vector<std::set<std::string>> keys_at_depth;
  std::string duplicate;
  auto cb = [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    const auto d = static_cast<size_t>(depth);
    if (event == nlohmann::json::parse_event_t::object_start) {
      if (keys_at_depth.size() < d + 1) keys_at_depth.resize(d + 1);
      keys_at_depth[d].clear();
    } else if (event == nlohmann::json::parse_event_t::key && d >= 1 && keys_at_depth.size() >= d) {
      const auto& k = parsed.get_ref<const std::string&>();
      if (!keys_at_depth[d - 1].insert(k).second && duplicate.empty()) duplicate = k;
    }
    return true;
  };
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text.begin(), text.end(), cb, /*allow_exceptions=*/true);
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(fmt::format("{}: safetensors header ({} bytes) is not valid JSON: {}", name, text.size(),
                                  e.what()));
  }
  EVALSVC_CHECK(duplicate.empty(), FormatError, "{}: safetensors header has the key '{}' more than once", name,
                duplicate);
  EVALSVC_CHECK(j.is_object(), FormatError, "{}: safetensors header must be a JSON object, got {}", name,
                j.type_name());
  return j;
}

uint64_t numel_checked(const std::vector<int64_t>& shape, const std::string& name, const std::string& key) {
  uint64_t n = 1;
  for (int64_t d : shape) {
    if (__builtin_mul_overflow(n, static_cast<uint64_t>(d), &n)) {
      throw FormatError(fmt::format("{}: tensor '{}' shape {} overflows 64 bits", name, key, shape_str(shape)));
    }
  }
  return n;
}

// An mmap of a whole file, unmapped on scope exit.
class MappedFile {
 public:
  explicit MappedFile(const std::filesystem::path& path) {
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) throw IoError(fmt::format("cannot open '{}': {}", path.string(), std::strerror(errno)));
    struct stat st {};
    if (::fstat(fd_, &st) != 0) {
      int e = errno;
      ::close(fd_);
      throw IoError(fmt::format("cannot stat '{}': {}", path.string(), std::strerror(e)));
    }
    if (!S_ISREG(st.st_mode)) {
      ::close(fd_);
      throw InputError(fmt::format("'{}' is not a regular file", path.string()));
    }
    size_ = static_cast<size_t>(st.st_size);
    if (size_ > 0) {
      void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd_, 0);
      if (p == MAP_FAILED) {
        int e = errno;
        ::close(fd_);
        throw IoError(fmt::format("cannot map '{}' ({} bytes): {}", path.string(), size_, std::strerror(e)));
      }
      data_ = static_cast<const char*>(p);
    }
  }
  ~MappedFile() {
    if (data_ != nullptr) ::munmap(const_cast<char*>(data_), size_);
    if (fd_ >= 0) ::close(fd_);
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  std::string_view bytes() const { return {data_ == nullptr ? "" : data_, size_}; }

 private:
  int fd_ = -1;
  const char* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace

std::optional<std::string> safetensors_dtype_name(torch::ScalarType dtype) {
  for (const auto& d : dtype_table()) {
    if (d.type == dtype) return std::string(d.name);
  }
  return std::nullopt;
}

std::optional<torch::ScalarType> torch_dtype_of(std::string_view safetensors_dtype) {
  for (const auto& d : dtype_table()) {
    if (safetensors_dtype == d.name) return d.type;
  }
  return std::nullopt;
}

SafetensorsHeader parse_safetensors_header(std::string_view bytes, const std::string& name) {
  EVALSVC_CHECK(bytes.size() >= 8, FormatError,
                "{}: {} bytes is too short for a safetensors file (the 8-byte header length is missing)", name,
                bytes.size());
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes.data(), 8);  // little-endian (static_assert above)
  EVALSVC_CHECK(header_len <= bytes.size() - 8, FormatError,
                "{}: header length {} runs past the end of the file ({} bytes after the length field)", name,
                header_len, bytes.size() - 8);
  EVALSVC_CHECK(header_len <= kMaxHeaderBytes, FormatError, "{}: header length {} exceeds the {}-byte limit",
                name, header_len, kMaxHeaderBytes);
  EVALSVC_CHECK(header_len >= 2, FormatError, "{}: header length {} cannot hold a JSON object", name, header_len);
  const std::string_view header_text = bytes.substr(8, header_len);
  // The format requires the header to be a JSON object starting at its first byte.
  EVALSVC_CHECK(header_text.front() == '{', FormatError, "{}: header must start with '{{', got byte 0x{:02x}", name,
                static_cast<unsigned>(static_cast<unsigned char>(header_text.front())));
  const nlohmann::json j = parse_header_json(header_text, name);

  SafetensorsHeader h;
  h.data_start = 8 + header_len;
  const uint64_t data_size = bytes.size() - h.data_start;
  for (const auto& [key, value] : j.items()) {
    if (key == kMetadataKey) {
      EVALSVC_CHECK(value.is_object(), FormatError, "{}: __metadata__ must be an object of strings, got {}", name,
                    value.type_name());
      for (const auto& [mk, mv] : value.items()) {
        EVALSVC_CHECK(mv.is_string(), FormatError, "{}: __metadata__ field '{}' must be a string, got {}", name,
                      mk, mv.type_name());
        h.metadata[mk] = mv.get<std::string>();
      }
      continue;
    }
    EVALSVC_CHECK(value.is_object(), FormatError, "{}: tensor '{}' must be described by an object, got {}", name,
                  key, value.type_name());
    for (const char* field : {"dtype", "shape", "data_offsets"}) {
      EVALSVC_CHECK(value.contains(field), FormatError, "{}: tensor '{}' has no '{}' field", name, key, field);
    }
    SafetensorsEntry e;
    const auto& dt = value["dtype"];
    EVALSVC_CHECK(dt.is_string(), FormatError, "{}: tensor '{}' dtype must be a string, got {}", name, key,
                  dt.dump());
    e.dtype = dt.get<std::string>();
    const auto type = torch_dtype_of(e.dtype);
    if (!type) {
      std::vector<std::string> known;
      for (const auto& d : dtype_table()) known.emplace_back(d.name);
      throw FormatError(fmt::format("{}: tensor '{}' has dtype '{}', which this build cannot load (known: {})",
                                    name, key, e.dtype, fmt::join(known, ", ")));
    }
    const auto& shape = value["shape"];
    EVALSVC_CHECK(shape.is_array(), FormatError, "{}: tensor '{}' shape must be an array, got {}", name, key,
                  shape.dump());
    for (const auto& d : shape) {
      const auto v = as_u64(d);
      EVALSVC_CHECK(v && *v <= static_cast<uint64_t>(INT64_MAX), FormatError,
                    "{}: tensor '{}' shape {} has an entry that is not a non-negative integer: {}", name, key,
                    shape.dump(), d.dump());
      e.shape.push_back(static_cast<int64_t>(*v));
    }
    const auto& off = value["data_offsets"];
    EVALSVC_CHECK(off.is_array() && off.size() == 2, FormatError,
                  "{}: tensor '{}' data_offsets must be [begin, end], got {}", name, key, off.dump());
    const auto b = as_u64(off[0]), en = as_u64(off[1]);
    EVALSVC_CHECK(b && en, FormatError, "{}: tensor '{}' data_offsets must be non-negative integers, got {}", name,
                  key, off.dump());
    e.begin = *b;
    e.end = *en;
    EVALSVC_CHECK(e.begin <= e.end, FormatError, "{}: tensor '{}' data_offsets begin {} > end {}", name, key,
                  e.begin, e.end);
    EVALSVC_CHECK(e.end <= data_size, FormatError,
                  "{}: tensor '{}' data_offsets [{}, {}] run past the data section ({} bytes)", name, key, e.begin,
                  e.end, data_size);
    const uint64_t numel = numel_checked(e.shape, name, key);
    const uint64_t itemsize = c10::elementSize(*type);
    uint64_t want = 0;
    EVALSVC_CHECK(!__builtin_mul_overflow(numel, itemsize, &want), FormatError,
                  "{}: tensor '{}' shape {} x {} bytes overflows 64 bits", name, key, shape_str(e.shape), itemsize);
    EVALSVC_CHECK(want == e.end - e.begin, FormatError,
                  "{}: tensor '{}' {} {} needs {} bytes but data_offsets [{}, {}] hold {}", name, key, e.dtype,
                  shape_str(e.shape), want, e.begin, e.end, e.end - e.begin);
    h.entries.emplace(key, std::move(e));
  }

  // Overlap check on the byte ranges sorted by start; empty tensors occupy nothing and cannot overlap.
  std::vector<std::pair<const std::string*, const SafetensorsEntry*>> ranges;
  for (const auto& [k, e] : h.entries) {
    if (e.end > e.begin) ranges.emplace_back(&k, &e);
  }
  std::sort(ranges.begin(), ranges.end(), [](const auto& a, const auto& b) { return a.second->begin < b.second->begin; });
  for (size_t i = 1; i < ranges.size(); ++i) {
    const auto& prev = *ranges[i - 1].second;
    const auto& cur = *ranges[i].second;
    EVALSVC_CHECK(cur.begin >= prev.end, FormatError,
                  "{}: tensors '{}' [{}, {}] and '{}' [{}, {}] overlap in the data section", name,
                  *ranges[i - 1].first, prev.begin, prev.end, *ranges[i].first, cur.begin, cur.end);
  }
  return h;
}

SafetensorsFile parse_safetensors(std::string_view bytes, const std::string& name) {
  const SafetensorsHeader h = parse_safetensors_header(bytes, name);
  SafetensorsFile out;
  out.metadata = h.metadata;
  for (const auto& [key, e] : h.entries) {
    const auto type = *torch_dtype_of(e.dtype);
    torch::Tensor t = torch::empty(e.shape, torch::TensorOptions().dtype(type));
    const char* src = bytes.data() + h.data_start + e.begin;
    const size_t n = e.end - e.begin;
    if (type == torch::kBool) {
      // A bool byte other than 0/1 is undefined behaviour for torch's kernels; refuse it here.
      for (size_t i = 0; i < n; ++i) {
        const auto v = static_cast<unsigned char>(src[i]);
        EVALSVC_CHECK(v <= 1, FormatError, "{}: BOOL tensor '{}' holds byte {} at element {} (must be 0 or 1)",
                      name, key, static_cast<unsigned>(v), i);
      }
    }
    if (n > 0) std::memcpy(t.data_ptr(), src, n);
    out.tensors.emplace(key, std::move(t));
  }
  return out;
}

SafetensorsFile read_safetensors(const std::filesystem::path& path) {
  MappedFile f(path);
  return parse_safetensors(f.bytes(), path.string());
}

SafetensorsHeader read_safetensors_header(const std::filesystem::path& path) {
  MappedFile f(path);
  return parse_safetensors_header(f.bytes(), path.string());
}

std::string serialize_safetensors(const std::map<std::string, torch::Tensor>& tensors,
                                  const std::map<std::string, std::string>& metadata) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) {
    nlohmann::json m = nlohmann::json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    header[kMetadataKey] = std::move(m);
  }
  std::vector<torch::Tensor> data;
  data.reserve(tensors.size());
  uint64_t offset = 0;
  for (const auto& [key, tensor] : tensors) {
    EVALSVC_CHECK(!key.empty(), InputError, "safetensors: a tensor has an empty name");
    EVALSVC_CHECK(key != kMetadataKey, InputError, "safetensors: '{}' is reserved and cannot name a tensor", key);
    EVALSVC_CHECK(tensor.defined(), InputError, "safetensors: tensor '{}' is undefined", key);
    const auto name = safetensors_dtype_name(tensor.scalar_type());
    EVALSVC_CHECK(name.has_value(), InputError, "safetensors: tensor '{}' has dtype {}, which the format cannot name",
                  key, c10::toString(tensor.scalar_type()));
    torch::Tensor t = tensor.detach().to(torch::kCPU).contiguous();
    const uint64_t n = static_cast<uint64_t>(t.numel()) * t.element_size();
    header[key] = {{"dtype", *name}, {"shape", t.sizes().vec()}, {"data_offsets", {offset, offset + n}}};
    offset += n;
    data.push_back(std::move(t));
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {
    throw InputError(fmt::format("safetensors: a tensor name or metadata string is not valid UTF-8: {}", e.what()));
  }
  // Pad with spaces (valid JSON whitespace) so the data section is 8-byte aligned, as the reference writer does.
  text.append((8 - (8 + text.size()) % 8) % 8, ' ');
  std::string out;
  out.reserve(8 + text.size() + offset);
  const uint64_t len = text.size();
  out.append(reinterpret_cast<const char*>(&len), 8);
  out += text;
  for (const auto& t : data) out.append(static_cast<const char*>(t.data_ptr()), t.numel() * t.element_size());
  return out;
}

void write_safetensors(const std::filesystem::path& path, const std::map<std::string, torch::Tensor>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  write_file_atomic(path, serialize_safetensors(tensors, metadata));
}

}  // namespace evalsvc::worker
