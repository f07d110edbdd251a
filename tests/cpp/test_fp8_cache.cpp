// FP8 KV-cache conversion (KvFormat::kFP8WithScale).
//
// Fp8Host*: the host twin (src/reference/fp8_cache_host.*) against the e4m3 bit definition,
// a brute-force nearest search and the format's error bound. Fp8CacheArgs: argument checks of
// quantize_kv_fp8 / dequantize_kv_fp8, which throw before any launch and so run without a
// GPU (fake, never dereferenced addresses). Fp8CacheGpu: the kernels against the host twin,
// bit for bit; skipped with the reason when there is no sm_90 device.
#include <gtest/gtest.h>

#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "flashmla/flashmla.h"
#include "gpu_test_util.h"
#include "reference/bf16.h"
#include "reference/fp8_cache_host.h"
#include "sm90/small_config.h"

namespace {

using flashmla::kFp8TokenBytes;
using flashmla::kHeadDim;
using flashmla::reference::bf16_to_float;
using flashmla::reference::dequantize_kv_fp8_host;
using flashmla::reference::e4m3_to_float;
using flashmla::reference::float_to_bf16;
using flashmla::reference::float_to_e4m3;
using flashmla::reference::quantize_kv_fp8_host;
using flashmla::test::ck;
using flashmla::test::DeviceBuffer;
using flashmla::test::GpuTest;
using flashmla::test::to_device;

constexpr int kLatent = 512;
constexpr int kGroup = flashmla::kFp8ScaleGroup;
constexpr int kScaleOffset = 512;
constexpr int kRopeOffset = 528;
constexpr uint16_t kBf16Of448 = 0x43E0;

float record_scale(const uint8_t* rec, int g) {
  float s;
  std::memcpy(&s, rec + kScaleOffset + 4 * g, sizeof s);
  return s;
}

// ---------------------------------------------------------------------------------------
// e4m3 on the host

// `fixed`, then 2000 positive floats spread over the binades from subnormal to 2^127 (seeded).
std::vector<float> with_random_binades(std::vector<float> fixed, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> ex(-140.f, 127.f);
  for (int i = 0; i < 2000; ++i)
    fixed.push_back(std::ldexp(1.f + (rng() % 1000) / 1000.f, static_cast<int>(ex(rng))));
  return fixed;
}

// The power of two the small-head kernel scales a Q row by before writing it as e4m3 terms
// (sm90/small_config.h): the row's largest |q| lands in (224, 448] wherever 2^k can reach it,
// and 2^k, 2^-k are normal floats for every input, down to the smallest subnormal (where
// 448 / mx overflows: the NaN the first version of the rule produced).
TEST(Fp8Host, SmallKernelQScaleIsAFinitePowerOfTwo) {
  using flashmla::sm90::small_pow2;
  using flashmla::sm90::small_q_scale_exponent;
  const std::vector<float> mx = with_random_binades(
      {std::numeric_limits<float>::denorm_min(), 1e-40f, 1.2e-36f, 1e-30f, 1e-3f, 0.5f, 1.f, 1.5f, 223.99f,
       224.f, 224.01f, 447.f, 448.f, 448.5f, 449.f, 511.f, 512.f, 1e6f, 3.3895314e38f,
       std::numeric_limits<float>::max()},
      11);
  for (float m : mx) {
    const int k = small_q_scale_exponent(m);
    ASSERT_GE(k, -126) << m;
    ASSERT_LE(k, 126) << m;
    const float s = small_pow2(k), inv = small_pow2(-k);
    EXPECT_EQ(s, std::ldexp(1.f, k)) << m;
    EXPECT_EQ(s * inv, 1.f) << m;
    const float x = m * s;
    EXPECT_TRUE(std::isfinite(x)) << m;
    EXPECT_LE(x, 448.f) << m;
    if (k > -126 && k < 126) EXPECT_GT(x, 224.f) << m;
  }
  for (float m : {0.f, -1.f, std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN()})
    EXPECT_EQ(small_q_scale_exponent(m), 0) << m;
}

// The FP8 small-head kernel's P^T bound: 2^e above every scale it covers, e in [-125, 126]
// (2^e and 2^-e normal floats), at most 2x too large in the normal range.
TEST(Fp8Host, SmallKernelScaleBoundIsAPowerOfTwoAbove) {
  using flashmla::sm90::small_pow2;
  using flashmla::sm90::small_scale_bound_exponent;
  const std::vector<float> xs = with_random_binades(
      {std::numeric_limits<float>::denorm_min(), 1e-40f, 1e-38f, 2.4e-38f, 1e-30f, 1e-3f, 0.5f, 0.75f, 1.f, 1.5f,
       448.f, 1e30f, 8.5e37f, 1e38f, std::numeric_limits<float>::max()},
      12);
  for (float x : xs) {
    const int e = small_scale_bound_exponent(x);
    ASSERT_GE(e, -125) << x;
    ASSERT_LE(e, 126) << x;
    const float b = small_pow2(e);
    EXPECT_EQ(b * small_pow2(-e), 1.f) << x;
    if (e < 126) {
      EXPECT_GT(b, x) << x;
      if (e > -125) EXPECT_LE(b, 2.f * x) << x;
    } else {
      EXPECT_GE(4.f * b, x) << x;  // P^T <= 4 P
    }
  }
  EXPECT_EQ(small_scale_bound_exponent(std::numeric_limits<float>::infinity()), 126);
}

TEST(Fp8HostE4m3, EveryCodeRoundTrips) {
  for (int c = 0; c < 256; ++c) {
    const auto code = static_cast<uint8_t>(c);
    const float v = e4m3_to_float(code);
    if ((c & 0x7F) == 0x7F) {
      EXPECT_TRUE(std::isnan(v)) << "code " << c;
      continue;
    }
    EXPECT_EQ(float_to_e4m3(v), code) << "code " << c << " value " << v;
  }
  // The positive codes are strictly increasing, so no two codes share a value.
  for (int c = 1; c < 0x7F; ++c) EXPECT_LT(e4m3_to_float(c - 1), e4m3_to_float(c)) << c;
}

TEST(Fp8HostE4m3, KnownValues) {
  EXPECT_EQ(e4m3_to_float(0x00), 0.f);
  EXPECT_TRUE(std::signbit(e4m3_to_float(0x80)));
  EXPECT_EQ(e4m3_to_float(0x01), std::ldexp(1.f, -9));  // smallest subnormal
  EXPECT_EQ(e4m3_to_float(0x07), 7 * std::ldexp(1.f, -9));
  EXPECT_EQ(e4m3_to_float(0x08), std::ldexp(1.f, -6));  // smallest normal
  EXPECT_EQ(e4m3_to_float(0x38), 1.f);
  EXPECT_EQ(e4m3_to_float(0x3C), 1.5f);
  EXPECT_EQ(e4m3_to_float(0x40), 2.f);
  EXPECT_EQ(e4m3_to_float(0x7E), 448.f);
  EXPECT_EQ(e4m3_to_float(0xFE), -448.f);
  EXPECT_EQ(e4m3_to_float(0xB8), -1.f);

  EXPECT_EQ(float_to_e4m3(1.f), 0x38);
  EXPECT_EQ(float_to_e4m3(-0.f), 0x80);
  EXPECT_EQ(float_to_e4m3(1.0625f), 0x38);  // tie between 1 and 1.125: even mantissa
  EXPECT_EQ(float_to_e4m3(1.1875f), 0x3A);  // tie between 1.125 and 1.25: even is 1.25
  EXPECT_EQ(float_to_e4m3(1.07f), 0x39);
  EXPECT_EQ(float_to_e4m3(std::ldexp(1.f, -10)), 0x00);      // half the smallest subnormal
  EXPECT_EQ(float_to_e4m3(-std::ldexp(1.f, -10)), 0x80);     // rounds to -0
  EXPECT_EQ(float_to_e4m3(std::ldexp(3.f, -10)), 0x02);      // tie between 1 and 2 steps
  EXPECT_EQ(float_to_e4m3(std::ldexp(1.f, -10) * 1.01f), 0x01);
  EXPECT_EQ(float_to_e4m3(std::ldexp(15.f, -10)), 0x08);     // 7.5 steps rounds up to 2^-6
  EXPECT_EQ(float_to_e4m3(15.5f), 0x58);                     // tie 15 / 16: 16 (exp 11, m 0)
  EXPECT_EQ(float_to_e4m3(std::numeric_limits<float>::denorm_min()), 0x00);
  EXPECT_EQ(float_to_e4m3(std::nanf("")), 0x7F);
  EXPECT_EQ(float_to_e4m3(-std::nanf("")), 0x7F);
}

TEST(Fp8HostE4m3, SaturatesToMaxFinite) {
  const float inf = std::numeric_limits<float>::infinity();
  for (float x : {448.f, 448.5f, 463.9f, 464.f, 480.f, 1e6f, 3e38f, inf}) {
    EXPECT_EQ(float_to_e4m3(x), 0x7E) << x;
    EXPECT_EQ(float_to_e4m3(-x), 0xFE) << -x;
  }
  EXPECT_EQ(float_to_e4m3(447.f), 0x7E);   // nearest is 448
  EXPECT_EQ(float_to_e4m3(415.f), 0x7D);   // nearest is 416 = 1.625 * 2^8
}

// The e4m3 grid's nearest point by brute force over all finite codes, ties to the even
// code: an oracle that shares nothing with float_to_e4m3's exponent arithmetic.
uint8_t nearest_e4m3_brute_force(float x) {
  const float a = std::fabs(x);
  int best = 0;
  for (int c = 1; c <= 0x7E; ++c) {
    const double d = std::fabs(double(e4m3_to_float(c)) - a);
    const double best_d = std::fabs(double(e4m3_to_float(best)) - a);
    if (d < best_d || (d == best_d && c % 2 == 0)) best = c;
  }
  return static_cast<uint8_t>(best | (std::signbit(x) ? 0x80 : 0));
}

TEST(Fp8HostE4m3, MatchesBruteForceNearest) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> mantissa(1.f, 2.f);
  std::uniform_int_distribution<int> exponent(-12, 8);
  std::vector<float> xs;
  for (int i = 0; i < 20000; ++i) {
    const float x = std::ldexp(mantissa(rng), exponent(rng));
    if (x <= 448.f) xs.push_back(rng() % 2 ? x : -x);
  }
  // Every midpoint between neighbouring codes, and its two float neighbours.
  for (int c = 0; c < 0x7E; ++c) {
    const float mid = 0.5f * (e4m3_to_float(c) + e4m3_to_float(c + 1));
    for (float x : {mid, std::nextafter(mid, 0.f), std::nextafter(mid, 1e9f)}) xs.push_back(x);
  }
  for (float x : xs) ASSERT_EQ(float_to_e4m3(x), nearest_e4m3_brute_force(x)) << x;
}

// ---------------------------------------------------------------------------------------
// Token records on the host

std::vector<uint16_t> random_rows(int n, int64_t stride, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::uniform_int_distribution<int> exponent(-20, 20);
  std::vector<uint16_t> rows(n * stride, 0xFFFF);  // padding: NaN
  for (int t = 0; t < n; ++t)
    for (int g = 0; g < kHeadDim / kGroup + 1; ++g) {
      const float magnitude = std::ldexp(1.f, exponent(rng));  // groups differ in scale
      for (int d = g * kGroup; d < std::min((g + 1) * kGroup, kHeadDim); ++d)
        rows[t * stride + d] = float_to_bf16(magnitude * normal(rng));
    }
  return rows;
}

TEST(Fp8HostRecord, ScaleIsGroupMaxOver448) {
  const auto rows = random_rows(4, kHeadDim, 1);
  std::vector<uint8_t> rec(4 * kFp8TokenBytes);
  quantize_kv_fp8_host(rows.data(), kHeadDim, rec.data(), kFp8TokenBytes, 4);
  for (int t = 0; t < 4; ++t)
    for (int g = 0; g < 4; ++g) {
      float amax = 0.f;
      int argmax = 0;
      for (int d = g * kGroup; d < (g + 1) * kGroup; ++d) {
        const float a = std::fabs(bf16_to_float(rows[t * kHeadDim + d]));
        if (a > amax) amax = a, argmax = d;
      }
      EXPECT_EQ(record_scale(&rec[t * kFp8TokenBytes], g), amax / 448.f);
      // The group's largest element lands on the top code.
      EXPECT_EQ(rec[t * kFp8TokenBytes + argmax] & 0x7F, 0x7E);
    }
}

TEST(Fp8HostRecord, ZeroGroupHasScaleOne) {
  auto rows = random_rows(1, kHeadDim, 2);
  for (int d = kGroup; d < 2 * kGroup; ++d) rows[d] = d % 2 ? 0x8000 : 0x0000;  // +-0
  std::vector<uint8_t> rec(kFp8TokenBytes);
  quantize_kv_fp8_host(rows.data(), kHeadDim, rec.data(), kFp8TokenBytes, 1);
  EXPECT_EQ(record_scale(rec.data(), 1), 1.f);
  for (int d = kGroup; d < 2 * kGroup; ++d) EXPECT_EQ(rec[d], d % 2 ? 0x80 : 0x00) << d;
  std::vector<uint16_t> back(kHeadDim);
  dequantize_kv_fp8_host(rec.data(), kFp8TokenBytes, back.data(), kHeadDim, 1);
  for (int d = kGroup; d < 2 * kGroup; ++d) EXPECT_EQ(back[d], rows[d]) << d;
}

// Quiet and signalling NaNs of either sign (bf16 0x7F81 widens to an fp32 signalling NaN)
// are left out of the group max, wherever they sit, and encode as 0x7F.
TEST(Fp8HostRecord, NanDoesNotSetScale) {
  std::vector<uint16_t> row(kHeadDim, 0);
  for (int d = 0; d < kLatent; ++d) row[d] = float_to_bf16(d % kGroup == 64 ? -224.f : 1.f);
  const uint16_t nans[] = {0x7FC0, 0xFFC0, 0x7F81, 0xFF81};
  for (int g = 0; g < 4; ++g) row[g * kGroup + 2 + 40 * g] = nans[g];  // before, after the max
  std::vector<uint8_t> rec(kFp8TokenBytes);
  quantize_kv_fp8_host(row.data(), kHeadDim, rec.data(), kFp8TokenBytes, 1);
  for (int g = 0; g < 4; ++g) {
    EXPECT_EQ(record_scale(rec.data(), g), 0.5f) << g;
    EXPECT_EQ(rec[g * kGroup + 2 + 40 * g], 0x7F) << g;
    EXPECT_EQ(rec[g * kGroup + 64], 0xFE) << g;  // -224 / 0.5 = -448
  }
}

// q = x / s is within 2^-4 relative of its code when normal in e4m3, within 2^-10 absolute
// when subnormal; then fp32 and bf16 (2^-8) rounding of code * s. So per element
// |dequant - x| <= |x| (2^-4 + 2^-7) + s 2^-9 covers every term with room to spare.
TEST(Fp8HostRecord, RoundTripErrorBound) {
  const int n = 64;
  const auto rows = random_rows(n, kHeadDim, 3);
  std::vector<uint8_t> rec(n * kFp8TokenBytes);
  std::vector<uint16_t> back(n * kHeadDim);
  quantize_kv_fp8_host(rows.data(), kHeadDim, rec.data(), kFp8TokenBytes, n);
  dequantize_kv_fp8_host(rec.data(), kFp8TokenBytes, back.data(), kHeadDim, n);
  double worst_rel = 0;
  for (int t = 0; t < n; ++t)
    for (int d = 0; d < kLatent; ++d) {
      const float x = bf16_to_float(rows[t * kHeadDim + d]);
      const float y = bf16_to_float(back[t * kHeadDim + d]);
      const float s = record_scale(&rec[t * kFp8TokenBytes], d / kGroup);
      ASSERT_LE(std::fabs(y - x), std::fabs(x) * (0x1p-4f + 0x1p-7f) + s * 0x1p-9f)
          << "token " << t << " dim " << d << " x " << x << " y " << y << " scale " << s;
      if (std::fabs(x) > s) worst_rel = std::max(worst_rel, double(std::fabs(y - x) / std::fabs(x)));
    }
  EXPECT_GT(worst_rel, 0x1p-6);  // the bound is not vacuous: rounding happened
}

TEST(Fp8HostRecord, RopeIsBitExactAndPaddingUntouched) {
  const int n = 3;
  const int64_t row_stride = 640, rec_stride = 672;
  std::mt19937 rng(4);
  std::vector<uint16_t> rows(n * row_stride, 0x1234);
  for (auto& v : rows) v = static_cast<uint16_t>(rng());  // RoPE: any bits, NaN / inf too
  for (int t = 0; t < n; ++t)
    for (int d = 0; d < kLatent; ++d) rows[t * row_stride + d] = float_to_bf16(0.5f * d - 100.f);
  std::vector<uint8_t> rec(n * rec_stride, 0xAB);
  quantize_kv_fp8_host(rows.data(), row_stride, rec.data(), rec_stride, n);
  std::vector<uint16_t> back(n * row_stride, 0xCDEF);
  dequantize_kv_fp8_host(rec.data(), rec_stride, back.data(), row_stride, n);
  for (int t = 0; t < n; ++t) {
    EXPECT_EQ(0, std::memcmp(&rec[t * rec_stride + kRopeOffset], &rows[t * row_stride + kLatent], 128));
    for (int d = kLatent; d < kHeadDim; ++d) EXPECT_EQ(back[t * row_stride + d], rows[t * row_stride + d]);
    for (int b = kFp8TokenBytes; b < rec_stride; ++b) EXPECT_EQ(rec[t * rec_stride + b], 0xAB);
    for (int d = kHeadDim; d < row_stride; ++d) EXPECT_EQ(back[t * row_stride + d], 0xCDEF);
  }
}

// ---------------------------------------------------------------------------------------
// Argument checks (no GPU needed: they throw before the launch)

void* fake(uintptr_t address) { return reinterpret_cast<void*>(address); }

void expect_error(const std::function<void()>& call, const std::string& expected) {
  try {
    call();
    ADD_FAILURE() << "no error, expected \"" << expected << "\"";
  } catch (const flashmla::Error& e) {
    EXPECT_NE(std::string(e.what()).find(expected), std::string::npos)
        << "got \"" << e.what() << "\", expected \"" << expected << "\"";
  }
}

TEST(Fp8CacheArgs, Quantize) {
  void* src = fake(0x100000);
  void* dst = fake(0x900000);
  const auto q = [&](const void* s, int64_t ss, void* d, int64_t ds, int64_t n) {
    return [=] { flashmla::quantize_kv_fp8(s, ss, d, ds, n, nullptr); };
  };
  expect_error(q(src, 576, dst, 656, -1), "n_tokens must be >= 0, got -1");
  expect_error(q(nullptr, 576, dst, 656, 4), "src_bf16 must not be null");
  expect_error(q(src, 576, nullptr, 656, 4), "dst_fp8 must not be null");
  expect_error(q(fake(0x100008), 576, dst, 656, 4), "src_bf16 must be 16-byte aligned");
  expect_error(q(src, 576, fake(0x900004), 656, 4), "dst_fp8 must be 16-byte aligned");
  expect_error(q(src, 575, dst, 656, 4), "src_stride must be >= 576, got 575");
  expect_error(q(src, 580, dst, 656, 4), "src_stride must be a multiple of 8 elements (16 bytes), got 580");
  expect_error(q(src, 576, dst, 640, 4), "dst_stride must be >= 656, got 640");
  expect_error(q(src, 576, dst, 660, 4), "dst_stride must be a multiple of 16 bytes, got 660");
  expect_error(q(src, int64_t{1} << 62, dst, 656, 4), "src_stride is too large");
  expect_error(q(src, 576, fake(0x100000 + 4 * 1152 - 16), 656, 4), "dst_fp8 must not overlap src_bf16");
  EXPECT_NO_THROW(flashmla::quantize_kv_fp8(nullptr, 0, nullptr, 0, 0, nullptr));  // empty: no-op
}

TEST(Fp8CacheArgs, Dequantize) {
  void* src = fake(0x100000);
  void* dst = fake(0x900000);
  const auto dq = [&](const void* s, int64_t ss, void* d, int64_t ds, int64_t n) {
    return [=] { flashmla::dequantize_kv_fp8(s, ss, d, ds, n, nullptr); };
  };
  expect_error(dq(src, 656, dst, 576, -5), "n_tokens must be >= 0, got -5");
  expect_error(dq(nullptr, 656, dst, 576, 4), "src_fp8 must not be null");
  expect_error(dq(src, 656, nullptr, 576, 4), "dst_bf16 must not be null");
  expect_error(dq(fake(0x100001), 656, dst, 576, 4), "src_fp8 must be 16-byte aligned");
  expect_error(dq(src, 656, fake(0x900002), 576, 4), "dst_bf16 must be 16-byte aligned");
  expect_error(dq(src, 576, dst, 576, 4), "src_stride must be >= 656, got 576");
  expect_error(dq(src, 664, dst, 576, 4), "src_stride must be a multiple of 16 bytes, got 664");
  expect_error(dq(src, 656, dst, 512, 4), "dst_stride must be >= 576, got 512");
  expect_error(dq(src, 656, dst, 577, 4), "dst_stride must be a multiple of 8 elements (16 bytes), got 577");
  expect_error(dq(src, 656, fake(0x900000), int64_t{1} << 61, 8), "dst_stride is too large");
  expect_error(dq(src, 656, fake(0x100000 - 16), 576, 4), "dst_bf16 must not overlap src_fp8");
  EXPECT_NO_THROW(flashmla::dequantize_kv_fp8(nullptr, 0, nullptr, 0, 0, nullptr));
}

// ---------------------------------------------------------------------------------------
// GPU kernels against the host twin

class Fp8CacheGpu : public GpuTest {};

std::vector<uint8_t> quantize_on_gpu(const std::vector<uint16_t>& rows, int64_t row_stride,
                                     int64_t rec_stride, int64_t n, cudaStream_t stream = nullptr) {
  const DeviceBuffer<uint16_t> src = to_device(rows);
  const DeviceBuffer<uint8_t> dst = to_device(std::vector<uint8_t>(n * rec_stride, 0xAB));
  flashmla::quantize_kv_fp8(src.get(), row_stride, dst.get(), rec_stride, n, stream);
  ck(cudaStreamSynchronize(stream), "quantize_kv_fp8");
  return dst.download();
}

std::vector<uint16_t> dequantize_on_gpu(const std::vector<uint8_t>& recs, int64_t rec_stride,
                                        int64_t row_stride, int64_t n) {
  const DeviceBuffer<uint8_t> src = to_device(recs);
  const DeviceBuffer<uint16_t> dst = to_device(std::vector<uint16_t>(n * row_stride, 0xCDEF));
  flashmla::dequantize_kv_fp8(src.get(), rec_stride, dst.get(), row_stride, n, nullptr);
  ck(cudaDeviceSynchronize(), "dequantize_kv_fp8");
  return dst.download();
}

void expect_same_records(const std::vector<uint8_t>& gpu, const std::vector<uint8_t>& host, int64_t stride) {
  ASSERT_EQ(gpu.size(), host.size());
  int reported = 0;
  for (size_t i = 0; i < gpu.size() && reported < 10; ++i)
    if (gpu[i] != host[i]) {
      ADD_FAILURE() << "token " << i / stride << " byte " << i % stride << ": gpu 0x" << std::hex
                    << int(gpu[i]) << ", host 0x" << int(host[i]);
      ++reported;
    }
}

// Bit-equal, except that any two NaNs match (payloads of converted NaNs are unspecified).
void expect_same_rows(const std::vector<uint16_t>& gpu, const std::vector<uint16_t>& host, int64_t stride) {
  ASSERT_EQ(gpu.size(), host.size());
  int reported = 0;
  for (size_t i = 0; i < gpu.size() && reported < 10; ++i) {
    const bool both_nan = std::isnan(bf16_to_float(gpu[i])) && std::isnan(bf16_to_float(host[i]));
    if (gpu[i] != host[i] && !both_nan) {
      ADD_FAILURE() << "token " << i / stride << " dim " << i % stride << ": gpu 0x" << std::hex
                    << gpu[i] << ", host 0x" << host[i];
      ++reported;
    }
  }
}

// Rows whose groups span the bf16 range: each group has its own magnitude (2^-130, in the
// subnormals, to 2^120), some groups are all zero (+-0), some hold a single value, some are
// bf16 subnormals whose scale is an fp32 subnormal.
std::vector<uint16_t> hostile_rows(int n, int64_t stride, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::uniform_int_distribution<int> exponent(-130, 120);
  std::vector<uint16_t> rows(n * stride, 0x7FC1);  // padding: NaN, must not reach a scale
  for (int t = 0; t < n; ++t) {
    uint16_t* row = &rows[t * stride];
    for (int g = 0; g < 4; ++g) {
      const int kind = rng() % 8;
      const float magnitude = std::ldexp(1.f, kind == 0 ? -133 + int(rng() % 6) : exponent(rng));
      const int single = g * kGroup + int(rng() % kGroup);
      for (int d = g * kGroup; d < (g + 1) * kGroup; ++d) {
        if (kind == 1) row[d] = rng() % 2 ? 0x8000 : 0x0000;
        else if (kind == 2) row[d] = d == single ? float_to_bf16(-3.5f) : 0;
        else row[d] = float_to_bf16(magnitude * normal(rng));
      }
    }
    for (int d = kLatent; d < kHeadDim; ++d) row[d] = static_cast<uint16_t>(rng());
  }
  return rows;
}

TEST_F(Fp8CacheGpu, QuantizeMatchesHost) {
  struct Case {
    int n;
    int64_t row_stride, rec_stride;
  };
  for (const Case c : {Case{1, 576, 656}, Case{37, 576, 656}, Case{1001, 584, 672}, Case{300, 1152, 1024}}) {
    SCOPED_TRACE("n " + std::to_string(c.n) + " strides " + std::to_string(c.row_stride) + "/" +
                 std::to_string(c.rec_stride));
    const auto rows = hostile_rows(c.n, c.row_stride, c.n);
    std::vector<uint8_t> host(c.n * c.rec_stride, 0xAB);  // padding must stay as the GPU's
    quantize_kv_fp8_host(rows.data(), c.row_stride, host.data(), c.rec_stride, c.n);
    expect_same_records(quantize_on_gpu(rows, c.row_stride, c.rec_stride, c.n), host, c.rec_stride);
  }
}

// Each group's first element is 448, so its scale is exactly 1 and every other element is
// converted as is: that walks the e4m3 conversion through every bf16 value of magnitude
// <= 448 (subnormals, +-0, the saturating 448..., NaNs), against the host's.
TEST_F(Fp8CacheGpu, QuantizeEveryBf16AtUnitScale) {
  std::vector<uint16_t> values;
  for (uint32_t b = 0; b < 0x10000; ++b) {
    const float x = bf16_to_float(static_cast<uint16_t>(b));
    if (std::isnan(x) || std::fabs(x) <= 448.f) values.push_back(static_cast<uint16_t>(b));
  }
  const int per_token = 4 * (kGroup - 1);
  const int n = static_cast<int>((values.size() + per_token - 1) / per_token);
  std::vector<uint16_t> rows(n * kHeadDim, 0);
  size_t next = 0;
  for (int t = 0; t < n; ++t)
    for (int d = 0; d < kLatent; ++d)
      rows[t * kHeadDim + d] = d % kGroup == 0 ? kBf16Of448 : next < values.size() ? values[next++] : 0;
  std::vector<uint8_t> host(n * kFp8TokenBytes);
  quantize_kv_fp8_host(rows.data(), kHeadDim, host.data(), kFp8TokenBytes, n);
  for (int t = 0; t < n; ++t)
    for (int g = 0; g < 4; ++g) ASSERT_EQ(record_scale(&host[t * kFp8TokenBytes], g), 1.f);
  expect_same_records(quantize_on_gpu(rows, kHeadDim, kFp8TokenBytes, n), host, kFp8TokenBytes);
}

// Non-finite inputs follow the documented rule on both sides: a NaN does not set the scale
// and encodes as 0x7F, an infinity makes the scale infinite.
TEST_F(Fp8CacheGpu, NonFiniteInputsMatchHost) {
  auto rows = hostile_rows(2, kHeadDim, 11);
  rows[5] = 0x7FC0;               // NaN in group 0
  rows[kGroup + 9] = 0xFF81;      // negative signalling-pattern NaN in group 1
  rows[2 * kGroup + 1] = 0x7F80;  // +inf in group 2
  rows[kHeadDim + 3 * kGroup] = 0xFF80;  // -inf in token 1, group 3
  std::vector<uint8_t> host(2 * kFp8TokenBytes);
  quantize_kv_fp8_host(rows.data(), kHeadDim, host.data(), kFp8TokenBytes, 2);
  expect_same_records(quantize_on_gpu(rows, kHeadDim, kFp8TokenBytes, 2), host, kFp8TokenBytes);
}

// Random records: every code (NaN codes too) against scales over the fp32 range, so that
// products are fp32 subnormal, overflow to inf, or round in bf16 at every exponent.
TEST_F(Fp8CacheGpu, DequantizeMatchesHost) {
  const int n = 777;
  const int64_t rec_stride = 688, row_stride = 592;
  std::mt19937 rng(5);
  std::uniform_int_distribution<int> exponent(-149, 127);
  std::uniform_real_distribution<float> mantissa(1.f, 2.f);
  std::vector<uint8_t> recs(n * rec_stride);
  for (auto& b : recs) b = static_cast<uint8_t>(rng());
  for (int t = 0; t < n; ++t) {
    uint8_t* rec = &recs[t * rec_stride];
    if (t == 0)
      for (int d = 0; d < kLatent; ++d) rec[d] = static_cast<uint8_t>(d);  // each code twice
    for (int g = 0; g < 4; ++g) {
      const float scale = t % 5 == 0 ? 1.f : std::ldexp(mantissa(rng), exponent(rng));
      std::memcpy(rec + kScaleOffset + 4 * g, &scale, sizeof scale);
    }
  }
  std::vector<uint16_t> host(n * row_stride, 0xCDEF);
  dequantize_kv_fp8_host(recs.data(), rec_stride, host.data(), row_stride, n);
  expect_same_rows(dequantize_on_gpu(recs, rec_stride, row_stride, n), host, row_stride);
}

TEST_F(Fp8CacheGpu, RoundTripOnStreamMatchesHost) {
  const int n = 20000;
  const int64_t row_stride = 576, rec_stride = 656;
  const auto rows = hostile_rows(n, row_stride, 6);
  cudaStream_t stream = nullptr;
  ck(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
  const auto recs = quantize_on_gpu(rows, row_stride, rec_stride, n, stream);
  ck(cudaStreamDestroy(stream), "cudaStreamDestroy");
  std::vector<uint8_t> host_recs(n * rec_stride);
  quantize_kv_fp8_host(rows.data(), row_stride, host_recs.data(), rec_stride, n);
  expect_same_records(recs, host_recs, rec_stride);
  std::vector<uint16_t> host_rows(n * row_stride);
  dequantize_kv_fp8_host(host_recs.data(), rec_stride, host_rows.data(), row_stride, n);
  expect_same_rows(dequantize_on_gpu(recs, rec_stride, row_stride, n), host_rows, row_stride);
}

}  // namespace
