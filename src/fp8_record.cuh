// The FP8-with-scale token record (KvFormat::kFP8WithScale, layout in flashmla.h): byte
// offsets and the e4m3 -> bf16 steps. e4m3x2_to_bf16x2 (times the scale) is shared by the
// conversion kernels (src/fp8_cache.cu) and the wide decode kernel's in-place expansion, so that
// kernel reads exactly what dequantize_kv_fp8 writes; the small-head kernel converts without
// the scale (e4m3x4_to_f16x2_pairs) and applies the scales outside its products.
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

// Four e4m3 bytes b0..b3 of a word as two exact f16x2: even = (b0, b2), odd = (b1, b3), the
// pairing ldmatrix.trans hands an O^T fragment (small_fp8.cuh). One byte permute and two
// hardware conversions (every e4m3 value is an fp16 normal or zero; NaN stays NaN). The bf16
// route this replaced needed 7 integer ops and 2 HMUL2 per word (docs/perf-log.md v15).
__device__ __forceinline__ void e4m3x4_to_f16x2_pairs(uint32_t x, uint32_t& even, uint32_t& odd) {
  const uint32_t y = __byte_perm(x, 0, 0x3120);  // b0 b2 | b1 b3
  const __half2_raw e = __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(y & 0xffffu), __NV_E4M3);
  const __half2_raw o = __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(y >> 16), __NV_E4M3);
  even = static_cast<uint32_t>(e.x) | (static_cast<uint32_t>(e.y) << 16);
  odd = static_cast<uint32_t>(o.x) | (static_cast<uint32_t>(o.y) << 16);
}

}  // namespace flashmla::fp8
