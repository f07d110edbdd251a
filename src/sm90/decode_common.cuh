// Pieces of the sm90 decode kernel that the producers and the math share: the walk over a
// scheduler part's tiles, the stage-ring helpers, the swizzle of a 64x64 sub-tile, Q loading,
// tail zeroing, the softmax helpers and the epilogue.
#pragma once

#include <cuda.h>

#include <cstdint>

#include "flashmla/flashmla.h"
#include "scheduler/plan.h"
#include "sm90/decode_config.h"
#include "sm90/ptx.cuh"
#include "sm90/ring.cuh"
#include "element.cuh"
#include "seqlen.cuh"

namespace flashmla::sm90 {

__device__ __forceinline__ void math_sync(MathBarrier b) {
  named_barrier_sync(static_cast<int>(b), kMathThreads);
}

// Two floats as one register of a 16-bit pair (a in the low half).
template <typename T>
__device__ __forceinline__ uint32_t pack_bits(float a, float b) {
  const typename ElementOps<T>::Pair v = ElementOps<T>::pack(a, b);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// Byte offset of element (row, col) inside a 64x64 16-bit sub-tile stored 128B-swizzled:
// the 16-byte chunk index is XORed with row % 8, the pattern TMA's SWIZZLE_128B writes and
// wgmma's 128B descriptor mode reads.
__device__ __forceinline__ uint32_t swizzled_offset(int row, int col) {
  return row * 128 + ((((col * 2) >> 4) ^ (row & 7)) << 4) + ((col * 2) & 15);
}

// Offset of token `tok`'s record for kv head `kv_head` in the cache, in the strides' unit
// (elements for 16-bit caches, bytes for FP8 records), given the page that holds it.
__device__ __forceinline__ int64_t kv_record_offset(const MlaDecodeParams& p, int page, int tok, int kv_head) {
  return static_cast<int64_t>(page) * p.k_block_stride +
         static_cast<int64_t>(tok & (p.page_block_size - 1)) * p.k_row_stride +
         static_cast<int64_t>(kv_head) * p.k_head_stride;
}

// Iterates the (sequence, block range) pieces of one scheduler part, in order. The producer
// and both math warpgroups run the same walk, so they agree on every tile without talking.
struct PartWalk {
  int batch_begin, block_begin, batch_end, block_end, split_begin;
  // The starts clamped at 0: a garbage row (a misuse) with a negative start would index below
  // cache_seqlens, the block table and out, and a start near INT_MIN would walk 2^31 sequences
  // or wrap a tile's token position past the sequence end (review, session 22).
  __device__ explicit PartWalk(const int32_t* meta)
      : batch_begin(max(meta[kMetaBeginBatch], 0)),
        block_begin(max(meta[kMetaBeginBlock], 0)),
        batch_end(meta[kMetaEndBatch]),
        block_end(meta[kMetaEndBlock]),
        split_begin(meta[kMetaBeginSplit]) {}
  __device__ int lo(int i) const { return i == batch_begin ? block_begin : 0; }
  // Clamped: metadata planned for other lengths (a misuse) must not walk past the end, where
  // a tile's negative row count would overrun shared memory and wait forever on its TMA bytes.
  __device__ int hi(int i, int nblocks) const { return i == batch_end ? min(block_end, nblocks) : nblocks; }
};

// A page id read by a cp.async gather (pages below 16 tokens): out-of-range ids (a broken
// caller contract) read page 0 instead of faulting; TMA, for larger pages, reads them as zeros.
__device__ __forceinline__ int gather_page(const MlaDecodeParams& p, int page) {
  return static_cast<unsigned>(page) < static_cast<unsigned>(p.num_blocks) ? page : 0;
}

// Split slot `split` of a sequence whose pieces are num_splits[i] = first .. first + n_splits:
// inside them and inside the workspace (batch + num_sm_parts slots). Only num_splits from
// another call than the metadata (a misuse) fails it; its partial is then not written, and
// the combine reports the sequence (NaN) instead of anything being written out of bounds.
__device__ __forceinline__ bool partial_slot_ok(const MlaDecodeParams& p, int first, int n_splits,
                                                int64_t split) {
  // int64: garbage num_splits must not wrap past the bounds. split >= first keeps a garbage
  // split_begin from overwriting another sequence's slot.
  return split >= 0 && split >= first && split < static_cast<int64_t>(first) + n_splits &&
         split < static_cast<int64_t>(p.batch) + p.num_sm_parts;
}

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
      seqlen = kernel_seqlen(p, i);
      blk = walk.lo(i);
      end = walk.hi(i, num_kv_blocks(seqlen));
      if (blk < end) return;
    }
  }
};

__device__ __forceinline__ int log2_pow2(int x) { return __ffs(x) - 1; }

// The KV stages: the iter-th tile of the part lands in stage KvRing::slot(iter), which may be
// filled once both math warpgroups released its previous use (sm90/ring.cuh).
using KvRing = Ring<kStages>;
__device__ __forceinline__ void wait_stage_free(SharedStorage& s, int iter) {
  if (iter < kStages) return;
  mbar_wait(&s.empty[KvRing::slot(iter)][0], KvRing::empty_phase(iter));
  mbar_wait(&s.empty[KvRing::slot(iter)][1], KvRing::empty_phase(iter));
}
__device__ __forceinline__ bool stage_free(SharedStorage& s, int iter) {
  return iter < kStages || (mbar_test(&s.empty[KvRing::slot(iter)][0], KvRing::empty_phase(iter)) &&
                            mbar_test(&s.empty[KvRing::slot(iter)][1], KvRing::empty_phase(iter)));
}
// Producers that fill a stage as a whole (gather, FP8) complete all its sub-tile barriers.
__device__ __forceinline__ void arrive_all_sub_tiles(SharedStorage& s, int stage) {
#pragma unroll
  for (int t = 0; t < kSubTiles; ++t) mbar_arrive(&s.full[stage][t]);
}

constexpr int kProducerThreads = 128;
constexpr int kProducerWarps = 4;

// Q rows [row0, row0 + kRows) of kv head `kv_head` of sequence i into shared memory at `sq`:
// nine 128B-swizzled sub-tiles of kRows x 64 (K-major), rows past the end zero-padded. Both
// kernels use it (wide: 64 rows, small-head: 16). cp.async keeps all of a thread's loads in
// flight at once: a load-then-store loop waited for each 16 bytes in turn (a few microseconds
// per sequence piece, visible in ncu as L1TEX stalls). The caller waits for the copies
// (cp_async_wait_all) and fences before its Q-ready barrier.
template <int kRows, int kThreads>
__device__ __forceinline__ void load_q(const MlaDecodeParams& p, uint16_t* sq, int i, int kv_head,
                                       int row0, int tid) {
  // kPerRow threads per row, each with a fixed row: its source address and head are computed
  // once, not per chunk (two runtime divisions and three 64-bit strides per chunk made the
  // wide kernel's Q ready 5.4 us after entry at b=1, docs/perf-log.md session 12).
  constexpr int kPerRow = kThreads / kRows;
  constexpr int kChunksPerRow = kHeadDim / 8;  // 16-byte chunks
  static_assert(kThreads % kRows == 0 && kChunksPerRow % kPerRow == 0, "Q chunks per thread");
  const int heads_per_kv = p.num_heads_q / p.num_heads_kv;
  const int rows = p.seqlen_q * heads_per_kv;
  const int row = tid / kPerRow, first = tid % kPerRow;
  const int r = row0 + row;
  // A thread's chunks first + k kPerRow fall in sub-tile k / kPhases at one of kPhases swizzled
  // 16-byte columns, so every copy is a base plus an immediate offset.
  constexpr int kPhases = 8 / kPerRow;
  static_assert(8 % kPerRow == 0, "a row's eight 16-byte columns per sub-tile");
  char* base[kPhases];
#pragma unroll
  for (int ph = 0; ph < kPhases; ++ph)
    base[ph] = reinterpret_cast<char*>(sq) + swizzled_offset(row, (first + ph * kPerRow) * 8);
  auto chunk_dst = [&](int k) { return base[k % kPhases] + (k / kPhases) * (kRows * 128); };
  if (r < rows) {
    const int s_q = r / heads_per_kv, h = kv_head * heads_per_kv + r % heads_per_kv;
    const auto* src = static_cast<const uint16_t*>(p.q) + i * p.q_batch_stride + s_q * p.q_seq_stride +
                      h * p.q_head_stride + first * 8;  // moved as raw 16-byte chunks
#pragma unroll
    for (int k = 0; k < kChunksPerRow / kPerRow; ++k) cp_async_16(chunk_dst(k), src + k * kPerRow * 8);
  } else {
#pragma unroll
    for (int k = 0; k < kChunksPerRow / kPerRow; ++k)
      *reinterpret_cast<uint4*>(chunk_dst(k)) = make_uint4(0, 0, 0, 0);
  }
}

// The TMA boxes of a tile's live tokens (1 for pages >= 64 tokens, up to 4 for 16-token pages)
// and their page ids, read by a producer before it waits for the stage or slot, so the
// table latency hides behind the wait.
struct TilePages {
  int boxes;
  int page[4];
  __device__ TilePages(const MlaDecodeParams& p, const TileCursor& tile, int box_shift,
                       int page_shift) {
    const int32_t* table = tile.table(p);
    const int live = min(tile.seqlen - tile.blk * kBlockN, kBlockN);
    boxes = (live + (1 << box_shift) - 1) >> box_shift;
#pragma unroll
    for (int b = 0; b < 4; ++b)
      page[b] = b < boxes ? table[(tile.blk * kBlockN + (b << box_shift)) >> page_shift] : 0;
  }
  // Box b's page, without dynamic indexing (which would put page[] in local memory).
  __device__ int of(int b) const {
    return b == 0 ? page[0] : b == 1 ? page[1] : b == 2 ? page[2] : page[3];
  }
};

// Rows [valid, 64) of a KV tile are past the sequence end: their memory may hold anything,
// NaN included, and 0 * NaN would poison O. Zero them before any wgmma reads the tile.
__device__ __forceinline__ void sanitize_tail(SharedStorage& s, int stage, int valid,
                                              int tid, int threads) {
  const int chunks = (kBlockN - valid) * 8 * kSubTiles;  // 16-byte chunks, 8 per 128 B row
  for (int c = tid; c < chunks; c += threads) {
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

// Epilogue of a sequence piece: combine the two warpgroups' row
// sums, normalise this warpgroup's 256 columns of O and write them (final output when the
// sequence has one piece, else the split workspace for the combine kernel).
template <typename T>
__device__ __forceinline__ void write_output(const MlaDecodeParams& p, SharedStorage& s,
                                             const PartWalk& walk, int i, int kv_head, int m_tile,
                                             int math_tid, const float (&o)[128], float m0,
                                             float m1, float l0, float l1) {
  const int wg = math_tid / 128;
  const int lane = math_tid % 32;
  const int row0 = ((math_tid % 128) / 32) * 16 + lane / 4, row1 = row0 + 8;
  const int quad = lane % 4;
  const int heads_per_kv = p.num_heads_q / p.num_heads_kv;
  const int rows = p.seqlen_q * heads_per_kv;
  l0 = quad_sum(l0);
  l1 = quad_sum(l1);
  if (quad == 0) {
    s.row_sum[wg][row0] = l0;
    s.row_sum[wg][row1] = l1;
  }
  math_sync(MathBarrier::kRowSumPublished);
  const float tot0 = s.row_sum[0][row0] + s.row_sum[1][row0];
  const float tot1 = s.row_sum[0][row1] + s.row_sum[1][row1];
  const bool over = seqlen_over_table(p, i);  // NaN out, lse (and partials)
  const float inv0 = over ? NAN : tot0 > 0.f ? 1.f / tot0 : 0.f;
  const float inv1 = over ? NAN : tot1 > 0.f ? 1.f / tot1 : 0.f;
  const float lse2_0 = over ? NAN : tot0 > 0.f ? m0 + __log2f(tot0) : -INFINITY;
  const float lse2_1 = over ? NAN : tot1 > 0.f ? m1 + __log2f(tot1) : -INFINITY;

  const int first = p.num_splits[i];
  const int n_splits = p.num_splits[i + 1] - first;
  const int64_t split = static_cast<int64_t>(first) + (i == walk.batch_begin ? walk.split_begin : 0);
  const bool partial_ok = partial_slot_ok(p, first, n_splits, split);
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int row = half ? row1 : row0;
    const int r = m_tile * kBlockM + row;
    if (r >= rows) continue;
    const float inv = half ? inv1 : inv0;
    const float lse2 = half ? lse2_1 : lse2_0;
    const int sq = r / heads_per_kv, h = kv_head * heads_per_kv + r % heads_per_kv;
    if (n_splits == 1) {
      auto* out = static_cast<T*>(p.out) + i * p.o_batch_stride + sq * p.o_seq_stride +
                  h * p.o_head_stride + wg * kColsPerMathWG;
#pragma unroll
      for (int j = 0; j < 32; ++j) {
        *reinterpret_cast<typename ElementOps<T>::Pair*>(out + j * 8 + quad * 2) =
            ElementOps<T>::pack(o[j * 4 + half * 2] * inv, o[j * 4 + half * 2 + 1] * inv);
      }
      if (wg == 0 && quad == 0) {
        p.lse[(static_cast<int64_t>(i) * p.num_heads_q + h) * p.seqlen_q + sq] =
            lse2 == -INFINITY ? INFINITY : lse2 * 0.6931471805599453f;
      }
    } else if (partial_ok) {
      const int64_t idx = (static_cast<int64_t>(split) * p.num_heads_kv + kv_head) * rows + r;
      T* oa = static_cast<T*>(p.o_accum) + idx * kHeadDimV + wg * kColsPerMathWG;
#pragma unroll
      for (int j = 0; j < 32; ++j) {
        *reinterpret_cast<typename ElementOps<T>::Pair*>(oa + j * 8 + quad * 2) =
            ElementOps<T>::pack(o[j * 4 + half * 2] * inv, o[j * 4 + half * 2 + 1] * inv);
      }
      if (wg == 0 && quad == 0) p.lse_accum[idx] = lse2;
    }
  }
}

// Visible-key limit (exclusive) of accumulator row `row` of query tile m_tile. Causal: query
// token sq sees L - s_q + sq + 1 keys.
__device__ __forceinline__ int row_limit(const MlaDecodeParams& p, int seqlen, int m_tile,
                                         int row) {
  const int heads_per_kv = p.num_heads_q / p.num_heads_kv;
  const int rows = p.seqlen_q * heads_per_kv;
  const int r = m_tile * kBlockM + row;
  if (!p.causal) return seqlen;
  const int sq = (r < rows ? r : rows - 1) / heads_per_kv;
  return seqlen - p.seqlen_q + sq + 1;
}

}  // namespace flashmla::sm90
