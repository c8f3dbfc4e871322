// Stream flags: one stream tells another that its work is done by writing a value the other's kernel polls,
// instead of an event edge. In a CUDA graph each event wait of the main stream on the weight prefetch's side
// stream cost about 3 us at batch 1 even when the side stream had long finished (H200, docs/perf.md): the
// kernel after the wait could not be scheduled behind the one before it. A flag read inside a kernel the main
// stream runs anyway (the add + LayerNorm before each block) costs that kernel one load.
#include "common.cuh"

namespace evalsvc::kernels::cuda {
namespace {

/// Everything queued before this kernel on its stream has completed and is visible; publish `value`.
__global__ void k_stream_flag_set(int* flag, int value) { detail::stream_flag_store(flag, value); }

__global__ void k_stream_flag_wait(const int* flag, int value) { detail::stream_flag_wait(flag, value); }

}  // namespace

int launch_stream_flag_set(int* flag, int value, cudaStream_t stream) {
  if (flag == nullptr) return kLaunchBadPointer;
  k_stream_flag_set<<<1, 1, 0, stream>>>(flag, value);
  return detail::launch_result();
}

int launch_stream_flag_wait(const int* flag, int value, cudaStream_t stream) {
  if (flag == nullptr) return kLaunchBadPointer;
  k_stream_flag_wait<<<1, 1, 0, stream>>>(flag, value);
  return detail::launch_result();
}

}  // namespace evalsvc::kernels::cuda
