// Hopper (sm_90a) building blocks shared by the wgmma products: the int8 / E4M3 GEMM (int8.cu) and the NF4 GEMM
// that decodes its weight into shared memory (nf4.cu). Shared-memory matrix descriptors, the wgmma fences,
// mbarriers, TMA tensor copies and the driver's tensor-map encoder. Device helpers compile to nothing outside
// sm_90a, where the kernels that use them trap and their launchers are never taken (int8_wgmma_available).
#pragma once

#include <cuda.h>  // CUtensorMap and its enums (the encoder is looked up at run time: no libcuda link)
#include <cuda_runtime.h>

#include <cstdint>

#include "evalsvc/kernels/cuda_launchers.h"

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define EVALSVC_WGMMA 1
#endif

namespace evalsvc::kernels::cuda::wg {

/// 32-bit shared-window address of a generic pointer into shared memory.
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

/// Shared-memory matrix descriptor of a K-major operand whose rows are 128-byte swizzle lines: start address,
/// leading byte offset (unused for swizzled K-major; 1 by convention), stride byte offset 1,024 (from one
/// 8-row swizzle atom to the next), swizzle mode 1 (128 bytes) in bits 62-63.
__device__ __forceinline__ uint64_t wg_desc(uint32_t saddr) {
  return static_cast<uint64_t>((saddr & 0x3FFFF) >> 4) | (uint64_t{1} << 16) | (uint64_t{1024 >> 4} << 32) |
         (uint64_t{1} << 62);
}
__device__ __forceinline__ void wgmma_fence() {
#ifdef EVALSVC_WGMMA
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wgmma_commit() {
#ifdef EVALSVC_WGMMA
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void wgmma_wait() {
#ifdef EVALSVC_WGMMA
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}
/// Orders this thread's earlier generic-proxy writes to shared memory before later async-proxy reads of it
/// (wgmma operands written by threads, not by TMA): each writer fences, then the readers meet at a barrier.
__device__ __forceinline__ void fence_proxy_async() {
#ifdef EVALSVC_WGMMA
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
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

__device__ __forceinline__ void mbar_init(uint32_t bar, int count) {
#ifdef EVALSVC_WGMMA
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
#endif
}
/// Makes the initialised barriers visible to the async proxy (the TMA unit completes transactions on them).
__device__ __forceinline__ void mbar_fence_init() {
#ifdef EVALSVC_WGMMA
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}
/// This thread's arrival, announcing `bytes` of asynchronous copies that must land before the phase completes.
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
#ifdef EVALSVC_WGMMA
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
#endif
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
#ifdef EVALSVC_WGMMA
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
#endif
}
/// Spins until the barrier's phase of parity `parity` has completed.
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
#ifdef EVALSVC_WGMMA
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
#ifdef EVALSVC_WGMMA
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(x), "r"(y), "r"(bar)
      : "memory");
#endif
}
/// Barrier among THREADS threads on named barrier ID (0 is __syncthreads'): among the consumer warpgroups once
/// the producer warp has left, or within one warpgroup.
template <int THREADS, int ID = 1>
__device__ __forceinline__ void consumers_sync() {
  asm volatile("bar.sync %0, %1;\n" ::"n"(ID), "n"(THREADS) : "memory");
}

/// Raises a kernel's dynamic shared memory limit to `bytes`, once per device and kernel (on the first, eager
/// call: not again inside a CUDA graph capture). `done` is the kernel's own per-device flag array.
inline int opt_in_smem(const void* kernel, int bytes, bool (&done)[64]) {
  if (bytes <= 48 * 1024) return kLaunchOk;
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess) return static_cast<int>(e);
  if (dev >= 0 && dev < 64 && done[dev]) return kLaunchOk;
  e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (e != cudaSuccess) return static_cast<int>(e);
  if (dev >= 0 && dev < 64) done[dev] = true;
  return kLaunchOk;
}

/// Streaming multiprocessors of the current device (cached per device).
inline int sm_count() {
  static int counts[64] = {};
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) return 0;
  if (counts[dev] == 0) cudaDeviceGetAttribute(&counts[dev], cudaDevAttrMultiProcessorCount, dev);
  return counts[dev];
}

/// cuTensorMapEncodeTiled, a driver API function, found through the runtime (qbench links only cudart).
using EncodeTiledFn = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                   const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                   CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
inline EncodeTiledFn encode_tiled() {
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

/// Tensor map of the row-major matrix g [rows, cols] of `elem_bytes`-byte elements (1 or 2), read in boxes of
/// box_rows x box_bytes (a multiple of 16); swizzled: 128-byte boxes in wgmma's 128-byte swizzle (16-byte chunk c
/// of row r at chunk c ^ (r % 8)), else rows packed one after another. Reads past the edges give zeros. Needs
/// cols * elem_bytes % 16 == 0 and g 16-byte aligned.
inline bool tensor_map_2d(CUtensorMap* map, const void* g, int64_t rows, int64_t cols, int elem_bytes, int box_rows,
                          int box_bytes = 128, bool swizzled = true) {
  const EncodeTiledFn encode = encode_tiled();
  if (encode == nullptr || (elem_bytes != 1 && elem_bytes != 2) || (swizzled && box_bytes != 128)) return false;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(cols), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(cols * elem_bytes)};  // bytes from one row to the next
  const cuuint32_t box[2] = {static_cast<cuuint32_t>(box_bytes / elem_bytes), static_cast<cuuint32_t>(box_rows)};
  const cuuint32_t steps[2] = {1, 1};
  return encode(map, elem_bytes == 1 ? CU_TENSOR_MAP_DATA_TYPE_UINT8 : CU_TENSOR_MAP_DATA_TYPE_UINT16, 2,
                const_cast<void*>(g), dims, strides, box, steps, CU_TENSOR_MAP_INTERLEAVE_NONE,
                swizzled ? CU_TENSOR_MAP_SWIZZLE_128B : CU_TENSOR_MAP_SWIZZLE_NONE, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

}  // namespace evalsvc::kernels::cuda::wg
