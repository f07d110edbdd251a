// Host (CPU) twin of flashmla::quantize_kv_fp8 / dequantize_kv_fp8: the oracle for the
// kernels in src/fp8_cache.cu. Written from the bit definition of float8_e4m3 (1 sign bit,
// 4 exponent bits with bias 7, 3 mantissa bits, subnormals, no infinities, 0x7F / 0xFF NaN,
// largest finite 448) and never from cuda_fp8.h, so that it checks the CUDA intrinsics
// instead of repeating them.
//
// Record layout (flashmla::kFp8TokenBytes = 656 bytes per token):
//   bytes [0, 512)    e4m3 of latent_d / scale_{d / 128}, round to nearest even, saturated
//   bytes [512, 528)  4 float32 scales, scale_g = max|latent of group g| / 448 (1 if all zero)
//   bytes [528, 656)  the 64 RoPE dims, bf16 bits copied unchanged
// Dequantized latent_d = bf16_rne(float(e4m3_d) * scale_{d / 128}) (fp32 product, then bf16).
//
// Non-finite inputs, defined so that host and GPU agree: a NaN is ignored by its group's max
// and encodes as 0x7F; an infinity makes its group's scale infinite (its finite members
// then encode as +-0 and the infinities as NaN).
#pragma once

#include <cstdint>

namespace flashmla::reference {

// Round to nearest even onto the e4m3 grid; |x| > 448 (infinities too) saturates to +-448,
// NaN gives 0x7F. The sign of a result that rounds to zero is kept (0x80 is -0).
uint8_t float_to_e4m3(float x);

// Exact value of an e4m3 code (NaN for 0x7F and 0xFF).
float e4m3_to_float(uint8_t code);

// n_tokens rows of 576 bf16 bits (row stride src_stride elements) -> 656-byte records
// (row stride dst_stride bytes). Bytes of the padding between records are left untouched.
void quantize_kv_fp8_host(const uint16_t* src, int64_t src_stride, uint8_t* dst,
                          int64_t dst_stride, int64_t n_tokens);

// The inverse direction: records (stride src_stride bytes) -> bf16 rows (stride dst_stride
// elements). Padding elements of the rows are left untouched.
void dequantize_kv_fp8_host(const uint8_t* src, int64_t src_stride, uint16_t* dst,
                            int64_t dst_stride, int64_t n_tokens);

}  // namespace flashmla::reference
