#pragma once
// Device helpers shared by the qbench kernels (kernels/cuda/*.cu): dtype conversion, reductions, launch checks.
#include <cstdint>
#include <cstdio>
#include <type_traits>
#include <utility>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include "evalsvc/kernels/cuda_launchers.h"

namespace evalsvc::kernels::cuda::detail {

// ---- stream flags (stream_flag.cu) ----------------------------------------------------------------------------

/// Publishes `value` at `flag` for stream_flag_wait on another stream: a release store at GPU scope, so every
/// write this thread's stream made before it is visible to whoever reads the value.
__device__ __forceinline__ void stream_flag_store(int* flag, int value) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 700
  asm volatile("st.release.gpu.global.s32 [%0], %1;\n" ::"l"(flag), "r"(value) : "memory");
#else
  __threadfence();
  *reinterpret_cast<volatile int*>(flag) = value;
#endif
}

__device__ __forceinline__ int stream_flag_load(const int* flag) {
  int v;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 700
  asm volatile("ld.acquire.gpu.global.s32 %0, [%1];\n" : "=r"(v) : "l"(flag) : "memory");
#else
  v = *reinterpret_cast<const volatile int*>(flag);
  __threadfence();
#endif
  return v;
}

__device__ __forceinline__ unsigned long long global_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

/// Returns once *flag == value. The writer's work only waits on work queued before this kernel, so the value
/// comes unless that work failed; after 10 s the kernel traps (a sticky CUDA error naming no hang) rather than
/// hold the device forever. One thread of a grid calls it: the rest of the grid is free to finish.
__device__ __forceinline__ void stream_flag_wait(const int* flag, int value) {
  if (stream_flag_load(flag) == value) return;
  const unsigned long long start = global_ns();
  while (stream_flag_load(flag) != value) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 700
    __nanosleep(64);
#endif
    if (global_ns() - start > 10'000'000'000ull) {
      printf("qbench: stream flag %p still %d after 10 s waiting for %d\n", static_cast<const void*>(flag),
             stream_flag_load(flag), value);
      __trap();
    }
  }
}

// ---- programmatic dependent launch (sm_90+) ------------------------------------------------------------------
// At batch 1 a forward is ~100 short kernels in a chain, and each waits for the one before it to finish and
// flush before the GPU even starts scheduling it: a fixed gap per launch. Launched through launch_pdl, a
// kernel may be scheduled once every block of the kernel before it has called pdl_launch_dependents (or
// exited); it sets itself up (barriers, tensor maps, weight tiles: nothing another kernel writes) and then
// waits in pdl_wait for that kernel's completion and writes. Only kernels that call pdl_wait before their
// first read of another kernel's output and before their first global write may go through launch_pdl.

/// Blocks until the grid this one was launched behind has completed and its writes are visible
/// (griddepcontrol.wait); returns at once for a kernel launched normally.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

/// Lets the next kernel in the stream, when launched through launch_pdl, be scheduled now (it still waits for
/// this one in its pdl_wait). Called right after pdl_wait, so at most one kernel is scheduled ahead.
__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

/// kernel<<<grid, block, smem, stream>>>(args...), with programmatic stream serialization when
/// programmatic_launch() says so (cuda_launchers.h). The launch's status is left for launch_result().
template <typename... Params, typename... Args>
inline void launch_pdl(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                       Args&&... args) {
  cudaLaunchAttribute attr{};
  attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cfg.attrs = &attr;
  cfg.numAttrs = programmatic_launch() ? 1 : 0;
  cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}

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

/// GELU, tanh approximation (GPT-2's "gelu_new"), in fp32 with PyTorch's constants, computed as x * sigmoid(2u)
/// = x / (1 + exp(-2u)), the same function as 0.5 x (1 + tanh(u)), with the fast exp2 and reciprocal: two
/// special-function operations where tanhf takes ~20 instructions and branches. tanhf made GELU cost the int8
/// GEMM's epilogue 27% of mlp.c_fc's time (64 of 235 us at 32,768 tokens, H200; cuBLASLt's GELU epilogue adds
/// 12%). Within 1e-5 relative of the exact function wherever |GELU| is above fp16's smallest normal (ctest
/// CudaFusedGelu.EpilogueGeluIsTheTanhGelu), far below the fp16 / bf16 outputs' rounding; where 1 + tanh(u)
/// cancels (x < -2) it is more accurate than the tanh form in fp32, which returns 0 from x < -5.5 on. Large
/// negative x: exp overflows to inf and the quotient is -0, GELU's limit.
__device__ __forceinline__ float gelu_tanh(float x) {
  constexpr float kBeta = 0.7978845608028654f;  // sqrt(2 / pi)
  constexpr float kKappa = 0.044715f;
  const float u = kBeta * (x + kKappa * x * x * x);
  return __fdividef(x, 1.0f + __expf(-2.0f * u));
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

/// Unpacks a 16-byte vector of 8 fp16 or bf16 values to fp32.
template <typename T>
__device__ __forceinline__ void unpack8(const uint4& u, float (&f)[8]) {
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    if constexpr (std::is_same_v<T, __half>) {
      const float2 p = __half22float2(*reinterpret_cast<const __half2*>(&w[i]));
      f[2 * i] = p.x;
      f[2 * i + 1] = p.y;
    } else {
      const float2 p = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&w[i]));
      f[2 * i] = p.x;
      f[2 * i + 1] = p.y;
    }
  }
}

/// The int8 code of x at scale s: rint(x / s) (half to even, as torch.round) clamped to +-127, as int8 bits.
/// Shared by every kernel that writes int8 activation codes (both quantizers, k_quantize_rows_warp's Enc, the
/// fused add + LayerNorm + quantization), so their codes are the same by construction.
struct Int8Encoder {
  static constexpr float kMax = 127.0f;
  __device__ static uint32_t encode(float x, float s) {
    // One conversion with round-half-even (cvt.rni) then an integer clamp: the codes of rintf, clamp and
    // convert for every number, with one conversion-unit instruction fewer an element. (A NaN input, which
    // the model never feeds, now gives 0 instead of -127.)
    const int r = max(-127, min(127, __float2int_rn(x / s)));
    return static_cast<uint32_t>(static_cast<uint8_t>(static_cast<int8_t>(r)));
  }
};

/// The E4M3 code of x at scale s, shared like Int8Encoder.
struct Fp8Encoder {
  static constexpr float kMax = 448.0f;
  __device__ static uint32_t encode(float x, float s) { return __nv_cvt_float_to_fp8(x / s, __NV_SATFINITE, __NV_E4M3); }
};

/// Marks column c as an outlier column (LLM.int8): the flag is read first, so that a column full of outliers
/// does not serialise on one atomic.
__device__ __forceinline__ void flag_outlier_column(int32_t* flags, int64_t c) {
  int32_t* f = flags + c;
  if (*reinterpret_cast<volatile int32_t*>(f) == 0) atomicOr(f, 1);
}

/// Marks column c in an outlier bit mask (bit c % 32 of word c / 32), reading the word first so that a column
/// full of outliers does not serialise on one atomic.
__device__ __forceinline__ void flag_outlier_bit(uint32_t* mask, int64_t c) {
  uint32_t* w = mask + (c >> 5);
  const uint32_t bit = 1u << (c & 31);
  if ((*reinterpret_cast<volatile uint32_t*>(w) & bit) == 0) atomicOr(w, bit);
}

/// One warp turns the outlier bit mask of k columns into ascending indices idx[0..*count) and clears the mask:
/// each lane takes four consecutive words (128 columns) a trip, so GPT-2's widths (24 and 96 words) take one
/// trip, one L2 round trip and a warp prefix sum, with no block barrier. The words are read through L2
/// (__ldcg): other blocks set them.
__device__ __forceinline__ void compact_mask_warp(uint32_t* mask, int64_t k, int32_t* idx, int32_t* count) {
  const int lane = threadIdx.x & 31;
  const int64_t words = (k + 31) / 32;
  int base = 0;
  for (int64_t w0 = 0; w0 < words; w0 += 128) {
    uint32_t b[4];
    int n = 0;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t w = w0 + lane * 4 + i;
      b[i] = w < words ? __ldcg(mask + w) : 0u;
      n += __popc(b[i]);
    }
    int incl = n;  // inclusive prefix sum over the lanes
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int v = __shfl_up_sync(0xffffffffu, incl, o);
      if (lane >= o) incl += v;
    }
    int pos = base + incl - n;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t w = w0 + lane * 4 + i;
      if (b[i] != 0) mask[w] = 0u;
      for (uint32_t bits = b[i]; bits != 0; bits &= bits - 1) idx[pos++] = static_cast<int32_t>(w * 32 + __ffs(bits) - 1);
    }
    base += __shfl_sync(0xffffffffu, incl, 31);
  }
  if (lane == 0) *count = base;
}

/// Where k_quantize_rows_warp's last block leaves LLM.int8's outlier columns: with done set, the kernel's
/// outlier_flags is a bit mask of ceil(k / 32) words and done a counter of finished blocks (state, zero on entry,
/// left zero); the ascending indices go to idx [k] and their number to *count. done == nullptr: outlier_flags
/// is int32 [k] flags the caller compacts, and they stay set.
struct OutlierList {
  int32_t* done = nullptr;
  int32_t* idx = nullptr;
  int32_t* count = nullptr;
};

/// The end of a kernel that flags outlier columns into the bit mask of `list` (every thread of the block calls
/// it, as the kernel's last step): the block counts itself done and the last block to finish (as CUDA's
/// threadfence reduction sample does) compacts the mask of k columns with one warp into list.idx / *list.count
/// and clears the mask and the counter. flagged: whether this thread set mask bits; only those threads fence,
/// so without outliers no store waits.
__device__ __forceinline__ void finish_outlier_list(bool flagged, uint32_t* mask, int64_t k, const OutlierList& list) {
  __shared__ bool last;
  if (flagged) __threadfence();  // this thread's mask bits (atomics, at L2) before the block's count
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(list.done, 1) == static_cast<int>(gridDim.x) - 1;
  __syncthreads();
  if (!last || threadIdx.x >= 32) return;
  __threadfence();  // every other block's bits, fenced before its count, are visible from here on
  compact_mask_warp(mask, k, list.idx, list.count);
  if (threadIdx.x == 0) *list.done = 0;
}

/// Enc's codes of 8 values at scale s (all 0 for s = 0, a row of zeros), packed for one 8-byte store: what every
/// kernel that writes per-token codes stores (the quantizers here, the quantizing LayerNorms in norm.cu).
/// One test of s for the eight (a row has one scale), int8 codes packed by byte permutes (three for four codes,
/// instead of a mask, a shift and an or each) and E4M3 codes converted two at a time (cvt.rn.satfinite.e4m3x2).
template <typename Enc>
__device__ __forceinline__ uint2 encode8(const float (&v)[8], float s) {
  if (!(s > 0.0f)) return make_uint2(0u, 0u);
  if constexpr (std::is_same_v<Enc, Int8Encoder>) {
    int r[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) r[e] = max(-127, min(127, __float2int_rn(v[e] / s)));
    // Byte 0 of each code, in order: two codes a permute, then the two pairs into one word.
    const uint32_t lo = __byte_perm(__byte_perm(r[0], r[1], 0x0040), __byte_perm(r[2], r[3], 0x0040), 0x5410);
    const uint32_t hi = __byte_perm(__byte_perm(r[4], r[5], 0x0040), __byte_perm(r[6], r[7], 0x0040), 0x5410);
    return make_uint2(lo, hi);
  } else {
    static_assert(std::is_same_v<Enc, Fp8Encoder>, "an encoder encode8 knows");
    uint32_t w[4];
#pragma unroll
    for (int p = 0; p < 4; ++p) {
      w[p] = __nv_cvt_float2_to_fp8x2(make_float2(v[2 * p] / s, v[2 * p + 1] / s), __NV_SATFINITE, __NV_E4M3);
    }
    return make_uint2(w[0] | (w[1] << 16), w[2] | (w[3] << 16));
  }
}

/// encode8 value by value, with the scale tested for each: what LLM.int8's quantizer (k_quantize_rows_warp with
/// kOutliers) still uses. The same bits as encode8 (the fused LLM.int8 LayerNorm, which takes encode8, is tested
/// against it); only encode8's speed was measured, on the other kernels.
template <typename Enc>
__device__ __forceinline__ uint2 encode8_plain(const float (&v)[8], float s) {
  uint32_t lo = 0, hi = 0;
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    const uint32_t c = s > 0.0f ? Enc::encode(v[e], s) : 0u;
    if (e < 4) lo |= c << (8 * e);
    else hi |= c << (8 * (e - 4));
  }
  return make_uint2(lo, hi);
}

/// Per-token quantization with WPR warps per row, for fp16/bf16 rows of k % 8 == 0 and k <= 256 * VPL * WPR: the
/// row is read once, with 16-byte loads, into registers (VPL vectors of 8 per lane, consecutive lanes on
/// consecutive vectors); absmax by warp shuffles (and, with WPR > 1, through shared memory); then each 8 codes
/// leave as one 8-byte store. Enc supplies kMax (127 or 448) and encode(x, scale) -> code bits; the arithmetic
/// is the per-element kernels' (scale = absmax / kMax, code of x / scale), so the codes are identical.
/// threshold > 0 (LLM.int8): the absmax skips |x| >= threshold, and those elements' columns are flagged in
/// outlier_flags (not null then; cleared beforehand). Their codes are written like any other: a column is an
/// outlier when any row says so, which no single row can know, so zeroing the outlier columns is left to the
/// consumer (the GEMM epilogue subtracts their integer products; quantize_per_token_int8 zeroes them
/// afterwards). With list.done set, the flags are a bit mask and the last block to finish (counted on list.done,
/// as CUDA's threadfence reduction sample does) compacts them with one warp into list.idx / list.count and
/// clears them and the counter: the flag clearing and the compaction were two launches of their own. Only lanes
/// that flagged something fence before the count, so without outliers no store waits. A block is 8 warps,
/// 8 / WPR rows. kOutliers = false (launched for threshold <= 0: W8A8, FP8) leaves out the second running max,
/// the select and the outlier code, and packs with encode8: 1.20x (int8) and 1.23x (E4M3) as fast at
/// 65,536 x 3,072 on an H200, at 3.4-3.8 TB/s (docs/perf.md). (The one-block-per-row kernels reached about 1 TB/s at
/// 32,768 rows. One warp per 3,072-wide row held 12 vectors a lane, 74-80 registers: 24 warps an SM, and ncu
/// had it latency-bound at 31% of DRAM bandwidth and 53% of issue slots, 133-169 us at 32,768 rows on an H200.)
template <typename T, int VPL, int WPR, typename Enc, bool kOutliers = true>
__global__ void __launch_bounds__(256) k_quantize_rows_warp(const T* __restrict__ x, int64_t t, int64_t k,
                                                            float threshold, int32_t* outlier_flags,
                                                            uint8_t* __restrict__ q, float* __restrict__ scale,
                                                            OutlierList list) {
  static_assert(8 % WPR == 0, "a block of 8 warps holds whole rows");
  pdl_wait();  // x comes from the kernel before
  pdl_launch_dependents();
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int w = warp % WPR;  // this warp's part of its row
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (8 / WPR) + warp / WPR;
  const bool valid = row < t;  // no early return: with WPR > 1 every warp meets the barrier below
  const int nvec = valid ? static_cast<int>(k >> 3) : 0;
  const uint4* xr = reinterpret_cast<const uint4*>(x + (valid ? row : 0) * k);
  const bool skip_outliers = kOutliers && threshold > 0.0f;
  uint4 v[VPL];
  float amax = 0.0f;     // over the elements below the threshold (all of them without one)
  float amax_all = 0.0f; // over all: a lane looks for its outliers only when this says it has some
#pragma unroll
  for (int i = 0; i < VPL; ++i) {
    const int j = lane + 32 * (w + WPR * i);
    if (j < nvec) {
      v[i] = xr[j];
      float f[8];
      unpack8<T>(v[i], f);
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const float a = fabsf(f[e]);
        if constexpr (kOutliers) {
          amax_all = fmaxf(amax_all, a);
          amax = !skip_outliers || a < threshold ? fmaxf(amax, a) : amax;  // a select, no branch
        } else {
          amax = fmaxf(amax, a);
        }
      }
    }
  }
  // fn(j, f) for each vector j of the row this lane holds, unpacked to f.
  auto each_vector = [&](auto&& fn) {
#pragma unroll
    for (int i = 0; i < VPL; ++i) {
      const int j = lane + 32 * (w + WPR * i);
      if (j < nvec) {
        float f[8];
        unpack8<T>(v[i], f);
        fn(j, f);
      }
    }
  };
  // Flagging in the loop above (a branch and an atomic per element) made the LLM.int8 quantizer 1.6x slower
  // than the plain one even with no outlier at all (218 against 133 us at 32,768 x 3072, H200).
  const bool flagged = skip_outliers && amax_all >= threshold;  // skip_outliers is false without kOutliers
  if (flagged) {
    uint32_t* mask = list.done != nullptr ? reinterpret_cast<uint32_t*>(outlier_flags) : nullptr;
    each_vector([&](int j, const float (&f)[8]) {
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        if (fabsf(f[e]) >= threshold) {
          if (mask != nullptr) flag_outlier_bit(mask, 8 * j + e);
          else flag_outlier_column(outlier_flags, 8 * j + e);
        }
      }
    });
  }
  amax = warp_max(amax);
  if constexpr (WPR > 1) {
    __shared__ float part[8];
    if (lane == 0) part[warp] = amax;
    __syncthreads();
    const int first = warp - w;
#pragma unroll
    for (int p = 0; p < WPR; ++p) amax = fmaxf(amax, part[first + p]);
  }
  if (valid) {
    const float s = amax / Enc::kMax;
    if (w == 0 && lane == 0) scale[row] = s;
    uint2* qr = reinterpret_cast<uint2*>(q + row * k);
    if constexpr (kOutliers) each_vector([&](int j, const float (&f)[8]) { qr[j] = encode8_plain<Enc>(f, s); });
    else each_vector([&](int j, const float (&f)[8]) { qr[j] = encode8<Enc>(f, s); });
  }
  if (kOutliers && list.done != nullptr) {
    finish_outlier_list(flagged, reinterpret_cast<uint32_t*>(outlier_flags), k, list);
  }
}

/// Launches k_quantize_rows_warp with WPR warps per row (grid and template for rows up to 1,024 * WPR wide).
template <typename Enc, int WPR>
inline void launch_quantize_rows_wpr(const void* x, bool f16, int64_t t, int64_t k, float threshold, int32_t* flags,
                                     uint8_t* q, float* scale, OutlierList list, cudaStream_t stream) {
  constexpr int kRowsPerBlock = 8 / WPR;
  const unsigned grid = static_cast<unsigned>((t + kRowsPerBlock - 1) / kRowsPerBlock);
  const auto launch = [&](auto outliers) {
    constexpr bool kOutliers = decltype(outliers)::value;
    if (f16) {
      launch_pdl(k_quantize_rows_warp<__half, 4, WPR, Enc, kOutliers>, grid, 256, 0, stream,
                 static_cast<const __half*>(x), t, k, threshold, flags, q, scale, list);
    } else {
      launch_pdl(k_quantize_rows_warp<__nv_bfloat16, 4, WPR, Enc, kOutliers>, grid, 256, 0, stream,
                 static_cast<const __nv_bfloat16*>(x), t, k, threshold, flags, q, scale, list);
    }
  };
  // W8A8 and FP8 (no threshold) have no outlier columns to look for: the lean kernel.
  if (threshold > 0.0f) launch(std::true_type{});
  else launch(std::false_type{});
}

/// Launches k_quantize_rows_warp when it applies (fp16/bf16, k % 8 == 0, k <= 4096, aligned pointers) and
/// returns true; false leaves the row to the caller's general kernel. list: see OutlierList.
template <typename Enc>
inline bool launch_quantize_rows_warp(const void* x, DType dtype, int64_t t, int64_t k, float threshold,
                                      int32_t* flags, uint8_t* q, float* scale, cudaStream_t stream,
                                      OutlierList list = {}) {
  if (t > 65535LL * 1024) return false;
  if ((dtype != DType::kF16 && dtype != DType::kBF16) || k % 8 != 0 || k > 4096) return false;
  if (reinterpret_cast<uintptr_t>(x) % 16 != 0 || reinterpret_cast<uintptr_t>(q) % 8 != 0) return false;
  const bool f16 = dtype == DType::kF16;
  // Below 2,048 rows (256 blocks, two per SM) a row is spread over four warps whatever its width, so that the
  // few rows still occupy many SMs (128 rows: 64 blocks).
  if (t < 2048) launch_quantize_rows_wpr<Enc, 4>(x, f16, t, k, threshold, flags, q, scale, list, stream);
  // Four vectors a lane at most (40 registers): enough warps an SM to keep the loads of some in flight while
  // others compute.
  else if (k <= 1024) launch_quantize_rows_wpr<Enc, 1>(x, f16, t, k, threshold, flags, q, scale, list, stream);
  else if (k <= 2048) launch_quantize_rows_wpr<Enc, 2>(x, f16, t, k, threshold, flags, q, scale, list, stream);
  else launch_quantize_rows_wpr<Enc, 4>(x, f16, t, k, threshold, flags, q, scale, list, stream);
  return true;
}

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
