// CPU references of SPEC section 2 (see reference.h for the contract of each function).
#include "evalsvc/kernels/reference.h"

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>

#include "evalsvc/common/error.h"
#include "evalsvc/kernels/codebooks.h"

namespace evalsvc::kernels::ref {

namespace {

std::string shape_str(const torch::Tensor& t) {
  std::string s = "[";
  for (int64_t d = 0; d < t.dim(); ++d) s += (d ? ", " : "") + std::to_string(t.size(d));
  return s + "]";
}

std::string dtype_str(torch::ScalarType t) { return c10::toString(t); }

void check_defined_cpu(const torch::Tensor& t, const char* where, const char* name) {
  EVALSVC_CHECK(t.defined(), InputError, "{}: {} is undefined", where, name);
  EVALSVC_CHECK(t.device().is_cpu(), InputError, "{}: {} must be a CPU tensor, got device {}", where, name,
                t.device().str());
}

void check_float(const torch::Tensor& t, const char* where, const char* name) {
  check_defined_cpu(t, where, name);
  EVALSVC_CHECK(torch::isFloatingType(t.scalar_type()), InputError,
                "{}: {} must be a floating tensor (fp32/fp16/bf16), got {}", where, name, dtype_str(t.scalar_type()));
}

void check_dtype(const torch::Tensor& t, torch::ScalarType want, const char* where, const char* name) {
  check_defined_cpu(t, where, name);
  EVALSVC_CHECK(t.scalar_type() == want, InputError, "{}: {} must be {}, got {}", where, name, dtype_str(want),
                dtype_str(t.scalar_type()));
}

void check_2d(const torch::Tensor& t, const char* where, const char* name) {
  EVALSVC_CHECK(t.dim() == 2, InputError, "{}: {} must be 2-D, got shape {}", where, name, shape_str(t));
  EVALSVC_CHECK(t.size(1) > 0, InputError, "{}: {} has no columns (shape {})", where, name, shape_str(t));
}

/// A weight to quantize: 2-D floating, non-empty, finite (a NaN would silently poison a whole scale).
torch::Tensor weight_fp32(const torch::Tensor& w, const char* where) {
  check_float(w, where, "weight");
  check_2d(w, where, "weight");
  EVALSVC_CHECK(w.size(0) > 0, InputError, "{}: weight has no rows (shape {})", where, shape_str(w));
  auto wf = w.to(torch::kFloat).contiguous();
  EVALSVC_CHECK(torch::isfinite(wf).all().item<bool>(), InputError, "{}: weight {} contains NaN or Inf", where,
                shape_str(w));
  return wf;
}

/// x [..., in] -> fp32 [T, in] contiguous.
torch::Tensor activations_2d(const torch::Tensor& x, int64_t in, const char* where) {
  check_float(x, where, "x");
  EVALSVC_CHECK(x.dim() >= 1 && x.size(-1) == in, InputError, "{}: x must be [..., {}], got shape {}", where, in,
                shape_str(x));
  return x.to(torch::kFloat).reshape({-1, in}).contiguous();
}

/// [T, out] -> [..., out] following x's leading dims, in x's dtype.
torch::Tensor restore(const torch::Tensor& y2, const torch::Tensor& x) {
  auto sizes = x.sizes().vec();
  sizes.back() = y2.size(1);
  return y2.reshape(sizes).to(x.scalar_type());
}

void check_bias(const torch::Tensor& bias, int64_t out, const char* where) {
  if (!bias.defined()) return;
  check_float(bias, where, "bias");
  EVALSVC_CHECK(bias.dim() == 1 && bias.size(0) == out, InputError, "{}: bias must be [{}], got shape {}", where,
                out, shape_str(bias));
}

/// Scales with zeros replaced by 1 so a zero row quantizes to zeros instead of 0/0.
torch::Tensor safe_divisor(const torch::Tensor& scale) {
  return torch::where(scale == 0, torch::ones_like(scale), scale);
}

torch::Tensor round_int8(const torch::Tensor& v) { return torch::round(v).clamp(-127, 127).to(torch::kChar); }

void check_int8_weight(const Int8Weight& w, const char* where) {
  check_dtype(w.q, torch::kChar, where, "q");
  check_2d(w.q, where, "q");
  check_dtype(w.scale, torch::kFloat, where, "scale");
  EVALSVC_CHECK(w.scale.dim() == 1 && (w.scale.size(0) == 1 || w.scale.size(0) == w.q.size(0)), InputError,
                "{}: scale must be [1] or [{}] for q {}, got shape {}", where, w.q.size(0), shape_str(w.q),
                shape_str(w.scale));
}

void check_llm_int8_weight(const LlmInt8Weight& w, const char* where) {
  check_dtype(w.CB, torch::kChar, where, "CB");
  check_2d(w.CB, where, "CB");
  check_dtype(w.SCB, torch::kFloat, where, "SCB");
  EVALSVC_CHECK(w.SCB.dim() == 1 && w.SCB.size(0) == w.CB.size(0), InputError,
                "{}: SCB must be [{}] for CB {}, got shape {}", where, w.CB.size(0), shape_str(w.CB),
                shape_str(w.SCB));
}

void check_fp8_weight(const Fp8Weight& w, const char* where) {
  check_dtype(w.q, torch::kByte, where, "q");
  check_2d(w.q, where, "q");
  check_dtype(w.scale, torch::kFloat, where, "scale");
  EVALSVC_CHECK(w.scale.dim() == 1 && w.scale.size(0) == w.q.size(0), InputError,
                "{}: scale must be [{}] for q {}, got shape {}", where, w.q.size(0), shape_str(w.q),
                shape_str(w.scale));
}

bool is_compute_dtype(torch::ScalarType t) {
  return t == torch::kFloat || t == torch::kHalf || t == torch::kBFloat16;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------

torch::Tensor linear_in_dtype(const torch::Tensor& x, const torch::Tensor& w_values, const torch::Tensor& bias,
                              torch::ScalarType compute_dtype) {
  constexpr const char* kWhere = "ref::linear_in_dtype";
  EVALSVC_CHECK(is_compute_dtype(compute_dtype), InputError, "{}: compute dtype must be fp32, fp16 or bf16, got {}",
                kWhere, dtype_str(compute_dtype));
  check_float(w_values, kWhere, "weight");
  check_2d(w_values, kWhere, "weight");
  check_bias(bias, w_values.size(0), kWhere);
  auto x2 = activations_2d(x, w_values.size(1), kWhere).to(compute_dtype).to(torch::kFloat);
  auto w = w_values.to(compute_dtype).to(torch::kFloat);
  auto y = torch::matmul(x2, w.t());
  if (bias.defined()) y = y + bias.to(compute_dtype).to(torch::kFloat);
  return restore(y.to(compute_dtype), x);
}

torch::Tensor int8_matmul_exact(const torch::Tensor& a_q, const torch::Tensor& b_q) {
  constexpr const char* kWhere = "ref::int8_matmul_exact";
  check_dtype(a_q, torch::kChar, kWhere, "a");
  check_dtype(b_q, torch::kChar, kWhere, "b");
  EVALSVC_CHECK(a_q.dim() == 2 && b_q.dim() == 2 && a_q.size(1) == b_q.size(1), InputError,
                "{}: expected a [T, in] and b [out, in], got {} and {}", kWhere, shape_str(a_q), shape_str(b_q));
  // |sum| <= in * 127 * 127 must fit int32 (it always fits fp64's 53-bit mantissa long before that).
  constexpr int64_t kMaxIn = std::numeric_limits<int32_t>::max() / (127 * 127);
  EVALSVC_CHECK(a_q.size(1) <= kMaxIn, InputError, "{}: in = {} could overflow the int32 accumulator (max {})",
                kWhere, a_q.size(1), kMaxIn);
  return torch::matmul(a_q.to(torch::kDouble), b_q.to(torch::kDouble).t()).to(torch::kInt);
}

// ---------------------------------------------------------------------------------------------------------
// INT8 symmetric

Int8Weight quantize_int8_sym(const torch::Tensor& w, bool per_channel) {
  auto wf = weight_fp32(w, "ref::quantize_int8_sym");
  auto absmax = per_channel ? wf.abs().amax(1) : wf.abs().max().reshape({1});
  auto scale = absmax / 127.0;
  auto q = round_int8(wf / safe_divisor(scale).view({-1, 1}));
  return {q, scale};
}

torch::Tensor dequantize_int8_sym(const Int8Weight& w) {
  check_int8_weight(w, "ref::dequantize_int8_sym");
  return w.q.to(torch::kFloat) * w.scale.view({-1, 1});
}

torch::Tensor int8_weight_only_linear(const torch::Tensor& x, const Int8Weight& w, const torch::Tensor& bias,
                                      torch::ScalarType compute_dtype) {
  return linear_in_dtype(x, dequantize_int8_sym(w), bias, compute_dtype);
}

TokenQuant quantize_per_token(const torch::Tensor& x) {
  constexpr const char* kWhere = "ref::quantize_per_token";
  check_float(x, kWhere, "x");
  check_2d(x, kWhere, "x");
  auto xf = x.to(torch::kFloat);
  auto scale = xf.abs().amax(1) / 127.0;
  return {round_int8(xf / safe_divisor(scale).unsqueeze(1)), scale};
}

torch::Tensor int8_w8a8_linear(const torch::Tensor& x, const Int8Weight& w, const torch::Tensor& bias) {
  constexpr const char* kWhere = "ref::int8_w8a8_linear";
  check_int8_weight(w, kWhere);
  check_bias(bias, w.q.size(0), kWhere);
  auto x2 = activations_2d(x, w.q.size(1), kWhere);
  auto xq = quantize_per_token(x2);
  auto c = int8_matmul_exact(xq.q, w.q);
  auto y = c.to(torch::kFloat) * xq.scale.unsqueeze(1) * w.scale.view({1, -1});
  if (bias.defined()) y = y + bias.to(torch::kFloat);
  return restore(y, x);
}

// ---------------------------------------------------------------------------------------------------------
// LLM.int8

LlmInt8Weight quantize_llm_int8(const torch::Tensor& w) {
  auto wf = weight_fp32(w, "ref::quantize_llm_int8");
  auto scb = wf.abs().amax(1);
  auto cb = round_int8(wf / safe_divisor(scb / 127.0).unsqueeze(1));
  return {cb, scb};
}

torch::Tensor dequantize_llm_int8(const LlmInt8Weight& w) {
  check_llm_int8_weight(w, "ref::dequantize_llm_int8");
  return w.CB.to(torch::kFloat) * w.SCB.unsqueeze(1) / 127.0;
}

LlmInt8ActQuant quantize_llm_int8_activations(const torch::Tensor& x, double threshold) {
  constexpr const char* kWhere = "ref::quantize_llm_int8_activations";
  check_float(x, kWhere, "x");
  check_2d(x, kWhere, "x");
  auto xh = x.to(torch::kHalf).to(torch::kFloat);
  auto ax = xh.abs();
  torch::Tensor cols, rowstat;
  if (threshold > 0) {
    auto outlier = ax >= threshold;
    cols = outlier.any(0);
    rowstat = torch::where(outlier, torch::zeros_like(ax), ax).amax(1);
  } else {
    cols = torch::zeros({x.size(1)}, torch::TensorOptions().dtype(torch::kBool));
    rowstat = ax.amax(1);
  }
  auto q = round_int8(xh / safe_divisor(rowstat / 127.0).unsqueeze(1));
  q.masked_fill_(cols.unsqueeze(0), 0);
  return {q, rowstat, cols};
}

torch::Tensor llm_int8_linear(const torch::Tensor& x, const LlmInt8Weight& w, const torch::Tensor& bias,
                              double threshold) {
  constexpr const char* kWhere = "ref::llm_int8_linear";
  check_llm_int8_weight(w, kWhere);
  check_bias(bias, w.CB.size(0), kWhere);
  auto x2 = activations_2d(x, w.CB.size(1), kWhere);
  auto aq = quantize_llm_int8_activations(x2, threshold);
  auto c = int8_matmul_exact(aq.q, w.CB);
  auto y = c.to(torch::kFloat) * aq.rowstat.unsqueeze(1) * w.SCB.unsqueeze(0) / (127.0 * 127.0);
  auto idx = aq.outlier_cols.nonzero().view({-1});
  if (idx.numel() > 0) {
    auto sub_x = x2.index_select(1, idx).to(torch::kHalf).to(torch::kFloat);
    auto sub_w = dequantize_llm_int8(w).index_select(1, idx).to(torch::kHalf).to(torch::kFloat);
    y = y + torch::matmul(sub_x, sub_w.t());
  }
  if (bias.defined()) y = y + bias.to(torch::kFloat);
  return restore(y, x);
}

// ---------------------------------------------------------------------------------------------------------
// NF4

int64_t Nf4Weight::numel() const {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

void check_nf4_blocksize(int64_t blocksize) {
  const bool pow2 = blocksize > 0 && (blocksize & (blocksize - 1)) == 0;
  EVALSVC_CHECK(pow2 && blocksize >= 32 && blocksize <= 4096, InputError,
                "nf4: blocksize must be a power of two in [32, 4096] (a block must not split a byte), got {}",
                blocksize);
}

Nf4Weight quantize_nf4(const torch::Tensor& w, int64_t blocksize, bool double_quant) {
  constexpr const char* kWhere = "ref::quantize_nf4";
  check_nf4_blocksize(blocksize);
  check_float(w, kWhere, "weight");
  EVALSVC_CHECK(w.dim() >= 1 && w.numel() > 0, InputError, "{}: weight must be non-empty, got shape {}", kWhere,
                shape_str(w));
  auto wf = w.to(torch::kFloat).contiguous();
  EVALSVC_CHECK(torch::isfinite(wf).all().item<bool>(), InputError, "{}: weight {} contains NaN or Inf", kWhere,
                shape_str(w));
  const int64_t n = wf.numel();
  const int64_t nblocks = (n + blocksize - 1) / blocksize;
  const float* src = wf.data_ptr<float>();

  Nf4Weight out;
  out.shape = w.sizes().vec();
  out.blocksize = blocksize;
  out.absmax = torch::empty({nblocks}, torch::kFloat);
  out.packed = torch::zeros({(n + 1) / 2}, torch::kByte);
  float* amax = out.absmax.data_ptr<float>();
  uint8_t* packed = out.packed.data_ptr<uint8_t>();
  for (int64_t b = 0; b < nblocks; ++b) {
    const int64_t lo = b * blocksize, hi = std::min(n, lo + blocksize);
    float a = 0.0f;
    for (int64_t i = lo; i < hi; ++i) a = std::max(a, std::fabs(src[i]));
    amax[b] = a;
    // bitsandbytes multiplies by the inverse absmax; an all-zero block uses 0 so every code is that of 0.0.
    const float inv = a > 0.0f ? 1.0f / a : 0.0f;
    for (int64_t i = lo; i < hi; ++i) {
      const uint8_t code = nf4_encode(src[i] * inv);
      packed[i / 2] |= static_cast<uint8_t>((i % 2 == 0) ? (code << 4) : code);
    }
  }
  out.quant_map = torch::from_blob(const_cast<float*>(kNf4Levels), {16}, torch::kFloat).clone();
  if (!double_quant) return out;

  // Double quantization: the absmax values (all >= 0) are centred on their mean and stored as 8-bit codes of
  // the dynamic map, one fp32 scale per 256 of them.
  out.offset = out.absmax.mean().item<float>();
  const int64_t nested_blocks = (nblocks + kNestedBlockSize - 1) / kNestedBlockSize;
  out.absmax_q = torch::empty({nblocks}, torch::kByte);
  out.nested_absmax = torch::empty({nested_blocks}, torch::kFloat);
  uint8_t* aq = out.absmax_q.data_ptr<uint8_t>();
  float* nested = out.nested_absmax.data_ptr<float>();
  for (int64_t nb = 0; nb < nested_blocks; ++nb) {
    const int64_t lo = nb * kNestedBlockSize, hi = std::min(nblocks, lo + kNestedBlockSize);
    float a = 0.0f;
    for (int64_t i = lo; i < hi; ++i) a = std::max(a, std::fabs(amax[i] - out.offset));
    nested[nb] = a;
    const float inv = a > 0.0f ? 1.0f / a : 0.0f;
    for (int64_t i = lo; i < hi; ++i) aq[i] = nearest_code_256(kDynamicMapSigned, (amax[i] - out.offset) * inv);
  }
  out.absmax = torch::Tensor();
  out.nested_quant_map = torch::from_blob(const_cast<float*>(kDynamicMapSigned), {256}, torch::kFloat).clone();
  return out;
}

void check_nf4_weight(const Nf4Weight& w) {
  constexpr const char* kWhere = "nf4 weight";
  check_nf4_blocksize(w.blocksize);
  EVALSVC_CHECK(!w.shape.empty(), InputError, "{}: shape is empty", kWhere);
  for (auto d : w.shape) {
    EVALSVC_CHECK(d > 0, InputError, "{}: every dimension of shape must be > 0, got {}", kWhere, d);
  }
  const int64_t n = w.numel(), nblocks = w.nblocks();
  auto check_vec = [&](const torch::Tensor& t, torch::ScalarType dtype, int64_t len, const char* name) {
    check_dtype(t, dtype, kWhere, name);
    EVALSVC_CHECK(t.dim() == 1 && t.size(0) == len, InputError, "{}: {} must be [{}] for shape numel {} and "
                  "blocksize {}, got {}", kWhere, name, len, n, w.blocksize, shape_str(t));
    EVALSVC_CHECK(t.is_contiguous(), InputError, "{}: {} must be contiguous", kWhere, name);
  };
  check_vec(w.packed, torch::kByte, (n + 1) / 2, "packed");
  check_vec(w.quant_map, torch::kFloat, 16, "quant_map");
  if (w.double_quant()) {
    check_vec(w.absmax_q, torch::kByte, nblocks, "absmax_q");
    check_vec(w.nested_absmax, torch::kFloat, (nblocks + kNestedBlockSize - 1) / kNestedBlockSize, "nested_absmax");
    check_vec(w.nested_quant_map, torch::kFloat, 256, "nested_quant_map");
    EVALSVC_CHECK(std::isfinite(w.offset), InputError, "{}: offset must be finite, got {}", kWhere, w.offset);
  } else {
    check_vec(w.absmax, torch::kFloat, nblocks, "absmax");
  }
}

torch::Tensor nf4_block_absmax(const Nf4Weight& w) {
  check_nf4_weight(w);
  if (!w.double_quant()) return w.absmax;
  auto block = torch::div(torch::arange(w.nblocks(), torch::kLong), kNestedBlockSize, "floor");
  auto code = w.nested_quant_map.index_select(0, w.absmax_q.to(torch::kLong));
  return code * w.nested_absmax.index_select(0, block) + w.offset;
}

torch::Tensor unpack_nf4_codes(const Nf4Weight& w) {
  check_nf4_weight(w);
  auto hi = torch::bitwise_right_shift(w.packed, 4);
  auto lo = torch::bitwise_and(w.packed, 0x0F);
  return torch::stack({hi, lo}, 1).reshape({-1}).slice(0, 0, w.numel());
}

torch::Tensor dequantize_nf4(const Nf4Weight& w) {
  auto codes = unpack_nf4_codes(w).to(torch::kLong);
  auto absmax = nf4_block_absmax(w);
  auto block = torch::div(torch::arange(w.numel(), torch::kLong), w.blocksize, "floor");
  auto values = w.quant_map.index_select(0, codes) * absmax.index_select(0, block);
  return values.reshape(w.shape);
}

torch::Tensor nf4_linear(const torch::Tensor& x, const Nf4Weight& w, const torch::Tensor& bias,
                         torch::ScalarType compute_dtype) {
  EVALSVC_CHECK(w.shape.size() == 2, InputError, "ref::nf4_linear: weight must be 2-D [out, in], got {} dims",
                w.shape.size());
  return linear_in_dtype(x, dequantize_nf4(w), bias, compute_dtype);
}

// ---------------------------------------------------------------------------------------------------------
// FP8 E4M3FN

uint8_t fp8_e4m3_encode(float x) {
  const uint32_t bits = std::bit_cast<uint32_t>(x);
  const uint8_t sign = static_cast<uint8_t>((bits >> 24) & 0x80);
  const uint32_t abs_bits = bits & 0x7FFFFFFFu;
  if (abs_bits > 0x7F800000u) return sign | 0x7F;  // NaN
  const float a = std::bit_cast<float>(abs_bits);
  if (a >= 448.0f) return sign | 0x7E;  // saturate, infinities included
  if (a < 0.015625f) {
    // Subnormal range: multiples of 2^-9. a * 512 is exact; nearbyint rounds half to even. A result of 8 is
    // the pattern 0x08, which is exactly the smallest normal 2^-6, so the carry needs no special case.
    return sign | static_cast<uint8_t>(std::nearbyint(a * 512.0f));
  }
  const int32_t exponent = static_cast<int32_t>(abs_bits >> 23) - 127;  // -6 .. 8 here
  const uint32_t mantissa = abs_bits & 0x7FFFFFu;
  uint32_t m3 = mantissa >> 20;
  const uint32_t rest = mantissa & 0xFFFFFu;
  if (rest > 0x80000u || (rest == 0x80000u && (m3 & 1u))) ++m3;  // round to nearest, ties to even
  // A mantissa carry (m3 == 8) moves into the exponent field by plain addition.
  const uint32_t code = (static_cast<uint32_t>(exponent + 7) << 3) + m3;
  return sign | static_cast<uint8_t>(std::min<uint32_t>(code, 0x7E));
}

float fp8_e4m3_decode(uint8_t bits) {
  const bool negative = bits & 0x80;
  const int exponent = (bits >> 3) & 0xF;
  const int mantissa = bits & 0x7;
  float v;
  if (exponent == 0xF && mantissa == 0x7) {
    v = std::numeric_limits<float>::quiet_NaN();
  } else if (exponent == 0) {
    v = std::ldexp(static_cast<float>(mantissa), -9);
  } else {
    v = std::ldexp(1.0f + static_cast<float>(mantissa) / 8.0f, exponent - 7);
  }
  return negative ? -v : v;
}

torch::Tensor fp8_encode(const torch::Tensor& x) {
  check_float(x, "ref::fp8_encode", "x");
  auto xf = x.to(torch::kFloat).contiguous();
  auto out = torch::empty(xf.sizes(), torch::kByte);
  const float* src = xf.data_ptr<float>();
  uint8_t* dst = out.data_ptr<uint8_t>();
  for (int64_t i = 0; i < xf.numel(); ++i) dst[i] = fp8_e4m3_encode(src[i]);
  return out;
}

torch::Tensor fp8_decode(const torch::Tensor& bits) {
  check_dtype(bits, torch::kByte, "ref::fp8_decode", "bits");
  // A 256-entry table gathered by index: exact and far faster than decoding element by element.
  static const torch::Tensor table = [] {
    auto t = torch::empty({256}, torch::kFloat);
    for (int i = 0; i < 256; ++i) t[i] = fp8_e4m3_decode(static_cast<uint8_t>(i));
    return t;
  }();
  return table.index_select(0, bits.reshape({-1}).to(torch::kLong)).reshape(bits.sizes());
}

Fp8Weight quantize_fp8_e4m3_channel(const torch::Tensor& w) {
  auto wf = weight_fp32(w, "ref::quantize_fp8_e4m3_channel");
  auto scale = wf.abs().amax(1) / 448.0;
  return {fp8_encode(wf / safe_divisor(scale).unsqueeze(1)), scale};
}

torch::Tensor dequantize_fp8(const Fp8Weight& w) {
  check_fp8_weight(w, "ref::dequantize_fp8");
  return fp8_decode(w.q) * w.scale.unsqueeze(1);
}

Fp8TokenQuant quantize_fp8_per_token(const torch::Tensor& x) {
  constexpr const char* kWhere = "ref::quantize_fp8_per_token";
  check_float(x, kWhere, "x");
  check_2d(x, kWhere, "x");
  auto xf = x.to(torch::kFloat);
  auto scale = xf.abs().amax(1) / 448.0;
  return {fp8_encode(xf / safe_divisor(scale).unsqueeze(1)), scale};
}

torch::Tensor fp8_w8a8_linear(const torch::Tensor& x, const Fp8Weight& w, const torch::Tensor& bias) {
  constexpr const char* kWhere = "ref::fp8_w8a8_linear";
  check_fp8_weight(w, kWhere);
  check_bias(bias, w.q.size(0), kWhere);
  auto x2 = activations_2d(x, w.q.size(1), kWhere);
  auto xq = quantize_fp8_per_token(x2);
  auto acc = torch::matmul(fp8_decode(xq.q), fp8_decode(w.q).t());
  auto y = acc * xq.scale.unsqueeze(1) * w.scale.unsqueeze(0);
  if (bias.defined()) y = y + bias.to(torch::kFloat);
  return restore(y, x);
}

std::pair<torch::Tensor, torch::Tensor> add_layer_norm(const torch::Tensor& h, const torch::Tensor& delta,
                                                       const torch::Tensor& gamma, const torch::Tensor& beta,
                                                       double eps) {
  constexpr const char* kWhere = "ref::add_layer_norm";
  check_float(h, kWhere, "h");
  check_float(delta, kWhere, "delta");
  EVALSVC_CHECK(h.dim() >= 1 && h.sizes() == delta.sizes() && h.scalar_type() == delta.scalar_type(), InputError,
                "{}: h and delta must have one shape and dtype, got {} {} and {} {}", kWhere, shape_str(h),
                dtype_str(h.scalar_type()), shape_str(delta), dtype_str(delta.scalar_type()));
  const int64_t cols = h.size(-1);
  for (const auto& [t, name] : {std::pair{&gamma, "gamma"}, std::pair{&beta, "beta"}}) {
    check_float(*t, kWhere, name);
    EVALSVC_CHECK(t->dim() == 1 && t->size(0) == cols, InputError, "{}: {} must be [{}], got {}", kWhere, name, cols,
                  shape_str(*t));
  }
  EVALSVC_CHECK(std::isfinite(eps) && eps > 0, InputError, "{}: eps must be finite and > 0, got {}", kWhere, eps);
  const auto dt = h.scalar_type();
  const torch::Tensor h_out = (h.to(torch::kFloat) + delta.to(torch::kFloat)).to(dt);
  const torch::Tensor a = torch::layer_norm(h_out.to(torch::kFloat), {cols}, gamma.to(torch::kFloat),
                                            beta.to(torch::kFloat), eps)
                              .to(dt);
  return {h_out, a};
}

}  // namespace evalsvc::kernels::ref
