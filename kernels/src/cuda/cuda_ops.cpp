// The libtorch adapter over the qbench CUDA launchers (kernels/cuda/*.cu): checks every tensor argument
// (device, dtype, shape, contiguity) and reports the bad value as InputError, picks the current stream of the
// tensors' device, calls the launcher and turns a non-zero status into CudaError (or InternalError for an
// argument the checks here should have caught) with the file and line of the call.
// Compiled only with a CUDA-enabled libtorch (PyTorch 2.x), see kernels/CMakeLists.txt.
#include "evalsvc/kernels/cuda_ops.h"

#include <atomic>
#include <cmath>
#include <map>
#include <mutex>
#include <optional>
#include <tuple>
#include <string>
#include <vector>

#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAGuard.h>
#include <cublasLt.h>
#include <dlfcn.h>
#include <fmt/format.h>

#include "evalsvc/common/error.h"
#include "evalsvc/kernels/codebooks.h"
#include "evalsvc/kernels/cuda_launchers.h"

// Declared in ATen/cuda/CUDAContextLight.h up to PyTorch 2.x and in a header of its own in later versions;
// repeated here so the adapter does not depend on which header carries it.
namespace at::cuda {
cublasLtHandle_t getCurrentCUDABlasLtHandle();
}  // namespace at::cuda

namespace evalsvc::kernels::cuda {
namespace {

std::string shape_of(const torch::Tensor& t) {
  std::string s = "[";
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.size(i));
  return s + "]";
}

std::string describe(const torch::Tensor& t) {
  if (!t.defined()) return "undefined";
  return fmt::format("{} {} on {}{}", c10::toString(t.scalar_type()), shape_of(t), t.device().str(),
                     t.is_contiguous() ? "" : " (non-contiguous)");
}

/// `t` must be a defined CUDA tensor; with `like` defined, on the same device.
void check_cuda(const char* op, const char* name, const torch::Tensor& t, const torch::Tensor& like = {}) {
  EVALSVC_CHECK(t.defined(), InputError, "cuda::{}: {} is undefined", op, name);
  EVALSVC_CHECK(t.is_cuda(), InputError, "cuda::{}: {} must be a CUDA tensor, got {}", op, name, describe(t));
  if (like.defined()) {
    EVALSVC_CHECK(t.device() == like.device(), InputError, "cuda::{}: {} is on {} but the input is on {}", op, name,
                  t.device().str(), like.device().str());
  }
}

void check_dtype(const char* op, const char* name, const torch::Tensor& t, std::initializer_list<torch::ScalarType> ok) {
  for (const auto s : ok) {
    if (t.scalar_type() == s) return;
  }
  std::string expected;
  for (const auto s : ok) expected += (expected.empty() ? "" : " or ") + std::string(c10::toString(s));
  throw InputError(fmt::format("cuda::{}: {} must be {}, got {}", op, name, expected, describe(t)));
}

void check_contiguous(const char* op, const char* name, const torch::Tensor& t) {
  EVALSVC_CHECK(t.is_contiguous(), InputError, "cuda::{}: {} must be contiguous, got {}", op, name, describe(t));
}

void check_numel(const char* op, const char* name, const torch::Tensor& t, int64_t expected) {
  EVALSVC_CHECK(t.numel() == expected, InputError, "cuda::{}: {} must have {} elements, got {}", op, name, expected,
                describe(t));
}

/// A weight-like argument: defined, on x's device, the given dtype, contiguous, `numel` elements.
void check_param(const char* op, const char* name, const torch::Tensor& t, const torch::Tensor& like,
                 torch::ScalarType dtype, int64_t numel) {
  check_cuda(op, name, t, like);
  check_dtype(op, name, t, {dtype});
  check_contiguous(op, name, t);
  check_numel(op, name, t, numel);
}

DType launcher_dtype(torch::ScalarType s) {
  switch (s) {
    case torch::kFloat16: return DType::kF16;
    case torch::kBFloat16: return DType::kBF16;
    case torch::kFloat32: return DType::kF32;
    default: break;
  }
  throw InternalError(fmt::format("cuda ops: no launcher dtype for {}", c10::toString(s)));
}

[[noreturn]] void throw_launch(int status, const char* call, const char* file, int line) {
  if (status < 0) {
    throw InternalError(fmt::format("{}:{}: {} rejected its arguments ({}) although the adapter checked them", file,
                                    line, call, launch_status_string(status)));
  }
  throw CudaError(fmt::format("{}:{}: {} failed: {} (cudaError {})", file, line, call, launch_status_string(status),
                              status));
}

#define EVALSVC_LAUNCH(call)                                           \
  do {                                                                 \
    const int evalsvc_status_ = (call);                                \
    if (evalsvc_status_ != 0) throw_launch(evalsvc_status_, #call, __FILE__, __LINE__); \
  } while (0)

cudaStream_t stream_of(const torch::Tensor& t) { return at::cuda::getCurrentCUDAStream(t.device().index()).stream(); }

/// x [..., in] -> contiguous [T, in]; checks CUDA, dtype and the last dimension.
torch::Tensor flatten_input(const char* op, const torch::Tensor& x, int64_t in_features,
                            std::initializer_list<torch::ScalarType> dtypes) {
  check_cuda(op, "x", x);
  check_dtype(op, "x", x, dtypes);
  EVALSVC_CHECK(x.dim() >= 1 && x.size(-1) == in_features, InputError,
                "cuda::{}: x must be [..., {}] (in_features), got {}", op, in_features, describe(x));
  return x.reshape({-1, in_features}).contiguous();
}

/// [..., out] with the leading dims of x.
std::vector<int64_t> output_shape(const torch::Tensor& x, int64_t out_features) {
  std::vector<int64_t> s(x.sizes().begin(), x.sizes().end());
  s.back() = out_features;
  return s;
}

/// Bias as `dtype` [out] on x's device, or undefined; no conversion when it already is.
torch::Tensor bias_in(const char* op, const torch::Tensor& bias, const torch::Tensor& like, int64_t out_features,
                      torch::ScalarType dtype) {
  if (!bias.defined()) return {};
  check_cuda(op, "bias", bias, like);
  check_dtype(op, "bias", bias, {torch::kFloat32, torch::kFloat16, torch::kBFloat16});
  EVALSVC_CHECK(bias.dim() == 1 && bias.size(0) == out_features, InputError, "cuda::{}: bias must be [{}], got {}",
                op, out_features, describe(bias));
  return bias.to(dtype).contiguous();
}

/// Bias as fp32 [out] on x's device (what the kernels' epilogues read), or undefined.
torch::Tensor bias_f32(const char* op, const torch::Tensor& bias, const torch::Tensor& like, int64_t out_features) {
  return bias_in(op, bias, like, out_features, torch::kFloat32);
}

const float* ptr_or_null(const torch::Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }

// ---- NF4 ----------------------------------------------------------------------------------------------------

Nf4View nf4_view(const char* op, const Nf4Weight& w, const torch::Tensor& like) {
  EVALSVC_CHECK(w.out_features > 0 && w.in_features > 0, InputError,
                "cuda::{}: NF4 weight shape must be positive, got out_features={} in_features={}", op, w.out_features,
                w.in_features);
  EVALSVC_CHECK(w.blocksize >= 2 && w.blocksize % 2 == 0, InputError,
                "cuda::{}: NF4 blocksize must be even and >= 2, got {}", op, w.blocksize);
  const int64_t numel = w.out_features * w.in_features;
  const int64_t nblocks = (numel + w.blocksize - 1) / w.blocksize;
  const torch::Tensor& ref = like.defined() ? like : w.packed;
  check_param(op, "packed", w.packed, ref, torch::kUInt8, (numel + 1) / 2);
  Nf4View v;
  v.packed = w.packed.data_ptr<uint8_t>();
  v.n = w.out_features;
  v.k = w.in_features;
  v.blocksize = w.blocksize;
  if (w.double_quant()) {
    check_param(op, "absmax_q", w.absmax_q, ref, torch::kUInt8, nblocks);
    check_param(op, "nested_absmax", w.nested_absmax, ref, torch::kFloat32,
                (nblocks + kNestedBlockSize - 1) / kNestedBlockSize);
    EVALSVC_CHECK(std::isfinite(w.offset), InputError, "cuda::{}: NF4 offset must be finite, got {}", op, w.offset);
    v.absmax_q = w.absmax_q.data_ptr<uint8_t>();
    v.nested = w.nested_absmax.data_ptr<float>();
    v.offset = w.offset;
    if (w.nested_map.defined()) {
      check_param(op, "nested_map", w.nested_map, ref, torch::kFloat32, 256);
      v.nested_map = w.nested_map.data_ptr<float>();
    }
  } else {
    check_param(op, "absmax", w.absmax, ref, torch::kFloat32, nblocks);
    v.absmax = w.absmax.data_ptr<float>();
  }
  if (w.quant_map.defined()) {
    check_param(op, "quant_map", w.quant_map, ref, torch::kFloat32, 16);
    v.quant_map = w.quant_map.data_ptr<float>();
  }
  return v;
}

// ---- INT8 ---------------------------------------------------------------------------------------------------

/// Shared body of int8_linear and llm_int8_linear: `ep` carries the outlier fields (or none).
torch::Tensor int8_product(const char* op, const torch::Tensor& xq, const torch::Tensor& xscale,
                           const torch::Tensor& wq, const torch::Tensor& wscale, const torch::Tensor& bias,
                           torch::ScalarType out_dtype, double alpha, Int8Gemm gemm, Int8Epilogue ep) {
  check_cuda(op, "xq", xq);
  check_dtype(op, "xq", xq, {torch::kInt8});
  check_contiguous(op, "xq", xq);
  EVALSVC_CHECK(xq.dim() == 2, InputError, "cuda::{}: xq must be [T, in], got {}", op, describe(xq));
  const int64_t m = xq.size(0);
  const int64_t k = xq.size(1);
  check_cuda(op, "wq", wq, xq);
  check_dtype(op, "wq", wq, {torch::kInt8});
  check_contiguous(op, "wq", wq);
  EVALSVC_CHECK(wq.dim() == 2 && wq.size(1) == k && wq.size(0) > 0, InputError,
                "cuda::{}: wq must be [out, {}] to match xq {}, got {}", op, k, describe(xq), describe(wq));
  const int64_t n = wq.size(0);
  check_param(op, "xscale", xscale, xq, torch::kFloat32, m);
  check_cuda(op, "wscale", wscale, xq);
  check_dtype(op, "wscale", wscale, {torch::kFloat32});
  check_contiguous(op, "wscale", wscale);
  EVALSVC_CHECK(wscale.numel() == n || wscale.numel() == 1, InputError,
                "cuda::{}: wscale must have {} (per channel) or 1 (per tensor) elements, got {}", op, n,
                describe(wscale));
  EVALSVC_CHECK(out_dtype == torch::kFloat16 || out_dtype == torch::kBFloat16 || out_dtype == torch::kFloat32,
                InputError, "cuda::{}: out_dtype must be Half, BFloat16 or Float, got {}", op,
                c10::toString(out_dtype));
  EVALSVC_CHECK(std::isfinite(alpha), InputError, "cuda::{}: alpha must be finite, got {}", op, alpha);
  const torch::Tensor b = bias_f32(op, bias, xq, n);

  auto y = torch::empty({m, n}, xq.options().dtype(out_dtype));
  if (m == 0 || k == 0) {  // nothing to multiply: the product is 0, the output is the bias
    if (b.defined()) y.copy_(b.unsqueeze(0).expand({m, n}));
    else y.zero_();
    return y;
  }
  const c10::cuda::CUDAGuard guard(xq.device());
  ep.row_scale = xscale.data_ptr<float>();
  ep.col_scale = wscale.data_ptr<float>();
  ep.col_scale_per_channel = wscale.numel() == n;  // with n == 1 both readings agree
  ep.alpha = static_cast<float>(alpha);
  ep.bias = ptr_or_null(b);

  const bool cublas_ok = m > 16 && k % 8 == 0 && n % 8 == 0;
  EVALSVC_CHECK(gemm != Int8Gemm::kCublasLt || cublas_ok, InputError,
                "cuda::{}: the cuBLASLt int8 product needs T > 16 and in, out multiples of 8, got T={} in={} out={}",
                op, m, k, n);
  const bool wgmma_asked = gemm == Int8Gemm::kWgmma;
  EVALSVC_CHECK(!wgmma_asked || int8_wgmma_available(), UnsupportedError,
                "cuda::{}: the wgmma int8 GEMM needs a compute capability 9.0 GPU and an sm_90a build", op);
  EVALSVC_CHECK(!wgmma_asked || k % 16 == 0, InputError, "cuda::{}: the wgmma int8 GEMM needs in % 16 == 0, got in={}",
                op, k);
  const cudaStream_t stream = stream_of(xq);
  const bool wgmma_auto = gemm == Int8Gemm::kAuto && k % 16 == 0 && int8_wgmma_available();
  if (gemm == Int8Gemm::kCublasLt || (gemm == Int8Gemm::kAuto && cublas_ok && !wgmma_auto)) {
    // cuBLASLt wants the weight as a column-major [in, out] matrix: wq^T is exactly that view, no copy.
    const torch::Tensor acc = at::_int_mm(xq, wq.t());
    EVALSVC_LAUNCH(launch_int8_epilogue(acc.data_ptr<int32_t>(), m, n, k, ep, y.data_ptr(),
                                        launcher_dtype(out_dtype), stream));
  } else {
    const Int8Kernel kernel = gemm == Int8Gemm::kMmaSync ? Int8Kernel::kMmaSync
                              : gemm == Int8Gemm::kWgmma ? Int8Kernel::kWgmma
                                                         : Int8Kernel::kBest;
    EVALSVC_LAUNCH(launch_int8_gemm(xq.data_ptr<int8_t>(), wq.data_ptr<int8_t>(), m, n, k, ep, y.data_ptr(),
                                    launcher_dtype(out_dtype), stream, kernel));
  }
  return y;
}

void check_threshold(const char* op, double threshold) {
  EVALSVC_CHECK(!std::isnan(threshold), InputError, "cuda::{}: threshold must not be NaN", op);
}

}  // namespace

// ---- NF4 ----------------------------------------------------------------------------------------------------

namespace {
/// w's view after checking it and `out`, the buffer its dense copy goes to (nf4_dequantize_into's arguments).
Nf4View nf4_dense_target(const char* op, const Nf4Weight& w, const torch::Tensor& out) {
  EVALSVC_CHECK(w.packed.defined(), InputError, "cuda::{}: packed is undefined", op);
  check_cuda(op, "packed", w.packed);
  check_cuda(op, "out", out, w.packed);
  check_dtype(op, "out", out, {torch::kFloat16, torch::kBFloat16, torch::kFloat32});
  check_contiguous(op, "out", out);
  EVALSVC_CHECK(out.dim() == 2 && out.size(0) == w.out_features && out.size(1) == w.in_features, InputError,
                "cuda::{}: out must be [{}, {}], got {}", op, w.out_features, w.in_features, describe(out));
  return nf4_view(op, w, w.packed);
}
}  // namespace

void nf4_dequantize_into(const Nf4Weight& w, torch::Tensor& out, int max_blocks) {
  const char* op = "nf4_dequantize";
  EVALSVC_CHECK(max_blocks >= 0, InputError, "cuda::{}: max_blocks must be >= 0, got {}", op, max_blocks);
  const Nf4View v = nf4_dense_target(op, w, out);
  const c10::cuda::CUDAGuard guard(w.packed.device());
  EVALSVC_LAUNCH(
      launch_nf4_dequantize(v, out.data_ptr(), launcher_dtype(out.scalar_type()), stream_of(w.packed), max_blocks));
}

void nf4_dequantize_batch_into(const std::vector<const Nf4Weight*>& w, const std::vector<torch::Tensor*>& out,
                               int max_blocks) {
  const char* op = "nf4_dequantize_batch";
  EVALSVC_CHECK(!w.empty() && w.size() <= 4 && out.size() == w.size(), InputError,
                "cuda::{}: takes 1 to 4 weights and as many outputs, got {} and {}", op, w.size(), out.size());
  EVALSVC_CHECK(max_blocks >= 0, InputError, "cuda::{}: max_blocks must be >= 0, got {}", op, max_blocks);
  std::vector<Nf4View> views;
  std::vector<void*> ptrs;
  for (size_t j = 0; j < w.size(); ++j) {
    EVALSVC_CHECK(w[j] != nullptr && out[j] != nullptr, InputError, "cuda::{}: weight {} or its output is missing",
                  op, j);
    views.push_back(nf4_dense_target(op, *w[j], *out[j]));
    check_cuda(op, "packed", w[j]->packed, w[0]->packed);  // one device and one output dtype for the launch
    check_dtype(op, "out", *out[j], {out[0]->scalar_type()});
    ptrs.push_back(out[j]->data_ptr());
  }
  const c10::cuda::CUDAGuard guard(w[0]->packed.device());
  const int s = launch_nf4_dequantize_batch(views.data(), ptrs.data(), static_cast<int>(views.size()),
                                            launcher_dtype(out[0]->scalar_type()), stream_of(w[0]->packed), max_blocks);
  if (s != kLaunchUnsupported) {
    EVALSVC_LAUNCH(s);
    return;
  }
  for (size_t j = 0; j < w.size(); ++j) nf4_dequantize_into(*w[j], *out[j], max_blocks);  // one by one
}

torch::Tensor nf4_dequantize(const Nf4Weight& w, torch::ScalarType dtype) {
  const char* op = "nf4_dequantize";
  EVALSVC_CHECK(w.packed.defined(), InputError, "cuda::{}: packed is undefined", op);
  EVALSVC_CHECK(dtype == torch::kFloat16 || dtype == torch::kBFloat16 || dtype == torch::kFloat32, InputError,
                "cuda::{}: dtype must be Half, BFloat16 or Float, got {}", op, c10::toString(dtype));
  auto out = torch::empty({w.out_features, w.in_features}, w.packed.options().dtype(dtype));
  nf4_dequantize_into(w, out);
  return out;
}

torch::Tensor nf4_linear(const torch::Tensor& x, const Nf4Weight& w, const torch::Tensor& bias, Nf4Path path,
                         bool gelu_tanh) {
  const char* op = "nf4_linear";
  const torch::Tensor x2 = flatten_input(op, x, w.in_features, {torch::kFloat16, torch::kBFloat16});
  const Nf4View v = nf4_view(op, w, x);
  const int64_t m = x2.size(0);
  if (path == Nf4Path::kDequantMatmul || (path == Nf4Path::kAuto && m >= kNf4DequantMinTokens)) {
    const c10::cuda::CUDAGuard guard(x.device());
    const torch::Tensor wd = nf4_dequantize(w, x2.scalar_type());
    const torch::Tensor b = bias_in(op, bias, x, w.out_features, x2.scalar_type());
    return linear(x2, wd, b, gelu_tanh).view(output_shape(x, w.out_features));
  }
  const torch::Tensor b = bias_f32(op, bias, x, w.out_features);
  auto y = torch::empty({m, w.out_features}, x2.options());
  if (m > 0) {
    const c10::cuda::CUDAGuard guard(x.device());
    const cudaStream_t stream = stream_of(x);
    const DType dt = launcher_dtype(x2.scalar_type());
    const bool gemv = path == Nf4Path::kGemv || (path == Nf4Path::kAuto && m <= kNf4GemvMaxTokens);
    if (gemv) {
      // The GEMV kernel takes at most kNf4GemvMaxM tokens at once; a forced GEMV of more goes in slices.
      const int64_t esize = x2.element_size();
      for (int64_t r = 0; r < m; r += kNf4GemvMaxM) {
        const int64_t rows = std::min<int64_t>(kNf4GemvMaxM, m - r);
        const auto* xp = static_cast<const char*>(x2.data_ptr()) + r * w.in_features * esize;
        auto* yp = static_cast<char*>(y.data_ptr()) + r * w.out_features * esize;
        EVALSVC_LAUNCH(launch_nf4_gemv(xp, v, ptr_or_null(b), yp, rows, dt, stream));
      }
    } else {
      EVALSVC_LAUNCH(launch_nf4_gemm(x2.data_ptr(), v, ptr_or_null(b), y.data_ptr(), m, dt, stream));
    }
  }
  if (gelu_tanh) y = at::gelu(y, "tanh");
  return y.view(output_shape(x, w.out_features));
}

// ---- INT8 ---------------------------------------------------------------------------------------------------

namespace {

/// Per-token int8 codes of x [t, k] in one pass; threshold > 0 also flags the outlier columns (into
/// a.outlier_cols) and compacts them. The codes of those columns are left in a.q (see
/// launch_quantize_rows_int8): the caller zeroes them or has the epilogue subtract them.
Int8Activations quantize_rows_int8(const char* op, const torch::Tensor& x, double threshold,
                                   OutlierColumnsInput* cols) {
  check_cuda(op, "x", x);
  check_dtype(op, "x", x, {torch::kFloat16, torch::kBFloat16, torch::kFloat32});
  EVALSVC_CHECK(x.dim() == 2, InputError, "cuda::{}: x must be [T, in], got {}", op, describe(x));
  check_threshold(op, threshold);
  const torch::Tensor xc = x.contiguous();
  const int64_t t = xc.size(0);
  const int64_t k = xc.size(1);
  Int8Activations out;
  out.q = torch::empty({t, k}, xc.options().dtype(torch::kInt8));
  out.scale = torch::empty({t}, xc.options().dtype(torch::kFloat32));
  const bool outliers = threshold > 0;
  if (t == 0 || k == 0) {
    out.scale.zero_();
    if (outliers) out.outlier_cols = torch::zeros({k}, xc.options().dtype(torch::kInt32));
    return out;
  }
  // The launcher clears the mask itself (on the stream), so no zero-fill kernel here.
  if (outliers) out.outlier_cols = torch::empty({k}, xc.options().dtype(torch::kInt32));
  const c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = stream_of(x);
  int32_t* flags = outliers ? out.outlier_cols.data_ptr<int32_t>() : nullptr;
  EVALSVC_LAUNCH(launch_quantize_rows_int8(xc.data_ptr(), launcher_dtype(xc.scalar_type()), t, k,
                                           static_cast<float>(outliers ? threshold : 0.0), flags,
                                           out.q.data_ptr<int8_t>(), out.scale.data_ptr<float>(), stream));
  if (outliers && cols != nullptr) {
    cols->idx = torch::empty({k}, xc.options().dtype(torch::kInt32));
    cols->count = torch::empty({1}, xc.options().dtype(torch::kInt32));
    EVALSVC_LAUNCH(launch_compact_columns(flags, k, cols->idx.data_ptr<int32_t>(), cols->count.data_ptr<int32_t>(),
                                          stream));
  }
  return out;
}

/// `state` checked as llm_int8_linear's outlier_state for rows of k columns, or (undefined) a zeroed one.
torch::Tensor outlier_state_or_zeros(const char* op, const torch::Tensor& state, const torch::Tensor& like, int64_t k) {
  if (!state.defined()) return llm_int8_outlier_state(k, like.device());
  check_cuda(op, "outlier_state", state, like);
  check_dtype(op, "outlier_state", state, {torch::kInt32});
  check_contiguous(op, "outlier_state", state);
  EVALSVC_CHECK(state.numel() >= llm_int8_outlier_state_numel(k), InputError,
                "cuda::{}: outlier_state needs at least {} elements for in = {}, got {}", op,
                llm_int8_outlier_state_numel(k), k, describe(state));
  return state;
}

/// LLM.int8's quantization of x16 [t, k] (fp16, t, k > 0, threshold > 0): codes, row scales and the compacted
/// outlier columns from launch_quantize_rows_int8_outliers, with `state` (int32, zero, left zero) or,
/// when undefined, a zeroed one of this call's own.
Int8Activations quantize_rows_int8_outliers(const char* op, const torch::Tensor& x16, double threshold,
                                            const torch::Tensor& state, OutlierColumnsInput* cols) {
  const int64_t t = x16.size(0);
  const int64_t k = x16.size(1);
  const torch::Tensor st = outlier_state_or_zeros(op, state, x16, k);
  Int8Activations out;
  out.q = torch::empty({t, k}, x16.options().dtype(torch::kInt8));
  out.scale = torch::empty({t}, x16.options().dtype(torch::kFloat32));
  cols->idx = torch::empty({k}, x16.options().dtype(torch::kInt32));
  cols->count = torch::empty({1}, x16.options().dtype(torch::kInt32));
  const c10::cuda::CUDAGuard guard(x16.device());
  EVALSVC_LAUNCH(launch_quantize_rows_int8_outliers(x16.data_ptr(), DType::kF16, t, k, static_cast<float>(threshold),
                                                    st.data_ptr<int32_t>(), out.q.data_ptr<int8_t>(),
                                                    out.scale.data_ptr<float>(), cols->idx.data_ptr<int32_t>(),
                                                    cols->count.data_ptr<int32_t>(), stream_of(x16)));
  return out;
}

}  // namespace

Int8Activations quantize_per_token_int8(const torch::Tensor& x, double threshold) {
  const char* op = "quantize_per_token_int8";
  OutlierColumnsInput cols;
  Int8Activations a = quantize_rows_int8(op, x, threshold, &cols);
  if (cols.idx.defined()) {  // the reference's codes: outlier columns zeroed
    const c10::cuda::CUDAGuard guard(x.device());
    EVALSVC_LAUNCH(launch_zero_columns(a.q.data_ptr<int8_t>(), a.q.size(0), a.q.size(1), cols.idx.data_ptr<int32_t>(),
                                       cols.count.data_ptr<int32_t>(), stream_of(x)));
  }
  return a;
}

torch::Tensor int8_linear(const torch::Tensor& xq, const torch::Tensor& xscale, const torch::Tensor& wq,
                          const torch::Tensor& wscale, const torch::Tensor& bias, torch::ScalarType out_dtype,
                          double alpha, Int8Gemm gemm, bool gelu_tanh) {
  Int8Epilogue ep;
  ep.gelu_tanh = gelu_tanh;
  return int8_product("int8_linear", xq, xscale, wq, wscale, bias, out_dtype, alpha, gemm, ep);
}

torch::Tensor int8_w8a8_linear(const torch::Tensor& x, const torch::Tensor& wq, const torch::Tensor& wscale,
                               const torch::Tensor& bias, Int8Gemm gemm, bool gelu_tanh) {
  const char* op = "int8_w8a8_linear";
  check_cuda(op, "wq", wq);
  EVALSVC_CHECK(wq.dim() == 2, InputError, "cuda::{}: wq must be [out, in], got {}", op, describe(wq));
  const torch::Tensor x2 = flatten_input(op, x, wq.size(1), {torch::kFloat16, torch::kBFloat16, torch::kFloat32});
  const Int8Activations a = quantize_per_token_int8(x2, 0.0);
  Int8Epilogue ep;
  ep.gelu_tanh = gelu_tanh;
  const torch::Tensor y = int8_product(op, a.q, a.scale, wq, wscale, bias, x.scalar_type(), 1.0, gemm, ep);
  return y.view(output_shape(x, wq.size(0)));
}

namespace {
/// The int8 product of LLM.int8 codes q [T, in] with the outlier part in the epilogue: cols.rows are the rows the
/// codes came from, in the output dtype, cols.idx / count the outlier columns (undefined idx: none).
torch::Tensor llm_int8_product(const char* op, const torch::Tensor& q, const torch::Tensor& scale,
                               const OutlierColumnsInput& cols, const torch::Tensor& CB,
                               const torch::Tensor& SCB, const torch::Tensor& bias, torch::ScalarType out_dtype,
                               Int8Gemm gemm, bool gelu_tanh) {
  Int8Epilogue ep;
  ep.gelu_tanh = gelu_tanh;
  if (cols.idx.defined()) {
    check_cuda(op, "CB", CB, q);
    check_dtype(op, "CB", CB, {torch::kInt8});
    check_contiguous(op, "CB", CB);
    check_param(op, "SCB", SCB, q, torch::kFloat32, CB.size(0));
    ep.outlier_x = cols.rows.data_ptr();
    ep.outlier_cb = CB.data_ptr<int8_t>();
    ep.outlier_scb = SCB.data_ptr<float>();
    ep.outlier_idx = cols.idx.data_ptr<int32_t>();
    ep.outlier_count = cols.count.data_ptr<int32_t>();
    ep.outlier_q = q.data_ptr<int8_t>();
  }
  // C * (absmax_x / 127) * SCB / 127 = C * rowstat * SCB / (127 * 127)
  return int8_product(op, q, scale, CB, SCB, bias, out_dtype, 1.0 / 127.0, gemm, ep);
}
}  // namespace

torch::Tensor llm_int8_linear(const torch::Tensor& x, const torch::Tensor& CB, const torch::Tensor& SCB,
                              const torch::Tensor& bias, double threshold, Int8Gemm gemm, bool gelu_tanh,
                              const torch::Tensor& outlier_state) {
  const char* op = "llm_int8_linear";
  check_cuda(op, "CB", CB);
  EVALSVC_CHECK(CB.dim() == 2, InputError, "cuda::{}: CB must be [out, in], got {}", op, describe(CB));
  const int64_t n = CB.size(0);
  const int64_t k = CB.size(1);
  const torch::Tensor x2 = flatten_input(op, x, k, {torch::kFloat16, torch::kBFloat16, torch::kFloat32});
  check_param(op, "SCB", SCB, x, torch::kFloat32, n);
  check_threshold(op, threshold);
  // bitsandbytes casts the activations to fp16 before it looks for outliers and quantizes.
  const torch::Tensor x16 = x2.scalar_type() == torch::kFloat16 ? x2 : x2.to(torch::kFloat16);
  // One pass over x16 makes the codes and flags the outlier columns; their codes stay in a.q and the epilogue
  // subtracts their integer products (outlier_q) instead of a second pass zeroing them.
  // The flags need no clearing and the compaction no launch of its own: the quantizer's last block does both.
  OutlierColumnsInput cols;
  cols.rows = x2;
  const bool outliers = threshold > 0 && x16.size(0) > 0 && k > 0;
  const Int8Activations a =
      outliers ? quantize_rows_int8_outliers(op, x16.contiguous(), threshold, outlier_state, &cols)
               : quantize_rows_int8(op, x16, threshold, &cols);
  const torch::Tensor y = llm_int8_product(op, a.q, a.scale, cols, CB, SCB, bias, x.scalar_type(), gemm, gelu_tanh);
  return y.view(output_shape(x, n));
}

torch::Tensor llm_int8_outlier_state(int64_t in, const torch::Device& device) {
  return torch::zeros({llm_int8_outlier_state_numel(in)}, torch::TensorOptions().dtype(torch::kInt32).device(device));
}

torch::Tensor llm_int8_linear_quantized(const QuantizedActivations& a, const torch::Tensor& CB,
                                        const torch::Tensor& SCB, const torch::Tensor& bias,
                                        torch::ScalarType out_dtype, Int8Gemm gemm, bool gelu_tanh) {
  const char* op = "llm_int8_linear_quantized";
  EVALSVC_CHECK(a.code == ActivationCode::kLlmInt8, InputError, "cuda::{}: the activations' code must be kLlmInt8", op);
  check_cuda(op, "a.q", a.q);
  EVALSVC_CHECK(a.q.dim() == 2, InputError, "cuda::{}: a.q must be [T, in], got {}", op, describe(a.q));
  const OutlierColumnsInput& o = a.outliers;
  check_cuda(op, "a.outliers.rows", o.rows, a.q);
  check_dtype(op, "a.outliers.rows", o.rows, {torch::kFloat16});
  check_contiguous(op, "a.outliers.rows", o.rows);
  EVALSVC_CHECK(o.rows.numel() == a.q.numel() && o.rows.size(-1) == a.q.size(1), InputError,
                "cuda::{}: a.outliers.rows must hold the {} rows the codes came from, got {}", op, describe(a.q),
                describe(o.rows));
  check_param(op, "a.outliers.idx", o.idx, a.q, torch::kInt32, a.q.size(1));
  check_param(op, "a.outliers.count", o.count, a.q, torch::kInt32, 1);
  // The epilogue reads the outlier columns' rows in the output dtype; fp16 -> fp32 is exact, -> bf16 is not.
  EVALSVC_CHECK(out_dtype == torch::kFloat16 || out_dtype == torch::kFloat32, InputError,
                "cuda::{}: out_dtype must be Half or Float (the rows are fp16), got {}", op, c10::toString(out_dtype));
  OutlierColumnsInput cols = o;
  if (out_dtype != torch::kFloat16) cols.rows = o.rows.to(out_dtype);
  return llm_int8_product(op, a.q, a.scale, cols, CB, SCB, bias, out_dtype, gemm, gelu_tanh);
}

void dequantize_int8_weight_into(const torch::Tensor& q, const torch::Tensor& scale, torch::Tensor& out,
                                 int max_blocks) {
  const char* op = "dequantize_int8_weight";
  EVALSVC_CHECK(max_blocks >= 0, InputError, "cuda::{}: max_blocks must be >= 0, got {}", op, max_blocks);
  check_cuda(op, "q", q);
  check_dtype(op, "q", q, {torch::kInt8});
  check_contiguous(op, "q", q);
  EVALSVC_CHECK(q.dim() == 2, InputError, "cuda::{}: q must be [out, in], got {}", op, describe(q));
  const int64_t n = q.size(0);
  const int64_t k = q.size(1);
  check_cuda(op, "scale", scale, q);
  check_dtype(op, "scale", scale, {torch::kFloat32});
  check_contiguous(op, "scale", scale);
  EVALSVC_CHECK(scale.numel() == n || scale.numel() == 1, InputError,
                "cuda::{}: scale must have {} (per channel) or 1 (per tensor) elements, got {}", op, n,
                describe(scale));
  check_cuda(op, "out", out, q);
  check_dtype(op, "out", out, {torch::kFloat16, torch::kBFloat16, torch::kFloat32});
  check_contiguous(op, "out", out);
  EVALSVC_CHECK(out.dim() == 2 && out.size(0) == n && out.size(1) == k, InputError,
                "cuda::{}: out must be [{}, {}], got {}", op, n, k, describe(out));
  if (n == 0 || k == 0) return;
  const c10::cuda::CUDAGuard guard(q.device());
  EVALSVC_LAUNCH(launch_int8_dequantize(q.data_ptr<int8_t>(), scale.data_ptr<float>(), scale.numel() == n,
                                        n, k, out.data_ptr(), launcher_dtype(out.scalar_type()), stream_of(q),
                                        max_blocks));
}

torch::Tensor dequantize_int8_weight(const torch::Tensor& q, const torch::Tensor& scale, torch::ScalarType dtype) {
  EVALSVC_CHECK(dtype == torch::kFloat16 || dtype == torch::kBFloat16 || dtype == torch::kFloat32, InputError,
                "cuda::dequantize_int8_weight: dtype must be Half, BFloat16 or Float, got {}", c10::toString(dtype));
  check_cuda("dequantize_int8_weight", "q", q);
  EVALSVC_CHECK(q.dim() == 2, InputError, "cuda::dequantize_int8_weight: q must be [out, in], got {}", describe(q));
  auto out = torch::empty({q.size(0), q.size(1)}, q.options().dtype(dtype));
  dequantize_int8_weight_into(q, scale, out);
  return out;
}

torch::Tensor int8_weight_only_linear(const torch::Tensor& x, const torch::Tensor& q, const torch::Tensor& scale,
                                      const torch::Tensor& bias, bool gelu_tanh) {
  const char* op = "int8_weight_only_linear";
  check_cuda(op, "q", q);
  EVALSVC_CHECK(q.dim() == 2, InputError, "cuda::{}: q must be [out, in], got {}", op, describe(q));
  check_cuda(op, "x", x, q);
  check_dtype(op, "x", x, {torch::kFloat16, torch::kBFloat16, torch::kFloat32});
  EVALSVC_CHECK(x.dim() >= 1 && x.size(-1) == q.size(1), InputError, "cuda::{}: x must be [..., {}], got {}", op,
                q.size(1), describe(x));
  const torch::Tensor w = dequantize_int8_weight(q, scale, x.scalar_type());
  // As [tokens, in], the shape every dense path of the layers uses (QuantizedLinear::forward_dense agrees).
  const torch::Tensor x2 = x.reshape({-1, q.size(1)}).contiguous();
  return linear(x2, w, bias_in(op, bias, x, q.size(0), x.scalar_type()), gelu_tanh).view(output_shape(x, q.size(0)));
}

torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& bias, bool gelu_tanh) {
  const char* op = "linear";
  check_cuda(op, "x", x);
  check_dtype(op, "x", x, {torch::kFloat16, torch::kBFloat16, torch::kFloat32});
  check_cuda(op, "w", w, x);
  check_dtype(op, "w", w, {x.scalar_type()});
  EVALSVC_CHECK(w.dim() == 2 && x.dim() >= 1 && x.size(-1) == w.size(1), InputError,
                "cuda::{}: w must be [out, {}] for x {}, got {}", op, x.dim() >= 1 ? x.size(-1) : 0, describe(x),
                describe(w));
  const torch::Tensor b = bias_in(op, bias, x, w.size(0), x.scalar_type());
  if (!gelu_tanh) return at::linear(x, w, b);
  if (!b.defined()) return at::gelu(at::linear(x, w), "tanh");
  // cuBLASLt's GELU_BIAS epilogue computes the tanh approximation (PyTorch's own fallback for this op applies
  // gelu(approximate="tanh")); the GPU test checks the result against gelu(linear(x), "tanh").
  const torch::Tensor x2 = x.reshape({-1, x.size(-1)});
  return at::_addmm_activation(b, x2, w.t(), 1, 1, /*use_gelu=*/true).view(output_shape(x, w.size(0)));
}

// ---- FP8 ----------------------------------------------------------------------------------------------------

namespace {
std::atomic<int> fp8_auto_gemm{static_cast<int>(Fp8Gemm::kAuto)};
}  // namespace

void set_fp8_auto_gemm(Fp8Gemm gemm) { fp8_auto_gemm.store(static_cast<int>(gemm), std::memory_order_relaxed); }

Fp8Gemm fp8_auto_gemm_setting() { return static_cast<Fp8Gemm>(fp8_auto_gemm.load(std::memory_order_relaxed)); }

bool fp8_supported(const torch::Device& device) {
  if (!device.is_cuda()) return false;
  const auto* prop = at::cuda::getDeviceProperties(device.has_index() ? device.index() : at::cuda::current_device());
  return prop->major * 10 + prop->minor >= 89;
}

Fp8Activations quantize_per_token_fp8(const torch::Tensor& x) {
  const char* op = "quantize_per_token_fp8";
  check_cuda(op, "x", x);
  check_dtype(op, "x", x, {torch::kFloat16, torch::kBFloat16, torch::kFloat32});
  EVALSVC_CHECK(x.dim() == 2, InputError, "cuda::{}: x must be [T, in], got {}", op, describe(x));
  const torch::Tensor xc = x.contiguous();
  const int64_t t = xc.size(0);
  const int64_t k = xc.size(1);
  Fp8Activations out;
  out.q = torch::empty({t, k}, xc.options().dtype(torch::kUInt8));
  // The kernel writes every row's scale: zeros would be a fill launch of its own (~0.8 us a call in a CUDA graph
  // at 128 tokens, more than a third of the quantizer's time; docs/perf.md).
  out.scale = torch::empty({t}, xc.options().dtype(torch::kFloat32));
  if (t == 0 || k == 0) {
    out.scale.zero_();
    return out;
  }
  const c10::cuda::CUDAGuard guard(x.device());
  EVALSVC_LAUNCH(launch_quantize_rows_fp8(xc.data_ptr(), launcher_dtype(xc.scalar_type()), t, k,
                                          out.q.data_ptr<uint8_t>(), out.scale.data_ptr<float>(), stream_of(x)));
  return out;
}

torch::Tensor dequantize_fp8_weight(const torch::Tensor& q, const torch::Tensor& wscale, torch::ScalarType dtype) {
  const char* op = "dequantize_fp8_weight";
  check_cuda(op, "q", q);
  check_dtype(op, "q", q, {torch::kUInt8});
  check_contiguous(op, "q", q);
  EVALSVC_CHECK(q.dim() == 2, InputError, "cuda::{}: q must be [out, in], got {}", op, describe(q));
  check_param(op, "wscale", wscale, q, torch::kFloat32, q.size(0));
  EVALSVC_CHECK(dtype == torch::kFloat16 || dtype == torch::kBFloat16 || dtype == torch::kFloat32, InputError,
                "cuda::{}: dtype must be Half, BFloat16 or Float, got {}", op, c10::toString(dtype));
  auto out = torch::empty({q.size(0), q.size(1)}, q.options().dtype(dtype));
  if (q.numel() == 0) return out;
  const c10::cuda::CUDAGuard guard(q.device());
  EVALSVC_LAUNCH(launch_fp8_dequantize(q.data_ptr<uint8_t>(), wscale.data_ptr<float>(), q.size(0), q.size(1),
                                       out.data_ptr(), launcher_dtype(dtype), stream_of(q)));
  return out;
}

namespace {

// cuBLASLt's outer-vector scaling (cuBLAS 12.9+): D = (scale_a[i] * scale_b[j]) * sum_k A[i, k] B[k, j], one
// fp32 scale per row of op(A) and per column of op(B): exactly per-channel weight x per-token activation.
// With it the fp8 product writes fp16 or bf16 directly and fuses the bias and GELU (tanh) in its epilogue.
#if defined(CUBLAS_VERSION) && CUBLAS_VERSION >= 120900
#define EVALSVC_HAVE_LT_OUTER_VEC 1
#endif

#ifdef EVALSVC_HAVE_LT_OUTER_VEC
constexpr size_t kLtWorkspaceBytes = 4u << 20;  // the most an algorithm may ask for

/// The cuBLASLt entry points, looked up in the libcublasLt that libtorch itself loaded (dlsym): linking the
/// toolkit's copy instead could make torch run on another cuBLAS build than the peer scripts measure.
/// Null members when that library lacks them, or predates outer-vector scaling (cublasLtGetVersion < 12.9).
struct LtApi {
  decltype(&cublasLtGetVersion) version = nullptr;
  decltype(&cublasLtMatmulDescCreate) desc_create = nullptr;
  decltype(&cublasLtMatmulDescDestroy) desc_destroy = nullptr;
  decltype(&cublasLtMatmulDescSetAttribute) desc_set = nullptr;
  decltype(&cublasLtMatrixLayoutCreate) layout_create = nullptr;
  decltype(&cublasLtMatrixLayoutDestroy) layout_destroy = nullptr;
  decltype(&cublasLtMatmulPreferenceCreate) pref_create = nullptr;
  decltype(&cublasLtMatmulPreferenceDestroy) pref_destroy = nullptr;
  decltype(&cublasLtMatmulPreferenceSetAttribute) pref_set = nullptr;
  decltype(&cublasLtMatmulAlgoGetHeuristic) heuristic = nullptr;
  decltype(&cublasLtMatmul) matmul = nullptr;
  bool ok = false;
};

const LtApi& lt_api() {
  static const LtApi api = [] {
    LtApi a;
    auto get = [](auto& fn, const char* name) { fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(RTLD_DEFAULT, name)); };
    get(a.version, "cublasLtGetVersion");
    get(a.desc_create, "cublasLtMatmulDescCreate");
    get(a.desc_destroy, "cublasLtMatmulDescDestroy");
    get(a.desc_set, "cublasLtMatmulDescSetAttribute");
    get(a.layout_create, "cublasLtMatrixLayoutCreate");
    get(a.layout_destroy, "cublasLtMatrixLayoutDestroy");
    get(a.pref_create, "cublasLtMatmulPreferenceCreate");
    get(a.pref_destroy, "cublasLtMatmulPreferenceDestroy");
    get(a.pref_set, "cublasLtMatmulPreferenceSetAttribute");
    get(a.heuristic, "cublasLtMatmulAlgoGetHeuristic");
    get(a.matmul, "cublasLtMatmul");
    a.ok = a.version && a.desc_create && a.desc_destroy && a.desc_set && a.layout_create && a.layout_destroy &&
           a.pref_create && a.pref_destroy && a.pref_set && a.heuristic && a.matmul && a.version() >= 120900;
    return a;
  }();
  return api;
}

/// Throws CudaError naming the cuBLASLt call that failed.
void lt_check(cublasStatus_t st, const char* call) {
  if (st != CUBLAS_STATUS_SUCCESS) {
    throw CudaError(fmt::format("cuda::fp8_linear: {} failed: cuBLAS status {}", call, static_cast<int>(st)));
  }
}

/// Owns the descriptors of one cuBLASLt product (freed on every exit path).
struct LtDescs {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  ~LtDescs() {
    if (pref) lt_api().pref_destroy(pref);
    if (d) lt_api().layout_destroy(d);
    if (b) lt_api().layout_destroy(b);
    if (a) lt_api().layout_destroy(a);
    if (op) lt_api().desc_destroy(op);
  }
};

/// Heuristic results (the algorithm and its workspace size) by (device, m, n, k, output dtype, epilogue);
/// nullopt = cuBLASLt has no algorithm for it (then fp8_linear takes at::_scaled_mm). The heuristic costs tens of microseconds of host
/// time, more than a small product on the device.
using LtKey = std::tuple<int, int64_t, int64_t, int64_t, int, int>;
std::mutex lt_mutex;
std::map<LtKey, std::optional<cublasLtMatmulHeuristicResult_t>> lt_algos;

/// y [m, n] = epilogue((aq [m, k] . wq [n, k]^T) * ascale[m] * wscale[n]) through cublasLtMatmul, aq and wq
/// E4M3 bits; bias undefined or [n] in y's dtype. False (nothing launched) when the loaded cuBLASLt lacks
/// outer-vector scaling or has no algorithm for the shape.
bool fp8_cublaslt(const torch::Tensor& aq, const torch::Tensor& ascale, const torch::Tensor& wq,
                  const torch::Tensor& wscale, const torch::Tensor& bias, bool gelu, torch::Tensor& y) {
  const LtApi& api = lt_api();
  if (!api.ok) return false;
  const int64_t m = aq.size(0), k = aq.size(1), n = wq.size(0);
  const cudaDataType_t out_t = y.scalar_type() == torch::kFloat16 ? CUDA_R_16F : CUDA_R_16BF;
  cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_DEFAULT;
  if (bias.defined()) epi = gelu ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_BIAS;
  else if (gelu) epi = CUBLASLT_EPILOGUE_GELU;

  // Column-major view (cuBLAS's): D [n, m] = op(A) [n, k] . B [k, m] with A = wq read transposed (its
  // row-major [n, k] is a column-major [k, n]) and B = aq ([m, k] row-major = [k, m] column-major): the "TN"
  // form Hopper's fp8 kernels require. D [n, m] column-major is y [m, n] row-major.
  LtDescs ds;
  lt_check(api.desc_create(&ds.op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate");
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  lt_check(api.desc_set(ds.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)), "set TRANSA");
  lt_check(api.desc_set(ds.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)), "set TRANSB");
  const int32_t mode = CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
  lt_check(api.desc_set(ds.op, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &mode, sizeof(mode)), "set A_SCALE_MODE");
  lt_check(api.desc_set(ds.op, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &mode, sizeof(mode)), "set B_SCALE_MODE");
  const void* a_scale = wscale.data_ptr<float>();
  const void* b_scale = ascale.data_ptr<float>();
  lt_check(api.desc_set(ds.op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &a_scale, sizeof(a_scale)), "set A_SCALE_POINTER");
  lt_check(api.desc_set(ds.op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &b_scale, sizeof(b_scale)), "set B_SCALE_POINTER");
  lt_check(api.desc_set(ds.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)), "set EPILOGUE");
  if (bias.defined()) {
    const void* bp = bias.data_ptr();
    lt_check(api.desc_set(ds.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bp, sizeof(bp)), "set BIAS_POINTER");
    lt_check(api.desc_set(ds.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &out_t, sizeof(out_t)), "set BIAS_DATA_TYPE");
  }
  lt_check(api.layout_create(&ds.a, CUDA_R_8F_E4M3, k, n, k), "cublasLtMatrixLayoutCreate(A)");
  lt_check(api.layout_create(&ds.b, CUDA_R_8F_E4M3, k, m, k), "cublasLtMatrixLayoutCreate(B)");
  lt_check(api.layout_create(&ds.d, out_t, n, m, n), "cublasLtMatrixLayoutCreate(D)");

  cublasLtHandle_t handle = at::cuda::getCurrentCUDABlasLtHandle();
  const LtKey key{static_cast<int>(aq.get_device()), m, n, k, static_cast<int>(out_t), static_cast<int>(epi)};
  std::optional<cublasLtMatmulHeuristicResult_t> algo;
  bool known = false;
  {
    const std::lock_guard<std::mutex> lock(lt_mutex);
    const auto it = lt_algos.find(key);
    if (it != lt_algos.end()) {
      known = true;
      algo = it->second;
    }
  }
  if (!known) {
    lt_check(api.pref_create(&ds.pref), "cublasLtMatmulPreferenceCreate");
    const size_t ws = kLtWorkspaceBytes;
    lt_check(api.pref_set(ds.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)),
             "set MAX_WORKSPACE_BYTES");
    cublasLtMatmulHeuristicResult_t res{};
    int found = 0;
    const cublasStatus_t st =
        api.heuristic(handle, ds.op, ds.a, ds.b, ds.d, ds.d, ds.pref, 1, &res, &found);
    if (st == CUBLAS_STATUS_SUCCESS && found > 0) algo = res;
    const std::lock_guard<std::mutex> lock(lt_mutex);
    lt_algos.emplace(key, algo);
  }
  if (!algo) return false;
  // The workspace the algorithm asked for (none for most), through the caching allocator, so that a CUDA graph
  // capture takes it from its private pool.
  const size_t ws_bytes = algo->workspaceSize;
  torch::Tensor workspace;
  if (ws_bytes > 0) workspace = torch::empty({static_cast<int64_t>(ws_bytes)}, aq.options().dtype(torch::kUInt8));
  const float alpha = 1.0f, beta = 0.0f;
  lt_check(api.matmul(handle, ds.op, &alpha, wq.data_ptr(), ds.a, aq.data_ptr(), ds.b, &beta, y.data_ptr(), ds.d,
                      y.data_ptr(), ds.d, &algo->algo, ws_bytes > 0 ? workspace.data_ptr() : nullptr, ws_bytes,
                      stream_of(aq)),
           "cublasLtMatmul");
  return true;
}
#endif

}  // namespace

namespace {
/// UnsupportedError naming the card where `device` cannot run fp8 products (compute capability below 8.9).
void require_fp8(const char* op, const torch::Device& device) {
  if (fp8_supported(device)) return;
  const auto* prop = at::cuda::getDeviceProperties(device.index());
  throw UnsupportedError(fmt::format("cuda::{}: FP8 E4M3 needs compute capability 8.9 or newer; {} ({}) is {}.{}", op,
                                     device.str(), prop->name, prop->major, prop->minor));
}
}  // namespace

torch::Tensor fp8_linear_quantized(const Fp8Activations& a, const torch::Tensor& wq, const torch::Tensor& wscale,
                                   const torch::Tensor& bias, torch::ScalarType out_dtype, bool gelu_tanh,
                                   Fp8Gemm gemm) {
  const char* op = "fp8_linear";
  check_cuda(op, "wq", wq);
  check_dtype(op, "wq", wq, {torch::kUInt8});
  check_contiguous(op, "wq", wq);
  EVALSVC_CHECK(wq.dim() == 2 && wq.size(0) > 0 && wq.size(1) > 0, InputError,
                "cuda::{}: wq must be [out, in] with out, in > 0, got {}", op, describe(wq));
  const int64_t n = wq.size(0);
  const int64_t k = wq.size(1);
  check_cuda(op, "a.q", a.q, wq);
  check_dtype(op, "a.q", a.q, {torch::kUInt8});
  check_contiguous(op, "a.q", a.q);
  EVALSVC_CHECK(a.q.dim() == 2 && a.q.size(1) == k, InputError, "cuda::{}: a.q must be [T, {}], got {}", op, k,
                describe(a.q));
  const int64_t m = a.q.size(0);
  check_param(op, "a.scale", a.scale, a.q, torch::kFloat32, m);
  check_param(op, "wscale", wscale, wq, torch::kFloat32, n);
  EVALSVC_CHECK(out_dtype == torch::kFloat16 || out_dtype == torch::kBFloat16 || out_dtype == torch::kFloat32,
                InputError, "cuda::{}: out_dtype must be Half, BFloat16 or Float, got {}", op,
                c10::toString(out_dtype));
  const torch::Device device = wq.device();
  require_fp8(op, device);
  const auto out_options = wq.options().dtype(out_dtype);
  if (m == 0) return torch::empty({0, n}, out_options);
  const c10::cuda::CUDAGuard guard(device);
  if (gemm == Fp8Gemm::kAuto) gemm = fp8_auto_gemm_setting();
  const auto aligned16 = [](const torch::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; };
  const bool wgmma_shape = k % 16 == 0 && aligned16(a.q) && aligned16(wq);
  EVALSVC_CHECK(gemm != Fp8Gemm::kWgmma || int8_wgmma_available(), UnsupportedError,
                "cuda::{}: the wgmma fp8 GEMM needs a compute capability 9.0 GPU and an sm_90a build", op);
  EVALSVC_CHECK(gemm != Fp8Gemm::kWgmma || wgmma_shape, InputError,
                "cuda::{}: the wgmma fp8 GEMM needs in % 16 == 0 and 16-byte aligned codes, got in={}", op, k);
  if (gemm == Fp8Gemm::kWgmma ||
      (gemm == Fp8Gemm::kAuto && wgmma_shape && int8_wgmma_available() && wgmma_small_tiles(m, n))) {
    auto y = torch::empty({m, n}, out_options);
    // The bias in the output dtype, as cuBLASLt takes it; the layers keep theirs so, so this converts nothing.
    const torch::Tensor b = bias_in(op, bias, wq, n, out_dtype);
    Int8Epilogue ep;
    ep.row_scale = a.scale.data_ptr<float>();
    ep.col_scale = wscale.data_ptr<float>();
    ep.bias_out_dtype = b.defined() ? b.data_ptr() : nullptr;
    ep.gelu_tanh = gelu_tanh;
    EVALSVC_LAUNCH(launch_fp8_gemm(a.q.data_ptr<uint8_t>(), wq.data_ptr<uint8_t>(), m, n, k, ep, y.data_ptr(),
                                   launcher_dtype(out_dtype), stream_of(a.q)));
    return y;
  }
  const bool half_out = out_dtype != torch::kFloat32;
  // cuBLASLt's fp8 kernels want in and out as multiples of 16 (GPT-2's shapes are).
  const bool lt_shape = k % 16 == 0 && n % 16 == 0;
#ifdef EVALSVC_HAVE_LT_OUTER_VEC
  EVALSVC_CHECK(gemm != Fp8Gemm::kCublasLt || (half_out && lt_shape), InputError,
                "cuda::{}: the cuBLASLt outer-vector product needs fp16/bf16 output and in, out multiples of 16, got "
                "{} output and w {}", op, c10::toString(out_dtype), describe(wq));
  if (gemm != Fp8Gemm::kScaledMm && half_out && lt_shape) {
    auto y = torch::empty({m, n}, out_options);
    const torch::Tensor b = bias_in(op, bias, wq, n, out_dtype);
    if (fp8_cublaslt(a.q, a.scale, wq, wscale, b, gelu_tanh, y)) return y;
    EVALSVC_CHECK(gemm != Fp8Gemm::kCublasLt, UnsupportedError,
                  "cuda::{}: cuBLASLt has no outer-vector-scaled fp8 algorithm for [{}, {}] x [{}, {}]^T on {}", op, m,
                  k, n, k, device.str());
  }
#else
  EVALSVC_CHECK(gemm != Fp8Gemm::kCublasLt, UnsupportedError,
                "cuda::{}: this build's cuBLASLt (before 12.9) has no outer-vector scaling; use Fp8Gemm::kScaledMm", op);
#endif

  // at::_scaled_mm: the bias goes into the product's epilogue as bf16 (PyTorch's rowwise kernel takes a bf16
  // bias), which saves a read and a write of the whole output.
  const torch::Tensor b = bias_in(op, bias, wq, n, at::kBFloat16);
  // Pad in and out to multiples of 16 with zero codes (E4M3 0x00 = +0), which add nothing to the sums, and
  // drop the padded outputs afterwards.
  const int64_t kp = (k + 15) / 16 * 16;
  const int64_t np = (n + 15) / 16 * 16;
  torch::Tensor aq = a.q;
  torch::Tensor bq = wq;
  torch::Tensor bs = wscale;
  if (kp != k) {
    aq = torch::constant_pad_nd(aq, {0, kp - k}, 0);
    bq = torch::constant_pad_nd(bq, {0, kp - k}, 0);
  }
  if (np != n) {
    bq = torch::constant_pad_nd(bq, {0, 0, 0, np - n}, 0);
    bs = torch::constant_pad_nd(bs, {0, np - n}, 1.0);
  }
  torch::Tensor b16 = b;
  if (b.defined() && np != n) b16 = torch::constant_pad_nd(b, {0, np - n}, 0);
  torch::Tensor y;
  try {
    // Rowwise scaling: scale_a [T, 1], scale_b [1, out]; the weight as a column-major [in, out] view.
    // bf16 output: PyTorch's rowwise-scaled fp8 kernels produce bf16 only.
    y = at::_scaled_mm(aq.view(at::kFloat8_e4m3fn), bq.view(at::kFloat8_e4m3fn).t(), a.scale.view({m, 1}),
                       bs.view({1, np}), b16.defined() ? std::optional<at::Tensor>(b16) : std::nullopt,
                       std::nullopt, at::kBFloat16, false);
  } catch (const c10::Error& e) {
    throw UnsupportedError(fmt::format("cuda::{}: at::_scaled_mm rejected x {} x w {} on {}: {}", op, describe(aq),
                                       describe(bq), device.str(), e.what_without_backtrace()));
  }
  if (np != n) y = y.narrow(1, 0, n);
  if (y.scalar_type() != out_dtype) y = y.to(out_dtype);
  if (gelu_tanh) y = at::gelu(y, "tanh");
  return y.contiguous();
}

torch::Tensor fp8_linear(const torch::Tensor& x, const torch::Tensor& wq, const torch::Tensor& wscale,
                         const torch::Tensor& bias, bool gelu_tanh, Fp8Gemm gemm) {
  const char* op = "fp8_linear";
  check_cuda(op, "wq", wq);
  EVALSVC_CHECK(wq.dim() == 2 && wq.size(0) > 0 && wq.size(1) > 0, InputError,
                "cuda::{}: wq must be [out, in] with out, in > 0, got {}", op, describe(wq));
  const int64_t n = wq.size(0);
  const torch::Tensor x2 = flatten_input(op, x, wq.size(1), {torch::kFloat16, torch::kBFloat16, torch::kFloat32});
  check_cuda(op, "wq", wq, x);
  require_fp8(op, x.device());  // before quantizing x for nothing
  if (x2.size(0) == 0) return torch::empty(output_shape(x, n), x.options());
  const c10::cuda::CUDAGuard guard(x.device());
  const Fp8Activations a = quantize_per_token_fp8(x2);
  return fp8_linear_quantized(a, wq, wscale, bias, x2.scalar_type(), gelu_tanh, gemm).view(output_shape(x, n));
}

// ---- L2 prefetch --------------------------------------------------------------------------------------------

void l2_prefetch(const std::vector<torch::Tensor>& tensors) {
  const char* op = "l2_prefetch";
  std::vector<L2Span> spans;
  const torch::Tensor* first = nullptr;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& t = tensors[i];
    if (!t.defined() || t.numel() == 0) continue;
    const std::string name = fmt::format("tensors[{}]", i);
    if (first == nullptr) {
      check_cuda(op, name.c_str(), t);
      first = &t;
    } else {
      check_cuda(op, name.c_str(), t, *first);
    }
    check_contiguous(op, name.c_str(), t);
    EVALSVC_CHECK(reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0, InputError,
                  "cuda::{}: {} must start at a 16-byte aligned address, got {}", op, name, describe(t));
    spans.push_back({t.data_ptr(), static_cast<int64_t>(t.nbytes())});
  }
  if (first == nullptr) return;
  const c10::cuda::CUDAGuard guard(first->device());
  for (size_t i = 0; i < spans.size(); i += kL2PrefetchMaxSpans) {
    const int n = static_cast<int>(std::min<size_t>(kL2PrefetchMaxSpans, spans.size() - i));
    EVALSVC_LAUNCH(launch_l2_prefetch(spans.data() + i, n, stream_of(*first)));
  }
}

namespace {
void check_stream_flag(const char* op, const torch::Tensor& flag, const torch::Tensor& like = {}) {
  check_cuda(op, "flag", flag, like);
  EVALSVC_CHECK(flag.scalar_type() == torch::kInt32 && flag.numel() == 1, InputError,
                "cuda::{}: the flag must be one int32, got {}", op, describe(flag));
}
}  // namespace

void set_stream_flag(const torch::Tensor& flag, int value) {
  check_stream_flag("set_stream_flag", flag);
  const c10::cuda::CUDAGuard guard(flag.device());
  EVALSVC_LAUNCH(launch_stream_flag_set(flag.data_ptr<int32_t>(), value, stream_of(flag)));
}

void wait_stream_flag(const torch::Tensor& flag, int value) {
  check_stream_flag("wait_stream_flag", flag);
  const c10::cuda::CUDAGuard guard(flag.device());
  EVALSVC_LAUNCH(launch_stream_flag_wait(flag.data_ptr<int32_t>(), value, stream_of(flag)));
}

bool current_stream_capturing(const torch::Device& device) {
  EVALSVC_CHECK(device.is_cuda(), InputError, "cuda::current_stream_capturing: device must be CUDA, got {}",
                device.str());
  const c10::DeviceIndex index = device.has_index() ? device.index() : at::cuda::current_device();
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  const cudaError_t e = cudaStreamIsCapturing(at::cuda::getCurrentCUDAStream(index), &status);
  if (e != cudaSuccess) {
    throw CudaError(fmt::format("cuda::current_stream_capturing: cudaStreamIsCapturing on {}: {}", device.str(),
                                cudaGetErrorString(e)));
  }
  return status == cudaStreamCaptureStatusActive;
}

// ---- Streams ------------------------------------------------------------------------------------------------

struct SideStream::Impl {
  Impl(c10::DeviceIndex d, cudaStream_t s) : device(d), raw(s), side(c10::cuda::getStreamFromExternal(s, d)) {}
  ~Impl() {
    // Work still queued finishes first: cudaStreamDestroy releases the stream only after it.
    const c10::cuda::CUDAGuard guard(device);
    cudaStreamDestroy(raw);
  }
  c10::DeviceIndex device;
  cudaStream_t raw;
  c10::cuda::CUDAStream side;
  std::vector<at::cuda::CUDAEvent> events;  // cudaEventDisableTiming: no timestamps, cheapest to record
};

SideStream::SideStream(const torch::Device& device, int events) {
  EVALSVC_CHECK(device.is_cuda(), InputError, "cuda::SideStream: device must be CUDA, got {}", device.str());
  EVALSVC_CHECK(events >= 1, InputError, "cuda::SideStream: events must be >= 1, got {}", events);
  const c10::DeviceIndex index = device.has_index() ? device.index() : at::cuda::current_device();
  const c10::cuda::CUDAGuard guard(index);
  cudaStream_t raw = nullptr;
  // Non-blocking: no implicit ordering with the legacy default stream; every ordering is an explicit event.
  const cudaError_t e = cudaStreamCreateWithFlags(&raw, cudaStreamNonBlocking);
  if (e != cudaSuccess) {
    throw CudaError(fmt::format("cuda::SideStream: cudaStreamCreateWithFlags on cuda:{}: {}", index,
                                cudaGetErrorString(e)));
  }
  impl_ = std::make_unique<Impl>(index, raw);
  impl_->events.reserve(static_cast<size_t>(events));
  for (int i = 0; i < events; ++i) impl_->events.emplace_back(cudaEventDisableTiming);
}

SideStream::~SideStream() = default;

namespace {
at::cuda::CUDAEvent& event_at(std::vector<at::cuda::CUDAEvent>& events, int i) {
  EVALSVC_CHECK(i >= 0 && static_cast<size_t>(i) < events.size(), InputError,
                "cuda::SideStream: event {} out of range [0, {})", i, events.size());
  return events[static_cast<size_t>(i)];
}
}  // namespace

void SideStream::record_current(int event) {
  event_at(impl_->events, event).record(at::cuda::getCurrentCUDAStream(impl_->device));
}
void SideStream::record_side(int event) { event_at(impl_->events, event).record(impl_->side); }
void SideStream::side_waits(int event) { event_at(impl_->events, event).block(impl_->side); }
void SideStream::current_waits(int event) {
  event_at(impl_->events, event).block(at::cuda::getCurrentCUDAStream(impl_->device));
}
void SideStream::run_on_side(const std::function<void()>& f) {
  const c10::cuda::CUDAStreamGuard guard(impl_->side);
  f();
}

// ---- Transformer block pieces --------------------------------------------------------------------------------

namespace {
/// The arguments of add_layer_norm and add_layer_norm_quantized; returns the row width.
int64_t check_add_layer_norm(const char* op, const torch::Tensor& h, const torch::Tensor& delta,
                             const torch::Tensor& gamma, const torch::Tensor& beta, double eps) {
  check_cuda(op, "h", h);
  check_dtype(op, "h", h, {torch::kFloat16, torch::kBFloat16, torch::kFloat32});
  EVALSVC_CHECK(h.dim() >= 1 && h.size(-1) > 0, InputError, "cuda::{}: h must be [..., cols], got {}", op, describe(h));
  const int64_t cols = h.size(-1);
  check_cuda(op, "delta", delta, h);
  check_dtype(op, "delta", delta, {h.scalar_type()});
  EVALSVC_CHECK(delta.sizes() == h.sizes(), InputError, "cuda::{}: delta must have h's shape {}, got {}", op,
                describe(h), describe(delta));
  check_param(op, "gamma", gamma, h, h.scalar_type(), cols);
  check_param(op, "beta", beta, h, h.scalar_type(), cols);
  EVALSVC_CHECK(std::isfinite(eps) && eps > 0, InputError, "cuda::{}: eps must be finite and > 0, got {}", op, eps);
  return cols;
}

/// add_layer_norm_quantized for kLlmInt8 (hc, dc contiguous and checked).
std::pair<torch::Tensor, QuantizedActivations> add_layer_norm_llm_int8(const char* op, const torch::Tensor& hc,
                                                                       const torch::Tensor& dc,
                                                                       const torch::Tensor& gamma,
                                                                       const torch::Tensor& beta, double eps,
                                                                       double threshold, const torch::Tensor& state) {
  EVALSVC_CHECK(hc.scalar_type() == torch::kFloat16, InputError,
                "cuda::{}: kLlmInt8 quantizes fp16 rows (as bitsandbytes casts them), got {}", op, describe(hc));
  EVALSVC_CHECK(std::isfinite(threshold) && threshold > 0, InputError,
                "cuda::{}: kLlmInt8 needs a finite outlier threshold > 0, got {}", op, threshold);
  const int64_t cols = hc.size(-1);
  const int64_t rows = hc.numel() / cols;
  QuantizedActivations out;
  out.code = ActivationCode::kLlmInt8;
  auto h_out = torch::empty_like(hc);
  out.outliers.rows = torch::empty_like(hc);
  out.q = torch::empty(hc.sizes(), hc.options().dtype(torch::kInt8));
  // Scales and count are all written by the kernel (no fill launches; see quantize_per_token_fp8).
  out.scale = torch::empty({rows}, hc.options().dtype(torch::kFloat32));
  out.outliers.idx = torch::empty({cols}, hc.options().dtype(torch::kInt32));
  out.outliers.count = torch::empty({1}, hc.options().dtype(torch::kInt32));
  if (rows == 0) {
    out.outliers.count.zero_();
    return {h_out, out};
  }
  const torch::Tensor st = outlier_state_or_zeros(op, state, hc, cols);
  const c10::cuda::CUDAGuard guard(hc.device());
  const int s = launch_add_layer_norm_llm_int8(hc.data_ptr(), dc.data_ptr(), gamma.data_ptr(), beta.data_ptr(),
                                               static_cast<float>(eps), rows, cols, static_cast<float>(threshold),
                                               h_out.data_ptr(), out.outliers.rows.data_ptr(),
                                               out.q.data_ptr<int8_t>(), out.scale.data_ptr<float>(),
                                               st.data_ptr<int32_t>(), out.outliers.idx.data_ptr<int32_t>(),
                                               out.outliers.count.data_ptr<int32_t>(), stream_of(hc));
  if (s != kLaunchUnsupported) {
    EVALSVC_LAUNCH(s);
    return {h_out, out};
  }
  // Another width: the two ops, same codes.
  auto [h2, a] = add_layer_norm(hc, dc, gamma, beta, eps);
  out.outliers.rows = a;
  const Int8Activations qa = quantize_rows_int8_outliers(op, a.view({rows, cols}), threshold, st, &out.outliers);
  out.q = qa.q.view(hc.sizes());
  out.scale = qa.scale;
  return {h2, out};
}
}  // namespace

std::pair<torch::Tensor, torch::Tensor> add_layer_norm(const torch::Tensor& h, const torch::Tensor& delta,
                                                       const torch::Tensor& gamma, const torch::Tensor& beta,
                                                       double eps, const torch::Tensor& wait_flag, int wait_value) {
  const char* op = "add_layer_norm";
  const int64_t cols = check_add_layer_norm(op, h, delta, gamma, beta, eps);
  if (wait_flag.defined()) check_stream_flag(op, wait_flag, h);
  const torch::Tensor hc = h.contiguous();
  const torch::Tensor dc = delta.contiguous();
  auto h_out = torch::empty_like(hc);
  auto a = torch::empty_like(hc);
  const int64_t rows = hc.numel() / cols;
  const c10::cuda::CUDAGuard guard(h.device());
  if (rows == 0) {
    if (wait_flag.defined()) wait_stream_flag(wait_flag, wait_value);
    return {h_out, a};
  }
  EVALSVC_LAUNCH(launch_add_layer_norm(hc.data_ptr(), dc.data_ptr(), gamma.data_ptr(), beta.data_ptr(),
                                       static_cast<float>(eps), rows, cols, h_out.data_ptr(), a.data_ptr(),
                                       launcher_dtype(hc.scalar_type()), stream_of(hc),
                                       wait_flag.defined() ? wait_flag.data_ptr<int32_t>() : nullptr, wait_value));
  return {h_out, a};
}

std::pair<torch::Tensor, QuantizedActivations> add_layer_norm_quantized(const torch::Tensor& h,
                                                                        const torch::Tensor& delta,
                                                                        const torch::Tensor& gamma,
                                                                        const torch::Tensor& beta, double eps,
                                                                        ActivationCode code, double threshold,
                                                                        const torch::Tensor& outlier_state) {
  const char* op = "add_layer_norm_quantized";
  EVALSVC_CHECK(code == ActivationCode::kInt8 || code == ActivationCode::kFp8E4M3 || code == ActivationCode::kLlmInt8,
                InputError, "cuda::{}: code must be kInt8, kFp8E4M3 or kLlmInt8", op);
  const int64_t cols = check_add_layer_norm(op, h, delta, gamma, beta, eps);
  const torch::Tensor hc = h.contiguous();
  const torch::Tensor dc = delta.contiguous();
  if (code == ActivationCode::kLlmInt8) {
    return add_layer_norm_llm_int8(op, hc, dc, gamma, beta, eps, threshold, outlier_state);
  }
  const int64_t rows = hc.numel() / cols;
  QuantizedActivations out;
  out.code = code;
  auto h_out = torch::empty_like(hc);
  out.q = torch::empty(hc.sizes(), hc.options().dtype(code == ActivationCode::kInt8 ? torch::kInt8 : torch::kUInt8));
  out.scale = torch::empty({rows}, hc.options().dtype(torch::kFloat32));  // every row's written: no fill launch
  if (rows == 0) return {h_out, out};
  const c10::cuda::CUDAGuard guard(h.device());
  const int st = launch_add_layer_norm_quant(hc.data_ptr(), dc.data_ptr(), gamma.data_ptr(), beta.data_ptr(),
                                             static_cast<float>(eps), rows, cols, h_out.data_ptr(),
                                             static_cast<uint8_t*>(out.q.data_ptr()), out.scale.data_ptr<float>(),
                                             launcher_dtype(hc.scalar_type()),
                                             code == ActivationCode::kInt8 ? ActCode::kInt8 : ActCode::kFp8E4M3,
                                             stream_of(hc));
  if (st != kLaunchUnsupported) {
    EVALSVC_LAUNCH(st);
    return {h_out, out};
  }
  // Another width or dtype: the two ops, same codes.
  auto [h2, a] = add_layer_norm(hc, dc, gamma, beta, eps);
  const torch::Tensor a2 = a.view({rows, cols});
  if (code == ActivationCode::kInt8) {
    const Int8Activations qa = quantize_per_token_int8(a2, 0.0);
    out.q = qa.q.view(hc.sizes());
    out.scale = qa.scale;
  } else {
    const Fp8Activations qa = quantize_per_token_fp8(a2);
    out.q = qa.q.view(hc.sizes());
    out.scale = qa.scale;
  }
  return {h2, out};
}

}  // namespace evalsvc::kernels::cuda
