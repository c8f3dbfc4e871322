#pragma once
// Plain CPU references of the quantization methods of SPEC section 2, on torch tensors. They define what
// every faster path (the CPU layers in quantized_linear.cpp, the CUDA kernels behind cuda_ops.h) must
// compute; tests compare against them. They favour clarity over speed but are fast enough to run a model.
//
// Conventions shared by all functions here:
//  - Weights are [out, in] and may be any floating dtype (converted to fp32 first); activations x are
//    [..., in] in any floating dtype, and linear functions return [..., out] in x's dtype.
//  - All inputs must be CPU tensors; wrong dtype / rank / shape -> evalsvc::InputError naming the argument,
//    the expected and the actual value. Non-contiguous inputs are accepted (the references copy).
//  - Rounding is torch.round: half to even. Every int8 code is q = round(v / scale) with scale = absmax / 127
//    computed in fp32 (SPEC; weights, per-token activations, LLM.int8's CB and activations alike).
//    bitsandbytes multiplies by 127 / absmax instead; the two differ only exactly at rounding ties.
//  - A zero row / block has scale (absmax) 0 and all-zero codes; nothing divides by zero.
#include <array>
#include <utility>
#include <cstdint>
#include <vector>

#include "evalsvc/kernels/torch_compat.h"

namespace evalsvc::kernels::ref {

// ---------------------------------------------------------------------------------------------------------
// Shared helpers

/// y = x W^T + b computed as a device of `compute_dtype` would: x, W and b rounded to compute_dtype, products
/// accumulated in fp32, the result rounded to compute_dtype, then cast to x's dtype. (CPU libtorch 1.13 has
/// no fp16 GEMM, so fp16/bf16 are emulated this way.) w_values: fp32 [out, in]; bias may be undefined.
torch::Tensor linear_in_dtype(const torch::Tensor& x, const torch::Tensor& w_values, const torch::Tensor& bias,
                              torch::ScalarType compute_dtype);

/// Exact int8 x int8 -> int32 product a [T, in] x b [out, in]^T -> int32 [T, out]. Computed in fp64, where every
/// partial sum (|sum| <= in * 127 * 127 < 2^53) is exact; InputError when `in` could overflow int32.
torch::Tensor int8_matmul_exact(const torch::Tensor& a_q, const torch::Tensor& b_q);

// ---------------------------------------------------------------------------------------------------------
// INT8 symmetric ("int8-sym", "int8-sym-channel", "int8-w8a8")

/// q int8 [out, in]; scale fp32 [1] (per tensor) or [out] (per output channel); w ~= q * scale.
struct Int8Weight {
  torch::Tensor q;
  torch::Tensor scale;
};

/// scale = absmax / 127 (per tensor or per row), q = clamp(round(w / scale), -127, 127).
Int8Weight quantize_int8_sym(const torch::Tensor& w, bool per_channel);
/// fp32 [out, in] = q * scale.
torch::Tensor dequantize_int8_sym(const Int8Weight& w);
/// Weight-only int8: linear_in_dtype(x, dequantize(w), bias, compute_dtype).
torch::Tensor int8_weight_only_linear(const torch::Tensor& x, const Int8Weight& w, const torch::Tensor& bias,
                                      torch::ScalarType compute_dtype);

/// Per-token int8 activations: q int8 [T, in], scale fp32 [T] = absmax / 127 of each row.
struct TokenQuant {
  torch::Tensor q;
  torch::Tensor scale;
};

/// x [T, in] (rows = tokens) -> scale = absmax_row / 127, q = round(x / scale).
TokenQuant quantize_per_token(const torch::Tensor& x);

/// W8A8: per-token int8 x, int8 weight (per tensor or per channel), exact int32 accumulation,
/// out = C * scale_x[t] * scale_w[o] (fp32) + bias, returned in x's dtype.
torch::Tensor int8_w8a8_linear(const torch::Tensor& x, const Int8Weight& w, const torch::Tensor& bias);

// ---------------------------------------------------------------------------------------------------------
// LLM.int8 (bitsandbytes Linear8bitLt)

/// CB int8 [out, in] = round(w / (SCB / 127)); SCB fp32 [out] = per-row absmax.
struct LlmInt8Weight {
  torch::Tensor CB;
  torch::Tensor SCB;
};

/// Row-wise int8 of the weight as bitsandbytes int8_vectorwise_quant does (no threshold for weights).
/// (bitsandbytes first casts the weight to fp16; the layer does that, this reference quantizes what it gets.)
LlmInt8Weight quantize_llm_int8(const torch::Tensor& w);
/// fp32 [out, in] = CB * SCB / 127.
torch::Tensor dequantize_llm_int8(const LlmInt8Weight& w);

/// LLM.int8's activation side: x [T, in] rounded to fp16, outlier columns = columns where any |x| >= threshold
/// (none when threshold <= 0); rowstat [T] = absmax of the row over elements with |x| < threshold (bitsandbytes'
/// kInt8VectorQuant skips outliers); q = round(x / (rowstat / 127)) with every outlier column zeroed.
struct LlmInt8ActQuant {
  torch::Tensor q;             ///< int8 [T, in]
  torch::Tensor rowstat;       ///< fp32 [T]
  torch::Tensor outlier_cols;  ///< bool [in]
};
LlmInt8ActQuant quantize_llm_int8_activations(const torch::Tensor& x, double threshold);

/// The SPEC / bitsandbytes algorithm, accumulated in fp32 and cast once to x's dtype at the end:
/// out = C * rowstat * SCB / (127*127) + x16[:, outliers] @ fp16(CB * SCB / 127)[:, outliers]^T + bias, where
/// C is the exact int32 product of the quantized activations and CB, and x16 is x rounded to fp16 (as
/// bitsandbytes casts it). threshold <= 0: no outlier columns.
torch::Tensor llm_int8_linear(const torch::Tensor& x, const LlmInt8Weight& w, const torch::Tensor& bias,
                              double threshold);

// ---------------------------------------------------------------------------------------------------------
// NF4 (bitsandbytes Linear4bit, quant_type nf4)

/// Blockwise NF4 weight. Codes of consecutive elements (row-major over `shape`) packed two a byte, element 2i
/// in the high nibble, element 2i+1 in the low nibble (0 when numel is odd). Without double quantization
/// `absmax` holds the fp32 absmax of each block; with it, `absmax_q` holds the absmax minus `offset` quantized
/// with the dynamic map in blocks of 256, scaled by `nested_absmax`.
struct Nf4Weight {
  torch::Tensor packed;         ///< uint8 [ceil(numel / 2)]
  torch::Tensor absmax;         ///< fp32 [nblocks] (undefined when double_quant)
  torch::Tensor absmax_q;       ///< uint8 [nblocks] (double_quant only)
  torch::Tensor nested_absmax;  ///< fp32 [ceil(nblocks / 256)] (double_quant only)
  float offset = 0.0f;          ///< mean of the block absmax values (double_quant only)
  torch::Tensor quant_map;         ///< fp32 [16] NF4 levels used to decode (kNf4Levels when quantized here)
  torch::Tensor nested_quant_map;  ///< fp32 [256] dynamic map (double_quant only; kDynamicMapSigned here)
  std::vector<int64_t> shape;   ///< logical shape, e.g. {out, in}
  int64_t blocksize = 64;

  bool double_quant() const { return absmax_q.defined(); }
  int64_t numel() const;
  int64_t nblocks() const { return (numel() + blocksize - 1) / blocksize; }
};

/// Checks a blocksize: a power of two in [32, 4096] (the sizes bitsandbytes supports; even, so a block never
/// splits a byte). InputError otherwise.
void check_nf4_blocksize(int64_t blocksize);

/// absmax per block of `blocksize` consecutive elements (the last block may be partial), code = nf4_encode(
/// x * (1 / absmax)); with double_quant: offset = mean(absmax), (absmax - offset) quantized blockwise (256)
/// with the dynamic map: nested_absmax = absmax of each 256-block, code = nearest map entry of
/// (a - offset) / nested_absmax.
Nf4Weight quantize_nf4(const torch::Tensor& w, int64_t blocksize = 64, bool double_quant = true);
/// fp32 [nblocks]: the absmax values a dequantization uses (decoded from the nested quantization if any).
torch::Tensor nf4_block_absmax(const Nf4Weight& w);
/// fp32 tensor of `shape`: quant_map[code] * absmax[block].
torch::Tensor dequantize_nf4(const Nf4Weight& w);
/// Unpacks the codes: uint8 [numel], element i = its 4-bit code.
torch::Tensor unpack_nf4_codes(const Nf4Weight& w);
/// bitsandbytes' matmul: linear_in_dtype(x, dequantize(w), bias, compute_dtype) (W rounded to compute_dtype).
torch::Tensor nf4_linear(const torch::Tensor& x, const Nf4Weight& w, const torch::Tensor& bias,
                         torch::ScalarType compute_dtype);
/// Validates an Nf4Weight's tensors against its shape and blocksize (dtype, sizes, code maps);
/// InputError naming the field and expected vs actual.
void check_nf4_weight(const Nf4Weight& w);

// ---------------------------------------------------------------------------------------------------------
// FP8 E4M3 (E4M3FN: bias 7, max 448, no infinities, NaN = 0x7F / 0xFF)

/// Bit pattern of the E4M3FN value nearest to x (round to nearest, ties to even); |x| > 448 and +-inf
/// saturate to +-448; NaN -> 0x7F (0xFF when the sign bit is set). -0.0 -> 0x80.
uint8_t fp8_e4m3_encode(float x);
/// Value of an E4M3FN bit pattern (subnormals m/8 * 2^-6; 0x7F and 0xFF are NaN).
float fp8_e4m3_decode(uint8_t bits);
/// Elementwise: any floating tensor -> uint8 bit patterns of the same shape.
torch::Tensor fp8_encode(const torch::Tensor& x);
/// Elementwise: uint8 bit patterns -> fp32 values.
torch::Tensor fp8_decode(const torch::Tensor& bits);

/// q uint8 [out, in] E4M3 bits of w / scale; scale fp32 [out] = per-row absmax / 448.
struct Fp8Weight {
  torch::Tensor q;
  torch::Tensor scale;
};
Fp8Weight quantize_fp8_e4m3_channel(const torch::Tensor& w);
/// fp32 [out, in] = decode(q) * scale.
torch::Tensor dequantize_fp8(const Fp8Weight& w);

/// Per-token fp8 activations: q uint8 [T, in] = encode(x / scale), scale fp32 [T] = absmax / 448.
struct Fp8TokenQuant {
  torch::Tensor q;
  torch::Tensor scale;
};
Fp8TokenQuant quantize_fp8_per_token(const torch::Tensor& x);

/// W8A8 fp8: per-token x scale, per-channel w scale, products of the decoded values accumulated in fp32,
/// out = acc * scale_x[t] * scale_w[o] + bias, returned in x's dtype (what torch._scaled_mm computes).
torch::Tensor fp8_w8a8_linear(const torch::Tensor& x, const Fp8Weight& w, const torch::Tensor& bias);

// ---------------------------------------------------------------------------------------------------------
// Transformer block pieces with a fused CUDA kernel

/// The block's residual add then LayerNorm as the unfused model computes them on a GPU in h's dtype:
/// h_out = dtype(h + delta) (one rounding), a = dtype(layer_norm(fp32(h_out), gamma, beta, eps)) with fp32
/// statistics. h and delta [..., cols] of one floating dtype; gamma, beta [cols]. Returns {h_out, a}.
std::pair<torch::Tensor, torch::Tensor> add_layer_norm(const torch::Tensor& h, const torch::Tensor& delta,
                                                       const torch::Tensor& gamma, const torch::Tensor& beta,
                                                       double eps);

}  // namespace evalsvc::kernels::ref
