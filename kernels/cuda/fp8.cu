// FP8 E4M3 kernels of SPEC section 2: per-token activation quantization (scale = absmax / 448) and weight
// dequantization. The scaled matrix product itself is cuBLASLt's (at::_scaled_mm in the adapter).
// E4M3FN is stored as uint8 bit patterns, as the CPU reference does (libtorch 1.13 has no float8 dtype):
// bias 7, max 448, no infinities, NaN 0x7F/0xFF; cuda_fp8.h converts with round-to-nearest-even and
// __NV_SATFINITE saturation, the same rule as ref::fp8_encode. Those intrinsics exist on every architecture
// (emulated below sm_89), so quantization and dequantization also run on sm_80.
#include "common.cuh"

namespace evalsvc::kernels::cuda {
namespace {

using detail::Fp8Encoder;
using detail::from_float;
using detail::to_float;

/// One block per row: absmax, scale = absmax / 448, q = e4m3(x / scale).
template <typename T>
__global__ void k_quantize_rows_fp8(const T* __restrict__ x, int64_t k, uint8_t* __restrict__ q,
                                    float* __restrict__ scale) {
  const int64_t row = blockIdx.x;
  const T* xr = x + row * k;
  uint8_t* qr = q + row * k;
  float amax = 0.0f;
  for (int64_t c = threadIdx.x; c < k; c += blockDim.x) amax = fmaxf(amax, fabsf(to_float(xr[c])));
  amax = detail::block_max(amax);
  const float s = amax / Fp8Encoder::kMax;
  if (threadIdx.x == 0) scale[row] = s;
  for (int64_t c = threadIdx.x; c < k; c += blockDim.x) {
    uint8_t v = 0;
    if (s > 0.0f) v = static_cast<uint8_t>(Fp8Encoder::encode(to_float(xr[c]), s));
    qr[c] = v;
  }
}

template <typename T>
__global__ void k_fp8_dequantize(const uint8_t* __restrict__ q, const float* __restrict__ scale, int64_t n,
                                 int64_t k, T* __restrict__ out) {
  const int64_t total = n * k;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const __half h = __half(__nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>(q[i]), __NV_E4M3));
    out[i] = from_float<T>(__half2float(h) * scale[i / k]);
  }
}

}  // namespace

int launch_quantize_rows_fp8(const void* x, DType dtype, int64_t t, int64_t k, uint8_t* q, float* scale,
                             cudaStream_t stream) {
  if (t <= 0 || k <= 0 || t > INT32_MAX) return kLaunchBadShape;
  if (x == nullptr || q == nullptr || scale == nullptr) return kLaunchBadPointer;
  if (detail::launch_quantize_rows_warp<Fp8Encoder>(x, dtype, t, k, 0.0f, nullptr, q, scale, stream)) {
    return detail::launch_result();
  }
  EVALSVC_DISPATCH_FLOAT(dtype, T, k_quantize_rows_fp8<T><<<static_cast<unsigned>(t), 256, 0, stream>>>(static_cast<const T*>(x), k, q, scale));
  return detail::launch_result();
}

int launch_fp8_dequantize(const uint8_t* q, const float* scale, int64_t n, int64_t k, void* out, DType dtype,
                          cudaStream_t stream) {
  if (n <= 0 || k <= 0) return kLaunchBadShape;
  if (q == nullptr || scale == nullptr || out == nullptr) return kLaunchBadPointer;
  const int threads = 256;
  const unsigned grid = detail::grid_for(n * k, threads, 8192);
  EVALSVC_DISPATCH_FLOAT(dtype, T, k_fp8_dequantize<T><<<grid, threads, 0, stream>>>(q, scale, n, k, static_cast<T*>(out)));
  return detail::launch_result();
}

}  // namespace evalsvc::kernels::cuda
