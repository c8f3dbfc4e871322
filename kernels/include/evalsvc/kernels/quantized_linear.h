#pragma once
// One interface for the 48 block projections of GPT-2 (c_attn, attn.c_proj, c_fc, mlp.c_proj) in any
// numeric format. The model calls forward(); the memory accounting calls bytes(); checkpoints go through
// state()/from_state() with the tensor names transformers + bitsandbytes use (see docs/checkpoints.md).
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "evalsvc/kernels/torch_compat.h"

namespace evalsvc::kernels {

/// The numeric formats qbench compares. Names are the spec/CLI names.
enum class Method {
  kFp32,             ///< "fp32": plain fp32 weights (the baseline)
  kFp16,             ///< "fp16": plain fp16 weights and activations
  kBf16,             ///< "bf16": plain bf16 weights and activations
  kInt8SymTensor,    ///< "int8-sym": weight-only int8, one scale per tensor (the reference's "scratch")
  kInt8SymChannel,   ///< "int8-sym-channel": weight-only int8, one scale per output channel
  kInt8W8A8,         ///< "int8-w8a8": per-channel weight, per-token activation, int8 GEMM
  kLlmInt8,          ///< "llm-int8": bitsandbytes Linear8bitLt, outliers through fp16
  kNf4,              ///< "nf4": bitsandbytes Linear4bit nf4, blocks of 64, optional double quantization
  kFp8E4M3,          ///< "fp8-e4m3": W8A8 fp8 with per-channel / per-token scales (sm_89+)
};

/// Parses a method name ("int8-sym", ...); InputError listing the valid names otherwise.
Method parse_method(const std::string& name);
std::string method_name(Method m);

/// Options that a method may use; others ignore them.
struct QuantOptions {
  double outlier_threshold = 6.0;          ///< llm-int8
  bool double_quant = true;                ///< nf4
  torch::ScalarType compute_dtype = torch::kFloat16;  ///< nf4 / llm-int8 / w8a8 activations side (fp16|bf16)
  int64_t block_size = 64;                 ///< nf4
};

/// Byte counts of one layer, per SPEC section 3: `hf_footprint` counts what get_memory_footprint() counts
/// (parameters + registered buffers as transformers/bitsandbytes register them); `runtime` counts every
/// byte the layer needs to run (adds scales, absmax, code maps, outlier state).
struct LayerBytes {
  int64_t hf_footprint = 0;
  int64_t runtime = 0;
};

/// A linear projection y = x W^T + b with W logically [out, in] (note: Hugging Face Conv1D stores [in, out];
/// loaders transpose once). Implementations: plain (fp32/fp16/bf16) and each quantized method, with a
/// CPU reference path and, where built, CUDA kernels chosen by the device of the stored weight.
/// An activation applied to a projection's output. GPT-2's MLP applies GELU (tanh approximation) to c_fc's
/// output; a CUDA layer folds it into its product's epilogue (cuBLASLt GELU_BIAS or qbench's int8 epilogue),
/// which saves a launch and a read and write of the [tokens, 3072] activations.
enum class Activation { kNone, kGeluTanh };

/// The per-token code a layer's forward quantizes its input to on a GPU: int8 (int8-w8a8) or E4M3 (fp8-e4m3);
/// kLlmInt8 (llm-int8 on fp16): int8 codes whose row absmax skips |x| >= the layer's outlier_threshold(), with
/// those columns found in the same pass; kNone for the others. A model can then have the kernel that produces
/// the input write those codes directly (cuda::add_layer_norm_quantized) and call forward_quantized.
enum class ActivationCode { kNone, kInt8, kFp8E4M3, kLlmInt8 };

/// What forward_quantized needs besides the codes for ActivationCode::kLlmInt8: the fp16 rows [..., in] the codes
/// were made from (the outlier columns' fp16 product reads them) and the outlier columns as ascending int32
/// indices [in] and their number [1], on the device. Undefined for the other codes.
struct OutlierColumnsInput {
  torch::Tensor rows;
  torch::Tensor idx;
  torch::Tensor count;
};

class QuantizedLinear {
 public:
  virtual ~QuantizedLinear() = default;
  /// x: [..., in] on the layer's device; returns act([..., out]) in the activation dtype of x. With kGeluTanh
  /// the result equals gelu(forward(x), "tanh") up to the output dtype's rounding.
  virtual torch::Tensor forward(const torch::Tensor& x, Activation act = Activation::kNone) const = 0;
  virtual Method method() const = 0;
  virtual int64_t in_features() const = 0;
  virtual int64_t out_features() const = 0;
  virtual LayerBytes bytes() const = 0;
  /// The fp32 weight this layer represents, [out, in] (dequantized for quantized methods).
  virtual torch::Tensor dequantized_weight() const = 0;

  // Weight-only formats (int8-sym, int8-sym-channel, and nf4 from kNf4DequantMinTokens tokens) compute a
  // forward as: dequantize the whole weight into the base dtype, then the dense product. A model can make that
  // dense copy ahead of time, on another stream while the previous layer computes, and then call
  // forward_dense: same result, bit for bit, with the dequantization off the critical path.

  /// Whether forward() on `tokens` rows goes through a dense copy of the weight in the base dtype (as the CUDA
  /// path chooses; the answer does not depend on the device, so a CPU run exercises the same decisions).
  virtual bool dequantizes_at(int64_t tokens) const = 0;
  /// Writes that dense copy into `out` ([out, in], contiguous, the base dtype, on the layer's device) on the
  /// device's current stream, allocating nothing on the GPU. InputError for a wrong `out`. On a GPU,
  /// max_blocks > 0 caps the dequantization kernel's grid (cuda::dequantize_int8_weight_into), so that it runs
  /// beside the model's compute on a few SMs instead of taking them all; the values are the same.
  virtual void dense_weight_into(torch::Tensor& out, int max_blocks = 0) const = 0;
  /// forward(x, act) computed with `dense` from dense_weight_into. UnsupportedError where forward(x) would not
  /// dequantize (dequantizes_at false for x's token count); InputError for a wrong `dense`.
  virtual torch::Tensor forward_dense(const torch::Tensor& x, const torch::Tensor& dense,
                                      Activation act = Activation::kNone) const = 0;
  /// The base dtype: activations enter forward() converted to it; dense copies are in it.
  virtual torch::ScalarType base_dtype() const = 0;

  /// See ActivationCode.
  virtual ActivationCode activation_code() const { return ActivationCode::kNone; }
  /// forward() on input already quantized per token to activation_code(): q [..., in] (int8 codes or E4M3
  /// bits in uint8), scale fp32 [rows], and for kLlmInt8 `outliers`; returns act([..., out]) in `out_dtype` (the
  /// base dtype, or fp32). The same values forward(x, act) gives on the x the codes were made from. CUDA only;
  /// UnsupportedError for a layer whose activation_code() is kNone, on a CPU, or in a build without CUDA kernels.
  virtual torch::Tensor forward_quantized(const torch::Tensor& q, const torch::Tensor& scale,
                                          torch::ScalarType out_dtype, Activation act = Activation::kNone,
                                          const OutlierColumnsInput& outliers = {}) const = 0;
  /// kLlmInt8: the threshold the producing kernel flags columns by, and the zeroed state it uses
  /// (cuda::llm_int8_linear's outlier_state, the one of the current CUDA stream; left zero). 0 and undefined
  /// for the other codes.
  virtual double outlier_threshold() const { return 0.0; }
  virtual torch::Tensor outlier_state() const { return {}; }

  /// The stored tensors a forward on the layer's device reads (weight codes, scales, bias), not copies: what a
  /// model warms L2 with before the layer runs (cuda::l2_prefetch). Those on another device are left out.
  virtual std::vector<torch::Tensor> stored_tensors() const = 0;

  /// Tensors to serialize, keyed relative to the layer ("weight", "bias", "SCB", "weight.absmax", ...).
  virtual std::map<std::string, torch::Tensor> state() const = 0;
  /// Moves all storage to `device` (CPU <-> CUDA).
  virtual void to(const torch::Device& device) = 0;
};

/// Quantizes an fp32 weight [out, in] (+ optional bias [out]) with `method`.
std::unique_ptr<QuantizedLinear> quantize_linear(Method method, const torch::Tensor& weight,
                                                 const torch::Tensor& bias, const QuantOptions& options = {});

/// Rebuilds a layer from tensors produced by state(); FormatError naming the missing/bad key.
std::unique_ptr<QuantizedLinear> load_linear(Method method, const std::map<std::string, torch::Tensor>& state,
                                             const QuantOptions& options = {});

/// layers[j]->dense_weight_into(*outs[j], max_blocks) for every j, with the same checks and values: two to four
/// NF4 layers on a GPU in one launch (cuda::nf4_dequantize_batch_into), the others one by one. The model's weight
/// prefetch makes a transformer block's four dense weights at once.
void dense_weights_into(const std::vector<const QuantizedLinear*>& layers, const std::vector<torch::Tensor*>& outs,
                        int max_blocks = 0);

}  // namespace evalsvc::kernels
