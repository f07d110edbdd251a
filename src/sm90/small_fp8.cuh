// The FP8 pieces of the small-head kernel (small_kernel.cuh): the TMA producer of whole-tile
// stages, Q as three e4m3 terms for the e4m3 S^T, and the A-fragment loader that turns staged
// e4m3 bytes into f16 O^T operands in registers.
//
// Why: expanding the records into bf16 sub-tiles in shared memory (v13) cost two warpgroups,
// 104 KiB of shared traffic per tile and a ring slot per sub-tile from expansion to O^T. Now
// S^T reads K as the e4m3 it is (8-bit wgmma, K-major, which the records are), and O^T, whose
// A is V^T (MN-major: no 8-bit wgmma), converts in registers; an m64n16k16 with A from
// registers also issues in 13 clocks instead of 20 (bf16 and f16 alike, docs/perf-log.md v14,
// v15).
//
// Conversion: fp8::e4m3x4_to_f16x2_pairs (exact; NaN stays NaN, so the values warpgroup zeroes
// a partial tile's rows past the sequence end before O^T reads them). The scales are applied
// outside the products: S^T keeps one accumulator per 128-dim group and scales it per token,
// and O^T reads P^T scaled per group, in fp16 relative to the group's running scale bound
// (small_kernel.cuh, small_scores).
#pragma once

#include "fp8_record.cuh"
#include "sm90/decode_common.cuh"
#include "sm90/decode_producers.cuh"
#include "sm90/ring.cuh"
#include "sm90/small_config.h"

namespace flashmla::sm90 {

__device__ __forceinline__ char* fp8_plan(SmallStorage& s) { return reinterpret_cast<char*>(&s); }
template <int kBlocks>
__device__ __forceinline__ char* fp8_stage(SmallStorage& s, int i) {
  return fp8_plan(s) + Fp8Plan<kBlocks>::kStagesOffset + i * kFp8StageBytes;
}
// P^T of one 128-dim group of one buffer: [row][token] f16, 128B-swizzled, K-major.
template <int kBlocks>
__device__ __forceinline__ char* fp8_p(SmallStorage& s, int buf, int group) {
  return fp8_plan(s) + Fp8Plan<kBlocks>::kPOffset + (buf * 4 + group) * Fp8Plan<kBlocks>::kPBytes;
}

// Tile n of the part: its stage and phases (staged_full; staged_empty one lap behind).
template <int kBlocks>
using Fp8Ring = Ring<Fp8Plan<kBlocks>::kStages>;

// One thread: each tile's latent bytes, RoPE and scales into the next stage once the values
// warpgroup has released it. Pages past the sequence end are not read.
template <int kBlocks>
__device__ __forceinline__ void small_tma_fp8(const MlaDecodeParams& p, const KvMaps& maps,
                                              SmallStorage& s, const PartWalk& walk, int kv_head) {
  int n = 0;
  for (TileCursor tile(p, walk); tile.valid(p, walk); tile.advance(p, walk), ++n) {
    const int st = Fp8Ring<kBlocks>::slot(n);
    if (n >= Fp8Plan<kBlocks>::kStages) mbar_wait(&s.staged_empty[st], Fp8Ring<kBlocks>::empty_phase(n));
    char* base = fp8_stage<kBlocks>(s, st);
    issue_fp8_boxes(p, &maps.fp8_latent_sw128, maps, tile, kv_head, base, base + kFp8ScalesOffset,
                    base + kFp8RopeOffset, &s.staged_full[st]);
  }
}

// The three e4m3 Q terms of 128-dim group j and row block b for the e4m3 S^T:
// [term][16 rows][128 B], 128B-swizzled, K-major (the 48 rows of one m64n48k32 B operand).
template <int kBlocks>
__device__ __forceinline__ char* fp8_q_group(SmallStorage& s, int j, int block) {
  return fp8_plan(s) + j * Fp8Plan<kBlocks>::kQGroupBytes + block * Fp8Plan<kBlocks>::kQBlockBytes;
}
template <int kBlocks>
__device__ __forceinline__ char* fp8_q_rope(SmallStorage& s) {
  return fp8_plan(s) + Fp8Plan<kBlocks>::kQRopeOffset;
}

// Q of sequence i for the e4m3 S^T. Row r's latent part times a power of two 2^e_r (its largest
// |q| lands in (224, 448]: small_q_scale_exponent) is written as the sum of three e4m3 terms,
// each the rounding of what the previous ones left, so S^T = sum_t K Q_t^T / 2^e_r. Error per
// element after three terms: at most 2^-12 of the row's largest |q| (2^-12 relative near it;
// e4m3's subnormal step bounds the small elements), so a score moves by far less than the
// bf16 rounding of K moves it in the 16-bit path. The RoPE part stays bf16 (its wgmma is
// bf16). Thread (row = tid / 8, u = tid % 8): dims 64 u .. of the latent part, 8 u .. of the
// RoPE part, all its loads in flight together; the scores warpgroup of row block b loads rows
// 16 b .. 16 b + 15.
template <int kBlocks>
__device__ __forceinline__ void load_q_fp8(const MlaDecodeParams& p, SmallStorage& s, int i,
                                           int kv_head, int block, int tid) {
  const int heads_per_kv = p.num_heads_q / p.num_heads_kv;
  const int rows = p.seqlen_q * heads_per_kv;
  const int lrow = tid / 8, u = tid % 8;
  const int row = block * kSmallRows + lrow;
  uint4 v[8], rope = make_uint4(0, 0, 0, 0);
#pragma unroll
  for (int k = 0; k < 8; ++k) v[k] = make_uint4(0, 0, 0, 0);
  if (row < rows) {
    const int s_q = row / heads_per_kv, h = kv_head * heads_per_kv + row % heads_per_kv;
    const auto* q = static_cast<const __nv_bfloat16*>(p.q) + i * p.q_batch_stride +
                    s_q * p.q_seq_stride + h * p.q_head_stride;
    const uint4* lat = reinterpret_cast<const uint4*>(q + 64 * u);
#pragma unroll
    for (int k = 0; k < 8; ++k) v[k] = __ldg(lat + k);
    rope = __ldg(reinterpret_cast<const uint4*>(q + kHeadDimV + 8 * u));
  }
  auto val = [&](int k) {  // latent element k (0..63) of this thread, as float
    const uint32_t w = (&v[k / 8].x)[(k % 8) / 2];
    return __uint_as_float((k % 2 ? w & 0xffff0000u : w << 16));
  };
  float mx = 0.f;
#pragma unroll
  for (int k = 0; k < 64; ++k) mx = fmaxf(mx, fabsf(val(k)));
  mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 1));
  mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 2));
  mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 4));
  // A power of two, so scaling and unscaling are exact; zero (or padding) rows keep 1.
  const int k = small_q_scale_exponent(mx);
  const float scale = small_pow2(k);
  if (u == 0) s.q_unscale[row] = small_pow2(-k);
  uint32_t term[3][16];  // 64 e4m3 per term, 4 to a word
#pragma unroll
  for (int k = 0; k < 64; k += 2) {
    float2 x = make_float2(val(k) * scale, val(k + 1) * scale);
#pragma unroll
    for (int t = 0; t < 3; ++t) {
      const __nv_fp8x2_storage_t e = __nv_cvt_float2_to_fp8x2(x, __NV_SATFINITE, __NV_E4M3);
      const float2 back = __half22float2(__half2(__nv_cvt_fp8x2_to_halfraw2(e, __NV_E4M3)));
      x = make_float2(x.x - back.x, x.y - back.y);  // exact: the rounding error of an e4m3
      uint32_t& w = term[t][k / 4];
      w = (k % 4 == 0) ? static_cast<uint32_t>(e) : (w | (static_cast<uint32_t>(e) << 16));
    }
  }
  const int group = u / 2, sw = row & 7;
#pragma unroll
  for (int t = 0; t < 3; ++t) {
    char* dst = fp8_q_group<kBlocks>(s, group, block) + (t * kSmallRows + lrow) * 128;
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      *reinterpret_cast<uint4*>(dst + (((4 * (u % 2) + c) ^ sw) << 4)) =
          make_uint4(term[t][4 * c], term[t][4 * c + 1], term[t][4 * c + 2], term[t][4 * c + 3]);
    }
  }
  *reinterpret_cast<uint4*>(fp8_q_rope<kBlocks>(s) + swizzled_offset(row, 8 * u)) = rope;
}

// O^T A fragments (f16) of block jb (dims 64 jb ..), k steps kk and kk + 1 (tokens 16 kk ..) for warp
// `warp`, whose 16 dims are the stage's chunk 4 (jb % 2) + warp of group jb / 2. ldmatrix.trans
// matrices: tokens +0..7 / +8..15 of step kk, then of kk + 1; thread (g, q) gets dims 2g, 2g + 1
// of tokens 2q, 2q + 1 (bytes d0 t0, d1 t0, d0 t1, d1 t1). Fragment row g is dim 2g and row
// g + 8 dim 2g + 1 (the epilogue maps them back), its k pairs the token pair.
__device__ __forceinline__ void fp8_v_fragments(uint32_t stage, int jb, int kk, int warp, int lane,
                                                uint32_t (&a)[2][4]) {
  const int mi = lane / 8, r = lane % 8;
  const int tok = 16 * kk + 8 * mi + r;  // matrices 0..3: tokens 16 kk + 8 mi ..
  const int chunk = 4 * (jb % 2) + warp;
  uint32_t x[4];
  ldmatrix_x4_trans(x, stage + (jb / 2) * (kBlockN * 128) + tok * 128 + ((chunk ^ r) << 4));
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    fp8::e4m3x4_to_f16x2_pairs(x[2 * h], a[h][0], a[h][1]);      // dims 2g, 2g + 1
    fp8::e4m3x4_to_f16x2_pairs(x[2 * h + 1], a[h][2], a[h][3]);  // tokens + 8
  }
}

}  // namespace flashmla::sm90
