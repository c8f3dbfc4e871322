#pragma once
// The one place where differences between libtorch 1.13 (Debian, CPU, CI) and 2.x (PyTorch wheels,
// CUDA, GPU box) are guarded. Everything else includes this instead of testing versions itself.
#include <torch/torch.h>
#include <torch/version.h>

#define EVALSVC_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) || (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

// torch::scaled_dot_product_attention (fused flash / memory-efficient attention) arrived in 2.0.
#if EVALSVC_TORCH_AT_LEAST(2, 0)
#define EVALSVC_HAS_SDPA 1
#else
#define EVALSVC_HAS_SDPA 0
#endif

// torch::kFloat8_e4m3fn / kFloat8_e5m2 (FP8 tensors, safetensors F8_E4M3 / F8_E5M2) arrived in 2.1.
#ifndef EVALSVC_HAS_FLOAT8
#if EVALSVC_TORCH_AT_LEAST(2, 1)
#define EVALSVC_HAS_FLOAT8 1
#else
#define EVALSVC_HAS_FLOAT8 0
#endif
#endif

namespace evalsvc::compat {

/// True when this libtorch was built with CUDA and a device is visible.
inline bool cuda_available() { return torch::cuda::is_available(); }

/// Scaled dot-product attention, causal-only when `mask` is undefined. `mask` broadcasts to [B, H, Tq, Tk]: an
/// additive float mask, or a boolean one (true: the key takes part). q [B, H, Tq, D], k and v [B, H, Tk, D].
/// On libtorch >= 2.0 this is the fused kernel; on 1.13 the plain math path.
inline torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                               const torch::Tensor& mask, bool causal, double dropout_p) {
#if EVALSVC_HAS_SDPA
  if (mask.defined()) return at::scaled_dot_product_attention(q, k, v, mask, dropout_p, /*is_causal=*/false);
  return at::scaled_dot_product_attention(q, k, v, {}, dropout_p, /*is_causal=*/causal);
#else
  const auto T = q.size(-2);
  auto scores = torch::matmul(q, k.transpose(-2, -1)) / std::sqrt(static_cast<double>(q.size(-1)));
  if (mask.defined() && mask.scalar_type() == torch::kBool) {
    scores = scores.masked_fill(mask.logical_not(), -std::numeric_limits<float>::infinity());
  } else if (mask.defined()) {
    scores = scores + mask;
  } else if (causal) {
    auto m = torch::ones({T, T}, torch::TensorOptions().dtype(torch::kBool).device(q.device())).triu(1);
    scores = scores.masked_fill(m, -std::numeric_limits<float>::infinity());
  }
  auto p = torch::softmax(scores, -1);
  if (dropout_p > 0) p = torch::dropout(p, dropout_p, /*train=*/true);
  return torch::matmul(p, v);
#endif
}

}  // namespace evalsvc::compat
