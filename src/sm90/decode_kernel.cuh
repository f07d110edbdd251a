// The sm90 split-KV MLA decode kernel. One CTA = (scheduler part, kv head, 64-row query tile).
// It walks the (sequence, KV block) range its part was given, keeping Q resident in shared
// memory and streaming 64-token KV tiles through a TMA ring. See docs/design.md.
#pragma once

#include <cuda.h>
#include <cuda_fp8.h>

#include <cstdint>

#include "element.cuh"
#include "flashmla/flashmla.h"
#include "fp8_record.cuh"
#include "scheduler/plan.h"
#include "sm90/decode_config.h"
#include "sm90/ptx.cuh"

namespace flashmla::sm90 {

__device__ __forceinline__ void math_sync(MathBarrier b) {
  named_barrier_sync(static_cast<int>(b), kMathThreads);
}

// Byte offset of element (row, col) inside a 64x64 16-bit sub-tile stored 128B-swizzled:
// the 16-byte chunk index is XORed with row % 8, the pattern TMA's SWIZZLE_128B writes and
// wgmma's 128B descriptor mode reads.
__device__ __forceinline__ uint32_t swizzled_offset(int row, int col) {
  return row * 128 + ((((col * 2) >> 4) ^ (row & 7)) << 4) + ((col * 2) & 15);
}

// Iterates the (sequence, block range) pieces of one scheduler part, in order. The producer
// and both math warpgroups run the same walk, so they agree on every tile without talking.
struct PartWalk {
  int batch_begin, block_begin, batch_end, block_end, split_begin;
  __device__ explicit PartWalk(const int32_t* meta)
      : batch_begin(meta[kMetaBeginBatch]),
        block_begin(meta[kMetaBeginBlock]),
        batch_end(meta[kMetaEndBatch]),
        block_end(meta[kMetaEndBlock]),
        split_begin(meta[kMetaBeginSplit]) {}
  __device__ int lo(int i) const { return i == batch_begin ? block_begin : 0; }
  __device__ int hi(int i, int nblocks) const { return i == batch_end ? block_end : nblocks; }
};

// The tiles of a part in walk order, as a cursor: the producers' loop (the FP8 one also keeps
// a second cursor one tile ahead).
struct TileCursor {
  int i, blk, end, seqlen;
  __device__ TileCursor(const MlaDecodeParams& p, const PartWalk& walk) : i(walk.batch_begin) {
    settle(p, walk);
  }
  __device__ bool valid(const MlaDecodeParams& p, const PartWalk& walk) const {
    return i <= walk.batch_end && i < p.batch;
  }
  __device__ const int32_t* table(const MlaDecodeParams& p) const {
    return p.block_table + static_cast<int64_t>(i) * p.block_table_batch_stride;
  }
  __device__ void advance(const MlaDecodeParams& p, const PartWalk& walk) {
    if (++blk < end) return;
    ++i;
    settle(p, walk);
  }

 private:
  __device__ void settle(const MlaDecodeParams& p, const PartWalk& walk) {  // skip empty pieces
    for (; valid(p, walk); ++i) {
      seqlen = p.cache_seqlens[i];
      blk = walk.lo(i);
      end = walk.hi(i, num_kv_blocks(seqlen));
      if (blk < end) return;
    }
  }
};

// Page sizes: a 64-token tile is one box per 64x64 sub-tile when a page holds >= 64 tokens,
// 64/page boxes per sub-tile for 16- and 32-token pages (each lands 1024-byte aligned, so the
// 128B swizzle pattern is the one a 64-row box would have written), and a cp.async gather by
// the whole producer warpgroup below 16 tokens, where TMA would issue up to 576 tiny boxes.
constexpr int kMinTmaPage = 16;

__device__ __forceinline__ int log2_pow2(int x) { return __ffs(x) - 1; }

constexpr int kProducerThreads = 128;
constexpr int kProducerWarps = 4;

// Lane 0 of each producer warp: TMA boxes of every page that holds a live token of the tile,
// the (page, sub-tile) pairs dealt round-robin over the 4 warps, each warp arriving on
// full[stage] with its own byte count (barrier count 4). One thread issuing all 36 boxes of
// a 16-token-page tile put ~0.7 us of issue latency on every refill (docs/perf-log.md v8).
// Pages past the sequence end are not read at all (their table entries may be garbage); their
// rows are zeroed by sanitize_tail like any other row past the end.
__device__ __forceinline__ void producer_tma(const MlaDecodeParams& p, const CUtensorMap* kv_map,
                                             SharedStorage& s, const PartWalk& walk, int kv_head,
                                             int warp) {
  const int page_shift = log2_pow2(p.page_block_size);
  const int box_shift = min(page_shift, log2_pow2(kBlockN));  // box rows: min(page, 64)
  const int box_rows = 1 << box_shift;
  int iter = 0;
  for (TileCursor tile(p, walk); tile.valid(p, walk); tile.advance(p, walk), ++iter) {
    const int stage = iter % kStages;
    const int32_t* table = tile.table(p);
    const int live = min(tile.seqlen - tile.blk * kBlockN, kBlockN);
    const int boxes = (live + box_rows - 1) >> box_shift;  // 1; up to 4 for 16-token pages
    // The page ids, read before the stage wait so their latency hides behind it.
    int page[4];
#pragma unroll
    for (int b = 0; b < 4; ++b)
      page[b] = b < boxes ? table[(tile.blk * kBlockN + b * box_rows) >> page_shift] : 0;
    if (iter >= kStages) mbar_wait(&s.empty[stage], ((iter / kStages) + 1) & 1);
    // After the wait only constant divisions: the refill is on the critical path of CTAs with
    // many tiles, and a runtime divisor here cost up to 20% at h_q = 128 (docs/perf-log.md v8).
    const int pairs = boxes * kSubTiles;
    const int mine = (pairs - warp + kProducerWarps - 1) / kProducerWarps;
    mbar_expect_tx(&s.full[stage], mine * box_rows * 128);
#pragma unroll 1
    for (int k = warp; k < pairs; k += kProducerWarps) {
      const int b = k / kSubTiles, t = k % kSubTiles;
      const int tok = tile.blk * kBlockN + b * box_rows;
      const int pg = b == 0 ? page[0] : b == 1 ? page[1] : b == 2 ? page[2] : page[3];
      tma_load_4d(s.kv[stage][t] + b * box_rows * kSubCols, kv_map, &s.full[stage],
                  t * kSubCols, tok & (p.page_block_size - 1), kv_head, pg);
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
    const int stage = iter % kStages;
    const int seqlen = tile.seqlen;
    // Lane j < 16 looks up the page of the warp's j-th row, before the stage wait.
    const int my_tok = tile.blk * kBlockN + warp + kProducerWarps * (lane % kRowsPerWarp);
    const int my_page = my_tok < seqlen ? __ldg(tile.table(p) + (my_tok >> page_shift)) : 0;
    if (iter >= kStages) mbar_wait(&s.empty[stage], ((iter / kStages) + 1) & 1);
#pragma unroll 1
    for (int j = 0; j < kRowsPerWarp; ++j) {
      const int row = warp + kProducerWarps * j;
      const int tok = tile.blk * kBlockN + row;
      const int page = __shfl_sync(0xffffffff, my_page, j);
      if (tok >= seqlen) break;  // rows only grow with j
      const uint16_t* src = k_cache + static_cast<int64_t>(page) * p.k_block_stride +
                            static_cast<int64_t>(tok & (p.page_block_size - 1)) * p.k_row_stride +
                            static_cast<int64_t>(kv_head) * p.k_head_stride;
      for (int c = lane; c < kChunksPerRow; c += 32) {
        char* sub = reinterpret_cast<char*>(s.kv[stage][c / 8]);
        cp_async_16(sub + row * 128 + (((c % 8) ^ (row & 7)) << 4), src + c * 8);
      }
    }
    cp_async_mbar_arrive(&s.full[stage]);
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
  mbar_arrive(&s.full[stage]);
}

// One thread: the TMA boxes of tile `tile` (the iter-th of the part) into its stage, per page
// 4 latent slots, the scales and the RoPE, completing on staged[stage].
__device__ __forceinline__ void issue_fp8_tile(const MlaDecodeParams& p, const KvMaps& maps,
                                               SharedStorage& s, const TileCursor& tile, int iter,
                                               int kv_head) {
  const int stage = iter % kStages;
  char* base = reinterpret_cast<char*>(s.kv[stage]);
  const int box_rows = p.page_block_size < kBlockN ? p.page_block_size : kBlockN;
  const int live = min(tile.seqlen - tile.blk * kBlockN, kBlockN);
  const int boxes = (live + box_rows - 1) / box_rows;
  const int32_t* table = tile.table(p);
  mbar_expect_tx(&s.staged[stage], boxes * box_rows * (5 * 128 + 16));
#pragma unroll 1
  for (int b = 0; b < boxes; ++b) {
    const int tok = tile.blk * kBlockN + b * box_rows;
    const int page = table[tok >> log2_pow2(p.page_block_size)];
    const int r = tok & (p.page_block_size - 1);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      tma_load_4d(base + kFp8StagingOffset + j * kFp8SlotBytes + b * box_rows * 128, &maps.kv,
                  &s.staged[stage], j * 128, r, kv_head, page);
    }
    tma_load_4d(base + b * box_rows * 16, &maps.fp8_scale, &s.staged[stage], 0, r, kv_head, page);
    tma_load_4d(s.kv[stage][kSubTiles - 1] + b * box_rows * kSubCols, &maps.fp8_rope,
                &s.staged[stage], 0, r, kv_head, page);
  }
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
      const int stage = issued % kStages;
      const uint32_t parity = ((issued / kStages) + 1) & 1;
      if (issued >= kStages && !mbar_test(&s.empty[stage], parity)) {
        if (!wait) return;
        mbar_wait(&s.empty[stage], parity);
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
      const int stage = iter % kStages;
      mbar_wait(&s.staged[stage], (iter / kStages) & 1);
      expand_fp8_tile(s, stage, opaque(row0), half);
    }
    return;
  }

  int iter = 0;
  for (TileCursor tile(p, walk); tile.valid(p, walk); tile.advance(p, walk), ++iter) {
    const int stage = iter % kStages;
    char* base = reinterpret_cast<char*>(s.kv[stage]);
    // The ~30 swizzled shared addresses of this row are loop-invariant; hoisted out of the
    // loop they do not fit in the producer's 40 registers and spill. Recomputing them per
    // tile costs a few integer ops, so hide the row's invariance from the compiler.
    const int row = opaque(row0);
    // Rows past the sequence end are left stale: sanitize_tail zeroes them.
    const int tok = tile.blk * kBlockN + row;
    const int page = tok < tile.seqlen ? __ldg(tile.table(p) + (tok >> page_shift)) : 0;
    if (iter >= kStages) mbar_wait(&s.empty[stage], ((iter / kStages) + 1) & 1);
    if (tok < tile.seqlen) {
      const uint8_t* rec = cache + static_cast<int64_t>(page) * p.k_block_stride +
                           static_cast<int64_t>(tok & (p.page_block_size - 1)) * p.k_row_stride +
                           static_cast<int64_t>(kv_head) * p.k_head_stride;
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

// Q rows [m_tile*64, +64) of kv head `kv_head` of sequence i into sQ, zero-padded.
__device__ __forceinline__ void load_q(const MlaDecodeParams& p, SharedStorage& s, int i,
                                       int kv_head, int m_tile, int math_tid) {
  const int heads_per_kv = p.num_heads_q / p.num_heads_kv;
  const int rows = p.seqlen_q * heads_per_kv;
  const auto* q = static_cast<const uint16_t*>(p.q);  // moved as raw 16-byte chunks
  constexpr int kChunksPerRow = kHeadDim / 8;  // 16-byte chunks
  for (int c = math_tid; c < kBlockM * kChunksPerRow; c += kMathThreads) {
    const int row = c / kChunksPerRow, chunk = c % kChunksPerRow;
    const int r = m_tile * kBlockM + row;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (r < rows) {
      const int sq = r / heads_per_kv, h = kv_head * heads_per_kv + r % heads_per_kv;
      v = *reinterpret_cast<const uint4*>(q + i * p.q_batch_stride + sq * p.q_seq_stride +
                                          h * p.q_head_stride + chunk * 8);
    }
    char* sub = reinterpret_cast<char*>(s.q[chunk / 8]);
    *reinterpret_cast<uint4*>(sub + swizzled_offset(row, (chunk % 8) * 8)) = v;
  }
}

// Rows [valid, 64) of a KV tile are past the sequence end: their memory may hold anything,
// NaN included, and 0 * NaN would poison O. Zero them before any wgmma reads the tile.
__device__ __forceinline__ void sanitize_tail(SharedStorage& s, int stage, int valid,
                                              int math_tid) {
  const int chunks = (kBlockN - valid) * 8 * kSubTiles;  // 16-byte chunks, 8 per 128 B row
  for (int c = math_tid; c < chunks; c += kMathThreads) {
    const int t = c % kSubTiles, rest = c / kSubTiles;
    const int row = valid + rest / 8, chunk = rest % 8;
    char* sub = reinterpret_cast<char*>(s.kv[stage][t]);
    *reinterpret_cast<uint4*>(sub + row * 128 + chunk * 16) = make_uint4(0, 0, 0, 0);
  }
}

// 2^x on the SFU; -inf gives +0. The scores are bounded, so the approximation's relative
// error (~2^-22) is far below the 16-bit rounding of P.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffff, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffff, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffff, x, 1);
  return x + __shfl_xor_sync(0xffffffff, x, 2);
}

template <typename T>
__device__ __forceinline__ void math(const MlaDecodeParams& p, SharedStorage& s,
                                     const PartWalk& walk, int kv_head, int m_tile,
                                     int math_tid) {
  const int wg = math_tid / 128;          // 0 or 1: which token half / column half
  const int warp = (math_tid % 128) / 32;  // warp within the warpgroup: rows warp*16 ..
  const int lane = math_tid % 32;
  const int row0 = warp * 16 + lane / 4;  // this thread's two accumulator rows
  const int row1 = row0 + 8;
  const int quad = lane % 4;

  const int heads_per_kv = p.num_heads_q / p.num_heads_kv;
  const int rows = p.seqlen_q * heads_per_kv;
  const float scale_log2 = p.softmax_scale * 1.4426950408889634f;
  const uint32_t sq_addr = smem_addr(s.q);
  const uint32_t sp_addr = smem_addr(s.p);
  const bool gather = p.page_block_size < kMinTmaPage;

  int iter = 0;
  for (int i = walk.batch_begin; i <= walk.batch_end && i < p.batch; ++i) {
    const int seqlen = p.cache_seqlens[i];
    const int nblocks = num_kv_blocks(seqlen);
    const int lo = walk.lo(i), hi = walk.hi(i, nblocks);
    if (lo >= hi) continue;

    // Visible-key limit per row (exclusive). Causal: query token sq sees L - s_q + sq + 1.
    auto limit_of = [&](int row) {
      const int r = m_tile * kBlockM + row;
      if (!p.causal) return seqlen;
      const int sq = (r < rows ? r : rows - 1) / heads_per_kv;
      return seqlen - p.seqlen_q + sq + 1;
    };
    const int limit0 = limit_of(row0), limit1 = limit_of(row1);

    load_q(p, s, i, kv_head, m_tile, math_tid);
    fence_proxy_async();
    math_sync(MathBarrier::kQReady);

    float o[128];
#pragma unroll
    for (int k = 0; k < 128; ++k) o[k] = 0.f;
    float m0 = -INFINITY, m1 = -INFINITY;  // running row max, log2 domain
    float l0 = 0.f, l1 = 0.f;              // this thread's partial row sums

    // Waits for tile `it` to land, zeroes its tail if it is the sequence's last partial
    // tile, and issues S = Q K^T over this warpgroup's 32 tokens into `acc` (not waited).
    auto issue_s = [&](float (&acc)[16], int it, int blk) {
      const int stage = it % kStages;
      mbar_wait(&s.full[stage], (it / kStages) & 1);
      // cp.async writes are generic-proxy writes; wgmma reads through the async proxy.
      if (gather) fence_proxy_async();
      const int valid = seqlen - blk * kBlockN;
      if (valid < kBlockN) {
        sanitize_tail(s, stage, valid, math_tid);
        fence_proxy_async();
        math_sync(MathBarrier::kTileSanitized);
      }
      const uint32_t kv_addr = smem_addr(s.kv[stage]);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kHeadDim / 16; ++kk) {
        const uint32_t off = (kk / 4) * kSubTileBytes + (kk % 4) * 32;
        wgmma_m64n32k16<T>(acc, make_desc_sw128(sq_addr + off, 16, 1024),
                             make_desc_sw128(kv_addr + off + wg * 32 * 128, 16, 1024), kk > 0);
      }
      wgmma_commit();
    };

    // S of tile n+1 is issued right behind PV of tile n, so the tensor cores go from one to
    // the other without a drain. It is not issued before the softmax of tile n: with two
    // stages, tile n+1 is only requested when tile n-1 is released, and waiting for it there
    // put the whole load latency on the critical path (v2 in docs/perf-log.md).
    float sc[16] = {}, sc_next[16] = {};
    issue_s(sc, iter, lo);
    wgmma_wait<0>();
    fence_operands(sc);
    for (int blk = lo; blk < hi; ++blk, ++iter) {
      const int stage = iter % kStages;
      const bool has_next = blk + 1 < hi;

      // Scale, mask, and this half's row maxima.
      float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int tok = blk * kBlockN + wg * kTokensPerMathWG + j * 8 + quad * 2 + e;
          float& a = sc[j * 4 + e];
          float& b = sc[j * 4 + 2 + e];
          // Raw scores: scale > 0, so the row max commutes with the scaling, which is
          // folded into the exponent's FFMA below.
          a = tok < limit0 ? a : -INFINITY;
          b = tok < limit1 ? b : -INFINITY;
          mx0 = fmaxf(mx0, a);
          mx1 = fmaxf(mx1, b);
        }
      }
      mx0 = quad_max(mx0);
      mx1 = quad_max(mx1);
      if (quad == 0) {
        s.row_max[wg][row0] = mx0;
        s.row_max[wg][row1] = mx1;
      }
      math_sync(MathBarrier::kRowMaxPublished);
      const float new0 =
          fmaxf(m0, fmaxf(s.row_max[0][row0], s.row_max[1][row0]) * scale_log2);
      const float new1 =
          fmaxf(m1, fmaxf(s.row_max[0][row1], s.row_max[1][row1]) * scale_log2);
      // A row that has seen no key yet keeps max -inf; subtract 0 then so exp2 gives 0, not NaN.
      const float use0 = new0 == -INFINITY ? 0.f : new0;
      const float use1 = new1 == -INFINITY ? 0.f : new1;
      const float alpha0 = fast_exp2(m0 - use0), alpha1 = fast_exp2(m1 - use1);
      m0 = new0;
      m1 = new1;

      float sum0 = 0.f, sum1 = 0.f;
      char* sp = reinterpret_cast<char*>(s.p);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float p00 = fast_exp2(fmaf(sc[j * 4 + 0], scale_log2, -use0));
        const float p01 = fast_exp2(fmaf(sc[j * 4 + 1], scale_log2, -use0));
        const float p10 = fast_exp2(fmaf(sc[j * 4 + 2], scale_log2, -use1));
        const float p11 = fast_exp2(fmaf(sc[j * 4 + 3], scale_log2, -use1));
        sum0 += p00 + p01;
        sum1 += p10 + p11;
        const int col = wg * kTokensPerMathWG + j * 8 + quad * 2;
        using Pair = typename ElementOps<T>::Pair;
        *reinterpret_cast<Pair*>(sp + swizzled_offset(row0, col)) = ElementOps<T>::pack(p00, p01);
        *reinterpret_cast<Pair*>(sp + swizzled_offset(row1, col)) = ElementOps<T>::pack(p10, p11);
      }
      l0 = l0 * alpha0 + sum0;
      l1 = l1 * alpha1 + sum1;
      // Once a row's max has settled (most tiles of a long sequence) alpha is exactly 1:
      // skip the 128 multiplies when that holds for every row of the warp.
      if (!__all_sync(0xffffffff, alpha0 == 1.f && alpha1 == 1.f)) {
#pragma unroll
        for (int j = 0; j < 32; ++j) {
          o[j * 4 + 0] *= alpha0;
          o[j * 4 + 1] *= alpha0;
          o[j * 4 + 2] *= alpha1;
          o[j * 4 + 3] *= alpha1;
        }
      }
      fence_proxy_async();
      math_sync(MathBarrier::kPReady);

      // O[:, this half's 256 columns] += P (64x64) V (64 x 256).
      const uint32_t kv_addr = smem_addr(s.kv[stage]);
      wgmma_fence();
#pragma unroll
      for (int t = 0; t < kBlockN / 16; ++t) {
        wgmma_m64n256k16_tb<T>(
            o, make_desc_sw128(sp_addr + t * 32, 16, 1024),
            make_desc_sw128(kv_addr + wg * 4 * kSubTileBytes + t * 16 * 128, kSubTileBytes, 1024),
            1);
      }
      wgmma_commit();
      // The stage is released as soon as PV(n) is done, before S(n+1) is issued: S(n+1) waits
      // for tile n+1 to land, and releasing after it chained every refill behind the previous
      // one (one load in flight instead of two; docs/perf-log.md v10).
      wgmma_wait<0>();
      fence_operands(o);
      if (math_tid % 128 == 0) mbar_arrive(&s.empty[stage]);
      if (has_next) {
        issue_s(sc_next, iter + 1, blk + 1);
        wgmma_wait<0>();
        fence_operands(sc_next);
      }
#pragma unroll
      for (int k = 0; k < 16; ++k) sc[k] = sc_next[k];
    }

    // Epilogue: combine the two halves' row sums, normalise, write.
    l0 = quad_sum(l0);
    l1 = quad_sum(l1);
    if (quad == 0) {
      s.row_sum[wg][row0] = l0;
      s.row_sum[wg][row1] = l1;
    }
    math_sync(MathBarrier::kRowSumPublished);
    const float tot0 = s.row_sum[0][row0] + s.row_sum[1][row0];
    const float tot1 = s.row_sum[0][row1] + s.row_sum[1][row1];
    const float inv0 = tot0 > 0.f ? 1.f / tot0 : 0.f;
    const float inv1 = tot1 > 0.f ? 1.f / tot1 : 0.f;
    const float lse2_0 = tot0 > 0.f ? m0 + __log2f(tot0) : -INFINITY;
    const float lse2_1 = tot1 > 0.f ? m1 + __log2f(tot1) : -INFINITY;

    const int n_splits = p.num_splits[i + 1] - p.num_splits[i];
    const int split = p.num_splits[i] + (i == walk.batch_begin ? walk.split_begin : 0);
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int row = half ? row1 : row0;
      const int r = m_tile * kBlockM + row;
      if (r >= rows) continue;
      const float inv = half ? inv1 : inv0;
      const float lse2 = half ? lse2_1 : lse2_0;
      const int sq = r / heads_per_kv, h = kv_head * heads_per_kv + r % heads_per_kv;
      if (n_splits == 1) {
        auto* out = static_cast<T*>(p.out) + i * p.o_batch_stride +
                    sq * p.o_seq_stride + h * p.o_head_stride + wg * kColsPerMathWG;
#pragma unroll
        for (int j = 0; j < 32; ++j) {
          *reinterpret_cast<typename ElementOps<T>::Pair*>(out + j * 8 + quad * 2) =
              ElementOps<T>::pack(o[j * 4 + half * 2] * inv, o[j * 4 + half * 2 + 1] * inv);
        }
        if (wg == 0 && quad == 0) {
          p.lse[(static_cast<int64_t>(i) * p.num_heads_q + h) * p.seqlen_q + sq] =
              lse2 == -INFINITY ? INFINITY : lse2 * 0.6931471805599453f;
        }
      } else {
        const int64_t idx = (static_cast<int64_t>(split) * p.num_heads_kv + kv_head) * rows + r;
        float* oa = p.o_accum + idx * kHeadDimV + wg * kColsPerMathWG;
#pragma unroll
        for (int j = 0; j < 32; ++j) {
          *reinterpret_cast<float2*>(oa + j * 8 + quad * 2) =
              make_float2(o[j * 4 + half * 2] * inv, o[j * 4 + half * 2 + 1] * inv);
        }
        if (wg == 0 && quad == 0) p.lse_accum[idx] = lse2;
      }
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads, 1)
    mla_decode_kernel(const __grid_constant__ MlaDecodeParams p,
                      const __grid_constant__ KvMaps maps) {
  extern __shared__ char smem_raw[];
  // Rounded up by pointer arithmetic on the __shared__ array, not through an integer cast,
  // so the compiler keeps knowing it is shared memory (LDS/STS, 32-bit addresses) instead of
  // falling back to generic 64-bit loads and stores everywhere.
  const uint32_t pad = (1024u - (smem_addr(smem_raw) & 1023u)) & 1023u;
  auto& s = *reinterpret_cast<SharedStorage*>(smem_raw + pad);
  const int part = blockIdx.x, kv_head = blockIdx.y, m_tile = blockIdx.z;
  const PartWalk walk(p.tile_scheduler_metadata + part * kMetadataInts);
  const bool fp8 = p.kv_format == KvFormat::kFP8WithScale;

  if (threadIdx.x == 0) {
    tma_prefetch_descriptor(&maps.kv);
    if (fp8) {
      tma_prefetch_descriptor(&maps.fp8_scale);
      tma_prefetch_descriptor(&maps.fp8_rope);
    }
    for (int st = 0; st < kStages; ++st) {
      // TMA: one arrive (with its byte count) per producer warp; gather, FP8: one per thread.
      mbar_init(&s.full[st], fp8 || p.page_block_size < kMinTmaPage ? kProducerThreads : kProducerWarps);
      mbar_init(&s.empty[st], 2);  // one arrive per math warpgroup
      mbar_init(&s.staged[st], 1);  // FP8: raw records landed (TMA, one issuing thread)
    }
    fence_barrier_init();
  }
  __syncthreads();

  if (threadIdx.x < 128) {
    setmaxnreg_dec<kProducerRegs>();
    if (fp8) {
      producer_fp8(p, maps, s, walk, kv_head, threadIdx.x);
    } else if (p.page_block_size < kMinTmaPage) {
      producer_gather(p, s, walk, kv_head, threadIdx.x);
    } else if (threadIdx.x % 32 == 0) {
      producer_tma(p, &maps.kv, s, walk, kv_head, threadIdx.x / 32);
    }
  } else {
    setmaxnreg_inc<kMathRegs>();
    math<T>(p, s, walk, kv_head, m_tile, threadIdx.x - 128);
  }
}

}  // namespace flashmla::sm90
