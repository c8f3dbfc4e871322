// INT8 kernels of SPEC section 2: per-token activation quantization with device-side outlier detection
// (LLM.int8 without host synchronisation), an int8 tensor-core GEMM with a dequantizing epilogue, the same
// epilogue over an int32 product from cuBLASLt, and weight-only int8 dequantization.
#include <mma.h>

#include "common.cuh"

namespace evalsvc::kernels::cuda {
namespace {

using detail::from_float;
using detail::to_float;

// ---- outlier columns ---------------------------------------------------------------------------------------

/// flags[c] |= 1 when some |x[r, c]| >= threshold. Consecutive threads read consecutive elements (coalesced);
/// the flag is read first so that a column full of outliers does not serialise on one atomic.
template <typename T>
__global__ void k_outlier_columns(const T* __restrict__ x, int64_t total, int64_t k, float threshold,
                                  int32_t* flags) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    if (fabsf(to_float(x[i])) >= threshold) {
      int32_t* f = flags + (i % k);
      if (*reinterpret_cast<volatile int32_t*>(f) == 0) atomicOr(f, 1);
    }
  }
}

/// One block of 1024 threads turns flags [k] into ascending indices: ballot + popc within a warp, a running
/// base across 1024-column chunks. Deterministic order, so the outlier sum is reproducible run to run.
__global__ void __launch_bounds__(1024) k_compact_columns(const int32_t* __restrict__ flags, int64_t k,
                                                          int32_t* idx, int32_t* count) {
  __shared__ int warp_counts[32];
  __shared__ int base;
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  if (tid == 0) base = 0;
  __syncthreads();
  for (int64_t c0 = 0; c0 < k; c0 += 1024) {
    const int64_t c = c0 + tid;
    const bool flagged = c < k && flags[c] != 0;
    const unsigned ballot = __ballot_sync(0xffffffffu, flagged);
    if (lane == 0) warp_counts[warp] = __popc(ballot);
    __syncthreads();
    int offset = base;
    for (int w = 0; w < warp; ++w) offset += warp_counts[w];
    if (flagged) idx[offset + __popc(ballot & ((1u << lane) - 1u))] = static_cast<int32_t>(c);
    __syncthreads();
    if (tid == 0) {
      int s = 0;
      for (int w = 0; w < 32; ++w) s += warp_counts[w];
      base += s;
    }
    __syncthreads();
  }
  if (tid == 0) *count = base;
}

// ---- per-token quantization --------------------------------------------------------------------------------

/// One block per row. absmax over the elements with |x| < threshold (all elements when threshold <= 0): as
/// bitsandbytes' kInt8VectorQuant, which skips outliers element by element. Then q = rint(x / scale) (half to
/// even, as torch.round) clamped to +-127, 0 in flagged (outlier) columns. Dividing by scale = absmax / 127
/// (not multiplying by 127 / absmax) matches the CPU reference bit for bit.
template <typename T>
__global__ void k_quantize_rows_int8(const T* __restrict__ x, int64_t k, float threshold,
                                     const int32_t* __restrict__ flags, int8_t* __restrict__ q,
                                     float* __restrict__ scale) {
  const int64_t row = blockIdx.x;
  const T* xr = x + row * k;
  int8_t* qr = q + row * k;
  const bool skip_outliers = threshold > 0.0f;
  float amax = 0.0f;
  for (int64_t c = threadIdx.x; c < k; c += blockDim.x) {
    const float a = fabsf(to_float(xr[c]));
    if (!skip_outliers || a < threshold) amax = fmaxf(amax, a);
  }
  amax = detail::block_max(amax);
  const float s = amax / 127.0f;
  if (threadIdx.x == 0) scale[row] = s;
  for (int64_t c = threadIdx.x; c < k; c += blockDim.x) {
    int8_t v = 0;
    if (s > 0.0f && (flags == nullptr || flags[c] == 0)) {
      const float r = fminf(fmaxf(rintf(to_float(xr[c]) / s), -127.0f), 127.0f);
      v = static_cast<int8_t>(r);
    }
    qr[c] = v;
  }
}

// ---- epilogue ----------------------------------------------------------------------------------------------

/// The dequantized output element (see Int8Epilogue); T = type of the output and of the LLM.int8 input x.
template <typename T>
__device__ __forceinline__ float epilogue_value(Int8Epilogue ep, float acc, int64_t r, int64_t c, int64_t k) {
  float v = acc * ep.row_scale[r] * ep.col_scale[ep.col_scale_per_channel ? c : 0] * ep.alpha;
  if (ep.outlier_count != nullptr) {
    const int cnt = *ep.outlier_count;
    const T* xr = static_cast<const T*>(ep.outlier_x) + r * k;
    const int8_t* cb = ep.outlier_cb + c * k;
    const float scb = ep.outlier_scb[c];
    float o = 0.0f;
    for (int j = 0; j < cnt; ++j) {
      const int col = ep.outlier_idx[j];
      // fp16 operands, fp32 accumulation: what an fp16 matmul of the outlier columns computes.
      const float xv = __half2float(__float2half_rn(to_float(xr[col])));
      const float wv = __half2float(__float2half_rn(static_cast<float>(cb[col]) * scb / 127.0f));
      o = fmaf(xv, wv, o);
    }
    v += o;
  }
  if (ep.bias != nullptr) v += ep.bias[c];
  if (ep.gelu_tanh) v = detail::gelu_tanh(to_float(from_float<T>(v)));
  return v;
}

template <typename T>
__global__ void k_int8_epilogue(const int32_t* __restrict__ acc, int64_t m, int64_t n, int64_t k, Int8Epilogue ep,
                                T* __restrict__ y) {
  const int64_t total = m * n;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int64_t r = i / n;
    const int64_t c = i - r * n;
    y[i] = from_float<T>(epilogue_value<T>(ep, static_cast<float>(acc[i]), r, c, k));
  }
}

/// The same epilogue with one block per row, for n % 4 == 0: 16-byte loads of the int32 product, no 64-bit
/// division per element (the grid-stride kernel above spends more on `i / n` than on memory at large m).
template <typename T>
__global__ void k_int8_epilogue_rows(const int32_t* __restrict__ acc, int64_t n, int64_t k, Int8Epilogue ep,
                                     T* __restrict__ y) {
  const int64_t r = blockIdx.x;
  const int4* a4 = reinterpret_cast<const int4*>(acc + r * n);
  T* yr = y + r * n;
  const int n4 = static_cast<int>(n / 4);
  for (int j = threadIdx.x; j < n4; j += blockDim.x) {
    const int4 v = a4[j];
    const int c = 4 * j;
    yr[c + 0] = from_float<T>(epilogue_value<T>(ep, static_cast<float>(v.x), r, c + 0, k));
    yr[c + 1] = from_float<T>(epilogue_value<T>(ep, static_cast<float>(v.y), r, c + 1, k));
    yr[c + 2] = from_float<T>(epilogue_value<T>(ep, static_cast<float>(v.z), r, c + 2, k));
    yr[c + 3] = from_float<T>(epilogue_value<T>(ep, static_cast<float>(v.w), r, c + 3, k));
  }
}

// ---- int8 GEMM ---------------------------------------------------------------------------------------------
//
// Block tile 64 (tokens) x 64 (outputs) x 64 (k), 4 warps, each warp 32x32 = 2x2 WMMA 16x16x16 s8 fragments
// with s32 accumulators. Shared tiles are stored k-chunk-major, [BK/16][64 rows][16 bytes], so that every
// fragment pointer is 32-byte aligned (WMMA requires 256-bit alignment; a row-major [64][64] tile would put
// the k = 16 fragment 16 bytes off) and a warp's 16-byte row reads hit distinct banks.
constexpr int kI8Bm = 64;
constexpr int kI8Bn = 64;
constexpr int kI8Bk = 64;
constexpr int kI8Threads = 128;

/// Loads a [64 rows][64 k] int8 tile starting at (row0, k0) of a [rows, k] matrix into s[4][64][16]; zero
/// outside the matrix. vec: k % 16 == 0 and the base 16-byte aligned, so each 16-byte chunk is all in or out.
__device__ __forceinline__ void load_i8_tile(const int8_t* __restrict__ g, int64_t rows, int64_t k, int64_t row0,
                                             int64_t k0, bool vec, int8_t (*s)[kI8Bm][16]) {
  if (vec) {
    for (int i = threadIdx.x; i < kI8Bm * (kI8Bk / 16); i += kI8Threads) {
      const int r = i >> 2;
      const int ch = i & 3;
      const int64_t gr = row0 + r;
      const int64_t gk = k0 + ch * 16;
      uint4 v = make_uint4(0, 0, 0, 0);
      if (gr < rows && gk < k) v = __ldg(reinterpret_cast<const uint4*>(g + gr * k + gk));
      *reinterpret_cast<uint4*>(&s[ch][r][0]) = v;
    }
  } else {
    for (int i = threadIdx.x; i < kI8Bm * kI8Bk; i += kI8Threads) {
      const int r = i / kI8Bk;
      const int c = i % kI8Bk;
      const int64_t gr = row0 + r;
      const int64_t gk = k0 + c;
      s[c >> 4][r][c & 15] = (gr < rows && gk < k) ? g[gr * k + gk] : int8_t{0};
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kI8Threads) k_int8_gemm(const int8_t* __restrict__ xq,
                                                           const int8_t* __restrict__ wq, int64_t m, int64_t n,
                                                           int64_t k, Int8Epilogue ep, T* __restrict__ y,
                                                           bool vec) {
  using namespace nvcuda;
  __shared__ __align__(128) int8_t sa[kI8Bk / 16][kI8Bm][16];
  __shared__ __align__(128) int8_t sb[kI8Bk / 16][kI8Bn][16];
  __shared__ __align__(128) int32_t sc[kI8Bm][kI8Bn + 4];

  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kI8Bn;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kI8Bm;
  const int warp = threadIdx.x >> 5;
  const int wm = (warp >> 1) * 32;
  const int wn = (warp & 1) * 32;

  wmma::fragment<wmma::accumulator, 16, 16, 16, int> acc[2][2];
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0);

  for (int64_t k0 = 0; k0 < k; k0 += kI8Bk) {
    load_i8_tile(xq, m, k, m0, k0, vec, sa);
    load_i8_tile(wq, n, k, n0, k0, vec, sb);
    __syncthreads();
#pragma unroll
    for (int kc = 0; kc < kI8Bk / 16; ++kc) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, signed char, wmma::row_major> a[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, signed char, wmma::col_major> b[2];
      // A chunk is [64 rows][16 k] row-major (ldm 16); W chunk [64 outputs][16 k] is B = W^T col-major.
      for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(a[i], &sa[kc][wm + i * 16][0], 16);
      for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(b[j], &sb[kc][wn + j * 16][0], 16);
      for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }

  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(&sc[wm + i * 16][wn + j * 16], acc[i][j], kI8Bn + 4, wmma::mem_row_major);
  __syncthreads();

  for (int i = threadIdx.x; i < kI8Bm * kI8Bn; i += kI8Threads) {
    const int r = i / kI8Bn;
    const int c = i % kI8Bn;
    const int64_t gr = m0 + r;
    const int64_t gc = n0 + c;
    if (gr < m && gc < n) y[gr * n + gc] = from_float<T>(epilogue_value<T>(ep, static_cast<float>(sc[r][c]), gr, gc, k));
  }
}

// ---- weight-only dequantization ----------------------------------------------------------------------------

template <typename T>
__global__ void k_int8_dequantize(const int8_t* __restrict__ q, const float* __restrict__ scale, bool per_channel,
                                  int64_t n, int64_t k, T* __restrict__ out) {
  const int64_t total = n * k;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const float s = scale[per_channel ? i / k : 0];
    out[i] = from_float<T>(static_cast<float>(q[i]) * s);
  }
}

/// The same dequantization as a grid-stride loop over groups of 16 codes (one 16-byte load, two 8-value stores,
/// 32-bit indices), for a capped grid (launch max_blocks > 0): its few blocks must each move many bytes per trip
/// to keep up. For k % 16 == 0 (a group never straddles rows) and 16-byte aligned pointers.
template <typename T>
__global__ void k_int8_dequantize16(const int8_t* __restrict__ q, const float* __restrict__ scale, bool per_channel,
                                    uint32_t k16, uint32_t groups, T* __restrict__ out) {
  const int4* q16 = reinterpret_cast<const int4*>(q);
  for (uint32_t g = blockIdx.x * blockDim.x + threadIdx.x; g < groups; g += gridDim.x * blockDim.x) {
    const float s = scale[per_channel ? g / k16 : 0];
    const int4 p = q16[g];
    const int32_t pw[4] = {p.x, p.y, p.z, p.w};
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float v[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int8_t code = static_cast<int8_t>((pw[2 * h + j / 4] >> (8 * (j % 4))) & 0xFF);
        v[j] = static_cast<float>(code) * s;
      }
      detail::store8(out + 16 * static_cast<size_t>(g) + 8 * h, v);
    }
  }
}

/// The same dequantization, one block per row, 4 codes a thread (one 4-byte load, 32-bit indices): for
/// k % 4 == 0. The grid-stride kernel above paid a 64-bit division and a 1-byte load per element.
template <typename T>
__global__ void k_int8_dequantize_rows(const int8_t* __restrict__ q, const float* __restrict__ scale,
                                       bool per_channel, int64_t k, T* __restrict__ out) {
  const int64_t r = blockIdx.x;
  const float s = scale[per_channel ? r : 0];
  const char4* qr = reinterpret_cast<const char4*>(q + r * k);
  T* orow = out + r * k;
  const int k4 = static_cast<int>(k / 4);
  for (int j = threadIdx.x; j < k4; j += blockDim.x) {
    const char4 v = qr[j];
    orow[4 * j + 0] = from_float<T>(static_cast<float>(v.x) * s);
    orow[4 * j + 1] = from_float<T>(static_cast<float>(v.y) * s);
    orow[4 * j + 2] = from_float<T>(static_cast<float>(v.z) * s);
    orow[4 * j + 3] = from_float<T>(static_cast<float>(v.w) * s);
  }
}

bool epilogue_ok(const Int8Epilogue& ep) {
  if (ep.row_scale == nullptr || ep.col_scale == nullptr) return false;
  if (ep.outlier_count != nullptr &&
      (ep.outlier_x == nullptr || ep.outlier_cb == nullptr || ep.outlier_scb == nullptr || ep.outlier_idx == nullptr))
    return false;
  return true;
}

}  // namespace

const char* launch_status_string(int status) {
  switch (status) {
    case kLaunchOk: return "ok";
    case kLaunchBadShape: return "bad shape";
    case kLaunchBadDtype: return "unsupported dtype";
    case kLaunchBadPointer: return "null pointer";
    case kLaunchBadBlocksize: return "bad NF4 blocksize";
    default: break;
  }
  return status > 0 ? cudaGetErrorString(static_cast<cudaError_t>(status)) : "unknown launcher status";
}

int launch_outlier_columns(const void* x, DType dtype, int64_t t, int64_t k, float threshold, int32_t* flags,
                           cudaStream_t stream) {
  if (t <= 0 || k <= 0) return kLaunchBadShape;
  if (x == nullptr || flags == nullptr) return kLaunchBadPointer;
  const cudaError_t e = cudaMemsetAsync(flags, 0, static_cast<size_t>(k) * sizeof(int32_t), stream);
  if (e != cudaSuccess) return static_cast<int>(e);
  const int threads = 256;
  const unsigned grid = detail::grid_for(t * k, threads, 4096);
  EVALSVC_DISPATCH_FLOAT(dtype, T, k_outlier_columns<T><<<grid, threads, 0, stream>>>(static_cast<const T*>(x), t * k, k, threshold, flags));
  return detail::launch_result();
}

int launch_compact_columns(const int32_t* flags, int64_t k, int32_t* idx, int32_t* count, cudaStream_t stream) {
  if (k <= 0 || k > INT32_MAX) return kLaunchBadShape;
  if (flags == nullptr || idx == nullptr || count == nullptr) return kLaunchBadPointer;
  k_compact_columns<<<1, 1024, 0, stream>>>(flags, k, idx, count);
  return detail::launch_result();
}

int launch_quantize_rows_int8(const void* x, DType dtype, int64_t t, int64_t k, float threshold, const int32_t* flags,
                              int8_t* q, float* scale, cudaStream_t stream) {
  if (t <= 0 || k <= 0 || t > INT32_MAX) return kLaunchBadShape;
  if (x == nullptr || q == nullptr || scale == nullptr) return kLaunchBadPointer;
  EVALSVC_DISPATCH_FLOAT(dtype, T, k_quantize_rows_int8<T><<<static_cast<unsigned>(t), 256, 0, stream>>>(static_cast<const T*>(x), k, threshold, flags, q, scale));
  return detail::launch_result();
}

int launch_int8_gemm(const int8_t* xq, const int8_t* wq, int64_t m, int64_t n, int64_t k, const Int8Epilogue& ep,
                     void* y, DType dtype, cudaStream_t stream) {
  if (m <= 0 || n <= 0 || k <= 0) return kLaunchBadShape;
  if ((m + kI8Bm - 1) / kI8Bm > 65535 || (n + kI8Bn - 1) / kI8Bn > INT32_MAX) return kLaunchBadShape;
  if (xq == nullptr || wq == nullptr || y == nullptr || !epilogue_ok(ep)) return kLaunchBadPointer;
  const bool vec = k % 16 == 0 && reinterpret_cast<uintptr_t>(xq) % 16 == 0 && reinterpret_cast<uintptr_t>(wq) % 16 == 0;
  const dim3 grid(static_cast<unsigned>((n + kI8Bn - 1) / kI8Bn), static_cast<unsigned>((m + kI8Bm - 1) / kI8Bm));
  EVALSVC_DISPATCH_FLOAT(dtype, T, k_int8_gemm<T><<<grid, kI8Threads, 0, stream>>>(xq, wq, m, n, k, ep, static_cast<T*>(y), vec));
  return detail::launch_result();
}

int launch_int8_epilogue(const int32_t* acc, int64_t m, int64_t n, int64_t k, const Int8Epilogue& ep, void* y,
                         DType dtype, cudaStream_t stream) {
  if (m <= 0 || n <= 0 || k <= 0) return kLaunchBadShape;
  if (acc == nullptr || y == nullptr || !epilogue_ok(ep)) return kLaunchBadPointer;
  const int threads = 256;
  // Row blocks need 16-byte aligned rows (n % 4 == 0 and an aligned base, as torch allocations are).
  if (n % 4 == 0 && m <= INT32_MAX && reinterpret_cast<uintptr_t>(acc) % 16 == 0) {
    const int row_threads = n >= 1024 ? 256 : 128;
    EVALSVC_DISPATCH_FLOAT(dtype, T, k_int8_epilogue_rows<T><<<static_cast<unsigned>(m), row_threads, 0, stream>>>(acc, n, k, ep, static_cast<T*>(y)));
    return detail::launch_result();
  }
  const unsigned grid = detail::grid_for(m * n, threads, 8192);
  EVALSVC_DISPATCH_FLOAT(dtype, T, k_int8_epilogue<T><<<grid, threads, 0, stream>>>(acc, m, n, k, ep, static_cast<T*>(y)));
  return detail::launch_result();
}

int launch_int8_dequantize(const int8_t* q, const float* scale, bool per_channel, int64_t n, int64_t k, void* out,
                           DType dtype, cudaStream_t stream, int max_blocks) {
  if (n <= 0 || k <= 0 || max_blocks < 0) return kLaunchBadShape;
  if (q == nullptr || scale == nullptr || out == nullptr) return kLaunchBadPointer;
  const int threads = max_blocks > 0 ? kBackgroundBlockThreads : 256;
  const unsigned grid = detail::grid_for(n * k, threads, max_blocks > 0 ? max_blocks : 8192);
  const bool by4 = k % 4 == 0 && reinterpret_cast<uintptr_t>(q) % 4 == 0;
  const bool by16 = k % 16 == 0 && reinterpret_cast<uintptr_t>(q) % 16 == 0 && reinterpret_cast<uintptr_t>(out) % 16 == 0;
  if (max_blocks > 0 && by16 && n * k / 16 <= INT32_MAX) {
    const unsigned g16 = detail::grid_for(n * k / 16, threads, max_blocks);
    const auto k16 = static_cast<uint32_t>(k / 16), groups = static_cast<uint32_t>(n * k / 16);
    EVALSVC_DISPATCH_FLOAT(dtype, T, k_int8_dequantize16<T><<<g16, threads, 0, stream>>>(q, scale, per_channel, k16, groups, static_cast<T*>(out)));
    return detail::launch_result();
  }
  if (by4 && n <= INT32_MAX && max_blocks == 0) {
    const int row_threads = k >= 1024 ? 256 : 128;
    EVALSVC_DISPATCH_FLOAT(dtype, T, k_int8_dequantize_rows<T><<<static_cast<unsigned>(n), row_threads, 0, stream>>>(q, scale, per_channel, k, static_cast<T*>(out)));
    return detail::launch_result();
  }
  EVALSVC_DISPATCH_FLOAT(dtype, T, k_int8_dequantize<T><<<grid, threads, 0, stream>>>(q, scale, per_channel, n, k, static_cast<T*>(out)));
  return detail::launch_result();
}

}  // namespace evalsvc::kernels::cuda
