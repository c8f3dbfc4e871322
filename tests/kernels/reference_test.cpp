// CPU references of SPEC section 2: codebooks, error bounds per method (STYLE item 7), exactness of the int8
// paths, LLM.int8 with a planted outlier, NF4 packing and double quantization, FP8 over all 256 bit patterns,
// and bad input.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "evalsvc/common/error.h"
#include "evalsvc/kernels/codebooks.h"
#include "evalsvc/kernels/reference.h"

namespace evalsvc::kernels {
namespace {

torch::Tensor seeded_randn(std::vector<int64_t> shape, uint64_t seed) {
  torch::manual_seed(seed);
  return torch::randn(shape);
}

/// bitsandbytes' create_dynamic_map(signed=True) recomputed with scalar float arithmetic (torch.linspace's
/// scalar branch: start + step * i below the midpoint, end - step * (n - 1 - i) above it).
std::vector<float> dynamic_map_recompute() {
  std::vector<float> data;
  for (int i = 0; i < 7; ++i) {
    const int n = (1 << i) + 1;
    const float start = 0.1f, end = 1.0f, step = (end - start) / static_cast<float>(n - 1);
    std::vector<float> b(n);
    for (int k = 0; k < n; ++k) b[k] = k < n / 2 ? start + step * k : end - step * (n - k - 1);
    const float s = static_cast<float>(std::pow(10.0, -6 + i));
    for (int k = 0; k + 1 < n; ++k) {
      const float mean = (b[k] + b[k + 1]) / 2.0f;
      data.push_back(s * mean);
      data.push_back(-s * mean);
    }
  }
  data.push_back(0.0f);
  data.push_back(1.0f);
  std::sort(data.begin(), data.end());
  return data;
}

int32_t ulp_distance(float a, float b) {
  int32_t ia, ib;
  std::memcpy(&ia, &a, 4);
  std::memcpy(&ib, &b, 4);
  if ((ia < 0) != (ib < 0)) return (a == b) ? 0 : std::numeric_limits<int32_t>::max();
  return std::abs(ia - ib);
}

// ---------------------------------------------------------------------------------------------------------
// Codebooks

TEST(Codebooks, Nf4EncodeDecodeAndMidpoints) {
  for (int k = 0; k < 16; ++k) {
    EXPECT_EQ(nf4_decode(static_cast<uint8_t>(k)), kNf4Levels[k]) << k;
    EXPECT_EQ(nf4_encode(kNf4Levels[k]), k) << k;
  }
  EXPECT_EQ(kNf4Levels[kNf4ZeroCode], 0.0f);
  for (int k = 0; k + 1 < 16; ++k) {
    // bitsandbytes' decision tree compares against its decimal midpoints rounded to float. The exact midpoint of
    // two floats is often a rounding tie, so the float threshold may sit one ulp either side of it: the
    // decision must flip within one ulp of the midpoint, not further away.
    const float mid = static_cast<float>((static_cast<double>(kNf4Levels[k]) + kNf4Levels[k + 1]) / 2.0);
    const float below = std::nextafter(std::nextafter(mid, -2.0f), -2.0f);
    const float above = std::nextafter(std::nextafter(mid, 2.0f), 2.0f);
    EXPECT_EQ(nf4_encode(below), k) << "below midpoint " << k;
    EXPECT_EQ(nf4_encode(above), k + 1) << "above midpoint " << k;
  }
  EXPECT_EQ(nf4_encode(-1.5f), 0);
  EXPECT_EQ(nf4_encode(1.5f), 15);
}

TEST(Codebooks, DynamicMapMatchesTheBitsandbytesAlgorithm) {
  const auto recomputed = dynamic_map_recompute();
  ASSERT_EQ(recomputed.size(), 256u);
  int exact = 0;
  for (int i = 0; i < 256; ++i) {
    EXPECT_LE(ulp_distance(kDynamicMapSigned[i], recomputed[i]), 2) << "entry " << i << ": table "
        << kDynamicMapSigned[i] << " recomputed " << recomputed[i];
    exact += kDynamicMapSigned[i] == recomputed[i];
    if (i > 0) EXPECT_LT(kDynamicMapSigned[i - 1], kDynamicMapSigned[i]) << "not ascending at " << i;
  }
  EXPECT_GE(exact, 200);  // only the vectorised-linspace entries may differ in the last bits
  EXPECT_EQ(kDynamicMapSigned[kDynamicMapZeroCode], 0.0f);
  EXPECT_EQ(kDynamicMapSigned[255], 1.0f);
  for (int i = 0; i < 127; ++i) EXPECT_EQ(kDynamicMapSigned[i], -kDynamicMapSigned[254 - i]) << i;
}

TEST(Codebooks, NearestCode256) {
  for (int i = 0; i < 256; ++i) EXPECT_EQ(nearest_code_256(kDynamicMapSigned, kDynamicMapSigned[i]), i) << i;
  for (int i = 0; i + 1 < 256; ++i) {
    const float lo = kDynamicMapSigned[i], hi = kDynamicMapSigned[i + 1];
    EXPECT_EQ(nearest_code_256(kDynamicMapSigned, lo + (hi - lo) * 0.25f), i) << i;
    EXPECT_EQ(nearest_code_256(kDynamicMapSigned, lo + (hi - lo) * 0.75f), i + 1) << i;
  }
  EXPECT_EQ(nearest_code_256(kDynamicMapSigned, -2.0f), 0);
  EXPECT_EQ(nearest_code_256(kDynamicMapSigned, 2.0f), 255);
}

// ---------------------------------------------------------------------------------------------------------
// INT8 symmetric

TEST(Int8Sym, PerTensorAndPerChannelErrorBound) {
  auto w = seeded_randn({37, 67}, 1);
  w[3].mul_(20.0);  // one loud row: per-channel scales must keep the quiet rows precise
  for (bool per_channel : {false, true}) {
    auto q = ref::quantize_int8_sym(w, per_channel);
    ASSERT_EQ(q.q.scalar_type(), torch::kChar);
    ASSERT_EQ(q.scale.size(0), per_channel ? 37 : 1);
    auto err = (ref::dequantize_int8_sym(q) - w).abs();
    auto bound = (q.scale / 2).view({-1, 1}).expand_as(err) * (1 + 1e-6) + 1e-7;
    EXPECT_TRUE((err <= bound).all().item<bool>()) << "per_channel=" << per_channel;
    EXPECT_LE(q.q.abs().max().item<int>(), 127);
    auto expected_scale = per_channel ? w.abs().amax(1) / 127 : w.abs().max().reshape({1}) / 127;
    EXPECT_TRUE(torch::allclose(q.scale, expected_scale));
    if (per_channel) EXPECT_TRUE((q.q.abs().amax(1) == 127).all().item<bool>());
  }
}

TEST(Int8Sym, ZeroRowQuantizesToZeros) {
  auto w = seeded_randn({4, 9}, 2);
  w[1].zero_();
  auto q = ref::quantize_int8_sym(w, true);
  EXPECT_EQ(q.scale[1].item<float>(), 0.0f);
  EXPECT_TRUE((q.q[1] == 0).all().item<bool>());
  EXPECT_TRUE(torch::isfinite(ref::dequantize_int8_sym(q)).all().item<bool>());
}

TEST(Int8Sym, PerTokenErrorBound) {
  auto x = seeded_randn({7, 33}, 3) * 5;
  auto t = ref::quantize_per_token(x);
  auto err = (t.q.to(torch::kFloat) * t.scale.unsqueeze(1) - x).abs();
  EXPECT_TRUE((err <= t.scale.unsqueeze(1) / 2 * (1 + 1e-6) + 1e-7).all().item<bool>());
}

TEST(Int8Sym, ExactAccumulationAgainstInt64) {
  // in = 2053 with large same-sign products: partial sums pass 2^24, where an fp32 accumulator loses bits.
  const int64_t T = 3, out = 5, in = 2053;
  torch::manual_seed(4);
  auto a = torch::randint(100, 128, {T, in}, torch::kChar);
  auto b = torch::randint(100, 128, {out, in}, torch::kChar);
  b[2] = torch::randint(-127, 128, {in}, torch::kChar);
  auto c = ref::int8_matmul_exact(a, b);
  ASSERT_EQ(c.scalar_type(), torch::kInt);
  auto aa = a.accessor<int8_t, 2>();
  auto ba = b.accessor<int8_t, 2>();
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t o = 0; o < out; ++o) {
      int64_t s = 0;
      for (int64_t k = 0; k < in; ++k) s += int64_t{aa[t][k]} * int64_t{ba[o][k]};
      EXPECT_EQ(c[t][o].item<int64_t>(), s) << t << "," << o;
    }
  }
}

TEST(Int8Sym, W8A8MatchesHandComputation) {
  auto w = seeded_randn({37, 67}, 5);
  auto x = seeded_randn({2, 3, 67}, 6);
  auto bias = seeded_randn({37}, 7);
  auto qw = ref::quantize_int8_sym(w, true);
  auto y = ref::int8_w8a8_linear(x, qw, bias);
  ASSERT_EQ(y.sizes(), (std::vector<int64_t>{2, 3, 37}));
  auto x2 = x.reshape({-1, 67});
  auto qx = ref::quantize_per_token(x2);
  // int64 hand computation of C, then the same fp32 epilogue.
  auto c = torch::zeros({6, 37}, torch::kLong);
  auto xa = qx.q.accessor<int8_t, 2>();
  auto wa = qw.q.accessor<int8_t, 2>();
  for (int t = 0; t < 6; ++t) {
    for (int o = 0; o < 37; ++o) {
      int64_t s = 0;
      for (int k = 0; k < 67; ++k) s += int64_t{xa[t][k]} * wa[o][k];
      c[t][o] = s;
    }
  }
  auto expected = c.to(torch::kFloat) * qx.scale.unsqueeze(1) * qw.scale.view({1, -1}) + bias;
  EXPECT_TRUE(torch::equal(y.reshape({6, 37}), expected));
  // And it is a good approximation of the fp32 product.
  auto exact = torch::matmul(x2, w.t()) + bias;
  EXPECT_LT(((y.reshape({6, 37}) - exact).norm() / exact.norm()).item<double>(), 0.02);
}

// ---------------------------------------------------------------------------------------------------------
// LLM.int8

TEST(LlmInt8, WeightErrorBound) {
  auto w = seeded_randn({37, 67}, 8);
  auto q = ref::quantize_llm_int8(w);
  EXPECT_TRUE(torch::allclose(q.SCB, w.abs().amax(1)));
  auto err = (ref::dequantize_llm_int8(q) - w).abs();
  EXPECT_TRUE((err <= (q.SCB / 127 / 2).unsqueeze(1) * (1 + 1e-5) + 1e-7).all().item<bool>());
}

TEST(LlmInt8, PlantedOutlierGoesThroughTheFp16Path) {
  auto w = seeded_randn({24, 40}, 9) * 0.1;
  auto bias = seeded_randn({24}, 10) * 0.1;
  auto x = seeded_randn({5, 40}, 11).clamp(-2, 2);
  x[2][7] = 50.0;  // one huge activation, as bitsandbytes' test_ops plants
  auto qw = ref::quantize_llm_int8(w);
  auto exact = torch::matmul(x, w.t()) + bias;

  auto a6 = ref::quantize_llm_int8_activations(x, 6.0);
  EXPECT_EQ(a6.outlier_cols.nonzero().view({-1}).sizes(), (std::vector<int64_t>{1}));
  EXPECT_TRUE(a6.outlier_cols[7].item<bool>());
  EXPECT_TRUE((a6.q.select(1, 7) == 0).all().item<bool>());
  EXPECT_LT(a6.rowstat[2].item<float>(), 6.0f);  // the outlier does not inflate its row's scale

  auto y6 = ref::llm_int8_linear(x, qw, bias, 6.0);
  auto y0 = ref::llm_int8_linear(x, qw, bias, 0.0);
  auto a0 = ref::quantize_llm_int8_activations(x, 0.0);
  EXPECT_FALSE(a0.outlier_cols.any().item<bool>());
  EXPECT_FLOAT_EQ(a0.rowstat[2].item<float>(), 50.0f);

  const double ref_scale = exact[2].abs().max().item<double>();
  EXPECT_LT((y6[2] - exact[2]).abs().max().item<double>(), 0.01 * ref_scale) << "threshold 6: close to fp32";
  // Against the product with the same dequantized weight, only the activation side differs: threshold 6 keeps
  // the row's scale at ~2/127, threshold 0 stretches it to 50/127.
  auto same_w = torch::matmul(x, ref::dequantize_llm_int8(qw).t()) + bias;
  const double err6 = (y6[2] - same_w[2]).abs().max().item<double>();
  const double err0 = (y0[2] - same_w[2]).abs().max().item<double>();
  EXPECT_GT(err0, 5 * err6) << "threshold 0 quantizes the row with absmax 50 (err0 " << err0 << ", err6 " << err6
                            << ")";
  // Rows without outliers differ between the two only through column 7, which is small there.
  EXPECT_LT((y6 - exact).abs().max().item<double>(), 0.01 * exact.abs().max().item<double>());
}

TEST(LlmInt8, NoOutlierMatchesFormula) {
  auto w = seeded_randn({8, 16}, 12);
  auto x = seeded_randn({3, 16}, 13);
  auto qw = ref::quantize_llm_int8(w);
  auto y = ref::llm_int8_linear(x, qw, torch::Tensor(), 6.0);
  auto a = ref::quantize_llm_int8_activations(x, 6.0);
  auto c = ref::int8_matmul_exact(a.q, qw.CB).to(torch::kFloat);
  EXPECT_TRUE(torch::equal(y, c * a.rowstat.unsqueeze(1) * qw.SCB.unsqueeze(0) / (127.0 * 127.0)));
}

// ---------------------------------------------------------------------------------------------------------
// NF4

TEST(Nf4, PackingOrderHighNibbleFirst) {
  // One block whose absmax is 2: element i is level (i * 5) % 16 times 2, so its code is known.
  std::vector<float> v(64);
  for (int i = 0; i < 64; ++i) v[i] = kNf4Levels[(i * 5) % 16] * 2.0f;
  v[15] = 2.0f;  // absmax (level 15 anyway: (15*5)%16 = 11 -> overwrite keeps absmax = 2)
  auto w = torch::tensor(v).reshape({2, 32});
  auto q = ref::quantize_nf4(w, 64, false);
  ASSERT_EQ(q.packed.numel(), 32);
  EXPECT_FLOAT_EQ(q.absmax[0].item<float>(), 2.0f);
  auto codes = ref::unpack_nf4_codes(q);
  for (int i = 0; i < 64; ++i) {
    const int expected = i == 15 ? 15 : (i * 5) % 16;
    EXPECT_EQ(codes[i].item<int>(), expected) << i;
  }
  const int byte0 = q.packed[0].item<int>();
  EXPECT_EQ(byte0 >> 4, 0);           // element 0 -> code 0 in the high nibble
  EXPECT_EQ(byte0 & 0xF, 5);          // element 1 -> code 5 in the low nibble
  EXPECT_TRUE(torch::equal(ref::dequantize_nf4(q), w));
}

TEST(Nf4, ErrorBoundOddShapeWithPartialLastBlock) {
  auto w = seeded_randn({37, 67}, 14);  // 2479 elements: 38 full blocks of 64 and one of 47
  auto q = ref::quantize_nf4(w, 64, false);
  ASSERT_EQ(q.nblocks(), 39);
  ASSERT_EQ(q.packed.numel(), 1240);
  EXPECT_EQ(q.packed[1239].item<int>() & 0xF, 0);  // the odd element count leaves the last low nibble empty
  // Per code, the worst case is half the larger gap to a neighbouring level.
  std::vector<float> half_gap(16);
  for (int k = 0; k < 16; ++k) {
    const float lo = k > 0 ? kNf4Levels[k] - kNf4Levels[k - 1] : 0.0f;
    const float hi = k < 15 ? kNf4Levels[k + 1] - kNf4Levels[k] : 0.0f;
    half_gap[k] = std::max(lo, hi) / 2;
  }
  auto codes = ref::unpack_nf4_codes(q).to(torch::kLong);
  auto bound = torch::tensor(half_gap).index_select(0, codes) *
               q.absmax.index_select(0, torch::div(torch::arange(2479), 64, "floor")) * (1 + 1e-6) + 1e-7;
  auto err = (ref::dequantize_nf4(q) - w).abs().reshape({-1});
  EXPECT_TRUE((err <= bound).all().item<bool>()) << "max excess " << (err - bound).max().item<float>();
  // The true absmax of the partial last block.
  EXPECT_FLOAT_EQ(q.absmax[38].item<float>(), w.reshape({-1}).slice(0, 2432).abs().max().item<float>());
}

TEST(Nf4, DoubleQuantizationRoundTrip) {
  auto w = seeded_randn({300, 130}, 15);  // 39000 elements -> 610 blocks -> 3 nested blocks (last partial)
  auto plain = ref::quantize_nf4(w, 64, false);
  auto dq = ref::quantize_nf4(w, 64, true);
  ASSERT_TRUE(dq.double_quant());
  EXPECT_EQ(dq.absmax_q.numel(), 610);
  EXPECT_EQ(dq.nested_absmax.numel(), 3);
  EXPECT_FLOAT_EQ(dq.offset, plain.absmax.mean().item<float>());
  EXPECT_TRUE(torch::equal(dq.packed, plain.packed));  // codes use the exact absmax, as bitsandbytes does
  // absmax - offset is quantized with the dynamic map: the largest gap is 0.0141 (near +-1), so the error is at
  // most half of it times the nested absmax of its group.
  auto decoded = ref::nf4_block_absmax(dq);
  auto nested = dq.nested_absmax.index_select(0, torch::div(torch::arange(610), 256, "floor"));
  auto err = (decoded - plain.absmax).abs();
  EXPECT_TRUE((err <= nested * 0.00704 + 1e-6).all().item<bool>()) << err.max().item<float>();
  EXPECT_TRUE(torch::allclose(ref::dequantize_nf4(dq), ref::dequantize_nf4(plain), 0, 0.02));
}

TEST(Nf4, AllZeroBlockAndBadBlocksize) {
  auto w = torch::zeros({2, 64});
  w[1] = seeded_randn({64}, 16);
  auto q = ref::quantize_nf4(w, 64, true);
  auto codes = ref::unpack_nf4_codes(q);
  EXPECT_TRUE((codes.slice(0, 0, 64) == kNf4ZeroCode).all().item<bool>());
  EXPECT_TRUE(torch::isfinite(ref::dequantize_nf4(q)).all().item<bool>());
  for (int64_t bs : {0, 48, 63, 16, 8192}) {
    EXPECT_THROW(ref::quantize_nf4(w, bs, false), InputError) << bs;
  }
  EXPECT_NO_THROW(ref::quantize_nf4(w, 128, false));
  auto bad = q;
  bad.packed = bad.packed.slice(0, 0, 10);
  EXPECT_THROW(ref::dequantize_nf4(bad), InputError);
}

// ---------------------------------------------------------------------------------------------------------
// FP8 E4M3FN

TEST(Fp8, AllBitPatterns) {
  float prev = -1.0f;
  for (int b = 0; b < 256; ++b) {
    const auto bits = static_cast<uint8_t>(b);
    const float v = ref::fp8_e4m3_decode(bits);
    if ((b & 0x7F) == 0x7F) {
      EXPECT_TRUE(std::isnan(v)) << b;
      continue;
    }
    EXPECT_EQ(ref::fp8_e4m3_encode(v), bits) << "round trip of pattern " << b << " value " << v;
    if (b < 0x7F) {
      EXPECT_GT(v, prev) << b;  // positive patterns are ordered
      prev = v;
    }
  }
  EXPECT_EQ(ref::fp8_e4m3_decode(0x7E), 448.0f);
  EXPECT_EQ(ref::fp8_e4m3_decode(0x08), 0.015625f);
  EXPECT_EQ(ref::fp8_e4m3_decode(0x01), std::ldexp(1.0f, -9));
  EXPECT_EQ(ref::fp8_e4m3_decode(0x38), 1.0f);
  EXPECT_TRUE(std::signbit(ref::fp8_e4m3_decode(0x80)));
  EXPECT_EQ(ref::fp8_e4m3_encode(std::numeric_limits<float>::quiet_NaN()), 0x7F);
  EXPECT_EQ(ref::fp8_e4m3_encode(-std::numeric_limits<float>::quiet_NaN()), 0xFF);
  EXPECT_EQ(ref::fp8_e4m3_encode(std::numeric_limits<float>::infinity()), 0x7E);
  EXPECT_EQ(ref::fp8_e4m3_encode(-1000.0f), 0xFE);
  EXPECT_EQ(ref::fp8_e4m3_encode(460.0f), 0x7E);
  EXPECT_EQ(ref::fp8_e4m3_encode(1e-10f), 0x00);
}

TEST(Fp8, RoundsToNearestEven) {
  for (int b = 0; b < 0x7E; ++b) {
    const float lo = ref::fp8_e4m3_decode(static_cast<uint8_t>(b));
    const float hi = ref::fp8_e4m3_decode(static_cast<uint8_t>(b + 1));
    const float mid = (lo + hi) / 2;  // exact in fp32
    const int even = (b % 2 == 0) ? b : b + 1;
    EXPECT_EQ(ref::fp8_e4m3_encode(mid), even) << "tie between " << lo << " and " << hi;
    EXPECT_EQ(ref::fp8_e4m3_encode(std::nextafter(mid, 0.0f)), b);
    EXPECT_EQ(ref::fp8_e4m3_encode(std::nextafter(mid, 1000.0f)), b + 1);
    EXPECT_EQ(ref::fp8_e4m3_encode(-mid), even | 0x80);
  }
}

TEST(Fp8, ChannelWeightRelativeErrorBound) {
  auto w = seeded_randn({37, 67}, 17);
  auto q = ref::quantize_fp8_e4m3_channel(w);
  EXPECT_TRUE(torch::allclose(q.scale, w.abs().amax(1) / 448));
  auto deq = ref::dequantize_fp8(q);
  auto scaled = w.abs() / q.scale.unsqueeze(1);
  auto normal = scaled >= 0.015625;  // E4M3 normals: 3 mantissa bits -> relative error <= 2^-4
  auto rel = (deq - w).abs() / w.abs();
  EXPECT_TRUE((rel.masked_select(normal) <= 0.0625 + 1e-6).all().item<bool>());
  auto abs_sub = ((deq - w).abs() / q.scale.unsqueeze(1)).masked_select(~normal);  // subnormals: half a 2^-9 step
  if (abs_sub.numel() > 0) EXPECT_TRUE((abs_sub <= std::ldexp(1.0, -10) * (1 + 1e-5)).all().item<bool>());
}

TEST(Fp8, W8A8MatchesDecodedProduct) {
  auto w = seeded_randn({37, 67}, 18);
  auto x = seeded_randn({5, 67}, 19);
  auto b = seeded_randn({37}, 20);
  auto qw = ref::quantize_fp8_e4m3_channel(w);
  auto y = ref::fp8_w8a8_linear(x, qw, b);
  auto qx = ref::quantize_fp8_per_token(x);
  auto expected = torch::matmul(ref::fp8_decode(qx.q), ref::fp8_decode(qw.q).t()) * qx.scale.unsqueeze(1) *
                  qw.scale.unsqueeze(0) + b;
  EXPECT_TRUE(torch::allclose(y, expected, 1e-6, 1e-6));
  auto exact = torch::matmul(x, w.t()) + b;
  EXPECT_LT(((y - exact).norm() / exact.norm()).item<double>(), 0.08);
}

// ---------------------------------------------------------------------------------------------------------
// Bad input: typed errors with the bad values, never a crash.

TEST(AddLayerNorm, HandComputedRowAndOneRoundingOfTheSum) {
  // h + delta = [2, 4, 6, 8]: mean 5, biased variance (9 + 1 + 1 + 9) / 4 = 5.
  const auto h = torch::tensor({1.0f, 2.0f, 3.0f, 4.0f}).view({1, 4});
  const auto d = torch::tensor({1.0f, 2.0f, 3.0f, 4.0f}).view({1, 4});
  const auto gamma = torch::tensor({1.0f, 2.0f, 1.0f, 1.0f});
  const auto beta = torch::tensor({0.0f, 0.0f, 0.5f, 0.0f});
  const double eps = 1e-5;
  const auto [h_out, a] = ref::add_layer_norm(h, d, gamma, beta, eps);
  EXPECT_TRUE(torch::equal(h_out, torch::tensor({2.0f, 4.0f, 6.0f, 8.0f}).view({1, 4})));
  const double r = 1.0 / std::sqrt(5.0 + eps);
  const std::vector<double> want = {-3 * r, -1 * r * 2, 1 * r + 0.5, 3 * r};
  for (int c = 0; c < 4; ++c) EXPECT_NEAR(a[0][c].item<double>(), want[c], 1e-6) << "column " << c;
  // fp16: the sum is rounded once to fp16 (2048 + 1 = 2049 is not an fp16 value: ties to even, 2048), and the
  // LayerNorm sees that rounded sum.
  const auto h16 = torch::tensor({2048.0f, 0.0f}).to(torch::kHalf).view({1, 2});
  const auto d16 = torch::tensor({1.0f, 0.0f}).to(torch::kHalf).view({1, 2});
  const auto [s16, a16] = ref::add_layer_norm(h16, d16, torch::ones({2}), torch::zeros({2}), eps);
  EXPECT_EQ(s16.scalar_type(), torch::kHalf);
  EXPECT_EQ(a16.scalar_type(), torch::kHalf);
  EXPECT_EQ(s16[0][0].item<float>(), 2048.0f);
  // Leading dims are kept; mismatched inputs are InputErrors naming the argument.
  EXPECT_EQ(ref::add_layer_norm(torch::ones({2, 3, 4}), torch::ones({2, 3, 4}), gamma, beta, eps).second.sizes(),
            (std::vector<int64_t>{2, 3, 4}));
  EXPECT_THROW(ref::add_layer_norm(h, d.view({4, 1}), gamma, beta, eps), InputError);
  EXPECT_THROW(ref::add_layer_norm(h, d, torch::ones({3}), beta, eps), InputError);
  EXPECT_THROW(ref::add_layer_norm(h, d, gamma, beta, 0.0), InputError);
}

TEST(ReferenceBadInput, ClearInputErrors) {
  auto w = seeded_randn({8, 16}, 21);
  EXPECT_THROW(ref::quantize_int8_sym(torch::ones({8, 16}, torch::kInt), true), InputError);
  EXPECT_THROW(ref::quantize_int8_sym(torch::ones({16}), true), InputError);
  EXPECT_THROW(ref::quantize_int8_sym(torch::zeros({0, 16}), true), InputError);
  auto nan_w = w.clone();
  nan_w[0][0] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THROW(ref::quantize_llm_int8(nan_w), InputError);
  EXPECT_THROW(ref::quantize_fp8_e4m3_channel(nan_w), InputError);
  auto qw = ref::quantize_int8_sym(w, true);
  EXPECT_THROW(ref::int8_w8a8_linear(torch::ones({3, 15}), qw, torch::Tensor()), InputError);
  EXPECT_THROW(ref::int8_w8a8_linear(torch::ones({3, 16}, torch::kLong), qw, torch::Tensor()), InputError);
  EXPECT_THROW(ref::int8_w8a8_linear(torch::ones({3, 16}), qw, torch::ones({7})), InputError);
  EXPECT_THROW(ref::int8_matmul_exact(torch::ones({2, 3}, torch::kChar), torch::ones({2, 4}, torch::kChar)),
               InputError);
  EXPECT_THROW(ref::fp8_decode(torch::ones({3})), InputError);
  EXPECT_THROW(ref::linear_in_dtype(torch::ones({2, 16}), w, torch::Tensor(), torch::kInt), InputError);
  try {
    ref::int8_w8a8_linear(torch::ones({3, 15}), qw, torch::Tensor());
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("[..., 16]"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("[3, 15]"), std::string::npos) << e.what();
  }
  // Non-contiguous activations are accepted and give the contiguous result.
  auto xt = seeded_randn({16, 3}, 22).t();
  ASSERT_FALSE(xt.is_contiguous());
  EXPECT_TRUE(torch::equal(ref::int8_w8a8_linear(xt, qw, torch::Tensor()),
                           ref::int8_w8a8_linear(xt.contiguous(), qw, torch::Tensor())));
}

}  // namespace
}  // namespace evalsvc::kernels
