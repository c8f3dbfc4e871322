// Residual add + LayerNorm of the GPT-2 block (inference). Unfused, the block runs three memory-bound passes
// per residual point (the add reads h and delta and writes h; the LayerNorm reads h and writes a); here one
// kernel reads h and delta once and writes h and a, and the model saves 24 launches per forward, which
// matters most for the batch-1 latency (each graph node costs a few microseconds there).
#include "common.cuh"

namespace evalsvc::kernels::cuda {
namespace {

using detail::from_float;
using detail::to_float;

/// One block per row. Pass 1 adds and rounds (stores h_out, sums); pass 2 the variance around the mean; pass 3
/// normalizes. Passes 2 and 3 re-read h_out, which the same thread just wrote (L1/L2), so DRAM sees each
/// input once.
template <typename T>
__global__ void k_add_layer_norm(const T* h, const T* __restrict__ delta, const T* __restrict__ gamma,
                                 const T* __restrict__ beta, float eps, int64_t cols, T* h_out, T* __restrict__ a) {
  const int64_t base = static_cast<int64_t>(blockIdx.x) * cols;
  float sum = 0.0f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const T v = from_float<T>(to_float(h[base + c]) + to_float(delta[base + c]));
    h_out[base + c] = v;
    sum += to_float(v);
  }
  const float mean = detail::block_sum(sum) / static_cast<float>(cols);
  float sq = 0.0f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const float d = to_float(h_out[base + c]) - mean;
    sq += d * d;
  }
  const float rstd = rsqrtf(detail::block_sum(sq) / static_cast<float>(cols) + eps);
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const float x = (to_float(h_out[base + c]) - mean) * rstd;
    a[base + c] = from_float<T>(x * to_float(gamma[c]) + to_float(beta[c]));
  }
}

/// One 8-element chunk of the residual add: h_out[off, off + 8) = T(h + delta) (one rounding, as the separate
/// add; 16-byte loads and store), and those rounded values into a.
template <typename T>
__device__ __forceinline__ void add_chunk(const T* h, const T* __restrict__ delta, int64_t off, T* h_out,
                                          float (&a)[8]) {
  const uint4 hv = *reinterpret_cast<const uint4*>(h + off);
  const uint4 dv = *reinterpret_cast<const uint4*>(delta + off);
  const T* hp = reinterpret_cast<const T*>(&hv);
  const T* dp = reinterpret_cast<const T*>(&dv);
  uint4 ov;
  T* op = reinterpret_cast<T*>(&ov);
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    const T r = from_float<T>(to_float(hp[e]) + to_float(dp[e]));
    op[e] = r;
    a[e] = to_float(r);
  }
  *reinterpret_cast<uint4*>(h_out + off) = ov;
}

/// The LayerNorm of one chunk at column c0: a[e] = T((a[e] - mean) * rstd * gamma + beta), kept as a float.
template <typename T>
__device__ __forceinline__ void normalize_chunk(const T* __restrict__ gamma, const T* __restrict__ beta, int c0,
                                                float mean, float rstd, float (&a)[8]) {
  const uint4 gv = *reinterpret_cast<const uint4*>(gamma + c0);
  const uint4 bv = *reinterpret_cast<const uint4*>(beta + c0);
  const T* gp = reinterpret_cast<const T*>(&gv);
  const T* bp = reinterpret_cast<const T*>(&bv);
#pragma unroll
  for (int e = 0; e < 8; ++e) a[e] = to_float(from_float<T>((a[e] - mean) * rstd * to_float(gp[e]) + to_float(bp[e])));
}

/// The warp kernels' shared part, for 16-bit types and rows of 256 * kChunks elements (GPT-2: 768 = 3 chunks):
/// one warp per row, each lane holding its 8 * kChunks elements in registers (16-byte loads and stores),
/// warp-shuffle reductions only, so every element is read and written exactly once and nothing waits on a block
/// barrier. Same arithmetic as k_add_layer_norm: round the sum once (stored to h_out), fp32 mean, then the
/// variance around it. Leaves in `a` the normalized values, each already rounded to T (what the LayerNorm
/// writes). Element e of chunk j of this lane is column (j * 32 + lane) * 8 + e.
template <typename T, int kChunks>
__device__ __forceinline__ void add_normalize_row(const T* h, const T* __restrict__ delta, const T* __restrict__ gamma,
                                                  const T* __restrict__ beta, float eps, int64_t base, int lane,
                                                  T* h_out, float (&a)[kChunks][8]) {
  constexpr int kCols = 256 * kChunks;
  float sum = 0.0f;
#pragma unroll
  for (int j = 0; j < kChunks; ++j) {
    add_chunk<T>(h, delta, base + (j * 32 + lane) * 8, h_out, a[j]);
#pragma unroll
    for (int e = 0; e < 8; ++e) sum += a[j][e];
  }
  const float mean = detail::warp_sum(sum) / static_cast<float>(kCols);
  float sq = 0.0f;
#pragma unroll
  for (int j = 0; j < kChunks; ++j)
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const float d = a[j][e] - mean;
      sq += d * d;
    }
  const float rstd = rsqrtf(detail::warp_sum(sq) / static_cast<float>(kCols) + eps);
#pragma unroll
  for (int j = 0; j < kChunks; ++j) normalize_chunk<T>(gamma, beta, (j * 32 + lane) * 8, mean, rstd, a[j]);
}

template <typename T, int kChunks>
__global__ void __launch_bounds__(128) k_add_layer_norm_warp(const T* h, const T* __restrict__ delta,
                                                             const T* __restrict__ gamma,
                                                             const T* __restrict__ beta, float eps, int64_t rows,
                                                             T* h_out, T* __restrict__ a,
                                                             const int* wait_flag, int wait_value) {
  detail::pdl_wait();  // h and delta come from the kernels before
  detail::pdl_launch_dependents();
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (row >= rows) return;
  const int64_t base = row * 256 * kChunks;
  float v[kChunks][8];
  add_normalize_row<T, kChunks>(h, delta, gamma, beta, eps, base, lane, h_out, v);
#pragma unroll
  for (int j = 0; j < kChunks; ++j) {
    uint4 av;
    T* ap = reinterpret_cast<T*>(&av);
#pragma unroll
    for (int e = 0; e < 8; ++e) ap[e] = from_float<T>(v[j][e]);  // exact: v holds values of T
    *reinterpret_cast<uint4*>(a + base + (j * 32 + lane) * 8) = av;
  }
  // Row 0's thread (every grid has it) holds the kernel's completion back until the flag is set.
  if (wait_flag != nullptr && row == 0 && lane == 0) detail::stream_flag_wait(wait_flag, wait_value);
}

/// Row scale and codes of the row values v this lane holds (element e of chunk j is column (j * 32 + lane) * 8 + e),
/// given the lane's part of the absmax: warp max, scale = absmax / Enc::kMax (stored by lane 0), Enc's code of
/// each value (0 for a row of zeros), 8 codes a store. Shared by the quantizing LayerNorm kernels.
template <typename Enc, int kChunks>
__device__ __forceinline__ void store_row_codes(const float (&v)[kChunks][8], float amax, int64_t row, int64_t base,
                                                int lane, uint8_t* __restrict__ q, float* __restrict__ scale) {
  amax = detail::warp_max(amax);
  const float s = amax / Enc::kMax;
  if (lane == 0) scale[row] = s;
#pragma unroll
  for (int j = 0; j < kChunks; ++j) {
    *reinterpret_cast<uint2*>(q + base + (j * 32 + lane) * 8) = detail::encode8<Enc>(v[j], s);
  }
}

/// The same add + LayerNorm with the normalized row quantized per token instead of written: absmax over the
/// rounded values, scale = absmax / Enc::kMax, Enc's code of each value (0 for a row of zeros) - the
/// quantizers' arithmetic on the values add_layer_norm would write, so the codes equal add_layer_norm followed
/// by quantize_per_token_int8 / _fp8 bit for bit. Saves the quantizer's launch and its read of `a` and the
/// write of `a` itself: the projection that follows (W8A8, FP8) only ever needed the codes.
template <typename T, int kChunks, typename Enc>
__global__ void __launch_bounds__(128) k_add_layer_norm_quant_warp(const T* h, const T* __restrict__ delta,
                                                                   const T* __restrict__ gamma,
                                                                   const T* __restrict__ beta, float eps,
                                                                   int64_t rows, T* h_out, uint8_t* __restrict__ q,
                                                                   float* __restrict__ scale) {
  detail::pdl_wait();  // h and delta come from the kernels before
  detail::pdl_launch_dependents();
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (row >= rows) return;
  const int64_t base = row * 256 * kChunks;
  float v[kChunks][8];
  add_normalize_row<T, kChunks>(h, delta, gamma, beta, eps, base, lane, h_out, v);
  float amax = 0.0f;
#pragma unroll
  for (int j = 0; j < kChunks; ++j)
#pragma unroll
    for (int e = 0; e < 8; ++e) amax = fmaxf(amax, fabsf(v[j][e]));
  store_row_codes<Enc, kChunks>(v, amax, row, base, lane, q, scale);
}

/// The same add + LayerNorm for LLM.int8's input (fp16): writes the normalized rows `a` (the outlier columns'
/// fp16 product reads them) and their per-token codes, the absmax skipping |x| >= threshold and those columns
/// set in the outlier bit mask; the block that finishes last compacts the mask into idx / *count and clears it
/// and the counter (detail::k_quantize_rows_warp's contract with an OutlierList, same arithmetic on the same
/// values, so the codes, scales and columns equal add_layer_norm followed by that quantizer). Saves the
/// quantizer's launch and its read of `a`.
template <int kChunks>
__global__ void __launch_bounds__(128) k_add_layer_norm_llm_int8_warp(
    const __half* h, const __half* __restrict__ delta, const __half* __restrict__ gamma,
    const __half* __restrict__ beta, float eps, int64_t rows, float threshold, __half* h_out, __half* __restrict__ a,
    int8_t* __restrict__ q, float* __restrict__ scale, uint32_t* mask, detail::OutlierList list) {
  detail::pdl_wait();  // h and delta come from the kernels before
  detail::pdl_launch_dependents();
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + warp;
  bool flagged = false;
  if (row < rows) {  // no early return: the block meets a barrier below
    const int64_t base = row * 256 * kChunks;
    float v[kChunks][8];
    add_normalize_row<__half, kChunks>(h, delta, gamma, beta, eps, base, lane, h_out, v);
    float amax = 0.0f;
#pragma unroll
    for (int j = 0; j < kChunks; ++j) {
      uint4 av;
      __half* ap = reinterpret_cast<__half*>(&av);
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        ap[e] = __float2half_rn(v[j][e]);  // exact: v holds fp16 values
        const float x = fabsf(v[j][e]);
        if (x < threshold) {
          amax = fmaxf(amax, x);
        } else if (x >= threshold) {  // (NaN neither, as in the quantizer)
          detail::flag_outlier_bit(mask, (j * 32 + lane) * 8 + e);
          flagged = true;
        }
      }
      *reinterpret_cast<uint4*>(a + base + (j * 32 + lane) * 8) = av;
    }
    store_row_codes<detail::Int8Encoder, kChunks>(v, amax, row, base, lane, reinterpret_cast<uint8_t*>(q), scale);
  }
  detail::finish_outlier_list(flagged, mask, 256 * kChunks, list);
}

// ---- a row over several warps (few rows) ---------------------------------------------------------------------
//
// With one warp a row, a few rows leave most SMs idle and make each row's work one long serial chain (loads,
// two sums, the normalization, the absmax and 8 * kChunks code divisions in one warp): at 128 rows the fused
// LayerNorm + quantization took longer than the LayerNorm and the quantizer's four-warp kernel one after the
// other (docs/perf.md). Below kSplitMaxRows rows a row gets a group of kSplitWarps warps instead, warp w < kChunks
// of the group holding the row's chunk w (element e of its lane L is column (w * 32 + L) * 8 + e, the one-warp
// kernels' chunk w). The running fp32 sums pass from warp to warp in chunk order through shared memory, so every
// lane adds the same numbers in the same order as in the one-warp kernels: mean, rstd, the normalized values and
// the codes are theirs bit for bit, whichever kernel a row count takes.

constexpr int kSplitWarps = 4;                      // a row's warp group (chunks 1-4 of 256 columns)
constexpr int kSplitRowsPerBlock = 8 / kSplitWarps;  // 256-thread blocks
constexpr int64_t kSplitMaxRows = 2048;             // the per-token quantizer's own switch to four warps a row

/// Shared memory of one row group: the lanes' running sums after each chunk.
struct SplitChains {
  float sum[kSplitWarps][32];
  float sq[kSplitWarps][32];
};

/// add_normalize_row for the warp group of a row: this thread's 8 normalized values (rounded to T) in a, for
/// chunk w; active = the row exists and w < kChunks. Every thread of the block must call it (block barriers).
template <typename T, int kChunks>
__device__ __forceinline__ void add_normalize_row_split(const T* h, const T* __restrict__ delta,
                                                        const T* __restrict__ gamma, const T* __restrict__ beta,
                                                        float eps, int64_t base, bool active, int w, int lane,
                                                        SplitChains& chains, T* h_out, float (&a)[8]) {
  constexpr int kCols = 256 * kChunks;
  const int c0 = (w * 32 + lane) * 8;
  if (active) add_chunk<T>(h, delta, base + c0, h_out, a);
#pragma unroll
  for (int j = 0; j < kChunks; ++j) {
    if (active && w == j) {
      float sum = j == 0 ? 0.0f : chains.sum[j - 1][lane];
#pragma unroll
      for (int e = 0; e < 8; ++e) sum += a[e];
      chains.sum[j][lane] = sum;
    }
    __syncthreads();
  }
  const float mean = detail::warp_sum(chains.sum[kChunks - 1][lane]) / static_cast<float>(kCols);
#pragma unroll
  for (int j = 0; j < kChunks; ++j) {
    if (active && w == j) {
      float sq = j == 0 ? 0.0f : chains.sq[j - 1][lane];
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const float d = a[e] - mean;
        sq += d * d;
      }
      chains.sq[j][lane] = sq;
    }
    __syncthreads();
  }
  const float rstd = rsqrtf(detail::warp_sum(chains.sq[kChunks - 1][lane]) / static_cast<float>(kCols) + eps);
  if (active) normalize_chunk<T>(gamma, beta, c0, mean, rstd, a);
}

/// The row group's absmax of the lanes' parts amax (every thread of the block calls it).
__device__ __forceinline__ float split_row_max(float amax, int w, int lane, float (&parts)[kSplitWarps]) {
  amax = detail::warp_max(amax);
  if (lane == 0) parts[w] = amax;
  __syncthreads();
#pragma unroll
  for (int p = 0; p < kSplitWarps; ++p) amax = fmaxf(amax, parts[p]);
  return amax;
}

/// Scale (stored by the group's first thread) and the codes of this thread's 8 values, one 8-byte store.
template <typename Enc>
__device__ __forceinline__ void store_codes8(const float (&v)[8], float amax, int64_t row, int64_t base, int c0,
                                             bool first, uint8_t* __restrict__ q, float* __restrict__ scale) {
  const float s = amax / Enc::kMax;
  if (first) scale[row] = s;
  *reinterpret_cast<uint2*>(q + base + c0) = detail::encode8<Enc>(v, s);
}

/// k_add_layer_norm_quant_warp with a row over a warp group.
template <typename T, int kChunks, typename Enc>
__global__ void __launch_bounds__(256) k_add_layer_norm_quant_split(const T* h, const T* __restrict__ delta,
                                                                    const T* __restrict__ gamma,
                                                                    const T* __restrict__ beta, float eps,
                                                                    int64_t rows, T* h_out, uint8_t* __restrict__ q,
                                                                    float* __restrict__ scale) {
  detail::pdl_wait();  // h and delta come from the kernels before
  detail::pdl_launch_dependents();
  __shared__ SplitChains chains[kSplitRowsPerBlock];
  __shared__ float parts[kSplitRowsPerBlock][kSplitWarps];
  const int lane = threadIdx.x & 31;
  const int w = (threadIdx.x >> 5) % kSplitWarps;
  const int g = (threadIdx.x >> 5) / kSplitWarps;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kSplitRowsPerBlock + g;
  const bool active = row < rows && w < kChunks;  // no early return: every thread meets the barriers
  const int64_t base = row * 256 * kChunks;
  float v[8] = {};
  add_normalize_row_split<T, kChunks>(h, delta, gamma, beta, eps, base, active, w, lane, chains[g], h_out, v);
  float amax = 0.0f;
#pragma unroll
  for (int e = 0; e < 8; ++e) amax = fmaxf(amax, fabsf(v[e]));
  amax = split_row_max(amax, w, lane, parts[g]);
  if (active) store_codes8<Enc>(v, amax, row, base, (w * 32 + lane) * 8, w == 0 && lane == 0, q, scale);
}

/// k_add_layer_norm_llm_int8_warp with a row over a warp group.
template <int kChunks>
__global__ void __launch_bounds__(256) k_add_layer_norm_llm_int8_split(
    const __half* h, const __half* __restrict__ delta, const __half* __restrict__ gamma,
    const __half* __restrict__ beta, float eps, int64_t rows, float threshold, __half* h_out, __half* __restrict__ a,
    int8_t* __restrict__ q, float* __restrict__ scale, uint32_t* mask, detail::OutlierList list) {
  detail::pdl_wait();  // h and delta come from the kernels before
  detail::pdl_launch_dependents();
  __shared__ SplitChains chains[kSplitRowsPerBlock];
  __shared__ float parts[kSplitRowsPerBlock][kSplitWarps];
  const int lane = threadIdx.x & 31;
  const int w = (threadIdx.x >> 5) % kSplitWarps;
  const int g = (threadIdx.x >> 5) / kSplitWarps;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kSplitRowsPerBlock + g;
  const bool active = row < rows && w < kChunks;
  const int64_t base = row * 256 * kChunks;
  const int c0 = (w * 32 + lane) * 8;
  float v[8] = {};
  add_normalize_row_split<__half, kChunks>(h, delta, gamma, beta, eps, base, active, w, lane, chains[g], h_out, v);
  float amax = 0.0f;
  bool flagged = false;
  if (active) {
    uint4 av;
    __half* ap = reinterpret_cast<__half*>(&av);
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      ap[e] = __float2half_rn(v[e]);  // exact: v holds fp16 values
      const float x = fabsf(v[e]);
      if (x < threshold) {
        amax = fmaxf(amax, x);
      } else if (x >= threshold) {  // (NaN neither, as in the quantizer)
        detail::flag_outlier_bit(mask, c0 + e);
        flagged = true;
      }
    }
    *reinterpret_cast<uint4*>(a + base + c0) = av;
  }
  amax = split_row_max(amax, w, lane, parts[g]);
  if (active) {
    store_codes8<detail::Int8Encoder>(v, amax, row, base, c0, w == 0 && lane == 0, reinterpret_cast<uint8_t*>(q),
                                      scale);
  }
  detail::finish_outlier_list(flagged, mask, 256 * kChunks, list);
}

/// Runs launch(std::integral_constant<int, C>{}) for the warp kernels' row width C = cols / 256 chunks (1-4), and
/// returns the launch's status; kLaunchBadShape for other widths.
template <typename F>
int launch_by_chunks(int64_t cols, F&& launch) {
  switch (cols / 256) {
    case 1: launch(std::integral_constant<int, 1>{}); break;
    case 2: launch(std::integral_constant<int, 2>{}); break;
    case 3: launch(std::integral_constant<int, 3>{}); break;
    case 4: launch(std::integral_constant<int, 4>{}); break;
    default: return kLaunchBadShape;
  }
  return detail::launch_result();
}

constexpr int kWarpRowsPerBlock = 4;

unsigned warp_rows_grid(int64_t rows) {
  return static_cast<unsigned>((rows + kWarpRowsPerBlock - 1) / kWarpRowsPerBlock);
}

template <typename T>
int launch_warp_rows(const void* h, const void* delta, const void* gamma, const void* beta, float eps, int64_t rows,
                     int64_t cols, void* h_out, void* a, cudaStream_t stream, const int* wait_flag, int wait_value) {
  return launch_by_chunks(cols, [&](auto chunks) {
    detail::launch_pdl(k_add_layer_norm_warp<T, decltype(chunks)::value>, warp_rows_grid(rows), 32 * kWarpRowsPerBlock,
        0, stream, static_cast<const T*>(h), static_cast<const T*>(delta), static_cast<const T*>(gamma),
        static_cast<const T*>(beta), eps, rows, static_cast<T*>(h_out), static_cast<T*>(a), wait_flag, wait_value);
  });
}

unsigned split_rows_grid(int64_t rows) {
  return static_cast<unsigned>((rows + kSplitRowsPerBlock - 1) / kSplitRowsPerBlock);
}

template <typename T, typename Enc>
int launch_quant_rows(const void* h, const void* delta, const void* gamma, const void* beta, float eps, int64_t rows,
                      int64_t cols, void* h_out, uint8_t* q, float* scale, cudaStream_t stream) {
  return launch_by_chunks(cols, [&](auto chunks) {
    constexpr int kChunks = decltype(chunks)::value;
    if (rows < kSplitMaxRows) {
      detail::launch_pdl(k_add_layer_norm_quant_split<T, kChunks, Enc>, split_rows_grid(rows), 256, 0, stream,
          static_cast<const T*>(h), static_cast<const T*>(delta), static_cast<const T*>(gamma),
          static_cast<const T*>(beta), eps, rows, static_cast<T*>(h_out), q, scale);
      return;
    }
    detail::launch_pdl(k_add_layer_norm_quant_warp<T, kChunks, Enc>, warp_rows_grid(rows), 32 * kWarpRowsPerBlock, 0,
        stream, static_cast<const T*>(h), static_cast<const T*>(delta), static_cast<const T*>(gamma),
        static_cast<const T*>(beta), eps, rows, static_cast<T*>(h_out), q, scale);
  });
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

}  // namespace

int launch_add_layer_norm(const void* h, const void* delta, const void* gamma, const void* beta, float eps,
                          int64_t rows, int64_t cols, void* h_out, void* a, DType dtype, cudaStream_t stream,
                          const int* wait_flag, int wait_value) {
  if (rows <= 0 || cols <= 0 || rows > INT32_MAX) return kLaunchBadShape;
  if (h == nullptr || delta == nullptr || gamma == nullptr || beta == nullptr || h_out == nullptr || a == nullptr) {
    return kLaunchBadPointer;
  }
  const bool vec = cols % 256 == 0 && cols <= 1024 && aligned16(h) && aligned16(delta) && aligned16(gamma) &&
                   aligned16(beta) && aligned16(h_out) && aligned16(a);
  if (vec && dtype == DType::kF16) {
    return launch_warp_rows<__half>(h, delta, gamma, beta, eps, rows, cols, h_out, a, stream, wait_flag, wait_value);
  }
  if (vec && dtype == DType::kBF16) {
    return launch_warp_rows<__nv_bfloat16>(h, delta, gamma, beta, eps, rows, cols, h_out, a, stream, wait_flag,
                                           wait_value);
  }
  // Any other width or fp32: one block per row, three passes (the row stays in L1 between them); the flag wait as
  // a kernel of its own after it.
  const int threads = cols >= 1024 ? 512 : 256;
  EVALSVC_DISPATCH_FLOAT(dtype, T,
      k_add_layer_norm<T><<<static_cast<unsigned>(rows), threads, 0, stream>>>(
          static_cast<const T*>(h), static_cast<const T*>(delta), static_cast<const T*>(gamma),
          static_cast<const T*>(beta), eps, cols, static_cast<T*>(h_out), static_cast<T*>(a)));
  if (const int st = detail::launch_result(); st != kLaunchOk || wait_flag == nullptr) return st;
  return launch_stream_flag_wait(wait_flag, wait_value, stream);
}

int launch_add_layer_norm_quant(const void* h, const void* delta, const void* gamma, const void* beta, float eps,
                                int64_t rows, int64_t cols, void* h_out, uint8_t* q, float* scale, DType dtype,
                                ActCode code, cudaStream_t stream) {
  if (rows <= 0 || cols <= 0 || rows > INT32_MAX) return kLaunchBadShape;
  if (h == nullptr || delta == nullptr || gamma == nullptr || beta == nullptr || h_out == nullptr || q == nullptr ||
      scale == nullptr) {
    return kLaunchBadPointer;
  }
  const bool vec = cols % 256 == 0 && cols <= 1024 && aligned16(h) && aligned16(delta) && aligned16(gamma) &&
                   aligned16(beta) && aligned16(h_out) && (reinterpret_cast<uintptr_t>(q) & 7u) == 0;
  if (!vec || (dtype != DType::kF16 && dtype != DType::kBF16)) return kLaunchUnsupported;
  const bool f16 = dtype == DType::kF16;
  if (code == ActCode::kInt8) {
    return f16 ? launch_quant_rows<__half, detail::Int8Encoder>(h, delta, gamma, beta, eps, rows, cols, h_out, q, scale, stream)
               : launch_quant_rows<__nv_bfloat16, detail::Int8Encoder>(h, delta, gamma, beta, eps, rows, cols, h_out, q, scale, stream);
  }
  return f16 ? launch_quant_rows<__half, detail::Fp8Encoder>(h, delta, gamma, beta, eps, rows, cols, h_out, q, scale, stream)
             : launch_quant_rows<__nv_bfloat16, detail::Fp8Encoder>(h, delta, gamma, beta, eps, rows, cols, h_out, q, scale, stream);
}

int launch_add_layer_norm_llm_int8(const void* h, const void* delta, const void* gamma, const void* beta, float eps,
                                   int64_t rows, int64_t cols, float threshold, void* h_out, void* a, int8_t* q,
                                   float* scale, int32_t* state, int32_t* idx, int32_t* count, cudaStream_t stream) {
  if (rows <= 0 || cols <= 0 || rows > INT32_MAX || !(threshold > 0.0f)) return kLaunchBadShape;
  if (h == nullptr || delta == nullptr || gamma == nullptr || beta == nullptr || h_out == nullptr || a == nullptr ||
      q == nullptr || scale == nullptr || state == nullptr || idx == nullptr || count == nullptr) {
    return kLaunchBadPointer;
  }
  const bool vec = cols % 256 == 0 && cols <= 1024 && aligned16(h) && aligned16(delta) && aligned16(gamma) &&
                   aligned16(beta) && aligned16(h_out) && aligned16(a) && (reinterpret_cast<uintptr_t>(q) & 7u) == 0;
  if (!vec) return kLaunchUnsupported;
  uint32_t* mask = reinterpret_cast<uint32_t*>(state);
  const detail::OutlierList list{state + (cols + 31) / 32, idx, count};  // the counter follows the mask
  return launch_by_chunks(cols, [&](auto chunks) {
    constexpr int kChunks = decltype(chunks)::value;
    if (rows < kSplitMaxRows) {
      detail::launch_pdl(k_add_layer_norm_llm_int8_split<kChunks>, split_rows_grid(rows), 256, 0, stream,
          static_cast<const __half*>(h), static_cast<const __half*>(delta), static_cast<const __half*>(gamma),
          static_cast<const __half*>(beta), eps, rows, threshold, static_cast<__half*>(h_out), static_cast<__half*>(a),
          q, scale, mask, list);
      return;
    }
    detail::launch_pdl(k_add_layer_norm_llm_int8_warp<kChunks>, warp_rows_grid(rows), 32 * kWarpRowsPerBlock, 0,
        stream, static_cast<const __half*>(h), static_cast<const __half*>(delta), static_cast<const __half*>(gamma),
        static_cast<const __half*>(beta), eps, rows, threshold, static_cast<__half*>(h_out), static_cast<__half*>(a), q,
        scale, mask, list);
  });
}

}  // namespace evalsvc::kernels::cuda
