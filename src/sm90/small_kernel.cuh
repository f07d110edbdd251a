// The sm90 small-head decode kernel: at most 16 query rows per kv head (h_q * s_q / h_kv <= 16),
// or 32 with an FP8 cache (two row blocks of 16, one scores warpgroup each: kBlocks = 2),
// pages of >= 16 tokens, 16-bit or FP8 caches. One CTA = (scheduler part, kv head), walking the
// same split-KV schedule as the wide kernel and writing the same partials for the combine.
//
// The products are transposed so the 64 tokens of a tile are the wgmma M and the 16 query rows
// its N: S^T = K Q^T (A = the K sub-tile, B = Q, both K-major) and O^T = V^T P^T (A = the V
// sub-tile read MN-major, B = P^T), 68 m64n16k16 per tile instead of the wide kernel's 64-row
// padding (4x its tensor work at h_q = 16). Two math warpgroups pipeline across tiles: the
// scores warpgroup does S^T and the softmax (a lazy offset: the column maxima cross its four
// warps through shared memory only when a score passes it by 2^8) and hands P^T over in one of
// two buffers, the values warpgroup does O^T and the epilogue. 16-bit caches: a sub-tile-grained
// ring, each slot refilled by TMA as soon as it is released (this file). FP8 caches: whole-tile
// stages of raw records, read by e4m3 wgmma for S^T and converted to f16 in registers for O^T
// (small_fp8.cuh). Two row blocks (FP8, 17-32 rows): a second scores warpgroup for rows 16-31
// and O^T at N = 32 (small_config.h). docs/design.md, docs/perf-log.md v13-v17.
#pragma once

#include "fp8_record.cuh"
#include "sm90/decode_common.cuh"
#include "sm90/decode_producers.cuh"
#include "sm90/ring.cuh"
#include "sm90/small_config.h"
#include "sm90/small_fp8.cuh"

namespace flashmla::sm90 {

using SubTileRing = RingCursor<kSmallSlots16>;  // the 16-bit sub-tile ring (sm90/ring.cuh)

// A scores warpgroup's own barriers: row block 1 uses the ids above block 0's.
__device__ __forceinline__ int small_barrier_id(SmallBarrier b, int block) {
  return static_cast<int>(b) + (block ? kSmallBlock1Ids : 0);
}
__device__ __forceinline__ void small_sync(SmallBarrier b, int block = 0) {
  named_barrier_sync(small_barrier_id(b, block), kSmallMathThreads);
}

__device__ __forceinline__ char* small_slot(SmallStorage& s, int i) {
  return s.ring + i * kSubTileBytes;
}

// 16-bit caches: the TMA boxes of every sub-tile of the part, each into its slot once the math
// has released it, by lane 0 of one producer warp, or of four for pages of 16 and 32 tokens
// (2 or 4 boxes per sub-tile), each issuing every 4th sub-tile. A box issue holds its thread
// for ~200 clocks, so one thread issuing 36 boxes per tile cost 34-36% at pages of 16. At
// pages of 64 (one box per sub-tile) four issuers measured the same as one, so one issues
// there (docs/perf-log.md session 11). Pages past the sequence end are not read.
constexpr int kIssuers = 4;
__device__ __forceinline__ void small_tma_16bit(const MlaDecodeParams& p, const CUtensorMap* map,
                                                SmallStorage& s, const PartWalk& walk,
                                                int kv_head, int issuer, int issuers) {
  const int page_shift = log2_pow2(p.page_block_size);
  const int box_shift = min(page_shift, log2_pow2(kBlockN));
  const int box_rows = 1 << box_shift;
  SubTileRing pos;
  int n = 0;  // sub-tiles so far; this thread issues those with n % issuers == issuer
  for (TileCursor tile(p, walk); tile.valid(p, walk); tile.advance(p, walk)) {
    const TilePages pages(p, tile, box_shift, page_shift);
#pragma unroll 1
    for (int t = 0; t < kSubTiles; ++t, ++n) {
      if ((n & (issuers - 1)) != issuer) {  // issuers: 1 or 4 (a runtime % cost 20%)
        pos.advance();
        continue;
      }
      mbar_wait(&s.empty[pos.slot], pos.phase ^ 1);
      char* dst = small_slot(s, pos.slot);
      mbar_expect_tx(&s.full[pos.slot], pages.boxes * box_rows * 128);
#pragma unroll 1
      for (int b = 0; b < pages.boxes; ++b) {
        const int tok = tile.blk * kBlockN + b * box_rows;
        tma_load_4d(dst + b * box_rows * 128, map, &s.full[pos.slot], t * kSubCols,
                    tok & (p.page_block_size - 1), kv_head, pages.of(b));
      }
      pos.advance();
    }
  }
}

// 16-bit caches with pages below 16 tokens (a TMA box per page would be a few rows): the 128
// threads of warpgroup 0 gather each sub-tile into its ring slot with cp.async, each thread's
// copies completing on the slot's `full` barrier (count 128) through
// cp.async.mbarrier.arrive.noinc. Lane l of warp w copies 16-byte chunk l % 8 of rows
// l / 8 + 4 w + 16 j (j = 0..3), so one instruction reads four whole 128-byte row segments. The
// page of each of its four rows is looked up once per tile, before the slot waits. Rows past
// the sequence end are not read (their table entries may be garbage): the scores warpgroup
// zeroes them, as it does for TMA tiles.
__device__ __forceinline__ void small_gather_16bit(const MlaDecodeParams& p, SmallStorage& s,
                                                   const PartWalk& walk, int kv_head, int tid) {
  const int page_shift = log2_pow2(p.page_block_size);
  const int chunk = tid % 8;
  const int row0 = tid % 32 / 8 + 4 * (tid / 32);
  const auto* k_cache = static_cast<const uint16_t*>(p.k_cache);
  SubTileRing pos;
  for (TileCursor tile(p, walk); tile.valid(p, walk); tile.advance(p, walk)) {
    const int live = min(tile.seqlen - tile.blk * kBlockN, kBlockN);
    const uint16_t* src[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int row = row0 + 16 * j, tok = tile.blk * kBlockN + row;
      const int page = row < live ? gather_page(p, __ldg(tile.table(p) + (tok >> page_shift))) : 0;
      src[j] = k_cache + kv_record_offset(p, page, tok, kv_head) + chunk * 8;
    }
#pragma unroll 1
    for (int t = 0; t < kSubTiles; ++t) {
      mbar_wait(&s.empty[pos.slot], pos.phase ^ 1);
      char* dst = small_slot(s, pos.slot);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int row = row0 + 16 * j;
        if (row < live) cp_async_16(dst + swizzled_offset(row, chunk * 8), src[j] + t * kSubCols);
      }
      cp_async_mbar_arrive(&s.full[pos.slot]);
      pos.advance();
    }
  }
}

// The math warpgroups' view of an m64n16 accumulator fragment: thread (warp w, lane l) holds
// rows 16 w + l / 4 (+ 8) and columns 8 k + 2 (l % 4) + e, register 4 k + e (+ 2 for the +8
// row). Rows are tokens (S^T) or dims (O^T), columns query rows; ci = 2 k + e below.
struct SmallFragment {
  int warp, g, quad, tok0, tok1;
  __device__ explicit SmallFragment(int tid)
      : warp(tid / 32), g(tid % 32 / 4), quad(tid % 4), tok0(16 * warp + g), tok1(tok0 + 8) {}
  __device__ int col(int ci) const { return 8 * (ci / 2) + 2 * quad + (ci % 2); }
  __device__ static int reg(int ci) { return 4 * (ci / 2) + (ci % 2); }  // (+2: the +8 row)
};

__device__ __forceinline__ int small_uniform(int v) { return __shfl_sync(0xffffffff, v, 0); }

// S^T of one tile into sc (the scores of this thread's tokens tok0 / tok1, columns ci), 16-bit
// caches: the nine sub-tiles from the ring, released RoPE-first by the caller.
template <typename T, bool kGather>
__device__ __forceinline__ void small_scores_16bit(SmallStorage& s, SubTileRing& pos, int valid, int tid,
                                                   float (&sc)[8], int& rope_slot) {
  const uint64_t k_desc0 = make_desc_sw128(smem_addr(small_slot(s, 0)), 16, 1024);  // A K-major
  const uint64_t q_desc0 = make_desc_sw128(smem_addr(s.q), 16, 1024);               // B K-major
  // Four accumulators, one per k step of a sub-tile: an m64n16k16 is 8 tensor clocks, far
  // below its latency, so one chain of 36 dependent wgmmas would run at the latency.
  float part[4][8];
#pragma unroll
  for (int t = 0; t < kSubTiles; ++t) {
    rope_slot = pos.slot;
    mbar_wait(&s.full[pos.slot], pos.phase);
    // cp.async (gather) writes are generic-proxy writes; wgmma reads through the async proxy.
    if constexpr (kGather) fence_proxy_async();
    if (valid < kBlockN && t < kSubTiles - 1) {
      // Rows past the end are whatever the slot held (NaN included), and O^T would multiply
      // them by P = 0. The RoPE sub-tile only feeds masked scores.
      char* sub = small_slot(s, pos.slot);
      for (int c = valid * 8 + tid; c < kBlockN * 8; c += kSmallMathThreads)
        *reinterpret_cast<uint4*>(sub + c * 16) = make_uint4(0, 0, 0, 0);
      fence_proxy_async();
      small_sync(SmallBarrier::kTailZeroed);
    }
    // After the wait loop: without it ptxas fences on the divergent path and serializes
    // every wgmma (C7520, docs/perf-log.md v12).
    wgmma_fence();
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      wgmma_m64n16k16<T, 0>(part[k], desc_advance(k_desc0, pos.slot * kSubTileBytes + k * 32),
                            desc_advance(q_desc0, t * kSmallRows * 128 + k * 32), t > 0);
    }
    pos.advance();
  }
  wgmma_commit();
  wgmma_wait<0>();
#pragma unroll
  for (int k = 0; k < 4; ++k) fence_operands(part[k]);
#pragma unroll
  for (int e = 0; e < 8; ++e) sc[e] = (part[0][e] + part[1][e]) + (part[2][e] + part[3][e]);
}

// S^T of one tile, FP8 caches: the RoPE sub-tile by bf16 wgmmas and the latent part by e4m3
// wgmmas m64n48k32 with A = K as staged (K-major) and B = Q's three e4m3 terms of the group
// side by side (load_q_fp8), one accumulator per 128-dim group; each term's sum is scaled per
// token by its group scale, then by Q's row unscale. (A from registers, by ldmatrix, won while
// the shape was m64n16k32, whose A read took twice its tensor time; at N = 48 both take the
// same, and A from shared memory spares the 16 ldmatrix and 64 registers, perf-log v16.)
// Precision: an e4m3 wgmma keeps its accumulator to about 14 bits (DeepSeek-V3 report,
// sec. 3.3.2), so chaining the leading term's 16 products and the small terms onto one
// accumulator lost ~2^-9 of a score (a failed lse test). Here every term chains over one group
// only (128 products, the interval that report uses), and the three are added in fp32.
// With two row blocks the groups run in two passes of two: a scores warpgroup there has 128
// registers, and four live 24-register accumulators spilled 168 bytes even at 136 (perf-log
// v17, X3).
template <int kBlocks>
__device__ __forceinline__ void small_scores_fp8(SmallStorage& s, int stage_index, int block,
                                                 const SmallFragment& f, const float (&unscale)[4],
                                                 float (&sc)[8], float4& s0, float4& s1) {
  using Plan = Fp8Plan<kBlocks>;
  constexpr int kPasses = kBlocks;
  constexpr int kG = 4 / kPasses;  // groups per pass
  const char* stage = fp8_stage<kBlocks>(s, stage_index);
  const uint32_t st = smem_addr(stage);
  const uint64_t k_desc = make_desc_sw128(st, 16, 1024);
  const uint64_t rope_desc = make_desc_sw128(st + kFp8RopeOffset, 16, 1024);
  const uint64_t q_rope_desc =
      make_desc_sw128(smem_addr(fp8_q_rope<kBlocks>(s)) + block * kSmallRows * 128, 16, 1024);
  const uint64_t q_desc = make_desc_sw128(smem_addr(fp8_q_group<kBlocks>(s, 0, block)), 16, 1024);
  float rope[8], lat[8];
#pragma unroll
  for (int pass = 0; pass < kPasses; ++pass) {
    float acc[kG][24];  // acc[j]: registers 8 t .. 8 t + 7 are Q term t of group kG pass + j
    wgmma_fence();
    if (pass == 0) {
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        wgmma_m64n16k16<__nv_bfloat16, 0>(rope, desc_advance(rope_desc, k * 32),
                                          desc_advance(q_rope_desc, k * 32), k > 0);
      }
    }
#pragma unroll
    for (int kk = 0; kk < 4; ++kk)
#pragma unroll
      for (int j = 0; j < kG; ++j) {  // consecutive wgmmas independent (see small_scores_16bit)
        const int grp = kG * pass + j;
        wgmma_m64n48k32_e4m3(acc[j], desc_advance_lo(k_desc, grp * (kBlockN * 128) + kk * 32),
                             desc_advance_lo(q_desc, grp * Plan::kQGroupBytes + kk * 32), kk > 0);
      }
    wgmma_commit();
    if (pass == 0) {  // under the wgmmas
      s0 = *reinterpret_cast<const float4*>(stage + kFp8ScalesOffset + f.tok0 * 16);
      s1 = *reinterpret_cast<const float4*>(stage + kFp8ScalesOffset + f.tok1 * 16);
    }
    wgmma_wait<0>();
#pragma unroll
    for (int j = 0; j < kG; ++j) fence_operands(acc[j]);
    if (pass == 0) fence_operands(rope);
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const float4& c = (e & 2) ? s1 : s0;  // registers 2, 3, 6, 7 are the +8 row
      const float cs[4] = {c.x, c.y, c.z, c.w};
      float g[kG];
#pragma unroll
      for (int j = 0; j < kG; ++j) g[j] = acc[j][e] + (acc[j][8 + e] + acc[j][16 + e]);
      float part = cs[kG * pass] * g[0] + cs[kG * pass + 1] * g[1];
      if constexpr (kG == 4) part = part + (cs[2] * g[2] + cs[3] * g[3]);
      lat[e] = pass == 0 ? part : lat[e] + part;
    }
  }
#pragma unroll
  for (int e = 0; e < 8; ++e) sc[e] = fmaf(lat[e], unscale[(e / 4) * 2 + (e % 2)], rope[e]);  // column ci of register e
}

// The scores warpgroup of row block `block` (query rows 16 block ..): per tile S^T = K Q^T, the
// online softmax down the token axis, and P^T into the tile's P buffer for the values
// warpgroup, with the rescale of O it implies; at the last tile of a piece also the piece's row
// maxima and sums. Owns its rows' Q and softmax state.
template <typename T, bool kFp8, int kBlocks, bool kGather>
__device__ __forceinline__ void small_scores(const MlaDecodeParams& p, SmallStorage& s,
                                             const PartWalk& walk, int kv_head, int block, int tid) {
  const SmallFragment f(tid);
  const float scale_log2 = p.softmax_scale * 1.4426950408889634f;
  const int r0 = block * kSmallRows;  // this warpgroup's first query row

  SubTileRing pos;
  int n = 0;  // tiles of the part so far: P buffer n % 2, red_max and red_smax buffer too
  for (int i = walk.batch_begin; i <= walk.batch_end && i < p.batch; ++i) {
    const int seqlen = small_uniform(kernel_seqlen(p, i));
    const int lo = small_uniform(walk.lo(i)), hi = small_uniform(walk.hi(i, num_kv_blocks(seqlen)));
    if (lo >= hi) continue;
    int limit[4];
#pragma unroll
    for (int ci = 0; ci < 4; ++ci) limit[ci] = row_limit(p, seqlen, 0, r0 + f.col(ci));

    small_sync(SmallBarrier::kQFree, block);
    if constexpr (kFp8) {
      load_q_fp8<kBlocks>(p, s, i, kv_head, block, tid);
    } else {
      load_q<kSmallRows, kSmallMathThreads>(p, s.q[0], i, kv_head, 0, tid);
      cp_async_wait_all();
    }
    fence_proxy_async();
    small_sync(SmallBarrier::kQReady, block);
    float unscale[4];  // FP8: Q's row unscale per column
#pragma unroll
    for (int ci = 0; ci < 4; ++ci) unscale[ci] = kFp8 ? s.q_unscale[r0 + f.col(ci)] : 1.f;

    float m[4], l[4];
#pragma unroll
    for (int ci = 0; ci < 4; ++ci) {
      m[ci] = -INFINITY;  // running max of query row col(ci), log2 domain (same in all threads)
      l[ci] = 0.f;        // this thread's part of its row sum (its two tokens of every tile)
    }
    // FP8, per 128-dim group: a power of two bounding every |scale| of the piece so far, and its
    // inverse. P^T is fp16 in units of it (P * scale / bound <= P): exact to fp16 precision for
    // tokens whose scale is within 2^14 of the piece's largest in that group; further below,
    // fp16 subnormals lose precision gradually, which the output shows only if such tokens
    // carry its weight while a larger-scale token does not (e.g. an all-zero group stored with
    // scale 1 beside latents of amax < ~0.03; docs/perf-log.md v15).
    float gmax[4], ginv[4];
#pragma unroll
    for (int g = 0; g < 4; ++g) gmax[g] = ginv[g] = 0.f;

    for (int blk = lo; blk < hi; ++blk, ++n) {
      const int buf = n % 2;
      float sc[8];
      float4 scale0, scale1;  // FP8: the group scales of tokens tok0, tok1 (for P^T)
      if constexpr (kFp8) {
        const int st = Fp8Ring<kBlocks>::slot(n);
        mbar_wait(&s.staged_full[st], Fp8Ring<kBlocks>::phase(n));
        small_scores_fp8<kBlocks>(s, st, block, f, unscale, sc, scale0, scale1);
      } else {
        int rope_slot;
        small_scores_16bit<T, kGather>(s, pos, seqlen - blk * kBlockN, tid, sc, rope_slot);
        // The RoPE sub-tile is read by S^T only.
        if (tid == 0) mbar_arrive(&s.empty[rope_slot]);
      }

      // Softmax down the token axis: per query row (column) the max over the tile's 64 tokens,
      // reduced over the lanes of a warp, then over the four warps through red_max, when the
      // lazy vote below asks for it.
      float mx[4];
      bool grows = false;  // a score of this thread passes its row's offset m by > kSmallLazyRescale
#pragma unroll
      for (int ci = 0; ci < 4; ++ci) {
        float& a = sc[SmallFragment::reg(ci)];
        float& b = sc[SmallFragment::reg(ci) + 2];
        a = blk * kBlockN + f.tok0 < limit[ci] ? a : -INFINITY;
        b = blk * kBlockN + f.tok1 < limit[ci] ? b : -INFINITY;
        mx[ci] = fmaxf(a, b);
        grows |= mx[ci] * scale_log2 > m[ci] + kSmallLazyRescale;
      }
      // FP8: the scales of this thread's live tokens (stale rows past the end may hold NaN or
      // anything: 0 here, and P = 0 below).
      float sa[4], sb[4];
      if constexpr (kFp8) {
        const bool live0 = blk * kBlockN + f.tok0 < seqlen, live1 = blk * kBlockN + f.tok1 < seqlen;
        const float ra[4] = {scale0.x, scale0.y, scale0.z, scale0.w};
        const float rb[4] = {scale1.x, scale1.y, scale1.z, scale1.w};
#pragma unroll
        for (int g = 0; g < 4; ++g) {
          sa[g] = live0 ? ra[g] : 0.f;
          sb[g] = live1 ? rb[g] : 0.f;
          grows |= fmaxf(fabsf(sa[g]), fabsf(sb[g])) > gmax[g];  // the bound is on |scale|
        }
      }
      float gf[4] = {1.f, 1.f, 1.f, 1.f};  // FP8: rescale of O's group blocks for this tile
      // Lazy rescale: the offset m stays while no score passes it by more than kSmallLazyRescale
      // (log2 domain), and a group's scale bound while no scale passes it, so most tiles skip
      // the max exchange.
      if (named_barrier_or(small_barrier_id(SmallBarrier::kMaxPublished, block), kSmallMathThreads, grows)) {
        if constexpr (kFp8) {
          // The tile's largest scale per group: lanes of a quad hold the same two tokens.
#pragma unroll
          for (int g = 0; g < 4; ++g) {
            float x = fmaxf(fabsf(sa[g]), fabsf(sb[g]));
            x = fmaxf(x, __shfl_xor_sync(0xffffffff, x, 4));
            x = fmaxf(x, __shfl_xor_sync(0xffffffff, x, 8));
            x = fmaxf(x, __shfl_xor_sync(0xffffffff, x, 16));
            if (tid % 32 == 0) s.red_smax[buf][block][f.warp][g] = x;
          }
        }
#pragma unroll
        for (int ci = 0; ci < 4; ++ci) {
          float x = mx[ci];
          x = fmaxf(x, __shfl_xor_sync(0xffffffff, x, 4));
          x = fmaxf(x, __shfl_xor_sync(0xffffffff, x, 8));
          mx[ci] = fmaxf(x, __shfl_xor_sync(0xffffffff, x, 16));
        }
        if (f.g == 0) {
#pragma unroll
          for (int ci = 0; ci < 4; ++ci) s.red_max[buf][f.warp][r0 + f.col(ci)] = mx[ci];
        }
        small_sync(SmallBarrier::kMaxPublished, block);
#pragma unroll
        for (int ci = 0; ci < 4; ++ci) {
          const int c = r0 + f.col(ci);
          mx[ci] = fmaxf(fmaxf(s.red_max[buf][0][c], s.red_max[buf][1][c]),
                         fmaxf(s.red_max[buf][2][c], s.red_max[buf][3][c]));
        }
        if constexpr (kFp8) {
#pragma unroll
          for (int g = 0; g < 4; ++g) {
            const float x = fmaxf(fmaxf(s.red_smax[buf][block][0][g], s.red_smax[buf][block][1][g]),
                                  fmaxf(s.red_smax[buf][block][2][g], s.red_smax[buf][block][3][g]));
            if (x > gmax[g]) {
              const int e = small_scale_bound_exponent(x);
              const float bound = small_pow2(e), inv = small_pow2(-e);
              gf[g] = gmax[g] * inv;  // exact (powers of two); 0 on the first tile (O is 0)
              gmax[g] = bound;
              ginv[g] = inv;
            }
          }
        }
      } else {
#pragma unroll
        for (int ci = 0; ci < 4; ++ci) mx[ci] = -INFINITY;  // keep m
      }
      float alpha[4], p0[4], p1[4];
#pragma unroll
      for (int ci = 0; ci < 4; ++ci) {
        const float now = fmaxf(m[ci], mx[ci] * scale_log2);
        const float use = now == -INFINITY ? 0.f : now;  // no key seen yet: exp2 gives 0
        alpha[ci] = now == m[ci] ? 1.f : fast_exp2(m[ci] - use);
        m[ci] = now;
        p0[ci] = fast_exp2(fmaf(sc[SmallFragment::reg(ci)], scale_log2, -use));
        p1[ci] = fast_exp2(fmaf(sc[SmallFragment::reg(ci) + 2], scale_log2, -use));
        l[ci] = l[ci] * alpha[ci] + p0[ci] + p1[ci];
      }
      // The values warpgroup's O^T of tile n - 2 read this buffer; the first two are free.
      if (n >= 2) named_barrier_sync(static_cast<int>(SmallBarrier::kPEmpty0) + buf, small_handoff_threads(kBlocks));
      // P^T [row][token] by one transposing stmatrix per warp and buffer: the warp's 16 tokens
      // x 16 rows as four 8x8 matrices (tok0 / tok1 x columns 0-7 / 8-15), register pairs of
      // adjacent columns of one token.
      const uint32_t pt_offset = swizzled_offset(r0 + 8 * (tid % 32 / 16) + tid % 8, 16 * f.warp + 8 * (tid % 16 / 8));
      if constexpr (kFp8) {
        // Per 128-dim group in fp16, times the token's group scale over the group's bound
        // (masked tokens: P = 0 even where a stale scale is NaN).
#pragma unroll
        for (int g = 0; g < 4; ++g) {
          const float ua = sa[g] * ginv[g], ub = sb[g] * ginv[g];
          auto pv = [&](float x, float u) { return x > 0.f ? x * u : 0.f; };
          stmatrix_x4_trans(smem_addr(fp8_p<kBlocks>(s, buf, g)) + pt_offset,
                            pack_bits<__half>(pv(p0[0], ua), pv(p0[1], ua)), pack_bits<__half>(pv(p1[0], ub), pv(p1[1], ub)),
                            pack_bits<__half>(pv(p0[2], ua), pv(p0[3], ua)), pack_bits<__half>(pv(p1[2], ub), pv(p1[3], ub)));
        }
      } else {
        stmatrix_x4_trans(smem_addr(s.p[buf]) + pt_offset, pack_bits<T>(p0[0], p0[1]), pack_bits<T>(p1[0], p1[1]),
                          pack_bits<T>(p0[2], p0[3]), pack_bits<T>(p1[2], p1[3]));
      }
#pragma unroll
      for (int ci = 0; ci < 4; ++ci) {
        if (f.warp == 0 && f.g == 0) s.alpha[buf][r0 + f.col(ci)] = alpha[ci];
      }
      if constexpr (kFp8) {
        // Block 1 computes the same bounds: both blocks' votes hold the same per-token scale
        // test, so both take the branch above whenever a bound grows.
        if (tid == 0 && block == 0) {
#pragma unroll
          for (int g = 0; g < 4; ++g) {
            s.gfac[buf][g] = gf[g];
            if (blk == hi - 1) s.fin_gmax[buf][g] = gmax[g];
          }
        }
      }
      if (blk == hi - 1) {
        // Last tile of the piece: the row sums over lanes and warps, with the row maxima, for
        // the values warpgroup's epilogue.
#pragma unroll
        for (int ci = 0; ci < 4; ++ci) {
          float x = l[ci];
          x += __shfl_xor_sync(0xffffffff, x, 4);
          x += __shfl_xor_sync(0xffffffff, x, 8);
          l[ci] = x + __shfl_xor_sync(0xffffffff, x, 16);
        }
        if (f.g == 0) {
#pragma unroll
          for (int ci = 0; ci < 4; ++ci) s.red_sum[f.warp][r0 + f.col(ci)] = l[ci];
        }
        small_sync(SmallBarrier::kSumPublished, block);
        if (f.warp == 0 && f.g == 0) {
#pragma unroll
          for (int ci = 0; ci < 4; ++ci) {
            const int c = r0 + f.col(ci);
            s.fin_sum[buf][c] = s.red_sum[0][c] + s.red_sum[1][c] + s.red_sum[2][c] + s.red_sum[3][c];
            s.fin_max[buf][c] = m[ci];
          }
        }
      }
      fence_proxy_async();  // P^T is read by the values warpgroup's wgmma (async proxy)
      named_barrier_arrive(static_cast<int>(SmallBarrier::kPFull0) + buf, small_handoff_threads(kBlocks));
    }
  }
}

// O^T += V^T P^T of one tile, 16-bit caches: block j (dims 64 j ..) reads V sub-tile j only.
// Two commit groups of four blocks, issued k-step-major so that consecutive wgmmas are
// independent; each group's four slots are released as soon as it is done.
template <typename T, bool kGather>
__device__ __forceinline__ void small_values_16bit(SmallStorage& s, SubTileRing& pos, int buf, int tid,
                                                   float (&o)[8][8]) {
  int slot[kSubTiles - 1];
#pragma unroll
  for (int t = 0; t < kSubTiles; ++t) {
    // Already complete (the scores warpgroup waited, and no slot refills before this
    // warpgroup releases it); the wait makes the landed bytes visible to this warpgroup.
    if (t < kSubTiles - 1) {
      slot[t] = pos.slot;
      mbar_wait(&s.full[pos.slot], pos.phase);
    }
    pos.advance();
  }
  if constexpr (kGather) fence_proxy_async();  // cp.async writes: generic proxy; wgmma: async proxy
  const uint64_t v_desc0 = make_desc_sw128(smem_addr(small_slot(s, 0)), kSubTileBytes, 1024);  // A MN-major
  const uint64_t p_desc = make_desc_sw128(smem_addr(s.p[buf]), 16, 1024);
  wgmma_fence();
#pragma unroll
  for (int h = 0; h < 2; ++h) {
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
#pragma unroll
      for (int j = 4 * h; j < 4 * h + 4; ++j) {
        wgmma_m64n16k16<T, 1>(o[j], desc_advance(v_desc0, slot[j] * kSubTileBytes + kk * 2048),
                              desc_advance(p_desc, kk * 32), 1);
      }
    }
    wgmma_commit();
  }
  wgmma_wait<1>();
  if (tid == 0) {
#pragma unroll
    for (int j = 0; j < 4; ++j) mbar_arrive(&s.empty[slot[j]]);
  }
  wgmma_wait<0>();
  if (tid == 0) {
#pragma unroll
    for (int j = 4; j < 8; ++j) mbar_arrive(&s.empty[slot[j]]);
  }
}

// O^T += V^T P^T of one tile, FP8 caches: per 128-dim group (blocks 2 q, 2 q + 1) its eight
// wgmmas with A from registers (fp8_v_fragments) and B the group's scaled P^T; A
// double-buffered, group q + 1 converts while q runs. The caller releases the stage. N = 16
// rows per row block: the conversion of V is the same for one block or two.
template <int kBlocks>
__device__ __forceinline__ void small_values_fp8(SmallStorage& s, int stage_index, int buf, int warp,
                                                 int lane, float (&o)[8][8 * kBlocks]) {
  const uint32_t st = smem_addr(fp8_stage<kBlocks>(s, stage_index));
  uint32_t a[2][2][2][2][4];  // [buffer][block of the group][k-step pair][k step][register]
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    if (q >= 2) wgmma_wait<1>();  // group q - 2 is done with buffer q % 2
#pragma unroll
    for (int u = 0; u < 2; ++u)
#pragma unroll
      for (int kp = 0; kp < 2; ++kp) fp8_v_fragments(st, 2 * q + u, 2 * kp, warp, lane, a[q % 2][u][kp]);
    const uint64_t p_desc = make_desc_sw128(smem_addr(fp8_p<kBlocks>(s, buf, q)), 16, 1024);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk)
#pragma unroll
      for (int u = 0; u < 2; ++u)
        wgmma_f16_rs<kBlocks>(o[2 * q + u], a[q % 2][u][kk / 2][kk % 2], desc_advance(p_desc, kk * 32), 1);
    wgmma_commit();
  }
  wgmma_wait<0>();
}

// The values warpgroup: per tile O^T = V^T P^T after the rescale the scores warpgroups
// published; at the end of a piece the epilogue (normalise, write O or the split partial).
// Columns ci < 4 kBlocks of its fragment: query rows col(ci) (SmallFragment, N = 16 kBlocks).
template <typename T, bool kFp8, int kBlocks, bool kGather>
__device__ __forceinline__ void small_values(const MlaDecodeParams& p, SmallStorage& s,
                                             const PartWalk& walk, int kv_head, int tid) {
  constexpr int kCols = 4 * kBlocks;
  constexpr int kAcc = 8 * kBlocks;
  const SmallFragment f(tid);
  const int lane = tid % 32;
  const int heads_per_kv = p.num_heads_q / p.num_heads_kv;
  const int rows = p.seqlen_q * heads_per_kv;
  // Tiles in the part: the last two hand their P buffer back to no one.
  int tiles = 0;
  for (int i = walk.batch_begin; i <= walk.batch_end && i < p.batch; ++i) {
    const int seqlen = small_uniform(kernel_seqlen(p, i));
    tiles += max(0, small_uniform(walk.hi(i, num_kv_blocks(seqlen))) - small_uniform(walk.lo(i)));
  }
  // Row r of this thread's m64 O^T fragment (r = 0: tok0, 1: tok1) in block j is dim 64 j + .. :
  // the fragment row itself (16-bit), or dims 2g, 2g + 1 of the warp's 16 (FP8, fp8_v_fragments).
  const int dim0 = kFp8 ? 16 * f.warp + 2 * f.g : f.tok0;
  const int dim1 = dim0 + (kFp8 ? 1 : 8);

  SubTileRing pos;
  int n = 0;
  for (int i = walk.batch_begin; i <= walk.batch_end && i < p.batch; ++i) {
    const int seqlen = small_uniform(kernel_seqlen(p, i));
    const int lo = small_uniform(walk.lo(i)), hi = small_uniform(walk.hi(i, num_kv_blocks(seqlen)));
    if (lo >= hi) continue;

    float o[8][kAcc];
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int k = 0; k < kAcc; ++k) o[j][k] = 0.f;
    float fin_max[kCols], fin_sum[kCols];
    float fin_gmax[4] = {1.f, 1.f, 1.f, 1.f};  // FP8: the unit of P^T per group at the end

    for (int blk = lo; blk < hi; ++blk, ++n) {
      const int buf = n % 2;
      named_barrier_sync(static_cast<int>(SmallBarrier::kPFull0) + buf, small_handoff_threads(kBlocks));
      float gf[4] = {1.f, 1.f, 1.f, 1.f};  // FP8: rescale of the group blocks of O
      if constexpr (kFp8) {
        char* stage = fp8_stage<kBlocks>(s, Fp8Ring<kBlocks>::slot(n));
        mbar_wait(&s.staged_full[Fp8Ring<kBlocks>::slot(n)], Fp8Ring<kBlocks>::phase(n));  // visibility
        // Rows past the sequence end hold whatever the stage had (e4m3 NaN included, which the
        // f16 conversion keeps): zero them, since O^T multiplies them by P = 0. The scores
        // warpgroups are done with this stage (they handed P^T over).
        const int valid = seqlen - blk * kBlockN;
        if (valid < kBlockN) {
          for (int c = valid * 8 + tid; c < kBlockN * 8; c += kSmallMathThreads)
#pragma unroll
            for (int j = 0; j < 4; ++j)
              *reinterpret_cast<uint4*>(stage + j * (kBlockN * 128) + c * 16) = make_uint4(0, 0, 0, 0);
          fence_proxy_async();  // before TMA refills the stage
          named_barrier_sync(static_cast<int>(SmallBarrier::kVTailZeroed), kSmallMathThreads);
        }
#pragma unroll
        for (int g = 0; g < 4; ++g) gf[g] = s.gfac[buf][g];
      }
      float alpha[kCols];
#pragma unroll
      for (int ci = 0; ci < kCols; ++ci) alpha[ci] = s.alpha[buf][f.col(ci)];
      if (blk == hi - 1) {
#pragma unroll
        for (int ci = 0; ci < kCols; ++ci) {
          fin_max[ci] = s.fin_max[buf][f.col(ci)];
          fin_sum[ci] = s.fin_sum[buf][f.col(ci)];
        }
        if constexpr (kFp8) {
#pragma unroll
          for (int g = 0; g < 4; ++g) fin_gmax[g] = s.fin_gmax[buf][g];
        }
      }
      bool unit = gf[0] == 1.f && gf[1] == 1.f && gf[2] == 1.f && gf[3] == 1.f;
#pragma unroll
      for (int ci = 0; ci < kCols; ++ci) unit = unit && alpha[ci] == 1.f;
      if (!__all_sync(0xffffffff, unit)) {
#pragma unroll
        for (int j = 0; j < 8; ++j)
#pragma unroll
          for (int ci = 0; ci < kCols; ++ci) {
            const float x = alpha[ci] * gf[j / 2];
            o[j][SmallFragment::reg(ci)] *= x;
            o[j][SmallFragment::reg(ci) + 2] *= x;
          }
      }
#pragma unroll
      for (int j = 0; j < 8; ++j) fence_operands(o[j]);
      if constexpr (kFp8) {
        small_values_fp8<kBlocks>(s, Fp8Ring<kBlocks>::slot(n), buf, f.warp, lane, o);
        if (tid == 0) mbar_arrive(&s.staged_empty[Fp8Ring<kBlocks>::slot(n)]);
      } else {
        static_assert(kFp8 || kBlocks == 1, "16-bit caches: one row block");
        small_values_16bit<T, kGather>(s, pos, buf, tid, o);
      }
#pragma unroll
      for (int j = 0; j < 8; ++j) fence_operands(o[j]);
      if (n + 2 < tiles)
        named_barrier_arrive(static_cast<int>(SmallBarrier::kPEmpty0) + buf, small_handoff_threads(kBlocks));
    }

    // Epilogue: normalise, write O (or the split partial).
    const int first = p.num_splits[i];
    const int n_splits = p.num_splits[i + 1] - first;
    const int64_t split = static_cast<int64_t>(first) + (i == walk.batch_begin ? walk.split_begin : 0);
    const bool partial_ok = partial_slot_ok(p, first, n_splits, split);
    const bool over = seqlen_over_table(p, i);  // NaN out, lse (and partials)
#pragma unroll
    for (int ci = 0; ci < kCols; ++ci) {
      const int r = f.col(ci);
      if (r >= rows) continue;
      const float tot = fin_sum[ci];
      const float inv = over ? NAN : tot > 0.f ? 1.f / tot : 0.f;
      const float lse2 = over ? NAN : tot > 0.f ? fin_max[ci] + __log2f(tot) : -INFINITY;
      const int sq = r / heads_per_kv, h = kv_head * heads_per_kv + r % heads_per_kv;
      const int r0 = SmallFragment::reg(ci), r1 = r0 + 2;
      if (n_splits == 1) {
        T* out = static_cast<T*>(p.out) + i * p.o_batch_stride + sq * p.o_seq_stride +
                 h * p.o_head_stride;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          const float x = inv * fin_gmax[j / 2];
          out[64 * j + dim0] = ElementOps<T>::from_float(o[j][r0] * x);
          out[64 * j + dim1] = ElementOps<T>::from_float(o[j][r1] * x);
        }
        if (f.warp == 0 && f.g == 0) {
          p.lse[(static_cast<int64_t>(i) * p.num_heads_q + h) * p.seqlen_q + sq] =
              lse2 == -INFINITY ? INFINITY : lse2 * 0.6931471805599453f;
        }
      } else if (partial_ok) {
        const int64_t idx = (static_cast<int64_t>(split) * p.num_heads_kv + kv_head) * rows + r;
        T* oa = static_cast<T*>(p.o_accum) + idx * kHeadDimV;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          const float x = inv * fin_gmax[j / 2];
          oa[64 * j + dim0] = ElementOps<T>::from_float(o[j][r0] * x);
          oa[64 * j + dim1] = ElementOps<T>::from_float(o[j][r1] * x);
        }
        if (f.warp == 0 && f.g == 0) p.lse_accum[idx] = lse2;
      }
    }
  }
}

// 16-bit caches (kFp8 = false) or the FP8-with-scale format (bf16 queries); kBlocks row
// blocks of 16 (2 for FP8 caches only). kGather: 16-bit pages below kMinTmaPage, filled by
// small_gather_16bit. A template flag, not a runtime test of the page size: the consumers'
// fence after every sub-tile wait is then absent from the TMA build's sub-tile loop.
template <typename T, bool kFp8, int kBlocks, bool kGather>
__global__ void __launch_bounds__(kSmallThreads, 1)
    mla_decode_small_kernel(const __grid_constant__ MlaDecodeParams p,
                            const __grid_constant__ KvMaps maps) {
  extern __shared__ char smem_raw[];
  // Launched as the programmatic dependent of the kernel before it (get_mla_metadata's in a
  // step that plans and decodes), which may still be running: wait before reading anything.
  // Waiting after the barrier setup instead cost the wide and the FP8 two-block kernels 4 and
  // 12 more bytes of spill (ptxas).
  griddep_wait();
  // Only now: the combine CTAs this lets start read num_splits before their own wait, and
  // after get_mla_metadata's kernel (this grid's PDL predecessor) num_splits is final only
  // once the wait above returned. Triggering at entry let them read the previous plan's
  // num_splits when this grid left SMs free (docs/design.md, Launches).
  griddep_launch_dependents();  // the combine's CTAs with nothing to merge exit under this grid
  const uint32_t pad = (1024u - (smem_addr(smem_raw) & 1023u)) & 1023u;  // as mla_decode_kernel
  auto& s = *reinterpret_cast<SmallStorage*>(smem_raw + pad);
  const PartWalk walk(p.tile_scheduler_metadata + blockIdx.x * kMetadataInts);
  const int kv_head = blockIdx.y;
  const int warp = threadIdx.x / 32;
  if (threadIdx.x == 0) {
    tma_prefetch_descriptor(kFp8 ? &maps.fp8_latent_sw128 : &maps.kv);
    if constexpr (kFp8) {
      tma_prefetch_descriptor(&maps.fp8_rope);
      tma_prefetch_descriptor(&maps.fp8_scale);
      for (int t = 0; t < Fp8Plan<kBlocks>::kStages; ++t) {
        mbar_init(&s.staged_full[t], 1);   // expect_tx
        mbar_init(&s.staged_empty[t], 1);  // the values warpgroup's thread 0
      }
    } else {
      for (int t = 0; t < kSmallSlots16; ++t) {
        // expect_tx (TMA), or one cp.async arrive per producer thread (gather)
        mbar_init(&s.full[t], kGather ? 128 : 1);
        mbar_init(&s.empty[t], 1);
      }
    }
    fence_barrier_init();
  }
  __syncthreads();

  if (warp < 4) {
    setmaxnreg_dec<kBlocks == 2 ? kSmall2TmaRegs : kSmallTmaRegs>();
    if constexpr (kFp8) {
      if (threadIdx.x != 0) return;
      small_tma_fp8<kBlocks>(p, maps, s, walk, kv_head);
    } else {
      if constexpr (kGather) {
        small_gather_16bit(p, s, walk, kv_head, threadIdx.x);
        return;
      }
      const int issuers = p.page_block_size < kBlockN ? kIssuers : 1;
      if (threadIdx.x % 32 != 0 || warp >= issuers) return;
      small_tma_16bit(p, &maps.kv, s, walk, kv_head, warp, issuers);
    }
  } else if constexpr (kBlocks == 2) {
    // Block 1's scores warpgroup is warpgroup 1, block 0's warpgroup 2: one copy of the code
    // (the block is a runtime value), so both meet their shared barriers at the same
    // instructions (compute-sanitizer's synccheck flags a bar.sync generation completed from
    // two inlined copies as divergent).
    if (warp < kSmallValueWarp) {
      setmaxnreg_inc<kSmall2ScoreRegs>();
      small_scores<T, kFp8, 2, false>(p, s, walk, kv_head, warp < kSmallScoreWarp ? 1 : 0, threadIdx.x % 128);
    } else {
      setmaxnreg_inc<kSmall2ValueRegs>();
      small_values<T, kFp8, 2, false>(p, s, walk, kv_head, threadIdx.x - kSmallValueWarp * 32);
    }
  } else {
    if (warp < kSmallScoreWarp) {
      setmaxnreg_dec<kSmallIdleRegs>();
    } else if (warp < kSmallValueWarp) {
      setmaxnreg_inc<kSmallMathRegs>();
      small_scores<T, kFp8, 1, kGather>(p, s, walk, kv_head, 0, threadIdx.x - kSmallScoreWarp * 32);
    } else {
      setmaxnreg_inc<kSmallMathRegs>();
      small_values<T, kFp8, 1, kGather>(p, s, walk, kv_head, threadIdx.x - kSmallValueWarp * 32);
    }
  }
}

}  // namespace flashmla::sm90
