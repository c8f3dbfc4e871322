// NF4 kernels of SPEC section 2 (bitsandbytes Linear4bit, quant_type nf4): dequantization, a batch-1 GEMV that
// streams the packed weight, and a GEMM that dequantizes weight tiles into shared memory for the tensor cores.
// Double-quantized absmax values are decoded on the fly: absmax[b] = dynamic_map[absmax_q[b]] * nested[b/256]
// + offset (bitsandbytes' dequantize_blockwise, then + offset), with explicit _rn operations so that no fused
// multiply-add makes the device disagree with the CPU reference in the last bit.
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

// ---- GEMM on Hopper: wgmma on a weight decoded into shared memory ------------------------------------------
//
// For one sequence (128 tokens) the dequantize-then-cuBLAS path needs the dense weight before the product: as a
// pass on the critical path, or made ahead on a side stream whose blocks share the SMs with the forward (the
// weight prefetch: NF4's batch-1 forward 1.2x fp16's, docs/perf.md). Here the packed weight goes straight into
// the product. A block computes a 64 x 64 tile of y. Its producer warp loads, by TMA into a ring of stages, each
// k tile's activations (64 rows x 64 k in fp16/bf16: one 128-byte swizzle line a row) and packed codes (64
// outputs x 64 k: 32 bytes a row), the codes on a barrier of their own so that their decoding need not wait for
// the activations. Two consumer warpgroups take the k tiles in turn (even / odd), so two sets of threads decode
// while the tensor cores work: a thread decodes 32 codes of one output row a k tile into its warpgroup's ring of
// decoded tiles, written in the swizzle wgmma reads, and the warpgroup multiplies with wgmma m64n64k16 (fp32
// accumulators) straight from shared memory, decoding tile j + 1 while tile j's products run. The block's absmax
// values are decoded into shared memory once, at the start. Everything before the activations' first stage
// (the tables, the absmax, the codes' first stages and their decoding) may run under the kernel before.
// Warpgroup 1 hands its partial tile to warpgroup 0 through shared memory, which adds the two and writes y
// (+ bias, + GELU) from its registers.
// (A first version read each thread's codes with a 16-byte load one tile ahead: every tile then waited about a
// memory latency, 1 us, and 3072 x 768 took 25 us at 128 tokens. A previous fused kernel for this size, split-k
// over a cluster on mma.sync, ran at 2.2-4.0x cuBLAS's time. docs/perf.md.)
// Outside sm_90a the helpers below are declared and never used: not worth a warning per target.
#pragma nv_diag_suppress 177
namespace nf4wg {
constexpr int kBm = 64;                    // tokens per tile (one m64 wgmma)
constexpr int kBn = 64;                    // outputs per tile
constexpr int kBk = 64;                    // k per stage: 128 bytes of fp16/bf16, one swizzle line
constexpr int kStages = 8;                 // activation stages in the ring; even: a stage goes to one warpgroup
constexpr int kGroups = 2;                 // consumer warpgroups, alternating k tiles
constexpr int kBufs = 2;                   // decoded tiles a warpgroup keeps: in its products, next
constexpr int kTileBytes = kBm * kBk * 2;  // 8 KB: an activation stage, or a decoded weight tile (kBn == kBm)
constexpr int kCodeBytes = kBn * kBk / 2;  // 2 KB of packed codes a k tile
constexpr int kMaxTiles = 48;              // k tiles whose codes the block holds at once: k <= 3,072
constexpr int kMaxAbsmax = 4096;           // absmax values a block holds: 64 rows x k / blocksize (+ 1)
constexpr int kAbsmaxLoads = 16;           // absmax loads a consumer thread issues at once (4,096 a block)
constexpr int kConsumers = 128 * kGroups;
constexpr int kThreads = kConsumers + 32;
constexpr int kSmemBytes = kStages * kTileBytes + kMaxTiles * kCodeBytes + kGroups * kBufs * kTileBytes +
                           kMaxAbsmax * 4 + 1024;  // + slack to align to a swizzle atom
static_assert(kStages % kGroups == 0, "stage s always holds tiles of one warpgroup");
static_assert(kBn == kBm, "activation stages and decoded tiles share a size");
static_assert(32 * kBm * 4 <= kBufs * kTileBytes, "warpgroup 1's partial tile fits in its decoded tiles");

/// Two values rounded to T in one packed conversion (cvt.rn.f16x2.f32 / .bf16x2), a first, as the low half. One
/// conversion a value, as the dequantization does it, kept the decode at about 0.5 us a k tile (3072 x 768 took
/// 23 us at 128 tokens): conversions issue at a quarter of the rate of the other arithmetic.
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

/// Decodes the 32 codes at smem address codes (row r's k half h of a stage's packed tile) into row r, 16-byte
/// chunks 4h..4h+3, of the decoded tile at smem address tile, in wgmma's 128-byte swizzle: chunk c of row r at
/// chunk c ^ (r % 8). Values as weight_value<T> gives them: level * absmax in fp32, rounded once to T.
template <typename T>
__device__ __forceinline__ void decode(uint32_t codes, float am, const Nf4Tables& t, uint32_t tile, int r, int h) {
  uint32_t words[4];
  asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(words[0]), "=r"(words[1]), "=r"(words[2]), "=r"(words[3])
               : "r"(codes)
               : "memory");
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    uint32_t pair[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      // Element 2j is the high nibble of byte j and goes to the lower address, the low half of the word.
      const unsigned byte = (words[q] >> (8 * j)) & 0xFFu;
      pair[j] = pack2<T>(__fmul_rn(t.level[byte >> 4], am), __fmul_rn(t.level[byte & 0xFu], am));
    }
    const uint32_t dst = tile + static_cast<uint32_t>(r * 128 + (((4 * h + q) ^ (r & 7)) * 16));
    asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"r"(dst), "r"(pair[0]), "r"(pair[1]), "r"(pair[2]),
                 "r"(pair[3])
                 : "memory");
  }
}

/// d (64 x 64 f32) += A (64 x 16 at da) . B (64 x 16 at db)^T, both K-major in 16-bit T.
template <typename T>
__device__ __forceinline__ void wgmma_m64n64k16(float (&d)[32], uint64_t da, uint64_t db) {
#ifdef EVALSVC_WGMMA
#define EVALSVC_NF4_WGMMA(TYPE)                                                                                      \
  asm volatile(                                                                                                    \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"                                                                 \
      "wgmma.mma_async.sync.aligned.m64n64k16.f32." TYPE "." TYPE " "                                              \
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, " \
      "%23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 0;\n}\n"                                \
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),           \
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),      \
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),    \
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])     \
      : "l"(da), "l"(db), "r"(1))
  if constexpr (std::is_same_v<T, __half>) EVALSVC_NF4_WGMMA("f16");
  else EVALSVC_NF4_WGMMA("bf16");
#undef EVALSVC_NF4_WGMMA
#endif
}

/// First and one-past-last flat absmax block of the rows n0 .. n0 + kBn - 1 (clipped to n).
__host__ __device__ inline int64_t first_block(int64_t n0, int64_t k, int64_t blocksize) { return n0 * k / blocksize; }
__host__ __device__ inline int64_t end_block(int64_t n0, int64_t n, int64_t k, int64_t blocksize) {
  const int64_t rows_end = n0 + kBn < n ? n0 + kBn : n;
  return (rows_end * k + blocksize - 1) / blocksize;
}
}  // namespace nf4wg

template <typename T>
__global__ void __launch_bounds__(nf4wg::kThreads, 1)
    k_nf4_wgmma(const __grid_constant__ CUtensorMap map_x, const __grid_constant__ CUtensorMap map_codes, Nf4View w,
                const float* __restrict__ bias, T* __restrict__ y, int64_t m, bool gelu) {
  using namespace nf4wg;
#ifdef EVALSVC_WGMMA
  extern __shared__ int8_t nf4_smem[];
  __shared__ uint64_t full_x[kStages], empty[kStages], full_w[kMaxTiles];
  __shared__ Nf4Tables t;
  const uint32_t base = (smem_addr(nf4_smem) + 1023u) & ~1023u;  // swizzle atoms are 1,024-byte aligned
  int8_t* const base_ptr = nf4_smem + (base - smem_addr(nf4_smem));
  const int64_t n = w.n, k = w.k;
  const int n0 = static_cast<int>(blockIdx.x) * kBn;
  const int m0 = static_cast<int>(blockIdx.y) * kBm;
  const int ktiles = static_cast<int>(k / kBk);  // the launcher takes k % kBk == 0 only
  auto stage_x = [&](int s) { return base + static_cast<uint32_t>(s * kTileBytes); };
  auto codes_of = [&](int kt) { return base + static_cast<uint32_t>(kStages * kTileBytes + kt * kCodeBytes); };
  constexpr int kDecodedOffset = kStages * kTileBytes + kMaxTiles * kCodeBytes;
  auto decoded = [&](int g, int i) {
    return base + static_cast<uint32_t>(kDecodedOffset + (g * kBufs + i) * kTileBytes);
  };
  float* const absmax = reinterpret_cast<float*>(base_ptr + kDecodedOffset + kGroups * kBufs * kTileBytes);
  auto bar = [](uint64_t& b) { return smem_addr(&b); };

  // The block's absmax values, decoded once into shared memory (plain, or double-quantized through the shared
  // table). Each thread issues the loads of up to kAbsmaxLoads values at once, before the tables are in: one
  // memory latency for GPT-2's shapes, where a plain loop paid one per value a thread (3072 x 768 took 25 us).
  const int64_t b0 = first_block(n0, k, w.blocksize);
  const int nblocks = static_cast<int>(end_block(n0, n, k, w.blocksize) - b0);
  float am_scale[kAbsmaxLoads];
  uint32_t am_code[kAbsmaxLoads];
  auto load_absmax = [&](int i0) {
#pragma unroll
    for (int u = 0; u < kAbsmaxLoads; ++u) {
      const int i = i0 + u * kConsumers + static_cast<int>(threadIdx.x);
      if (threadIdx.x >= kConsumers || i >= nblocks) continue;
      if (w.absmax != nullptr) {
        am_scale[u] = __ldg(w.absmax + b0 + i);
      } else {
        am_code[u] = __ldg(w.absmax_q + b0 + i);
        am_scale[u] = __ldg(w.nested + (b0 + i) / kNestedBlockSize);
      }
    }
  };
  auto store_absmax = [&](int i0) {
#pragma unroll
    for (int u = 0; u < kAbsmaxLoads; ++u) {
      const int i = i0 + u * kConsumers + static_cast<int>(threadIdx.x);
      if (i >= nblocks) continue;
      absmax[i] = w.absmax != nullptr ? am_scale[u] : __fadd_rn(__fmul_rn(t.dmap[am_code[u]], am_scale[u]), w.offset);
    }
  };
  load_absmax(0);
  load_tables(t, w.quant_map, w.nested_map);
  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      mbar_init(bar(full_x[s]), 1);  // the producer's arrive.expect_tx; then the bytes
      mbar_init(bar(empty[s]), 4);   // the four warps of the warpgroup that takes the stage
    }
    for (int kt = 0; kt < ktiles; ++kt) mbar_init(bar(full_w[kt]), 1);
    mbar_fence_init();
  }
  __syncthreads();

  if (threadIdx.x >= kConsumers) {  // the producer warp: one thread issues every copy
    if (threadIdx.x == kConsumers) {
      asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(&map_x)) : "memory");
      asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(&map_codes)) : "memory");
      // All the block's codes at once, each k tile on its own barrier: they are no kernel's output, so they load
      // before the programmatic wait. (Through the stage ring, each tile's codes were asked for only two of the
      // warpgroup's tiles ahead, and every tile waited on their latency: 0.5 us a k tile.) x after the wait.
      for (int kt = 0; kt < ktiles; ++kt) {
        mbar_arrive_expect_tx(bar(full_w[kt]), kCodeBytes);  // zero-filled rows past n count too
        tma_load_2d(codes_of(kt), &map_codes, kt * (kBk / 2), n0, bar(full_w[kt]));
      }
      detail::pdl_wait();
      detail::pdl_launch_dependents();
      for (int kt = 0; kt < ktiles; ++kt) {
        const int s = kt % kStages;
        if (kt >= kStages) mbar_wait(bar(empty[s]), static_cast<uint32_t>((kt / kStages - 1) & 1));
        mbar_arrive_expect_tx(bar(full_x[s]), kTileBytes);  // zero-filled rows past m count too
        tma_load_2d(stage_x(s), &map_x, kt * kBk, m0, bar(full_x[s]));
      }
    }
    return;
  }

  for (int i0 = 0;; ) {
    store_absmax(i0);
    i0 += kConsumers * kAbsmaxLoads;
    if (i0 >= nblocks) break;
    load_absmax(i0);
  }
  consumers_sync<kConsumers, 1>();

  const int g = threadIdx.x >> 7;     // this warpgroup takes k tiles g, g + 2, ...
  const int tw = threadIdx.x & 127;   // thread within it
  const int r = tw >> 1, h = tw & 1;  // the weight row (output n0 + r) and k half it decodes
  const bool valid = n0 + r < n;      // a row past n decodes to zeros
  const int64_t row_e = (static_cast<int64_t>(n0) + r) * k + 32 * h;  // flat element of its first code
  const int mine = (ktiles - g + kGroups - 1) / kGroups;             // k tiles of this warpgroup
  // The warpgroup's own barrier (named barriers 2 and 3): its decoded tiles are its business only.
  auto group_sync = [&] {
    if (g == 0) consumers_sync<128, 2>();
    else consumers_sync<128, 3>();
  };
  auto decode_tile = [&](int j) {  // waits for the codes of this warpgroup's tile j, decodes them into its ring
    const int kt = g + kGroups * j;
    mbar_wait(bar(full_w[kt]), 0);
    const float am = valid ? absmax[(row_e + static_cast<int64_t>(kt) * kBk) / w.blocksize - b0] : 0.0f;
    decode<T>(codes_of(kt) + static_cast<uint32_t>(r * 32 + h * 16), am, t, decoded(g, j % kBufs), r, h);
    fence_proxy_async();
  };

  // The output columns of this thread (accumulator layout of m64n64: register 4j + {0, 1} = row lane / 4,
  // columns 8j + 2 (lane % 4) + {0, 1}; 4j + {2, 3}: 8 rows further) and their bias.
  const int lane = tw & 31;
  const int col0 = n0 + 2 * (lane & 3);
  float bias_v[16];
#pragma unroll
  for (int j = 0; j < 8; ++j) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int c = col0 + 8 * j + e;
      bias_v[2 * j + e] = bias != nullptr && g == 0 && c < n ? bias[c] : 0.0f;
    }
  }

  if (mine > 0) decode_tile(0);
  group_sync();
  float acc[32];
#pragma unroll
  for (int e = 0; e < 32; ++e) acc[e] = 0.0f;
  fence_operands(acc);
  for (int j = 0; j < mine; ++j) {
    const int kt = g + kGroups * j;
    const int s = kt % kStages;
    mbar_wait(bar(full_x[s]), static_cast<uint32_t>((kt / kStages) & 1));
    const uint32_t a = stage_x(s), b = decoded(g, j % kBufs);
    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < kBk / 16; ++ks) wgmma_m64n64k16<T>(acc, wg_desc(a + ks * 32), wg_desc(b + ks * 32));
    wgmma_commit();
    // Tile j + 1 decodes, beside tile j's products, into the slot tile j - 1 used: every warp retired that one
    // before the last barrier.
    if (j + 1 < mine) decode_tile(j + 1);
    wgmma_wait<0>();  // tile j retired (the decode took longer): its stage goes back to the producer at once
    if (lane == 0) mbar_arrive(bar(empty[s]));
    group_sync();
  }
  wgmma_wait<0>();
  fence_operands(acc);
  detail::pdl_launch_dependents();  // (the producer has; a block may count only once all its threads have)

  // Warpgroup 1's partial tile into its own decoded tiles (its wgmmas have retired), then warpgroup 0 adds it.
  float* part = reinterpret_cast<float*>(base_ptr + (decoded(1, 0) - base));
  if (g == 1) {
#pragma unroll
    for (int e = 0; e < 32; ++e) part[e * 128 + tw] = acc[e];
  }
  consumers_sync<kConsumers, 1>();
  if (g == 1) return;
#pragma unroll
  for (int e = 0; e < 32; ++e) acc[e] += part[e * 128 + tw];

  detail::pdl_wait();  // (the producer waited already; before this thread's first global write, as launch_pdl asks)
  const int row0 = m0 + 16 * (tw >> 5) + (lane >> 2);
  const bool pairs = n % 2 == 0;  // then every column pair is 4-byte aligned and wholly inside or outside
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int64_t row = row0 + 8 * half;
    if (row >= m) continue;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const int c = col0 + 8 * j;
      float v[2];
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        v[e] = acc[4 * j + 2 * half + e] + bias_v[2 * j + e];
        if (gelu) v[e] = detail::gelu_tanh(to_float(from_float<T>(v[e])));
      }
      if (pairs) {
        if (c < n) {
          *reinterpret_cast<uint32_t*>(y + row * n + c) = bits16(from_float<T>(v[0])) | (bits16(from_float<T>(v[1])) << 16);
        }
      } else {
        if (c < n) y[row * n + c] = from_float<T>(v[0]);
        if (c + 1 < n) y[row * n + c + 1] = from_float<T>(v[1]);
      }
    }
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

bool nf4_wgmma_takes(int64_t k, int64_t blocksize) {
  return k % nf4wg::kBk == 0 && k / nf4wg::kBk <= nf4wg::kMaxTiles && blocksize % 32 == 0 &&
         (nf4wg::kBn * k + blocksize - 1) / blocksize + 1 <= nf4wg::kMaxAbsmax &&
         int8_wgmma_available();
}

int launch_nf4_wgmma(const void* x, const Nf4View& w, const float* bias, void* y, int64_t m, DType dtype,
                     bool gelu_tanh, cudaStream_t stream) {
  if (const int s = check_view(w); s != kLaunchOk) return s;
  if (m <= 0 || (m + nf4wg::kBm - 1) / nf4wg::kBm > 65535 || w.n > INT32_MAX || w.k > INT32_MAX) return kLaunchBadShape;
  if (x == nullptr || y == nullptr) return kLaunchBadPointer;
  if (dtype != DType::kF16 && dtype != DType::kBF16) return kLaunchBadDtype;
  if (!nf4_wgmma_takes(w.k, w.blocksize) || !aligned16(x) || !aligned16(w.packed)) return kLaunchUnsupported;
  CUtensorMap map_x{}, map_codes{};
  if (!tensor_map_2d(&map_x, x, m, w.k, 2, nf4wg::kBm) ||
      !tensor_map_2d(&map_codes, w.packed, w.n, w.k / 2, 1, nf4wg::kBn, nf4wg::kBk / 2, false)) {
    return kLaunchUnsupported;
  }
  const dim3 grid(static_cast<unsigned>((w.n + nf4wg::kBn - 1) / nf4wg::kBn),
                  static_cast<unsigned>((m + nf4wg::kBm - 1) / nf4wg::kBm));
  const auto run = [&](auto* typed_y, bool (&opted)[64]) {
    using T = std::remove_pointer_t<decltype(typed_y)>;
    const int st = opt_in_smem(reinterpret_cast<const void*>(k_nf4_wgmma<T>), nf4wg::kSmemBytes, opted);
    if (st != kLaunchOk) return st;
    detail::launch_pdl(k_nf4_wgmma<T>, grid, nf4wg::kThreads, nf4wg::kSmemBytes, stream, map_x, map_codes, w, bias, typed_y,
                       m,
                       gelu_tanh);
    return detail::launch_result();
  };
  static bool opted_f16[64] = {}, opted_bf16[64] = {};
  return dtype == DType::kF16 ? run(static_cast<__half*>(y), opted_f16)
                              : run(static_cast<__nv_bfloat16*>(y), opted_bf16);
}

}  // namespace evalsvc::kernels::cuda
