#include <array>
#include <utility>

#include "evalsvc/common/error.h"
#include "evalsvc/kernels/quantized_linear.h"

namespace evalsvc::kernels {

namespace {
constexpr std::array<std::pair<Method, const char*>, 9> kNames{{
    {Method::kFp32, "fp32"},
    {Method::kFp16, "fp16"},
    {Method::kBf16, "bf16"},
    {Method::kInt8SymTensor, "int8-sym"},
    {Method::kInt8SymChannel, "int8-sym-channel"},
    {Method::kInt8W8A8, "int8-w8a8"},
    {Method::kLlmInt8, "llm-int8"},
    {Method::kNf4, "nf4"},
    {Method::kFp8E4M3, "fp8-e4m3"},
}};
}  // namespace

Method parse_method(const std::string& name) {
  for (const auto& [m, n] : kNames) {
    if (name == n) return m;
  }
  std::string valid;
  for (const auto& [m, n] : kNames) valid += std::string(valid.empty() ? "" : ", ") + n;
  throw InputError(fmt::format("unknown quantization method '{}': expected one of {}", name, valid));
}

std::string method_name(Method m) {
  for (const auto& [mm, n] : kNames) {
    if (mm == m) return n;
  }
  return "unknown";
}

}  // namespace evalsvc::kernels
