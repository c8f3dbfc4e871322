// INT8 kernels of SPEC section 2: per-token activation quantization that flags LLM.int8's outlier columns in the
// same pass (no host synchronisation), int8 tensor-core GEMMs with the dequantizing epilogue fused (a pipelined
// mma.sync kernel for sm_80+, a TMA-fed wgmma kernel for Hopper), the same epilogue over an int32 product from
// cuBLASLt, and weight-only int8 dequantization. The wgmma kernel also multiplies E4M3 codes (launch_fp8_gemm):
// its pipeline and epilogue do not depend on what the 8-bit codes encode.
#include <atomic>
#include <cuda.h>  // CUtensorMap and its enums (the encoder is looked up at run time: no libcuda link)

#include "common.cuh"

namespace evalsvc::kernels::cuda {
namespace {

using detail::from_float;
using detail::Int8Encoder;
using detail::launch_quantize_rows_warp;
using detail::to_float;

// ---- outlier columns ---------------------------------------------------------------------------------------

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

/// One warp compacts and clears an outlier bit mask (detail::compact_mask_warp) and resets the block counter
/// beside it: the second launch of launch_quantize_rows_int8_outliers where the warp quantizer does not apply.
__global__ void __launch_bounds__(32) k_compact_mask(uint32_t* mask, int64_t k, int32_t* idx, int32_t* count,
                                                     int32_t* done) {
  detail::compact_mask_warp(mask, k, idx, count);
  if (threadIdx.x == 0) *done = 0;
}

// ---- per-token quantization --------------------------------------------------------------------------------

/// One block per row. absmax over the elements with |x| < threshold (all elements when threshold <= 0): as
/// bitsandbytes' kInt8VectorQuant, which skips outliers element by element; the skipped elements' columns are
/// flagged in outlier_flags (see k_quantize_rows_warp, whose contract this is). Then q = rint(x / scale) (half
/// to even, as torch.round) clamped to +-127. Dividing by scale = absmax / 127 (not multiplying by 127 / absmax)
/// matches the CPU reference bit for bit.
template <typename T, bool kMask = false>
__global__ void k_quantize_rows_int8(const T* __restrict__ x, int64_t k, float threshold, int32_t* outlier_flags,
                                     int8_t* __restrict__ q, float* __restrict__ scale) {
  const int64_t row = blockIdx.x;
  const T* xr = x + row * k;
  int8_t* qr = q + row * k;
  const bool skip_outliers = threshold > 0.0f;
  float amax = 0.0f;
  for (int64_t c = threadIdx.x; c < k; c += blockDim.x) {
    const float a = fabsf(to_float(xr[c]));
    if (!skip_outliers || a < threshold) amax = fmaxf(amax, a);
    else if constexpr (kMask) detail::flag_outlier_bit(reinterpret_cast<uint32_t*>(outlier_flags), c);
    else detail::flag_outlier_column(outlier_flags, c);
  }
  amax = detail::block_max(amax);
  const float s = amax / Int8Encoder::kMax;
  if (threadIdx.x == 0) scale[row] = s;
  for (int64_t c = threadIdx.x; c < k; c += blockDim.x) {
    qr[c] = s > 0.0f ? static_cast<int8_t>(Int8Encoder::encode(to_float(xr[c]), s)) : int8_t{0};
  }
}

/// q[r, idx[j]] = 0 for every row r and j < *count: what makes the quantizer's codes those of the reference,
/// which zeroes the outlier columns. One thread per row (there are few outlier columns).
__global__ void k_zero_columns(int8_t* __restrict__ q, int64_t t, int64_t k, const int32_t* __restrict__ idx,
                               const int32_t* __restrict__ count) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= t) return;
  const int cnt = *count;
  for (int j = 0; j < cnt; ++j) q[row * k + idx[j]] = 0;
}

// ---- epilogue ----------------------------------------------------------------------------------------------

/// The dequantized output element (see Int8Epilogue) of the product acc (int32; fp32 for E4M3 codes, which have
/// no outlier part); T = type of the output and of
/// the LLM.int8 input x. With outlier_q the codes of the outlier columns are still in the product: their integer
/// products are subtracted from acc first, exactly, which leaves the product of the zeroed codes.
template <typename T, typename Acc = int>
__device__ __forceinline__ float epilogue_value(Int8Epilogue ep, Acc acc, int64_t r, int64_t c, int64_t k) {
  float o = 0.0f;
  if constexpr (std::is_same_v<Acc, int>) {  // LLM.int8's outlier part exists for int8 products only
    if (ep.outlier_count != nullptr) {
      const int cnt = *ep.outlier_count;
      const T* xr = static_cast<const T*>(ep.outlier_x) + r * k;
      const int8_t* qr = ep.outlier_q != nullptr ? ep.outlier_q + r * k : nullptr;
      const int8_t* cb = ep.outlier_cb + c * k;
      const float scb = ep.outlier_scb[c];
      for (int j = 0; j < cnt; ++j) {
        const int col = ep.outlier_idx[j];
        if (qr != nullptr) acc -= static_cast<int>(qr[col]) * static_cast<int>(cb[col]);
        // fp16 operands, fp32 accumulation: what an fp16 matmul of the outlier columns computes.
        const float xv = __half2float(__float2half_rn(to_float(xr[col])));
        const float wv = __half2float(__float2half_rn(static_cast<float>(cb[col]) * scb / 127.0f));
        o = fmaf(xv, wv, o);
      }
    }
  }
  float v = static_cast<float>(acc) * ep.row_scale[r] * ep.col_scale[ep.col_scale_per_channel ? c : 0] * ep.alpha;
  if (ep.outlier_count != nullptr) v += o;
  if (ep.bias != nullptr) v += ep.bias[c];
  if (ep.bias_out_dtype != nullptr) v += to_float(static_cast<const T*>(ep.bias_out_dtype)[c]);
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
    y[i] = from_float<T>(epilogue_value<T>(ep, acc[i], r, c, k));
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
    yr[c + 0] = from_float<T>(epilogue_value<T>(ep, v.x, r, c + 0, k));
    yr[c + 1] = from_float<T>(epilogue_value<T>(ep, v.y, r, c + 1, k));
    yr[c + 2] = from_float<T>(epilogue_value<T>(ep, v.z, r, c + 2, k));
    yr[c + 3] = from_float<T>(epilogue_value<T>(ep, v.w, r, c + 3, k));
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
        const float v0 = epilogue_value<T>(ep, acc[i][j][2 * h], r, c, k);
        const float v1 = c + 1 < n ? epilogue_value<T>(ep, acc[i][j][2 * h + 1], r, c + 1, k) : 0.0f;
        store_pair<T>(y, r, c, n, v0, v1);
      }
    }
  }
}

/// Raises a kernel's dynamic shared memory limit to `bytes`, once per device and kernel (on the first, eager
/// call: not again inside a CUDA graph capture). `done` is the kernel's own per-device flag array. A refusal (more
/// than the device allows) is returned and cleared: left as the runtime's last error, the next unrelated CUDA call
/// would report it as its own (seen in the eighth session's NF4 experiment, docs/perf.md).
int opt_in_smem(const void* kernel, int bytes, bool (&done)[64]) {
  if (bytes <= 48 * 1024) return kLaunchOk;
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess) return static_cast<int>(e);
  if (dev >= 0 && dev < 64 && done[dev]) return kLaunchOk;
  e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return static_cast<int>(e);
  }
  if (dev >= 0 && dev < 64) done[dev] = true;
  return kLaunchOk;
}

/// Launches k_int8_gemm with configuration Cfg.
template <typename Cfg, typename T>
int launch_int8_gemm_cfg(const int8_t* xq, const int8_t* wq, int64_t m, int64_t n, int64_t k, const Int8Epilogue& ep,
                         T* y, bool vec, cudaStream_t stream) {
  if ((m + Cfg::kBm - 1) / Cfg::kBm > 65535 || (n + Cfg::kBn - 1) / Cfg::kBn > INT32_MAX) return kLaunchBadShape;
  static bool opted_in[64] = {};
  const int st = opt_in_smem(reinterpret_cast<const void*>(k_int8_gemm<Cfg, T>), Cfg::kSmemBytes, opted_in);
  if (st != kLaunchOk) return st;
  const dim3 grid(static_cast<unsigned>((n + Cfg::kBn - 1) / Cfg::kBn), static_cast<unsigned>((m + Cfg::kBm - 1) / Cfg::kBm));
  k_int8_gemm<Cfg, T><<<grid, Cfg::kThreads, Cfg::kSmemBytes, stream>>>(xq, wq, m, n, k, ep, y, vec);
  return detail::launch_result();
}

// ---- int8 GEMM on Hopper: wgmma fed by TMA --------------------------------------------------------------------
//
// The same fused product through sm_90's warpgroup MMA (wgmma.mma_async), which mma.sync cannot reach: on an
// H100/H200 mma.sync runs at about half the int8 tensor-core rate. A block is WG_M consumer warpgroups of 128
// threads, each owning 64 output rows x kBn columns, plus one producer warp. Both operands come from shared
// memory through matrix descriptors, so the products need no ldmatrix and no operand registers. k advances 128
// bytes a stage; one row of a stage is one line of wgmma's 128-byte swizzle (16-byte chunk c of row r stored at
// chunk c ^ (r % 8), 8 rows = one 1,024-byte atom).
// One thread of the producer warp asks the Tensor Memory Accelerator for each stage (two bulk tensor copies, the
// A rows and the B rows, written in that swizzle and zero-filled past the matrix edges), and per-stage mbarriers
// hand stages back and forth: `full[s]` completes when the stage's bytes have landed, `empty[s]` when every
// consumer warp has retired the wgmmas that read it. The consumers only wait, issue wgmmas and release, with one
// group of wgmmas in flight behind the next. (The first version filled the stages with cp.async from every
// thread and met at a block barrier each stage: 0.71-0.83x this kernel's speed, docs/perf.md.)
// Compiled for sm_90a only (wgmma is an arch-specific feature); other targets get an empty body, and the launcher
// takes this kernel only where the loaded binary is sm_90 code (int8_wgmma_available).
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define EVALSVC_INT8_WGMMA 1
#endif
// Outside sm_90a the helpers below are declared and never used: not worth a warning per target.
#pragma nv_diag_suppress 177

template <int WG_M, int STAGES, int MIN_BLOCKS, int BN = 128>
struct WgConfig {
  static constexpr int kBm = 64 * WG_M;
  static constexpr int kBn = BN;                    // one m64nBNk32 instruction per warpgroup and k step
  static constexpr int kAcc = BN / 2;               // its s32 accumulators per thread
  static constexpr int kBk = 128;                   // bytes of k per stage = one swizzle line = the TMA box width
  static constexpr int kConsumers = 128 * WG_M;     // the MMA warpgroups
  static constexpr int kThreads = kConsumers + 32;  // + the producer warp
  static constexpr int kStages = STAGES;
  static constexpr int kMinBlocks = MIN_BLOCKS;     // blocks per SM the registers and shared memory must allow
  static constexpr int kStageBytes = (kBm + kBn) * kBk;
  static constexpr int kSmemBytes = STAGES * kStageBytes + 1024;  // + slack to align the base to an atom
  // int32 row stride of the epilogue's staged tile. kBn + 8 (8 banks from one row to the next) keeps the
  // accumulators' 8-byte stores free of bank conflicts: the 4 rows of a half-warp cover all 32 banks once.
  // kBn + 4 cost a 2-way conflict on every store, and wg_store_tile's reads had another: without both fixes the
  // product alone at 32,768 tokens took 2-7% longer on an H200 (docs/perf.md).
  static constexpr int kCStride = kBn + 8;
  static_assert(STAGES >= 2, "one stage computing while the next loads");
  static_assert(BN == 64 || BN == 128, "the wgmma shapes below");
  static_assert(kBm * kCStride * 4 <= STAGES * kStageBytes, "the staged accumulator tile must fit in the stages");
};
// 128 x 128 tiles from three 128-byte stages (97 KB): two blocks per SM, so one block's prologue and epilogue
// overlap the other's products. Measured on an H200 against it (product alone, 32,768 tokens; docs/perf.md):
// 256 x 128 tiles (four consumer warpgroups, one block per SM) 0.91-0.92x as fast on the k = 768 shapes, 1.05x
// on 3072 x 768; 128 x 256 (64-byte stages) 0.71-0.87x; and, with the first per-element epilogue, six 64-byte
// stages 0.88-0.95x and one block per SM with six 128-byte stages 0.63-0.79x; later, a persistent ping-pong
// kernel (one resident block per SM, two warpgroups taking tiles in turn) 0.95-0.97x on the k = 768 shapes (1.06x
// on 3072 x 768), and pairs of blocks sharing A through TMA multicast 0.68-0.80x.
// 64 x 64 tiles (one consumer warpgroup, m64n64k32) when 128 x 128 tiles would leave SMs idle: at 128 tokens a
// product in a CUDA graph takes 3.9-4.0 us on the k = 768 shapes and 7.7 on 3072 x 768, against 4.6-4.7 and 8.4
// with 64 x 128 tiles, half as many blocks, each pulling twice the weight bytes through its SM; eight stages
// instead of four changed nothing. (Those alternatives were template parameters or kernels for the measurement;
// only the layout kept is left here.)
using WgLarge = WgConfig<2, 3, 2>;
using WgSmall = WgConfig<1, 4, 2, 64>;

/// Shared-memory matrix descriptor of a K-major operand whose rows are 128-byte swizzle lines: start address,
/// leading byte offset (unused for swizzled K-major; 1 by convention), stride byte offset 1,024 (from one
/// 8-row swizzle atom to the next), swizzle mode 1 (128 bytes) in bits 62-63.
__device__ __forceinline__ uint64_t wg_desc(uint32_t saddr) {
  return static_cast<uint64_t>((saddr & 0x3FFFF) >> 4) | (uint64_t{1} << 16) | (uint64_t{1024 >> 4} << 32) |
         (uint64_t{1} << 62);
}
__device__ __forceinline__ void wgmma_fence() {
#ifdef EVALSVC_INT8_WGMMA
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wgmma_commit() {
#ifdef EVALSVC_INT8_WGMMA
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void wgmma_wait() {
#ifdef EVALSVC_INT8_WGMMA
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}
/// Pins the accumulators: the compiler must not move reads or writes of them across this point (they are being
/// written asynchronously by wgmma between its issue and wgmma_wait).
template <int N>
__device__ __forceinline__ void fence_operands(int (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+r"(d[i])::"memory");
}
template <int N>
__device__ __forceinline__ void fence_operands(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
/// d (64 x 128 s32, this warpgroup's) += A (64 x 32 s8 at da) . B (128 x 32 s8 at db)^T.
__device__ __forceinline__ void wgmma_s8_m64n128k32(int (&d)[64], uint64_t da, uint64_t db) {
#ifdef EVALSVC_INT8_WGMMA
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k32.s32.s8.s8 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p;\n}\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]), "+r"(d[6]), "+r"(d[7]), "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]), "+r"(d[12]), "+r"(d[13]), "+r"(d[14]), "+r"(d[15]), "+r"(d[16]), "+r"(d[17]), "+r"(d[18]), "+r"(d[19]), "+r"(d[20]), "+r"(d[21]), "+r"(d[22]), "+r"(d[23]), "+r"(d[24]), "+r"(d[25]), "+r"(d[26]), "+r"(d[27]), "+r"(d[28]), "+r"(d[29]), "+r"(d[30]), "+r"(d[31]), "+r"(d[32]), "+r"(d[33]), "+r"(d[34]), "+r"(d[35]), "+r"(d[36]), "+r"(d[37]), "+r"(d[38]), "+r"(d[39]), "+r"(d[40]), "+r"(d[41]), "+r"(d[42]), "+r"(d[43]), "+r"(d[44]), "+r"(d[45]), "+r"(d[46]), "+r"(d[47]), "+r"(d[48]), "+r"(d[49]), "+r"(d[50]), "+r"(d[51]), "+r"(d[52]), "+r"(d[53]), "+r"(d[54]), "+r"(d[55]), "+r"(d[56]), "+r"(d[57]), "+r"(d[58]), "+r"(d[59]), "+r"(d[60]), "+r"(d[61]), "+r"(d[62]), "+r"(d[63])
      : "l"(da), "l"(db), "r"(1));
#endif
}

/// d (64 x 64 s32) += A (64 x 32 s8 at da) . B (64 x 32 s8 at db)^T.
__device__ __forceinline__ void wgmma_s8_m64n64k32(int (&d)[32], uint64_t da, uint64_t db) {
#ifdef EVALSVC_INT8_WGMMA
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k32.s32.s8.s8 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p;\n}\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]), "+r"(d[6]), "+r"(d[7]), "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]), "+r"(d[12]), "+r"(d[13]), "+r"(d[14]), "+r"(d[15]), "+r"(d[16]), "+r"(d[17]), "+r"(d[18]), "+r"(d[19]), "+r"(d[20]), "+r"(d[21]), "+r"(d[22]), "+r"(d[23]), "+r"(d[24]), "+r"(d[25]), "+r"(d[26]), "+r"(d[27]), "+r"(d[28]), "+r"(d[29]), "+r"(d[30]), "+r"(d[31])
      : "l"(da), "l"(db), "r"(1));
#endif
}
__device__ __forceinline__ void wgmma_s8(int (&d)[64], uint64_t da, uint64_t db) { wgmma_s8_m64n128k32(d, da, db); }
__device__ __forceinline__ void wgmma_s8(int (&d)[32], uint64_t da, uint64_t db) { wgmma_s8_m64n64k32(d, da, db); }

/// d (64 x 64 f32) = (accumulate ? d : 0) + A (64 x 32 E4M3 at da) . B (64 x 32 E4M3 at db)^T.
__device__ __forceinline__ void wgmma_e4m3_m64n64k32(float (&d)[32], uint64_t da, uint64_t db, int accumulate) {
#ifdef EVALSVC_INT8_WGMMA
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k32.f32.e4m3.e4m3 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "l"(da), "l"(db), "r"(accumulate));
#endif
}

// The epilogue goes through shared memory (free by then: every stage has been consumed). Straight from the
// registers it needs every accumulator index at compile time, so it unrolls into one copy of the epilogue per
// accumulator, ~100 KB of code the instruction cache re-fetches for every block: that cost ~25 us a block,
// whatever k (first measurement, docs/perf.md). Staged, it is one short loop, and each thread writes 16
// consecutive bytes of a row instead of 4.

/// Writes warpgroup (tid / 128)'s accumulators (int32, or fp32 for E4M3) into the tile cs [kBm][kCStride]. Accumulator layout of
/// m64nN: warp w of the warpgroup holds rows 16w..16w+15, and within the warp each n8 slice is laid out as
/// mma.sync's m16n8 (registers 4j, 4j+1: row lane / 4, columns 8j + 2 (lane % 4) + {0, 1}; 4j + 2, 4j + 3: row + 8).
template <typename Cfg, typename Acc>
__device__ __forceinline__ void wg_stage_accumulators(const Acc (&acc)[Cfg::kAcc], Acc* cs, int tid) {
  const int lane = tid & 31;
  const int row = (tid >> 7) * 64 + ((tid >> 5) & 3) * 16 + (lane >> 2);
  const int col = (lane & 3) * 2;
#pragma unroll
  for (int jj = 0; jj < Cfg::kBn / 8; ++jj) {
    const int c = jj * 8 + col;
    using Acc2 = std::conditional_t<std::is_same_v<Acc, int>, int2, float2>;
    *reinterpret_cast<Acc2*>(cs + row * Cfg::kCStride + c) = Acc2{acc[jj * 4], acc[jj * 4 + 1]};
    *reinterpret_cast<Acc2*>(cs + (row + 8) * Cfg::kCStride + c) = Acc2{acc[jj * 4 + 2], acc[jj * 4 + 3]};
  }
}

/// y[m0 .., n0 ..] = epilogue(the staged tile cs), 8 outputs a thread per trip (threads tid of NTHREADS).
/// Where n % 8 == 0 each thread keeps one group of 8 columns for the whole tile, so their scales, bias and
/// LLM.int8 outlier scales are read once, and a trip costs a row scale, two shared loads, ~4 flops an output
/// (plus the outlier columns' products) and one 16-byte store. The general per-element epilogue_value, which the
/// other n take, cost ~5 us a 128 x 128 tile, about as much as the products of a k = 768 tile (docs/perf.md).
/// The arithmetic is epilogue_value's, operation for operation, so both give the same bits.
/// The tile's row scales, column scales and bias, read from global memory by the consumer threads before their
/// main loop (one value each, its latency hidden behind the products) and handed to the epilogue through shared
/// memory. Read inside the epilogue, where each trip of the (not unrolled) row loop waited on its row scale's
/// load, they cost a W8A8 projection at 128 tokens 1.6-1.9 us of its 8.4-15.1 us a call in a CUDA graph, and
/// the product alone at 32,768 tokens ran at 577-1,007 TOP/s against 686-1,132 now (H200, docs/perf.md).
template <typename Cfg>
struct WgTileParams {
  float row_scale[Cfg::kBm];
  float col_scale[Cfg::kBn];
  float bias[Cfg::kBn];
  float outlier_scb[Cfg::kBn];  // LLM.int8: the weight rows' SCB, for the outlier columns' fp16 product
  int outliers;                 // LLM.int8: the number of outlier columns (the quantizer's output)
};

/// The staged accumulator whose bits are `bits` (an int32 sum of int8 codes, or an fp32 sum of E4M3 ones).
template <typename Acc>
__device__ __forceinline__ Acc staged_acc(int bits) {
  if constexpr (std::is_same_v<Acc, int>) return bits;
  else return __int_as_float(bits);
}

/// Barrier among the consumer warpgroups only (named barrier 1): the producer warp has left by then.
template <int THREADS>
__device__ __forceinline__ void consumers_sync() {
  asm volatile("bar.sync 1, %0;\n" ::"n"(THREADS) : "memory");
}

/// d += a (16 x 16 f16, row) . b (16 x 8 f16, col), f32 accumulators: m16n8k16's fragments (a0-a3: rows lane / 4
/// and + 8, k 2 (lane % 4) and + 8; b0-b1: k 2 (lane % 4) and + 8, column lane / 4).
__device__ __forceinline__ void mma_f16_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/// wg_store_tile for a tile of LLM.int8's product when the quantizer found outlier columns (n % 8 == 0, 16-byte
/// aligned y). The outlier part is two small products on the tensor cores (mma.sync), over chunks of kChunk
/// outlier columns staged in the stage memory past the staged accumulators:
///  1. the codes of the outlier columns are still in the product (the quantizer does not zero them): their integer
///     product, (-q) . cb over s8, is added into the staged int32 accumulators, exactly;
///  2. the accumulators become fp32, acc * row scale * column scale * alpha, and the fp16 product of the outlier
///     columns, fp16(x) . fp16(cb * scb / 127) with fp32 accumulation, is added onto them in place.
/// Then bias and GELU as wg_store_tile. The products are exact and their sums fp32, so the result is the
/// reference's up to fp32 rounding order (within an fp16 step of the other product paths, which add the outlier
/// columns one at a time in epilogue_value). Each warp owns a 32 x (kBn / warps across) region of the tile in the
/// m16n8 fragment layout; its sums live in the staged tile, so nothing is held in registers from chunk to chunk.
/// On CUDA cores (one fma a column and element, staged per chunk as here) the outlier part made LLM.int8 at 32,768
/// x 768 -> 2304 take 0.87 / 2.70 / 9.07 ms with 8 / 32 / 128 outlier columns; this way 0.36 / 0.39 / 0.86 ms,
/// against W8A8's 0.17 (H200, docs/perf.md).
template <typename Cfg, int NTHREADS, typename T>
__device__ __forceinline__ void wg_store_tile_outliers(int* cs, const WgTileParams<Cfg>& tp, int tid, int64_t m0,
                                                    int64_t n0, int64_t m, int64_t n, int64_t k,
                                                    const Int8Epilogue& ep, T* __restrict__ y) {
  constexpr int kChunk = 32;                      // outlier columns a chunk: one k32 s8 step, two k16 f16 steps
  constexpr int kWarps = NTHREADS / 32;
  constexpr int kWarpsM = Cfg::kBm / 32;          // warps down the tile, 32 rows (two m16 fragments) each
  static_assert(kWarps % kWarpsM == 0, "whole columns of warps");
  constexpr int kWarpN = Cfg::kBn / (kWarps / kWarpsM);
  constexpr int kNt = kWarpN / 8;                 // n8 fragments a warp
  static_assert(kWarpN % 8 == 0 && kNt >= 1, "whole n8 fragments");
  // Staged per chunk, past the accumulators: codes [kBm + kBn][32] s8 (-q of the tile's rows, then cb of its
  // columns) and values [kBm + kBn][kHStride] fp16 (x, then the dequantized weight). Row strides and the codes'
  // swizzle (16-byte halves swapped in rows 4-7 of every 8) put the 8 rows a fragment load touches (lane / 4) on
  // distinct banks.
  constexpr int kHStride = 40;  // halves: 20 words
  constexpr int kFree = Cfg::kStages * Cfg::kStageBytes - Cfg::kBm * Cfg::kCStride * 4;
  static_assert((Cfg::kBm + Cfg::kBn) * (kChunk + kHStride * 2) <= kFree, "a staged chunk must fit past the tile");
  int8_t* const codes = reinterpret_cast<int8_t*>(cs + Cfg::kBm * Cfg::kCStride);
  __half* const vals = reinterpret_cast<__half*>(codes + (Cfg::kBm + Cfg::kBn) * kChunk);
  auto code_at = [&](int row, int byte) { return codes + row * kChunk + (byte ^ (((row >> 2) & 1) << 4)); };
  float* const fs = reinterpret_cast<float*>(cs);  // the tile as fp32 once scaled

  const int rows = static_cast<int>(m - m0 < Cfg::kBm ? m - m0 : Cfg::kBm);
  const int outliers = tp.outliers;
  const T* x = static_cast<const T*>(ep.outlier_x);
  const int lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int wr = (warp % kWarpsM) * 32;  // the warp's first row and column in the tile
  const int wc = (warp / kWarpsM) * kWarpN;

  // Stages chunk j0's codes and/or values. Lane j takes outlier column j0 + j, a warp one staged row at a time
  // (the tile's rows of x, then its output columns' weight rows), a round of rows' loads issued before any is
  // stored. (27f0b81's gathers, one load after another and the values in a second gather, made LLM.int8 with 8
  // outlier columns at 32,768 x 768 -> 2304 take 0.63 ms, against 0.36 ms this way.) Lanes past the chunk's last
  // column skip the loads and stage zeros in a loop of their own: folding them into the loads' predicates (one
  // path, review of this session) ran 1-9% slower with 8 outlier columns (H200, same call).
  static_assert(Cfg::kBn % kWarps == 0 && Cfg::kBm % kWarps == 0, "whole rows a warp");
  constexpr int kXSlots = Cfg::kBm / kWarps, kWSlots = Cfg::kBn / kWarps;
  auto stage = [&](int j0, bool with_codes, bool with_values) {
    const int jn = outliers - j0 < kChunk ? outliers - j0 : kChunk;
    const int oc = lane < jn ? ep.outlier_idx[j0 + lane] : -1;
    // The tile's rows of x first, then its columns' weight rows, kRound rows' loads in flight at a time (all of a
    // thread's at once made the 128 x 128 tiles' kernel spill).
    constexpr int kRound = 8;
    static_assert(kXSlots % kRound == 0 && kWSlots % kRound == 0, "whole rounds");
    const int64_t step = static_cast<int64_t>(kWarps) * k;  // from one of a thread's rows to its next
    if (oc >= 0) {
#pragma unroll 1
      for (int i0 = 0; i0 < kXSlots; i0 += kRound) {
        const int8_t* qp = ep.outlier_q + (m0 + warp + i0 * kWarps) * k + oc;
        const T* xp = x + (m0 + warp + i0 * kWarps) * k + oc;
        uint32_t v[kRound];  // the code's byte, and the value's fp16 bits above it
#pragma unroll
        for (int i = 0; i < kRound; ++i) {
          int code = 0;
          float value = 0.0f;
          if (warp + (i0 + i) * kWarps < rows) {
            if (with_codes) code = -qp[i * step];
            if (with_values) value = to_float(xp[i * step]);
          }
          v[i] = (code & 0xFFu) | (static_cast<uint32_t>(__half_as_ushort(__float2half_rn(value))) << 16);
        }
#pragma unroll
        for (int i = 0; i < kRound; ++i) {
          const int r = warp + (i0 + i) * kWarps;
          if (with_codes) *code_at(r, lane) = static_cast<int8_t>(v[i] & 0xFFu);
          if (with_values) vals[r * kHStride + lane] = __ushort_as_half(static_cast<unsigned short>(v[i] >> 16));
        }
      }
#pragma unroll 1
      for (int i0 = 0; i0 < kWSlots; i0 += kRound) {
        const int8_t* cbp = ep.outlier_cb + (n0 + warp + i0 * kWarps) * k + oc;
        int8_t cb[kRound];
#pragma unroll
        for (int i = 0; i < kRound; ++i) cb[i] = n0 + warp + (i0 + i) * kWarps < n ? cbp[i * step] : int8_t{0};
#pragma unroll
        for (int i = 0; i < kRound; ++i) {
          const int c = warp + (i0 + i) * kWarps;
          if (with_codes) *code_at(Cfg::kBm + c, lane) = cb[i];
          if (with_values) {
            vals[(Cfg::kBm + c) * kHStride + lane] =
                __float2half_rn(static_cast<float>(cb[i]) * tp.outlier_scb[c] / 127.0f);
          }
        }
      }
    }
    if (oc < 0) {  // lanes past the chunk's last column: zeros, which add nothing
#pragma unroll 4
      for (int r = warp; r < Cfg::kBm + Cfg::kBn; r += kWarps) {
        if (with_codes) *code_at(r, lane) = 0;
        if (with_values) vals[r * kHStride + lane] = __float2half_rn(0.0f);
      }
    }
  };
  // acc += (-q) . cb over the staged chunk: exact integers, into the staged int32 tile.
  auto take_out_codes = [&]() {
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
      const int r = wr + mt * 16 + g;
      const uint32_t a[4] = {*reinterpret_cast<const uint32_t*>(code_at(r, 4 * t)),
                             *reinterpret_cast<const uint32_t*>(code_at(r + 8, 4 * t)),
                             *reinterpret_cast<const uint32_t*>(code_at(r, 16 + 4 * t)),
                             *reinterpret_cast<const uint32_t*>(code_at(r + 8, 16 + 4 * t))};
#pragma unroll
      for (int nt = 0; nt < kNt; ++nt) {
        const int c = wc + nt * 8;
        const int wrow = Cfg::kBm + c + g;
        const uint32_t b0 = *reinterpret_cast<const uint32_t*>(code_at(wrow, 4 * t));
        const uint32_t b1 = *reinterpret_cast<const uint32_t*>(code_at(wrow, 16 + 4 * t));
        int2* p0 = reinterpret_cast<int2*>(cs + r * Cfg::kCStride + c + 2 * t);
        int2* p1 = reinterpret_cast<int2*>(cs + (r + 8) * Cfg::kCStride + c + 2 * t);
        const int2 v0 = *p0, v1 = *p1;
        int d[4] = {v0.x, v0.y, v1.x, v1.y};
        mma_s8_16832(d, a, b0, b1);
        *p0 = make_int2(d[0], d[1]);
        *p1 = make_int2(d[2], d[3]);
      }
    }
  };
  // v += fp16(x) . fp16(w) over the staged chunk; first: the tile still holds int32 accumulators, scaled here as
  // epilogue_value scales them, operation for operation.
  auto add_values = [&](bool first) {
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
      const int r = wr + mt * 16 + g;
      uint32_t a[2][4];
#pragma unroll
      for (int ks = 0; ks < 2; ++ks) {
        const __half* lo = vals + r * kHStride + ks * 16 + 2 * t;
        const __half* hi = lo + 8 * kHStride;
        a[ks][0] = *reinterpret_cast<const uint32_t*>(lo);
        a[ks][1] = *reinterpret_cast<const uint32_t*>(hi);
        a[ks][2] = *reinterpret_cast<const uint32_t*>(lo + 8);
        a[ks][3] = *reinterpret_cast<const uint32_t*>(hi + 8);
      }
      const float rs0 = tp.row_scale[r], rs1 = tp.row_scale[r + 8];
#pragma unroll
      for (int nt = 0; nt < kNt; ++nt) {
        const int c = wc + nt * 8;
        float2* p0 = reinterpret_cast<float2*>(fs + r * Cfg::kCStride + c + 2 * t);
        float2* p1 = reinterpret_cast<float2*>(fs + (r + 8) * Cfg::kCStride + c + 2 * t);
        float d[4];
        if (first) {
          const int2 v0 = *reinterpret_cast<const int2*>(p0), v1 = *reinterpret_cast<const int2*>(p1);
          const float c0 = tp.col_scale[c + 2 * t], c1 = tp.col_scale[c + 2 * t + 1];
          d[0] = static_cast<float>(v0.x) * rs0 * c0 * ep.alpha;
          d[1] = static_cast<float>(v0.y) * rs0 * c1 * ep.alpha;
          d[2] = static_cast<float>(v1.x) * rs1 * c0 * ep.alpha;
          d[3] = static_cast<float>(v1.y) * rs1 * c1 * ep.alpha;
        } else {
          const float2 v0 = *p0, v1 = *p1;
          d[0] = v0.x, d[1] = v0.y, d[2] = v1.x, d[3] = v1.y;
        }
        const __half* wlo = vals + (Cfg::kBm + c + g) * kHStride + 2 * t;
#pragma unroll
        for (int ks = 0; ks < 2; ++ks) {
          mma_f16_16816(d, a[ks], *reinterpret_cast<const uint32_t*>(wlo + ks * 16),
                        *reinterpret_cast<const uint32_t*>(wlo + ks * 16 + 8));
        }
        *p0 = make_float2(d[0], d[1]);
        *p1 = make_float2(d[2], d[3]);
      }
    }
  };

  // Without codes (outlier_q null) the outlier columns' codes were zeroed before the product: nothing to take out.
  // (The kernel's barrier after staging the accumulators lets the first chunk be staged straight away.)
  const bool codes_in = ep.outlier_q != nullptr;
  if (outliers <= kChunk) {
    // One chunk, the usual case: one gather for both parts. A thread's fragments are the same elements in both,
    // so the scaling needs no barrier after the codes are taken out.
    stage(0, codes_in, true);
    consumers_sync<NTHREADS>();
    if (codes_in) take_out_codes();
    add_values(true);
  } else {
    // Every chunk's codes out of the int32 sums before any is scaled, then the values.
    for (int j0 = 0; codes_in && j0 < outliers; j0 += kChunk) {
      if (j0 > 0) consumers_sync<NTHREADS>();  // the last chunk has been read
      stage(j0, true, false);
      consumers_sync<NTHREADS>();
      take_out_codes();
    }
    for (int j0 = 0; j0 < outliers; j0 += kChunk) {
      consumers_sync<NTHREADS>();
      stage(j0, false, true);
      consumers_sync<NTHREADS>();
      add_values(j0 == 0);
    }
  }
  consumers_sync<NTHREADS>();

  // Bias and GELU, 8 adjacent columns a thread as in wg_store_tile.
  constexpr int kGroups = Cfg::kBn / 8;
  const int lc = (tid % kGroups) * 8;
  const int64_t c = n0 + lc;
  if (c >= n) return;  // n % 8 == 0: a group is wholly inside or wholly outside
  const bool has_bias = ep.bias != nullptr || ep.bias_out_dtype != nullptr;  // both staged in tp.bias
  float bias[8];
#pragma unroll
  for (int e = 0; e < 8; ++e) bias[e] = tp.bias[lc + e];
#pragma unroll 1
  for (int lr = tid / kGroups; lr < rows; lr += NTHREADS / kGroups) {
    const float4* src = reinterpret_cast<const float4*>(fs + lr * Cfg::kCStride + lc);
    const float4 a0 = src[0];
    const float4 a1 = src[1];
    float v[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      if (has_bias) v[e] += bias[e];
      if (ep.gelu_tanh) v[e] = detail::gelu_tanh(to_float(from_float<T>(v[e])));
    }
    detail::store8(y + (m0 + lr) * n + c, v);
  }
}

template <typename Cfg, int NTHREADS, bool kOutliers, typename T, typename Acc>
__device__ __forceinline__ void wg_store_tile(Acc* staged, const WgTileParams<Cfg>& tp, int tid, int64_t m0,
                                              int64_t n0, int64_t m, int64_t n, int64_t k, const Int8Epilogue& ep,
                                              T* __restrict__ y) {
  constexpr int kGroups = Cfg::kBn / 8;
  static_assert(NTHREADS % kGroups == 0, "every thread keeps one column group");
  constexpr bool kInt = std::is_same_v<Acc, int>;
  const int* cs = reinterpret_cast<const int*>(staged);  // read as raw 32-bit words, converted by staged_acc
  const bool vec_out = n % 8 == 0 && reinterpret_cast<uintptr_t>(y) % 16 == 0;
  if constexpr (kInt && kOutliers) {
    // tp.outliers is the block's one value: every consumer thread takes the same branch (it has barriers).
    if (vec_out && ep.outlier_count != nullptr && tp.outliers > 0) {
      wg_store_tile_outliers<Cfg, NTHREADS, T>(staged, tp, tid, m0, n0, m, n, k, ep, y);
      return;
    }
  }
  if (vec_out) {
    const int lc = (tid % kGroups) * 8;
    const int64_t c = n0 + lc;
    if (c >= n) return;  // n % 8 == 0: a group is wholly inside or wholly outside
    const bool has_bias = ep.bias != nullptr || ep.bias_out_dtype != nullptr;  // both staged in tp.bias
    const bool has_outliers = kInt && kOutliers && ep.outlier_count != nullptr;  // and none this call (above)
    float col[8], bias[8] = {};
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      col[e] = tp.col_scale[lc + e];
      bias[e] = tp.bias[lc + e];
    }
    const int rows = static_cast<int>(m - m0 < Cfg::kBm ? m - m0 : Cfg::kBm);
#pragma unroll 1
    for (int lr = tid / kGroups; lr < rows; lr += NTHREADS / kGroups) {
      const int64_t r = m0 + lr;
      const float rs = tp.row_scale[lr];
      const int4* src = reinterpret_cast<const int4*>(cs + lr * Cfg::kCStride + lc);
      // A quarter-warp (8 threads, one 16-byte load each per instruction) reads one row's groups 0-7 or 8-15:
      // first chunks would be 0, 2, .., 14, of which chunks c and c + 8 share banks. Threads 4-7 of the eight
      // take their second chunk first, so one instruction reads chunks 0, 2, 4, 6, 9, 11, 13, 15: every bank once.
      const int sel = (tid >> 2) & 1;
      const int4 first = src[sel];
      const int4 second = src[sel ^ 1];
      const int4 a0 = sel ? second : first;
      const int4 a1 = sel ? first : second;
      const int a[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
      float v[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        v[e] = static_cast<float>(staged_acc<Acc>(a[e])) * rs * col[e] * ep.alpha;
        if (has_outliers) v[e] += 0.0f;  // no outlier column this call: their part's zero, as epilogue_value adds it
      }
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        if (has_bias) v[e] += bias[e];
        if (ep.gelu_tanh) v[e] = detail::gelu_tanh(to_float(from_float<T>(v[e])));
      }
      detail::store8(y + r * n + c, v);
    }
    return;
  }
#pragma unroll 1
  for (int i = tid; i < Cfg::kBm * kGroups; i += NTHREADS) {
    const int lr = i / kGroups;
    const int lc = (i % kGroups) * 8;
    const int64_t r = m0 + lr;
    const int64_t c = n0 + lc;
    if (r >= m || c >= n) continue;
    const int4* src = reinterpret_cast<const int4*>(cs + lr * Cfg::kCStride + lc);
    const int4 a0 = src[0];
    const int4 a1 = src[1];
    const int a[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      if (c + e < n) {
        y[r * n + c + e] = from_float<T>(epilogue_value<T, Acc>(ep, staged_acc<Acc>(a[e]), r, c + e, k));
      }
    }
  }
}

__device__ __forceinline__ void mbar_init(uint32_t bar, int count) {
#ifdef EVALSVC_INT8_WGMMA
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
#endif
}
/// Makes the initialised barriers visible to the async proxy (the TMA unit completes transactions on them).
__device__ __forceinline__ void mbar_fence_init() {
#ifdef EVALSVC_INT8_WGMMA
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}
/// This thread's arrival, announcing `bytes` of asynchronous copies that must land before the phase completes.
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
#ifdef EVALSVC_INT8_WGMMA
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
#endif
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
#ifdef EVALSVC_INT8_WGMMA
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
#endif
}
/// Spins until the barrier's phase of parity `parity` has completed.
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
#ifdef EVALSVC_INT8_WGMMA
  uint32_t done = 0;
  do {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  } while (done == 0);
#endif
}
/// Box (x = byte offset along k, y = row) of the 2-d tensor map into shared memory at dst, completing on bar.
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const CUtensorMap* map, int x, int y, uint32_t bar) {
#ifdef EVALSVC_INT8_WGMMA
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(x), "r"(y), "r"(bar)
      : "memory");
#endif
}

/// The product of 8-bit codes: int8 (s32 accumulators) or E4M3 (fp32 accumulators, 64 x 64 tiles only: their
/// promotion below needs three accumulator sets, which the 128-column tiles' registers cannot hold). kOutliers:
/// LLM.int8's, whose epilogue adds the outlier part (wg_store_tile_outliers); W8A8's kernels are compiled without.
template <typename Cfg, typename T, ActCode kCode = ActCode::kInt8, bool kOutliers = false>
__global__ void __launch_bounds__(Cfg::kThreads, Cfg::kMinBlocks)
    k_gemm8_wgmma(const __grid_constant__ CUtensorMap map_a, const __grid_constant__ CUtensorMap map_b,
                  int64_t m, int64_t n, int64_t k, Int8Epilogue ep, T* __restrict__ y) {
  constexpr bool kFp8 = kCode == ActCode::kFp8E4M3;
  static_assert(!kFp8 || Cfg::kBn == 64, "E4M3 products take the 64 x 64 tiles");
  using Acc = std::conditional_t<kFp8, float, int>;
#ifdef EVALSVC_INT8_WGMMA
  extern __shared__ int8_t wg_smem[];
  __shared__ uint64_t full[Cfg::kStages], empty[Cfg::kStages];
  __shared__ WgTileParams<Cfg> tile;
  const uint32_t base = (smem_addr(wg_smem) + 1023u) & ~1023u;  // swizzle atoms are 1,024-byte aligned
  const int n0 = static_cast<int>(blockIdx.x) * Cfg::kBn;
  const int m0 = static_cast<int>(blockIdx.y) * Cfg::kBm;
  const int ktiles = static_cast<int>((k + Cfg::kBk - 1) / Cfg::kBk);
  auto stage_a = [&](int s) { return base + static_cast<uint32_t>(s * Cfg::kStageBytes); };
  auto stage_b = [&](int s) { return stage_a(s) + static_cast<uint32_t>(Cfg::kBm * Cfg::kBk); };
  auto full_bar = [&](int s) { return smem_addr(&full[s]); };
  auto empty_bar = [&](int s) { return smem_addr(&empty[s]); };

  if (threadIdx.x == 0) {
    for (int s = 0; s < Cfg::kStages; ++s) {
      mbar_init(full_bar(s), 1);                       // the producer's arrive.expect_tx; then the bytes
      mbar_init(empty_bar(s), Cfg::kConsumers / 32);   // one arrival per consumer warp
    }
    mbar_fence_init();
  }
  __syncthreads();

  if (threadIdx.x >= Cfg::kConsumers) {  // the producer warp: one thread issues every copy
    if (threadIdx.x == Cfg::kConsumers) {
      // Fetch both tensor maps into the TMA unit's cache now rather than at the first copy.
      asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(&map_a)) : "memory");
      asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(&map_b)) : "memory");
      // The first stages' weight tiles are no other kernel's output: under a programmatic launch they load
      // while the kernel before (the quantizer of A) is still finishing; A's tiles only after pdl_wait.
      const int first = ktiles < Cfg::kStages ? ktiles : Cfg::kStages;
      for (int kt = 0; kt < first; ++kt) {
        mbar_arrive_expect_tx(full_bar(kt), Cfg::kStageBytes);  // zero-filled bytes past the edges count too
        tma_load_2d(stage_b(kt), &map_b, kt * Cfg::kBk, n0, full_bar(kt));
      }
      detail::pdl_wait();
      detail::pdl_launch_dependents();
      for (int kt = 0; kt < first; ++kt) tma_load_2d(stage_a(kt), &map_a, kt * Cfg::kBk, m0, full_bar(kt));
      for (int kt = first; kt < ktiles; ++kt) {
        const int s = kt % Cfg::kStages;
        // Stage s last held tile kt - kStages: its release is phase (kt / kStages - 1) of empty[s].
        mbar_wait(empty_bar(s), static_cast<uint32_t>((kt / Cfg::kStages - 1) & 1));
        mbar_arrive_expect_tx(full_bar(s), Cfg::kStageBytes);
        tma_load_2d(stage_a(s), &map_a, kt * Cfg::kBk, m0, full_bar(s));
        tma_load_2d(stage_b(s), &map_b, kt * Cfg::kBk, n0, full_bar(s));
      }
    }
    return;
  }

  // This thread's share of the epilogue's parameters (WgTileParams), loaded now and used after the main loop:
  // the weight's scales and bias before pdl_wait, the row scales and LLM.int8's outlier count (the quantizer's
  // output) after it. (LLM.int8's SCB and count, read inside the epilogue, put a global load's latency between
  // the main loop and the first store of every product.)
  const int tid = threadIdx.x;
  const bool my_col = tid < Cfg::kBn && n0 + tid < n;
  const bool has_outliers = kOutliers && !kFp8 && ep.outlier_count != nullptr;
  const float my_col_scale = my_col ? ep.col_scale[ep.col_scale_per_channel ? n0 + tid : 0] : 0.0f;
  float my_bias = 0.0f;
  if (my_col && ep.bias != nullptr) my_bias = ep.bias[n0 + tid];
  if (my_col && ep.bias_out_dtype != nullptr) my_bias = to_float(static_cast<const T*>(ep.bias_out_dtype)[n0 + tid]);
  const float my_scb = my_col && has_outliers ? ep.outlier_scb[n0 + tid] : 0.0f;
  detail::pdl_wait();
  detail::pdl_launch_dependents();
  const float my_row_scale = tid < Cfg::kBm && m0 + tid < m ? ep.row_scale[m0 + tid] : 0.0f;
  const int my_outliers = tid == 0 && has_outliers ? *ep.outlier_count : 0;

  const int wg = threadIdx.x >> 7;
  Acc acc[Cfg::kAcc];
#pragma unroll
  for (int e = 0; e < Cfg::kAcc; ++e) acc[e] = 0;
  fence_operands(acc);
  for (int kt = 0; kt < ktiles; ++kt) {
    const int s = kt % Cfg::kStages;
    mbar_wait(full_bar(s), static_cast<uint32_t>((kt / Cfg::kStages) & 1));
    const uint32_t a = stage_a(s) + static_cast<uint32_t>(wg * 64 * Cfg::kBk);
    const uint32_t b = stage_b(s);
    wgmma_fence();
    // Within a swizzle line, stepping k by 32 bytes moves the start address; the hardware applies the XOR.
    if constexpr (kFp8) {
      // Each 128-deep k tile's sum goes to a partial set of its own (scale-d 0 on its first instruction), added
      // into acc in fp32 once the tile has retired: the tensor cores keep fewer mantissa bits than fp32 in their
      // own accumulation, so summing all of k there would round more than cuBLASLt's default (and the CPU
      // reference's) fp32. The wait is for the tile just issued (wait 0, not 1 as below): with a second partial
      // set alternating, ptxas cannot tell the sets apart and serializes every wgmma of the loop instead (C7514).
      float part[Cfg::kAcc];
#pragma unroll
      for (int ks = 0; ks < Cfg::kBk / 32; ++ks) wgmma_e4m3_m64n64k32(part, wg_desc(a + ks * 32), wg_desc(b + ks * 32), ks);
      wgmma_commit();
      wgmma_wait<0>();
      fence_operands(part);
      if ((threadIdx.x & 31) == 0) mbar_arrive(empty_bar(s));
#pragma unroll
      for (int e = 0; e < Cfg::kAcc; ++e) acc[e] += part[e];
    } else {
#pragma unroll
      for (int ks = 0; ks < Cfg::kBk / 32; ++ks) wgmma_s8(acc, wg_desc(a + ks * 32), wg_desc(b + ks * 32));
      wgmma_commit();
      wgmma_wait<1>();  // tile kt - 1 retired (tile kt may still run): its stage goes back to the producer
      if (kt > 0 && (threadIdx.x & 31) == 0) mbar_arrive(empty_bar((kt - 1) % Cfg::kStages));
    }
  }
  wgmma_wait<0>();
  fence_operands(acc);

  // Every copy has landed (each full phase was waited for) and both warpgroups are past their last wgmma.
  consumers_sync<Cfg::kConsumers>();
  Acc* cs = reinterpret_cast<Acc*>(wg_smem + (base - smem_addr(wg_smem)));
  wg_stage_accumulators<Cfg>(acc, cs, threadIdx.x);
  if (tid < Cfg::kBm) tile.row_scale[tid] = my_row_scale;
  if (tid < Cfg::kBn) {
    tile.col_scale[tid] = my_col_scale;
    tile.bias[tid] = my_bias;
    tile.outlier_scb[tid] = my_scb;
  }
  if (tid == 0) tile.outliers = my_outliers;
  consumers_sync<Cfg::kConsumers>();
  wg_store_tile<Cfg, Cfg::kConsumers, kOutliers>(cs, tile, threadIdx.x, m0, n0, m, n, k, ep, y);
#else
  __trap();  // not sm_90a code: int8_wgmma_available() keeps the launcher from getting here
#endif
}
#pragma nv_diag_default 177

/// cuTensorMapEncodeTiled, a driver API function, found through the runtime (qbench links only cudart).
using EncodeTiledFn = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                   const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                   CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
EncodeTiledFn encode_tiled() {
  static const EncodeTiledFn fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult found{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &found) !=
            cudaSuccess ||
        found != cudaDriverEntryPointSuccess) {
      return static_cast<EncodeTiledFn>(nullptr);
    }
    return reinterpret_cast<EncodeTiledFn>(p);
  }();
  return fn;
}

/// Tensor map of the row-major matrix g [rows, k] of 8-bit codes read in boxes of box_rows x 128 bytes, in wgmma's
/// 128-byte swizzle; reads past the edges give zeros. Needs k % 16 == 0 and g 16-byte aligned.
bool code_tensor_map(CUtensorMap* map, const void* g, int64_t rows, int64_t k, int box_rows) {
  const EncodeTiledFn encode = encode_tiled();
  if (encode == nullptr) return false;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(k), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(k)};  // bytes from one row to the next
  const cuuint32_t box[2] = {128, static_cast<cuuint32_t>(box_rows)};
  const cuuint32_t steps[2] = {1, 1};
  return encode(map, CU_TENSOR_MAP_DATA_TYPE_UINT8, 2, const_cast<void*>(g), dims, strides, box, steps,
                CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

template <typename Cfg, typename T, ActCode kCode = ActCode::kInt8, bool kOutliers = false>
int launch_gemm8_wgmma_cfg(const void* xq, const void* wq, int64_t m, int64_t n, int64_t k, const Int8Epilogue& ep,
                           T* y, cudaStream_t stream) {
  // TMA coordinates are 32-bit: rows and k must fit (GPT-2's are far inside).
  if ((m + Cfg::kBm - 1) / Cfg::kBm > 65535 || n > INT32_MAX || k > INT32_MAX || m > INT32_MAX) return kLaunchBadShape;
  CUtensorMap map_a{}, map_b{};
  static_assert(Cfg::kBk == 128, "the tensor maps' boxes are 128-byte swizzle lines");
  if (!code_tensor_map(&map_a, xq, m, k, Cfg::kBm) || !code_tensor_map(&map_b, wq, n, k, Cfg::kBn)) {
    return kLaunchUnsupported;
  }
  static bool opted_in[64] = {};
  const int st = opt_in_smem(reinterpret_cast<const void*>(k_gemm8_wgmma<Cfg, T, kCode, kOutliers>), Cfg::kSmemBytes,
                             opted_in);
  if (st != kLaunchOk) return st;
  const dim3 grid(static_cast<unsigned>((n + Cfg::kBn - 1) / Cfg::kBn), static_cast<unsigned>((m + Cfg::kBm - 1) / Cfg::kBm));
  detail::launch_pdl(k_gemm8_wgmma<Cfg, T, kCode, kOutliers>, grid, Cfg::kThreads, Cfg::kSmemBytes, stream, map_a,
                     map_b, m, n, k, ep, y);
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
    // Evict-first, as NF4's codes (dequantize32_groups): int8-sym-channel's batch-1 forward 0.526-0.529 ms
    // against 0.555-0.559 (H200).
    const int4 p = __ldcs(q16 + g);
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
  return ep.bias == nullptr || ep.bias_out_dtype == nullptr;  // one bias at most
}

}  // namespace

const char* launch_status_string(int status) {
  switch (status) {
    case kLaunchOk: return "ok";
    case kLaunchBadShape: return "bad shape";
    case kLaunchBadDtype: return "unsupported dtype";
    case kLaunchBadPointer: return "null pointer";
    case kLaunchBadBlocksize: return "bad NF4 blocksize";
    case kLaunchUnsupported: return "not supported on this device or build";
    default: break;
  }
  return status > 0 ? cudaGetErrorString(static_cast<cudaError_t>(status)) : "unknown launcher status";
}

int launch_compact_columns(const int32_t* flags, int64_t k, int32_t* idx, int32_t* count, cudaStream_t stream) {
  if (k <= 0 || k > INT32_MAX) return kLaunchBadShape;
  if (flags == nullptr || idx == nullptr || count == nullptr) return kLaunchBadPointer;
  k_compact_columns<<<1, 1024, 0, stream>>>(flags, k, idx, count);
  return detail::launch_result();
}

int launch_quantize_rows_int8(const void* x, DType dtype, int64_t t, int64_t k, float threshold, int32_t* outlier_flags,
                              int8_t* q, float* scale, cudaStream_t stream) {
  if (t <= 0 || k <= 0 || t > INT32_MAX) return kLaunchBadShape;
  if (x == nullptr || q == nullptr || scale == nullptr || (threshold > 0.0f && outlier_flags == nullptr)) {
    return kLaunchBadPointer;
  }
  if (threshold > 0.0f) {
    const cudaError_t e = cudaMemsetAsync(outlier_flags, 0, static_cast<size_t>(k) * sizeof(int32_t), stream);
    if (e != cudaSuccess) return static_cast<int>(e);
  }
  if (launch_quantize_rows_warp<Int8Encoder>(x, dtype, t, k, threshold, outlier_flags, reinterpret_cast<uint8_t*>(q),
                                             scale, stream)) {
    return detail::launch_result();
  }
  EVALSVC_DISPATCH_FLOAT(dtype, T, k_quantize_rows_int8<T><<<static_cast<unsigned>(t), 256, 0, stream>>>(static_cast<const T*>(x), k, threshold, outlier_flags, q, scale));
  return detail::launch_result();
}

int launch_quantize_rows_int8_outliers(const void* x, DType dtype, int64_t t, int64_t k, float threshold,
                                       int32_t* state, int8_t* q, float* scale, int32_t* idx, int32_t* count,
                                       cudaStream_t stream) {
  if (t <= 0 || k <= 0 || t > INT32_MAX || k > INT32_MAX || !(threshold > 0.0f)) return kLaunchBadShape;
  if (x == nullptr || q == nullptr || scale == nullptr || state == nullptr || idx == nullptr || count == nullptr) {
    return kLaunchBadPointer;
  }
  int32_t* done = state + (k + 31) / 32;  // after the bit mask
  if (launch_quantize_rows_warp<Int8Encoder>(x, dtype, t, k, threshold, state, reinterpret_cast<uint8_t*>(q), scale,
                                             stream, detail::OutlierList{done, idx, count})) {
    return detail::launch_result();
  }
  // Rows the warp kernel does not take (fp32, unaligned, wider than 4,096): one block a row, then the compaction
  // as a launch of its own, which also clears the mask; the counter was never touched.
  EVALSVC_DISPATCH_FLOAT(dtype, T, k_quantize_rows_int8<T, true><<<static_cast<unsigned>(t), 256, 0, stream>>>(static_cast<const T*>(x), k, threshold, state, q, scale));
  if (const int s = detail::launch_result(); s != kLaunchOk) return s;
  k_compact_mask<<<1, 32, 0, stream>>>(reinterpret_cast<uint32_t*>(state), k, idx, count, done);
  return detail::launch_result();
}

int launch_zero_columns(int8_t* q, int64_t t, int64_t k, const int32_t* idx, const int32_t* count, cudaStream_t stream) {
  if (t <= 0 || k <= 0) return kLaunchBadShape;
  if (q == nullptr || idx == nullptr || count == nullptr) return kLaunchBadPointer;
  k_zero_columns<<<detail::grid_for(t, 256, INT32_MAX), 256, 0, stream>>>(q, t, k, idx, count);
  return detail::launch_result();
}

namespace {
std::atomic<bool> g_programmatic_launch{true};
}  // namespace

void set_programmatic_launch(bool on) { g_programmatic_launch.store(on, std::memory_order_relaxed); }

bool programmatic_launch() {
  if (!g_programmatic_launch.load(std::memory_order_relaxed)) return false;
  static int cached[64] = {};  // 0 unknown, 1 yes (compute capability 9.0 or later), -1 no
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) return false;
  if (cached[dev] == 0) {
    int major = 0;
    cached[dev] = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess && major >= 9 ? 1 : -1;
  }
  return cached[dev] > 0;
}

bool int8_wgmma_available() {
  static int cached[64] = {};  // 0 unknown, 1 yes, -1 no
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) return false;
  if (cached[dev] == 0) {
    int major = 0;
    cudaFuncAttributes attr{};
    const bool ok = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess && major == 9 &&
                    cudaFuncGetAttributes(&attr, k_gemm8_wgmma<WgLarge, __half>) == cudaSuccess &&
                    attr.binaryVersion == 90 && encode_tiled() != nullptr;
    cached[dev] = ok ? 1 : -1;
  }
  return cached[dev] > 0;
}

int launch_int8_gemm(const int8_t* xq, const int8_t* wq, int64_t m, int64_t n, int64_t k, const Int8Epilogue& ep,
                     void* y, DType dtype, cudaStream_t stream, Int8Kernel kernel) {
  if (m <= 0 || n <= 0 || k <= 0) return kLaunchBadShape;
  if (xq == nullptr || wq == nullptr || y == nullptr || !epilogue_ok(ep)) return kLaunchBadPointer;
  const bool vec = k % 16 == 0 && reinterpret_cast<uintptr_t>(xq) % 16 == 0 && reinterpret_cast<uintptr_t>(wq) % 16 == 0;
  const bool wgmma = kernel == Int8Kernel::kWgmma;
  if (wgmma && !int8_wgmma_available()) return kLaunchUnsupported;
  if (wgmma && !vec) return kLaunchBadShape;
  if (wgmma || (kernel == Int8Kernel::kBest && vec && int8_wgmma_available())) {
    const bool large = !wgmma_small_tiles(m, n);
    EVALSVC_DISPATCH_FLOAT(dtype, T, {
      // LLM.int8's outlier part has kernels of its own, so that W8A8's carry none of its code or registers.
      if (ep.outlier_count != nullptr) {
        T* out = static_cast<T*>(y);
        return large ? launch_gemm8_wgmma_cfg<WgLarge, T, ActCode::kInt8, true>(xq, wq, m, n, k, ep, out, stream)
                     : launch_gemm8_wgmma_cfg<WgSmall, T, ActCode::kInt8, true>(xq, wq, m, n, k, ep, out, stream);
      }
      return large ? launch_gemm8_wgmma_cfg<WgLarge, T>(xq, wq, m, n, k, ep, static_cast<T*>(y), stream)
                   : launch_gemm8_wgmma_cfg<WgSmall, T>(xq, wq, m, n, k, ep, static_cast<T*>(y), stream);
    });
    return kLaunchOk;
  }
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

bool wgmma_small_tiles(int64_t m, int64_t n) {
  const int64_t large_tiles = ((m + WgLarge::kBm - 1) / WgLarge::kBm) * ((n + WgLarge::kBn - 1) / WgLarge::kBn);
  return large_tiles < sm_count();
}

int launch_fp8_gemm(const uint8_t* xq, const uint8_t* wq, int64_t m, int64_t n, int64_t k, const Int8Epilogue& ep,
                    void* y, DType dtype, cudaStream_t stream) {
  if (m <= 0 || n <= 0 || k <= 0) return kLaunchBadShape;
  if (xq == nullptr || wq == nullptr || y == nullptr || !epilogue_ok(ep)) return kLaunchBadPointer;
  if (ep.outlier_count != nullptr) return kLaunchBadPointer;  // no outlier part for E4M3 products
  if (!int8_wgmma_available()) return kLaunchUnsupported;
  if (k % 16 != 0 || reinterpret_cast<uintptr_t>(xq) % 16 != 0 || reinterpret_cast<uintptr_t>(wq) % 16 != 0) {
    return kLaunchBadShape;
  }
  EVALSVC_DISPATCH_FLOAT(dtype, T, {
    return launch_gemm8_wgmma_cfg<WgSmall, T, ActCode::kFp8E4M3>(xq, wq, m, n, k, ep, static_cast<T*>(y), stream);
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
  // Capped: the thread budget of max_blocks x kBackgroundBlockThreads in blocks of 256, spread over more SMs. The
  // int8-sym-channel batch-1 forward took 9-18 us less so than in blocks of 1024 on an H200 (docs/perf.md).
  const int threads = 256;  // capped or not
  if (max_blocks > 0) max_blocks *= kBackgroundBlockThreads / threads;
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
