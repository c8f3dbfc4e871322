#pragma once
// Plain launchers of the qbench CUDA kernels (kernels/cuda/*.cu): raw device pointers, sizes and a stream in,
// an int status out (marlin style). No libtorch here, so nvcc compiles the kernels without it; the libtorch
// adapter (kernels/src/cuda/*.cpp) checks tensors before calling these and turns a status into an exception.
//
// Status: 0 = launched; a negative LaunchStatus = an argument the adapter should have rejected (a bug);
// a positive value = the cudaError_t of the launch (cudaGetLastError right after it).
// All matrices are row-major and contiguous; "ld" is not supported on purpose (the adapter makes inputs
// contiguous). Sizes are int64_t; kernels index with 64-bit offsets where a product can pass 2^31.
#include <cstdint>

#include <cuda_runtime_api.h>

namespace evalsvc::kernels::cuda {

/// Negative launcher statuses (argument errors); positive statuses are cudaError_t values.
enum LaunchStatus : int {
  kLaunchOk = 0,
  kLaunchBadShape = -1,      ///< a size is zero/negative or sizes disagree
  kLaunchBadDtype = -2,      ///< a DType value the launcher has no instance for
  kLaunchBadPointer = -3,    ///< a required pointer is null
  kLaunchBadBlocksize = -4,  ///< NF4 blocksize not even or < 2
  kLaunchUnsupported = -5,   ///< the kernel asked for does not run on this device or build
};

/// Element types of floating-point tensors crossing the launcher boundary.
enum class DType : int { kF16 = 0, kBF16 = 1, kF32 = 2 };

/// Text for a launcher status ("bad shape", or cudaGetErrorString for positive values).
const char* launch_status_string(int status);

/// Programmatic dependent launch (compute capability 9.0+): the add + LayerNorm kernels, the row quantizers and
/// the 8-bit wgmma product are launched so that each may be scheduled, and set itself up, while the kernel
/// before it in the stream is still finishing; on the device it waits for that kernel before reading its
/// output (griddepcontrol.wait), so results are the same either way. Inside a CUDA graph this becomes a
/// programmatic edge. On by default; process-wide; read at each launch (a captured graph keeps what it had).
void set_programmatic_launch(bool on);
/// Whether launches made now use it: set on, and the current device has compute capability 9.0 or later.
bool programmatic_launch();

// --- L2 prefetch (kernels/cuda/l2_prefetch.cu) -------------------------------------------------------------

/// A range of device memory; ptr 16-byte aligned.
struct L2Span {
  const void* ptr = nullptr;
  int64_t bytes = 0;
};
inline constexpr int kL2PrefetchMaxSpans = 16;

/// Asks L2 to fetch spans[0 .. count) (count <= kL2PrefetchMaxSpans) from device memory: a hint, no value
/// changes and nothing waits for the data. A small kernel (at most 16 blocks of 64 threads) that finishes once
/// the requests are out. The model runs it on a side stream so that the next block's weights are in L2 when its
/// products start, instead of each product waiting on device memory for its first tiles.
int launch_l2_prefetch(const L2Span* spans, int count, cudaStream_t stream);

// --- Stream flags (kernels/cuda/stream_flag.cu) ---------------------------------------------------------------

/// One thread that publishes `value` at flag (device int) once the work queued before it on `stream` is done.
int launch_stream_flag_set(int* flag, int value, cudaStream_t stream);
/// One thread that returns once *flag == value (it traps after 10 s): what launch_add_layer_norm's wait_flag does,
/// as a kernel of its own.
int launch_stream_flag_wait(const int* flag, int value, cudaStream_t stream);

// --- NF4 (kernels/cuda/nf4.cu) -------------------------------------------------------------------------------

/// NF4 weight pointers (layout of ref::Nf4Weight); either absmax (plain) or absmax_q + nested (double quant).
struct Nf4View {
  const uint8_t* packed = nullptr;   ///< [ceil(n*k/2)], element e in byte e/2, high nibble when e even
  const float* absmax = nullptr;     ///< [nblocks] or null when double-quantized
  const uint8_t* absmax_q = nullptr; ///< [nblocks] (double quant)
  const float* nested = nullptr;     ///< [ceil(nblocks/256)] (double quant)
  float offset = 0.0f;               ///< double quant offset (mean absmax)
  const float* nested_map = nullptr; ///< [256] code map of absmax_q; null = kDynamicMapSigned (codebooks.h)
  const float* quant_map = nullptr;  ///< [16] NF4 levels; null = kNf4Levels (codebooks.h)
  int64_t n = 0;                     ///< out features
  int64_t k = 0;                     ///< in features
  int64_t blocksize = 64;
};

/// The unit of a dequantization's thread budget when launched with max_blocks > 0: at most max_blocks x this many
/// threads at once, in blocks of this size (nf4; one such block fills half an SM's threads) or of 256 (int8).
inline constexpr int kBackgroundBlockThreads = 1024;

/// out [n, k] (dtype) = dequantized weight. max_blocks > 0: at most that many blocks of kBackgroundBlockThreads,
/// each looping over more of the weight, so that the kernel leaves most SMs to work running beside it on
/// another stream (the model's weight prefetch); 0: as many blocks as the size needs (fastest alone).
int launch_nf4_dequantize(const Nf4View& w, void* out, DType dtype, cudaStream_t stream, int max_blocks = 0);

/// launch_nf4_dequantize of w[j] into out[j] for j < count (at most 4) in one launch, the grid (as for one
/// weight of all their sizes) shared out by size: the same values. kLaunchUnsupported unless every weight has
/// n*k % 32 == 0, blocksize % 32 == 0 and 16-byte aligned codes and output, and all share quant_map and
/// nested_map (launch them one by one then).
int launch_nf4_dequantize_batch(const Nf4View* w, void* const* out, int count, DType dtype, cudaStream_t stream,
                                int max_blocks = 0);

/// y [m, n] = x [m, k] W^T + bias; x and y in `dtype` (kF16 or kBF16); bias fp32 [n] or null.
/// GEMV path: one warp per output row, every token of x at once (m <= 8), packed weights streamed with
/// 16-byte loads when k % 32 == 0 and blocksize % 32 == 0.
int launch_nf4_gemv(const void* x, const Nf4View& w, const float* bias, void* y, int64_t m, DType dtype,
                    cudaStream_t stream);
/// Largest m launch_nf4_gemv accepts.
inline constexpr int64_t kNf4GemvMaxM = 8;

/// Same product through the fused dequantize + tensor-core GEMM (64x64 tiles, fp32 accumulation).
int launch_nf4_gemm(const void* x, const Nf4View& w, const float* bias, void* y, int64_t m, DType dtype,
                    cudaStream_t stream);

// --- INT8 (kernels/cuda/int8.cu) -----------------------------------------------------------------------------

/// Compacts flags [k] into ascending column indices idx [k] and their number *count (on the device).
int launch_compact_columns(const int32_t* flags, int64_t k, int32_t* idx, int32_t* count, cudaStream_t stream);

/// Per-token int8: scale[r] = absmax / 127 over the row's elements with |x| < threshold (all of them when
/// threshold <= 0); q = rint(x / scale) clamped to +-127, 0 for rows with scale 0. threshold > 0 (LLM.int8):
/// outlier_flags [k] is cleared, then flags[c] = 1 for every column with some |x| >= threshold, in the same
/// pass; the codes of those columns are written like the others (zero them with launch_zero_columns, or let
/// the GEMM epilogue subtract them: Int8Epilogue::outlier_q). outlier_flags may be null when threshold <= 0.
int launch_quantize_rows_int8(const void* x, DType dtype, int64_t t, int64_t k, float threshold, int32_t* outlier_flags,
                              int8_t* q, float* scale, cudaStream_t stream);

/// LLM.int8's quantizer and compaction without a flag clearing: launch_quantize_rows_int8 with threshold > 0, then
/// the outlier columns in ascending order in idx [k] and their number in *count (device side). state: int32
/// [ceil(k / 32) + 1], a bit mask of the columns and a block counter, all zero on entry and left zero (allocate it
/// zeroed once; one stream at a time).
/// Usually one launch: the quantizer's last block compacts and clears.
int launch_quantize_rows_int8_outliers(const void* x, DType dtype, int64_t t, int64_t k, float threshold,
                                       int32_t* state, int8_t* q, float* scale, int32_t* idx, int32_t* count,
                                       cudaStream_t stream);

/// q[r, idx[j]] = 0 for all rows r < t of q [t, k] and j < *count (indices from launch_compact_columns).
int launch_zero_columns(int8_t* q, int64_t t, int64_t k, const int32_t* idx, const int32_t* count, cudaStream_t stream);

/// Epilogue parameters shared by the int8 GEMM and the int32 epilogue:
/// y[r, c] = acc * row_scale[r] * col_scale[col_scale_per_channel ? c : 0] * alpha + outlier(r, c) + bias[c]
/// where outlier(r, c) = sum_{j < *outlier_count} fp16(x[r, idx_j]) * fp16(cb[c, idx_j] * scb[c] / 127)
/// (LLM.int8's fp16 product of the outlier columns, fp32 sums; skipped when outlier_count is null). The mma.sync
/// kernel and the int32 epilogue add the columns one at a time; the wgmma kernel as tensor-core products, in
/// another fp32 order.
struct Int8Epilogue {
  const float* row_scale = nullptr;   ///< [m]
  const float* col_scale = nullptr;   ///< [n] or [1]
  bool col_scale_per_channel = true;
  float alpha = 1.0f;
  const float* bias = nullptr;        ///< [n] or null
  /// [n] in the output dtype, added like bias (set at most one of the two): the fp8 layers keep their bias in
  /// their base dtype, and a conversion to fp32 per call would be a launch of its own.
  const void* bias_out_dtype = nullptr;
  const void* outlier_x = nullptr;    ///< [m, k] in the output dtype (LLM.int8 input)
  const int8_t* outlier_cb = nullptr; ///< [n, k]
  const float* outlier_scb = nullptr; ///< [n]
  const int32_t* outlier_idx = nullptr;   ///< [k] ascending column indices
  const int32_t* outlier_count = nullptr; ///< device scalar; null = no outlier part
  /// [m, k] codes the product was computed from, or null when their outlier columns are zero. Set: those
  /// columns still hold codes, and acc - sum_j q[r, idx_j] * cb[c, idx_j] (exact, in int32) replaces acc.
  const int8_t* outlier_q = nullptr;
  /// Then y = gelu_tanh(y rounded to the output dtype), as the model's separate GELU pass would compute it.
  bool gelu_tanh = false;
};

/// Which of qbench's own int8 GEMM kernels launch_int8_gemm runs. kBest: wgmma where available and k % 16 == 0
/// (16-byte aligned operands), else mma.sync. kMmaSync: the pipelined mma.sync kernel (sm_80+, any shape).
/// kWgmma: the Hopper warpgroup kernel, operands brought in by TMA (sm_90 with an sm_90a build and a driver with
/// cuTensorMapEncodeTiled; k % 16 == 0, 16-byte aligned operands), kLaunchUnsupported elsewhere;
/// 128 x 128 tiles, 64 x 64 when those would leave SMs idle.
enum class Int8Kernel { kBest, kMmaSync, kWgmma };

/// Whether the current device runs the wgmma int8 GEMM: compute capability 9.0 and sm_90a code in this binary.
bool int8_wgmma_available();

/// Whether the wgmma GEMMs take their 64 x 64 tiles for an m x n product: when 128 x 128 tiles would leave
/// SMs of the current device idle (at 128 tokens, every GPT-2 projection).
bool wgmma_small_tiles(int64_t m, int64_t n);

/// y [m, n] (dtype) = epilogue(xq [m, k] int8 . wq [n, k]^T int32) on int8 tensor cores, the epilogue applied to
/// the accumulators (the int32 product never reaches memory).
int launch_int8_gemm(const int8_t* xq, const int8_t* wq, int64_t m, int64_t n, int64_t k, const Int8Epilogue& ep,
                     void* y, DType dtype, cudaStream_t stream, Int8Kernel kernel = Int8Kernel::kBest);

/// y [m, n] (dtype) = epilogue(acc [m, n] int32) for products that came from cuBLASLt; k = inner size (for the
/// outlier part).
int launch_int8_epilogue(const int32_t* acc, int64_t m, int64_t n, int64_t k, const Int8Epilogue& ep, void* y,
                         DType dtype, cudaStream_t stream);

/// out [n, k] (dtype) = q * scale[per_channel ? row : 0]. max_blocks as for launch_nf4_dequantize, the same
/// thread budget in four times as many blocks of 256 threads.
int launch_int8_dequantize(const int8_t* q, const float* scale, bool per_channel, int64_t n, int64_t k, void* out,
                           DType dtype, cudaStream_t stream, int max_blocks = 0);

// --- FP8 E4M3 (kernels/cuda/fp8.cu) --------------------------------------------------------------------------

/// Per-token E4M3: scale[r] = absmax / 448; q = e4m3_rne_satfinite(x / scale) bits; all-zero rows: scale 0, q 0.
int launch_quantize_rows_fp8(const void* x, DType dtype, int64_t t, int64_t k, uint8_t* q, float* scale,
                             cudaStream_t stream);

/// y [m, n] (dtype) = epilogue(xq [m, k] . wq [n, k]^T), both E4M3 bits, on Hopper's fp8 tensor cores: int8.cu's
/// wgmma kernel (64 x 64 tiles) on E4M3 operands. The tensor cores' fp32 sums are added into separate fp32
/// accumulators every 128 of k, as cuBLASLt does without its fast-accumulation mode (their own accumulation is
/// narrower than fp32). The epilogue is Int8Epilogue's scale, bias and GELU part; its outlier fields must be
/// null. Needs int8_wgmma_available(), k % 16 == 0 and 16-byte aligned operands; kLaunchUnsupported elsewhere.
int launch_fp8_gemm(const uint8_t* xq, const uint8_t* wq, int64_t m, int64_t n, int64_t k, const Int8Epilogue& ep,
                    void* y, DType dtype, cudaStream_t stream);

/// out [n, k] (dtype) = e4m3_decode(q) * scale[row].
int launch_fp8_dequantize(const uint8_t* q, const float* scale, int64_t n, int64_t k, void* out, DType dtype,
                          cudaStream_t stream);

// --- Residual add + LayerNorm (kernels/cuda/norm.cu) --------------------------------------------------------

/// The transformer block's "h = h + delta; a = LayerNorm(h)" in one pass over memory, rows of `cols` elements:
/// h_out = dtype(h + delta) (one rounding, as the separate add), a = dtype((h_out - mean) * rstd * gamma + beta)
/// with mean and the biased variance of h_out in fp32 (two passes over the row held in cache).
/// h, delta, h_out, a, gamma, beta all in `dtype`; h_out may alias h.
/// wait_flag (optional): the kernel also does not complete before *wait_flag == wait_value (launch_stream_flag_set
/// on another stream), so the kernels queued after it see that stream's writes; one thread polls it, after its row.
int launch_add_layer_norm(const void* h, const void* delta, const void* gamma, const void* beta, float eps,
                          int64_t rows, int64_t cols, void* h_out, void* a, DType dtype, cudaStream_t stream,
                          const int* wait_flag = nullptr, int wait_value = 0);

/// The per-token code a fused producer writes (launch_add_layer_norm_quant).
enum class ActCode { kInt8, kFp8E4M3 };

/// launch_add_layer_norm with the normalized rows quantized per token instead of written: q [rows, cols] codes
/// (int8, or E4M3 bits), scale [rows] - the arithmetic of launch_quantize_rows_int8 (no threshold) / _fp8 on the
/// values launch_add_layer_norm would write, so the codes are the same. fp16/bf16 rows of cols % 256 == 0 and
/// <= 1024 with 16-byte aligned pointers (q 8-byte) only; kLaunchUnsupported otherwise (the caller composes).
int launch_add_layer_norm_quant(const void* h, const void* delta, const void* gamma, const void* beta, float eps,
                                int64_t rows, int64_t cols, void* h_out, uint8_t* q, float* scale, DType dtype,
                                ActCode code, cudaStream_t stream);

/// launch_add_layer_norm (fp16) for an LLM.int8 input: writes h_out and a, and a's per-token codes and outlier
/// columns as launch_quantize_rows_int8_outliers would make them from a (state, idx, count as there). Rows of
/// cols % 256 == 0 and <= 1024 with 16-byte aligned pointers (q 8-byte) only; kLaunchUnsupported otherwise.
int launch_add_layer_norm_llm_int8(const void* h, const void* delta, const void* gamma, const void* beta, float eps,
                                   int64_t rows, int64_t cols, float threshold, void* h_out, void* a, int8_t* q,
                                   float* scale, int32_t* state, int32_t* idx, int32_t* count, cudaStream_t stream);

}  // namespace evalsvc::kernels::cuda
