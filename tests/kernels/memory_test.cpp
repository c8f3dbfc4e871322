// SPEC section 3 memory: the reference report's figures for GPT-2 Small, byte-exact, and agreement of
// model_memory with the bytes() of real layers on a small shape.
#include <gtest/gtest.h>

#include <utility>
#include <vector>

#include <fmt/format.h>

#include "evalsvc/common/error.h"
#include "evalsvc/kernels/memory.h"
#include "evalsvc/kernels/quantized_linear.h"

namespace evalsvc::kernels {
namespace {

constexpr ModelShape kGpt2Small{50257, 1024, 768, 12, 0, 4};
constexpr int64_t kProjectionParams = 84'934'656;  // the 48 projection weights
constexpr int64_t kOtherParams = 39'508'224;       // everything else, biases included
constexpr int64_t kMaskBytes = 12 * 1024 * 1024;   // 12 x [1024, 1024] bool

QuantOptions fp16_options() { return QuantOptions{}; }

TEST(ModelMemory, ReferenceFp32) {
  auto m = model_memory(kGpt2Small, Method::kFp32, torch::kFloat, fp16_options());
  EXPECT_EQ(kProjectionParams + kOtherParams, 124'442'880);
  EXPECT_EQ(m.hf_with_mask_buffers, 124'442'880LL * 4 + 12'582'960);  // SPEC: + 12 x (1 MiB bool + fp32 scalar)
  EXPECT_EQ(fmt::format("{:.2f}", to_mib(m.hf_with_mask_buffers)), "486.71");
  EXPECT_EQ(m.hf_without_mask_buffers, 124'442'880LL * 4);
  EXPECT_EQ(fmt::format("{:.2f}", to_mib(m.hf_without_mask_buffers)), "474.71");
  EXPECT_EQ(m.runtime, m.hf_without_mask_buffers);
}

TEST(ModelMemory, ReferenceLlmInt8) {
  auto m = model_memory(kGpt2Small, Method::kLlmInt8, torch::kHalf, fp16_options());
  EXPECT_EQ(m.hf_without_mask_buffers, kProjectionParams * 1 + kOtherParams * 2);
  EXPECT_EQ(m.hf_with_mask_buffers, m.hf_without_mask_buffers + kMaskBytes + 12 * 2);
  EXPECT_EQ(fmt::format("{:.2f}", to_mib(m.hf_with_mask_buffers)), "168.36");
  // SCB, and the outlier state of each layer: a bit mask of its in columns (24 or 96 words) + a counter
  EXPECT_EQ(m.runtime - m.hf_without_mask_buffers, 12 * (2304 + 768 + 3072 + 768) * 4 + 12 * (3 * 25 + 97) * 4);
}

TEST(ModelMemory, ReferenceNf4) {
  auto m = model_memory(kGpt2Small, Method::kNf4, torch::kHalf, fp16_options());
  EXPECT_EQ(m.hf_without_mask_buffers, kProjectionParams / 2 + kOtherParams * 2);
  EXPECT_EQ(m.hf_with_mask_buffers, m.hf_without_mask_buffers + kMaskBytes + 12 * 2);
  EXPECT_EQ(fmt::format("{:.2f}", to_mib(m.hf_with_mask_buffers)), "127.86");
  // (b): absmax of 84,934,656 / 64 blocks double-quantized, per layer code maps and offsets.
  EXPECT_GT(m.runtime, m.hf_without_mask_buffers + kProjectionParams / 64);
  auto no_dq = fp16_options();
  no_dq.double_quant = false;
  auto m2 = model_memory(kGpt2Small, Method::kNf4, torch::kHalf, no_dq);
  EXPECT_EQ(m2.runtime - m2.hf_without_mask_buffers, kProjectionParams / 64 * 4 + 48 * 64);
  EXPECT_LT(m.runtime, m2.runtime);
}

TEST(ModelMemory, AgreesWithRealLayersOnASmallShape) {
  const ModelShape shape{50, 16, 24, 2, 40, 4};
  torch::manual_seed(1);
  for (auto [method, base] : std::vector<std::pair<Method, torch::ScalarType>>{
           {Method::kFp32, torch::kFloat}, {Method::kBf16, torch::kBFloat16}, {Method::kInt8SymTensor, torch::kFloat},
           {Method::kInt8SymChannel, torch::kHalf}, {Method::kInt8W8A8, torch::kHalf}, {Method::kLlmInt8, torch::kHalf},
           {Method::kNf4, torch::kHalf}, {Method::kFp8E4M3, torch::kBFloat16}}) {
    QuantOptions o;
    o.compute_dtype = base;
    int64_t hf = 0, runtime = 0;
    for (int64_t l = 0; l < shape.n_layer; ++l) {
      for (auto [out, in] : std::vector<std::pair<int64_t, int64_t>>{{72, 24}, {24, 24}, {40, 24}, {24, 40}}) {
        auto layer = quantize_linear(method, torch::randn({out, in}), torch::randn({out}), o);
        hf += layer->bytes().hf_footprint;
        runtime += layer->bytes().runtime;
      }
    }
    // Everything else, as real tensors of the base dtype: wte, wpe, 2 LayerNorms a block, ln_f, score head.
    auto opts = torch::TensorOptions().dtype(base);
    int64_t other = 0;
    for (auto t : {torch::empty({50, 24}, opts), torch::empty({16, 24}, opts), torch::empty({2 * 2 * 2, 24}, opts),
                   torch::empty({2, 24}, opts), torch::empty({4, 24}, opts)}) {
      other += t.numel() * t.element_size();
    }
    auto m = model_memory(shape, method, base, o);
    const std::string name = method_name(method);
    EXPECT_EQ(m.hf_without_mask_buffers, other + hf) << name;
    EXPECT_EQ(m.runtime, other + runtime) << name;
    auto bool_mask = torch::empty({16, 16}, torch::kBool);
    EXPECT_EQ(m.hf_with_mask_buffers - m.hf_without_mask_buffers,
              2 * (bool_mask.numel() + torch::ones({1}, opts).element_size()))
        << name;
  }
}

TEST(ModelMemory, BadInput) {
  EXPECT_THROW(model_memory(kGpt2Small, Method::kFp32, torch::kHalf, fp16_options()), InputError);
  EXPECT_THROW(model_memory(ModelShape{0, 1024, 768, 12, 0, 4}, Method::kNf4, torch::kHalf, fp16_options()),
               InputError);
  auto bad = fp16_options();
  bad.block_size = 96;
  EXPECT_THROW(model_memory(kGpt2Small, Method::kNf4, torch::kHalf, bad), InputError);
  EXPECT_THROW(linear_layer_bytes(Method::kInt8W8A8, 0, 5, true, torch::kHalf, fp16_options()), InputError);
}

}  // namespace
}  // namespace evalsvc::kernels
