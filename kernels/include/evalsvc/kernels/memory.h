#pragma once
// Model memory of SPEC section 3, (a) and (b), computed from shapes alone, with the very formula the layers use
// for bytes() (linear_layer_bytes), so the figures of a report and of a loaded model cannot drift apart.
#include <cstdint>

#include "evalsvc/kernels/quantized_linear.h"

namespace evalsvc::kernels {

/// The GPT-2 shapes that decide memory (Hugging Face GPT2Config names). n_inner <= 0 means 4 * n_embd.
struct ModelShape {
  int64_t vocab, n_positions, n_embd, n_layer, n_inner, num_labels;
};

/// SPEC section 3 memory, in bytes.
struct MemoryFootprint {
  /// (a) as transformers' get_memory_footprint() counts it with the causal-mask buffers that older releases
  /// register (per block: attn.bias bool [1, 1, n_positions, n_positions] + attn.masked_bias, one scalar in the
  /// base dtype) - the reference report's figure.
  int64_t hf_with_mask_buffers;
  /// (a) as recent transformers releases count it (no mask buffers).
  int64_t hf_without_mask_buffers;
  /// (b) every byte qbench needs to run the variant: parameters plus scales, absmax, code maps (no mask buffers:
  /// qbench's attention builds no mask).
  int64_t runtime;
};

/// Bytes of one element of a dtype (fp32 4, fp16/bf16 2, int8/uint8/bool 1, ...).
int64_t dtype_bytes(torch::ScalarType dtype);

/// The base dtype of a method's variant: what its layers keep biases in and compute with. Plain methods: their
/// own dtype. Quantized methods: options.compute_dtype (the model sets it to the variant's base dtype).
torch::ScalarType layer_base_dtype(Method method, const QuantOptions& options);

/// LayerBytes of one projection [out, in] (+ bias [out] in base_dtype when has_bias), per method:
///   plain                 hf = runtime = out*in*size(dtype)
///   int8-sym              hf = runtime = out*in + 4 (one fp32 scale)
///   int8-sym-channel, int8-w8a8, fp8-e4m3: hf = runtime = out*in + 4*out (fp32 scale per row)
///   llm-int8              hf = out*in (CB; bitsandbytes keeps SCB outside the parameters), runtime += 4*out (SCB)
///   nf4                   hf = ceil(out*in/2) (packed codes); runtime += 16*4 (quant_map) + absmax: nblocks*4, or
///                         with double quantization nblocks*1 + ceil(nblocks/256)*4 + 4 (offset) + 256*4 (map)
/// plus the bias in base_dtype in both. InputError for non-positive sizes or a bad nf4 block size.
LayerBytes linear_layer_bytes(Method method, int64_t out, int64_t in, bool has_bias, torch::ScalarType base_dtype,
                              const QuantOptions& options);

/// (a) and (b) for a GPT2ForSequenceClassification of `shape` whose 48 (4 * n_layer) projections use `method` and
/// whose embeddings, LayerNorms, biases and score head (no bias) are in `base_dtype`. InputError when a plain
/// method's dtype differs from base_dtype or a shape field is not positive.
MemoryFootprint model_memory(const ModelShape& shape, Method method, torch::ScalarType base_dtype,
                             const QuantOptions& options);

/// Bytes as MiB (the reference's "MB").
inline double to_mib(int64_t bytes) { return static_cast<double>(bytes) / (1024.0 * 1024.0); }

}  // namespace evalsvc::kernels
