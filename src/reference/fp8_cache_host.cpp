#include "reference/fp8_cache_host.h"

#include <cmath>
#include <cstring>

#include "reference/bf16.h"

namespace flashmla::reference {
namespace {

constexpr int kLatent = 512;
constexpr int kRope = 64;
constexpr int kGroups = 4;
constexpr int kGroupDims = kLatent / kGroups;
constexpr int kScaleOffset = kLatent;                    // bytes into a record
constexpr int kRopeOffset = kScaleOffset + 4 * kGroups;  // 528
constexpr float kE4m3Max = 448.f;
constexpr int kMinNormalExp = -6;  // 1 - bias
constexpr int kMantissaBits = 3;

}  // namespace

uint8_t float_to_e4m3(float x) {
  if (std::isnan(x)) return 0x7F;
  const uint8_t sign = std::signbit(x) ? 0x80 : 0x00;
  const float a = std::fabs(x);
  // Everything above the largest finite value rounds either to 448 or past it, and
  // saturation turns the latter into 448 as well.
  if (a >= kE4m3Max) return sign | 0x7E;
  // The spacing of the e4m3 grid around a: 2^(e - 3) for a normal a in [2^e, 2^(e+1)),
  // and the subnormal spacing 2^-9 (e = -6) below 2^-6. Dividing by a power of two is exact,
  // so nearbyint (round to nearest even in the default mode) rounds on the e4m3 grid.
  int e = kMinNormalExp;
  if (a >= std::ldexp(1.f, kMinNormalExp)) {
    int frexp_exp = 0;
    std::frexp(a, &frexp_exp);  // a = f * 2^frexp_exp, f in [0.5, 1)
    e = frexp_exp - 1;
  }
  const int steps = static_cast<int>(std::nearbyint(std::ldexp(a, kMantissaBits - e)));
  // Normal: steps in [8, 16] and the code is exponent field (e + 7) then mantissa steps - 8,
  // i.e. 8 * (e + 7) + steps - 8; steps == 16 (rounded up into the next binade) lands on
  // that binade's first code by the same formula. Subnormal (e = -6): steps in [0, 8] is
  // the code itself (8 being 2^-6, the first normal), again the same formula. a < 448 keeps
  // steps <= 14 at e = 8, so the largest code is 0x7E.
  return sign | static_cast<uint8_t>(8 * (e + 6) + steps);
}

float e4m3_to_float(uint8_t code) {
  const int exp_field = (code >> 3) & 0xF;
  const int mantissa = code & 0x7;
  if (exp_field == 0xF && mantissa == 0x7) return std::nanf("");
  const float magnitude = exp_field == 0 ? std::ldexp(static_cast<float>(mantissa), -9)
                                         : std::ldexp(1.f + mantissa / 8.f, exp_field - 7);
  return (code & 0x80) ? -magnitude : magnitude;
}

void quantize_kv_fp8_host(const uint16_t* src, int64_t src_stride, uint8_t* dst,
                          int64_t dst_stride, int64_t n_tokens) {
  for (int64_t t = 0; t < n_tokens; ++t) {
    const uint16_t* row = src + t * src_stride;
    uint8_t* rec = dst + t * dst_stride;
    for (int g = 0; g < kGroups; ++g) {
      float amax = 0.f;
      // A comparison is false for any NaN, so no NaN becomes the group's scale. (std::fmax
      // would do for quiet NaNs only: glibc returns NaN for a signalling one, and bf16
      // patterns such as 0x7F81 widen to fp32 signalling NaNs.)
      for (int d = g * kGroupDims; d < (g + 1) * kGroupDims; ++d) {
        const float a = std::fabs(bf16_to_float(row[d]));
        if (a > amax) amax = a;
      }
      const float scale = amax == 0.f ? 1.f : amax / kE4m3Max;
      std::memcpy(rec + kScaleOffset + 4 * g, &scale, sizeof scale);
      for (int d = g * kGroupDims; d < (g + 1) * kGroupDims; ++d)
        rec[d] = float_to_e4m3(bf16_to_float(row[d]) / scale);
    }
    std::memcpy(rec + kRopeOffset, row + kLatent, kRope * sizeof(uint16_t));
  }
}

void dequantize_kv_fp8_host(const uint8_t* src, int64_t src_stride, uint16_t* dst,
                            int64_t dst_stride, int64_t n_tokens) {
  for (int64_t t = 0; t < n_tokens; ++t) {
    const uint8_t* rec = src + t * src_stride;
    uint16_t* row = dst + t * dst_stride;
    for (int d = 0; d < kLatent; ++d) {
      float scale;
      std::memcpy(&scale, rec + kScaleOffset + 4 * (d / kGroupDims), sizeof scale);
      row[d] = float_to_bf16(e4m3_to_float(rec[d]) * scale);
    }
    std::memcpy(row + kLatent, rec + kRopeOffset, kRope * sizeof(uint16_t));
  }
}

}  // namespace flashmla::reference
