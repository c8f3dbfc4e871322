// The CUDA ops of cuda_ops.h against the CPU references of reference.h, on the same seeded inputs (STYLE items
// 6 and 7): odd shapes, in (K) not a multiple of the NF4 block or the 16/32-byte vector widths, 1, 7, 128 and
// 1000 tokens, a planted LLM.int8 outlier, named tolerances per dtype, and bad input -> InputError.
// Skipped (GTEST_SKIP) when the build has no CUDA kernels or the machine no GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "evalsvc/common/error.h"
#include "evalsvc/kernels/cuda_ops.h"
#include "evalsvc/kernels/quantized_linear.h"
#include "evalsvc/kernels/reference.h"

#ifndef EVALSVC_WITH_CUDA

TEST(CudaOps, SkippedWithoutCudaBuild) {
  GTEST_SKIP() << "built without EVALSVC_WITH_CUDA (no CUDA libtorch): the CUDA ops are not compiled in";
}

#else

#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGraph.h>
#include <ATen/cuda/Sleep.h>
#include <c10/cuda/CUDAGuard.h>

namespace {

using namespace evalsvc;
using namespace evalsvc::kernels;

// Tolerances: max |got - want| / max |want| over the output. The GPU and the references accumulate in fp32 in
// different orders, then round once to the output dtype, so the bound is a few output ulps of the largest
// value: fp16 has 11 significant bits (2^-11 = 4.9e-4), bf16 8 (2^-8 = 3.9e-3).
constexpr double kF32Tol = 2e-5;
constexpr double kF16Tol = 3e-3;
constexpr double kBF16Tol = 2e-2;
// fp8: PyTorch's rowwise _scaled_mm rounds its output to bf16 before our cast.
constexpr double kFp8Tol = kBF16Tol;

double tol_for(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat16: return kF16Tol;
    case torch::kBFloat16: return kBF16Tol;
    default: return kF32Tol;
  }
}

struct Shape {
  int64_t k;  // in features
  int64_t n;  // out features
};
// 768: GPT-2's width (vector paths); 100: odd, rows straddle NF4 blocks and bytes; 200: multiple of 8 but not
// 16/32; 3072 x 40: GPT-2's mlp.c_proj depth with few outputs; 33 and 72: partial 64-wide output tiles.
const std::vector<Shape> kShapes = {{768, 128}, {100, 33}, {200, 72}, {3072, 40}};
const std::vector<int64_t> kTokens = {1, 7, 128, 1000};
// The warp quantizers spread a row over four warps below 2,048 rows and over one to four by width from there:
// both sides (fp32 rows take the block-per-row kernel at every count); 2,501 leaves the last block of 8, 4 or 2
// rows part empty.
const std::vector<int64_t> kQuantTokens = {1, 7, 128, 1000, 2501};
// Row widths of the quantizer tests: the GEMM shapes' widths, then widths that take two and four warps a row
// (2,504: 313 vectors, not a multiple of the 32 lanes).
std::vector<int64_t> quant_widths() {
  std::vector<int64_t> k;
  for (const auto& s : kShapes) k.push_back(s.k);
  for (const int64_t w : {1536, 2504, 4096}) k.push_back(w);
  return k;
}

bool gpu_ready() { return torch::cuda::is_available(); }

#define REQUIRE_GPU() \
  if (!gpu_ready()) GTEST_SKIP() << "no CUDA device visible"

torch::Device gpu() { return torch::Device(torch::kCUDA, 0); }

/// Seeded normal tensor on the CPU.
torch::Tensor randn(std::vector<int64_t> shape, uint64_t seed, double stddev = 1.0) {
  auto gen = at::detail::createCPUGenerator(seed);
  return at::normal(0.0, stddev, shape, gen);
}

/// Compares got (any device/dtype) with want (CPU): max abs error relative to max |want| must be <= tol.
/// On failure prints the parameters, the error figures and the first mismatching elements.
::testing::AssertionResult close(const torch::Tensor& got_any, const torch::Tensor& want_any, double tol,
                                 const std::string& what) {
  const auto got = got_any.to(torch::kCPU).to(torch::kFloat64).contiguous();
  const auto want = want_any.to(torch::kCPU).to(torch::kFloat64).contiguous();
  if (got.sizes() != want.sizes()) {
    return ::testing::AssertionFailure() << what << ": shape " << got.sizes() << " vs reference " << want.sizes();
  }
  if (got.numel() == 0) return ::testing::AssertionSuccess();
  const auto diff = (got - want).abs();
  const double scale = std::max(want.abs().max().item<double>(), 1e-12);
  const double max_err = diff.max().item<double>();
  const bool finite = torch::isfinite(got).all().item<bool>() == torch::isfinite(want).all().item<bool>();
  if (finite && max_err <= tol * scale) return ::testing::AssertionSuccess();
  auto r = ::testing::AssertionFailure();
  r << what << ": max |err| " << max_err << " = " << max_err / scale << " x max|ref| (" << scale << "), tolerance "
    << tol << ", mean |err| " << diff.mean().item<double>() << (finite ? "" : ", non-finite values differ")
    << "\n  first mismatches (flat index: got vs ref):";
  const auto flat_g = got.view(-1);
  const auto flat_w = want.view(-1);
  const auto bad = (diff.view(-1) > tol * scale).nonzero().view(-1);
  for (int64_t i = 0; i < std::min<int64_t>(bad.numel(), 8); ++i) {
    const int64_t j = bad[i].item<int64_t>();
    r << "\n    " << j << ": " << flat_g[j].item<double>() << " vs " << flat_w[j].item<double>();
  }
  return r;
}

/// Exact equality of integer / bit-pattern tensors, with the first differences on failure.
::testing::AssertionResult same(const torch::Tensor& got_any, const torch::Tensor& want_any, const std::string& what) {
  const auto got = got_any.to(torch::kCPU).to(torch::kInt64).contiguous();
  const auto want = want_any.to(torch::kCPU).to(torch::kInt64).contiguous();
  if (got.sizes() != want.sizes()) {
    return ::testing::AssertionFailure() << what << ": shape " << got.sizes() << " vs reference " << want.sizes();
  }
  const auto ne = got.ne(want).view(-1);
  const int64_t count = ne.sum().item<int64_t>();
  if (count == 0) return ::testing::AssertionSuccess();
  auto r = ::testing::AssertionFailure();
  r << what << ": " << count << " of " << got.numel() << " elements differ; first (flat index: got vs ref):";
  const auto idx = ne.nonzero().view(-1);
  for (int64_t i = 0; i < std::min<int64_t>(idx.numel(), 8); ++i) {
    const int64_t j = idx[i].item<int64_t>();
    r << "\n    " << j << ": " << got.view(-1)[j].item<int64_t>() << " vs " << want.view(-1)[j].item<int64_t>();
  }
  return r;
}

cuda::Nf4Weight to_gpu(const ref::Nf4Weight& w) {
  cuda::Nf4Weight g;
  g.packed = w.packed.to(gpu());
  if (w.double_quant()) {
    g.absmax_q = w.absmax_q.to(gpu());
    g.nested_absmax = w.nested_absmax.to(gpu());
    g.offset = w.offset;
    if (w.nested_quant_map.defined()) g.nested_map = w.nested_quant_map.to(torch::kFloat32).to(gpu()).contiguous();
  } else {
    g.absmax = w.absmax.to(gpu());
  }
  if (w.quant_map.defined()) g.quant_map = w.quant_map.to(torch::kFloat32).to(gpu()).contiguous();
  EVALSVC_ASSERT(w.shape.size() == 2, "NF4 test weights are 2-D, got {} dims", w.shape.size());
  g.out_features = w.shape[0];
  g.in_features = w.shape[1];
  g.blocksize = w.blocksize;
  return g;
}

const char* path_name(cuda::Nf4Path p) {
  switch (p) {
    case cuda::Nf4Path::kGemv: return "gemv";
    case cuda::Nf4Path::kGemm: return "gemm";
    case cuda::Nf4Path::kDequantMatmul: return "dequant_matmul";
    default: return "auto";
  }
}

// ---- NF4 ------------------------------------------------------------------------------------------------------

TEST(CudaNf4, DequantizeMatchesReference) {
  REQUIRE_GPU();
  for (const auto& s : kShapes) {
    for (const bool dq : {false, true}) {
      for (const int64_t bs : {64, 128}) {
        const auto w = randn({s.n, s.k}, 11 + s.k, 0.05);
        const auto qw = ref::quantize_nf4(w, bs, dq);
        const auto want = ref::dequantize_nf4(qw);
        const auto what = fmt::format("nf4_dequantize out={} in={} blocksize={} double_quant={}", s.n, s.k, bs, dq);
        // fp32: same products and sums as the reference (explicitly rounded device ops), so within 1 fp32 ulp.
        EXPECT_TRUE(close(cuda::nf4_dequantize(to_gpu(qw), torch::kFloat32), want, 1e-6, what + " fp32"));
        EXPECT_TRUE(close(cuda::nf4_dequantize(to_gpu(qw), torch::kFloat16), want, 1e-3, what + " fp16"));
        EXPECT_TRUE(close(cuda::nf4_dequantize(to_gpu(qw), torch::kBFloat16), want, 8e-3, what + " bf16"));
      }
    }
  }
}

TEST(CudaNf4, LinearMatchesReferenceAllPathsShapesAndDtypes) {
  REQUIRE_GPU();
  for (const auto& s : kShapes) {
    const auto w = randn({s.n, s.k}, 100 + s.k, 0.05);
    const auto bias = randn({s.n}, 200 + s.n, 0.1);
    for (const bool dq : {true, false}) {
      const auto qw = ref::quantize_nf4(w, 64, dq);
      const auto gw = to_gpu(qw);
      for (const auto dtype : {torch::kFloat16, torch::kBFloat16}) {
        for (const int64_t m : kTokens) {
          const auto x = randn({m, s.k}, 300 + m + s.k).to(dtype);
          const auto want = ref::nf4_linear(x, qw, bias, dtype);
          for (const auto path : {cuda::Nf4Path::kAuto, cuda::Nf4Path::kGemv, cuda::Nf4Path::kGemm,
                                  cuda::Nf4Path::kDequantMatmul}) {
            const auto got = cuda::nf4_linear(x.to(gpu()), gw, bias.to(gpu()), path);
            const auto what = fmt::format("nf4_linear path={} M={} in={} out={} dtype={} double_quant={}",
                                          path_name(path), m, s.k, s.n, c10::toString(dtype), dq);
            EXPECT_EQ(got.scalar_type(), dtype) << what;
            EXPECT_TRUE(close(got, want, tol_for(dtype), what));
          }
        }
      }
    }
  }
}

TEST(CudaNf4, LinearKeepsLeadingDimsAndWorksWithoutBias) {
  REQUIRE_GPU();
  const auto w = randn({96, 64}, 5, 0.05);
  const auto qw = ref::quantize_nf4(w, 64, true);
  const auto x = randn({2, 3, 64}, 6).to(torch::kFloat16);
  const auto got = cuda::nf4_linear(x.to(gpu()), to_gpu(qw), torch::Tensor());
  ASSERT_EQ(got.sizes(), (std::vector<int64_t>{2, 3, 96}));
  const auto want = ref::nf4_linear(x.reshape({6, 64}), qw, torch::Tensor(), torch::kFloat16).reshape({2, 3, 96});
  EXPECT_TRUE(close(got, want, kF16Tol, "nf4_linear [2,3,64] without bias"));
}

TEST(CudaNf4, BadInputThrowsInputError) {
  REQUIRE_GPU();
  const auto qw = ref::quantize_nf4(randn({32, 64}, 1, 0.05), 64, true);
  const auto gw = to_gpu(qw);
  const auto x = randn({4, 64}, 2).to(torch::kFloat16);
  EXPECT_THROW(cuda::nf4_linear(x, gw, {}), InputError);                              // x on the CPU
  EXPECT_THROW(cuda::nf4_linear(x.to(gpu()).to(torch::kFloat32), gw, {}), InputError);  // fp32 x
  EXPECT_THROW(cuda::nf4_linear(randn({4, 63}, 3).to(torch::kFloat16).to(gpu()), gw, {}), InputError);  // in
  EXPECT_THROW(cuda::nf4_linear(x.to(gpu()), gw, torch::zeros({31}, torch::kFloat16).to(gpu())), InputError);
  auto bad = gw;
  bad.absmax_q = gw.absmax_q.narrow(0, 0, gw.absmax_q.numel() - 1);
  EXPECT_THROW(cuda::nf4_linear(x.to(gpu()), bad, {}), InputError);  // absmax_q too short
  bad = gw;
  bad.blocksize = 63;
  EXPECT_THROW(cuda::nf4_linear(x.to(gpu()), bad, {}), InputError);  // odd blocksize
  bad = gw;
  bad.packed = gw.packed.to(torch::kInt32);
  EXPECT_THROW(cuda::nf4_linear(x.to(gpu()), bad, {}), InputError);  // packed dtype
  try {
    cuda::nf4_linear(x.to(gpu()).to(torch::kFloat32), gw, {});
    ADD_FAILURE() << "fp32 x: expected InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("Float"), std::string::npos) << "message should name the bad dtype: " << e.what();
  }
}

// ---- INT8 per-token quantization -----------------------------------------------------------------------------

TEST(CudaInt8, PerTokenQuantizationMatchesReferenceExactly) {
  REQUIRE_GPU();
  for (const int64_t k : quant_widths()) {
    for (const int64_t m : kQuantTokens) {
      for (const auto dtype : {torch::kFloat32, torch::kFloat16, torch::kBFloat16}) {
        auto x = randn({m, k}, 400 + m + k).to(dtype);
        if (m > 1) x[1].zero_();  // an all-zero row: scale 0, codes 0
        const auto want = ref::quantize_per_token(x);
        const auto got = cuda::quantize_per_token_int8(x.to(gpu()), 0.0);
        const auto what = fmt::format("quantize_per_token_int8 M={} in={} dtype={}", m, k, c10::toString(dtype));
        EXPECT_FALSE(got.outlier_cols.defined()) << what;
        EXPECT_TRUE(same(got.q, want.q, what + " q"));
        EXPECT_TRUE(close(got.scale, want.scale, 0.0, what + " scale"));
      }
    }
  }
}

TEST(CudaInt8, PerTokenQuantizationIsExactWhereQuotientsSitOnHalfIntegers) {
  REQUIRE_GPU();
  // Random rows almost never put x / s within a few ulps of a half-integer, where a quantizer that rounds
  // anything but the exact quotient (x * (1 / s), say; tried, docs/perf.md) or rounds ties away from even would
  // give another code than torch.round. Each row here: its absmax first, then the k - 1 representable values in
  // [-absmax, absmax] whose x / s lies nearest a half-integer, exact ties included. fp16 rows at 2,500 tokens
  // and k = 3072 take the warp kernel, fp32 rows the block-per-row kernel.
  const int64_t k = 3072;
  const auto every_half = torch::arange(0, 65536, torch::kInt32).to(torch::kInt16).view(torch::kFloat16).to(torch::kFloat32);
  const auto finite_halves = every_half.index({torch::isfinite(every_half)});
  auto row_for = [&](float amax, bool fp16) {
    const float s = amax / 127.0f;
    torch::Tensor cand = fp16 ? finite_halves : torch::linspace(-amax, amax, 400000, torch::kFloat32);
    cand = cand.index({cand.abs() <= amax});
    if (!fp16) {  // fp32: also each value's neighbours one and two ulps away, straddling the half-integers
      const auto up = torch::nextafter(cand, torch::full_like(cand, 1e30f));
      const auto down = torch::nextafter(cand, torch::full_like(cand, -1e30f));
      const auto ties = (torch::arange(-127, 127, torch::kFloat32) + 0.5f) * s;  // exact ties where s is a power of 2
      cand = torch::cat({cand, up, down, torch::nextafter(up, torch::full_like(cand, 1e30f)), ties});
      cand = cand.index({cand.abs() <= amax});
    }
    const auto q = cand.to(torch::kFloat64) / static_cast<double>(s);
    const auto dist = (q - q.floor() - 0.5).abs();
    const auto nearest = std::get<1>(torch::topk(dist, k - 1, 0, /*largest=*/false));
    return torch::cat({torch::full({1}, amax), cand.index({nearest})});
  };
  const std::vector<float> amaxes = {100.0f, 3.1415927f, 0.0123f, 57.75f, 1.0f, 127.0f, 6.02e-3f, 33.3f};
  for (const bool fp16 : {true, false}) {
    std::vector<torch::Tensor> rows;
    const int64_t m = fp16 ? 2500 : 16;
    for (int64_t r = 0; r < m; ++r) {
      const float amax = fp16 ? static_cast<float>(c10::Half(amaxes[r % amaxes.size()] * (1.0f + 0.01f * static_cast<float>(r / amaxes.size()))))
                              : amaxes[r % amaxes.size()] * (1.0f + 0.01f * static_cast<float>(r / amaxes.size()));
      if (r < static_cast<int64_t>(2 * amaxes.size()) || !fp16) rows.push_back(row_for(amax, fp16));
      else rows.push_back(rows[r % (2 * amaxes.size())]);  // the candidates are the slow part: repeat rows
    }
    const auto x = torch::stack(rows).to(fp16 ? torch::kFloat16 : torch::kFloat32);
    const auto want = ref::quantize_per_token(x);
    const auto got = cuda::quantize_per_token_int8(x.to(gpu()), 0.0);
    const auto what = fmt::format("quantize_per_token_int8 on half-integer quotients, {} rows", fp16 ? "fp16" : "fp32");
    EXPECT_TRUE(same(got.q, want.q, what + " q"));
    EXPECT_TRUE(close(got.scale, want.scale, 0.0, what + " scale"));
    // The rows must really hold ties and near-ties, or this test proves nothing.
    const auto xs = x.to(torch::kFloat64) / want.scale.to(torch::kFloat64).unsqueeze(1);
    EXPECT_EQ(((xs - xs.floor() - 0.5).abs() == 0).sum().item<int64_t>() > 0, true) << what << ": no exact ties";
  }
}

TEST(CudaInt8, OutlierQuantizationMatchesLlmInt8Reference) {
  REQUIRE_GPU();
  for (const int64_t k : quant_widths()) {
    for (const int64_t m : kQuantTokens) {
      auto x = randn({m, k}, 500 + m + k).clamp(-4.0, 4.0);
      x.index_put_({m / 2, 5}, 20.0);     // a planted outlier: column 5 becomes an outlier column
      x.index_put_({m - 1, k - 1}, -6.0); // exactly at the threshold counts (|x| >= threshold)
      const auto x16 = x.to(torch::kFloat16);
      const auto want = ref::quantize_llm_int8_activations(x16, 6.0);
      const auto got = cuda::quantize_per_token_int8(x16.to(gpu()), 6.0);
      const auto what = fmt::format("quantize_per_token_int8(threshold 6) M={} in={}", m, k);
      ASSERT_TRUE(got.outlier_cols.defined()) << what;
      EXPECT_TRUE(same(got.outlier_cols, want.outlier_cols, what + " outlier columns"));
      EXPECT_EQ(got.outlier_cols.sum().item<int64_t>(), 2) << what;
      EXPECT_TRUE(same(got.q, want.q, what + " q"));
      EXPECT_TRUE(close(got.scale * 127.0f, want.rowstat, 1e-6, what + " rowstat"));
    }
  }
}

// ---- INT8 GEMMs ----------------------------------------------------------------------------------------------

const char* gemm_name(cuda::Int8Gemm g) {
  switch (g) {
    case cuda::Int8Gemm::kCublasLt: return "cublaslt";
    case cuda::Int8Gemm::kFused: return "fused";
    case cuda::Int8Gemm::kMmaSync: return "mma.sync";
    case cuda::Int8Gemm::kWgmma: return "wgmma";
    default: return "auto";
  }
}

bool cublas_shape_ok(int64_t m, const Shape& s) { return m > 16 && s.k % 8 == 0 && s.n % 8 == 0; }

/// Every int8 product this device runs, the explicit qbench kernels included (wgmma on Hopper only).
std::vector<cuda::Int8Gemm> int8_gemms(bool with_cublas) {
  std::vector<cuda::Int8Gemm> g = {cuda::Int8Gemm::kAuto, cuda::Int8Gemm::kFused, cuda::Int8Gemm::kMmaSync};
  if (with_cublas) g.push_back(cuda::Int8Gemm::kCublasLt);
  if (cuda::int8_wgmma_available()) g.push_back(cuda::Int8Gemm::kWgmma);
  return g;
}

/// Whether gemm g takes an [m, k] x [n, k]^T product (the others must throw InputError).
bool gemm_takes(cuda::Int8Gemm g, int64_t m, int64_t k, int64_t n) {
  if (g == cuda::Int8Gemm::kCublasLt) return cublas_shape_ok(m, Shape{k, n});
  if (g == cuda::Int8Gemm::kWgmma) return k % 16 == 0;
  return true;
}

TEST(CudaInt8, WgmmaRunsExactlyOnHopper) {
  REQUIRE_GPU();
  // On a compute capability 9.0 card the sm_90a build must offer the wgmma kernel (else the tests below would
  // quietly cover mma.sync only); elsewhere asking for it is an UnsupportedError, not a wrong answer.
  const auto prop = at::cuda::getCurrentDeviceProperties();
  const auto xq = torch::ones({32, 64}, torch::kInt8).to(gpu());
  const auto ones = torch::ones({32}).to(gpu());
  if (prop->major == 9) {
    EXPECT_TRUE(cuda::int8_wgmma_available()) << "compute capability 9.0 but no sm_90a wgmma code in this build";
  } else {
    EXPECT_FALSE(cuda::int8_wgmma_available());
    EXPECT_THROW(cuda::int8_linear(xq, ones, xq, ones, {}, torch::kFloat32, 1.0, cuda::Int8Gemm::kWgmma),
                 UnsupportedError);
  }
  if (cuda::int8_wgmma_available()) {
    const auto x3 = torch::ones({32, 72}, torch::kInt8).to(gpu());  // in % 16 != 0
    EXPECT_THROW(cuda::int8_linear(x3, ones, x3, ones, {}, torch::kFloat32, 1.0, cuda::Int8Gemm::kWgmma), InputError);
  }
}

TEST(CudaInt8, W8A8LinearMatchesReference) {
  REQUIRE_GPU();
  for (const auto& s : kShapes) {
    const auto w = randn({s.n, s.k}, 600 + s.k, 0.05);
    const auto bias = randn({s.n}, 601, 0.1);
    for (const bool per_channel : {true, false}) {
      const auto qw = ref::quantize_int8_sym(w, per_channel);
      const auto wq = qw.q.to(gpu());
      const auto ws = qw.scale.to(gpu());
      for (const int64_t m : kTokens) {
        for (const auto dtype : {torch::kFloat32, torch::kFloat16, torch::kBFloat16}) {
          const auto x = randn({m, s.k}, 700 + m).to(dtype);
          const auto want = ref::int8_w8a8_linear(x, qw, bias);
          for (const auto g : int8_gemms(true)) {
            const auto what = fmt::format("int8_w8a8_linear gemm={} M={} in={} out={} dtype={} per_channel={}",
                                          gemm_name(g), m, s.k, s.n, c10::toString(dtype), per_channel);
            if (!gemm_takes(g, m, s.k, s.n)) {
              EXPECT_THROW(cuda::int8_w8a8_linear(x.to(gpu()), wq, ws, bias.to(gpu()), g), InputError) << what;
              continue;
            }
            const auto got = cuda::int8_w8a8_linear(x.to(gpu()), wq, ws, bias.to(gpu()), g);
            EXPECT_EQ(got.scalar_type(), dtype) << what;
            EXPECT_TRUE(close(got, want, tol_for(dtype), what));
          }
        }
      }
    }
  }
}

TEST(CudaInt8, Int8LinearEqualsExactIntegerProduct) {
  REQUIRE_GPU();
  // Scales of 1 and no bias: the fp32 output is the int32 product itself (exact below 2^24).
  for (const auto& s : kShapes) {
    for (const int64_t m : kTokens) {
      const auto xq = torch::randint(-127, 128, {m, s.k}, at::detail::createCPUGenerator(800 + m), torch::kInt8);
      const auto wq = torch::randint(-127, 128, {s.n, s.k}, at::detail::createCPUGenerator(801 + s.k), torch::kInt8);
      const auto want = ref::int8_matmul_exact(xq, wq);
      for (const auto g : int8_gemms(false)) {
        if (!gemm_takes(g, m, s.k, s.n)) continue;
        const auto got = cuda::int8_linear(xq.to(gpu()), torch::ones({m}).to(gpu()), wq.to(gpu()),
                                           torch::ones({1}).to(gpu()), {}, torch::kFloat32, 1.0, g);
        const auto what = fmt::format("int8_linear exact gemm={} M={} in={} out={}", gemm_name(g), m, s.k, s.n);
        EXPECT_TRUE(close(got, want, s.k * 127 * 127 < (1 << 24) ? 0.0 : 1e-7, what));
      }
    }
  }
}

TEST(CudaInt8, FusedGemmLargeTilesEqualExactIntegerProduct) {
  REQUIRE_GPU();
  // Enough output tiles for the large configurations (the shapes above only reach the small ones): a k that
  // fills whole 128-byte wgmma stages, one that ends in a partial stage (k % 128 == 16) and an odd k (mma.sync's
  // byte gathers; no wgmma), an n that ends in a partial tile with paired stores, an odd n; and k = 96, one
  // partial stage, fewer than the pipeline holds.
  for (const auto& [k, n] :
       std::vector<std::pair<int64_t, int64_t>>{{768, 3000}, {400, 520}, {200, 1101}, {96, 3900}}) {
    const int64_t m = 4100;  // not a multiple of the tile
    const auto xq = torch::randint(-127, 128, {m, k}, at::detail::createCPUGenerator(820 + k), torch::kInt8);
    const auto wq = torch::randint(-127, 128, {n, k}, at::detail::createCPUGenerator(821 + n), torch::kInt8);
    const auto want = ref::int8_matmul_exact(xq, wq);
    for (const auto g : int8_gemms(false)) {
      if (!gemm_takes(g, m, k, n)) continue;
      const auto got = cuda::int8_linear(xq.to(gpu()), torch::ones({m}).to(gpu()), wq.to(gpu()),
                                         torch::ones({1}).to(gpu()), {}, torch::kFloat32, 1.0, g);
      EXPECT_TRUE(close(got, want, 0.0, fmt::format("int8_linear {} M={} in={} out={}", gemm_name(g), m, k, n)));
    }
  }
}

TEST(CudaLlmInt8, LinearWithPlantedOutlierMatchesReference) {
  REQUIRE_GPU();
  for (const auto& s : kShapes) {
    const auto w = randn({s.n, s.k}, 900 + s.k, 0.05);
    const auto bias = randn({s.n}, 901, 0.1);
    const auto lw = ref::quantize_llm_int8(w);
    const auto cb = lw.CB.to(gpu());
    const auto scb = lw.SCB.to(gpu());
    for (const int64_t m : kTokens) {
      auto x = randn({m, s.k}, 1000 + m + s.k).clamp(-3.0, 3.0);
      x.index_put_({m / 2, 3}, 40.0);  // planted outlier
      for (const auto dtype : {torch::kFloat16, torch::kBFloat16, torch::kFloat32}) {
        const auto xd = x.to(dtype);
        for (const double thr : {6.0, 0.0}) {
          const auto want = ref::llm_int8_linear(xd, lw, bias, thr);
          for (const auto g : int8_gemms(false)) {
            if (!gemm_takes(g, m, s.k, s.n)) continue;
            const auto got = cuda::llm_int8_linear(xd.to(gpu()), cb, scb, bias.to(gpu()), thr, g);
            const auto what = fmt::format("llm_int8_linear gemm={} M={} in={} out={} dtype={} threshold={}",
                                          gemm_name(g), m, s.k, s.n, c10::toString(dtype), thr);
            EXPECT_EQ(got.scalar_type(), dtype) << what;
            EXPECT_TRUE(close(got, want, tol_for(dtype), what));
          }
        }
      }
    }
  }
}

TEST(CudaLlmInt8, ManyRowsTakeTheWarpQuantizerAndTheEpilogueSubtractsTheOutlierCodes) {
  REQUIRE_GPU();
  // From 2,048 rows the quantizer is the warp kernel with one to four warps a row by width (below, four), which
  // flags outlier columns in the same pass and leaves their codes in place; the GEMM epilogue subtracts their integer products. Outliers here: two planted ones
  // and a column scaled x4 so that many rows flag it at once. Every product must still equal the reference,
  // which zeroes those codes.
  const int64_t m = 2501;
  for (const auto& s : {Shape{768, 256}, Shape{3072, 128}}) {
    const auto w = randn({s.n, s.k}, 1700 + s.k, 0.05);
    const auto bias = randn({s.n}, 1701, 0.1);
    const auto lw = ref::quantize_llm_int8(w);
    auto x = randn({m, s.k}, 1702 + s.k).clamp(-3.0, 3.0);
    x.index_put_({100, 7}, 30.0);
    x.index_put_({2000, s.k - 2}, -9.0);
    x.select(1, 11).mul_(4.0);
    const auto x16 = x.to(torch::kFloat16);
    const auto want = ref::llm_int8_linear(x16, lw, bias, 6.0);
    const auto cols = ref::quantize_llm_int8_activations(x16, 6.0).outlier_cols;
    ASSERT_EQ(cols.sum().item<int64_t>(), 3) << "in=" << s.k;
    for (const auto g : int8_gemms(true)) {
      if (!gemm_takes(g, m, s.k, s.n)) continue;
      const auto got = cuda::llm_int8_linear(x16.to(gpu()), lw.CB.to(gpu()), lw.SCB.to(gpu()), bias.to(gpu()), 6.0, g);
      EXPECT_TRUE(close(got, want, kF16Tol,
                        fmt::format("llm_int8_linear gemm={} M={} in={} out={}", gemm_name(g), m, s.k, s.n)));
    }
  }
}

TEST(CudaLlmInt8, OutlierDecompositionMattersForAPlantedOutlier) {
  REQUIRE_GPU();
  // The row with the outlier: with threshold 6 its error against the fp32 product stays at int8 level; with no
  // decomposition (threshold 0) the outlier inflates that row's scale and wrecks its other columns.
  const int64_t m = 16, k = 768, n = 256;
  const auto w = randn({n, k}, 1, 0.05);
  const auto lw = ref::quantize_llm_int8(w);
  auto x = randn({m, k}, 2).clamp(-3.0, 3.0);
  x.index_put_({4, 10}, 60.0);
  const auto x16 = x.to(torch::kFloat16);
  const auto exact = torch::matmul(x16.to(torch::kFloat32), ref::dequantize_llm_int8(lw).t());
  const auto with = cuda::llm_int8_linear(x16.to(gpu()), lw.CB.to(gpu()), lw.SCB.to(gpu()), {}, 6.0).cpu().to(torch::kFloat32);
  const auto without = cuda::llm_int8_linear(x16.to(gpu()), lw.CB.to(gpu()), lw.SCB.to(gpu()), {}, 0.0).cpu().to(torch::kFloat32);
  const double err_with = (with[4] - exact[4]).abs().max().item<double>();
  const double err_without = (without[4] - exact[4]).abs().max().item<double>();
  EXPECT_LT(err_with * 5, err_without) << "outlier row error with decomposition " << err_with << ", without " << err_without;
}

TEST(CudaLlmInt8, ManyOutlierColumns) {
  REQUIRE_GPU();
  // Threshold 0.5: most columns are outliers, so nearly everything goes through the fp16 part of the epilogue.
  const auto w = randn({40, 200}, 3, 0.05);
  const auto lw = ref::quantize_llm_int8(w);
  const auto x = randn({33, 200}, 4).to(torch::kFloat16);
  const auto want = ref::llm_int8_linear(x, lw, {}, 0.5);
  for (const auto g : {cuda::Int8Gemm::kAuto, cuda::Int8Gemm::kFused, cuda::Int8Gemm::kCublasLt}) {
    const auto got = cuda::llm_int8_linear(x.to(gpu()), lw.CB.to(gpu()), lw.SCB.to(gpu()), {}, 0.5, g);
    EXPECT_TRUE(close(got, want, kF16Tol, fmt::format("llm_int8_linear threshold 0.5 gemm={}", gemm_name(g))));
  }
}

TEST(CudaLlmInt8, ManyOutlierColumnsInEveryProduct) {
  REQUIRE_GPU();
  // Threshold 1 makes most of 256 columns outliers: many chunks of the columns the wgmma epilogue stages at a time.
  // 40 x 136 takes the 64 x 64 tiles, 2,000 x 1,032 the 128 x 128 ones, both ending in partial tiles. mma.sync's
  // and cuBLASLt's epilogues add the outlier columns one at a time (epilogue_value) and agree bit for bit; the
  // wgmma kernel's adds them as tensor-core products, another fp32 order: it must agree with them within an fp16
  // rounding step of the output, and every path with the reference within fp16.
  struct Case {
    int64_t t, n;
  };
  for (const Case c : {Case{40, 136}, Case{2000, 1032}}) {
    const auto w = randn({c.n, 256}, 1680 + c.n, 0.05);
    const auto bias = randn({c.n}, 1681, 0.1);
    const auto lw = ref::quantize_llm_int8(w);
    const auto x = randn({c.t, 256}, 1682 + c.t).to(torch::kFloat16);
    const auto want = ref::llm_int8_linear(x, lw, bias, 1.0);
    auto run = [&](cuda::Int8Gemm g) {
      return cuda::llm_int8_linear(x.to(gpu()), lw.CB.to(gpu()), lw.SCB.to(gpu()), bias.to(gpu()), 1.0, g);
    };
    const auto one_at_a_time = run(cuda::Int8Gemm::kMmaSync);
    for (const auto g : int8_gemms(true)) {
      if (!gemm_takes(g, c.t, 256, c.n)) continue;
      const auto got = run(g);
      const auto what = fmt::format("llm_int8_linear threshold 1 gemm={} M={} out={}", gemm_name(g), c.t, c.n);
      EXPECT_TRUE(close(got, want, kF16Tol, what));
      if (g == cuda::Int8Gemm::kCublasLt) {
        EXPECT_TRUE(torch::equal(got, one_at_a_time)) << what << " differs from gemm=mma.sync";
      } else {
        // fp16 outputs of two fp32 orders: one rounding step of the value apart (2^-10 relative), plus what the
        // order changes in sums that cancel, a small part (2^-12) of the largest output: 12x tighter than kF16Tol.
        const auto a = got.cpu().to(torch::kFloat32), b = one_at_a_time.cpu().to(torch::kFloat32);
        const auto bound = b.abs() * std::ldexp(1.0, -10) + b.abs().max() * std::ldexp(1.0, -12);
        EXPECT_TRUE(((a - b).abs() <= bound).all().item<bool>())
            << what << " further from gemm=mma.sync than two fp32 orders can be: max |diff| "
            << (a - b).abs().max().item<float>() << ", largest output " << b.abs().max().item<float>();
      }
    }
  }
}

TEST(CudaLlmInt8, AKeptOutlierStateGivesTheReferenceProductsAndIsLeftZero) {
  REQUIRE_GPU();
  // A layer hands llm_int8_linear the same zeroed state on every call; the quantizer's last block compacts the
  // flags and clears them and its block counter. Three ways through: the warp quantizer with a few blocks and
  // with many (last-block compaction), and rows it does not take (2 bytes off a 16-byte boundary; wider than
  // 4,096), where a one-block-a-row kernel and a compaction launch that clears do the same. Each case runs
  // twice on one state, the outliers in other columns the second time: stale flags would show.
  struct Case {
    int64_t m, k, n;
    bool offset;
    const char* what;
  };
  for (const auto& c : {Case{128, 768, 96, false, "warp quantizer, 64 blocks"},
                        Case{2501, 768, 64, false, "warp quantizer, 2,501 blocks"},
                        Case{33, 200, 40, true, "x 2 bytes off 16: one block a row"},
                        Case{20, 4104, 48, false, "in 4,104: one block a row"}}) {
    const auto w = randn({c.n, c.k}, 1800 + c.k, 0.05);
    const auto bias = randn({c.n}, 1801, 0.1);
    const auto lw = ref::quantize_llm_int8(w);
    const auto cb = lw.CB.to(gpu());
    const auto scb = lw.SCB.to(gpu());
    const auto state = cuda::llm_int8_outlier_state(c.k, gpu());
    for (int call = 0; call < 2; ++call) {
      auto x = randn({c.m, c.k}, 1802 + call).clamp(-3.0, 3.0);
      x.index_put_({c.m - 1, call == 0 ? 5 : c.k - 3}, call == 0 ? 25.0 : -8.0);
      x.index_put_({0, call == 0 ? c.k / 2 : 9}, 7.0);
      const auto x16 = x.to(torch::kFloat16);
      const auto want = ref::llm_int8_linear(x16, lw, bias, 6.0);
      torch::Tensor xg = x16.to(gpu());
      if (c.offset) {  // same values, data pointer 2 bytes past an allocation's 16-byte aligned start
        auto buf = torch::empty({c.m * c.k + 1}, xg.options());
        buf.narrow(0, 1, c.m * c.k).copy_(xg.view(-1));
        xg = buf.narrow(0, 1, c.m * c.k).view({c.m, c.k});
      }
      const auto got = cuda::llm_int8_linear(xg, cb, scb, bias.to(gpu()), 6.0, cuda::Int8Gemm::kAuto, false, state);
      const auto what = fmt::format("{} M={} in={} out={} call {}", c.what, c.m, c.k, c.n, call);
      EXPECT_TRUE(close(got, want, kF16Tol, what));
      EXPECT_EQ(state.abs().sum().item<int64_t>(), 0) << what << ": the state is not left zero";
    }
  }
}

TEST(CudaLlmInt8, AKeptOutlierStateWorksInACudaGraph) {
  REQUIRE_GPU();
  // The batch-1 forward is a replayed CUDA graph: one capture, the state baked in, inputs copied into a static
  // tensor. Every replay must find the state zero and see only its own outliers.
  const int64_t m = 128, k = 768, n = 256;
  const auto w = randn({n, k}, 1900, 0.05);
  const auto lw = ref::quantize_llm_int8(w);
  const auto cb = lw.CB.to(gpu());
  const auto scb = lw.SCB.to(gpu());
  const auto state = cuda::llm_int8_outlier_state(k, gpu());
  auto input = [&](int i) {
    auto x = randn({m, k}, 1901 + i).clamp(-3.0, 3.0);
    x.index_put_({i, 100 + 50 * i}, 12.0);
    return x.to(torch::kFloat16);
  };
  auto xs = input(0).to(gpu());
  torch::Tensor y;
  at::cuda::CUDAGraph graph;
  {
    const c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool(false, 0);
    const c10::cuda::CUDAStreamGuard guard(side);
    (void)cuda::llm_int8_linear(xs, cb, scb, {}, 6.0, cuda::Int8Gemm::kAuto, false, state);  // warm-up
    side.synchronize();
    graph.capture_begin();
    y = cuda::llm_int8_linear(xs, cb, scb, {}, 6.0, cuda::Int8Gemm::kAuto, false, state);
    graph.capture_end();
  }
  for (int i = 1; i < 4; ++i) {
    const auto x = input(i);
    xs.copy_(x);
    graph.replay();
    EXPECT_TRUE(close(y, ref::llm_int8_linear(x, lw, {}, 6.0), kF16Tol, fmt::format("replay {}", i)));
    EXPECT_EQ(state.abs().sum().item<int64_t>(), 0) << "replay " << i;
  }
}

TEST(CudaLlmInt8, RejectsAnOutlierStateThatDoesNotFit) {
  REQUIRE_GPU();
  const auto lw = ref::quantize_llm_int8(randn({16, 64}, 5, 0.05));
  const auto x = randn({4, 64}, 6).to(torch::kFloat16).to(gpu());
  const auto i32 = torch::TensorOptions().dtype(torch::kInt32).device(gpu());
  const auto call = [&](const torch::Tensor& st) {
    (void)cuda::llm_int8_linear(x, lw.CB.to(gpu()), lw.SCB.to(gpu()), {}, 6.0, cuda::Int8Gemm::kAuto, false, st);
  };
  ASSERT_EQ(cuda::llm_int8_outlier_state_numel(64), 3);                          // 2 mask words + a counter
  EXPECT_THROW(call(torch::zeros({2}, i32)), InputError);                         // too small
  EXPECT_THROW(call(torch::zeros({3}, i32.dtype(torch::kInt64))), InputError);    // dtype
  EXPECT_THROW(call(torch::zeros({3}, torch::TensorOptions().dtype(torch::kInt32))), InputError);  // on the CPU
  EXPECT_NO_THROW(call(torch::zeros({3}, i32)));
}

TEST(CudaInt8, WeightOnlyDequantizeAndLinearMatchReference) {
  REQUIRE_GPU();
  for (const auto& s : kShapes) {
    const auto w = randn({s.n, s.k}, 1100 + s.k, 0.05);
    const auto bias = randn({s.n}, 1101, 0.1);
    for (const bool per_channel : {true, false}) {
      const auto qw = ref::quantize_int8_sym(w, per_channel);
      const auto want_w = ref::dequantize_int8_sym(qw);
      for (const auto dtype : {torch::kFloat32, torch::kFloat16, torch::kBFloat16}) {
        const auto what = fmt::format("int8 weight-only in={} out={} dtype={} per_channel={}", s.k, s.n,
                                      c10::toString(dtype), per_channel);
        const auto got_w = cuda::dequantize_int8_weight(qw.q.to(gpu()), qw.scale.to(gpu()), dtype);
        EXPECT_TRUE(same(got_w.cpu().to(torch::kFloat32).view(torch::kInt32), want_w.to(dtype).to(torch::kFloat32).view(torch::kInt32),
                         what + " dequantized weight bits"));
        for (const int64_t m : {int64_t{1}, int64_t{128}}) {
          const auto x = randn({m, s.k}, 1200 + m).to(dtype);
          const auto want = ref::int8_weight_only_linear(x, qw, bias, dtype);
          const auto got = cuda::int8_weight_only_linear(x.to(gpu()), qw.q.to(gpu()), qw.scale.to(gpu()), bias.to(gpu()));
          EXPECT_TRUE(close(got, want, tol_for(dtype), what + fmt::format(" linear M={}", m)));
        }
      }
    }
  }
}

TEST(CudaInt8, BadInputThrowsInputError) {
  REQUIRE_GPU();
  const auto x = randn({20, 64}, 1).to(torch::kFloat16).to(gpu());
  const auto wq = torch::zeros({32, 64}, torch::kInt8).to(gpu());
  const auto ws = torch::ones({32}).to(gpu());
  EXPECT_THROW(cuda::quantize_per_token_int8(x.cpu(), 6.0), InputError);
  EXPECT_THROW(cuda::quantize_per_token_int8(x.view({20, 2, 32}), 6.0), InputError);  // not 2-D
  EXPECT_THROW(cuda::quantize_per_token_int8(x, std::nan("")), InputError);
  EXPECT_THROW(cuda::int8_w8a8_linear(x, wq.to(torch::kFloat16), ws, {}), InputError);        // wq dtype
  EXPECT_THROW(cuda::int8_w8a8_linear(x, wq, torch::ones({31}).to(gpu()), {}), InputError);   // wscale size
  EXPECT_THROW(cuda::int8_w8a8_linear(x, torch::zeros({64, 32}, torch::kInt8).to(gpu()).t(), ws, {}), InputError);  // non-contiguous
  EXPECT_THROW(cuda::int8_w8a8_linear(x, wq, ws, torch::zeros({33}).to(gpu())), InputError);  // bias size
  EXPECT_THROW(cuda::llm_int8_linear(x, wq, torch::ones({31}).to(gpu()), {}, 6.0), InputError);  // SCB size
  EXPECT_THROW(cuda::llm_int8_linear(randn({20, 65}, 2).to(gpu()), wq, ws, {}, 6.0), InputError);  // in mismatch
  EXPECT_THROW(cuda::int8_linear(torch::zeros({7, 64}, torch::kInt8).to(gpu()), torch::ones({7}).to(gpu()), wq, ws, {},
                                 torch::kFloat16, 1.0, cuda::Int8Gemm::kCublasLt),
               InputError);  // cuBLASLt needs T > 16
  EXPECT_THROW(cuda::dequantize_int8_weight(wq, ws, torch::kInt32), InputError);
}

// ---- FP8 -----------------------------------------------------------------------------------------------------

TEST(CudaFp8, PerTokenQuantizationAndWeightDequantizationMatchReference) {
  REQUIRE_GPU();  // the conversions run on any CUDA device
  for (const int64_t k : quant_widths()) {
    for (const int64_t m : kQuantTokens) {
      for (const auto dtype : {torch::kFloat32, torch::kFloat16, torch::kBFloat16}) {
        auto x = randn({m, k}, 1300 + m + k).to(dtype);
        if (m > 1) x[0].zero_();
        const auto want = ref::quantize_fp8_per_token(x);
        const auto got = cuda::quantize_per_token_fp8(x.to(gpu()));
        const auto what = fmt::format("quantize_per_token_fp8 M={} in={} dtype={}", m, k, c10::toString(dtype));
        EXPECT_TRUE(same(got.q, want.q, what + " E4M3 bits"));
        EXPECT_TRUE(close(got.scale, want.scale, 0.0, what + " scale"));
      }
    }
  }
  for (const auto& s : kShapes) {
    const auto fw = ref::quantize_fp8_e4m3_channel(randn({s.n, s.k}, 1400 + s.k, 0.05));
    EXPECT_TRUE(close(cuda::dequantize_fp8_weight(fw.q.to(gpu()), fw.scale.to(gpu()), torch::kFloat32),
                      ref::dequantize_fp8(fw), 0.0, fmt::format("dequantize_fp8_weight in={} out={}", s.k, s.n)));
  }
}

TEST(CudaFp8, LinearMatchesReferenceOrIsUnsupported) {
  REQUIRE_GPU();
  const auto w = randn({72, 200}, 1500, 0.05);
  const auto fw = ref::quantize_fp8_e4m3_channel(w);
  const auto x = randn({7, 200}, 1501).to(torch::kBFloat16);
  if (!cuda::fp8_supported(gpu())) {
    EXPECT_THROW(cuda::fp8_linear(x.to(gpu()), fw.q.to(gpu()), fw.scale.to(gpu()), {}), UnsupportedError);
    GTEST_SKIP() << "FP8 needs compute capability 8.9+; checked that fp8_linear says so";
  }
  for (const auto& s : kShapes) {
    const auto wf = ref::quantize_fp8_e4m3_channel(randn({s.n, s.k}, 1600 + s.k, 0.05));
    const auto bias = randn({s.n}, 1601, 0.1);
    for (const int64_t m : kTokens) {
      for (const auto dtype : {torch::kBFloat16, torch::kFloat16, torch::kFloat32}) {
        const auto xd = randn({m, s.k}, 1700 + m).to(dtype);
        const auto want = ref::fp8_w8a8_linear(xd, wf, bias);
        std::vector<cuda::Fp8Gemm> gemms = {cuda::Fp8Gemm::kAuto, cuda::Fp8Gemm::kScaledMm};
        if (cuda::int8_wgmma_available() && s.k % 16 == 0) gemms.push_back(cuda::Fp8Gemm::kWgmma);
        for (const auto g : gemms) {
          const auto got = cuda::fp8_linear(xd.to(gpu()), wf.q.to(gpu()), wf.scale.to(gpu()), bias.to(gpu()), false, g);
          const auto what = fmt::format("fp8_linear gemm={} M={} in={} out={} dtype={}",
                                        g == cuda::Fp8Gemm::kAuto ? "auto" : g == cuda::Fp8Gemm::kWgmma ? "wgmma" : "scaled_mm",
                                        m, s.k, s.n, c10::toString(dtype));
          EXPECT_EQ(got.scalar_type(), dtype) << what;
          EXPECT_TRUE(close(got, want, kFp8Tol, what));
        }
      }
    }
  }
}

// GPT-2's shapes (in and out multiples of 16, which cuBLASLt's fp8 kernels need), with and without the bias and
// the GELU epilogue, in both output dtypes, through `gemm` (kCublasLt or kWgmma).
void expect_fp8_epilogues_match_reference(cuda::Fp8Gemm gemm) {
  const char* name = gemm == cuda::Fp8Gemm::kWgmma ? "wgmma" : "cublaslt";
  for (const auto& [k, n] : std::vector<std::pair<int64_t, int64_t>>{{768, 2304}, {3072, 768}}) {
    const auto wf = ref::quantize_fp8_e4m3_channel(randn({n, k}, 1800 + k, 0.05));
    const auto bias = randn({n}, 1801, 0.1);
    for (const int64_t m : {1, 128, 1000}) {
      for (const auto dtype : {torch::kBFloat16, torch::kFloat16}) {
        const auto xd = randn({m, k}, 1900 + m).to(dtype);
        for (const bool with_bias : {true, false}) {
          for (const bool gelu : {false, true}) {
            const torch::Tensor b = with_bias ? bias : torch::Tensor();
            auto want = ref::fp8_w8a8_linear(xd, wf, b).to(torch::kFloat32);
            if (gelu) want = torch::gelu(want, "tanh");
            const auto what = fmt::format("fp8_linear {} M={} in={} out={} dtype={} bias={} gelu={}", name, m, k,
                                          n, c10::toString(dtype), with_bias, gelu);
            torch::Tensor got;
            try {
              got = cuda::fp8_linear(xd.to(gpu()), wf.q.to(gpu()), wf.scale.to(gpu()),
                                     with_bias ? bias.to(gpu()).to(dtype) : torch::Tensor(), gelu, gemm);
            } catch (const UnsupportedError& e) {
              GTEST_SKIP() << "this cuBLASLt has no outer-vector fp8 product: " << e.what();
            }
            EXPECT_EQ(got.scalar_type(), dtype) << what;
            EXPECT_TRUE(close(got, want, kFp8Tol, what));
          }
        }
      }
    }
  }
}

TEST(CudaFp8, CublasLtOuterVectorProductMatchesReference) {
  REQUIRE_GPU();
  if (!cuda::fp8_supported(gpu())) GTEST_SKIP() << "FP8 needs compute capability 8.9+";
  expect_fp8_epilogues_match_reference(cuda::Fp8Gemm::kCublasLt);
}

TEST(CudaFp8, WgmmaProductMatchesReferenceOnHopper) {
  REQUIRE_GPU();
  if (!cuda::int8_wgmma_available()) {
    const auto x = randn({4, 64}, 1).to(torch::kBFloat16).to(gpu());
    if (cuda::fp8_supported(gpu())) {
      EXPECT_THROW(cuda::fp8_linear(x, torch::zeros({8, 64}, torch::kUInt8).to(gpu()), torch::ones({8}).to(gpu()), {},
                                    false, cuda::Fp8Gemm::kWgmma),
                   UnsupportedError);
    }
    GTEST_SKIP() << "the wgmma fp8 GEMM needs compute capability 9.0 and an sm_90a build";
  }
  expect_fp8_epilogues_match_reference(cuda::Fp8Gemm::kWgmma);
  // The same codes through cuBLASLt: both sum in fp32, so only the order of the sums differs.
  const auto wf = ref::quantize_fp8_e4m3_channel(randn({768, 3072}, 1850, 0.05));
  const auto x = randn({128, 3072}, 1851).to(torch::kBFloat16).to(gpu());
  const auto w = wf.q.to(gpu());
  const auto ws = wf.scale.to(gpu());
  const auto via_wgmma = cuda::fp8_linear(x, w, ws, {}, false, cuda::Fp8Gemm::kWgmma).to(torch::kFloat32);
  torch::Tensor via_lib;
  try {
    via_lib = cuda::fp8_linear(x, w, ws, {}, false, cuda::Fp8Gemm::kCublasLt);
  } catch (const UnsupportedError&) {  // a cuBLASLt before 12.9
    via_lib = cuda::fp8_linear(x, w, ws, {}, false, cuda::Fp8Gemm::kScaledMm);
  }
  EXPECT_TRUE(close(via_wgmma.cpu(), via_lib.to(torch::kFloat32).cpu(), kBF16Tol, "fp8 wgmma against cuBLASLt, 128 tokens"));
  // kAuto takes the wgmma kernel at 128 tokens, and set_fp8_auto_gemm (qbench bench --fp8-gemm) overrides it.
  EXPECT_TRUE(torch::equal(cuda::fp8_linear(x, w, ws, {}).to(torch::kFloat32), via_wgmma));
  cuda::set_fp8_auto_gemm(cuda::Fp8Gemm::kScaledMm);
  const auto overridden = cuda::fp8_linear(x, w, ws, {});
  cuda::set_fp8_auto_gemm(cuda::Fp8Gemm::kAuto);
  EXPECT_TRUE(torch::equal(overridden, cuda::fp8_linear(x, w, ws, {}, false, cuda::Fp8Gemm::kScaledMm)));
  EXPECT_TRUE(torch::equal(cuda::fp8_linear(x, w, ws, {}).to(torch::kFloat32), via_wgmma));
  // in % 16 != 0 is refused by name rather than read wrongly.
  const auto x200 = randn({4, 200}, 2).to(torch::kBFloat16).to(gpu());
  EXPECT_THROW(cuda::fp8_linear(x200, torch::zeros({8, 200}, torch::kUInt8).to(gpu()), torch::ones({8}).to(gpu()), {},
                                false, cuda::Fp8Gemm::kWgmma),
               InputError);
}

TEST(CudaFp8, BadInputThrowsInputError) {
  REQUIRE_GPU();
  const auto x = randn({4, 64}, 1).to(gpu());
  EXPECT_THROW(cuda::quantize_per_token_fp8(x.to(torch::kInt32)), InputError);
  EXPECT_THROW(cuda::fp8_linear(x, torch::zeros({8, 64}, torch::kInt8).to(gpu()), torch::ones({8}).to(gpu()), {}),
               InputError);  // wq must be uint8 bits
  EXPECT_THROW(cuda::fp8_linear(x, torch::zeros({8, 64}, torch::kUInt8).to(gpu()), torch::ones({7}).to(gpu()), {}),
               InputError);  // wscale size
  EXPECT_THROW(cuda::dequantize_fp8_weight(torch::zeros({8, 64}, torch::kUInt8).to(gpu()), torch::ones({8}), torch::kFloat16),
               InputError);  // scale on the CPU
}

// ---- Fused epilogues and block pieces -----------------------------------------------------------------------

/// gelu(want, "tanh") computed as the unfused model does: in fp32 on the output rounded to its dtype.
torch::Tensor gelu_of(const torch::Tensor& want) {
  return torch::gelu(want.to(torch::kFloat32), "tanh").to(want.scalar_type());
}

TEST(CudaFusedGelu, EveryLinearWithGeluMatchesGeluOfTheReference) {
  REQUIRE_GPU();
  // GPT-2's c_fc shape and an odd one; 1, 128 and 1000 tokens cover the WMMA, cuBLASLt and dequantize paths.
  for (const auto& s : {Shape{768, 3072}, Shape{200, 72}}) {
    const auto w = randn({s.n, s.k}, 1300 + s.k, 0.05);
    const auto bias = randn({s.n}, 1301, 0.1);
    const auto q8 = ref::quantize_int8_sym(w, true);
    const auto cb = ref::quantize_llm_int8(w.to(torch::kHalf));
    const auto nf4 = ref::quantize_nf4(w.to(torch::kHalf), 64, true);
    for (const int64_t m : {int64_t{1}, int64_t{128}, int64_t{1000}}) {
      for (const auto dtype : {torch::kFloat16, torch::kBFloat16}) {
        const auto x = randn({m, s.k}, 1400 + m).to(dtype);
        const auto xg = x.to(gpu());
        const auto tol = tol_for(dtype);
        const auto what = [&](const char* op) {
          return fmt::format("{} + gelu M={} in={} out={} dtype={}", op, m, s.k, s.n, c10::toString(dtype));
        };
        const auto wd = w.to(dtype);
        EXPECT_TRUE(close(cuda::linear(xg, wd.to(gpu()), bias.to(dtype).to(gpu()), true),
                          gelu_of(ref::linear_in_dtype(x, w, bias, dtype)), tol, what("linear")));
        EXPECT_TRUE(close(cuda::linear(xg, wd.to(gpu()), {}, true),
                          gelu_of(ref::linear_in_dtype(x, w, {}, dtype)), tol, what("linear without bias")));
        EXPECT_TRUE(close(cuda::int8_weight_only_linear(xg, q8.q.to(gpu()), q8.scale.to(gpu()), bias.to(gpu()), true),
                          gelu_of(ref::int8_weight_only_linear(x, q8, bias, dtype)), tol, what("int8 weight-only")));
        for (const auto g : {cuda::Int8Gemm::kFused, cuda::Int8Gemm::kAuto}) {
          EXPECT_TRUE(close(cuda::int8_w8a8_linear(xg, q8.q.to(gpu()), q8.scale.to(gpu()), bias.to(gpu()), g, true),
                            gelu_of(ref::int8_w8a8_linear(x, q8, bias)), tol, what(g == cuda::Int8Gemm::kFused ? "W8A8 fused" : "W8A8 auto")));
        }
        EXPECT_TRUE(close(cuda::llm_int8_linear(xg, cb.CB.to(gpu()), cb.SCB.to(gpu()), bias.to(gpu()), 6.0,
                                                cuda::Int8Gemm::kAuto, true),
                          gelu_of(ref::llm_int8_linear(x, cb, bias, 6.0)), tol, what("llm_int8")));
        for (const auto path : {cuda::Nf4Path::kAuto, cuda::Nf4Path::kGemm}) {
          EXPECT_TRUE(close(cuda::nf4_linear(xg, to_gpu(nf4), bias.to(gpu()), path, true),
                            gelu_of(ref::nf4_linear(x, nf4, bias, dtype)), tol, what(path_name(path))));
        }
      }
    }
  }
}

TEST(CudaFusedGelu, EpilogueGeluIsTheTanhGelu) {
  REQUIRE_GPU();
  // The epilogues compute GELU as x * sigmoid(2u) with the fast exp and reciprocal. Isolate that function: the
  // same int8 product with fp32 output, without and with GELU, so the first gives the exact pre-activation v;
  // the second must be the tanh GELU of v, evaluated in fp64, within 1e-5 relative wherever |GELU| is above
  // fp16's smallest normal 6.1e-5 (50x finer than an fp16 rounding) and 6.1e-10 absolute below it, for v from
  // -16 to 16 (one-hot rows: v = 127 * 127 * xscale * wscale). (PyTorch's fp32 tanh form returns 0 from
  // v < -5.5 on: tanh(u) rounds to -1.)
  const int64_t m = 4096, k = 16, n = 16;
  auto xq = torch::zeros({m, k}, torch::kInt8);
  xq.select(1, 0).fill_(127);
  auto wq = torch::zeros({n, k}, torch::kInt8);
  wq.select(1, 0).fill_(127);
  const auto xscale = (torch::linspace(-16.0, 16.0, m, torch::kFloat64) / (127.0 * 127.0)).to(torch::kFloat32);
  const auto wscale = (1.0 + torch::arange(n, torch::kFloat64) * 1e-3).to(torch::kFloat32);
  for (const auto g : int8_gemms(true)) {
    if (!gemm_takes(g, m, k, n)) continue;
    const auto run = [&](bool gelu) {
      return cuda::int8_linear(xq.to(gpu()), xscale.to(gpu()), wq.to(gpu()), wscale.to(gpu()), {}, torch::kFloat32,
                               1.0, g, gelu)
          .cpu()
          .to(torch::kFloat64);
    };
    const auto v = run(false);
    const auto got = run(true);
    const auto want = 0.5 * v * (1.0 + torch::tanh(0.7978845608028654 * (v + 0.044715 * v * v * v)));
    const auto err = (got - want).abs();
    const auto bound = 1e-5 * want.abs().clamp_min(6.1e-5);
    const int64_t bad = (err > bound).sum().item<int64_t>();
    EXPECT_EQ(bad, 0) << "gemm=" << gemm_name(g) << ": " << bad << " of " << got.numel()
                      << " GELU values off; max error / bound " << (err / bound).max().item<double>();
    EXPECT_LT(v.min().item<double>(), -16.0);  // the range asked for is covered (wscale stretches it 1.5%)
    EXPECT_GT(v.max().item<double>(), 16.0);
  }
}

TEST(CudaBlock, AddLayerNormMatchesReference) {
  REQUIRE_GPU();
  // 256, 768 and 1024 take the one-warp-per-row path in fp16 and bf16 (1, 3 and 4 chunks), the rest the block path.
  for (const int64_t cols : {int64_t{768}, int64_t{100}, int64_t{3072}, int64_t{33}, int64_t{256}, int64_t{1024}}) {
    for (const int64_t rows : {int64_t{1}, int64_t{7}, int64_t{128}, int64_t{1000}}) {
      for (const auto dtype : {torch::kFloat32, torch::kFloat16, torch::kBFloat16}) {
        const auto what = fmt::format("add_layer_norm rows={} cols={} dtype={}", rows, cols, c10::toString(dtype));
        // Residual-stream-like values: an offset and a spread, so mean and variance both matter.
        const auto h = (randn({rows, cols}, 1500 + cols, 2.0) + 0.5).to(dtype);
        const auto delta = randn({rows, cols}, 1501 + rows, 0.7).to(dtype);
        const auto gamma = (randn({cols}, 1502, 0.2) + 1.0).to(dtype);
        const auto beta = randn({cols}, 1503, 0.1).to(dtype);
        const auto [want_h, want_a] = ref::add_layer_norm(h, delta, gamma, beta, 1e-5);
        const auto [got_h, got_a] =
            cuda::add_layer_norm(h.to(gpu()), delta.to(gpu()), gamma.to(gpu()), beta.to(gpu()), 1e-5);
        // The sum of two values of the dtype, exact in fp32 and rounded once, is the same bits on both sides.
        EXPECT_TRUE(same(got_h.cpu().to(torch::kFloat32).view(torch::kInt32),
                         want_h.to(torch::kFloat32).view(torch::kInt32), what + " h"));
        EXPECT_TRUE(close(got_a, want_a, tol_for(dtype), what + " LayerNorm"));
      }
    }
  }
  // Leading dims are kept.
  const auto h3 = randn({2, 5, 64}, 1504).to(torch::kFloat16).to(gpu());
  const auto ones = torch::ones({64}, torch::kFloat16).to(gpu());
  const auto [h_out, a] = cuda::add_layer_norm(h3, h3, ones, ones * 0, 1e-5);
  EXPECT_EQ(a.sizes(), h3.sizes());
  EXPECT_EQ(h_out.sizes(), h3.sizes());
}

TEST(CudaBlock, AddLayerNormQuantizedEqualsAddLayerNormThenTheQuantizer) {
  REQUIRE_GPU();
  // The fused kernel (fp16/bf16, 256-1024 wide rows) and the composed fallback (fp32, 100 wide) must both give
  // exactly the codes and scales of add_layer_norm followed by the per-token quantizer; 2,500 rows take the
  // quantizer's warp kernel on the composed side. Against the CPU reference, the dequantized codes stay within
  // the code's rounding of the reference LayerNorm.
  for (const int64_t cols : {int64_t{768}, int64_t{256}, int64_t{1024}, int64_t{100}}) {
    for (const int64_t rows : {int64_t{1}, int64_t{7}, int64_t{128}, int64_t{2500}}) {
      for (const auto dtype : {torch::kFloat16, torch::kBFloat16, torch::kFloat32}) {
        const auto h = (randn({rows, cols}, 1600 + cols, 2.0) + 0.5).to(dtype);
        const auto delta = randn({rows, cols}, 1601 + rows, 0.7).to(dtype);
        const auto gamma = (randn({cols}, 1602, 0.2) + 1.0).to(dtype);
        const auto beta = randn({cols}, 1603, 0.1).to(dtype);
        const auto hg = h.to(gpu()), dg = delta.to(gpu()), gg = gamma.to(gpu()), bg = beta.to(gpu());
        const auto [want_h, want_a] = cuda::add_layer_norm(hg, dg, gg, bg, 1e-5);
        const auto ref_a = ref::add_layer_norm(h, delta, gamma, beta, 1e-5).second.to(torch::kFloat32);
        const double ref_max = ref_a.abs().max().item<double>();
        for (const auto code : {ActivationCode::kInt8, ActivationCode::kFp8E4M3}) {
          const bool int8 = code == ActivationCode::kInt8;
          const auto what = fmt::format("add_layer_norm_quantized {} rows={} cols={} dtype={}", int8 ? "int8" : "fp8",
                                        rows, cols, c10::toString(dtype));
          const auto [got_h, got] = cuda::add_layer_norm_quantized(hg, dg, gg, bg, 1e-5, code);
          ASSERT_EQ(got.q.sizes(), h.sizes()) << what;
          ASSERT_EQ(got.q.scalar_type(), int8 ? torch::kInt8 : torch::kUInt8) << what;
          EXPECT_TRUE(torch::equal(got_h, want_h)) << what << ": h differs from add_layer_norm's";
          torch::Tensor want_q, want_s;
          if (int8) {
            const auto qa = cuda::quantize_per_token_int8(want_a, 0.0);
            want_q = qa.q;
            want_s = qa.scale;
          } else {
            const auto qa = cuda::quantize_per_token_fp8(want_a);
            want_q = qa.q;
            want_s = qa.scale;
          }
          EXPECT_TRUE(same(got.q, want_q, what + " codes"));
          EXPECT_TRUE(same(got.scale, want_s, what + " scales"));
          const auto codes = got.q.cpu();
          const auto deq = (int8 ? codes.to(torch::kFloat32) : ref::fp8_decode(codes)) * got.scale.cpu().unsqueeze(1);
          // int8: half a step of the row's scale; E4M3: 3 mantissa bits (2^-4 relative); plus the dtype's own
          // rounding of the LayerNorm.
          const double bound = (int8 ? 0.5 / 127.0 : 0.0625) * ref_max + 2 * tol_for(dtype) * ref_max;
          const double err = (deq - ref_a).abs().max().item<double>();
          EXPECT_LE(err, bound) << what << ": dequantized codes against the CPU LayerNorm";
        }
      }
    }
  }
}

TEST(CudaBlock, ForwardQuantizedOnFusedCodesEqualsForward) {
  REQUIRE_GPU();
  // What the model does for W8A8 and FP8 projections after a fused add + LayerNorm: forward_quantized on the
  // kernel's codes must give forward()'s output on the LayerNorm rows bit for bit, GELU or not.
  const auto w = randn({300, 768}, 1610, 0.05);
  const auto b = randn({300}, 1611, 0.1);
  for (const auto method : {Method::kInt8W8A8, Method::kFp8E4M3}) {
    if (method == Method::kFp8E4M3 && !cuda::fp8_supported(gpu())) continue;
    for (const auto dtype : {torch::kFloat16, torch::kBFloat16}) {
      QuantOptions o;
      o.compute_dtype = dtype;
      auto layer = quantize_linear(method, w, b, o);
      layer->to(gpu());
      const auto what = fmt::format("{} on {}", method_name(method), c10::toString(dtype));
      ASSERT_EQ(layer->activation_code(), method == Method::kInt8W8A8 ? ActivationCode::kInt8 : ActivationCode::kFp8E4M3);
      const auto h = (randn({2, 64, 768}, 1612, 2.0) + 0.5).to(dtype).to(gpu());
      const auto delta = randn({2, 64, 768}, 1613, 0.7).to(dtype).to(gpu());
      const auto gamma = (randn({768}, 1614, 0.2) + 1.0).to(dtype).to(gpu());
      const auto beta = randn({768}, 1615, 0.1).to(dtype).to(gpu());
      const auto a = cuda::add_layer_norm(h, delta, gamma, beta, 1e-5).second;
      const auto qa = cuda::add_layer_norm_quantized(h, delta, gamma, beta, 1e-5, layer->activation_code()).second;
      EXPECT_FALSE(qa.outliers.rows.defined()) << what;
      for (const auto act : {Activation::kNone, Activation::kGeluTanh}) {
        const auto got = layer->forward_quantized(qa.q, qa.scale, dtype, act);
        EXPECT_EQ(got.sizes(), (std::vector<int64_t>{2, 64, 300})) << what;
        EXPECT_TRUE(torch::equal(got, layer->forward(a, act))) << what << (act == Activation::kGeluTanh ? " with GELU" : "");
      }
    }
  }
  // LLM.int8 on fp16: the kernel also writes the rows and finds the outlier columns (here the LayerNorm's gamma
  // makes two columns exceed the threshold 6 in most rows). Rows of 768 take the fused kernel, rows of 200 the
  // two ops; both on the layer's own kept state, which must stay zero.
  for (const int64_t cols : {768, 200}) {
    const auto wl = randn({300, cols}, 1620, 0.05);
    auto layer = quantize_linear(Method::kLlmInt8, wl, b, {});
    layer->to(gpu());
    const auto what = fmt::format("llm-int8, rows of {}", cols);
    ASSERT_EQ(layer->activation_code(), ActivationCode::kLlmInt8) << what;
    const auto h = (randn({2, 64, cols}, 1621, 2.0) + 0.5).to(torch::kFloat16).to(gpu());
    const auto delta = randn({2, 64, cols}, 1622, 0.7).to(torch::kFloat16).to(gpu());
    auto gamma_cpu = randn({cols}, 1623, 0.2) + 1.0;
    gamma_cpu.index_put_({7}, 20.0);
    gamma_cpu.index_put_({cols - 9}, -15.0);
    const auto gamma = gamma_cpu.to(torch::kFloat16).to(gpu());
    const auto beta = randn({cols}, 1624, 0.1).to(torch::kFloat16).to(gpu());
    const auto a = cuda::add_layer_norm(h, delta, gamma, beta, 1e-5).second;
    const auto state = layer->outlier_state();
    ASSERT_TRUE(state.defined()) << what;
    const auto qa = cuda::add_layer_norm_quantized(h, delta, gamma, beta, 1e-5, ActivationCode::kLlmInt8,
                                                   layer->outlier_threshold(), state)
                        .second;
    EXPECT_TRUE(torch::equal(qa.outliers.rows, a)) << what << ": the rows";
    EXPECT_EQ(qa.outliers.count.item<int32_t>(), 2) << what;
    EXPECT_EQ(state.abs().sum().item<int64_t>(), 0) << what << ": the state is not left zero";
    for (const auto act : {Activation::kNone, Activation::kGeluTanh}) {
      const auto got = layer->forward_quantized(qa.q, qa.scale, torch::kFloat16, act, qa.outliers);
      EXPECT_TRUE(torch::equal(got, layer->forward(a, act))) << what << (act == Activation::kGeluTanh ? " with GELU" : "");
    }
    // Without the rows and columns the layer cannot run.
    EXPECT_THROW(layer->forward_quantized(qa.q, qa.scale, torch::kFloat16), InputError) << what;
  }
  // A layer that does not quantize its input refuses.
  auto plain = quantize_linear(Method::kInt8SymChannel, w, b, {});
  plain->to(gpu());
  EXPECT_EQ(plain->activation_code(), ActivationCode::kNone);
  EXPECT_THROW(plain->forward_quantized(torch::zeros({4, 768}, torch::kInt8).to(gpu()), torch::ones({4}).to(gpu()),
                                        torch::kFloat16),
               UnsupportedError);
}

TEST(CudaBlock, AddLayerNormBadInputThrowsInputError) {
  REQUIRE_GPU();
  const auto h = randn({4, 64}, 1).to(torch::kFloat16).to(gpu());
  const auto g = torch::ones({64}, torch::kFloat16).to(gpu());
  EXPECT_THROW(cuda::add_layer_norm(h.cpu(), h.cpu(), g.cpu(), g.cpu(), 1e-5), InputError);  // CPU tensors
  EXPECT_THROW(cuda::add_layer_norm(h, h.to(torch::kFloat32), g, g, 1e-5), InputError);     // delta dtype
  EXPECT_THROW(cuda::add_layer_norm(h, h.view({2, 128}), g, g, 1e-5), InputError);          // delta shape
  EXPECT_THROW(cuda::add_layer_norm(h, h, torch::ones({63}, torch::kFloat16).to(gpu()), g, 1e-5), InputError);
  EXPECT_THROW(cuda::add_layer_norm(h, h, g, g.to(torch::kFloat32), 1e-5), InputError);     // beta dtype
  EXPECT_THROW(cuda::add_layer_norm(h, h, g, g, 0.0), InputError);                          // eps
}

// A capped grid (max_blocks, for running beside other work) walks the whole weight: same values as the full grid,
// on shapes that take each kernel variant (k % 4 != 0 and n * k % 8 != 0 take the element-wise loops).
TEST(CudaDenseWeight, CappedGridDequantizationEqualsTheFullGrid) {
  REQUIRE_GPU();
  std::vector<Shape> shapes = kShapes;
  shapes.push_back({99, 17});
  for (const auto& s : shapes) {
    const auto w = randn({s.n, s.k}, 1600 + s.k, 0.05);
    for (const auto dtype : {torch::kFloat32, torch::kFloat16, torch::kBFloat16}) {
      const auto what = fmt::format("in={} out={} dtype={}", s.k, s.n, c10::toString(dtype));
      const auto qi = ref::quantize_int8_sym(w, true);
      const auto q = qi.q.to(gpu()), scale = qi.scale.to(gpu());
      const auto full = cuda::dequantize_int8_weight(q, scale, dtype);
      const auto nq = to_gpu(ref::quantize_nf4(w, 64, true));
      const auto nfull = cuda::nf4_dequantize(nq, dtype);
      for (const int blocks : {1, 3, 16}) {
        auto capped = torch::full_like(full, 7.0);
        cuda::dequantize_int8_weight_into(q, scale, capped, blocks);
        EXPECT_TRUE(torch::equal(capped, full)) << "int8 " << what << " max_blocks=" << blocks;
        auto ncapped = torch::full_like(nfull, 7.0);
        cuda::nf4_dequantize_into(nq, ncapped, blocks);
        EXPECT_TRUE(torch::equal(ncapped, nfull)) << "nf4 " << what << " max_blocks=" << blocks;
      }
      auto bad = torch::empty_like(full);
      EXPECT_THROW(cuda::dequantize_int8_weight_into(q, scale, bad, -1), InputError) << what;
      EXPECT_THROW(cuda::nf4_dequantize_into(nq, bad, -1), InputError) << what;
    }
  }
}

// A transformer block's four NF4 weights in one launch (the prefetch's batch) give each weight's own values, capped
// or not, plain or double-quantized absmax; a weight the batched kernel does not take (99 x 17) sends the whole
// batch through the one-by-one path, with the same values. Block 64 with 16-bit copies takes the product tables;
// the other block sizes the generic loop, whose absmax is passed round a warp (32 to 1024) or decoded a word at a
// time (2048, 4096): each against the element-wise kernel. dense_weights_into (the layers' entry point) as well.
TEST(CudaDenseWeight, BatchedNf4DequantizationEqualsEachWeightsOwn) {
  REQUIRE_GPU();
  // n * k % 32 == 0; 200 x 72 ends in part of a trip (128 words a warp)
  const std::vector<Shape> fitting = {{768, 256}, {768, 64}, {200, 72}, {3072, 32}};
  std::vector<Shape> shapes = fitting;
  // The weights dequantized by one batched launch into tensors of 7s (each launch must write every element).
  auto batched = [](std::vector<cuda::Nf4Weight>& w, torch::ScalarType dtype, int blocks) {
    std::vector<torch::Tensor> out;
    std::vector<torch::Tensor*> outs;
    std::vector<const cuda::Nf4Weight*> ws;
    for (auto& x : w) {
      out.push_back(torch::full({x.out_features, x.in_features}, 7.0, torch::TensorOptions().dtype(dtype).device(gpu())));
    }
    for (size_t j = 0; j < w.size(); ++j) {
      outs.push_back(&out[j]);
      ws.push_back(&w[j]);
    }
    cuda::nf4_dequantize_batch_into(ws, outs, blocks);
    return out;
  };
  for (const bool odd : {false, true}) {
    if (odd) shapes.back() = Shape{99, 17};
    for (const bool dq : {true, false}) {
      std::vector<cuda::Nf4Weight> w;
      for (size_t j = 0; j < shapes.size(); ++j) {
        w.push_back(to_gpu(ref::quantize_nf4(randn({shapes[j].n, shapes[j].k}, 1660 + j, 0.05), 64, dq)));
      }
      for (const int64_t blocksize : {32, 128, 1024, 2048, 4096}) {  // 64 below
        if (odd) break;
        std::vector<cuda::Nf4Weight> wb;
        for (size_t j = 0; j < shapes.size(); ++j) {
          wb.push_back(to_gpu(ref::quantize_nf4(randn({shapes[j].n, shapes[j].k}, 1670 + j, 0.05), blocksize, dq)));
        }
        const auto out = batched(wb, torch::kFloat16, 64);
        for (size_t j = 0; j < wb.size(); ++j) {
          EXPECT_TRUE(torch::equal(out[j], cuda::nf4_dequantize(wb[j], torch::kFloat16)))
              << "blocksize=" << blocksize << " double_quant=" << dq << " weight " << j;
        }
      }
      for (const auto dtype : {torch::kFloat16, torch::kBFloat16}) {
        for (const int blocks : {0, 1, 64}) {
          const auto what = fmt::format("odd={} double_quant={} dtype={} max_blocks={}", odd, dq, c10::toString(dtype), blocks);
          const auto out = batched(w, dtype, blocks);
          for (size_t j = 0; j < w.size(); ++j) {
            EXPECT_TRUE(torch::equal(out[j], cuda::nf4_dequantize(w[j], dtype))) << what << " weight " << j;
          }
        }
      }
      std::vector<torch::Tensor*> short_outs;
      EXPECT_THROW(cuda::nf4_dequantize_batch_into({&w[0]}, short_outs, 0), InputError);
    }
  }
  // Through the layers: NF4 layers batched, int8 ones one by one.
  for (const auto method : {Method::kNf4, Method::kInt8SymChannel}) {
    std::vector<std::unique_ptr<QuantizedLinear>> layers;
    std::vector<const QuantizedLinear*> ptrs;
    std::vector<torch::Tensor> out;
    std::vector<torch::Tensor*> outs;
    QuantOptions o;
    o.compute_dtype = torch::kFloat16;
    for (size_t j = 0; j < fitting.size(); ++j) {
      layers.push_back(quantize_linear(method, randn({fitting[j].n, fitting[j].k}, 1670 + j, 0.05), {}, o));
      layers.back()->to(gpu());
      out.push_back(torch::empty({fitting[j].n, fitting[j].k}, torch::TensorOptions().dtype(torch::kFloat16).device(gpu())));
    }
    for (size_t j = 0; j < layers.size(); ++j) {
      ptrs.push_back(layers[j].get());
      outs.push_back(&out[j]);
    }
    dense_weights_into(ptrs, outs, 64);
    for (size_t j = 0; j < layers.size(); ++j) {
      auto own = torch::empty_like(out[j]);
      layers[j]->dense_weight_into(own, 64);
      EXPECT_TRUE(torch::equal(out[j], own)) << method_name(method) << " layer " << j;
    }
    auto wrong = torch::empty({3, 3}, out[0].options());
    outs[0] = &wrong;
    EXPECT_THROW(dense_weights_into(ptrs, outs, 64), InputError) << method_name(method);
  }
}

// The model's weight prefetch: a layer's dense weight made on a side stream, read on the current stream after an
// event, gives forward_dense() results identical to forward()'s.
TEST(CudaDenseWeight, MadeOnASideStreamEqualsTheCpuDenseWeightAndForwardDenseEqualsForward) {
  REQUIRE_GPU();
  struct Case {
    Method method;
    torch::ScalarType base;
    double tol;  // dense weight against the CPU's; int8 is exact, nf4 decodes absmax in another order
  };
  const std::vector<Case> cases = {{Method::kInt8SymTensor, torch::kFloat16, 0},
                                   {Method::kInt8SymTensor, torch::kFloat32, 0},
                                   {Method::kInt8SymChannel, torch::kFloat16, 0},
                                   {Method::kInt8SymChannel, torch::kBFloat16, 0},
                                   {Method::kNf4, torch::kFloat16, 1e-3},
                                   {Method::kNf4, torch::kBFloat16, 8e-3},
                                   {Method::kNf4, torch::kFloat32, 1e-6}};
  const auto w = randn({200, 768}, 1500, 0.05);
  const auto b = randn({200}, 1501, 0.1);
  cuda::SideStream side(gpu(), 1);
  for (const auto& c : cases) {
    const auto what = fmt::format("{} on {}", method_name(c.method), c10::toString(c.base));
    QuantOptions o;
    o.compute_dtype = c.base;
    auto layer = quantize_linear(c.method, w, b, o);
    auto want_dense = torch::empty({200, 768}, c.base);
    layer->dense_weight_into(want_dense);
    layer->to(gpu());
    auto dense = torch::empty({200, 768}, torch::TensorOptions().dtype(c.base).device(gpu()));
    // 3 blocks: the capped grid the prefetch uses, each block looping over many rows.
    side.run_on_side([&] { layer->dense_weight_into(dense, 3); });
    side.record_side(0);
    side.current_waits(0);
    auto uncapped = torch::empty_like(dense);
    layer->dense_weight_into(uncapped);
    EXPECT_TRUE(torch::equal(dense, uncapped)) << what << ": capped and uncapped grids differ";
    if (c.tol == 0) {
      EXPECT_TRUE(torch::equal(dense.cpu(), want_dense)) << what;
    } else {
      EXPECT_TRUE(close(dense, want_dense, c.tol, what + " dense weight"));
    }
    const auto x = randn({2, 64, 768}, 1502).to(c.base).to(gpu());
    ASSERT_TRUE(layer->dequantizes_at(128)) << what;
    for (const auto act : {Activation::kNone, Activation::kGeluTanh}) {
      EXPECT_TRUE(torch::equal(layer->forward_dense(x, dense, act), layer->forward(x, act)))
          << what << (act == Activation::kGeluTanh ? " with GELU" : "");
    }
  }
}

// The L2 prefetch is a hint: whatever it is given stays as it was, eagerly and in a CUDA graph, and more spans than
// one launch takes go out in several. Bad input is an InputError naming the tensor.
TEST(CudaL2Prefetch, LeavesTheTensorsAsTheyWereAndRejectsBadInput) {
  REQUIRE_GPU();
  std::vector<torch::Tensor> ts;
  for (int i = 0; i < 20; ++i) ts.push_back(randn({1 + 37 * i, 29}, 1600 + i).to(torch::kHalf).to(gpu()));
  ts.push_back(torch::randint(-128, 127, {2304, 768}, torch::TensorOptions().dtype(torch::kInt8)).to(gpu()));
  ts.push_back(torch::ones({3}, torch::TensorOptions().dtype(torch::kInt8).device(gpu())));  // 3 bytes: no whole 16
  ts.push_back(torch::Tensor());                                                         // skipped
  ts.push_back(torch::empty({0}, torch::TensorOptions().device(gpu())));                 // skipped
  std::vector<torch::Tensor> before;
  for (const auto& t : ts) before.push_back(t.defined() ? t.clone() : t);
  cuda::l2_prefetch(ts);
  torch::cuda::synchronize();
  {
    const c10::cuda::CUDAStreamGuard guard(c10::cuda::getStreamFromPool(false, 0));
    at::cuda::CUDAGraph graph;
    graph.capture_begin();
    cuda::l2_prefetch(ts);
    graph.capture_end();
    graph.replay();
    torch::cuda::synchronize();
  }
  for (size_t i = 0; i < ts.size(); ++i) {
    if (ts[i].defined()) EXPECT_TRUE(torch::equal(ts[i], before[i])) << "tensor " << i;
  }
  cuda::l2_prefetch({});  // nothing to do

  auto expect_input_error = [](const std::vector<torch::Tensor>& bad, const std::string& names) {
    try {
      cuda::l2_prefetch(bad);
      ADD_FAILURE() << "no error for " << names;
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find(names), std::string::npos) << e.what();
    }
  };
  const auto bytes = torch::zeros({64}, torch::TensorOptions().dtype(torch::kInt8).device(gpu()));
  expect_input_error({ts[0], torch::zeros({8})}, "tensors[1]");                    // on the CPU
  expect_input_error({bytes.slice(0, 1)}, "tensors[0] must start at a 16-byte");   // misaligned
  expect_input_error({ts[1].t()}, "tensors[0] must be contiguous");
}

// A flag set on another stream after slow work (a ~0.1 s spin, then a fill): the add + LayerNorm given it as
// wait_flag does not complete before it, so what the current stream queues next sees that stream's fill, and its
// rows are the plain kernel's bit for bit; the standalone wait does the same. The control, queued with no wait,
// sees the buffer before the fill (so the check can fail). A flag that is not one int32 is an InputError.
TEST(CudaStreamFlag, HoldsTheCurrentStreamUntilTheOtherStreamSetsIt) {
  REQUIRE_GPU();
  const auto h = randn({128, 768}, 1700).to(torch::kHalf).to(gpu());
  const auto d = randn({128, 768}, 1701).to(torch::kHalf).to(gpu());
  const auto g = randn({768}, 1702).to(torch::kHalf).to(gpu());
  const auto b = randn({768}, 1703).to(torch::kHalf).to(gpu());
  const auto [want_h, want_a] = cuda::add_layer_norm(h, d, g, b, 1e-5);
  const auto i32 = torch::TensorOptions().dtype(torch::kInt32).device(gpu());
  // Every kernel the modes launch, launched once first: with lazy module loading (CUDA's default since 12.2) a
  // kernel's first launch loads its module, which may wait for the kernels already running, here the other stream's
  // spin; then even the control saw the fill (on an H200).
  {
    auto warm_flag = torch::full({1}, 0, i32);
    auto warm = torch::zeros({1 << 20}, torch::TensorOptions().device(gpu()));
    {
      const c10::cuda::CUDAStreamGuard guard(c10::cuda::getStreamFromPool(false, 0));
      at::cuda::sleep(1000);
      warm.fill_(7.0f);
      cuda::set_stream_flag(warm_flag, 1);
    }
    torch::cuda::synchronize();
    cuda::wait_stream_flag(warm_flag, 1);
    cuda::add_layer_norm(h, d, g, b, 1e-5, warm_flag, 1);
    (void)warm.clone();
    torch::cuda::synchronize();
  }
  for (const char* how : {"control", "wait_stream_flag", "add_layer_norm"}) {
    const std::string mode = how;
    auto flag = torch::full({1}, -1, i32);
    auto data = torch::zeros({1 << 20}, torch::TensorOptions().device(gpu()));
    torch::cuda::synchronize();  // the other stream starts after these
    {
      const c10::cuda::CUDAStreamGuard guard(c10::cuda::getStreamFromPool(false, 0));
      at::cuda::sleep(200'000'000);
      data.fill_(7.0f);
      cuda::set_stream_flag(flag, 3);
    }
    torch::Tensor got_h, got_a;
    if (mode == "wait_stream_flag") cuda::wait_stream_flag(flag, 3);
    if (mode == "add_layer_norm") std::tie(got_h, got_a) = cuda::add_layer_norm(h, d, g, b, 1e-5, flag, 3);
    const auto seen = data.clone();
    torch::cuda::synchronize();
    if (mode == "control") {
      EXPECT_TRUE(torch::all(seen == 0.0f).item<bool>()) << "the control saw the fill: the spin is too short";
    } else {
      EXPECT_TRUE(torch::all(seen == 7.0f).item<bool>()) << mode << " let the next kernel run before the flag";
    }
    if (mode == "add_layer_norm") {
      EXPECT_TRUE(torch::equal(got_h, want_h));
      EXPECT_TRUE(torch::equal(got_a, want_a));
    }
  }
  auto expect_input_error = [](const std::function<void()>& f, const std::string& what) {
    try {
      f();
      ADD_FAILURE() << "no error for " << what;
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find("flag"), std::string::npos) << e.what();
    }
  };
  expect_input_error([] { cuda::set_stream_flag(torch::zeros({1}, torch::TensorOptions().device(gpu())), 1); },
                     "a float flag");
  expect_input_error([&] { cuda::add_layer_norm(h, d, g, b, 1e-5, torch::zeros({2}, i32), 1); }, "two flags");
  expect_input_error([] { cuda::wait_stream_flag(torch::zeros({1}, torch::kInt32), 1); }, "a CPU flag");
}

}  // namespace

#endif  // EVALSVC_WITH_CUDA
