// Host-side bf16 <-> float conversion on raw uint16_t bits, so the CPU reference and the
// tests need neither cuda_bf16.h nor a CUDA compiler.
#pragma once

#include <cstdint>
#include <cstring>

namespace flashmla::reference {

constexpr uint16_t kBF16QuietNaN = 0x7fc0;

inline float bf16_to_float(uint16_t bits) {
  const uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Round to nearest, ties to even (what the GPU's __float2bfloat16_rn does).
inline uint16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  // A NaN must stay a NaN: rounding could carry its payload into the exponent (-> inf).
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);
  const uint32_t lsb = (u >> 16) & 1u;
  u += 0x7fffu + lsb;
  return static_cast<uint16_t>(u >> 16);
}

}  // namespace flashmla::reference
