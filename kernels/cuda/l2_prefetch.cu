// Warming L2 with a weight before the product that reads it (cuda_launchers.h, launch_l2_prefetch).
#include "common.cuh"

namespace evalsvc::kernels::cuda {
namespace {

constexpr int64_t kChunk = 16 * 1024;  // bytes per prefetch instruction: ~900 instructions for a GPT-2 block in fp16

struct L2Spans {
  L2Span s[kL2PrefetchMaxSpans];
  int count;
};

// Thread t of the grid asks for chunks t, t + threads, ... of the spans laid end to end. sm_90: one bulk prefetch
// (cp.async.bulk.prefetch.L2) a chunk, handled by the SM's TMA unit, so the kernel is done in a few microseconds and
// the data arrives on its own; older GPUs: one prefetch.global.L2 a 128-byte line.
__global__ void k_l2_prefetch(L2Spans spans) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t base = 0;  // chunks of the spans before span i
  for (int i = 0; i < spans.count; ++i) {
    const auto* p = static_cast<const char*>(spans.s[i].ptr);
    const int64_t bytes = spans.s[i].bytes;
    const int64_t chunks = (bytes + kChunk - 1) / kChunk;
    for (; c < base + chunks; c += stride) {
      const int64_t off = (c - base) * kChunk;
      const int64_t len = bytes - off < kChunk ? bytes - off : kChunk;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
      // Size a multiple of 16: the launcher only takes 16-byte aligned spans, and a partial last 16 bytes is
      // rounded down (at most 15 bytes of a span left cold).
      const auto n = static_cast<uint32_t>(len & ~int64_t{15});
      if (n > 0) asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(p + off), "r"(n) : "memory");
#else
      for (int64_t b = 0; b < len; b += 128) asm volatile("prefetch.global.L2 [%0];\n" ::"l"(p + off + b));
#endif
    }
    base += chunks;
  }
}

}  // namespace

int launch_l2_prefetch(const L2Span* spans, int count, cudaStream_t stream) {
  if (count < 0 || count > kL2PrefetchMaxSpans) return kLaunchBadShape;
  if (count > 0 && spans == nullptr) return kLaunchBadPointer;
  L2Spans s{};
  int64_t chunks = 0;
  for (int i = 0; i < count; ++i) {
    if (spans[i].bytes < 0) return kLaunchBadShape;
    if (spans[i].bytes > 0 && spans[i].ptr == nullptr) return kLaunchBadPointer;
    if (reinterpret_cast<uintptr_t>(spans[i].ptr) % 16 != 0) return kLaunchBadPointer;
    s.s[i] = spans[i];
    chunks += (spans[i].bytes + kChunk - 1) / kChunk;
  }
  s.count = count;
  if (chunks == 0) return kLaunchOk;
  // A handful of blocks on as many SMs: the instructions are cheap, the requests go out through several TMA units.
  const int threads = 64;
  k_l2_prefetch<<<detail::grid_for(chunks, threads, 16), threads, 0, stream>>>(s);
  return detail::launch_result();
}

}  // namespace evalsvc::kernels::cuda
