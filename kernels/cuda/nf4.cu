// NF4 kernels of SPEC section 2 (bitsandbytes Linear4bit, quant_type nf4): dequantization, a batch-1 GEMV that
// streams the packed weight, and a GEMM that dequantizes weight tiles into shared memory for the tensor cores.
// Double-quantized absmax values are decoded on the fly: absmax[b] = dynamic_map[absmax_q[b]] * nested[b/256]
// + offset (bitsandbytes' dequantize_blockwise, then + offset), with explicit _rn operations so that no fused
// multiply-add makes the device disagree with the CPU reference in the last bit.
#include <cstdio>
#include <cstdlib>
#include <mma.h>

#include "common.cuh"
#include "wgmma.cuh"
#include "evalsvc/kernels/codebooks.h"

namespace evalsvc::kernels::cuda {
namespace {

using detail::bits16;
using detail::from_float;
using detail::store8;
using detail::to_float;
using namespace wg;

/// Shared-memory copies of the codebooks: per-thread lookups with different indices serialise in constant
/// memory, while 16 + 256 floats in shared memory answer a warp in one pass (or few bank conflicts).
struct Nf4Tables {
  float level[16];
  float dmap[256];
};

__device__ __forceinline__ void load_tables(Nf4Tables& t, const float* quant_map, const float* nested_map) {
  for (int i = threadIdx.x; i < 16; i += blockDim.x) t.level[i] = quant_map != nullptr ? quant_map[i] : kNf4LevelsDevice[i];
  for (int i = threadIdx.x; i < 256; i += blockDim.x)
    t.dmap[i] = nested_map != nullptr ? nested_map[i] : kDynamicMapSignedDevice[i];
}

/// absmax of block b, plain or double-quantized.
__device__ __forceinline__ float block_absmax(const Nf4View& w, const Nf4Tables& t, int64_t b) {
  if (w.absmax != nullptr) return w.absmax[b];
  return __fadd_rn(__fmul_rn(t.dmap[w.absmax_q[b]], w.nested[b / kNestedBlockSize]), w.offset);
}

/// The weight value of a code in the compute dtype, returned as fp32 (what a dequantize-then-matmul sees).
template <typename T>
__device__ __forceinline__ float weight_value(const Nf4Tables& t, unsigned code, float absmax) {
  return to_float(from_float<T>(__fmul_rn(t.level[code], absmax)));
}


/// Code of flat element e (byte e / 2; high nibble for even e).
__device__ __forceinline__ unsigned code_at(const uint8_t* packed, int64_t e) {
  const unsigned byte = packed[e >> 1];
  return (e & 1) ? (byte & 0xFu) : (byte >> 4);
}

// ---- dequantize --------------------------------------------------------------------------------------------

template <typename T>
__global__ void k_nf4_dequantize(Nf4View w, T* __restrict__ out) {
  __shared__ Nf4Tables t;
  load_tables(t, w.quant_map, w.nested_map);
  __syncthreads();
  const int64_t total = w.n * w.k;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += stride) {
    out[e] = from_float<T>(__fmul_rn(t.level[code_at(w.packed, e)], block_absmax(w, t, e / w.blocksize)));
  }
}

/// The same values, 8 codes a thread: one 4-byte load of packed codes, one absmax (8 | blocksize, so the 8 share
/// a block), and 16-byte stores. For n*k % 8 == 0 and blocksize % 8 == 0 (GPT-2: always). The element-wise
/// kernel above paid a byte load, a 64-bit division and an absmax decode per element; this is the
/// dequantize-then-cuBLAS path's whole overhead, so it runs near memory speed.
template <typename T>
__global__ void k_nf4_dequantize8(Nf4View w, T* __restrict__ out) {
  __shared__ Nf4Tables t;
  load_tables(t, w.quant_map, w.nested_map);
  __syncthreads();
  const int64_t groups = w.n * w.k / 8;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const uint32_t* words = reinterpret_cast<const uint32_t*>(w.packed);
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < groups; g += stride) {
    const uint32_t p = words[g];  // little-endian: byte j (elements 2j, 2j+1) in bits 8j..8j+7
    const float am = block_absmax(w, t, g * 8 / w.blocksize);
    float v[8];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const unsigned byte = (p >> (8 * j)) & 0xFFu;
      v[2 * j] = __fmul_rn(t.level[byte >> 4], am);
      v[2 * j + 1] = __fmul_rn(t.level[byte & 0xFu], am);
    }
    store8(out + 8 * g, v);
  }
}

/// The same values, 32 codes a thread (one 16-byte load, one absmax, four 8-value stores): for a capped grid
/// (launch max_blocks > 0), whose few blocks must each move many bytes per trip to keep up. For n*k % 32 == 0,
/// blocksize % 32 == 0 and 16-byte aligned pointers; 32-bit indices (n*k / 32 < 2^31).
template <typename T>
__global__ void k_nf4_dequantize32(Nf4View w, T* __restrict__ out) {
  __shared__ Nf4Tables t;
  load_tables(t, w.quant_map, w.nested_map);
  __syncthreads();
  const uint32_t groups = static_cast<uint32_t>(w.n * w.k / 32);
  const uint32_t per_block = static_cast<uint32_t>(w.blocksize / 32);
  const uint4* words = reinterpret_cast<const uint4*>(w.packed);
  for (uint32_t g = blockIdx.x * blockDim.x + threadIdx.x; g < groups; g += gridDim.x * blockDim.x) {
    const uint4 p = words[g];
    const float am = block_absmax(w, t, g / per_block);
    const uint32_t pw[4] = {p.x, p.y, p.z, p.w};
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      float v[8];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const unsigned byte = (pw[q] >> (8 * j)) & 0xFFu;
        v[2 * j] = __fmul_rn(t.level[byte >> 4], am);
        v[2 * j + 1] = __fmul_rn(t.level[byte & 0xFu], am);
      }
      store8(out + 32 * static_cast<size_t>(g) + 8 * q, v);
    }
  }
}

// ---- GEMV (few tokens) -------------------------------------------------------------------------------------
//
// One warp per output row; all m tokens at once, so the packed row is read once for the batch. Fast path
// (kVec): k % 32 == 0 and blocksize % 32 == 0, so every lane reads whole 16-byte chunks (32 codes, one absmax
// block) of its row, and the 32 matching activations as four 16-byte loads per token.
constexpr int kGemvWarps = 8;

template <typename T, bool kVec>
__global__ void __launch_bounds__(kGemvWarps * 32) k_nf4_gemv(const T* __restrict__ x, Nf4View w,
                                                              const float* __restrict__ bias, T* __restrict__ y,
                                                              int m) {
  __shared__ Nf4Tables t;
  load_tables(t, w.quant_map, w.nested_map);
  __syncthreads();
  const int lane = threadIdx.x & 31;
  const int64_t o = static_cast<int64_t>(blockIdx.x) * kGemvWarps + (threadIdx.x >> 5);
  if (o >= w.n) return;
  const int64_t k = w.k;

  float acc[kNf4GemvMaxM];
#pragma unroll
  for (int i = 0; i < kNf4GemvMaxM; ++i) acc[i] = 0.0f;

  if constexpr (kVec) {
    const uint4* prow = reinterpret_cast<const uint4*>(w.packed + (o * k) / 2);
    const int64_t nchunks = k / 32;
    for (int64_t c = lane; c < nchunks; c += 32) {
      const uint4 p = __ldg(prow + c);
      const float am = block_absmax(w, t, (o * k + c * 32) / w.blocksize);
      const uint32_t words[4] = {p.x, p.y, p.z, p.w};
      float wv[32];
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        const unsigned byte = (words[j >> 2] >> ((j & 3) * 8)) & 0xFFu;  // little-endian: byte j of the chunk
        wv[2 * j] = weight_value<T>(t, byte >> 4, am);
        wv[2 * j + 1] = weight_value<T>(t, byte & 0xFu, am);
      }
#pragma unroll
      for (int i = 0; i < kNf4GemvMaxM; ++i) {
        if (i < m) {
          const uint4* xp = reinterpret_cast<const uint4*>(x + i * k + c * 32);
          float s = 0.0f;
#pragma unroll
          for (int v = 0; v < 4; ++v) {
            const uint4 xv = __ldg(xp + v);
            const T* xe = reinterpret_cast<const T*>(&xv);
#pragma unroll
            for (int e = 0; e < 8; ++e) s = fmaf(wv[v * 8 + e], to_float(xe[e]), s);
          }
          acc[i] += s;
        }
      }
    }
  } else {
    for (int64_t kk = lane; kk < k; kk += 32) {
      const int64_t e = o * k + kk;
      const float wv = weight_value<T>(t, code_at(w.packed, e), block_absmax(w, t, e / w.blocksize));
#pragma unroll
      for (int i = 0; i < kNf4GemvMaxM; ++i) {
        if (i < m) acc[i] = fmaf(wv, to_float(x[i * k + kk]), acc[i]);
      }
    }
  }

  const float b = bias != nullptr ? bias[o] : 0.0f;
#pragma unroll
  for (int i = 0; i < kNf4GemvMaxM; ++i) {
    if (i < m) {
      const float s = detail::warp_sum(acc[i]);
      if (lane == 0) y[i * w.n + o] = from_float<T>(s + b);
    }
  }
}

// ---- GEMM (many tokens) ------------------------------------------------------------------------------------
//
// Block tile 64 tokens x 64 outputs, k in steps of 64; 4 warps, each 32x32 = 2x2 WMMA 16x16x16 fragments with
// fp32 accumulators. Per k step the block stages x [64][64] and the dequantized weight [64][64] in shared
// memory (rows padded by 16 bytes against bank conflicts; 72 elements keep every fragment 32-byte aligned).
constexpr int kGemmBm = 64;
constexpr int kGemmBn = 64;
constexpr int kGemmBk = 64;
constexpr int kGemmLd = kGemmBk + 8;
constexpr int kGemmThreads = 128;

template <typename T>
__device__ __forceinline__ void load_x_tile(const T* __restrict__ x, int64_t m, int64_t k, int64_t m0, int64_t k0,
                                            bool vec, T (*sx)[kGemmLd]) {
  if (vec) {  // k % 8 == 0: each 8-element chunk is wholly inside or outside
    for (int i = threadIdx.x; i < kGemmBm * (kGemmBk / 8); i += kGemmThreads) {
      const int r = i >> 3;
      const int ch = i & 7;
      const int64_t gr = m0 + r;
      const int64_t gk = k0 + ch * 8;
      uint4 v = make_uint4(0, 0, 0, 0);
      if (gr < m && gk < k) v = __ldg(reinterpret_cast<const uint4*>(x + gr * k + gk));
      *reinterpret_cast<uint4*>(&sx[r][ch * 8]) = v;
    }
  } else {
    for (int i = threadIdx.x; i < kGemmBm * kGemmBk; i += kGemmThreads) {
      const int r = i / kGemmBk;
      const int c = i % kGemmBk;
      const int64_t gr = m0 + r;
      const int64_t gk = k0 + c;
      sx[r][c] = (gr < m && gk < k) ? x[gr * k + gk] : from_float<T>(0.0f);
    }
  }
}

template <typename T>
__device__ __forceinline__ void load_w_tile(const Nf4View& w, const Nf4Tables& t, int64_t n0, int64_t k0, bool vec,
                                            T (*sw)[kGemmLd]) {
  const int64_t n = w.n;
  const int64_t k = w.k;
  if (vec) {  // k % 32 == 0, blocksize % 32 == 0: one 16-byte load = 32 codes of one absmax block
    for (int i = threadIdx.x; i < kGemmBn * (kGemmBk / 32); i += kGemmThreads) {
      const int r = i >> 1;
      const int h = i & 1;
      const int64_t gn = n0 + r;
      const int64_t gk = k0 + h * 32;
      uint4* dst = reinterpret_cast<uint4*>(&sw[r][h * 32]);
      if (gn < n && gk < k) {
        const int64_t e = gn * k + gk;
        const uint4 p = __ldg(reinterpret_cast<const uint4*>(w.packed + e / 2));
        const float am = block_absmax(w, t, e / w.blocksize);
        const uint32_t words[4] = {p.x, p.y, p.z, p.w};
#pragma unroll
        for (int v = 0; v < 4; ++v) {  // 4 x 8 values, one 16-byte shared store each
          // Two 16-bit values a word, the even element (high nibble) at the lower address = the low half.
          uint32_t pair[4];
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            const unsigned byte = (words[v] >> (j * 8)) & 0xFFu;
            pair[j] = bits16(from_float<T>(__fmul_rn(t.level[byte >> 4], am))) |
                      (bits16(from_float<T>(__fmul_rn(t.level[byte & 0xFu], am))) << 16);
          }
          dst[v] = make_uint4(pair[0], pair[1], pair[2], pair[3]);
        }
      } else {
        for (int v = 0; v < 4; ++v) dst[v] = make_uint4(0, 0, 0, 0);
      }
    }
  } else {
    for (int i = threadIdx.x; i < kGemmBn * kGemmBk; i += kGemmThreads) {
      const int r = i / kGemmBk;
      const int c = i % kGemmBk;
      const int64_t gn = n0 + r;
      const int64_t gk = k0 + c;
      float v = 0.0f;
      if (gn < n && gk < k) {
        const int64_t e = gn * k + gk;
        v = __fmul_rn(t.level[code_at(w.packed, e)], block_absmax(w, t, e / w.blocksize));
      }
      sw[r][c] = from_float<T>(v);
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kGemmThreads) k_nf4_gemm(const T* __restrict__ x, Nf4View w,
                                                            const float* __restrict__ bias, T* __restrict__ y,
                                                            int64_t m, bool x_vec, bool w_vec) {
  using namespace nvcuda;
  __shared__ Nf4Tables t;
  __shared__ __align__(128) T sx[kGemmBm][kGemmLd];
  __shared__ __align__(128) T sw[kGemmBn][kGemmLd];
  __shared__ __align__(128) float sc[kGemmBm][kGemmBn + 4];
  load_tables(t, w.quant_map, w.nested_map);
  __syncthreads();

  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kGemmBn;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kGemmBm;
  const int warp = threadIdx.x >> 5;
  const int wm = (warp >> 1) * 32;
  const int wn = (warp & 1) * 32;

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

  for (int64_t k0 = 0; k0 < w.k; k0 += kGemmBk) {
    load_x_tile<T>(x, m, w.k, m0, k0, x_vec, sx);
    load_w_tile<T>(w, t, n0, k0, w_vec, sw);
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kGemmBk; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b[2];
      // sw is [outputs][k] row-major, i.e. B = W^T [k][outputs] column-major.
      for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(a[i], &sx[wm + i * 16][kk], kGemmLd);
      for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(b[j], &sw[wn + j * 16][kk], kGemmLd);
      for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }

  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(&sc[wm + i * 16][wn + j * 16], acc[i][j], kGemmBn + 4, wmma::mem_row_major);
  __syncthreads();
  for (int i = threadIdx.x; i < kGemmBm * kGemmBn; i += kGemmThreads) {
    const int r = i / kGemmBn;
    const int c = i % kGemmBn;
    const int64_t gr = m0 + r;
    const int64_t gc = n0 + c;
    if (gr < m && gc < w.n) y[gr * w.n + gc] = from_float<T>(sc[r][c] + (bias != nullptr ? bias[gc] : 0.0f));
  }
}

// ---- GEMM on Hopper: wgmma with the weight decoded in registers ---------------------------------------------
//
// For one sequence (128 tokens) the dequantize-then-cuBLAS path needs the dense weight before the product: as a
// pass on the critical path, or made ahead on a side stream whose blocks share the SMs with the forward (the
// weight prefetch: NF4's batch-1 forward 1.2x fp16's, docs/perf.md). Here the packed weight goes straight into
// the product, transposed: y^T = W x^T, so that W is wgmma's A operand, which may come from registers. A block
// (one warpgroup) computes 64 outputs x TN tokens over a range of k. Each thread decodes its A fragment (two
// weight rows, four k a row per k16 step) in registers and issues the wgmma at once: no decoded tile is written
// to shared memory, fenced and met at a barrier (the previous design paid about 0.45 us a 64-deep k tile for
// that round trip: 1.7-3.5x cuBLAS's time). x^T is wgmma's B operand: x's rows (tokens, k contiguous) by TMA in
// the 128-byte swizzle, one barrier a k tile, all issued at once.
// Decoding without a multiply: for each absmax block of its two rows a thread builds the block's 16 weight
// values (level * absmax in fp32, rounded once to T: the dequantization's values bit for bit) as two 16-byte
// tables of low and high bytes in registers, and looks four codes up at once with byte permutes.
// Few blocks would leave most SMs idle (768 x 768: 12 tiles of 64 outputs), so k is split over a thread-block
// cluster of up to 8 blocks; each block leaves its fp32 partial tile in its shared memory and, after a cluster
// barrier, sums one slice of the tile over the cluster's blocks in rank order (deterministic), then + bias,
// GELU and the store. The codes, absmax values and the first tables are loaded before the programmatic wait.
// Outside sm_90a the helpers below are declared and never used: not worth a warning per target.
#pragma nv_diag_suppress 177
namespace nf4wg {
constexpr int kBn = 64;        // weight rows (outputs) a block: wgmma's M
constexpr int kBk = 64;        // k a tile: a 128-byte swizzle line of x, 32 bytes of codes a weight row
constexpr int kMaxTiles = 10;  // k tiles a block holds at once (x and codes wholly resident: <= 196 KB)
constexpr int kMaxSplit = 8;   // blocks of a cluster that split k (the portable cluster size)
constexpr int kThreads = 128;  // one warpgroup
constexpr int kCodeTileBytes = kBn * kBk / 2;  // 2 KB of packed codes a k tile

/// Bytes of x's tiles or, after the products, of the partial tiles a block receives from its cluster (up to
/// kMaxSplit slices of ceil(TN / 2 / split) accumulators x 128 threads, fp32), whichever is larger.
__host__ __device__ inline int x_region_bytes(int tn, int tiles) {
  const int receive = (tn / 2 + kMaxSplit) * kThreads * 4;
  return tiles * tn * 128 > receive ? tiles * tn * 128 : receive;
}
/// Bytes of dynamic shared memory a block of TN tokens and `tiles` k tiles uses: the x region, the codes, and
/// the absmax values of its 64 rows (`astride` a row; fp32, + their double-quantization codes), + slack to
/// align to a swizzle atom.
__host__ __device__ inline int smem_bytes(int tn, int tiles, int astride) {
  return x_region_bytes(tn, tiles) + tiles * kCodeTileBytes + kBn * astride * 5 + 1024;
}
/// absmax blocks a weight row may touch in a block's k range of `tiles` tiles (blocks may straddle rows).
__host__ __device__ inline int absmax_stride(int tiles, int64_t blocksize) {
  return static_cast<int>((tiles * kBk + blocksize - 1) / blocksize) + 1;
}

/// Two values rounded to T in one packed conversion, a first (the low half).
template <typename T>
__device__ __forceinline__ uint32_t pack2(float a, float b) {
  if constexpr (std::is_same_v<T, __half>) {
    const __half2 h = __floats2half2_rn(a, b);
    return *reinterpret_cast<const uint32_t*>(&h);
  } else {
    const __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
    return *reinterpret_cast<const uint32_t*>(&h);
  }
}

/// The 16 weight values of one absmax block as byte planes: lo[q] holds the low bytes of codes 4q..4q+3, hi[q]
/// their high bytes.
struct RowTable {
  uint32_t lo[4], hi[4];
};
template <typename T>
__device__ __forceinline__ void build_table(const float (&level)[16], float am, RowTable& tb) {
  uint32_t h[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) h[i] = pack2<T>(__fmul_rn(level[2 * i], am), __fmul_rn(level[2 * i + 1], am));
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    tb.lo[q] = __byte_perm(h[2 * q], h[2 * q + 1], 0x6420);
    tb.hi[q] = __byte_perm(h[2 * q], h[2 * q + 1], 0x7531);
  }
}
/// The A fragment of one weight row for one k16 step: v's low 16 bits are the step's two code bytes of this
/// thread (byte t: k = 2t (high nibble), 2t + 1; byte t + 4: k = 2t + 8, 2t + 9). Returns the values of k = 2t,
/// 2t + 1 in `first` and of 2t + 8, 2t + 9 in `second` (lower k in the low half). Each byte permute looks up
/// four codes: codes 0-7 in planes 0-1, 8-15 in planes 2-3, merged on each code's bit 3.
__device__ __forceinline__ void lookup(const RowTable& tb, uint32_t v, uint32_t& first, uint32_t& second) {
  const uint32_t sel = v & 0x7777u;
  const uint32_t upper = __byte_perm(0u, 0xFFFFFFFFu, (v >> 1) & 0x4444u);  // 0xFF where the code is >= 8
  const uint32_t lo = (__byte_perm(tb.lo[0], tb.lo[1], sel) & ~upper) | (__byte_perm(tb.lo[2], tb.lo[3], sel) & upper);
  const uint32_t hi = (__byte_perm(tb.hi[0], tb.hi[1], sel) & ~upper) | (__byte_perm(tb.hi[2], tb.hi[3], sel) & upper);
  // Nibble 0 is k = 2t + 1 (the low nibble of byte t), nibble 1 k = 2t, nibble 2 k = 2t + 9, nibble 3 k = 2t + 8.
  first = __byte_perm(lo, hi, 0x4051);
  second = __byte_perm(lo, hi, 0x6273);
}

/// d (64 x TN, f32) += A (64 x 16 in registers) . B (TN x 16 at db, K-major)^T.
template <typename T, int TN>
__device__ __forceinline__ void wgmma_rs(float (&d)[TN / 2], const uint32_t (&a)[4], uint64_t db);

#define EVALSVC_R8(i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), \
                      "+f"(d[i + 6]), "+f"(d[i + 7])
#define EVALSVC_L8(a, b, c, e, f, g, h, i) "%" #a ", %" #b ", %" #c ", %" #e ", %" #f ", %" #g ", %" #h ", %" #i
#ifdef EVALSVC_WGMMA
#define EVALSVC_NF4_RS64(TYPE)                                                                                     \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n" "wgmma.mma_async.sync.aligned.m64n64k16.f32." TYPE "." TYPE " {"                                     \
               EVALSVC_L8(0, 1, 2, 3, 4, 5, 6, 7) ", " EVALSVC_L8(8, 9, 10, 11, 12, 13, 14, 15) ", "                \
               EVALSVC_L8(16, 17, 18, 19, 20, 21, 22, 23) ", " EVALSVC_L8(24, 25, 26, 27, 28, 29, 30, 31)           \
               "}, {%32, %33, %34, %35}, %36, p, 1, 1, 0;\n}\n"                                                        \
               : EVALSVC_R8(0), EVALSVC_R8(8), EVALSVC_R8(16), EVALSVC_R8(24)                                      \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1))
#define EVALSVC_NF4_RS128(TYPE)                                                                                    \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n" "wgmma.mma_async.sync.aligned.m64n128k16.f32." TYPE "." TYPE " {"                                    \
               EVALSVC_L8(0, 1, 2, 3, 4, 5, 6, 7) ", " EVALSVC_L8(8, 9, 10, 11, 12, 13, 14, 15) ", "                \
               EVALSVC_L8(16, 17, 18, 19, 20, 21, 22, 23) ", " EVALSVC_L8(24, 25, 26, 27, 28, 29, 30, 31) ", "      \
               EVALSVC_L8(32, 33, 34, 35, 36, 37, 38, 39) ", " EVALSVC_L8(40, 41, 42, 43, 44, 45, 46, 47) ", "      \
               EVALSVC_L8(48, 49, 50, 51, 52, 53, 54, 55) ", " EVALSVC_L8(56, 57, 58, 59, 60, 61, 62, 63)           \
               "}, {%64, %65, %66, %67}, %68, p, 1, 1, 0;\n}\n"                                                        \
               : EVALSVC_R8(0), EVALSVC_R8(8), EVALSVC_R8(16), EVALSVC_R8(24), EVALSVC_R8(32), EVALSVC_R8(40),     \
                 EVALSVC_R8(48), EVALSVC_R8(56)                                                                    \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1))
#endif
template <>
__device__ __forceinline__ void wgmma_rs<__half, 64>(float (&d)[32], const uint32_t (&a)[4], uint64_t db) {
#ifdef EVALSVC_WGMMA
  EVALSVC_NF4_RS64("f16");
#endif
}
template <>
__device__ __forceinline__ void wgmma_rs<__nv_bfloat16, 64>(float (&d)[32], const uint32_t (&a)[4], uint64_t db) {
#ifdef EVALSVC_WGMMA
  EVALSVC_NF4_RS64("bf16");
#endif
}
template <>
__device__ __forceinline__ void wgmma_rs<__half, 128>(float (&d)[64], const uint32_t (&a)[4], uint64_t db) {
#ifdef EVALSVC_WGMMA
  EVALSVC_NF4_RS128("f16");
#endif
}
template <>
__device__ __forceinline__ void wgmma_rs<__nv_bfloat16, 128>(float (&d)[64], const uint32_t (&a)[4], uint64_t db) {
#ifdef EVALSVC_WGMMA
  EVALSVC_NF4_RS128("bf16");
#endif
}
#undef EVALSVC_NF4_RS64
#undef EVALSVC_NF4_RS128
#undef EVALSVC_R8
#undef EVALSVC_L8

template <int N>
__device__ __forceinline__ void fence_regs(uint32_t (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+r"(r[i])::"memory");
}

/// Arrive at and wait on the cluster barrier (release / acquire: shared-memory writes before it are visible to
/// the cluster's blocks after it).
__device__ __forceinline__ void cluster_sync() {
#ifdef EVALSVC_WGMMA
  asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;\n" ::: "memory");
#endif
}
/// Stores v at shared-window address `addr` in the shared memory of the cluster's block `rank` (visible to it
/// after the next cluster barrier).
__device__ __forceinline__ void st_cluster(uint32_t addr, uint32_t rank, float v) {
#ifdef EVALSVC_WGMMA
  uint32_t remote = 0;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(remote) : "r"(addr), "r"(rank));
  asm volatile("st.shared::cluster.f32 [%0], %1;\n" ::"r"(remote), "f"(v) : "memory");
#endif
}
}  // namespace nf4wg

/// Grid: (outputs / 64, tokens / TN, split); clusters (1, 1, split) when split > 1. Block z takes k tiles
/// [z * tiles, (z + 1) * tiles).
template <typename T, int TN>
__global__ void __launch_bounds__(nf4wg::kThreads, 1)
    k_nf4_wgmma(const __grid_constant__ CUtensorMap map_x, const __grid_constant__ CUtensorMap map_codes, Nf4View w,
                const float* __restrict__ bias, T* __restrict__ y, int64_t m, int tiles, bool gelu) {
  using namespace nf4wg;
#ifdef EVALSVC_WGMMA
  constexpr int kAcc = TN / 2;  // accumulators a thread
  extern __shared__ int8_t nf4_smem[];
  __shared__ uint64_t full_x[kMaxTiles], full_codes;
  __shared__ float level[16];
  __shared__ float dmap[256];
  const uint32_t base = (smem_addr(nf4_smem) + 1023u) & ~1023u;  // swizzle atoms are 1,024-byte aligned
  int8_t* const base_ptr = nf4_smem + (base - smem_addr(nf4_smem));
  const int64_t n = w.n, k = w.k, bs = w.blocksize;
  const int n0 = static_cast<int>(blockIdx.x) * kBn;
  const int m0 = static_cast<int>(blockIdx.y) * TN;
  const int split = static_cast<int>(gridDim.z);
  const int kt0 = static_cast<int>(blockIdx.z) * tiles;  // first k tile of this block
  const int64_t kb = static_cast<int64_t>(kt0) * kBk;    // its first k
  const int x_bytes = x_region_bytes(TN, tiles);
  auto x_tile = [&](int j) { return base + static_cast<uint32_t>(j * TN * 128); };
  const uint32_t codes = base + static_cast<uint32_t>(x_bytes);
  const uint8_t* const codes_ptr = reinterpret_cast<const uint8_t*>(base_ptr + x_bytes);
  float* const absmax = reinterpret_cast<float*>(base_ptr + x_bytes + tiles * kCodeTileBytes);
  const int astride = absmax_stride(tiles, bs);
  auto bar = [](uint64_t& b) { return smem_addr(&b); };
  const int tid = static_cast<int>(threadIdx.x);

  uint8_t* const acode = reinterpret_cast<uint8_t*>(absmax + kBn * astride);  // double-quantized absmax codes
  // Everything before the programmatic wait is no kernel's output, and its loads are issued at once: one memory
  // round trip (the codes' TMA, the levels, the absmax values) before the tables can be built.
  if (tid == 0) {
    for (int j = 0; j < tiles; ++j) mbar_init(bar(full_x[j]), 1);
    mbar_init(bar(full_codes), 1);
    mbar_fence_init();
    asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(&map_x)) : "memory");
    mbar_arrive_expect_tx(bar(full_codes), static_cast<uint32_t>(tiles * kCodeTileBytes));  // rows past n: zeros
    for (int j = 0; j < tiles; ++j) {
      tma_load_2d(codes + static_cast<uint32_t>(j * kCodeTileBytes), &map_codes, (kt0 + j) * (kBk / 2), n0,
                  bar(full_codes));
    }
  }
  if (tid < 16) level[tid] = w.quant_map != nullptr ? w.quant_map[tid] : kNf4LevelsDevice[tid];
  const bool dq = w.absmax == nullptr;
  if (dq) {
    for (int i = tid; i < 256; i += kThreads) dmap[i] = w.nested_map != nullptr ? w.nested_map[i] : kDynamicMapSignedDevice[i];
  }
  // The absmax values of the block's 64 rows over its k range: row r's block b at absmax[r * astride + b -
  // first(r)], 0 for rows past n (their codes are zeros: values 0 x level). Double-quantized ones as their
  // nested scale and code first, decoded once the dynamic map is in.
  // (blocksize is a power of two: shifts, not 64-bit divisions, which cost microseconds here.) Two threads a row.
  const int lbs = __ffs(static_cast<int>(bs)) - 1;
  {
    const int r = tid >> 1;
    const int64_t flat = (static_cast<int64_t>(n0) + r) * k + kb;
    const int64_t first = flat >> lbs, last = (flat + tiles * kBk - 1) >> lbs;
#pragma unroll 4
    for (int b = tid & 1; b < astride; b += 2) {
      const bool in = n0 + r < n && first + b <= last;
      const int64_t blk = first + b;
      const int i = r * astride + b;
      absmax[i] = !in ? 0.0f : dq ? __ldg(w.nested + (blk >> 8)) : __ldg(w.absmax + blk);
      if (dq) acode[i] = in ? __ldg(w.absmax_q + blk) : 0;
    }
  }
  static_assert(kNestedBlockSize == 256, "nested scales every 256 blocks: blk >> 8");
  __syncthreads();
  if (dq) {
    for (int i = tid; i < kBn * astride; i += kThreads) {
      absmax[i] = __fadd_rn(__fmul_rn(dmap[acode[i]], absmax[i]), w.offset);
    }
    __syncthreads();
  }

  // This thread's weight rows (warp w: rows 16w .. 16w + 15 of the tile) and its byte within each 4 of a step.
  const int warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
  const int rows[2] = {16 * warp + g, 16 * warp + g + 8};
  const uint32_t pick = static_cast<uint32_t>(t | ((t + 4) << 4));  // byte t of two words
  float lv[16];  // the levels in registers: each table rebuild needs all 16
#pragma unroll
  for (int i = 0; i < 16; ++i) lv[i] = level[i];
  // Per row: the table of its current absmax block, that block's index in the row's absmax slice, and the flat
  // position of the current k16 step within the block (blocksize % 16 == 0: a step never straddles two blocks).
  RowTable tab[2];
  int slot[2], pos[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    slot[i] = 0;
    pos[i] = static_cast<int>(((n0 + rows[i]) * k + kb) & (bs - 1));
    build_table<T>(lv, absmax[rows[i] * astride], tab[i]);
  }
  float bias_v[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) bias_v[i] = bias != nullptr && n0 + rows[i] < n ? bias[n0 + rows[i]] : 0.0f;

  detail::pdl_wait();  // x comes from the kernel before
  if (tid == 0) {
    for (int j = 0; j < tiles; ++j) {
      mbar_arrive_expect_tx(bar(full_x[j]), static_cast<uint32_t>(TN * 128));  // rows past m: zeros, counted
      tma_load_2d(x_tile(j), &map_x, (kt0 + j) * kBk, m0, bar(full_x[j]));
    }
  }
  mbar_wait(bar(full_codes), 0);

  // Decodes tile j's four k16 steps into a[step][4] (the wgmma A fragment: a0 / a1 rows g / g + 8 at k 2t, 2t + 1;
  // a2 / a3 the same rows at k 2t + 8, 2t + 9).
  auto decode_tile = [&](int j, uint32_t(&a)[4][4]) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const uint4* src = reinterpret_cast<const uint4*>(codes_ptr + j * kCodeTileBytes + rows[i] * 32);
      const uint4 c0 = src[0], c1 = src[1];
      const uint32_t words[8] = {c0.x, c0.y, c0.z, c0.w, c1.x, c1.y, c1.z, c1.w};
#pragma unroll
      for (int s = 0; s < 4; ++s) {
        if (j > 0 || s > 0) {  // the next step: into the next absmax block where this one ends
          pos[i] += 16;
          if (pos[i] == bs) {
            pos[i] = 0;
            build_table<T>(lv, absmax[rows[i] * astride + ++slot[i]], tab[i]);
          }
        }
        uint32_t low_k, high_k;
        lookup(tab[i], __byte_perm(words[2 * s], words[2 * s + 1], pick), low_k, high_k);
        a[s][i] = low_k;
        a[s][2 + i] = high_k;
      }
    }
  };

  float acc[kAcc];
#pragma unroll
  for (int e = 0; e < kAcc; ++e) acc[e] = 0.0f;
  // Two tiles' A fragments: tile j's in the tensor cores' hands while tile j + 1's are decoded into the other.
  uint32_t frag[2][4][4];
  // Tile j multiplies with `cur` while tile j + 1 decodes into `nxt`. Not unrolled over the tiles: with one warp a
  // scheduler, a fully unrolled loop spent 40% of its time on instruction fetch (Nsight Compute).
  auto step = [&](int j, uint32_t(&cur)[4][4], uint32_t(&nxt)[4][4]) {
    mbar_wait(bar(full_x[j]), 0);
    wgmma_fence();  // the fragments were just written
#pragma unroll
    for (int s = 0; s < 4; ++s) wgmma_rs<T, TN>(acc, cur[s], wg_desc(x_tile(j) + 32 * s));
    wgmma_commit();
    wgmma_wait<1>();  // tile j - 1 retired: its fragments (nxt) may be overwritten
#pragma unroll
    for (int s = 0; s < 4; ++s) fence_regs(nxt[s]);
    if (j + 1 < tiles) decode_tile(j + 1, nxt);
  };
  decode_tile(0, frag[0]);
#pragma unroll 1
  for (int j = 0; j < tiles; j += 2) {
    step(j, frag[0], frag[1]);
    if (j + 1 < tiles) step(j + 1, frag[1], frag[0]);
  }
  wgmma_wait<0>();
  fence_operands(acc);
#pragma unroll
  for (int s = 0; s < 4; ++s) {
    fence_regs(frag[0][s]);
    fence_regs(frag[1][s]);
  }
  detail::pdl_launch_dependents();

  // The accumulators of this thread: register 4c + 2h + e is output row rows[h], token 8c + 2t + e.
  auto store = [&](int e, float v) {
    const int c = e >> 2, h = (e >> 1) & 1;
    const int64_t row = n0 + 16 * warp + g + 8 * h, tok = m0 + 8 * c + 2 * t + (e & 1);
    if (row >= n || tok >= m) return;
    v += h != 0 ? bias_v[1] : bias_v[0];  // (not bias_v[h]: e is not a constant in the split loop)
    if (gelu) v = detail::gelu_tanh(to_float(from_float<T>(v)));
    y[tok * n + row] = from_float<T>(v);
  };
  if (split == 1) {
#pragma unroll
    for (int e = 0; e < kAcc; ++e) store(e, acc[e]);
    return;
  }
  // Split k: block `rank` of the cluster owns accumulators [e0(rank), e0(rank + 1)) of every thread, e0(r) =
  // ceil(r * kAcc / split). Once every block's products have retired (the first cluster barrier: x's tiles
  // become the receive buffers), each block pushes each accumulator to its owner's buffer, slot = its own rank,
  // with remote stores (no round trip to wait on); after the second barrier each owner sums its slots in rank
  // order (deterministic) and stores the outputs.
  uint32_t rank = 0;
  asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(rank));
  const int slice = (kAcc + split - 1) / split;  // accumulators a slot holds at most
  cluster_sync();
  int owner = 0, owner_e0 = 0, next_e0 = (kAcc + split - 1) / split;
#pragma unroll
  for (int e = 0; e < kAcc; ++e) {
    if (e == next_e0) {  // the next owner's slice starts (a division only there)
      ++owner;
      owner_e0 = next_e0;
      next_e0 = ((owner + 1) * kAcc + split - 1) / split;
    }
    const int at = (static_cast<int>(rank) * slice + e - owner_e0) * kThreads + tid;
    st_cluster(base + static_cast<uint32_t>(at * 4), static_cast<uint32_t>(owner), acc[e]);
  }
  cluster_sync();
  const float* const recv = reinterpret_cast<const float*>(base_ptr);
  const int e0 = (static_cast<int>(rank) * kAcc + split - 1) / split;
  const int e1 = ((static_cast<int>(rank) + 1) * kAcc + split - 1) / split;
  for (int e = e0; e < e1; ++e) {
    float v = 0.0f;
    for (int q = 0; q < split; ++q) v += recv[(q * slice + e - e0) * kThreads + tid];
    store(e, v);
  }
#else
  __trap();  // not sm_90a code: int8_wgmma_available() keeps the launcher from getting here
#endif
}
#pragma nv_diag_default 177

int check_view(const Nf4View& w) {
  if (w.n <= 0 || w.k <= 0) return kLaunchBadShape;
  if (w.blocksize < 2 || w.blocksize % 2 != 0) return kLaunchBadBlocksize;
  if (w.packed == nullptr) return kLaunchBadPointer;
  if (w.absmax == nullptr && (w.absmax_q == nullptr || w.nested == nullptr)) return kLaunchBadPointer;
  return kLaunchOk;
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

int launch_nf4_dequantize(const Nf4View& w, void* out, DType dtype, cudaStream_t stream, int max_blocks) {
  if (const int s = check_view(w); s != kLaunchOk) return s;
  if (out == nullptr) return kLaunchBadPointer;
  if (max_blocks < 0) return kLaunchBadShape;
  const int threads = max_blocks > 0 ? kBackgroundBlockThreads : 256;
  const int64_t cap = max_blocks > 0 ? max_blocks : 8192;
  if (max_blocks > 0 && (w.n * w.k) % 32 == 0 && w.blocksize % 32 == 0 && w.n * w.k / 32 <= INT32_MAX &&
      aligned16(w.packed) && aligned16(out)) {
    const unsigned grid = detail::grid_for(w.n * w.k / 32, threads, cap);
    EVALSVC_DISPATCH_FLOAT(dtype, T, k_nf4_dequantize32<T><<<grid, threads, 0, stream>>>(w, static_cast<T*>(out)));
    return detail::launch_result();
  }
  if ((w.n * w.k) % 8 == 0 && w.blocksize % 8 == 0 && reinterpret_cast<uintptr_t>(w.packed) % 4 == 0 &&
      reinterpret_cast<uintptr_t>(out) % 16 == 0) {
    const unsigned grid = detail::grid_for(w.n * w.k / 8, threads, cap);
    EVALSVC_DISPATCH_FLOAT(dtype, T, k_nf4_dequantize8<T><<<grid, threads, 0, stream>>>(w, static_cast<T*>(out)));
    return detail::launch_result();
  }
  const unsigned grid = detail::grid_for(w.n * w.k, threads, cap);
  EVALSVC_DISPATCH_FLOAT(dtype, T, k_nf4_dequantize<T><<<grid, threads, 0, stream>>>(w, static_cast<T*>(out)));
  return detail::launch_result();
}

int launch_nf4_gemv(const void* x, const Nf4View& w, const float* bias, void* y, int64_t m, DType dtype,
                    cudaStream_t stream) {
  if (const int s = check_view(w); s != kLaunchOk) return s;
  if (m <= 0 || m > kNf4GemvMaxM) return kLaunchBadShape;
  if (x == nullptr || y == nullptr) return kLaunchBadPointer;
  if (dtype == DType::kF32) return kLaunchBadDtype;
  const bool vec = w.k % 32 == 0 && w.blocksize % 32 == 0 && aligned16(w.packed) && aligned16(x);
  const unsigned grid = static_cast<unsigned>((w.n + kGemvWarps - 1) / kGemvWarps);
  const int mi = static_cast<int>(m);
  if (dtype == DType::kF16) {
    using T = __half;
    if (vec) k_nf4_gemv<T, true><<<grid, kGemvWarps * 32, 0, stream>>>(static_cast<const T*>(x), w, bias, static_cast<T*>(y), mi);
    else k_nf4_gemv<T, false><<<grid, kGemvWarps * 32, 0, stream>>>(static_cast<const T*>(x), w, bias, static_cast<T*>(y), mi);
  } else {
    using T = __nv_bfloat16;
    if (vec) k_nf4_gemv<T, true><<<grid, kGemvWarps * 32, 0, stream>>>(static_cast<const T*>(x), w, bias, static_cast<T*>(y), mi);
    else k_nf4_gemv<T, false><<<grid, kGemvWarps * 32, 0, stream>>>(static_cast<const T*>(x), w, bias, static_cast<T*>(y), mi);
  }
  return detail::launch_result();
}

int launch_nf4_gemm(const void* x, const Nf4View& w, const float* bias, void* y, int64_t m, DType dtype,
                    cudaStream_t stream) {
  if (const int s = check_view(w); s != kLaunchOk) return s;
  if (m <= 0 || (m + kGemmBm - 1) / kGemmBm > 65535) return kLaunchBadShape;
  if (x == nullptr || y == nullptr) return kLaunchBadPointer;
  const bool x_vec = w.k % 8 == 0 && aligned16(x);
  const bool w_vec = w.k % 32 == 0 && w.blocksize % 32 == 0 && aligned16(w.packed);
  const dim3 grid(static_cast<unsigned>((w.n + kGemmBn - 1) / kGemmBn), static_cast<unsigned>((m + kGemmBm - 1) / kGemmBm));
  if (dtype == DType::kF16) {
    using T = __half;
    k_nf4_gemm<T><<<grid, kGemmThreads, 0, stream>>>(static_cast<const T*>(x), w, bias, static_cast<T*>(y), m, x_vec, w_vec);
  } else if (dtype == DType::kBF16) {
    using T = __nv_bfloat16;
    k_nf4_gemm<T><<<grid, kGemmThreads, 0, stream>>>(static_cast<const T*>(x), w, bias, static_cast<T*>(y), m, x_vec, w_vec);
  } else {
    return kLaunchBadDtype;
  }
  return detail::launch_result();
}

}  // namespace evalsvc::kernels::cuda

namespace evalsvc::kernels::cuda {

namespace {
/// The number of blocks that split k for a grid of `tiles_nm` output tiles (0: none fits): among the splits a
/// cluster can take (k tiles divided evenly, at most kMaxTiles a block), the largest that keeps the grid within
/// one wave of the device's SMs, else the smallest.
int nf4_wgmma_split(int64_t k, int64_t tiles_nm, int sms) {
  const int64_t ktiles = k / nf4wg::kBk;
  int split = 0;
  static const int cap = [] {  // MEASUREMENT (removed once measured): QBENCH_NF4_SPLIT caps the split
    const char* e = std::getenv("QBENCH_NF4_SPLIT");
    return e != nullptr ? std::atoi(e) : nf4wg::kMaxSplit;
  }();
  for (int s = 1; s <= nf4wg::kMaxSplit; ++s) {
    if (s > cap && split > 0) break;
    if (ktiles % s != 0 || ktiles / s > nf4wg::kMaxTiles) continue;
    if (split == 0 || tiles_nm * s <= sms) split = s;
  }
  return split;
}
}  // namespace

bool nf4_wgmma_takes(int64_t k, int64_t blocksize) {
  return k > 0 && k % nf4wg::kBk == 0 && k <= INT32_MAX && blocksize >= 16 && (blocksize & (blocksize - 1)) == 0 &&
         blocksize <= INT32_MAX && nf4_wgmma_split(k, 1, 1) > 0 &&
         int8_wgmma_available();
}

int launch_nf4_wgmma(const void* x, const Nf4View& w, const float* bias, void* y, int64_t m, DType dtype,
                     bool gelu_tanh, cudaStream_t stream) {
  if (const int s = check_view(w); s != kLaunchOk) return s;
  const int tn = m <= 64 ? 64 : 128;  // tokens a block: wgmma's N
  if (m <= 0 || (m + tn - 1) / tn > 65535 || (w.n + nf4wg::kBn - 1) / nf4wg::kBn > INT32_MAX || w.k > INT32_MAX) {
    return kLaunchBadShape;
  }
  if (x == nullptr || y == nullptr) return kLaunchBadPointer;
  if (dtype != DType::kF16 && dtype != DType::kBF16) return kLaunchBadDtype;
  if (!nf4_wgmma_takes(w.k, w.blocksize) || !aligned16(x) || !aligned16(w.packed)) return kLaunchUnsupported;
  const int64_t tiles_n = (w.n + nf4wg::kBn - 1) / nf4wg::kBn, tiles_m = (m + tn - 1) / tn;
  const int split = nf4_wgmma_split(w.k, tiles_n * tiles_m, sm_count());
  const int tiles = static_cast<int>(w.k / nf4wg::kBk / split);
  CUtensorMap map_x{}, map_codes{};
  if (!tensor_map_2d(&map_x, x, m, w.k, 2, tn) ||
      !tensor_map_2d(&map_codes, w.packed, w.n, w.k / 2, 1, nf4wg::kBn, nf4wg::kBk / 2, false)) {
    return kLaunchUnsupported;
  }
  const int smem = nf4wg::smem_bytes(tn, tiles, nf4wg::absmax_stride(tiles, w.blocksize));
  cudaLaunchAttribute attrs[2] = {};
  unsigned nattrs = 0;
  if (split > 1) {
    attrs[nattrs].id = cudaLaunchAttributeClusterDimension;
    attrs[nattrs].val.clusterDim.x = 1;
    attrs[nattrs].val.clusterDim.y = 1;
    attrs[nattrs].val.clusterDim.z = static_cast<unsigned>(split);
    ++nattrs;
  }
  if (programmatic_launch()) {
    attrs[nattrs].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attrs[nattrs].val.programmaticStreamSerializationAllowed = 1;
    ++nattrs;
  }
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(static_cast<unsigned>(tiles_n), static_cast<unsigned>(tiles_m), static_cast<unsigned>(split));
  cfg.blockDim = dim3(nf4wg::kThreads);
  cfg.dynamicSmemBytes = static_cast<size_t>(smem);
  cfg.stream = stream;
  cfg.attrs = attrs;
  cfg.numAttrs = nattrs;
  const auto run = [&](auto kernel, auto* typed_y, bool(&opted)[64]) {
    // The largest block uses about 200 KB (kMaxTiles tiles of 128 tokens): opted into once per device.
    const int st = opt_in_smem(reinterpret_cast<const void*>(kernel),
                               nf4wg::smem_bytes(128, nf4wg::kMaxTiles, nf4wg::absmax_stride(nf4wg::kMaxTiles, 16)),
                               opted);
    if (st != kLaunchOk) {
      (void)cudaGetLastError();  // the failed opt-in's error is returned here, not left for the next launch
      return st;
    }
    cudaLaunchKernelEx(&cfg, kernel, map_x, map_codes, w, bias, typed_y, m, tiles, gelu_tanh);
    return detail::launch_result();
  };
  static bool opted[4][64] = {};
  if (dtype == DType::kF16) {
    auto* ty = static_cast<__half*>(y);
    return tn == 64 ? run(k_nf4_wgmma<__half, 64>, ty, opted[0]) : run(k_nf4_wgmma<__half, 128>, ty, opted[1]);
  }
  auto* ty = static_cast<__nv_bfloat16*>(y);
  return tn == 64 ? run(k_nf4_wgmma<__nv_bfloat16, 64>, ty, opted[2]) : run(k_nf4_wgmma<__nv_bfloat16, 128>, ty, opted[3]);
}

}  // namespace evalsvc::kernels::cuda
