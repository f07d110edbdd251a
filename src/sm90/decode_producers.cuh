// The producer warpgroup of the sm90 decode kernel: fills the two-stage KV ring. 16-bit caches
// with pages of >= 16 tokens by TMA boxes per sub-tile, smaller pages by a cp.async gather, and
// FP8 caches by staging the raw records and expanding them to bf16 in place. See docs/design.md.
#pragma once

#include <cuda_fp8.h>

#include "fp8_record.cuh"
#include "sm90/decode_common.cuh"

namespace flashmla::sm90 {

// Lanes of each producer warp: the TMA boxes of every page that holds a live token of the
// tile, per sub-tile, each sub-tile completing on its own full[stage][t] (so S can start on
// the first sub-tiles). Warps 0, 1 refill sub-tiles 0..3 as soon as math warpgroup 0 has
// released them, warps 2, 3 sub-tiles 4..7 after warpgroup 1, and warp 3 the RoPE sub-tile
// after both: in the ping-pong math the two warpgroups finish a stage at different times.
// One thread issuing all 36 boxes of a 16-token-page tile put ~0.7 us of issue latency on
// every refill (docs/perf-log.md v8); a lane per box of a sub-tile took another 10-13% off
// pages of 16 (session 11). Pages past the sequence end are not read at all (their
// table entries may be garbage); their rows are zeroed by the math like any row past the end.
template <bool kLanePerBox>
__device__ __forceinline__ void producer_tma(const MlaDecodeParams& p, const CUtensorMap* kv_map,
                                             SharedStorage& s, const PartWalk& walk, int kv_head,
                                             int warp, int lane) {
  const int page_shift = log2_pow2(p.page_block_size);
  const int box_shift = min(page_shift, log2_pow2(kBlockN));  // box rows: min(page, 64)
  const int box_rows = 1 << box_shift;
  const int half = warp / 2;  // which math warpgroup's release this warp waits for
  int iter = 0;
  for (TileCursor tile(p, walk); tile.valid(p, walk); tile.advance(p, walk), ++iter) {
    const int stage = KvRing::slot(iter);
    const TilePages pages(p, tile, box_shift, page_shift);  // before the stage wait
    // After the waits only shifts and masks: the refill is on the critical path of CTAs with
    // many tiles, and a runtime divisor here cost up to 20% at h_q = 128 (docs/perf-log.md v8).
    // kLanePerBox (pages of 16, 32 tokens: 4 or 2 boxes per sub-tile): lane b issues box b.
    // A box may complete before lane 0's expect_tx: the phase cannot, since that expect_tx
    // is the barrier's only arrival. Larger pages: lane 0 alone, one box per sub-tile.
    auto issue = [&](int t) {
      if (lane == 0) mbar_expect_tx(&s.full[stage][t], pages.boxes * box_rows * 128);
      if (kLanePerBox ? lane < pages.boxes : true) {
        const int b = kLanePerBox ? lane : 0;
        const int tok = tile.blk * kBlockN + b * box_rows;
        tma_load_4d(s.kv[stage][t] + b * box_rows * kSubCols, kv_map, &s.full[stage][t],
                    t * kSubCols, tok & (p.page_block_size - 1), kv_head, pages.of(b));
      }
    };
    if (iter >= kStages) mbar_wait(&s.empty[stage][half], KvRing::empty_phase(iter));
    issue(2 * warp);
    issue(2 * warp + 1);
    if (warp == 3) {
      if (iter >= kStages) mbar_wait(&s.empty[stage][0], KvRing::empty_phase(iter));
      issue(kSubTiles - 1);
    }
  }
}

// Pages below 16 tokens: the 128 producer threads gather with cp.async. Warp w copies rows
// w, w + 4, ..., a whole row per step (each instruction reads 512 contiguous bytes of one
// token, one page lookup per row), rather than a thread pair per row, which made every
// instruction touch 16 rows of 16 different pages and ran at half the bandwidth (v8).
__device__ __forceinline__ void producer_gather(const MlaDecodeParams& p, SharedStorage& s,
                                                const PartWalk& walk, int kv_head, int tid) {
  const int page_shift = log2_pow2(p.page_block_size);
  const int warp = tid / 32, lane = tid % 32;
  constexpr int kChunksPerRow = kHeadDim / 8;  // 72 chunks of 16 bytes
  constexpr int kRowsPerWarp = kBlockN / kProducerWarps;  // 16
  const auto* k_cache = static_cast<const uint16_t*>(p.k_cache);
  int iter = 0;
  for (TileCursor tile(p, walk); tile.valid(p, walk); tile.advance(p, walk), ++iter) {
    const int stage = KvRing::slot(iter);
    const int seqlen = tile.seqlen;
    // Lane j < 16 looks up the page of the warp's j-th row, before the stage wait.
    const int my_tok = tile.blk * kBlockN + warp + kProducerWarps * (lane % kRowsPerWarp);
    const int my_page = my_tok < seqlen ? gather_page(p, __ldg(tile.table(p) + (my_tok >> page_shift))) : 0;
    // The whole stage: splitting each row's copy by the two warpgroups' releases (as the TMA
    // producer does) measured 10-20% slower at page 1 (docs/perf-log.md v12).
    wait_stage_free(s, iter);
#pragma unroll 1
    for (int j = 0; j < kRowsPerWarp; ++j) {
      const int row = warp + kProducerWarps * j;
      const int tok = tile.blk * kBlockN + row;
      const int page = __shfl_sync(0xffffffff, my_page, j);
      if (tok >= seqlen) break;  // rows only grow with j
      const uint16_t* src = k_cache + kv_record_offset(p, page, tok, kv_head);
      for (int c = lane; c < kChunksPerRow; c += 32) {
        char* sub = reinterpret_cast<char*>(s.kv[stage][c / 8]);
        cp_async_16(sub + swizzled_offset(row, (c % 8) * 8), src + c * 8);
      }
    }
#pragma unroll
    for (int t = 0; t < kSubTiles; ++t) cp_async_mbar_arrive(&s.full[stage][t]);
  }
}

// FP8 cache. The producer warpgroup (40 registers) stages each tile's raw records in the
// stage's own buffer and expands them in place, so FP8 needs no shared memory beyond the
// 16-bit ring. Staging layout (what the TMA boxes write, and the cp.async gather mimics):
//   sub-tiles 4..7: slot j = e4m3 latent dims [128 j, 128 j + 128) of the 64 rows, 128 B/row
//   sub-tile 8:     the RoPE dims, already bf16, 128B-swizzled like any 16-bit sub-tile
//   sub-tile 0:     the 4 fp32 scales of each row (16 B/row), read into registers first
// Expanding in an order where every write lands on bytes already read: sub-tiles 0..3 from
// slots 0, 1 (writes below the slots); barrier; 4, 5 from slot 2 (over slots 0, 1); barrier;
// 6, 7 from slot 3 (6 over slot 2; 7 over slot 3 itself, so its half of slot 3 is held in
// registers across one more barrier).
constexpr int kFp8SlotBytes = kBlockN * 128;          // 64 rows x 128 e4m3
constexpr int kFp8StagingOffset = 4 * kSubTileBytes;  // slots start at sub-tile 4
constexpr int kProducerBarrier = 6;                   // named barrier of the producer warpgroup

// The FP8 tensor maps, built only for FP8 caches with pages of >= 16 tokens: latent bytes
// (uint8, 128-byte boxes), scales (uint8, 16-byte boxes), RoPE (bf16, 128B-swizzled boxes).
struct KvMaps {
  CUtensorMap kv;         // 16-bit cache, or the FP8 latent bytes
  CUtensorMap fp8_scale;
  CUtensorMap fp8_rope;
  CUtensorMap fp8_latent_sw128;  // the latent bytes 128B-swizzled (small-head kernel stages)
};

__device__ __forceinline__ int opaque(int x) {
  asm volatile("" : "+r"(x));
  return x;
}

__device__ __forceinline__ void producer_sync() {
  named_barrier_sync(kProducerBarrier, kProducerThreads);
}

// This thread's 32 e4m3 of sub-tile t's dims (row `row`, dims 64 t + 32 half ..): 2 x 16 B.
__device__ __forceinline__ void read_slot(const char* stage_base, int t, int row, int half,
                                          uint4 (&v)[2]) {
  const char* src = stage_base + kFp8StagingOffset + (t / 2) * kFp8SlotBytes + row * 128 +
                    (t % 2) * 64 + half * 32;
  v[0] = *reinterpret_cast<const uint4*>(src);
  v[1] = *reinterpret_cast<const uint4*>(src + 16);
}

// ... scaled to 32 bf16 = 16-byte chunks 4 half .. 4 half + 3 of row `row` of sub-tile t.
__device__ __forceinline__ void write_expanded(char* stage_base, int t, int row, int half,
                                               const uint4 (&v)[2], float scale) {
  char* sub = stage_base + t * kSubTileBytes + row * 128;
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const uint4 in = v[k / 2];
    const uint32_t a = (k % 2) ? in.z : in.x, b = (k % 2) ? in.w : in.y;
    const uint4 out = make_uint4(fp8::e4m3x2_to_bf16x2(a, scale), fp8::e4m3x2_to_bf16x2(a >> 16, scale),
                                 fp8::e4m3x2_to_bf16x2(b, scale), fp8::e4m3x2_to_bf16x2(b >> 16, scale));
    *reinterpret_cast<uint4*>(sub + (((4 * half + k) ^ (row & 7)) << 4)) = out;
  }
}

// The staged tile of `stage` -> bf16 sub-tiles 0..8 (all 128 producer threads, a pair per row).
__device__ __forceinline__ void expand_fp8_tile(SharedStorage& s, int stage, int row, int half) {
  char* base = reinterpret_cast<char*>(s.kv[stage]);
  const float4 scale = *reinterpret_cast<const float4*>(base + row * 16);
  producer_sync();  // every thread holds its scales: sub-tile 0 may be overwritten
  uint4 v[2], last[2];
#pragma unroll
  for (int t = 0; t < 4; ++t) {
    read_slot(base, t, row, half, v);
    write_expanded(base, t, row, half, v, t < 2 ? scale.x : scale.y);
  }
  producer_sync();  // slots 0, 1 are read
#pragma unroll
  for (int t = 4; t < 6; ++t) {
    read_slot(base, t, row, half, v);
    write_expanded(base, t, row, half, v, scale.z);
  }
  producer_sync();  // slot 2 is read
  read_slot(base, 6, row, half, v);
  read_slot(base, 7, row, half, last);
  write_expanded(base, 6, row, half, v, scale.w);
  producer_sync();  // slot 3 is read
  write_expanded(base, 7, row, half, last, scale.w);
  fence_proxy_async();  // generic stores (and cp.async) -> the math warpgroups' wgmma reads
  arrive_all_sub_tiles(s, stage);
}

// One thread: the TMA boxes of an FP8 tile, per page 4 latent slots of 64 rows x 128 B (from
// `latent_map`: the plain or the 128B-swizzled view), the scales (16 B per row) and, unless
// `rope` is null, the RoPE (a 128B-swizzled bf16 sub-tile), all completing on `bar`.
__device__ __forceinline__ void issue_fp8_boxes(const MlaDecodeParams& p, const CUtensorMap* latent_map,
                                                const KvMaps& maps, const TileCursor& tile,
                                                int kv_head, char* latent, char* scales,
                                                void* rope, uint64_t* bar) {
  const int box_rows = p.page_block_size < kBlockN ? p.page_block_size : kBlockN;
  const int live = min(tile.seqlen - tile.blk * kBlockN, kBlockN);
  const int boxes = (live + box_rows - 1) / box_rows;
  const int32_t* table = tile.table(p);
  mbar_expect_tx(bar, boxes * box_rows * ((rope ? 5 : 4) * 128 + 16));
#pragma unroll 1
  for (int b = 0; b < boxes; ++b) {
    const int tok = tile.blk * kBlockN + b * box_rows;
    const int page = table[tok >> log2_pow2(p.page_block_size)];
    const int r = tok & (p.page_block_size - 1);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      tma_load_4d(latent + j * kFp8SlotBytes + b * box_rows * 128, latent_map, bar, j * 128, r,
                  kv_head, page);
    }
    tma_load_4d(scales + b * box_rows * 16, &maps.fp8_scale, bar, 0, r, kv_head, page);
    if (rope) {
      tma_load_4d(static_cast<char*>(rope) + b * box_rows * 128, &maps.fp8_rope, bar, 0, r,
                  kv_head, page);
    }
  }
}

// The tile `tile` (the iter-th of the part) into its stage, in the in-place staging layout.
__device__ __forceinline__ void issue_fp8_tile(const MlaDecodeParams& p, const KvMaps& maps,
                                               SharedStorage& s, const TileCursor& tile, int iter,
                                               int kv_head) {
  const int stage = KvRing::slot(iter);
  char* base = reinterpret_cast<char*>(s.kv[stage]);
  issue_fp8_boxes(p, &maps.kv, maps, tile, kv_head, base + kFp8StagingOffset, base,
                  s.kv[stage][kSubTiles - 1], &s.staged[stage]);
}

// Pages of >= 16 tokens: thread 0 issues the TMA boxes one tile ahead (tile n+1 is requested
// before tile n is expanded whenever its stage is already free, so the load latency hides
// behind the expansion); all 128 threads expand. Pages below 16 tokens: a cp.async gather of
// each tile into the same layout, then the expansion.
__device__ __forceinline__ void producer_fp8(const MlaDecodeParams& p, const KvMaps& maps,
                                             SharedStorage& s, const PartWalk& walk, int kv_head,
                                             int tid) {
  const int page_shift = log2_pow2(p.page_block_size);
  const bool tma = p.page_block_size >= kMinTmaPage;
  const int row0 = tid / 2, half = tid % 2;  // a thread pair per tile row when expanding
  const auto* cache = static_cast<const uint8_t*>(p.k_cache);
  if (tma) {
    // Expanding needs only the tile count; the cursor of the next tile to request lives in
    // thread 0's registers alone (the producer has 40).
    int tiles = 0;
    for (TileCursor t(p, walk); t.valid(p, walk); t.advance(p, walk)) ++tiles;
    TileCursor next(p, walk);
    int issued = 0;
    // Thread 0: request tile `issued` if its stage is free (blocking only if `wait`).
    auto try_issue = [&](bool wait) {
      if (!next.valid(p, walk)) return;
      if (!stage_free(s, issued)) {
        if (!wait) return;
        wait_stage_free(s, issued);
      }
      issue_fp8_tile(p, maps, s, next, issued++, kv_head);
      next.advance(p, walk);
    };
    for (int iter = 0; iter < tiles; ++iter) {
      if (tid == 0) {
        // Tile iter must be requested (blocking); tile iter + 1 too if its stage is free.
#pragma unroll 1
        for (int want = iter; want <= iter + 1; ++want) {
          if (issued == want) try_issue(want == iter);
        }
      }
      const int stage = KvRing::slot(iter);
      mbar_wait(&s.staged[stage], KvRing::phase(iter));
      expand_fp8_tile(s, stage, opaque(row0), half);
    }
    return;
  }

  int iter = 0;
  for (TileCursor tile(p, walk); tile.valid(p, walk); tile.advance(p, walk), ++iter) {
    const int stage = KvRing::slot(iter);
    char* base = reinterpret_cast<char*>(s.kv[stage]);
    // The ~30 swizzled shared addresses of this row are loop-invariant; hoisted out of the
    // loop they do not fit in the producer's 40 registers and spill. Recomputing them per
    // tile costs a few integer ops, so hide the row's invariance from the compiler.
    const int row = opaque(row0);
    // Rows past the sequence end are left stale: sanitize_tail zeroes them.
    const int tok = tile.blk * kBlockN + row;
    const int page = tok < tile.seqlen ? gather_page(p, __ldg(tile.table(p) + (tok >> page_shift))) : 0;
    wait_stage_free(s, iter);
    if (tok < tile.seqlen) {
      const uint8_t* rec = cache + kv_record_offset(p, page, tok, kv_head);
      // Chunk c = latent dims [16 c, 16 c + 16); every other one, so a thread pair reads
      // whole 32-byte sectors.
#pragma unroll
      for (int k = 0; k < 16; ++k) {
        const int c = half + 2 * k;
        cp_async_16(base + kFp8StagingOffset + (c / 8) * kFp8SlotBytes + row * 128 + (c % 8) * 16,
                    rec + c * 16);
      }
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const int c = half + 2 * k;
        cp_async_16(base + (kSubTiles - 1) * kSubTileBytes + row * 128 + ((c ^ (row & 7)) << 4),
                    rec + fp8::kRopeOffset + c * 16);
      }
      if (half == 0) cp_async_16(base + row * 16, rec + fp8::kScaleOffset);
    }
    cp_async_wait_all();
    producer_sync();  // every thread's copies have landed
    expand_fp8_tile(s, stage, row, half);
  }
}

}  // namespace flashmla::sm90
