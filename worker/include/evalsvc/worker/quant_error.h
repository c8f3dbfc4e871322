#pragma once
// Weight quantization error of a quantized GPT-2 variant, per projection matrix (the 48 matrices SPEC
// section 2 quantizes). Stored by the quantize job in the results database (layer_errors) and shown in the
// report as SQNR = 10 log10(sum w^2 / sum (w - dequantize(quantize(w)))^2) in dB (common/metrics.h sqnr_db).
// The error covers the stored weights only: the activation quantization of W8A8 / LLM.int8 happens at run
// time and shows in accuracy and agreement, not here.
#include <map>
#include <string>
#include <vector>

#include "evalsvc/kernels/torch_compat.h"
#include "evalsvc/worker/gpt2.h"

namespace evalsvc::worker {

/// Error sums of one projection, in double precision.
struct ProjectionError {
  int64_t layer = 0;
  Projection projection = Projection::kAttn;
  int64_t numel = 0;
  double signal_sq = 0;      ///< sum of w^2 over the original weight
  double error_sq = 0;       ///< sum of (w - dequantized)^2
  double max_abs_error = 0;  ///< max |w - dequantized|
};

/// For every block and projection of the quantized `model`, compares the weight the model stores
/// (QuantizedLinear::dequantized_weight, [out, in]) with the original fp32 weight in `original` (Hugging Face
/// names and Conv1D layout [in, out], as load_checkpoint returns it). Sums run in float64 on the CPU.
/// InputError when the model is not quantized yet; FormatError naming the tensor when `original` lacks a
/// projection or its shape differs from the model's.
std::vector<ProjectionError> projection_errors(const GPT2Classifier& model,
                                               const std::map<std::string, torch::Tensor>& original);

}  // namespace evalsvc::worker
