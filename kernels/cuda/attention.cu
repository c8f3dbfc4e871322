// Causal self-attention for short sequences and few rows (the batch-1 forward). PyTorch's fused attention
// gives each (batch, head) one thread block for all 128 queries, which at batch 1 is 12 blocks on a 132-SM
// card; here each block takes 16 queries of one head (96 blocks at batch 1), reads q, k and v straight out of
// the c_attn output [B, T, 3E] (no head split) and writes [B, T, E], the layout c_proj reads (no merge copy).
// CUDA cores, fp32 accumulation: at batch 1 the work is tiny and latency is what counts; large batches keep
// the tensor-core kernels (the model only calls this up to kSmallAttentionMaxBatch rows).
#include "common.cuh"

namespace evalsvc::kernels::cuda {
namespace {

using detail::to_float;

template <typename T>
struct Pair;
template <>
struct Pair<__half> {
  using type = __half2;
  static __device__ __forceinline__ float2 to_f2(__half2 v) { return __half22float2(v); }
  static __device__ __forceinline__ __half2 from_f2(float a, float b) { return __floats2half2_rn(a, b); }
};
template <>
struct Pair<__nv_bfloat16> {
  using type = __nv_bfloat162;
  static __device__ __forceinline__ float2 to_f2(__nv_bfloat162 v) { return __bfloat1622float2(v); }
  static __device__ __forceinline__ __nv_bfloat162 from_f2(float a, float b) { return __floats2bfloat162_rn(a, b); }
};

constexpr int kHeadDim = 64;
constexpr int kRowsPerBlock = 16;
constexpr int kWarps = 4;
// K rows in shared memory padded to 66 elements = 33 words: lanes reading the same column of 32 different
// rows hit 32 different banks.
constexpr int kPad = kHeadDim + 2;

template <typename T>
__global__ void __launch_bounds__(kWarps * 32)
    k_causal_attention_small(const T* __restrict__ qkv, int seq, int heads, float scale, T* __restrict__ out) {
  using P = Pair<T>;
  using T2 = typename P::type;
  __shared__ __align__(16) T sk[kSmallAttentionMaxSeq][kPad];
  __shared__ __align__(16) T sv[kSmallAttentionMaxSeq][kHeadDim];
  __shared__ float sp[kWarps][kSmallAttentionMaxSeq];
  __shared__ float sq[kWarps][kHeadDim];

  const int b = blockIdx.z;
  const int h = blockIdx.y;
  const int q0 = blockIdx.x * kRowsPerBlock;
  const int E = heads * kHeadDim;
  const int64_t row_stride = 3 * static_cast<int64_t>(E);
  const T* base = qkv + static_cast<int64_t>(b) * seq * row_stride + h * kHeadDim;
  // Keys 0 .. kmax-1 are visible to some query of this block (causal).
  const int kmax = min(seq, q0 + kRowsPerBlock);
  for (int idx = threadIdx.x; idx < kmax * (kHeadDim / 2); idx += blockDim.x) {
    const int j = idx / (kHeadDim / 2);
    const int c = 2 * (idx % (kHeadDim / 2));
    const T* rp = base + j * row_stride + c;
    *reinterpret_cast<T2*>(&sk[j][c]) = *reinterpret_cast<const T2*>(rp + E);
    *reinterpret_cast<T2*>(&sv[j][c]) = *reinterpret_cast<const T2*>(rp + 2 * E);
  }
  __syncthreads();

  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  for (int r = warp; r < kRowsPerBlock; r += kWarps) {
    const int i = q0 + r;
    if (i >= seq) break;
    const T* qp = base + i * row_stride;
    sq[warp][lane] = to_float(qp[lane]) * scale;
    sq[warp][lane + 32] = to_float(qp[lane + 32]) * scale;
    __syncwarp();
    // Scores of keys j = lane + 32 t (t < 4), visible when j <= i.
    float s[kSmallAttentionMaxSeq / 32];
    float mx = -INFINITY;
#pragma unroll
    for (int t = 0; t < kSmallAttentionMaxSeq / 32; ++t) {
      const int j = lane + 32 * t;
      s[t] = -INFINITY;
      if (j <= i) {
        float acc = 0.0f;
#pragma unroll 8
        for (int d = 0; d < kHeadDim; d += 2) {
          const float2 kv = P::to_f2(*reinterpret_cast<const T2*>(&sk[j][d]));
          acc = fmaf(sq[warp][d], kv.x, acc);
          acc = fmaf(sq[warp][d + 1], kv.y, acc);
        }
        s[t] = acc;
        mx = fmaxf(mx, acc);
      }
    }
    mx = detail::warp_max(mx);  // key 0 is always visible: mx is finite
    float sum = 0.0f;
#pragma unroll
    for (int t = 0; t < kSmallAttentionMaxSeq / 32; ++t) {
      s[t] = lane + 32 * t <= i ? expf(s[t] - mx) : 0.0f;
      sum += s[t];
    }
    const float inv = 1.0f / detail::warp_sum(sum);
#pragma unroll
    for (int t = 0; t < kSmallAttentionMaxSeq / 32; ++t) {
      const int j = lane + 32 * t;
      if (j <= i) sp[warp][j] = s[t] * inv;
    }
    __syncwarp();
    // Output dims 2 lane and 2 lane + 1.
    float o0 = 0.0f, o1 = 0.0f;
    for (int j = 0; j <= i; ++j) {
      const float p = sp[warp][j];
      const float2 vv = P::to_f2(*reinterpret_cast<const T2*>(&sv[j][2 * lane]));
      o0 = fmaf(p, vv.x, o0);
      o1 = fmaf(p, vv.y, o1);
    }
    *reinterpret_cast<T2*>(out + (static_cast<int64_t>(b) * seq + i) * E + h * kHeadDim + 2 * lane) = P::from_f2(o0, o1);
    __syncwarp();  // sq and sp are rewritten for the next row
  }
}

}  // namespace

int launch_causal_attention_small(const void* qkv, int64_t batch, int64_t seq, int64_t heads, int64_t head_dim,
                                  void* out, DType dtype, cudaStream_t stream) {
  if (batch <= 0 || batch > 65535 || seq <= 0 || seq > kSmallAttentionMaxSeq || heads <= 0 || heads > 65535 ||
      head_dim != kHeadDim) {
    return kLaunchBadShape;
  }
  if (qkv == nullptr || out == nullptr) return kLaunchBadPointer;
  const dim3 grid(static_cast<unsigned>((seq + kRowsPerBlock - 1) / kRowsPerBlock), static_cast<unsigned>(heads),
                  static_cast<unsigned>(batch));
  const float scale = 1.0f / sqrtf(static_cast<float>(kHeadDim));
  const int s = static_cast<int>(seq);
  const int hh = static_cast<int>(heads);
  switch (dtype) {
    case DType::kF16:
      k_causal_attention_small<__half><<<grid, kWarps * 32, 0, stream>>>(static_cast<const __half*>(qkv), s, hh, scale,
                                                                        static_cast<__half*>(out));
      break;
    case DType::kBF16:
      k_causal_attention_small<__nv_bfloat16><<<grid, kWarps * 32, 0, stream>>>(
          static_cast<const __nv_bfloat16*>(qkv), s, hh, scale, static_cast<__nv_bfloat16*>(out));
      break;
    default:
      return kLaunchBadDtype;
  }
  return detail::launch_result();
}

}  // namespace evalsvc::kernels::cuda
