// The sm90 small-head decode kernel: at most 16 query rows per kv head (h_q * s_q / h_kv <= 16),
// pages of >= 16 tokens, 16-bit or FP8 caches. One CTA = (scheduler part, kv head), walking the
// same split-KV schedule as the wide kernel and writing the same partials for the combine.
//
// The products are transposed so the 64 tokens of a tile are the wgmma M and the 16 query rows
// its N: S^T = K Q^T (A = the K sub-tile, B = Q, both K-major) and O^T = V^T P^T (A = the V
// sub-tile read MN-major, B = P^T), 68 m64n16k16 per tile instead of the wide kernel's 64-row
// padding (4x its tensor work at h_q = 16). One math warpgroup does a tile at a time
// (S^T -> softmax -> O^T); the column (query-row) maxima cross its four warps through shared
// memory. The ring is sub-tile grained (small_config.h): the TMA warp refills a slot as soon as
// the math releases it, and for FP8 caches two expander warpgroups (alternate tiles) turn
// staged raw records into bf16 sub-tiles (fp8::e4m3x2_to_bf16x2, the conversion
// dequantize_kv_fp8 uses) while the math works (docs/design.md, docs/perf-log.md v13).
#pragma once

#include "fp8_record.cuh"
#include "sm90/decode_common.cuh"
#include "sm90/decode_producers.cuh"
#include "sm90/small_config.h"

namespace flashmla::sm90 {

// A position in a ring of `slots` entries and the phase of its current lap: consumers wait for
// `full` with `phase`, the producer for `empty` with `phase ^ 1` (the first lap finds it free).
struct RingPos {
  int slot = 0;
  uint32_t phase = 0;
  __device__ void advance(int slots) {
    if (++slot == slots) {
      slot = 0;
      phase ^= 1;
    }
  }
};

__device__ __forceinline__ void small_sync(SmallBarrier b) {
  named_barrier_sync(static_cast<int>(b), kSmallMathThreads);
}

// The ring's layout for this launch: `staging` FP8 staging tiles (0 for 16-bit caches), then
// the sub-tile slots.
struct SmallRing {
  int staging, slots;
  __device__ explicit SmallRing(int fp8_staging)
      : staging(fp8_staging), slots(fp8_staging ? small_fp8_slots(fp8_staging) : kSmallSlots16) {}
  __device__ char* slot(SmallStorage& s, int i) const {
    return s.ring + staging * kFp8StagingBytes + i * kSubTileBytes;
  }
  __device__ char* stage(SmallStorage& s, int i) const { return s.ring + i * kFp8StagingBytes; }
};

// One thread, 16-bit caches: the TMA boxes of every sub-tile of every tile of the part, each
// into the next slot once the math has released it. Pages past the sequence end are not read.
__device__ __forceinline__ void small_tma_16bit(const MlaDecodeParams& p, const CUtensorMap* map,
                                                SmallStorage& s, const SmallRing& ring,
                                                const PartWalk& walk, int kv_head) {
  const int page_shift = log2_pow2(p.page_block_size);
  const int box_shift = min(page_shift, log2_pow2(kBlockN));
  const int box_rows = 1 << box_shift;
  RingPos pos;
  for (TileCursor tile(p, walk); tile.valid(p, walk); tile.advance(p, walk)) {
    const TilePages pages(p, tile, box_shift, page_shift);
#pragma unroll 1
    for (int t = 0; t < kSubTiles; ++t) {
      mbar_wait(&s.empty[pos.slot], pos.phase ^ 1);
      char* dst = ring.slot(s, pos.slot);
      mbar_expect_tx(&s.full[pos.slot], pages.boxes * box_rows * 128);
#pragma unroll 1
      for (int b = 0; b < pages.boxes; ++b) {
        const int tok = tile.blk * kBlockN + b * box_rows;
        tma_load_4d(dst + b * box_rows * 128, map, &s.full[pos.slot], t * kSubCols,
                    tok & (p.page_block_size - 1), kv_head, pages.of(b));
      }
      pos.advance(ring.slots);
    }
  }
}

// One thread, FP8 caches: each tile's latent bytes and scales into the next staging tile once
// the expanders are done with it.
__device__ __forceinline__ void small_tma_fp8(const MlaDecodeParams& p, const KvMaps& maps,
                                              SmallStorage& s, const SmallRing& ring,
                                              const PartWalk& walk, int kv_head) {
  RingPos pos;
  for (TileCursor tile(p, walk); tile.valid(p, walk); tile.advance(p, walk)) {
    mbar_wait(&s.staged_empty[pos.slot], pos.phase ^ 1);
    char* st = ring.stage(s, pos.slot);
    issue_fp8_boxes(p, &maps.fp8_latent_sw128, maps, tile, kv_head, st, st + kFp8StagingScales,
                    nullptr, &s.staged_full[pos.slot]);
    pos.advance(ring.staging);
  }
}

// Expander warpgroup `which` (0, 1), FP8 caches: the staged records of every other tile ->
// bf16 sub-tiles in the slots. Thread (row, half) converts dims [32 half, 32 half + 32) of its
// row of a sub-tile; a warp covers 32 rows, so the eight lanes of each 16-byte access phase hit
// eight different swizzled chunks (no bank conflicts on either side). The two sub-tiles of a
// latent slot (128 dims, one scale) are converted together and published with one proxy fence.
// The row's 64 B of RoPE are loaded from global memory at the start of the tile and stored
// last. Rows past the sequence end are written as zeros (their records were not loaded), so
// the math needs no tail pass. Measured alternatives (docs/perf-log.md v13): one expander
// warpgroup (latency-bound), both splitting every tile by sub-tile parity (slower).
__device__ __forceinline__ void small_expand_fp8(const MlaDecodeParams& p, SmallStorage& s,
                                                 const SmallRing& ring, const PartWalk& walk,
                                                 int kv_head, int which, int tid) {
  const int row = tid % kBlockN, half = tid / kBlockN;
  const int sw = row & 7;
  const int page_shift = log2_pow2(p.page_block_size);
  const auto* cache = static_cast<const uint8_t*>(p.k_cache);
  // Stores 4 x 16 B (bf16 chunks 4 half ..) of this row into the slot at `at`. The slot's
  // previous use may be the other warpgroup's (with 17 slots: this tile's RoPE position reuses
  // the previous tile's sub-tile 0), and a parity wait cannot tell "released" from "released
  // two laps ago" if that fill has not even happened: so first wait for the previous use to
  // have been filled (full, previous lap), then released (empty). For a slot this warpgroup
  // filled last, the first wait passes at once. The lap before that is always complete: the
  // math has finished S^T of this warpgroup's previous tile before this tile's slots free up.
  auto store = [&](const RingPos& at, const uint4 (&out)[4], bool live) {
    mbar_wait(&s.full[at.slot], at.phase ^ 1);
    mbar_wait(&s.empty[at.slot], at.phase ^ 1);
    char* dst = ring.slot(s, at.slot) + row * 128;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      *reinterpret_cast<uint4*>(dst + (((4 * half + k) ^ sw) << 4)) =
          live ? out[k] : make_uint4(0, 0, 0, 0);
    }
  };
  RingPos staged, pos;
  int n = 0;
  for (TileCursor tile(p, walk); tile.valid(p, walk); tile.advance(p, walk), ++n) {
    if (n % kSmallExpanders != which) {  // the other warpgroup's tile
      for (int t = 0; t < kSubTiles; ++t) pos.advance(ring.slots);
      staged.advance(ring.staging);
      continue;
    }
    const int tok = tile.blk * kBlockN + row;
    const bool live = tok < tile.seqlen;
    uint4 rope[4] = {};
    if (live) {
      const int page = __ldg(tile.table(p) + (tok >> page_shift));
      const uint8_t* rec = cache + static_cast<int64_t>(page) * p.k_block_stride +
                           static_cast<int64_t>(tok & (p.page_block_size - 1)) * p.k_row_stride +
                           static_cast<int64_t>(kv_head) * p.k_head_stride + fp8::kRopeOffset +
                           half * 64;
#pragma unroll
      for (int k = 0; k < 4; ++k) rope[k] = __ldg(reinterpret_cast<const uint4*>(rec) + k);
    }
    mbar_wait(&s.staged_full[staged.slot], staged.phase);
    const char* st = ring.stage(s, staged.slot);
    const float4 scale = *reinterpret_cast<const float4*>(st + kFp8StagingScales + row * 16);
#pragma unroll 1
    for (int j = 0; j < 4; ++j) {
      // Latent slot j (dims 128 j ..) = sub-tiles 2 j, 2 j + 1. Sub-tile u's input is chunks
      // 4 u + 2 half + {0, 1} of the row's 128 bytes (32 e4m3), its output bf16 chunks 4 half ..
      const char* src = st + j * (kBlockN * 128) + row * 128;
      const float sc = j == 0 ? scale.x : j == 1 ? scale.y : j == 2 ? scale.z : scale.w;
      uint4 out[2][4];
#pragma unroll
      for (int u = 0; u < 2; ++u) {
        const int c = 4 * u + 2 * half;
        const uint4 v[2] = {*reinterpret_cast<const uint4*>(src + ((c ^ sw) << 4)),
                            *reinterpret_cast<const uint4*>(src + (((c + 1) ^ sw) << 4))};
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          const uint32_t a = (k % 2) ? v[k / 2].z : v[k / 2].x;
          const uint32_t b = (k % 2) ? v[k / 2].w : v[k / 2].y;
          out[u][k] = make_uint4(fp8::e4m3x2_to_bf16x2(a, sc), fp8::e4m3x2_to_bf16x2(a >> 16, sc),
                                 fp8::e4m3x2_to_bf16x2(b, sc), fp8::e4m3x2_to_bf16x2(b >> 16, sc));
        }
      }
      if (j == 3) mbar_arrive(&s.staged_empty[staged.slot]);  // last read of the staging tile
      const RingPos first = pos;
      pos.advance(ring.slots);
      store(first, out[0], live);
      store(pos, out[1], live);
      fence_proxy_async();  // generic stores -> the math's wgmma reads (async proxy)
      mbar_arrive(&s.full[first.slot]);
      mbar_arrive(&s.full[pos.slot]);
      pos.advance(ring.slots);
    }
    // RoPE, already bf16: stored with the slot's swizzle.
    store(pos, rope, live);
    fence_proxy_async();
    mbar_arrive(&s.full[pos.slot]);
    pos.advance(ring.slots);
    staged.advance(ring.staging);
  }
}

// The math warpgroup. Accumulator fragment of an m64n16 tile: thread (warp w, lane l) holds
// rows 16 w + l / 4 (+ 8) and columns 8 k + 2 (l % 4) + e, register 4 k + e (+ 2 for the +8
// row). Rows are tokens (S^T) or dims (O^T), columns query rows; ci = 2 k + e below.
template <typename T>
__device__ __forceinline__ void small_math(const MlaDecodeParams& p, SmallStorage& s,
                                           const SmallRing& ring_layout, const PartWalk& walk,
                                           int kv_head, int tid) {
  const auto uniform = [](int v) { return __shfl_sync(0xffffffff, v, 0); };
  const int fp8 = uniform(p.kv_format == KvFormat::kFP8WithScale);
  const int slots = uniform(ring_layout.slots);
  const int warp = tid / 32, lane = tid % 32, g = lane / 4, quad = lane % 4;
  const int tok0 = 16 * warp + g, tok1 = tok0 + 8;  // this thread's rows of an m64 tile
  auto col = [&](int ci) { return 8 * (ci / 2) + 2 * quad + (ci % 2); };
  auto reg = [](int ci) { return 4 * (ci / 2) + (ci % 2); };  // (+2: the +8 row)
  const float scale_log2 = p.softmax_scale * 1.4426950408889634f;
  const int heads_per_kv = p.num_heads_q / p.num_heads_kv;
  const int rows = p.seqlen_q * heads_per_kv;
  const uint32_t ring = smem_addr(ring_layout.slot(s, 0));
  const uint64_t k_desc0 = make_desc_sw128(ring, 16, 1024);             // A K-major
  const uint64_t v_desc0 = make_desc_sw128(ring, kSubTileBytes, 1024);  // A MN-major
  const uint64_t q_desc0 = make_desc_sw128(smem_addr(s.q), 16, 1024);   // B K-major

  RingPos pos;
  int parity = 0;  // of the tile count: P and red_max buffers
  for (int i = walk.batch_begin; i <= walk.batch_end && i < p.batch; ++i) {
    const int seqlen = uniform(p.cache_seqlens[i]);
    const int lo = uniform(walk.lo(i)), hi = uniform(walk.hi(i, num_kv_blocks(seqlen)));
    if (lo >= hi) continue;
    int limit[4];
#pragma unroll
    for (int ci = 0; ci < 4; ++ci) limit[ci] = row_limit(p, seqlen, 0, col(ci));

    small_sync(SmallBarrier::kQFree);
    load_q<kSmallRows, kSmallMathThreads>(p, s.q[0], i, kv_head, 0, tid);
    fence_proxy_async();
    small_sync(SmallBarrier::kQReady);

    float o[8][8];
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int k = 0; k < 8; ++k) o[j][k] = 0.f;
    float m[4], l[4];
#pragma unroll
    for (int ci = 0; ci < 4; ++ci) {
      m[ci] = -INFINITY;  // running max of query row col(ci), log2 domain (same in all threads)
      l[ci] = 0.f;        // this thread's part of its row sum (its two tokens of every tile)
    }

    for (int blk = lo; blk < hi; ++blk) {
      const int valid = seqlen - blk * kBlockN;
      int slot[kSubTiles];
      // Four accumulators, one per k step of a sub-tile: an m64n16k16 is 8 tensor clocks, far
      // below its latency, so one chain of 36 dependent wgmmas would run at the latency.
      float part[4][8];
#pragma unroll
      for (int t = 0; t < kSubTiles; ++t) {
        slot[t] = pos.slot;
        mbar_wait(&s.full[pos.slot], pos.phase);
        if (!fp8 && valid < kBlockN && t < kSubTiles - 1) {
          // 16-bit caches: rows past the end are whatever the slot held (NaN included), and
          // O^T would multiply them by P = 0. The RoPE sub-tile only feeds masked scores.
          char* sub = ring_layout.slot(s, pos.slot);
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
        pos.advance(slots);
      }
      wgmma_commit();
      wgmma_wait<0>();
#pragma unroll
      for (int k = 0; k < 4; ++k) fence_operands(part[k]);
      float sc[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) sc[e] = (part[0][e] + part[1][e]) + (part[2][e] + part[3][e]);
      // RoPE: read by S^T only. No slot is ever released before its tile's S^T is complete:
      // the expanders' two-wait argument (small_expand_fp8) relies on it.
      if (tid == 0) mbar_arrive(&s.empty[slot[kSubTiles - 1]]);

      // Softmax down the token axis: per query row (column) the max over the tile's 64 tokens,
      // reduced over the lanes of a warp, then over the four warps through red_max.
      float mx[4];
#pragma unroll
      for (int ci = 0; ci < 4; ++ci) {
        float& a = sc[reg(ci)];
        float& b = sc[reg(ci) + 2];
        a = blk * kBlockN + tok0 < limit[ci] ? a : -INFINITY;
        b = blk * kBlockN + tok1 < limit[ci] ? b : -INFINITY;
        float x = fmaxf(a, b);
        x = fmaxf(x, __shfl_xor_sync(0xffffffff, x, 4));
        x = fmaxf(x, __shfl_xor_sync(0xffffffff, x, 8));
        mx[ci] = fmaxf(x, __shfl_xor_sync(0xffffffff, x, 16));
      }
      if (g == 0) {
#pragma unroll
        for (int ci = 0; ci < 4; ++ci) s.red_max[parity][warp][col(ci)] = mx[ci];
      }
      small_sync(SmallBarrier::kMaxPublished);
      char* sp = reinterpret_cast<char*>(s.p);
      float alpha[4];
#pragma unroll
      for (int ci = 0; ci < 4; ++ci) {
        const int c = col(ci);
        const float tile_max = fmaxf(fmaxf(s.red_max[parity][0][c], s.red_max[parity][1][c]),
                                     fmaxf(s.red_max[parity][2][c], s.red_max[parity][3][c]));
        const float now = fmaxf(m[ci], tile_max * scale_log2);
        const float use = now == -INFINITY ? 0.f : now;  // no key seen yet: exp2 gives 0
        alpha[ci] = fast_exp2(m[ci] - use);
        m[ci] = now;
        const float p0 = fast_exp2(fmaf(sc[reg(ci)], scale_log2, -use));
        const float p1 = fast_exp2(fmaf(sc[reg(ci) + 2], scale_log2, -use));
        l[ci] = l[ci] * alpha[ci] + p0 + p1;
        *reinterpret_cast<T*>(sp + swizzled_offset(c, tok0)) = ElementOps<T>::from_float(p0);
        *reinterpret_cast<T*>(sp + swizzled_offset(c, tok1)) = ElementOps<T>::from_float(p1);
      }
      fence_proxy_async();  // P^T is read by the wgmma of every warp
      small_sync(SmallBarrier::kPReady);
      if (!__all_sync(0xffffffff, alpha[0] == 1.f && alpha[1] == 1.f && alpha[2] == 1.f &&
                                      alpha[3] == 1.f)) {
#pragma unroll
        for (int j = 0; j < 8; ++j)
#pragma unroll
          for (int ci = 0; ci < 4; ++ci) {
            o[j][reg(ci)] *= alpha[ci];
            o[j][reg(ci) + 2] *= alpha[ci];
          }
      }

      // O^T block j (dims 64 j ..) reads V sub-tile j only. Two commit groups of four blocks,
      // issued k-step-major so that consecutive wgmmas are independent (see S^T above); each
      // group's four slots are released as soon as it is done.
      const uint64_t p_desc = make_desc_sw128(smem_addr(s.p), 16, 1024);
#pragma unroll
      for (int j = 0; j < 8; ++j) fence_operands(o[j]);
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
#pragma unroll
      for (int j = 0; j < 8; ++j) fence_operands(o[j]);
      parity ^= 1;
    }

    // Epilogue: row sums over lanes and warps, normalise, write O (or the split partial).
#pragma unroll
    for (int ci = 0; ci < 4; ++ci) {
      float x = l[ci];
      x += __shfl_xor_sync(0xffffffff, x, 4);
      x += __shfl_xor_sync(0xffffffff, x, 8);
      l[ci] = x + __shfl_xor_sync(0xffffffff, x, 16);
    }
    if (g == 0) {
#pragma unroll
      for (int ci = 0; ci < 4; ++ci) s.red_sum[warp][col(ci)] = l[ci];
    }
    small_sync(SmallBarrier::kSumPublished);
    const int n_splits = p.num_splits[i + 1] - p.num_splits[i];
    const int split = p.num_splits[i] + (i == walk.batch_begin ? walk.split_begin : 0);
#pragma unroll
    for (int ci = 0; ci < 4; ++ci) {
      const int r = col(ci);
      if (r >= rows) continue;
      const float tot = s.red_sum[0][r] + s.red_sum[1][r] + s.red_sum[2][r] + s.red_sum[3][r];
      const float inv = tot > 0.f ? 1.f / tot : 0.f;
      const float lse2 = tot > 0.f ? m[ci] + __log2f(tot) : -INFINITY;
      const int sq = r / heads_per_kv, h = kv_head * heads_per_kv + r % heads_per_kv;
      if (n_splits == 1) {
        T* out = static_cast<T*>(p.out) + i * p.o_batch_stride + sq * p.o_seq_stride +
                 h * p.o_head_stride;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          out[64 * j + tok0] = ElementOps<T>::from_float(o[j][reg(ci)] * inv);
          out[64 * j + tok1] = ElementOps<T>::from_float(o[j][reg(ci) + 2] * inv);
        }
        if (warp == 0 && g == 0) {
          p.lse[(static_cast<int64_t>(i) * p.num_heads_q + h) * p.seqlen_q + sq] =
              lse2 == -INFINITY ? INFINITY : lse2 * 0.6931471805599453f;
        }
      } else {
        const int64_t idx = (static_cast<int64_t>(split) * p.num_heads_kv + kv_head) * rows + r;
        float* oa = p.o_accum + idx * kHeadDimV;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          oa[64 * j + tok0] = o[j][reg(ci)] * inv;
          oa[64 * j + tok1] = o[j][reg(ci) + 2] * inv;
        }
        if (warp == 0 && g == 0) p.lse_accum[idx] = lse2;
      }
    }
  }
}

// fp8_staging: kSmallFp8Staging for FP8 caches, 0 for 16-bit caches.
template <typename T>
__global__ void __launch_bounds__(kSmallThreads, 1)
    mla_decode_small_kernel(const __grid_constant__ MlaDecodeParams p,
                            const __grid_constant__ KvMaps maps, int fp8_staging) {
  extern __shared__ char smem_raw[];
  const uint32_t pad = (1024u - (smem_addr(smem_raw) & 1023u)) & 1023u;
  auto& s = *reinterpret_cast<SmallStorage*>(smem_raw + pad);
  const PartWalk walk(p.tile_scheduler_metadata + blockIdx.x * kMetadataInts);
  const int kv_head = blockIdx.y;
  const SmallRing ring(fp8_staging);
  const int warp = threadIdx.x / 32;

  if (threadIdx.x == 0) {
    tma_prefetch_descriptor(fp8_staging ? &maps.fp8_latent_sw128 : &maps.kv);
    for (int t = 0; t < ring.slots; ++t) {
      mbar_init(&s.full[t], fp8_staging ? kSmallExpandThreads : 1);  // expanders, or expect_tx
      mbar_init(&s.empty[t], 1);
    }
    for (int t = 0; t < ring.staging; ++t) {
      mbar_init(&s.staged_full[t], 1);
      mbar_init(&s.staged_empty[t], kSmallExpandThreads);  // the tile's expander warpgroup
    }
    fence_barrier_init();
  }
  __syncthreads();

  if (warp < kSmallMathWarp) {
    setmaxnreg_dec<kSmallExpandRegs>();
    if (fp8_staging) small_expand_fp8(p, s, ring, walk, kv_head, warp / 4, threadIdx.x % 128);
  } else if (warp < kSmallTmaWarp) {
    setmaxnreg_inc<kSmallMathRegs>();
    small_math<T>(p, s, ring, walk, kv_head, threadIdx.x - kSmallMathWarp * 32);
  } else {
    setmaxnreg_dec<kSmallTmaRegs>();
    if (threadIdx.x != kSmallTmaWarp * 32) return;
    if (fp8_staging) {
      small_tma_fp8(p, maps, s, ring, walk, kv_head);
    } else {
      small_tma_16bit(p, &maps.kv, s, ring, walk, kv_head);
    }
  }
}

}  // namespace flashmla::sm90
