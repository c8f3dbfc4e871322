// QuantizedLinear layers on CPU: every method against the fp32 product with a named tolerance, the CPU path equal
// to the reference, dtypes in and out, state() -> load_linear() round trips, bytes() against the real tensors,
// and bad input (typed errors naming the key / value).
#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "evalsvc/common/error.h"
#include "evalsvc/kernels/cuda_ops.h"
#include "evalsvc/kernels/memory.h"
#include "evalsvc/kernels/quantized_linear.h"
#include "evalsvc/kernels/reference.h"

namespace evalsvc::kernels {
namespace {

struct Case {
  Method method;
  torch::ScalarType base;
  double max_rel_err;  ///< ||y - y_fp32|| / ||y_fp32|| on seeded N(0,1) data
};

// Named tolerances per format (relative Frobenius error against the fp32 product).
constexpr double kFp32RelErr = 1e-6, kFp16RelErr = 2e-3, kBf16RelErr = 1e-2, kInt8RelErr = 2.5e-2,
                 kNf4RelErr = 0.15, kFp8RelErr = 0.08;

const std::vector<Case>& cases() {
  static const std::vector<Case> c{
      {Method::kFp32, torch::kFloat, kFp32RelErr},          {Method::kFp16, torch::kHalf, kFp16RelErr},
      {Method::kBf16, torch::kBFloat16, kBf16RelErr},       {Method::kInt8SymTensor, torch::kFloat, kInt8RelErr},
      {Method::kInt8SymChannel, torch::kHalf, kInt8RelErr}, {Method::kInt8W8A8, torch::kHalf, kInt8RelErr},
      {Method::kLlmInt8, torch::kHalf, kInt8RelErr},        {Method::kNf4, torch::kHalf, kNf4RelErr},
      {Method::kNf4, torch::kBFloat16, kNf4RelErr},         {Method::kFp8E4M3, torch::kHalf, kFp8RelErr},
  };
  return c;
}

QuantOptions options_for(const Case& c) {
  QuantOptions o;
  o.compute_dtype = c.base;
  return o;
}

struct Data {
  torch::Tensor w, b, x;
};

Data seeded(int64_t out, int64_t in, uint64_t seed) {
  torch::manual_seed(seed);
  return {torch::randn({out, in}) * 0.2, torch::randn({out}) * 0.1, torch::randn({3, 5, in})};
}

std::string label(const Case& c) { return method_name(c.method) + "/" + c10::toString(c.base); }

TEST(QuantizedLinear, EveryMethodApproximatesFp32WithinItsTolerance) {
  auto d = seeded(37, 67, 1);
  auto exact = torch::matmul(d.x, d.w.t()) + d.b;
  for (const auto& c : cases()) {
    auto layer = quantize_linear(c.method, d.w, d.b, options_for(c));
    EXPECT_EQ(layer->method(), c.method);
    EXPECT_EQ(layer->out_features(), 37);
    EXPECT_EQ(layer->in_features(), 67);
    auto y = layer->forward(d.x);
    ASSERT_EQ(y.sizes(), (std::vector<int64_t>{3, 5, 37})) << label(c);
    EXPECT_EQ(y.scalar_type(), torch::kFloat) << label(c);
    const double rel = ((y - exact).norm() / exact.norm()).item<double>();
    EXPECT_LT(rel, c.max_rel_err) << label(c);
    // In the compute dtype, out in the compute dtype, and equal to rounding the fp32-input result.
    auto yb = layer->forward(d.x.to(c.base));
    EXPECT_EQ(yb.scalar_type(), c.base) << label(c);
    EXPECT_TRUE(torch::equal(yb, y.to(c.base))) << label(c);
    // The dequantized weight is what the layer represents.
    auto dw = layer->dequantized_weight();
    EXPECT_EQ(dw.scalar_type(), torch::kFloat);
    EXPECT_EQ(dw.sizes(), d.w.sizes());
  }
}

TEST(QuantizedLinear, GeluActivationIsGeluTanhOfTheOutput) {
  // The model asks c_fc for GELU (tanh) with its output; on the CPU that is the plain op after the product
  // (the CUDA paths fold it into the epilogue and are checked against this in cuda_ops_gpu_test).
  auto d = seeded(37, 67, 4);
  for (const auto& c : cases()) {
    auto layer = quantize_linear(c.method, d.w, d.b, options_for(c));
    const auto y = layer->forward(d.x);
    const auto g = layer->forward(d.x, Activation::kGeluTanh);
    EXPECT_TRUE(torch::equal(g, torch::gelu(y, "tanh"))) << label(c);
    EXPECT_FALSE(torch::equal(g, torch::gelu(y))) << label(c) << ": tanh approximation, not exact GELU";
  }
}

TEST(QuantizedLinear, CpuForwardIsTheReference) {
  auto d = seeded(37, 67, 2);
  const auto x = d.x.to(torch::kHalf);
  QuantOptions o;  // fp16 base
  auto xw = [&](Method m) { return quantize_linear(m, d.w, d.b, o)->state(); };
  auto b16 = d.b.to(torch::kHalf);
  {
    auto s = xw(Method::kInt8W8A8);
    EXPECT_TRUE(torch::equal(quantize_linear(Method::kInt8W8A8, d.w, d.b, o)->forward(x),
                             ref::int8_w8a8_linear(x, {s["weight"], s["weight_scale"]}, b16)));
  }
  {
    auto s = xw(Method::kLlmInt8);
    EXPECT_TRUE(torch::equal(quantize_linear(Method::kLlmInt8, d.w, d.b, o)->forward(x),
                             ref::llm_int8_linear(x, {s["weight"], s["SCB"]}, b16, 6.0)));
    // bitsandbytes quantizes the fp16 weight: the layer's CB / SCB are those of w.to(fp16).
    auto r = ref::quantize_llm_int8(d.w.to(torch::kHalf));
    EXPECT_TRUE(torch::equal(s["weight"], r.CB));
    EXPECT_TRUE(torch::equal(s["SCB"], r.SCB));
  }
  {
    auto s = xw(Method::kFp8E4M3);
    EXPECT_TRUE(torch::equal(quantize_linear(Method::kFp8E4M3, d.w, d.b, o)->forward(x),
                             ref::fp8_w8a8_linear(x, {s["weight"], s["weight_scale"]}, b16)));
  }
  {
    auto nf4 = quantize_linear(Method::kNf4, d.w, d.b, o);
    auto r = ref::quantize_nf4(d.w.to(torch::kHalf), 64, true);
    EXPECT_TRUE(torch::equal(nf4->forward(x), ref::nf4_linear(x, r, b16, torch::kHalf)));
  }
}

TEST(QuantizedLinear, DenseWeightPathEqualsForwardForWeightOnlyFormats) {
  // The model's weight prefetch calls dense_weight_into() ahead of time and forward_dense() later; for the
  // weight-only formats that is the computation forward() does, so the results are identical.
  auto d = seeded(37, 67, 5);  // 15 tokens
  const auto x64 = torch::randn({2, 40, 67});  // 80 tokens: nf4 dequantizes from kNf4DequantMinTokens
  for (const auto& c : cases()) {
    auto layer = quantize_linear(c.method, d.w, d.b, options_for(c));
    EXPECT_EQ(layer->base_dtype(), c.base) << label(c);
    const bool weight_only = c.method == Method::kInt8SymTensor || c.method == Method::kInt8SymChannel;
    const bool nf4 = c.method == Method::kNf4;
    EXPECT_EQ(layer->dequantizes_at(15), weight_only) << label(c);
    EXPECT_EQ(layer->dequantizes_at(80), weight_only || nf4) << label(c);
    auto dense = torch::empty({37, 67}, c.base);
    layer->dense_weight_into(dense);
    EXPECT_TRUE(torch::equal(dense, layer->dequantized_weight().to(c.base))) << label(c);
    if (!layer->dequantizes_at(80)) {
      EXPECT_THROW(layer->forward_dense(x64, dense), UnsupportedError) << label(c);
      continue;
    }
    for (auto act : {Activation::kNone, Activation::kGeluTanh}) {
      EXPECT_TRUE(torch::equal(layer->forward_dense(x64, dense, act), layer->forward(x64, act))) << label(c);
    }
    if (nf4) EXPECT_THROW(layer->forward_dense(d.x, dense), UnsupportedError) << label(c) << " at 15 tokens";
    // A buffer of the wrong shape or dtype is refused, naming what it should be.
    auto wrong_shape = torch::empty({67, 37}, c.base);
    auto wrong_dtype = torch::empty({37, 67}, c.base == torch::kFloat ? torch::kHalf : torch::kFloat);
    for (auto* bad : {&wrong_shape, &wrong_dtype}) {
      try {
        layer->dense_weight_into(*bad);
        ADD_FAILURE() << label(c) << ": no error for a bad dense buffer";
      } catch (const InputError& e) {
        EXPECT_NE(std::string(e.what()).find("dense weight"), std::string::npos) << e.what();
      }
      EXPECT_THROW(layer->forward_dense(x64, *bad), InputError) << label(c);
    }
  }
}

TEST(QuantizedLinear, ActivationCodeNamesWhatForwardQuantizesToAndForwardQuantizedNeedsCuda) {
  const auto d = seeded(40, 64, 9);
  for (const auto& c : cases()) {
    auto layer = quantize_linear(c.method, d.w, d.b, options_for(c));
    // LLM.int8 splits off outliers on its fp16 compute dtype only (bitsandbytes casts to fp16).
    const bool llm_fp16 = c.method == Method::kLlmInt8 && layer->base_dtype() == torch::kFloat16;
    const auto want = c.method == Method::kInt8W8A8  ? ActivationCode::kInt8
                      : c.method == Method::kFp8E4M3 ? ActivationCode::kFp8E4M3
                      : llm_fp16                     ? ActivationCode::kLlmInt8
                                                     : ActivationCode::kNone;
    EXPECT_EQ(layer->activation_code(), want) << label(c);
    EXPECT_EQ(layer->outlier_threshold(), c.method == Method::kLlmInt8 ? 6.0 : 0.0) << label(c);
    EXPECT_FALSE(layer->outlier_state().defined()) << label(c) << ": no device state on the CPU";
    // On the CPU (or for a method without codes) there is no pre-quantized path: a clear error, not a result.
    EXPECT_THROW(layer->forward_quantized(torch::zeros({3, 64}, torch::kInt8), torch::ones({3}), torch::kFloat32),
                 UnsupportedError)
        << method_name(c.method);
  }
}

TEST(QuantizedLinear, StateRoundTripGivesIdenticalOutputs) {
  auto d = seeded(37, 67, 3);
  for (const auto& c : cases()) {
    for (bool with_bias : {true, false}) {
      auto o = options_for(c);
      auto layer = quantize_linear(c.method, d.w, with_bias ? d.b : torch::Tensor(), o);
      auto state = layer->state();
      EXPECT_EQ(state.count("bias"), with_bias ? 1u : 0u) << label(c);
      auto loaded = load_linear(c.method, state, o);
      EXPECT_TRUE(torch::equal(loaded->forward(d.x), layer->forward(d.x))) << label(c);
      EXPECT_TRUE(torch::equal(loaded->dequantized_weight(), layer->dequantized_weight())) << label(c);
      EXPECT_EQ(loaded->bytes().runtime, layer->bytes().runtime) << label(c);
      auto again = loaded->state();
      ASSERT_EQ(again.size(), state.size()) << label(c);
      for (const auto& [k, t] : state) EXPECT_TRUE(torch::equal(again.at(k), t)) << label(c) << " " << k;
    }
  }
  // Without double quantization too.
  QuantOptions o;
  o.double_quant = false;
  auto layer = quantize_linear(Method::kNf4, d.w, d.b, o);
  auto loaded = load_linear(Method::kNf4, layer->state(), o);
  EXPECT_TRUE(torch::equal(loaded->forward(d.x), layer->forward(d.x)));
}

TEST(QuantizedLinear, BitsandbytesTensorNamesAndLayouts) {
  auto d = seeded(37, 67, 4);
  QuantOptions o;
  auto s8 = quantize_linear(Method::kLlmInt8, d.w, d.b, o)->state();
  EXPECT_EQ(s8.size(), 3u);
  EXPECT_EQ(s8.at("weight").scalar_type(), torch::kChar);
  EXPECT_EQ(s8.at("SCB").sizes(), (std::vector<int64_t>{37}));
  EXPECT_EQ(s8.at("bias").scalar_type(), torch::kHalf);

  auto s4 = quantize_linear(Method::kNf4, d.w, d.b, o)->state();
  EXPECT_EQ(s4.at("weight").sizes(), (std::vector<int64_t>{1240, 1}));
  EXPECT_EQ(s4.at("weight.absmax").scalar_type(), torch::kByte);
  EXPECT_EQ(s4.at("weight.absmax").numel(), 39);
  EXPECT_EQ(s4.at("weight.nested_absmax").numel(), 1);
  EXPECT_EQ(s4.at("weight.quant_map").numel(), 16);
  EXPECT_EQ(s4.at("weight.nested_quant_map").numel(), 256);
  auto js = s4.at("weight.quant_state.bitsandbytes__nf4");
  auto j = nlohmann::json::parse(std::string(reinterpret_cast<const char*>(js.data_ptr<uint8_t>()), js.numel()));
  EXPECT_EQ(j.at("quant_type"), "nf4");
  EXPECT_EQ(j.at("blocksize"), 64);
  EXPECT_EQ(j.at("dtype"), "float16");
  EXPECT_EQ(j.at("shape"), nlohmann::json({37, 67}));
  EXPECT_EQ(j.at("nested_blocksize"), 256);
  EXPECT_EQ(j.at("nested_dtype"), "float32");
  EXPECT_TRUE(j.at("nested_offset").is_number());

  auto ss = quantize_linear(Method::kInt8SymTensor, d.w, d.b, o)->state();
  EXPECT_EQ(ss.at("weight_scale").sizes(), (std::vector<int64_t>{1}));
  auto sf = quantize_linear(Method::kFp8E4M3, d.w, d.b, o)->state();
  EXPECT_EQ(sf.at("weight").scalar_type(), torch::kByte);
  EXPECT_EQ(sf.at("weight_scale").sizes(), (std::vector<int64_t>{37}));
}

TEST(QuantizedLinear, BytesMatchTheStoredTensors) {
  auto d = seeded(37, 67, 5);
  for (const auto& c : cases()) {
    auto o = options_for(c);
    auto layer = quantize_linear(c.method, d.w, d.b, o);
    int64_t stored = 0;
    for (const auto& [k, t] : layer->state()) {
      if (k != "weight.quant_state.bitsandbytes__nf4") stored += t.numel() * t.element_size();
    }
    if (c.method == Method::kNf4) stored += 4;  // the offset travels inside the JSON
    if (c.method == Method::kLlmInt8) stored += 4 * (3 + 1);  // the outlier state a layer keeps on a GPU: 67 bits + a counter
    EXPECT_EQ(layer->bytes().runtime, stored) << label(c);
    auto s = layer->state();
    const int64_t params = s.at("weight").numel() * s.at("weight").element_size() +
                           s.at("bias").numel() * s.at("bias").element_size();
    const int64_t scale = s.count("weight_scale") ? s.at("weight_scale").numel() * 4 : 0;
    EXPECT_EQ(layer->bytes().hf_footprint, params + scale) << label(c);
    EXPECT_EQ(layer->bytes().runtime, linear_layer_bytes(c.method, 37, 67, true, c.base, o).runtime) << label(c);
  }
}

TEST(QuantizedLinear, StoredTensorsAreTheLayersOwnStorage) {
  auto d = seeded(37, 67, 5);
  for (const auto& c : cases()) {
    auto layer = quantize_linear(c.method, d.w, d.b, options_for(c));
    const auto stored = layer->stored_tensors();
    // Every tensor of the checkpoint but NF4's quant_state text: the same storage, not a copy.
    auto s = layer->state();
    size_t want = s.size() - s.count("weight.quant_state.bitsandbytes__nf4");
    ASSERT_EQ(stored.size(), want) << label(c);
    int64_t bytes = 0;
    for (const auto& t : stored) {
      EXPECT_TRUE(t.is_contiguous()) << label(c);
      bytes += static_cast<int64_t>(t.nbytes());
    }
    EXPECT_EQ(bytes, layer->bytes().runtime - (c.method == Method::kNf4 ? 4 : 0) -
                         (c.method == Method::kLlmInt8 ? 4 * (3 + 1) : 0))
        << label(c);
    // The same storage on every call: nothing is copied.
    EXPECT_EQ(stored.front().data_ptr(), layer->stored_tensors().front().data_ptr()) << label(c);
  }
}

TEST(QuantizedLinearBadInput, QuantizeAndForward) {
  auto d = seeded(8, 16, 6);
  QuantOptions o;
  EXPECT_THROW(quantize_linear(Method::kNf4, d.w.reshape({-1}), d.b, o), InputError);
  EXPECT_THROW(quantize_linear(Method::kNf4, d.w.to(torch::kInt), d.b, o), InputError);
  EXPECT_THROW(quantize_linear(Method::kLlmInt8, d.w, torch::ones({7}), o), InputError);
  auto bad_dtype = o;
  bad_dtype.compute_dtype = torch::kInt;
  EXPECT_THROW(quantize_linear(Method::kInt8W8A8, d.w, d.b, bad_dtype), InputError);
  auto bad_block = o;
  bad_block.block_size = 100;
  EXPECT_THROW(quantize_linear(Method::kNf4, d.w, d.b, bad_block), InputError);
  auto bad_thr = o;
  bad_thr.outlier_threshold = -1;
  EXPECT_THROW(quantize_linear(Method::kLlmInt8, d.w, d.b, bad_thr), InputError);

  for (const auto& c : cases()) {
    auto layer = quantize_linear(c.method, d.w, d.b, options_for(c));
    EXPECT_THROW(layer->forward(torch::ones({2, 15})), InputError) << label(c);
    EXPECT_THROW(layer->forward(torch::ones({2, 16}, torch::kLong)), InputError) << label(c);
    EXPECT_THROW(layer->forward(torch::Tensor()), InputError) << label(c);
    // Non-contiguous activations are fine.
    auto xt = torch::randn({16, 4}).t();
    EXPECT_TRUE(torch::equal(layer->forward(xt), layer->forward(xt.contiguous()))) << label(c);
  }
  try {
    quantize_linear(Method::kFp8E4M3, d.w, d.b, o)->forward(torch::ones({2, 15}));
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("[2, 15]"), std::string::npos) << e.what();
  }
}

TEST(QuantizedLinearBadInput, LoadLinearNamesTheBadKey) {
  auto d = seeded(8, 16, 7);
  QuantOptions o;
  auto expect_format_error = [](const std::function<void()>& f, const std::string& needle) {
    try {
      f();
      ADD_FAILURE() << "no FormatError, expected one mentioning " << needle;
    } catch (const FormatError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  auto s8 = quantize_linear(Method::kLlmInt8, d.w, d.b, o)->state();
  auto missing = s8;
  missing.erase("SCB");
  expect_format_error([&] { load_linear(Method::kLlmInt8, missing, o); }, "SCB");
  auto wrong_dtype = s8;
  wrong_dtype["SCB"] = wrong_dtype["SCB"].to(torch::kHalf);
  expect_format_error([&] { load_linear(Method::kLlmInt8, wrong_dtype, o); }, "SCB");
  auto transposed = s8;
  transposed["weight"] = s8["weight"].t().contiguous().t();  // right shape, column-major storage
  ASSERT_FALSE(transposed["weight"].is_contiguous());
  expect_format_error([&] { load_linear(Method::kLlmInt8, transposed, o); }, "contiguous");
  auto short_scb = s8;
  short_scb["SCB"] = s8["SCB"].slice(0, 0, 7).contiguous();
  expect_format_error([&] { load_linear(Method::kLlmInt8, short_scb, o); }, "[8]");

  auto s4 = quantize_linear(Method::kNf4, d.w, d.b, o)->state();
  auto set_json = [&](const std::string& text) {
    auto s = s4;
    auto t = torch::empty({static_cast<int64_t>(text.size())}, torch::kByte);
    std::memcpy(t.data_ptr<uint8_t>(), text.data(), text.size());
    s["weight.quant_state.bitsandbytes__nf4"] = t;
    return s;
  };
  expect_format_error([&] { load_linear(Method::kNf4, set_json("{not json"), o); }, "not a JSON object");
  expect_format_error(
      [&] {
        load_linear(Method::kNf4, set_json(R"({"quant_type":"nf4","blocksize":48,"dtype":"float16","shape":[8,16],)"
                                           R"("nested_blocksize":256,"nested_offset":0.1,"nested_dtype":"float32"})"),
                    o);
      },
      "blocksize");
  expect_format_error(
      [&] {
        load_linear(Method::kNf4, set_json(R"({"quant_type":"fp4","blocksize":64,"dtype":"float16","shape":[8,16]})"),
                    o);
      },
      "quant_type");
  expect_format_error(
      [&] {
        load_linear(Method::kNf4, set_json(R"({"quant_type":"nf4","blocksize":64,"dtype":"float16","shape":[9,16],)"
                                           R"("nested_blocksize":256,"nested_offset":0.1,"nested_dtype":"float32"})"),
                    o);
      },
      "'weight'");
  auto no_absmax = s4;
  no_absmax.erase("weight.absmax");
  expect_format_error([&] { load_linear(Method::kNf4, no_absmax, o); }, "weight.absmax");
}

TEST(QuantizedLinear, DevicesThisBuildCannotUse) {
  auto d = seeded(8, 16, 8);
  auto fp8 = quantize_linear(Method::kFp8E4M3, d.w, d.b, QuantOptions{});
  if (cuda::built()) GTEST_SKIP() << "CUDA build: covered by the GPU tests";
  // No CUDA kernels in this build: fp8 refuses the device with a typed error before anything moves.
  EXPECT_THROW(fp8->to(torch::Device(torch::kCUDA, 0)), UnsupportedError);
  EXPECT_NO_THROW(fp8->forward(d.x));
}

}  // namespace
}  // namespace evalsvc::kernels
