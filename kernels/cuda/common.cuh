#pragma once
// Device helpers shared by the qbench kernels (kernels/cuda/*.cu): dtype conversion, reductions, launch checks.
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "evalsvc/kernels/cuda_launchers.h"

namespace evalsvc::kernels::cuda::detail {

/// Loads one element of a floating-point tensor as fp32.
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(float v) { return v; }

/// Rounds an fp32 value to the element type T (round to nearest even).
template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }

/// Bit pattern of a 16-bit float (for packing two into a word without going through memory).
__device__ __forceinline__ uint32_t bits16(__half v) { return __half_as_ushort(v); }
__device__ __forceinline__ uint32_t bits16(__nv_bfloat16 v) { return __bfloat16_as_ushort(v); }

/// Stores v[0..7] rounded to T at p: one 16-byte store for fp16/bf16, two for fp32 (p 16-byte aligned).
template <typename T>
__device__ __forceinline__ void store8(T* p, const float (&v)[8]) {
  if constexpr (sizeof(T) == 4) {
    float4* o = reinterpret_cast<float4*>(p);
    o[0] = make_float4(v[0], v[1], v[2], v[3]);
    o[1] = make_float4(v[4], v[5], v[6], v[7]);
  } else {
    uint4 u;
    u.x = bits16(from_float<T>(v[0])) | (bits16(from_float<T>(v[1])) << 16);
    u.y = bits16(from_float<T>(v[2])) | (bits16(from_float<T>(v[3])) << 16);
    u.z = bits16(from_float<T>(v[4])) | (bits16(from_float<T>(v[5])) << 16);
    u.w = bits16(from_float<T>(v[6])) | (bits16(from_float<T>(v[7])) << 16);
    *reinterpret_cast<uint4*>(p) = u;
  }
}

/// GELU, tanh approximation (GPT-2's "gelu_new"), in fp32 with PyTorch's constants.
__device__ __forceinline__ float gelu_tanh(float x) {
  constexpr float kBeta = 0.7978845608028654f;  // sqrt(2 / pi)
  constexpr float kKappa = 0.044715f;
  return 0.5f * x * (1.0f + tanhf(kBeta * (x + kKappa * x * x * x)));
}

/// Max over a warp (every lane gets the result).
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
/// Sum over a warp (every lane gets the result).
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

/// Reduces v over the whole block with WarpOp (warp_max or warp_sum) and 0 as the identity of the missing
/// lanes (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
template <float (*WarpOp)(float)>
__device__ __forceinline__ float block_reduce(float v) {
  __shared__ float partial[32];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  v = WarpOp(v);
  __syncthreads();  // `partial` may still be read by a previous call
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  const int nwarps = blockDim.x >> 5;
  return WarpOp(lane < nwarps ? partial[lane] : 0.0f);
}
/// Max over the whole block of non-negative values (absmax).
__device__ __forceinline__ float block_max(float v) { return block_reduce<warp_max>(v); }
/// Sum over the whole block.
__device__ __forceinline__ float block_sum(float v) { return block_reduce<warp_sum>(v); }

/// Status of the launch just made: 0 or the cudaError_t (positive).
inline int launch_result() {
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? kLaunchOk : static_cast<int>(e);
}

/// Grid size for a grid-stride loop over `n` items: enough blocks to fill the GPU, never more than needed.
inline unsigned grid_for(int64_t n, int threads, int64_t cap = 65535) {
  int64_t blocks = (n + threads - 1) / threads;
  if (blocks < 1) blocks = 1;
  if (blocks > cap) blocks = cap;
  return static_cast<unsigned>(blocks);
}

}  // namespace evalsvc::kernels::cuda::detail

/// Instantiates `body` with `T` bound to the element type of `dtype`; unknown dtypes return kLaunchBadDtype.
#define EVALSVC_DISPATCH_FLOAT(dtype, T, ...)                          \
  switch (dtype) {                                                     \
    case ::evalsvc::kernels::cuda::DType::kF16: {                      \
      using T = __half;                                                \
      __VA_ARGS__;                                                     \
      break;                                                           \
    }                                                                  \
    case ::evalsvc::kernels::cuda::DType::kBF16: {                     \
      using T = __nv_bfloat16;                                         \
      __VA_ARGS__;                                                     \
      break;                                                           \
    }                                                                  \
    case ::evalsvc::kernels::cuda::DType::kF32: {                      \
      using T = float;                                                 \
      __VA_ARGS__;                                                     \
      break;                                                           \
    }                                                                  \
    default:                                                           \
      return ::evalsvc::kernels::cuda::kLaunchBadDtype;                \
  }
