#include "evalsvc/worker/quant_error.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "evalsvc/common/error.h"

namespace evalsvc::worker {

std::vector<ProjectionError> projection_errors(const GPT2Classifier& model,
                                               const std::map<std::string, torch::Tensor>& original) {
  torch::NoGradGuard no_grad;
  const int64_t layers = model->config().n_layer;
  std::vector<ProjectionError> out;
  for (int64_t l = 0; l < layers; ++l) {
    for (int p = 0; p < 4; ++p) {
      const auto proj = static_cast<Projection>(p);
      const kernels::QuantizedLinear* q = model->projection(l, proj);
      EVALSVC_CHECK(q != nullptr, InputError,
                    "projection_errors: block {} {} is not quantized yet (call quantize() first)", l,
                    projection_name(proj));
      const std::string key = fmt::format("transformer.h.{}.{}.weight", l, projection_name(proj));
      auto it = original.find(key);
      EVALSVC_CHECK(it != original.end(), FormatError, "projection_errors: original weights lack '{}'", key);
      // Hugging Face Conv1D stores [in, out]; the layer's weight is [out, in].
      const torch::Tensor w = it->second.detach().to(torch::kCPU, torch::kFloat64).t();
      const torch::Tensor d = q->dequantized_weight().detach().to(torch::kCPU, torch::kFloat64);
      EVALSVC_CHECK(w.sizes() == d.sizes(), FormatError,
                    "projection_errors: '{}' is [{}] (as [out, in]) but the variant's weight is [{}]", key,
                    fmt::join(w.sizes(), ", "), fmt::join(d.sizes(), ", "));
      const torch::Tensor diff = w - d;
      ProjectionError e;
      e.layer = l;
      e.projection = proj;
      e.numel = w.numel();
      e.signal_sq = w.pow(2).sum().item<double>();
      e.error_sq = diff.pow(2).sum().item<double>();
      e.max_abs_error = e.numel > 0 ? diff.abs().max().item<double>() : 0.0;
      out.push_back(e);
    }
  }
  return out;
}

}  // namespace evalsvc::worker
