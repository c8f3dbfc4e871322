// INT8 kernels of SPEC section 2: per-token activation quantization with device-side outlier detection
// (LLM.int8 without host synchronisation), a pipelined int8 tensor-core GEMM (mma.sync) with the dequantizing epilogue fused, the same
// epilogue over an int32 product from cuBLASLt, and weight-only int8 dequantization.
#include "common.cuh"

namespace evalsvc::kernels::cuda {
namespace {

using detail::from_float;
using detail::launch_quantize_rows_warp;
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

/// The int8 code of x at scale s: rint(x / s) (half to even, as torch.round) clamped to +-127, as int8 bits.
/// Shared by both quantizer kernels (and k_quantize_rows_warp's Enc), so their codes are the same by construction.
struct Int8Encoder {
  static constexpr float kMax = 127.0f;
  __device__ static uint32_t encode(float x, float s) {
    const float r = fminf(fmaxf(rintf(x / s), -127.0f), 127.0f);
    return static_cast<uint32_t>(static_cast<uint8_t>(static_cast<int8_t>(r)));
  }
};

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
  const float s = amax / Int8Encoder::kMax;
  if (threadIdx.x == 0) scale[row] = s;
  for (int64_t c = threadIdx.x; c < k; c += blockDim.x) {
    int8_t v = 0;
    if (s > 0.0f && (flags == nullptr || flags[c] == 0)) v = static_cast<int8_t>(Int8Encoder::encode(to_float(xr[c]), s));
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
// Ampere-style pipelined tensor-core GEMM (sm_80+; on Hopper it runs on the same units through the legacy
// mma.sync path, without wgmma): y = epilogue(xq . wq^T). Both operands are k-contiguous ([rows][k] int8), which
// is exactly what mma.m16n8k32.row.col wants, so neither needs a transpose. Per block a BM x BN output tile;
// k advances in 64-byte stages, kI8Stages of them in flight through cp.async (global -> shared without
// registers), so the loads of stage s + 3 overlap the products of stage s. Fragments come from shared memory
// by ldmatrix: an m16 x k32 int8 fragment has the byte layout of an m16 x k16 fp16 one, so the b16 form of
// ldmatrix delivers mma's s8 operand registers directly.
// Shared rows are 64 bytes (4 chunks of 16); chunk c of row r is stored at chunk c ^ ((r >> 1) & 3), so the
// 8 rows one ldmatrix phase reads land in 8 distinct 16-byte bank groups (unswizzled: 4-way conflicts).
// The epilogue (scales, bias, LLM.int8 outliers, GELU) runs on the accumulator registers: no int32 product
// ever reaches memory, which is what makes the cuBLASLt path (int32 written, then read back) slow at scale.
constexpr int kI8Bk = 64;     // bytes of k per pipeline stage
constexpr int kI8Stages = 4;

template <int BM, int BN, int WARPS_M, int WARPS_N>
struct I8Config {
  static constexpr int kBm = BM;
  static constexpr int kBn = BN;
  static constexpr int kThreads = WARPS_M * WARPS_N * 32;
  static constexpr int kWarpM = BM / WARPS_M;       // rows of a warp's tile
  static constexpr int kWarpN = BN / WARPS_N;       // columns of a warp's tile
  static constexpr int kMTiles = kWarpM / 16;       // m16 fragments per warp
  static constexpr int kNTiles = kWarpN / 8;        // n8 fragments per warp
  static constexpr int kStageBytes = (BM + BN) * kI8Bk;
  static constexpr int kSmemBytes = kI8Stages * kStageBytes;
  static_assert(kWarpM % 16 == 0 && kWarpN % 16 == 0, "warp tile must be whole m16 x n16 fragments");
};
// Large outputs: 128 x 128 tiles, 8 warps of 64 x 32. Small ones (fewer tiles than SMs): 64 x 64, 4 warps of
// 32 x 32, four times the blocks. (A 128 x 256 tile with 8 warps of 64 x 64, as CUTLASS's sm80 int8 GEMMs use,
// measured 1.45-1.8x slower than this one at 32,768 tokens on an H200: its 167 registers a thread leave one
// block per SM. docs/perf.md.)
using I8Large = I8Config<128, 128, 2, 4>;
using I8Small = I8Config<64, 64, 2, 2>;

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
/// 16 bytes global -> shared, asynchronously; src_bytes < 16 zero-fills the rest (0: all zeros, src unread).
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
/// d += a (16 x 32 s8, row) . b (32 x 8 s8, col), s32 accumulators.
__device__ __forceinline__ void mma_s8_16832(int (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
/// Byte offset of 16-byte chunk `chunk` of row `row` in a swizzled [rows][64] shared tile.
__device__ __forceinline__ int swizzled(int row, int chunk) { return row * kI8Bk + ((chunk ^ ((row >> 1) & 3)) << 4); }

/// Issues the copies of rows [row0, row0 + ROWS) x bytes [k0, k0 + 64) of g [rows, k] into a swizzled shared
/// tile; zeros outside the matrix. vec: k % 16 == 0 and g 16-byte aligned, so a chunk is wholly in or out;
/// otherwise the chunk is gathered byte by byte with plain shared stores (odd k; visible after the barrier
/// that precedes its use, like the asynchronous copies).
template <int ROWS, int THREADS>
__device__ __forceinline__ void load_i8_stage(const int8_t* __restrict__ g, int64_t rows, int64_t k, int64_t row0,
                                              int64_t k0, bool vec, int8_t* s) {
#pragma unroll
  for (int i = threadIdx.x; i < ROWS * 4; i += THREADS) {
    const int r = i >> 2;
    const int ch = i & 3;
    const int64_t gr = row0 + r;
    const int64_t gk = k0 + ch * 16;
    int8_t* dst = s + swizzled(r, ch);
    if (vec) {
      const bool in = gr < rows && gk < k;
      cp_async16(smem_addr(dst), in ? static_cast<const void*>(g + gr * k + gk) : static_cast<const void*>(g),
                 in ? 16 : 0);
    } else {
#pragma unroll 1
      for (int b = 0; b < 16; ++b) dst[b] = (gr < rows && gk + b < k) ? g[gr * k + gk + b] : int8_t{0};
    }
  }
}

/// Stores two adjacent outputs (c, c + 1) of row r; paired store when both exist and are aligned (n even).
template <typename T>
__device__ __forceinline__ void store_pair(T* __restrict__ y, int64_t r, int64_t c, int64_t n, float v0, float v1) {
  T* p = y + r * n + c;
  if (c + 1 < n && (n & 1) == 0) {
    if constexpr (sizeof(T) == 4) {
      *reinterpret_cast<float2*>(p) = make_float2(v0, v1);
    } else {
      const uint32_t u = detail::bits16(from_float<T>(v0)) | (detail::bits16(from_float<T>(v1)) << 16);
      *reinterpret_cast<uint32_t*>(p) = u;
    }
  } else {
    p[0] = from_float<T>(v0);
    if (c + 1 < n) p[1] = from_float<T>(v1);
  }
}

template <typename Cfg, typename T>
__global__ void __launch_bounds__(Cfg::kThreads) k_int8_gemm(const int8_t* __restrict__ xq,
                                                              const int8_t* __restrict__ wq, int64_t m, int64_t n,
                                                              int64_t k, Int8Epilogue ep, T* __restrict__ y,
                                                              bool vec) {
  extern __shared__ __align__(128) int8_t smem[];
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * Cfg::kBn;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * Cfg::kBm;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int wm = (warp / (Cfg::kBn / Cfg::kWarpN)) * Cfg::kWarpM;
  const int wn = (warp % (Cfg::kBn / Cfg::kWarpN)) * Cfg::kWarpN;

  int acc[Cfg::kMTiles][Cfg::kNTiles][4];
#pragma unroll
  for (int i = 0; i < Cfg::kMTiles; ++i)
#pragma unroll
    for (int j = 0; j < Cfg::kNTiles; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0;

  auto stage_a = [&](int s) { return smem + s * Cfg::kStageBytes; };
  auto stage_b = [&](int s) { return smem + s * Cfg::kStageBytes + Cfg::kBm * kI8Bk; };
  auto load = [&](int s, int64_t k0) {
    load_i8_stage<Cfg::kBm, Cfg::kThreads>(xq, m, k, m0, k0, vec, stage_a(s));
    load_i8_stage<Cfg::kBn, Cfg::kThreads>(wq, n, k, n0, k0, vec, stage_b(s));
  };

  const int ktiles = static_cast<int>((k + kI8Bk - 1) / kI8Bk);
#pragma unroll
  for (int s = 0; s < kI8Stages - 1; ++s) {
    if (s < ktiles) load(s, static_cast<int64_t>(s) * kI8Bk);
    cp_async_commit();  // an empty group past the end keeps the wait count below uniform
  }

  for (int kt = 0; kt < ktiles; ++kt) {
    cp_async_wait<kI8Stages - 2>();  // stage kt has landed (this thread's copies) ...
    __syncthreads();                 // ... everyone's, and stage kt - 1 is no longer being read
    const int next = kt + kI8Stages - 1;
    if (next < ktiles) load(next % kI8Stages, static_cast<int64_t>(next) * kI8Bk);
    cp_async_commit();

    const uint32_t sa = smem_addr(stage_a(kt % kI8Stages));
    const uint32_t sb = smem_addr(stage_b(kt % kI8Stages));
#pragma unroll
    for (int ks = 0; ks < kI8Bk / 32; ++ks) {
      uint32_t a[Cfg::kMTiles][4];
      uint32_t b[Cfg::kNTiles / 2][4];
#pragma unroll
      for (int i = 0; i < Cfg::kMTiles; ++i) {
        // lanes 0-15: rows 0-15 at k bytes [0, 16); lanes 16-31: the same rows at [16, 32) -> a0..a3 of mma.
        const int row = wm + i * 16 + (lane & 15);
        ldmatrix_x4(a[i], sa + swizzled(row, ks * 2 + (lane >> 4)));
      }
#pragma unroll
      for (int j = 0; j < Cfg::kNTiles / 2; ++j) {
        // lanes 0-7 / 8-15: outputs 0-7 at k bytes [0, 16) / [16, 32); lanes 16-31: outputs 8-15 likewise,
        // so b[j][0..1] are n-fragment 2j's two registers and b[j][2..3] fragment 2j + 1's.
        const int row = wn + j * 16 + ((lane >> 4) << 3) + (lane & 7);
        ldmatrix_x4(b[j], sb + swizzled(row, ks * 2 + ((lane >> 3) & 1)));
      }
#pragma unroll
      for (int i = 0; i < Cfg::kMTiles; ++i)
#pragma unroll
        for (int j = 0; j < Cfg::kNTiles; ++j) mma_s8_16832(acc[i][j], a[i], b[j / 2][(j & 1) * 2], b[j / 2][(j & 1) * 2 + 1]);
    }
  }
  cp_async_wait<0>();

  // Accumulator layout of m16n8: registers 0, 1 = row lane / 4, columns 2 * (lane % 4) + {0, 1}; 2, 3 = row + 8.
  const int g = lane >> 2;
  const int tig = lane & 3;
#pragma unroll
  for (int i = 0; i < Cfg::kMTiles; ++i) {
#pragma unroll
    for (int j = 0; j < Cfg::kNTiles; ++j) {
      const int64_t c = n0 + wn + j * 8 + tig * 2;
      if (c >= n) continue;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t r = m0 + wm + i * 16 + g + h * 8;
        if (r >= m) continue;
        const float v0 = epilogue_value<T>(ep, static_cast<float>(acc[i][j][2 * h]), r, c, k);
        const float v1 = c + 1 < n ? epilogue_value<T>(ep, static_cast<float>(acc[i][j][2 * h + 1]), r, c + 1, k) : 0.0f;
        store_pair<T>(y, r, c, n, v0, v1);
      }
    }
  }
}

/// Launches k_int8_gemm with configuration Cfg (opting in to more than 48 KB of shared memory when it needs it).
template <typename Cfg, typename T>
int launch_int8_gemm_cfg(const int8_t* xq, const int8_t* wq, int64_t m, int64_t n, int64_t k, const Int8Epilogue& ep,
                         T* y, bool vec, cudaStream_t stream) {
  if ((m + Cfg::kBm - 1) / Cfg::kBm > 65535 || (n + Cfg::kBn - 1) / Cfg::kBn > INT32_MAX) return kLaunchBadShape;
  if constexpr (Cfg::kSmemBytes > 48 * 1024) {
    // Once per device (the attribute belongs to the device's context), on the first, eager call: not again
    // inside a CUDA graph capture.
    static bool opted_in[64] = {};
    int dev = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e != cudaSuccess) return static_cast<int>(e);
    if (dev < 0 || dev >= 64 || !opted_in[dev]) {
      e = cudaFuncSetAttribute(k_int8_gemm<Cfg, T>, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmemBytes);
      if (e != cudaSuccess) return static_cast<int>(e);
      if (dev >= 0 && dev < 64) opted_in[dev] = true;
    }
  }
  const dim3 grid(static_cast<unsigned>((n + Cfg::kBn - 1) / Cfg::kBn), static_cast<unsigned>((m + Cfg::kBm - 1) / Cfg::kBm));
  k_int8_gemm<Cfg, T><<<grid, Cfg::kThreads, Cfg::kSmemBytes, stream>>>(xq, wq, m, n, k, ep, y, vec);
  return detail::launch_result();
}

/// Streaming multiprocessors of the current device (cached per device).
int sm_count() {
  static int counts[64] = {};
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) return 0;
  if (counts[dev] == 0) cudaDeviceGetAttribute(&counts[dev], cudaDevAttrMultiProcessorCount, dev);
  return counts[dev];
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
  if (launch_quantize_rows_warp<Int8Encoder>(x, dtype, t, k, threshold, flags, reinterpret_cast<uint8_t*>(q), scale,
                                             stream)) {
    return detail::launch_result();
  }
  EVALSVC_DISPATCH_FLOAT(dtype, T, k_quantize_rows_int8<T><<<static_cast<unsigned>(t), 256, 0, stream>>>(static_cast<const T*>(x), k, threshold, flags, q, scale));
  return detail::launch_result();
}

int launch_int8_gemm(const int8_t* xq, const int8_t* wq, int64_t m, int64_t n, int64_t k, const Int8Epilogue& ep,
                     void* y, DType dtype, cudaStream_t stream) {
  if (m <= 0 || n <= 0 || k <= 0) return kLaunchBadShape;
  if (xq == nullptr || wq == nullptr || y == nullptr || !epilogue_ok(ep)) return kLaunchBadPointer;
  const bool vec = k % 16 == 0 && reinterpret_cast<uintptr_t>(xq) % 16 == 0 && reinterpret_cast<uintptr_t>(wq) % 16 == 0;
  // The largest tile whose blocks alone fill every SM; below that the 64 x 64 tiles' four times as many blocks
  // finish sooner (at 128 tokens x 768 outputs: 6 blocks against 24).
  const int64_t large_tiles = ((m + I8Large::kBm - 1) / I8Large::kBm) * ((n + I8Large::kBn - 1) / I8Large::kBn);
  const bool large = large_tiles >= sm_count();
  EVALSVC_DISPATCH_FLOAT(dtype, T, {
    return large ? launch_int8_gemm_cfg<I8Large, T>(xq, wq, m, n, k, ep, static_cast<T*>(y), vec, stream)
                 : launch_int8_gemm_cfg<I8Small, T>(xq, wq, m, n, k, ep, static_cast<T*>(y), vec, stream);
  });
  return kLaunchOk;
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
