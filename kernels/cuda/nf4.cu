// NF4 kernels of SPEC section 2 (bitsandbytes Linear4bit, quant_type nf4): dequantization, a batch-1 GEMV that
// streams the packed weight, and a GEMM that dequantizes weight tiles into shared memory for the tensor cores.
// Double-quantized absmax values are decoded on the fly: absmax[b] = dynamic_map[absmax_q[b]] * nested[b/256]
// + offset (bitsandbytes' dequantize_blockwise, then + offset), with explicit _rn operations so that no fused
// multiply-add makes the device disagree with the CPU reference in the last bit.
#include <mma.h>

#include <algorithm>
#include <utility>

#include "common.cuh"
#include "evalsvc/kernels/codebooks.h"

namespace evalsvc::kernels::cuda {
namespace {

using detail::bits16;
using detail::from_float;
using detail::store8;
using detail::to_float;

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

/// k_nf4_dequantize32's loop: w's codes as 4-byte words of 8, a warp taking 32 lanes x 4 words (1,024 codes) a
/// trip, lane l words l, l + 32, l + 64, l + 96 of its warp's span, from thread `first`'s warp in steps of `step`
/// threads. So each load instruction reads 128 contiguous bytes and each 16-byte store instruction writes 512: with
/// a thread's 32 codes contiguous instead (one 16-byte load), each store instruction wrote half of each of 32
/// sectors, and NF4's batch-1 forward took 0.521-0.523 ms against 0.510-0.513 (H200, docs/perf.md).
///
/// The generic loop (fp32 copies, block sizes other than 64; dequantize32_products below takes the rest). Where
/// blocksize is a power of two up to 1,024, the 4 to 32 absmax blocks a trip covers are decoded one a lane and
/// passed round by shuffles, not decoded once a word with a division; each code's offset into the level table is
/// one byte permute. ~44 SASS instructions a word of 8 codes where there were ~61 (sm_90a, fp16 out).
template <typename T>
__device__ __forceinline__ void dequantize32_groups(const Nf4View& w, const Nf4Tables& t, T* __restrict__ out,
                                                    uint32_t first, uint32_t step) {
  const uint32_t words = static_cast<uint32_t>(w.n * w.k / 8);
  const uint32_t per_block = static_cast<uint32_t>(w.blocksize / 8);  // >= 4 (blocksize % 32 == 0)
  const uint32_t nblocks = (words + per_block - 1) / per_block;
  // A trip spans 128 words from a multiple of 128, so for per_block a power of two up to 128 its blocks are
  // (base >> shift) + 0 .. 127 >> shift, at most 32 of them.
  const bool warp_absmax = (per_block & (per_block - 1)) == 0 && per_block <= 128;
  const uint32_t shift = __ffs(per_block) - 1;
  const uint32_t* src = reinterpret_cast<const uint32_t*>(w.packed);
  const char* level = reinterpret_cast<const char*>(t.level);
  const uint32_t lane = first & 31u;
  for (uint32_t base = (first & ~31u) * 4; base < words; base += step * 4) {  // warp-uniform: every lane shuffles
    uint32_t p[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const uint32_t i = base + 32 * j + lane;
      // Evict-first: the codes are read once, and in the prefetch the next block's products read the dense copies
      // from L2 only if these do not push them out (batch-1 NF4 0.541-0.554 ms against 0.574-0.576, H200).
      p[j] = i < words ? __ldcs(src + i) : 0u;
    }
    float am[4];
    if (warp_absmax) {
      const uint32_t b = (base >> shift) + lane;
      const float mine = b < nblocks ? block_absmax(w, t, b) : 0.0f;
#pragma unroll
      for (int j = 0; j < 4; ++j) am[j] = __shfl_sync(0xFFFFFFFFu, mine, static_cast<int>((32 * j + lane) >> shift));
    } else {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const uint32_t i = base + 32 * j + lane;
        am[j] = i < words ? block_absmax(w, t, i / per_block) : 0.0f;
      }
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const uint32_t i = base + 32 * j + lane;
      if (i >= words) break;
      // Byte b of hi / lo is 4 x the code of element 2b / 2b + 1 (little-endian: byte b of the word holds
      // elements 2b and 2b + 1, the even one in the high nibble), i.e. its byte offset into t.level.
      const uint32_t hi = (p[j] >> 2) & 0x3C3C3C3Cu;
      const uint32_t lo = (p[j] << 2) & 0x3C3C3C3Cu;
      float v[8];
#pragma unroll
      for (int b = 0; b < 4; ++b) {
        v[2 * b] = __fmul_rn(*reinterpret_cast<const float*>(level + __byte_perm(hi, 0u, 0x4440u + b)), am[j]);
        v[2 * b + 1] = __fmul_rn(*reinterpret_cast<const float*>(level + __byte_perm(lo, 0u, 0x4440u + b)), am[j]);
      }
      store8(out + 8 * static_cast<size_t>(i), v);
    }
  }
}

// ---- dequantize through a table of products (blocksize 64, fp16/bf16) --------------------------------------

/// Two values rounded to T in one word, lo at the lower address (one F2FP instruction for fp16/bf16 on sm_90).
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  return bits16(from_float<T>(lo)) | (bits16(from_float<T>(hi)) << 16);
}

/// Shared-memory accesses by 32-bit shared address (what the byte permutes below compute). Volatile, so that they
/// stay on their side of the __syncwarp()s that order a warp's table writes and reads.
__device__ __forceinline__ uint32_t lds_u16(uint32_t addr) {
  unsigned short v;
  asm volatile("ld.shared.u16 %0, [%1];" : "=h"(v) : "r"(addr));
  return v;
}
__device__ __forceinline__ void sts_v4(uint32_t addr, const uint32_t (&v)[4]) {
  asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};" ::"r"(addr), "r"(v[0]), "r"(v[1]), "r"(v[2]), "r"(v[3])
               : "memory");
}

/// Per warp, the products of one trip: 16 absmax blocks x 16 codes, 16-bit values. 512-byte aligned (the byte
/// permutes of dequantize32_products assume it).
constexpr int kProductTableWords = 128;
struct alignas(512) Nf4ProductTables {
  uint32_t warp[kBackgroundBlockThreads / 32][kProductTableWords];
};

/// dequantize32_groups for blocksize 64 (GPT-2's, and bitsandbytes' default) and 16-bit copies, the prefetch's case.
/// At batch 1 this loop runs on a side stream beside the block being computed and its instructions are what it
/// costs the forward, so it does the multiplications once a block instead of once a value: each trip (128 words,
/// 16 absmax blocks), the warp writes the 16 products from_float<T>(level[c] x absmax) of each of its blocks into
/// a table of its own (block slot s at byte 32 s, code c at 2 c; the same roundings as everywhere else, so the same
/// bits), and then each value is one 16-bit shared load. A value's table address is one byte permute: byte b of
/// hi (lo) holds the slot's low three bits and 2 x the code of element 2b (2b + 1), and the permute takes the
/// other three bytes from the table's address. Lanes 8q .. 8q + 7 read slot 4j + q of a word j, one 32-byte row
/// each: the 32 lanes hit 32 different banks.
/// ~27 SASS instructions a word of 8 codes and ~75 a trip (sm_90a, fp16), against ~44 and ~40 for the generic
/// loop and ~61 a word before it; NF4's batch-1 forward on an H200 in docs/perf.md, "The NF4 decode in fewer
/// instructions". A branch for whole trips without bounds checks (one address, immediate offsets) ran no fewer
/// instructions and was no faster (same call: 0.472-0.474 ms against 0.470-0.472).
template <typename T>
__device__ __forceinline__ void dequantize32_products(const Nf4View& w, const Nf4Tables& t, T* __restrict__ out,
                                                      uint32_t first, uint32_t step, uint32_t* table) {
  static_assert(sizeof(T) == 2, "16-bit copies only");
  const uint32_t words = static_cast<uint32_t>(w.n * w.k / 8);
  const uint32_t nblocks = (words + 7) / 8;
  const uint32_t* src = reinterpret_cast<const uint32_t*>(w.packed);
  uint4* dst = reinterpret_cast<uint4*>(out);  // a word's 8 values: 16 bytes
  const uint32_t lane = first & 31u;
  // This lane's part of the table: block slot lane / 2, codes 8 (lane % 2) .. + 7.
  float level[8];
#pragma unroll
  for (int e = 0; e < 8; ++e) level[e] = t.level[(lane & 1u) * 8 + e];
  const uint32_t tab = static_cast<uint32_t>(__cvta_generic_to_shared(table));
  const uint32_t mine = tab + (lane >> 1) * 32 + (lane & 1u) * 16;
  // Word j of a trip is in slot 4j + lane / 8: bits 0-2 of the slot go into bits 5-7 of each byte of hi and lo,
  // bit 3 into the address's second byte.
  uint32_t slot_bits[4], slot_base[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const uint32_t slot = 4 * j + (lane >> 3);
    slot_bits[j] = ((slot & 7u) << 5) * 0x01010101u;
    slot_base[j] = tab + ((slot >> 3) << 8);
  }
  auto decode = [&](uint32_t p, int j) {
    // Little-endian: byte b of p holds elements 2b (high nibble) and 2b + 1.
    const uint32_t hi = ((p >> 3) & 0x1E1E1E1Eu) | slot_bits[j];
    const uint32_t lo = ((p << 1) & 0x1E1E1E1Eu) | slot_bits[j];
    uint32_t v[4];
#pragma unroll
    for (int b = 0; b < 4; ++b) {
      const uint32_t even = lds_u16(__byte_perm(hi, slot_base[j], 0x7650u + b));
      const uint32_t odd = lds_u16(__byte_perm(lo, slot_base[j], 0x7650u + b));
      v[b] = __byte_perm(even, odd, 0x5410u);
    }
    return make_uint4(v[0], v[1], v[2], v[3]);
  };
  for (uint32_t base = (first & ~31u) * 4; base < words; base += step * 4) {  // warp-uniform
    uint32_t p[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const uint32_t i = base + 32 * j + lane;
      p[j] = i < words ? __ldcs(src + i) : 0u;  // evict-first, as above
    }
    const uint32_t b = (base >> 3) + (lane >> 1);
    const float am = b < nblocks ? block_absmax(w, t, b) : 0.0f;
    uint32_t products[4];
#pragma unroll
    for (int q = 0; q < 4; ++q) products[q] = pack2<T>(__fmul_rn(level[2 * q], am), __fmul_rn(level[2 * q + 1], am));
    __syncwarp();  // every lane has read the last trip's table
    sts_v4(mine, products);
    __syncwarp();
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const uint32_t i = base + 32 * j + lane;
      if (i >= words) break;
      dst[i] = decode(p[j], j);
    }
  }
}

/// The capped kernels' loop: through the product tables where they apply, else the generic loop.
template <typename T>
__device__ __forceinline__ void dequantize32_any(const Nf4View& w, const Nf4Tables& t, T* __restrict__ out,
                                                 uint32_t first, uint32_t step, Nf4ProductTables& pt) {
  if constexpr (sizeof(T) == 2) {
    if (w.blocksize == 64 && blockDim.x <= kBackgroundBlockThreads) {
      dequantize32_products(w, t, out, first, step, pt.warp[threadIdx.x >> 5]);
      return;
    }
  }
  dequantize32_groups(w, t, out, first, step);
}

/// The same values, 32 codes a thread a trip (four 4-byte loads, four 8-value stores): for a capped grid (launch
/// max_blocks > 0), whose few blocks must each move many bytes per trip to keep up. For n*k % 32 == 0,
/// blocksize % 32 == 0 and 16-byte aligned pointers; 32-bit indices (n*k / 8 < 2^31).
template <typename T>
__global__ void k_nf4_dequantize32(Nf4View w, T* __restrict__ out) {
  __shared__ Nf4Tables t;
  __shared__ Nf4ProductTables pt;
  load_tables(t, w.quant_map, w.nested_map);
  __syncthreads();
  dequantize32_any(w, t, out, blockIdx.x * blockDim.x + threadIdx.x, gridDim.x * blockDim.x, pt);
}

/// Several weights' k_nf4_dequantize32 in one launch: weight j takes blocks [first[j], first[j + 1]) of the grid,
/// so a block's weight is known before its loop and the body is k_nf4_dequantize32's. The model's prefetch makes a
/// transformer block's four dense weights at once: four launches, each loading the tables and paying its launch
/// and ramp (7-10 us each on a side stream that had ~40 us a layer at batch 1, H200 ncu), became one.
constexpr int kNf4BatchMax = 4;
struct Nf4Batch {
  Nf4View w[kNf4BatchMax];
  void* out[kNf4BatchMax];
  unsigned first[kNf4BatchMax + 1];
  int count;
};

template <typename T>
__global__ void k_nf4_dequantize32_batch(Nf4Batch b) {
  __shared__ Nf4Tables t;
  __shared__ Nf4ProductTables pt;
  load_tables(t, b.w[0].quant_map, b.w[0].nested_map);  // the launcher checked that all share them
  __syncthreads();
#pragma unroll
  for (int j = 0; j < kNf4BatchMax; ++j) {
    if (j >= b.count || blockIdx.x < b.first[j] || blockIdx.x >= b.first[j + 1]) continue;
    const uint32_t blocks = b.first[j + 1] - b.first[j];
    dequantize32_any(b.w[j], t, static_cast<T*>(b.out[j]), (blockIdx.x - b.first[j]) * blockDim.x + threadIdx.x,
                     blocks * blockDim.x, pt);
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

int check_view(const Nf4View& w) {
  if (w.n <= 0 || w.k <= 0) return kLaunchBadShape;
  if (w.blocksize < 2 || w.blocksize % 2 != 0) return kLaunchBadBlocksize;
  if (w.packed == nullptr) return kLaunchBadPointer;
  if (w.absmax == nullptr && (w.absmax_q == nullptr || w.nested == nullptr)) return kLaunchBadPointer;
  return kLaunchOk;
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

/// Whether k_nf4_dequantize32 (and its batch) takes w into out.
bool takes_32(const Nf4View& w, const void* out) {
  return (w.n * w.k) % 32 == 0 && w.blocksize % 32 == 0 && w.n * w.k / 8 <= INT32_MAX && aligned16(w.packed) &&
         aligned16(out);
}

/// A dequantization's block size and grid cap: capped (max_blocks > 0) in blocks of kBackgroundBlockThreads,
/// else blocks of 256, as many as the size needs.
std::pair<int, int64_t> dequantize_launch_shape(int max_blocks) {
  return max_blocks > 0 ? std::pair<int, int64_t>{kBackgroundBlockThreads, max_blocks} : std::pair<int, int64_t>{256, 8192};
}

}  // namespace

int launch_nf4_dequantize(const Nf4View& w, void* out, DType dtype, cudaStream_t stream, int max_blocks) {
  if (const int s = check_view(w); s != kLaunchOk) return s;
  if (out == nullptr) return kLaunchBadPointer;
  if (max_blocks < 0) return kLaunchBadShape;
  // Capped: blocks of kBackgroundBlockThreads. In blocks of 128-512 threads (same thread budget) NF4's batch-1
  // forward took 4-19 us longer on an H200 (docs/perf.md), int8's 5-18 us less (launch_int8_dequantize).
  const auto [threads, cap] = dequantize_launch_shape(max_blocks);
  if (max_blocks > 0 && takes_32(w, out)) {
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

int launch_nf4_dequantize_batch(const Nf4View* w, void* const* out, int count, DType dtype, cudaStream_t stream,
                                int max_blocks) {
  if (count < 1 || count > kNf4BatchMax || max_blocks < 0) return kLaunchBadShape;
  if (w == nullptr || out == nullptr) return kLaunchBadPointer;
  Nf4Batch b{};
  b.count = count;
  int64_t groups[kNf4BatchMax] = {};
  int64_t total = 0;
  for (int j = 0; j < count; ++j) {
    if (const int s = check_view(w[j]); s != kLaunchOk) return s;
    if (out[j] == nullptr) return kLaunchBadPointer;
    if (!takes_32(w[j], out[j]) || w[j].quant_map != w[0].quant_map || w[j].nested_map != w[0].nested_map) {
      return kLaunchUnsupported;
    }
    b.w[j] = w[j];
    b.out[j] = out[j];
    groups[j] = w[j].n * w[j].k / 32;
    total += groups[j];
  }
  // The grid: as for one weight (blocks of kBackgroundBlockThreads up to max_blocks, or of 256), shared out in
  // proportion to the weights' sizes, at least one block each.
  const auto [threads, cap] = dequantize_launch_shape(max_blocks);
  const int64_t grid = std::max<int64_t>(detail::grid_for(total, threads, cap), count);
  int64_t first = 0;
  for (int j = 0; j < count; ++j) {
    b.first[j] = static_cast<unsigned>(first);
    const int64_t need = (groups[j] + threads - 1) / threads;
    const int64_t share = std::max<int64_t>(1, std::min(need, grid * groups[j] / total));
    first += share;
  }
  b.first[count] = static_cast<unsigned>(first);
  EVALSVC_DISPATCH_FLOAT(dtype, T, k_nf4_dequantize32_batch<T><<<static_cast<unsigned>(first), threads, 0, stream>>>(b));
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
