// SPEC section 3 memory (a) and (b) from shapes; see memory.h.
#include "evalsvc/kernels/memory.h"

#include <optional>
#include <utility>

#include "evalsvc/common/error.h"
#include "evalsvc/kernels/codebooks.h"
#include "evalsvc/kernels/cuda_ops.h"
#include "evalsvc/kernels/reference.h"

namespace evalsvc::kernels {

int64_t dtype_bytes(torch::ScalarType dtype) { return static_cast<int64_t>(c10::elementSize(dtype)); }

namespace {
std::optional<torch::ScalarType> plain_dtype(Method m) {
  switch (m) {
    case Method::kFp32: return torch::kFloat;
    case Method::kFp16: return torch::kHalf;
    case Method::kBf16: return torch::kBFloat16;
    default: return std::nullopt;
  }
}
}  // namespace

torch::ScalarType layer_base_dtype(Method method, const QuantOptions& options) {
  return plain_dtype(method).value_or(options.compute_dtype);
}

LayerBytes linear_layer_bytes(Method method, int64_t out, int64_t in, bool has_bias, torch::ScalarType base_dtype,
                              const QuantOptions& options) {
  EVALSVC_CHECK(out > 0 && in > 0, InputError, "linear_layer_bytes: out and in must be > 0, got out={} in={}", out,
                in);
  const int64_t n = out * in;
  const int64_t bias = has_bias ? out * dtype_bytes(base_dtype) : 0;
  LayerBytes b;
  switch (method) {
    case Method::kFp32:
    case Method::kFp16:
    case Method::kBf16:
      b.hf_footprint = b.runtime = n * dtype_bytes(*plain_dtype(method));
      break;
    case Method::kInt8SymTensor:
      b.hf_footprint = b.runtime = n + 4;
      break;
    case Method::kInt8SymChannel:
    case Method::kInt8W8A8:
    case Method::kFp8E4M3:
      b.hf_footprint = b.runtime = n + 4 * out;
      break;
    case Method::kLlmInt8:
      b.hf_footprint = n;
      // SCB, and the outlier state a layer keeps on a GPU (a bit mask of the in columns + a block counter, int32;
      // one per stream that runs the layer, counted once).
      b.runtime = n + 4 * out + 4 * cuda::llm_int8_outlier_state_numel(in);
      break;
    case Method::kNf4: {
      ref::check_nf4_blocksize(options.block_size);
      const int64_t nblocks = (n + options.block_size - 1) / options.block_size;
      b.hf_footprint = (n + 1) / 2;
      int64_t absmax = nblocks * 4;
      if (options.double_quant) {
        absmax = nblocks + 4 * ((nblocks + kNestedBlockSize - 1) / kNestedBlockSize) + 4 + 256 * 4;
      }
      b.runtime = b.hf_footprint + 16 * 4 + absmax;
      break;
    }
  }
  b.hf_footprint += bias;
  b.runtime += bias;
  return b;
}

MemoryFootprint model_memory(const ModelShape& shape, Method method, torch::ScalarType base_dtype,
                             const QuantOptions& options) {
  EVALSVC_CHECK(shape.vocab > 0 && shape.n_positions > 0 && shape.n_embd > 0 && shape.n_layer > 0 &&
                    shape.num_labels > 0,
                InputError, "model_memory: shape fields must be > 0, got vocab={} n_positions={} n_embd={} "
                "n_layer={} num_labels={}", shape.vocab, shape.n_positions, shape.n_embd, shape.n_layer,
                shape.num_labels);
  if (auto plain = plain_dtype(method)) {
    EVALSVC_CHECK(*plain == base_dtype, InputError, "model_memory: method {} runs in {}, but base dtype {} was given",
                  method_name(method), c10::toString(*plain), c10::toString(base_dtype));
  }
  // The layers take their base dtype from options.compute_dtype; make the two agree.
  QuantOptions layer_options = options;
  layer_options.compute_dtype = base_dtype;
  const int64_t e = shape.n_embd, inner = shape.n_inner > 0 ? shape.n_inner : 4 * e;

  // Not quantized: token + position embeddings, ln_1 and ln_2 of each block, ln_f, the bias-free score head.
  const int64_t other_params = shape.vocab * e + shape.n_positions * e + shape.n_layer * 4 * e + 2 * e +
                               shape.num_labels * e;
  const int64_t other = other_params * dtype_bytes(base_dtype);

  LayerBytes block{};
  for (auto [out, in] : {std::pair{3 * e, e}, std::pair{e, e}, std::pair{inner, e}, std::pair{e, inner}}) {
    const auto lb = linear_layer_bytes(method, out, in, /*has_bias=*/true, base_dtype, layer_options);
    block.hf_footprint += lb.hf_footprint;
    block.runtime += lb.runtime;
  }
  const int64_t buffers = shape.n_layer * (shape.n_positions * shape.n_positions + dtype_bytes(base_dtype));

  MemoryFootprint m{};
  m.hf_without_mask_buffers = other + shape.n_layer * block.hf_footprint;
  m.hf_with_mask_buffers = m.hf_without_mask_buffers + buffers;
  m.runtime = other + shape.n_layer * block.runtime;
  return m;
}

}  // namespace evalsvc::kernels
