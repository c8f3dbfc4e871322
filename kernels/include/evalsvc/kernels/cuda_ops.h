#pragma once
// CUDA implementations of the quantization methods of SPEC section 2, as torch-level ops on CUDA tensors.
//
// Declared in every build; defined only when the build has the CUDA kernels and a CUDA libtorch
// (EVALSVC_WITH_CUDA, set by kernels/CMakeLists.txt). Callers test cuda::built() first (or guard with
// EVALSVC_WITH_CUDA) - on a CPU build a call would not link.
//
// Every op checks its arguments (device, dtype, shape, contiguity) and throws evalsvc::InputError naming the
// argument, the expected and the actual value; a failing kernel launch throws evalsvc::CudaError with the file
// and line of the check. Nothing here synchronises with the host: outlier detection happens on the device.
// Kernels run on at::cuda::getCurrentCUDAStream() of the tensors' device.
//
// Layouts are those of the CPU references in reference.h (kernels::ref): weights are [out, in] row-major.
// "Linear" ops take x as [..., in] (any number of leading dims, made contiguous) and return [..., out].
#include <cstdint>
#include <functional>
#include <memory>
#include <utility>
#include <vector>

#include "evalsvc/kernels/quantized_linear.h"
#include "evalsvc/kernels/torch_compat.h"

namespace evalsvc::kernels::cuda {

/// Whether this build contains the CUDA kernels and their libtorch adapter.
constexpr bool built() {
#ifdef EVALSVC_WITH_CUDA
  return true;
#else
  return false;
#endif
}

// ---------------------------------------------------------------------------------------------------------
// NF4 (bitsandbytes Linear4bit, quant_type nf4)

/// An NF4 weight on the GPU, in the layout of ref::Nf4Weight. Element e = o * in_features + k of the
/// [out, in] weight is code e of `packed` (byte e / 2, high nibble when e is even) in block e / blocksize.
struct Nf4Weight {
  torch::Tensor packed;         ///< uint8 [ceil(out*in / 2)]
  torch::Tensor absmax;         ///< fp32 [nblocks]; undefined when double-quantized
  torch::Tensor absmax_q;       ///< uint8 [nblocks] (double quant): absmax = dynamic_map[q] * nested[b / 256] + offset
  torch::Tensor nested_absmax;  ///< fp32 [ceil(nblocks / 256)] (double quant)
  float offset = 0.0f;          ///< double quant: mean of the fp32 absmax that absmax_q encodes
  torch::Tensor nested_map;     ///< fp32 [256] code map of absmax_q (a checkpoint's nested_quant_map);
                                ///< undefined = kDynamicMapSigned of codebooks.h
  torch::Tensor quant_map;      ///< fp32 [16] NF4 levels (a checkpoint's quant_map); undefined = kNf4Levels
  int64_t out_features = 0;
  int64_t in_features = 0;
  int64_t blocksize = 64;       ///< weights per absmax; even, >= 2
  /// True when absmax is stored double-quantized (absmax_q defined).
  bool double_quant() const { return absmax_q.defined(); }
};

/// Which NF4 kernel nf4_linear uses. kAuto: the GEMV for at most kNf4GemvMaxTokens tokens, the fused GEMM up to
/// kNf4DequantMinTokens, and beyond that kDequantMatmul: the whole weight dequantized into a temporary in the
/// compute dtype, then cuBLAS. At many tokens the product is compute-bound, and cuBLAS's tensor-core GEMM
/// beats the fused kernel by more than the dequantization costs (one pass over a few MB). kernel_bench times
/// all three paths; the threshold below is not tuned from those tables yet (docs/perf.md).
enum class Nf4Path { kAuto, kGemv, kGemm, kDequantMatmul };
/// Token count up to which kAuto picks the GEMV path (it re-streams the weight once per 4 tokens).
inline constexpr int64_t kNf4GemvMaxTokens = 4;
/// Token count from which kAuto dequantizes and calls cuBLAS.
inline constexpr int64_t kNf4DequantMinTokens = 64;

/// The dense weight [out, in] in `dtype` (fp16, bf16 or fp32).
torch::Tensor nf4_dequantize(const Nf4Weight& w, torch::ScalarType dtype);
/// The same into `out` (fp16, bf16 or fp32 [out, in], contiguous, on the weight's device): no allocation, so
/// it can run on a side stream into a buffer the caller keeps (WeightPrefetch in worker/src/gpt2.cpp).
/// max_blocks > 0 caps the grid (launch_nf4_dequantize): the kernel then runs beside other work, not over it.
void nf4_dequantize_into(const Nf4Weight& w, torch::Tensor& out, int max_blocks = 0);
/// nf4_dequantize_into for up to four weights on one device into outputs of one dtype: one launch where the
/// shapes allow (launch_nf4_dequantize_batch), else one each. The same values.
void nf4_dequantize_batch_into(const std::vector<const Nf4Weight*>& w, const std::vector<torch::Tensor*>& out,
                               int max_blocks = 0);

/// y = x W^T + bias with W dequantized on the fly (tiles decoded into shared memory, tensor-core mma with
/// fp32 accumulation; batch-1 GEMV path streaming the packed weight). x: fp16 or bf16 [..., in];
/// bias: undefined or [out] (any float dtype; x's dtype saves a conversion on the dequantize path);
/// gelu_tanh: apply GELU (tanh) to the output, in the cuBLASLt epilogue on the dequantize path. Returns x's dtype.
torch::Tensor nf4_linear(const torch::Tensor& x, const Nf4Weight& w, const torch::Tensor& bias,
                         Nf4Path path = Nf4Path::kAuto, bool gelu_tanh = false);

// ---------------------------------------------------------------------------------------------------------
// INT8: per-token activation quantization, int8 GEMM with a dequantizing epilogue, LLM.int8, weight-only

/// Per-token int8 activations. q: int8 [T, in]; scale: fp32 [T] = row absmax / 127 (0 for a row of zeros,
/// whose q is all 0); outlier_cols: int32 [in], 1 for an outlier column, 0 otherwise (undefined when no
/// outlier detection was asked for).
struct Int8Activations {
  torch::Tensor q;
  torch::Tensor scale;
  torch::Tensor outlier_cols;
};

/// Quantizes x (fp16, bf16 or fp32, [T, in]) per token: q = round_half_even(x / scale) clamped to +-127.
/// threshold > 0 (LLM.int8, as ref::quantize_llm_int8_activations and bitsandbytes): a column is an outlier
/// when any |x| >= threshold in it; the row absmax skips elements with |x| >= threshold; outlier columns are
/// zeroed in q. threshold <= 0: plain per-token quantization (W8A8, as ref::quantize_per_token).
/// x is used as given: LLM.int8's rounding of x to fp16 happens in llm_int8_linear.
Int8Activations quantize_per_token_int8(const torch::Tensor& x, double threshold);

/// Which int8 matrix product int8_linear uses. kFused: qbench's own tensor-core kernel with the dequantizing
/// epilogue fused (no int32 product in memory), the best one for the device: wgmma on Hopper (sm_90a build,
/// in % 16 == 0), else the pipelined mma.sync kernel (sm_80+, any shape). kMmaSync, kWgmma: one of those kernels
/// explicitly (kWgmma: UnsupportedError off Hopper). kCublasLt: at::_int_mm (needs T > 16, in and out multiples
/// of 8), which writes the int32 product to memory, then the epilogue kernel reads it back.
/// kAuto, from kernel_bench on an H200 (docs/perf.md): wgmma where it runs (it is the fastest at every token
/// count measured, 1 to 32,768: at 128 tokens, quantizer included, 6.0-11.1 us a call in a CUDA graph against
/// cuBLASLt's 9.0-14.7);
/// without it, cuBLASLt where its limits allow, else mma.sync.
enum class Int8Gemm { kAuto, kCublasLt, kFused, kMmaSync, kWgmma };

/// Whether Int8Gemm::kWgmma runs on the current device (compute capability 9.0 and sm_90a code in this build).
bool int8_wgmma_available();

/// out[t, o] = (sum_k xq[t, k] * wq[o, k]) * xscale[t] * wscale[o] * alpha + bias[o], int32 accumulation,
/// cast to out_dtype (fp16, bf16 or fp32). xq int8 [T, in]; xscale fp32 [T]; wq int8 [out, in];
/// wscale fp32 [out] or [1] (per tensor); bias undefined or [out] (fp32 saves a conversion).
/// gelu_tanh: GELU (tanh) on the output, in the epilogue.
torch::Tensor int8_linear(const torch::Tensor& xq, const torch::Tensor& xscale, const torch::Tensor& wq,
                          const torch::Tensor& wscale, const torch::Tensor& bias, torch::ScalarType out_dtype,
                          double alpha = 1.0, Int8Gemm gemm = Int8Gemm::kAuto, bool gelu_tanh = false);

/// int8 W8A8: x (fp16/bf16/fp32 [..., in]) quantized per token, then int8_linear; returns x's dtype.
/// wq int8 [out, in] with wscale fp32 [out] (per channel) or [1] (per tensor).
/// gelu_tanh: GELU (tanh) on the output, in the epilogue.
torch::Tensor int8_w8a8_linear(const torch::Tensor& x, const torch::Tensor& wq, const torch::Tensor& wscale,
                               const torch::Tensor& bias, Int8Gemm gemm = Int8Gemm::kAuto, bool gelu_tanh = false);

/// LLM.int8 (bitsandbytes Linear8bitLt) without host synchronisation, as ref::llm_int8_linear: x is rounded to
/// fp16 (as bitsandbytes casts it); outlier columns of x (any |x| >= threshold) go through fp16-rounded x times the dequantized weight columns (CB * SCB / 127), the
/// rest through the int8 GEMM; out = C * rowstat * SCB / (127*127) + outlier part + bias. The outlier
/// columns are found in the quantizer's one pass over x and compacted into a device-side index list that the GEMM
/// epilogue walks; their codes stay in the product and the epilogue subtracts them (exact, in int32).
/// x: fp16/bf16/fp32 [..., in]; CB int8 [out, in]; SCB fp32 [out]; returns x's dtype. threshold <= 0: no
/// outlier decomposition. outlier_state: int32 [>= llm_int8_outlier_state_numel(in)] on x's device, zero
/// (torch::zeros) when first handed over; the call leaves it zero, so a caller that keeps one (a layer) saves a
/// clearing launch per call. Use it from one stream at a time. Undefined: the call zeroes one of its own.
torch::Tensor llm_int8_linear(const torch::Tensor& x, const torch::Tensor& CB, const torch::Tensor& SCB,
                              const torch::Tensor& bias, double threshold, Int8Gemm gemm = Int8Gemm::kAuto,
                              bool gelu_tanh = false, const torch::Tensor& outlier_state = {});

/// Elements of llm_int8_linear's outlier state for inputs of `in` columns: a bit mask of the columns (int32
/// words) and a block counter.
inline constexpr int64_t llm_int8_outlier_state_numel(int64_t in) { return (in + 31) / 32 + 1; }

/// A zeroed outlier state for inputs of `in` columns on `device` (int32 [llm_int8_outlier_state_numel(in)]).
torch::Tensor llm_int8_outlier_state(int64_t in, const torch::Device& device);

/// Weight-only int8: q int8 [out, in] times scale (fp32 [1] per tensor or [out] per channel) in `dtype`
/// (fp16, bf16 or fp32).
torch::Tensor dequantize_int8_weight(const torch::Tensor& q, const torch::Tensor& scale, torch::ScalarType dtype);
/// The same into `out` (fp16, bf16 or fp32 [out, in], contiguous, on q's device), without allocating;
/// max_blocks as for nf4_dequantize_into.
void dequantize_int8_weight_into(const torch::Tensor& q, const torch::Tensor& scale, torch::Tensor& out,
                                 int max_blocks = 0);

/// Weight-only int8 linear: dequantize_int8_weight to x's dtype, then cuda::linear. x fp16/bf16/fp32.
torch::Tensor int8_weight_only_linear(const torch::Tensor& x, const torch::Tensor& q, const torch::Tensor& scale,
                                      const torch::Tensor& bias, bool gelu_tanh = false);

/// The plain product x [..., in] w [out, in]^T + bias in x's dtype through cuBLAS(Lt); with gelu_tanh, GELU
/// (tanh) in cuBLASLt's GELU_BIAS epilogue (at::_addmm_activation) instead of a separate pass. w and bias
/// (undefined or [out]) in x's dtype.
torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& bias, bool gelu_tanh);

// ---------------------------------------------------------------------------------------------------------
// FP8 E4M3 W8A8 (compute capability 8.9+)

/// Per-token fp8 activations: q uint8 [T, in] holding E4M3FN bit patterns (round to nearest even, saturate
/// to +-448); scale fp32 [T] = row absmax / 448 (0 for a row of zeros, whose q is all 0).
struct Fp8Activations {
  torch::Tensor q;
  torch::Tensor scale;
};

/// Whether `device` can run fp8_linear (compute capability >= 8.9).
bool fp8_supported(const torch::Device& device);

/// Quantizes x (fp16, bf16 or fp32, [T, in]) per token to E4M3 (runs on any CUDA device).
Fp8Activations quantize_per_token_fp8(const torch::Tensor& x);

/// Which fp8 matrix product fp8_linear uses. kCublasLt: cublasLtMatmul with outer-vector scales (cuBLAS 12.9+),
/// output in x's dtype with the bias and GELU in its epilogue (fp16/bf16 x, in and out multiples of 16);
/// kScaledMm: at::_scaled_mm's rowwise kernel (bf16 output, converted to x's dtype; GELU a separate pass);
/// kWgmma: qbench's wgmma kernel (the int8 one on E4M3 codes, 64 x 64 tiles, fp32 sums promoted every 128 of k;
/// bias and GELU in its epilogue; compute capability 9.0 with an sm_90a build, in % 16 == 0);
/// kAuto: kWgmma where it runs and its 64 x 64 tiles are the ones the int8 product would take (few tokens:
/// cuBLASLt's fp8 tiles leave most SMs idle there), else kCublasLt where it applies and cuBLASLt has an
/// algorithm, else kScaledMm.
enum class Fp8Gemm { kAuto, kCublasLt, kScaledMm, kWgmma };

/// What an fp8 product asked for with kAuto runs, process-wide: kAuto (the default) keeps the rule above; another
/// value makes every kAuto product that one (`qbench bench --fp8-gemm`, to time a whole model on each in one run).
void set_fp8_auto_gemm(Fp8Gemm gemm);
Fp8Gemm fp8_auto_gemm_setting();

/// Programmatic dependent launch of qbench's chained kernels, process-wide (defined with the launchers,
/// cuda_launchers.h): on by default; `qbench bench --pdl off` turns it off to time both in one run.
void set_programmatic_launch(bool on);
bool programmatic_launch();

/// fp8 W8A8: x quantized per token to E4M3, product with per-token x per-channel scales, + bias, then GELU
/// (tanh) when gelu_tanh; returns x's dtype. wq uint8 [out, in] E4M3 bits; wscale fp32 [out].
/// UnsupportedError below compute capability 8.9, or for kCublasLt where cuBLASLt cannot run it.
torch::Tensor fp8_linear(const torch::Tensor& x, const torch::Tensor& wq, const torch::Tensor& wscale,
                         const torch::Tensor& bias, bool gelu_tanh = false, Fp8Gemm gemm = Fp8Gemm::kAuto);

/// fp8_linear on activations quantized beforehand (quantize_per_token_fp8, add_layer_norm_quantized):
/// a.q uint8 [T, in] E4M3 bits, a.scale fp32 [T]; returns [T, out] in out_dtype (fp16, bf16 or fp32).
torch::Tensor fp8_linear_quantized(const Fp8Activations& a, const torch::Tensor& wq, const torch::Tensor& wscale,
                                   const torch::Tensor& bias, torch::ScalarType out_dtype, bool gelu_tanh = false,
                                   Fp8Gemm gemm = Fp8Gemm::kAuto);

/// The dense weight q * scale[o] in `dtype` (fp16, bf16 or fp32) from E4M3 bits q uint8 [out, in] and
/// wscale fp32 [out] (runs on any CUDA device; used for checks and by fallbacks).
torch::Tensor dequantize_fp8_weight(const torch::Tensor& q, const torch::Tensor& wscale, torch::ScalarType dtype);

// ---------------------------------------------------------------------------------------------------------
// Streams

/// launch_l2_prefetch of every tensor's bytes (contiguous, 16-byte aligned, all on one CUDA device; undefined
/// and empty ones skipped) on that device's current stream: the data stays as it is, L2 is asked to hold it.
/// InputError naming the tensor otherwise.
void l2_prefetch(const std::vector<torch::Tensor>& tensors);
/// Whether the current stream of `device` is capturing a CUDA graph (work queued now is recorded, not run).
bool current_stream_capturing(const torch::Device& device);

/// launch_stream_flag_set on flag's device's current stream: flag (an int32 CUDA tensor of one element) becomes
/// `value` once the work queued before it there is done. add_layer_norm's wait_flag reads it on another stream.
void set_stream_flag(const torch::Tensor& flag, int value);
/// launch_stream_flag_wait on the current stream: the work queued after it there starts once flag holds `value`.
void wait_stream_flag(const torch::Tensor& flag, int value);

/// A second stream on one device, for work that overlaps the current stream's and is ordered against it by
/// events only (the host never waits). The model uses it to dequantize the next layer's weights while the
/// current layer computes. Works inside CUDA graph capture: the side stream joins a capture by waiting on an
/// event recorded on the capturing stream, and leaves it when the capturing stream waits on its last event.
/// Events are numbered 0 .. events-1; a wait refers to the latest record of that event, as in CUDA.
class SideStream {
 public:
  /// A stream of its own (not one of PyTorch's pool, which a caller may be capturing on), of default
  /// priority: a high priority would let its blocks jump ahead of the current stream's.
  SideStream(const torch::Device& device, int events);
  ~SideStream();
  SideStream(const SideStream&) = delete;
  SideStream& operator=(const SideStream&) = delete;

  /// Records `event` on the current stream of the device / on the side stream.
  void record_current(int event);
  void record_side(int event);
  /// The side stream's later work waits for the latest record of `event` / the current stream's does.
  void side_waits(int event);
  void current_waits(int event);
  /// Calls f with the side stream as the device's current stream (ops inside f launch there).
  void run_on_side(const std::function<void()>& f);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// ---------------------------------------------------------------------------------------------------------
// Transformer block pieces

/// ref::add_layer_norm in one kernel: {h + delta, LayerNorm(h + delta)} for h, delta [..., cols] of one
/// fp16/bf16/fp32 dtype and gamma, beta [cols] of that dtype. Inference only (no autograd).
/// wait_flag (optional, as set_stream_flag's): the kernel does not complete before it holds wait_value, so what
/// the current stream runs next sees the writes of the stream that set it.
std::pair<torch::Tensor, torch::Tensor> add_layer_norm(const torch::Tensor& h, const torch::Tensor& delta,
                                                       const torch::Tensor& gamma, const torch::Tensor& beta,
                                                       double eps, const torch::Tensor& wait_flag = torch::Tensor(),
                                                       int wait_value = 0);

/// Activations quantized per token by the kernel that produced them: q in the activations' shape (int8 codes
/// for kInt8 and kLlmInt8, E4M3 bits in uint8 for kFp8E4M3), scale fp32 [rows]; for kLlmInt8 also the rows and
/// their outlier columns.
struct QuantizedActivations {
  ActivationCode code = ActivationCode::kNone;
  torch::Tensor q;
  torch::Tensor scale;
  OutlierColumnsInput outliers;
};

/// add_layer_norm with LayerNorm(h + delta) quantized per token to `code` (kInt8, kFp8E4M3, or kLlmInt8 with
/// `threshold` > 0 and an optional zeroed `outlier_state` as llm_int8_linear takes, fp16 only) instead of
/// returned: {h + delta, codes}. The codes are those of add_layer_norm followed by quantize_per_token_int8
/// (threshold 0), quantize_per_token_fp8 or llm_int8_linear's quantizer, bit for bit; one kernel for fp16/bf16
/// rows of 256, 512, 768 or 1,024, those two ops otherwise. kLlmInt8 returns the rows too (outliers.rows).
std::pair<torch::Tensor, QuantizedActivations> add_layer_norm_quantized(const torch::Tensor& h,
                                                                        const torch::Tensor& delta,
                                                                        const torch::Tensor& gamma,
                                                                        const torch::Tensor& beta, double eps,
                                                                        ActivationCode code, double threshold = 0.0,
                                                                        const torch::Tensor& outlier_state = {});

/// llm_int8_linear on input quantized beforehand (add_layer_norm_quantized with kLlmInt8): a.q int8 [T, in],
/// a.scale fp32 [T], a.outliers (fp16 rows [T, in], the outlier columns); returns [T, out] in out_dtype (fp16,
/// bf16 or fp32), the values llm_int8_linear gives on those rows.
torch::Tensor llm_int8_linear_quantized(const QuantizedActivations& a, const torch::Tensor& CB, const torch::Tensor& SCB,
                                        const torch::Tensor& bias, torch::ScalarType out_dtype,
                                        Int8Gemm gemm = Int8Gemm::kAuto, bool gelu_tanh = false);

}  // namespace evalsvc::kernels::cuda
