// The QuantizedLinear implementations: one class per method. On CPU forward() is the reference of
// reference.h; when the stored tensors live on a CUDA device (after to()) and the build has the kernels
// (EVALSVC_WITH_CUDA), forward() calls the ops of cuda_ops.h. Tensor names and layouts of state() are those
// transformers + bitsandbytes serialize (docs/quantization.md).
#include "evalsvc/kernels/quantized_linear.h"

#include <cmath>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "evalsvc/common/error.h"
#include "evalsvc/kernels/codebooks.h"
#include "evalsvc/kernels/cuda_ops.h"
#include "evalsvc/kernels/memory.h"
#include "evalsvc/kernels/reference.h"

#ifdef EVALSVC_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#endif

namespace evalsvc::kernels {

namespace {

using TensorMap = std::map<std::string, torch::Tensor>;

std::string shape_str(c10::IntArrayRef sizes) {
  std::string s = "[";
  for (size_t i = 0; i < sizes.size(); ++i) s += (i ? ", " : "") + std::to_string(sizes[i]);
  return s + "]";
}

const char* hf_dtype_name(torch::ScalarType t) {
  switch (t) {
    case torch::kHalf: return "float16";
    case torch::kBFloat16: return "bfloat16";
    default: return "float32";
  }
}

torch::ScalarType dtype_from_hf_name(const std::string& name, const std::string& key) {
  if (name == "float16") return torch::kHalf;
  if (name == "bfloat16") return torch::kBFloat16;
  if (name == "float32") return torch::kFloat;
  throw FormatError(fmt::format("{}: dtype must be float16, bfloat16 or float32, got '{}'", key, name));
}

void check_options(Method method, const QuantOptions& o) {
  const auto c = o.compute_dtype;
  EVALSVC_CHECK(c == torch::kFloat || c == torch::kHalf || c == torch::kBFloat16, InputError,
                "{}: compute_dtype must be fp32, fp16 or bf16, got {}", method_name(method), c10::toString(c));
  if (method == Method::kLlmInt8) {
    EVALSVC_CHECK(std::isfinite(o.outlier_threshold) && o.outlier_threshold >= 0, InputError,
                  "llm-int8: outlier_threshold must be finite and >= 0, got {}", o.outlier_threshold);
  }
  if (method == Method::kNf4) ref::check_nf4_blocksize(o.block_size);
}

/// Everything the methods share: sizes, bias in the base dtype, the byte formula, input checks and the
/// CPU/CUDA dispatch of forward().
class LayerBase : public QuantizedLinear {
 public:
  LayerBase(Method method, int64_t out, int64_t in, torch::Tensor bias, const QuantOptions& options)
      : method_(method), out_(out), in_(in), options_(options), base_(layer_base_dtype(method, options)) {
    if (bias.defined()) bias_ = bias.to(base_).contiguous();
  }

  torch::Tensor forward(const torch::Tensor& x, Activation act) const final {
    check_input(x);
    // Activations enter in the base dtype (as on a GPU running the variant) and leave in x's dtype.
    const auto xb = x.to(base_);
    if (device().is_cpu()) {
      const torch::Tensor y = forward_cpu(xb).to(x.scalar_type());
      return act == Activation::kGeluTanh ? torch::gelu(y, "tanh") : y;
    }
#ifdef EVALSVC_WITH_CUDA
    return forward_cuda(xb.contiguous(), act).to(x.scalar_type());
#else
    throw UnsupportedError(fmt::format("{} linear: weights are on {} but this build has no CUDA kernels "
                                       "(configure with -DEVALSVC_ENABLE_CUDA=ON and a CUDA libtorch)",
                                       method_name(method_), device().str()));
#endif
  }

  bool dequantizes_at(int64_t) const override { return false; }

  torch::Tensor forward_quantized(const torch::Tensor& q, const torch::Tensor& scale, torch::ScalarType out_dtype,
                                  Activation act, const OutlierColumnsInput& outliers) const final {
    EVALSVC_CHECK(activation_code() != ActivationCode::kNone, UnsupportedError,
                  "{} linear [{}, {}]: forward_quantized needs a method that quantizes its input per token "
                  "(int8-w8a8, fp8-e4m3, llm-int8 on fp16)", method_name(method_), out_, in_);
    EVALSVC_CHECK(q.defined() && q.dim() >= 1 && q.size(-1) == in_, InputError,
                  "{} linear [{}, {}]: q must be [..., {}], got {}", method_name(method_), out_, in_, in_,
                  q.defined() ? shape_str(q.sizes()) : std::string("undefined"));
    EVALSVC_CHECK(q.device() == device(), InputError, "{} linear [{}, {}]: q is on {} but the layer is on {}",
                  method_name(method_), out_, in_, q.device().str(), device().str());
#ifdef EVALSVC_WITH_CUDA
    if (device().is_cuda()) {
      std::vector<int64_t> shape(q.sizes().begin(), q.sizes().end());
      shape.back() = out_;
      if (activation_code() == ActivationCode::kLlmInt8) {
        EVALSVC_CHECK(outliers.rows.defined() && outliers.idx.defined() && outliers.count.defined(), InputError,
                      "{} linear [{}, {}]: forward_quantized needs the rows and outlier columns the codes came with "
                      "(cuda::add_layer_norm_quantized with kLlmInt8)", method_name(method_), out_, in_);
      }
      OutlierColumnsInput o = outliers;
      if (o.rows.defined()) o.rows = o.rows.reshape({-1, in_});
      return forward_quantized_cuda(q.reshape({-1, in_}), scale, out_dtype, act, o).view(shape);
    }
#endif
    throw UnsupportedError(fmt::format("{} linear [{}, {}]: forward_quantized runs on CUDA only; the weights are on {}",
                                       method_name(method_), out_, in_, device().str()));
  }

  void dense_weight_into(torch::Tensor& out, int max_blocks) const final {
    check_dense_buffer(out, max_blocks);
#ifdef EVALSVC_WITH_CUDA
    if (device().is_cuda()) return dense_weight_into_cuda(out, max_blocks);
#endif
    // The fp32 values rounded once to the base dtype: what the CPU references multiply by.
    out.copy_(dequantized_weight().to(out.device()));
  }

  /// dense_weight_into's checks of its arguments (InputError).
  void check_dense_buffer(const torch::Tensor& out, int max_blocks) const {
    EVALSVC_CHECK(max_blocks >= 0, InputError, "{} linear [{}, {}]: max_blocks must be >= 0, got {}",
                  method_name(method_), out_, in_, max_blocks);
    EVALSVC_CHECK(out.defined() && out.dim() == 2 && out.size(0) == out_ && out.size(1) == in_, InputError,
                  "{} linear [{}, {}]: the dense weight buffer must be [{}, {}], got {}", method_name(method_), out_,
                  in_, out_, in_, out.defined() ? shape_str(out.sizes()) : "undefined");
    EVALSVC_CHECK(out.scalar_type() == base_ && out.is_contiguous() && out.device() == device(), InputError,
                  "{} linear [{}, {}]: the dense weight buffer must be contiguous {} on {}, got {} on {}",
                  method_name(method_), out_, in_, c10::toString(base_), device().str(),
                  c10::toString(out.scalar_type()), out.device().str());
  }

  torch::Tensor forward_dense(const torch::Tensor& x, const torch::Tensor& dense, Activation act) const final {
    check_input(x);
    const int64_t tokens = x.numel() / in_;
    if (!dequantizes_at(tokens)) {
      throw UnsupportedError(fmt::format("{} linear [{}, {}]: forward on {} tokens does not go through a dense weight",
                                         method_name(method_), out_, in_, tokens));
    }
    EVALSVC_CHECK(dense.defined() && dense.dim() == 2 && dense.size(0) == out_ && dense.size(1) == in_ &&
                      dense.scalar_type() == base_ && dense.device() == device(),
                  InputError, "{} linear [{}, {}]: the dense weight must be {} [{}, {}] on {}, got {}",
                  method_name(method_), out_, in_, c10::toString(base_), out_, in_, device().str(),
                  dense.defined() ? fmt::format("{} {} on {}", c10::toString(dense.scalar_type()),
                                                shape_str(dense.sizes()), dense.device().str())
                                  : std::string("undefined"));
    const auto xb = x.to(base_);
    if (device().is_cpu()) {
      const torch::Tensor y = ref::linear_in_dtype(xb, dense, bias_, base_).to(x.scalar_type());
      return act == Activation::kGeluTanh ? torch::gelu(y, "tanh") : y;
    }
#ifdef EVALSVC_WITH_CUDA
    return dense_product_cuda(xb.contiguous(), dense, act).to(x.scalar_type());
#else
    throw UnsupportedError(fmt::format("{} linear: weights are on {} but this build has no CUDA kernels",
                                       method_name(method_), device().str()));
#endif
  }

  torch::ScalarType base_dtype() const final { return base_; }
  Method method() const final { return method_; }
  int64_t in_features() const final { return in_; }
  int64_t out_features() const final { return out_; }
  LayerBytes bytes() const final {
    return linear_layer_bytes(method_, out_, in_, bias_.defined(), base_, options_);
  }

  std::map<std::string, torch::Tensor> state() const final {
    TensorMap s = own_state();
    if (bias_.defined()) s["bias"] = bias_;
    for (auto& [k, t] : s) t = t.cpu();
    return s;
  }

  std::vector<torch::Tensor> stored_tensors() const final {
    std::vector<torch::Tensor> out;
    for (const auto& [key, t] : own_state()) {
      // NF4's quant_state is JSON text own_state() makes for checkpoints; the kernels never read it.
      if (key.find(".quant_state.") != std::string::npos) continue;
      if (t.defined() && t.device() == device()) out.push_back(t);
    }
    for (const auto& t : {bias_, bias_f32_})
      if (t.defined()) out.push_back(t);
    return out;
  }

  void to(const torch::Device& device) final {
    before_move(device);
    if (bias_.defined()) {
      bias_ = bias_.to(device);
      // The kernels' epilogues read an fp32 bias: convert once here, not in every forward (at batch 1 each
      // conversion is one more graph node per projection).
      bias_f32_ = device.is_cuda() ? bias_.to(torch::kFloat).contiguous() : torch::Tensor();
    }
    move_storage(device);
  }

 protected:
  virtual torch::Device device() const = 0;
  virtual torch::Tensor forward_cpu(const torch::Tensor& xb) const = 0;
#ifdef EVALSVC_WITH_CUDA
  virtual torch::Tensor forward_cuda(const torch::Tensor& xb, Activation act) const = 0;
  /// forward_quantized on a GPU: q2 [tokens, in]. Only methods whose activation_code() is not kNone get here.
  virtual torch::Tensor forward_quantized_cuda(const torch::Tensor& /*q2*/, const torch::Tensor& /*scale*/,
                                               torch::ScalarType /*out_dtype*/, Activation /*act*/,
                                               const OutlierColumnsInput& /*outliers*/) const {
    throw UnsupportedError(fmt::format("{} linear: no forward_quantized", method_name(method_)));
  }
  /// The dense copy by a CUDA kernel; the generic fallback copies the CPU reference's values over.
  virtual void dense_weight_into_cuda(torch::Tensor& out, int /*max_blocks*/) const {
    out.copy_(dequantized_weight().to(out.device()));
  }
  /// xb [..., in] (contiguous, base dtype) times a dense weight [out, in] + bias, then act. Flattened to
  /// [tokens, in] as the ops' own dequantizing paths call the product (cuda::nf4_linear,
  /// cuda::int8_weight_only_linear), so forward() and forward_dense() agree bit for bit (cuBLAS may pick
  /// another algorithm for another shape).
  torch::Tensor dense_product_cuda(const torch::Tensor& xb, const torch::Tensor& dense, Activation act) const {
    std::vector<int64_t> shape(xb.sizes().begin(), xb.sizes().end());
    shape.back() = out_;
    return cuda::linear(xb.reshape({-1, in_}), dense, bias_, act == Activation::kGeluTanh).view(shape);
  }
#endif
  virtual TensorMap own_state() const = 0;
  virtual void move_storage(const torch::Device& device) = 0;
  /// Lets a method refuse a device before anything moves (fp8 below compute capability 8.9).
  virtual void before_move(const torch::Device&) {}

  void check_input(const torch::Tensor& x) const {
    EVALSVC_CHECK(x.defined(), InputError, "{} linear [{}, {}]: x is undefined", method_name(method_), out_, in_);
    EVALSVC_CHECK(torch::isFloatingType(x.scalar_type()), InputError,
                  "{} linear [{}, {}]: x must be fp32, fp16 or bf16, got {}", method_name(method_), out_, in_,
                  c10::toString(x.scalar_type()));
    EVALSVC_CHECK(x.dim() >= 1 && x.size(-1) == in_, InputError, "{} linear [{}, {}]: x must be [..., {}], got {}",
                  method_name(method_), out_, in_, in_, shape_str(x.sizes()));
    EVALSVC_CHECK(x.device() == device(), InputError, "{} linear [{}, {}]: x is on {} but the layer is on {}",
                  method_name(method_), out_, in_, x.device().str(), device().str());
  }

  Method method_;
  int64_t out_, in_;
  QuantOptions options_;
  torch::ScalarType base_;
  torch::Tensor bias_;      ///< in the base dtype
  torch::Tensor bias_f32_;  ///< fp32 copy on a CUDA device (for the kernels' epilogues), else undefined
};

// ---------------------------------------------------------------------------------------------------------

class PlainLinear final : public LayerBase {
 public:
  PlainLinear(Method m, torch::Tensor weight, torch::Tensor bias, const QuantOptions& o)
      : LayerBase(m, weight.size(0), weight.size(1), std::move(bias), o),
        weight_(weight.to(layer_base_dtype(m, o)).contiguous()) {}

  torch::Tensor dequantized_weight() const override { return weight_.to(torch::kFloat).cpu(); }

 protected:
  torch::Device device() const override { return weight_.device(); }
  torch::Tensor forward_cpu(const torch::Tensor& xb) const override {
    if (base_ == torch::kFloat) return torch::linear(xb, weight_, bias_);
    return ref::linear_in_dtype(xb, weight_.to(torch::kFloat), bias_, base_);
  }
#ifdef EVALSVC_WITH_CUDA
  torch::Tensor forward_cuda(const torch::Tensor& xb, Activation act) const override {
    return cuda::linear(xb, weight_, bias_, act == Activation::kGeluTanh);
  }
#endif
  TensorMap own_state() const override { return {{"weight", weight_}}; }
  void move_storage(const torch::Device& d) override { weight_ = weight_.to(d); }

 private:
  torch::Tensor weight_;
};

/// int8-sym (per tensor), int8-sym-channel (weight-only) and int8-w8a8 (per-token activations too).
class Int8Linear final : public LayerBase {
 public:
  Int8Linear(Method m, ref::Int8Weight w, torch::Tensor bias, const QuantOptions& o)
      : LayerBase(m, w.q.size(0), w.q.size(1), std::move(bias), o), w_(std::move(w)) {}

  torch::Tensor dequantized_weight() const override {
    return ref::dequantize_int8_sym({w_.q.cpu(), w_.scale.cpu()});
  }

 protected:
  torch::Device device() const override { return w_.q.device(); }
  torch::Tensor forward_cpu(const torch::Tensor& xb) const override {
    if (method_ == Method::kInt8W8A8) return ref::int8_w8a8_linear(xb, w_, bias_);
    return ref::int8_weight_only_linear(xb, w_, bias_, base_);
  }
#ifdef EVALSVC_WITH_CUDA
  torch::Tensor forward_cuda(const torch::Tensor& xb, Activation act) const override {
    const bool gelu = act == Activation::kGeluTanh;
    if (method_ == Method::kInt8W8A8) {
      return cuda::int8_w8a8_linear(xb, w_.q, w_.scale, bias_f32_, cuda::Int8Gemm::kAuto, gelu);
    }
    return cuda::int8_weight_only_linear(xb, w_.q, w_.scale, bias_, gelu);
  }
  torch::Tensor forward_quantized_cuda(const torch::Tensor& q2, const torch::Tensor& scale, torch::ScalarType out_dtype,
                                       Activation act, const OutlierColumnsInput& /*outliers*/) const override {
    return cuda::int8_linear(q2, scale, w_.q, w_.scale, bias_f32_, out_dtype, 1.0, cuda::Int8Gemm::kAuto,
                             act == Activation::kGeluTanh);
  }
  void dense_weight_into_cuda(torch::Tensor& out, int max_blocks) const override {
    cuda::dequantize_int8_weight_into(w_.q, w_.scale, out, max_blocks);
  }
#endif
 public:
  bool dequantizes_at(int64_t) const override { return method_ != Method::kInt8W8A8; }
  ActivationCode activation_code() const override {
    return method_ == Method::kInt8W8A8 ? ActivationCode::kInt8 : ActivationCode::kNone;
  }

 protected:
  TensorMap own_state() const override { return {{"weight", w_.q}, {"weight_scale", w_.scale}}; }
  void move_storage(const torch::Device& d) override {
    w_.q = w_.q.to(d);
    w_.scale = w_.scale.to(d);
  }

 private:
  ref::Int8Weight w_;
};

class LlmInt8Linear final : public LayerBase {
 public:
  LlmInt8Linear(ref::LlmInt8Weight w, torch::Tensor bias, const QuantOptions& o)
      : LayerBase(Method::kLlmInt8, w.CB.size(0), w.CB.size(1), std::move(bias), o), w_(std::move(w)) {}

  torch::Tensor dequantized_weight() const override { return ref::dequantize_llm_int8({w_.CB.cpu(), w_.SCB.cpu()}); }

 protected:
  torch::Device device() const override { return w_.CB.device(); }
  torch::Tensor forward_cpu(const torch::Tensor& xb) const override {
    return ref::llm_int8_linear(xb, w_, bias_, options_.outlier_threshold);
  }
#ifdef EVALSVC_WITH_CUDA
  torch::Tensor forward_cuda(const torch::Tensor& xb, Activation act) const override {
    return cuda::llm_int8_linear(xb, w_.CB, w_.SCB, bias_f32_, options_.outlier_threshold, cuda::Int8Gemm::kAuto,
                                 act == Activation::kGeluTanh, outlier_state());
  }
  torch::Tensor forward_quantized_cuda(const torch::Tensor& q2, const torch::Tensor& scale, torch::ScalarType out_dtype,
                                       Activation act, const OutlierColumnsInput& outliers) const override {
    cuda::QuantizedActivations a;
    a.code = ActivationCode::kLlmInt8;
    a.q = q2;
    a.scale = scale;
    a.outliers = outliers;
    return cuda::llm_int8_linear_quantized(a, w_.CB, w_.SCB, bias_f32_, out_dtype, cuda::Int8Gemm::kAuto,
                                           act == Activation::kGeluTanh);
  }
#endif

 public:
  /// On fp16 (bitsandbytes' compute dtype) with outliers split off, the kernel that produces the input (the
  /// residual add + LayerNorm) can write the codes, rows and outlier columns at once.
  ActivationCode activation_code() const override {
    return options_.outlier_threshold > 0 && base_ == torch::kFloat16 ? ActivationCode::kLlmInt8
                                                                        : ActivationCode::kNone;
  }
  double outlier_threshold() const override { return options_.outlier_threshold; }
#ifdef EVALSVC_WITH_CUDA
  /// The zeroed outlier state llm_int8_linear leaves zero (a column bit mask + a block counter), one per CUDA
  /// stream: two streams running this layer at once (an eager forward and the warm-up of a graph's capture
  /// stream) must not share flags. Made outside any capture; a capture that meets a stream without one lets the
  /// op zero its own inside the graph rather than keep memory that only the graph's replay would clear.
  torch::Tensor outlier_state() const override {
    if (!(options_.outlier_threshold > 0) || !w_.CB.is_cuda()) return {};
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(w_.CB.device().index()).stream();
    const std::lock_guard<std::mutex> lock(state_mutex_);
    if (auto it = outlier_states_.find(stream); it != outlier_states_.end()) return it->second;
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(stream, &capture) != cudaSuccess || capture != cudaStreamCaptureStatusNone) return {};
    torch::Tensor st = cuda::llm_int8_outlier_state(in_, w_.CB.device());
    outlier_states_.emplace(stream, st);
    return st;
  }
#endif

 protected:
  TensorMap own_state() const override { return {{"weight", w_.CB}, {"SCB", w_.SCB}}; }
  void move_storage(const torch::Device& d) override {
    w_.CB = w_.CB.to(d);
    w_.SCB = w_.SCB.to(d);
#ifdef EVALSVC_WITH_CUDA
    const std::lock_guard<std::mutex> lock(state_mutex_);
    outlier_states_.clear();
#endif
  }

 private:
  ref::LlmInt8Weight w_;
#ifdef EVALSVC_WITH_CUDA
  mutable std::mutex state_mutex_;
  mutable std::map<cudaStream_t, torch::Tensor> outlier_states_;
#endif
};

class Nf4Linear final : public LayerBase {
 public:
  Nf4Linear(ref::Nf4Weight w, torch::Tensor bias, const QuantOptions& o)
      : LayerBase(Method::kNf4, w.shape.at(0), w.shape.at(1), std::move(bias), with_storage(o, w)), w_(std::move(w)) {}

  torch::Tensor dequantized_weight() const override { return ref::dequantize_nf4(cpu_weight()); }

 protected:
  torch::Device device() const override { return w_.packed.device(); }
  torch::Tensor forward_cpu(const torch::Tensor& xb) const override {
    return ref::nf4_linear(xb, w_, bias_, base_);
  }
#ifdef EVALSVC_WITH_CUDA
  torch::Tensor forward_cuda(const torch::Tensor& xb, Activation act) const override {
    const bool gelu = act == Activation::kGeluTanh;
    if (base_ == torch::kFloat) {  // the fused kernels take fp16/bf16 activations only
      return dense_product_cuda(xb, cuda::nf4_dequantize(device_weight_, torch::kFloat), act);
    }
    return cuda::nf4_linear(xb, device_weight_, bias_, cuda::Nf4Path::kAuto, gelu);
  }
  void dense_weight_into_cuda(torch::Tensor& out, int max_blocks) const override {
    cuda::nf4_dequantize_into(device_weight_, out, max_blocks);
  }
#endif
 public:
#ifdef EVALSVC_WITH_CUDA
  /// The weight dense_weight_into_cuda dequantizes, for dense_weights_into's batch; null off the GPU.
  const cuda::Nf4Weight* device_weight() const { return device().is_cuda() ? &device_weight_ : nullptr; }
#endif
  /// As forward_cuda chooses: fp32 activations always dequantize, fp16/bf16 from kNf4DequantMinTokens tokens.
  bool dequantizes_at(int64_t tokens) const override {
    return base_ == torch::kFloat || tokens >= cuda::kNf4DequantMinTokens;
  }

 protected:
  TensorMap own_state() const override {
    const int64_t n = w_.numel();
    TensorMap s{{"weight", w_.packed.reshape({(n + 1) / 2, 1})}, {"weight.quant_map", w_.quant_map}};
    nlohmann::json qs{{"quant_type", "nf4"},
                      {"blocksize", w_.blocksize},
                      {"dtype", hf_dtype_name(base_)},
                      {"shape", w_.shape}};
    if (w_.double_quant()) {
      s["weight.absmax"] = w_.absmax_q;
      s["weight.nested_absmax"] = w_.nested_absmax;
      s["weight.nested_quant_map"] = w_.nested_quant_map;
      qs["nested_blocksize"] = kNestedBlockSize;
      qs["nested_offset"] = w_.offset;
      qs["nested_dtype"] = "float32";
    } else {
      s["weight.absmax"] = w_.absmax;
    }
    const std::string text = qs.dump();
    auto bytes = torch::empty({static_cast<int64_t>(text.size())}, torch::kByte);
    std::memcpy(bytes.data_ptr<uint8_t>(), text.data(), text.size());
    s["weight.quant_state.bitsandbytes__nf4"] = bytes;
    return s;
  }
  void move_storage(const torch::Device& d) override {
    for (auto* t : {&w_.packed, &w_.absmax, &w_.absmax_q, &w_.nested_absmax, &w_.quant_map, &w_.nested_quant_map}) {
      if (t->defined()) *t = t->to(d);
    }
#ifdef EVALSVC_WITH_CUDA
    if (d.is_cuda()) {
      device_weight_ = cuda::Nf4Weight{};
      device_weight_.packed = w_.packed;
      device_weight_.out_features = out_;
      device_weight_.in_features = in_;
      device_weight_.blocksize = w_.blocksize;
      // The kernels decode with the built-in dynamic map; a file written with a map that differs in any bit
      // (torch's linspace varies in the last bit across CPUs) gets its absmax decoded once, exactly, here.
      const bool same_map = !w_.double_quant() || torch::equal(w_.nested_quant_map.cpu(),
          torch::from_blob(const_cast<float*>(kDynamicMapSigned), {256}, torch::kFloat));
      if (w_.double_quant() && same_map) {
        device_weight_.absmax_q = w_.absmax_q;
        device_weight_.nested_absmax = w_.nested_absmax;
        device_weight_.offset = w_.offset;
      } else {
        device_weight_.absmax = ref::nf4_block_absmax(cpu_weight()).to(d);
      }
    } else {
      device_weight_ = cuda::Nf4Weight{};
    }
#endif
  }

 private:
  static QuantOptions with_storage(QuantOptions o, const ref::Nf4Weight& w) {
    o.block_size = w.blocksize;
    o.double_quant = w.double_quant();
    return o;
  }
  ref::Nf4Weight cpu_weight() const {
    ref::Nf4Weight c = w_;
    for (auto* t : {&c.packed, &c.absmax, &c.absmax_q, &c.nested_absmax, &c.quant_map, &c.nested_quant_map}) {
      if (t->defined()) *t = t->cpu();
    }
    return c;
  }

  ref::Nf4Weight w_;
#ifdef EVALSVC_WITH_CUDA
  cuda::Nf4Weight device_weight_;
#endif
};

class Fp8Linear final : public LayerBase {
 public:
  Fp8Linear(ref::Fp8Weight w, torch::Tensor bias, const QuantOptions& o)
      : LayerBase(Method::kFp8E4M3, w.q.size(0), w.q.size(1), std::move(bias), o), w_(std::move(w)) {}

  torch::Tensor dequantized_weight() const override { return ref::dequantize_fp8({w_.q.cpu(), w_.scale.cpu()}); }

 protected:
  torch::Device device() const override { return w_.q.device(); }
  torch::Tensor forward_cpu(const torch::Tensor& xb) const override { return ref::fp8_w8a8_linear(xb, w_, bias_); }
#ifdef EVALSVC_WITH_CUDA
  torch::Tensor forward_cuda(const torch::Tensor& xb, Activation act) const override {
    return cuda::fp8_linear(xb, w_.q, w_.scale, bias_, act == Activation::kGeluTanh);
  }
  torch::Tensor forward_quantized_cuda(const torch::Tensor& q2, const torch::Tensor& scale, torch::ScalarType out_dtype,
                                       Activation act, const OutlierColumnsInput& /*outliers*/) const override {
    return cuda::fp8_linear_quantized({q2, scale}, w_.q, w_.scale, bias_, out_dtype, act == Activation::kGeluTanh);
  }
#endif

 public:
  ActivationCode activation_code() const override { return ActivationCode::kFp8E4M3; }

 protected:
  TensorMap own_state() const override { return {{"weight", w_.q}, {"weight_scale", w_.scale}}; }
  void before_move(const torch::Device& d) override {
    if (!d.is_cuda()) return;
#ifdef EVALSVC_WITH_CUDA
    EVALSVC_CHECK(cuda::fp8_supported(d), UnsupportedError,
                  "fp8-e4m3 needs a GPU of compute capability 8.9 or newer; {} is older", d.str());
#else
    throw UnsupportedError(fmt::format("fp8-e4m3 on {}: this build has no CUDA kernels", d.str()));
#endif
  }
  void move_storage(const torch::Device& d) override {
    w_.q = w_.q.to(d);
    w_.scale = w_.scale.to(d);
  }

 private:
  ref::Fp8Weight w_;
};

// ---------------------------------------------------------------------------------------------------------
// load_linear helpers: every failure names the key, the expected and the actual value.

const torch::Tensor& require(const TensorMap& s, const std::string& key, Method m) {
  auto it = s.find(key);
  EVALSVC_CHECK(it != s.end() && it->second.defined(), FormatError, "{} layer state: missing tensor '{}'",
                method_name(m), key);
  return it->second;
}

torch::Tensor require_tensor(const TensorMap& s, const std::string& key, Method m, std::optional<torch::ScalarType> dtype,
                             std::vector<int64_t> shape) {
  const auto& t = require(s, key, m);
  if (dtype) {
    EVALSVC_CHECK(t.scalar_type() == *dtype, FormatError, "{} layer state: '{}' must be {}, got {}", method_name(m),
                  key, c10::toString(*dtype), c10::toString(t.scalar_type()));
  }
  EVALSVC_CHECK(t.sizes().vec() == shape, FormatError, "{} layer state: '{}' must have shape {}, got {}",
                method_name(m), key, shape_str(shape), shape_str(t.sizes()));
  // Stored quantized buffers go to the kernels as raw memory: a strided view here means the writer got the
  // layout wrong (e.g. a transposed [in, out] weight), which copying would silently hide.
  EVALSVC_CHECK(t.is_contiguous(), FormatError, "{} layer state: '{}' {} must be contiguous", method_name(m), key,
                shape_str(t.sizes()));
  return t.cpu();
}

void require_finite(const torch::Tensor& t, const std::string& key, Method m) {
  EVALSVC_CHECK(torch::isfinite(t).all().item<bool>(), FormatError, "{} layer state: '{}' contains NaN or Inf",
                method_name(m), key);
}

/// The 2-D [out, in] shape of the `weight` key (plain and 8-bit formats).
std::pair<int64_t, int64_t> weight_shape(const TensorMap& s, Method m) {
  const auto& w = require(s, "weight", m);
  EVALSVC_CHECK(w.dim() == 2 && w.size(0) > 0 && w.size(1) > 0, FormatError,
                "{} layer state: 'weight' must be 2-D [out, in], got {}", method_name(m), shape_str(w.sizes()));
  return {w.size(0), w.size(1)};
}

torch::Tensor optional_bias(const TensorMap& s, Method m, int64_t out) {
  auto it = s.find("bias");
  if (it == s.end() || !it->second.defined()) return {};
  const auto& b = it->second;
  EVALSVC_CHECK(torch::isFloatingType(b.scalar_type()), FormatError,
                "{} layer state: 'bias' must be floating, got {}", method_name(m), c10::toString(b.scalar_type()));
  EVALSVC_CHECK(b.dim() == 1 && b.size(0) == out, FormatError, "{} layer state: 'bias' must be [{}], got {}",
                method_name(m), out, shape_str(b.sizes()));
  return b.cpu();
}

std::unique_ptr<QuantizedLinear> load_nf4(const TensorMap& s, const QuantOptions& options) {
  constexpr Method m = Method::kNf4;
  const std::string qs_key = "weight.quant_state.bitsandbytes__nf4";
  const auto& qs_bytes = require(s, qs_key, m);
  EVALSVC_CHECK(qs_bytes.scalar_type() == torch::kByte && qs_bytes.dim() == 1, FormatError,
                "nf4 layer state: '{}' must be a 1-D uint8 tensor of JSON bytes, got {} {}", qs_key,
                c10::toString(qs_bytes.scalar_type()), shape_str(qs_bytes.sizes()));
  const auto qs_cpu = qs_bytes.cpu().contiguous();
  const std::string text(reinterpret_cast<const char*>(qs_cpu.data_ptr<uint8_t>()), qs_cpu.numel());
  const auto j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  EVALSVC_CHECK(j.is_object(), FormatError, "nf4 layer state: '{}' is not a JSON object: '{}'", qs_key, text);

  ref::Nf4Weight w;
  try {
    EVALSVC_CHECK(j.at("quant_type").get<std::string>() == "nf4", FormatError,
                  "nf4 layer state: {}.quant_type must be \"nf4\", got {}", qs_key, j.at("quant_type").dump());
    w.blocksize = j.at("blocksize").get<int64_t>();
    w.shape = j.at("shape").get<std::vector<int64_t>>();
    dtype_from_hf_name(j.at("dtype").get<std::string>(), qs_key + ".dtype");
    if (j.contains("nested_offset")) {
      w.offset = j.at("nested_offset").get<float>();
      EVALSVC_CHECK(j.value("nested_blocksize", int64_t{0}) == kNestedBlockSize, FormatError,
                    "nf4 layer state: {}.nested_blocksize must be {}, got {}", qs_key, kNestedBlockSize,
                    j.value("nested_blocksize", nlohmann::json()).dump());
    }
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(fmt::format("nf4 layer state: bad field in '{}' ({}): {}", qs_key, e.what(), text));
  }
  EVALSVC_CHECK(w.shape.size() == 2 && w.shape[0] > 0 && w.shape[1] > 0, FormatError,
                "nf4 layer state: {}.shape must be [out, in] with positive sizes, got {}", qs_key, shape_str(w.shape));
  try {
    ref::check_nf4_blocksize(w.blocksize);
  } catch (const InputError& e) {
    throw FormatError(fmt::format("nf4 layer state: {}.blocksize: {}", qs_key, e.what()));
  }
  const int64_t n = w.numel(), nblocks = w.nblocks();
  w.packed = require_tensor(s, "weight", m, torch::kByte, {(n + 1) / 2, 1}).reshape({-1});
  w.quant_map = require_tensor(s, "weight.quant_map", m, torch::kFloat, {16});
  EVALSVC_CHECK(torch::allclose(w.quant_map, torch::from_blob(const_cast<float*>(kNf4Levels), {16}, torch::kFloat),
                                0, 1e-6),
                FormatError, "nf4 layer state: 'weight.quant_map' is not the NF4 table (an fp4 or custom map?)");
  const bool dq = j.contains("nested_offset");
  if (dq) {
    w.absmax_q = require_tensor(s, "weight.absmax", m, torch::kByte, {nblocks});
    w.nested_absmax = require_tensor(s, "weight.nested_absmax", m, torch::kFloat,
                                     {(nblocks + kNestedBlockSize - 1) / kNestedBlockSize});
    w.nested_quant_map = require_tensor(s, "weight.nested_quant_map", m, torch::kFloat, {256});
    require_finite(w.nested_absmax, "weight.nested_absmax", m);
    require_finite(w.nested_quant_map, "weight.nested_quant_map", m);
    EVALSVC_CHECK(std::isfinite(w.offset), FormatError, "nf4 layer state: {}.nested_offset is not finite", qs_key);
  } else {
    w.absmax = require_tensor(s, "weight.absmax", m, torch::kFloat, {nblocks});
    require_finite(w.absmax, "weight.absmax", m);
  }
  auto bias = optional_bias(s, m, w.shape[0]);
  return std::make_unique<Nf4Linear>(std::move(w), std::move(bias), options);
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------

std::unique_ptr<QuantizedLinear> quantize_linear(Method method, const torch::Tensor& weight, const torch::Tensor& bias,
                                                 const QuantOptions& options) {
  const std::string where = "quantize_linear(" + method_name(method) + ")";
  check_options(method, options);
  EVALSVC_CHECK(weight.defined(), InputError, "{}: weight is undefined", where);
  EVALSVC_CHECK(torch::isFloatingType(weight.scalar_type()), InputError, "{}: weight must be floating, got {}", where,
                c10::toString(weight.scalar_type()));
  EVALSVC_CHECK(weight.dim() == 2 && weight.size(0) > 0 && weight.size(1) > 0, InputError,
                "{}: weight must be 2-D [out, in] with positive sizes, got {}", where, shape_str(weight.sizes()));
  if (bias.defined()) {
    EVALSVC_CHECK(torch::isFloatingType(bias.scalar_type()), InputError, "{}: bias must be floating, got {}", where,
                  c10::toString(bias.scalar_type()));
    EVALSVC_CHECK(bias.dim() == 1 && bias.size(0) == weight.size(0), InputError, "{}: bias must be [{}], got {}",
                  where, weight.size(0), shape_str(bias.sizes()));
  }
  // Quantization runs on the CPU references; the result goes back to the weight's device.
  const auto device = weight.device();
  const auto w = weight.cpu();
  const auto b = bias.defined() ? bias.cpu() : bias;
  std::unique_ptr<QuantizedLinear> layer;
  switch (method) {
    case Method::kFp32:
    case Method::kFp16:
    case Method::kBf16:
      layer = std::make_unique<PlainLinear>(method, w, b, options);
      break;
    case Method::kInt8SymTensor:
    case Method::kInt8SymChannel:
    case Method::kInt8W8A8:
      layer = std::make_unique<Int8Linear>(method, ref::quantize_int8_sym(w, method != Method::kInt8SymTensor), b,
                                           options);
      break;
    case Method::kLlmInt8:
      // bitsandbytes' Int8Params casts the weight to fp16 before computing CB and SCB.
      layer = std::make_unique<LlmInt8Linear>(ref::quantize_llm_int8(w.to(torch::kHalf)), b, options);
      break;
    case Method::kNf4:
      // bitsandbytes quantizes the weight in the model's dtype (fp16 / bf16 for the reference's variant).
      layer = std::make_unique<Nf4Linear>(
          ref::quantize_nf4(w.to(options.compute_dtype), options.block_size, options.double_quant), b, options);
      break;
    case Method::kFp8E4M3:
      layer = std::make_unique<Fp8Linear>(ref::quantize_fp8_e4m3_channel(w), b, options);
      break;
  }
  EVALSVC_ASSERT(layer != nullptr, "quantize_linear: unhandled method {}", static_cast<int>(method));
  if (!device.is_cpu()) layer->to(device);
  return layer;
}

std::unique_ptr<QuantizedLinear> load_linear(Method method, const std::map<std::string, torch::Tensor>& state,
                                             const QuantOptions& options) {
  check_options(method, options);
  switch (method) {
    case Method::kFp32:
    case Method::kFp16:
    case Method::kBf16: {
      const auto [out, in] = weight_shape(state, method);
      const auto dtype = layer_base_dtype(method, options);
      auto w = require_tensor(state, "weight", method, dtype, {out, in});
      return std::make_unique<PlainLinear>(method, w, optional_bias(state, method, out), options);
    }
    case Method::kInt8SymTensor:
    case Method::kInt8SymChannel:
    case Method::kInt8W8A8: {
      const auto [out, in] = weight_shape(state, method);
      ref::Int8Weight w;
      w.q = require_tensor(state, "weight", method, torch::kChar, {out, in});
      w.scale = require_tensor(state, "weight_scale", method, torch::kFloat,
                               {method == Method::kInt8SymTensor ? int64_t{1} : out});
      require_finite(w.scale, "weight_scale", method);
      return std::make_unique<Int8Linear>(method, std::move(w), optional_bias(state, method, out), options);
    }
    case Method::kLlmInt8: {
      const auto [out, in] = weight_shape(state, method);
      ref::LlmInt8Weight w;
      w.CB = require_tensor(state, "weight", method, torch::kChar, {out, in});
      w.SCB = require_tensor(state, "SCB", method, torch::kFloat, {out});
      require_finite(w.SCB, "SCB", method);
      return std::make_unique<LlmInt8Linear>(std::move(w), optional_bias(state, method, out), options);
    }
    case Method::kNf4:
      return load_nf4(state, options);
    case Method::kFp8E4M3: {
      const auto [out, in] = weight_shape(state, method);
      ref::Fp8Weight w;
      w.q = require_tensor(state, "weight", method, torch::kByte, {out, in});
      w.scale = require_tensor(state, "weight_scale", method, torch::kFloat, {out});
      require_finite(w.scale, "weight_scale", method);
      return std::make_unique<Fp8Linear>(std::move(w), optional_bias(state, method, out), options);
    }
  }
  throw InputError(fmt::format("load_linear: unknown method {}", static_cast<int>(method)));
}

void dense_weights_into(const std::vector<const QuantizedLinear*>& layers, const std::vector<torch::Tensor*>& outs,
                        int max_blocks) {
  EVALSVC_CHECK(layers.size() == outs.size(), InputError, "dense_weights_into: {} layers but {} outputs",
                layers.size(), outs.size());
  for (size_t j = 0; j < layers.size(); ++j) {
    EVALSVC_CHECK(layers[j] != nullptr && outs[j] != nullptr, InputError, "dense_weights_into: layer {} or its output is null", j);
  }
#ifdef EVALSVC_WITH_CUDA
  std::vector<const cuda::Nf4Weight*> nf4;
  for (size_t j = 0; j < layers.size(); ++j) {
    const auto* l = dynamic_cast<const Nf4Linear*>(layers[j]);
    if (l == nullptr || l->device_weight() == nullptr) break;
    l->check_dense_buffer(*outs[j], max_blocks);
    nf4.push_back(l->device_weight());
  }
  if (nf4.size() == layers.size() && nf4.size() >= 2 && nf4.size() <= 4) {
    cuda::nf4_dequantize_batch_into(nf4, outs, max_blocks);
    return;
  }
#endif
  for (size_t j = 0; j < layers.size(); ++j) layers[j]->dense_weight_into(*outs[j], max_blocks);
}

}  // namespace evalsvc::kernels
