// Per-projection weight quantization error (the quantize job's layer_errors rows): sums checked against the
// int8 formula of SPEC section 2 computed here independently, exact variants, the expected order between
// methods, and bad input.
#include <gtest/gtest.h>

#include "evalsvc/common/error.h"
#include "evalsvc/common/metrics.h"
#include "evalsvc/worker/quant_error.h"

namespace evalsvc::worker {
namespace {

ModelConfig small_config() {
  ModelConfig c;
  c.vocab_size = 64;
  c.n_positions = 16;
  c.n_embd = 16;  // every projection holds a multiple of 64 weights (NF4 blocks)
  c.n_layer = 2;
  c.n_head = 2;
  c.num_labels = 4;
  c.pad_token_id = 63;
  return c;
}

/// The fp32 weights (Hugging Face layout), copied before quantize() frees them.
std::map<std::string, torch::Tensor> original_of(const GPT2Classifier& m) {
  std::map<std::string, torch::Tensor> out;
  for (const auto& [k, t] : m->hf_state_dict()) out[k] = t.clone();
  return out;
}

std::vector<ProjectionError> errors_for(kernels::Method method, std::map<std::string, torch::Tensor>* original = nullptr) {
  GPT2Classifier m(small_config(), 11);
  auto orig = original_of(m);
  // fp16 and NF4 run with fp16 kept parts and compute (as their variants do); the others in fp32.
  const bool half = method == kernels::Method::kFp16 || method == kernels::Method::kNf4;
  m->quantize(method, half ? torch::kFloat16 : torch::kFloat32, kernels::QuantOptions{});
  if (original) *original = orig;
  return projection_errors(m, orig);
}

TEST(ProjectionErrors, Int8PerTensorMatchesTheFormula) {
  std::map<std::string, torch::Tensor> orig;
  const auto errs = errors_for(kernels::Method::kInt8SymTensor, &orig);
  ASSERT_EQ(errs.size(), 8u);  // 2 blocks x 4 projections, in Hugging Face order
  for (size_t i = 0; i < errs.size(); ++i) {
    const auto& e = errs[i];
    EXPECT_EQ(e.layer, static_cast<int64_t>(i / 4));
    EXPECT_EQ(static_cast<int>(e.projection), static_cast<int>(i % 4));
    const auto key = "transformer.h." + std::to_string(e.layer) + "." + projection_name(e.projection) + ".weight";
    // SPEC section 2: scale = absmax / 127, q = round(w / scale) clamped to [-127, 127], w' = q * scale.
    const torch::Tensor w = orig.at(key).to(torch::kFloat64);
    const double scale = w.abs().max().item<double>() / 127.0;
    const torch::Tensor deq = torch::clamp(torch::round(w / scale), -127, 127) * scale;
    EXPECT_EQ(e.numel, w.numel());
    EXPECT_NEAR(e.signal_sq, w.pow(2).sum().item<double>(), 1e-12 * e.signal_sq) << key;
    // The library quantizes in fp32: allow its rounding, far below the error itself.
    EXPECT_NEAR(e.error_sq, (w - deq).pow(2).sum().item<double>(), 1e-3 * e.error_sq) << key;
    EXPECT_GT(e.error_sq, 0) << key;
    EXPECT_LE(e.max_abs_error, scale / 2 * (1 + 1e-5)) << key;  // rounding error is at most half a step
    // Uniform rounding noise (step^2 / 12 a weight) and Gaussian weights: about 30-45 dB here.
    const double db = *sqnr_db(e.signal_sq, e.error_sq);
    EXPECT_GT(db, 25) << key;
    EXPECT_LT(db, 50) << key;
  }
}

TEST(ProjectionErrors, Fp32IsExactAndFewerBitsMeanMoreError) {
  for (const auto& e : errors_for(kernels::Method::kFp32)) {
    EXPECT_EQ(e.error_sq, 0.0);
    EXPECT_EQ(e.max_abs_error, 0.0);
    EXPECT_FALSE(sqnr_db(e.signal_sq, e.error_sq).has_value());
  }
  const auto fp16 = errors_for(kernels::Method::kFp16);
  const auto channel = errors_for(kernels::Method::kInt8SymChannel);
  const auto nf4 = errors_for(kernels::Method::kNf4);
  ASSERT_EQ(fp16.size(), nf4.size());
  for (size_t i = 0; i < nf4.size(); ++i) {
    const double db16 = *sqnr_db(fp16[i].signal_sq, fp16[i].error_sq);
    const double db8 = *sqnr_db(channel[i].signal_sq, channel[i].error_sq);
    const double db4 = *sqnr_db(nf4[i].signal_sq, nf4[i].error_sq);
    // 11-bit mantissa > 8-bit integers > 16 levels: each step costs well over 10 dB.
    EXPECT_GT(db16, db8 + 10) << i;
    EXPECT_GT(db8, db4 + 10) << i;
  }
}

TEST(ProjectionErrors, BadInputNamesTheTensor) {
  GPT2Classifier m(small_config(), 11);
  auto orig = original_of(m);
  EXPECT_THROW(projection_errors(m, orig), InputError);  // not quantized yet
  m->quantize(kernels::Method::kInt8SymChannel, torch::kFloat32, {});
  auto missing = orig;
  missing.erase("transformer.h.1.mlp.c_fc.weight");
  try {
    projection_errors(m, missing);
    ADD_FAILURE() << "no error for a missing weight";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("transformer.h.1.mlp.c_fc.weight"), std::string::npos) << e.what();
  }
  auto wrong = orig;
  wrong["transformer.h.0.attn.c_proj.weight"] = torch::zeros({16, 17});
  try {
    projection_errors(m, wrong);
    ADD_FAILURE() << "no error for a wrong shape";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("transformer.h.0.attn.c_proj.weight"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace evalsvc::worker
