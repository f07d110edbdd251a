// The FP8-with-scale token record (KvFormat::kFP8WithScale, layout in flashmla.h): byte
// offsets and the e4m3 -> bf16 steps. e4m3x2_to_bf16x2 (times the scale) is shared by the
// conversion kernels (src/fp8_cache.cu) and the wide decode kernel's in-place expansion, so that
// kernel reads exactly what dequantize_kv_fp8 writes; the small-head kernel converts without
// the scale (e4m3x4_to_bf16x2_pairs) and applies the scales outside its products.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>

#include "flashmla/flashmla.h"

namespace flashmla::fp8 {

constexpr int kScaleOffset = kHeadDimV;                          // 4 fp32 scales
constexpr int kRopeOffset = kScaleOffset + 4 * (kHeadDimV / kFp8ScaleGroup);  // 64 bf16
static_assert(kRopeOffset + (kHeadDim - kHeadDimV) * 2 == kFp8TokenBytes, "record layout");

// Two e4m3 (low byte first) times their group's scale, as a bf16x2 word. e4m3 -> fp16 is
// exact; the fp32 product is the one rounding before the bf16 one, as the format defines it.
__device__ __forceinline__ uint32_t e4m3x2_to_bf16x2(uint32_t two, float scale) {
  const __half2_raw h =
      __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(two & 0xffffu), __NV_E4M3);
  const float2 f = __half22float2(__half2(h));
  const __nv_bfloat162 b = __floats2bfloat162_rn(__fmul_rn(f.x, scale), __fmul_rn(f.y, scale));
  return *reinterpret_cast<const uint32_t*>(&b);
}

// Four e4m3 bytes b0..b3 of a word as two exact bf16x2, no scale: even = (b0, b2), odd =
// (b1, b3), the pairing ldmatrix.trans hands an O^T fragment (small_fp8.cuh). Each byte's sign
// moves to bit 15 of its half and its exponent and mantissa to bf16's fields (bias 7 read as
// 127); one bf16x2 multiply by 2^120 rebiases, subnormals included. Shifts and masks on the
// whole word, no byte permute: 5 integer ops and 2 HMUL2 per 4 values. The e4m3 NaN pattern
// (S.1111.111) comes out as +-480, finite: the small-head kernel multiplies stale tail rows by
// P = 0.
__device__ __forceinline__ void e4m3x4_to_bf16x2_pairs(uint32_t x, uint32_t& even, uint32_t& odd) {
  const uint32_t e = ((x << 4) & 0x07f007f0u) | ((x << 8) & 0x80008000u);
  const uint32_t o = ((x >> 4) & 0x07f007f0u) | (x & 0x80008000u);
  const __nv_bfloat162 rebias(__ushort_as_bfloat16(0x7b80), __ushort_as_bfloat16(0x7b80));  // 2^120
  const __nv_bfloat162 ve = __hmul2(*reinterpret_cast<const __nv_bfloat162*>(&e), rebias);
  const __nv_bfloat162 vo = __hmul2(*reinterpret_cast<const __nv_bfloat162*>(&o), rebias);
  even = *reinterpret_cast<const uint32_t*>(&ve);
  odd = *reinterpret_cast<const uint32_t*>(&vo);
}

}  // namespace flashmla::fp8
