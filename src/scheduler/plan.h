// Split-KV planner: closed form, shared by the GPU metadata kernel (src/metadata.cu, one CTA,
// parallel) and its host twin plan_schedule() (plain loops, unit-tested on CPU). Both are built
// from the same __host__ __device__ integer helpers below, so they agree bit for bit.
//
// Work is measured in KV blocks (64 tokens). Every non-empty sequence piece also costs ov
// blocks (prologue, Q load, epilogue, and for split pieces the combine), so that many short
// sequences are not packed as if they were free; ov may depend on the kernel that runs the
// plan (split_overhead_blocks: 5 for the wide kernel, 2 for the small-head kernel).
//
// The plan. Lay the sequences out on a line of "cost positions": sequence i has
//   cost_i = nblocks_i > 0 ? nblocks_i + ov : 0,   C_i = cost_0 + ... + cost_{i-1},
// and occupies positions [C_i, C_i + cost_i): its first ov + 1 positions stand for block 0 (the
// overhead and the block), position C_i + ov + k for block k. total = C_batch and the payload is
// P = max(1, ceil(total / num_parts)). Part p starts at position x_p = p * P (x_p >= total: at
// (batch, 0), nothing left), and ends where part p + 1 starts. Position x in sequence i maps to
// block max(0, x - C_i - ov), so block k of sequence i belongs to part (C_i + ov + k) / P.
//
//   pieces_i      = cost_i == 0 ? 0 : 1 + #{q : C_i + ov < q * P < C_i + cost_i}
//                 = 1 + (C_i + cost_i - 1) / P - (C_i + ov) / P       (a part that starts at
//                   block 0 of a sequence, i.e. at a position <= C_i + ov, makes no extra piece)
//   begin_split_p = 0 if part p starts at block 0, else #{q <= p : q * P > C_i + ov}
//                 = p - (C_i + ov) / P.
// Several parts may start at block 0 of the same sequence (when P <= ov); all but the last of
// them are then empty there (begin == end), which the decode kernel skips.
//
// Bound (tested): every part's cost, sum over its pieces of (blocks + ov), is <= P + ov. A part
// spans at most P positions; each of its pieces but the first starts at block 0 of its sequence
// and so has all its overhead positions inside the part, while the first may start mid-sequence
// (or mid-overhead) and be charged up to ov positions it does not span.
//
// Whole-sequence plan: when there are at least as many parts as sequences and the costliest
// sequence costs no more than P plus what a cut costs (max_i cost_i <= P + kWholeSlackBlocks,
// = the bound above where ov = 5), part i takes all of sequence i instead (parts past the batch
// are empty). No sequence is cut, so no partials are written
// and the combine has nothing to add, which the split plan's balance does not buy back there:
// b = 128 at s_k = 4096, h_q = 16 (cost 69 against P + 5 = 72, ov = 5) measured -4% (BF16) and -8%
// (FP8) per call, h_q = 64 -15% (docs/perf-log.md v16). Its pieces are counted by the same
// helpers with a payload no position reaches (kWholePayload: one piece per non-empty sequence).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define FLASHMLA_HOST_DEVICE __host__ __device__
#else
#define FLASHMLA_HOST_DEVICE
#endif

namespace flashmla {

// Overhead of a piece in KV blocks, by the kernel that runs the plan (split_overhead_blocks
// below), and the slack of the whole-sequence rule (whole_sequences).
constexpr int kSplitOverheadBlocks = 5;       // the wide kernel (more than 16 rows per kv head)
constexpr int kSmallSplitOverheadBlocks = 2;  // the small-head kernel (up to 16 rows); see below
constexpr int kWholeSlackBlocks = 5;          // what a cut costs, partials and combine included

// Layout of one row of tile_scheduler_metadata.
enum MetadataField : int {
  kMetaBeginBatch = 0,  // first sequence of the part
  kMetaBeginBlock = 1,  // first KV block of that sequence
  kMetaEndBatch = 2,    // last sequence touched (may be == batch, meaning none)
  kMetaEndBlock = 3,    // exclusive end block inside kMetaEndBatch
  kMetaBeginSplit = 4,  // piece index of the first sequence (0 unless it was split before)
};

// KV blocks of a sequence; negative lengths count as empty, and lengths near INT32_MAX do not
// overflow. The planner and the kernels share it, so they agree on every length.
FLASHMLA_HOST_DEVICE inline int num_kv_blocks(int32_t seqlen) {
  return seqlen > 0 ? (seqlen - 1) / 64 + 1 : 0;
}

namespace plan {

// The plan's overhead per piece for rows_per_kv_head query rows (s_q * h_q / h_kv, what
// get_mla_metadata is given; the planner does not know the cache format, and FP8 caches at
// 17-32 rows run the small kernel with the wide kernel's figure). Measured on the H100
// (docs/perf-log.md, sessions 13 and 18): the wide kernel's pair pipeline stalls at every
// piece (epilogue, Q, refill), and its latency regimes improve up to 5 and not beyond (7: within
// 1%, 10: up to +5%). The small kernel's piece costs about a Q load: 2 measured 2.2-2.4% faster
// at b = 128 and varied lengths around 4k (FP8 0.6%) and b1_8k_h16 -0.2 to -0.5 us, with the
// whole-sequence slack kept at 5 (sessions 18 and 20).
FLASHMLA_HOST_DEVICE inline int split_overhead_blocks(int rows_per_kv_head) {
  return rows_per_kv_head <= 16 ? kSmallSplitOverheadBlocks : kSplitOverheadBlocks;
}

// Positions are int64: total reaches batch * (2^25 + 5) for seqlens near INT32_MAX.

FLASHMLA_HOST_DEVICE inline int64_t seq_cost(int32_t seqlen, int ov) {
  const int n = num_kv_blocks(seqlen);
  return n > 0 ? static_cast<int64_t>(n) + ov : 0;
}

// P = max(1, ceil(total / num_parts)); num_parts >= 1.
FLASHMLA_HOST_DEVICE inline int64_t payload(int64_t total, int num_parts) {
  const int64_t p = (total + num_parts - 1) / num_parts;
  return p > 1 ? p : 1;
}

// Largest sequence cost of sequences [lo, hi).
FLASHMLA_HOST_DEVICE inline int64_t range_max_cost(const int32_t* seqlens, int lo, int hi, int ov) {
  int64_t m = 0;
  for (int i = lo; i < hi; ++i) {
    const int64_t c = seq_cost(seqlens[i], ov);
    m = c > m ? c : m;
  }
  return m;
}

// Whether the whole-sequence plan is used (see the top of this file). The slack is what a cut
// would cost, not the piece overhead ov: with a slack of ov = 2, b = 128 at s_k = 8192 and 16
// rows (cost 130 against P = 127) would be split, 3.3% slower than whole (BF16; FP8 4.4%).
FLASHMLA_HOST_DEVICE inline bool whole_sequences(int64_t max_cost, int64_t total, int batch,
                                                 int num_parts) {
  return batch <= num_parts && max_cost <= payload(total, num_parts) + kWholeSlackBlocks;
}

// The whole-sequence plan's payload for piece counting: positions stay below
// batch * (2^25 + 5) < 2^57, so no part start but the first falls inside the line.
constexpr int64_t kWholePayload = int64_t{1} << 60;

// Pieces of the sequence at positions [c, c + cost).
FLASHMLA_HOST_DEVICE inline int seq_pieces(int64_t c, int64_t cost, int64_t pay, int ov) {
  if (cost == 0) return 0;
  return 1 + static_cast<int>((c + cost - 1) / pay - (c + ov) / pay);
}

// Block at which a part starting at position x inside the sequence at [c, ...) begins.
FLASHMLA_HOST_DEVICE inline int start_block(int64_t x, int64_t c, int ov) {
  const int64_t d = x - c;
  return d <= ov ? 0 : static_cast<int>(d - ov);
}

// Piece index (begin_split) of part p, which starts at position x = p * pay inside the
// sequence at [c, ...): the number of part starts q <= p strictly after c + ov.
FLASHMLA_HOST_DEVICE inline int start_split(int p, int64_t x, int64_t c, int64_t pay, int ov) {
  return x - c <= ov ? 0 : p - static_cast<int>((c + ov) / pay);
}

// Where part p starts (== where part p - 1 ends).
struct Boundary {
  int batch, block, split;
};

// Boundary of part p whose start x = p * pay lies in sequence i, at positions [c, c + cost_i).
FLASHMLA_HOST_DEVICE inline Boundary boundary_in(int p, int64_t x, int i, int64_t c,
                                                 int64_t pay, int ov) {
  return Boundary{i, start_block(x, c, ov), start_split(p, x, c, pay, ov)};
}

// Boundary p of the whole-sequence plan: part p starts sequence p (or nothing, past the batch).
FLASHMLA_HOST_DEVICE inline Boundary whole_boundary(int p, int batch) {
  return Boundary{p < batch ? p : batch, 0, 0};
}

// Boundary p in [0, num_parts] goes to row p's begin and row p - 1's end.
FLASHMLA_HOST_DEVICE inline void write_boundary(int32_t* metadata, int num_parts, int p,
                                                Boundary b) {
  if (p < num_parts) {
    int32_t* row = metadata + static_cast<int64_t>(p) * 8;
    row[kMetaBeginBatch] = b.batch;
    row[kMetaBeginBlock] = b.block;
    row[kMetaBeginSplit] = b.split;
    row[5] = row[6] = row[7] = 0;
  }
  if (p > 0) {
    int32_t* row = metadata + static_cast<int64_t>(p - 1) * 8;
    row[kMetaEndBatch] = b.batch;
    row[kMetaEndBlock] = b.block;
  }
}

// --- Chunked layout used by the GPU kernel (and emulated by the unit tests) -------------
// Chunk t of num_chunks owns the contiguous sequences [chunk_begin(t), chunk_begin(t + 1)).

FLASHMLA_HOST_DEVICE inline int chunk_size(int batch, int num_chunks) {
  return batch / num_chunks + (batch % num_chunks != 0 ? 1 : 0);
}

FLASHMLA_HOST_DEVICE inline int chunk_begin(int t, int chunk, int batch) {
  const int64_t b = static_cast<int64_t>(t) * chunk;
  return b < batch ? static_cast<int>(b) : batch;
}

// Sum of costs of sequences [lo, hi).
FLASHMLA_HOST_DEVICE inline int64_t range_cost(const int32_t* seqlens, int lo, int hi, int ov) {
  int64_t s = 0;
  for (int i = lo; i < hi; ++i) s += seq_cost(seqlens[i], ov);
  return s;
}

// Sum of pieces of sequences [lo, hi), the first of which starts at position c.
FLASHMLA_HOST_DEVICE inline int64_t range_pieces(const int32_t* seqlens, int lo, int hi,
                                                 int64_t c, int64_t pay, int ov) {
  int64_t s = 0;
  for (int i = lo; i < hi; ++i) {
    const int64_t cost = seq_cost(seqlens[i], ov);
    s += seq_pieces(c, cost, pay, ov);
    c += cost;
  }
  return s;
}

// num_splits[i + 1] for i in [lo, hi): split is the number of pieces before sequence lo.
FLASHMLA_HOST_DEVICE inline void write_range_splits(const int32_t* seqlens, int lo, int hi,
                                                    int64_t c, int64_t pay, int ov, int64_t split,
                                                    int32_t* num_splits) {
  for (int i = lo; i < hi; ++i) {
    const int64_t cost = seq_cost(seqlens[i], ov);
    split += seq_pieces(c, cost, pay, ov);
    c += cost;
    num_splits[i + 1] = static_cast<int32_t>(split);
  }
}

// Boundary p in [0, num_parts], given chunk_start[t] = position of chunk t's first sequence
// for t < num_chunks (non-decreasing, chunk_start[0] == 0): binary search for the last chunk
// starting at or before x, then a linear walk inside it.
FLASHMLA_HOST_DEVICE inline Boundary locate_boundary(int p, int64_t pay, int ov, int64_t total,
                                                     const int32_t* seqlens, int batch,
                                                     const int64_t* chunk_start, int num_chunks,
                                                     int chunk) {
  const int64_t x = static_cast<int64_t>(p) * pay;
  if (x >= total) return Boundary{batch, 0, 0};
  int lo = 0, hi = num_chunks - 1;  // chunk_start[lo] <= x holds throughout
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (chunk_start[mid] <= x) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  // x < (start of chunk lo + 1, or total): the walk stops inside chunk lo.
  int i = chunk_begin(lo, chunk, batch);
  int64_t c = chunk_start[lo];
  for (int64_t cost = seq_cost(seqlens[i], ov); c + cost <= x; cost = seq_cost(seqlens[++i], ov)) c += cost;
  return boundary_in(p, x, i, c, pay, ov);
}

}  // namespace plan

// Host twin of the GPU planner (src/metadata.cu): fills metadata [num_parts, 8] and
// num_splits [batch + 1] with plain loops in O(batch + num_parts). num_parts >= 1.
inline void plan_schedule(const int32_t* seqlens, int batch, int num_parts, int ov,
                          int32_t* metadata, int32_t* num_splits) {
  if (num_parts < 1) return;
  const int64_t total = plan::range_cost(seqlens, 0, batch, ov);
  const bool whole = plan::whole_sequences(plan::range_max_cost(seqlens, 0, batch, ov), total, batch, num_parts);
  const int64_t pay = whole ? plan::kWholePayload : plan::payload(total, num_parts);
  num_splits[0] = 0;
  plan::write_range_splits(seqlens, 0, batch, 0, pay, ov, 0, num_splits);
  int i = 0;
  int64_t c = 0;  // position of sequence i
  for (int p = 0; p <= num_parts; ++p) {
    plan::Boundary b{batch, 0, 0};
    if (whole) {
      b = plan::whole_boundary(p, batch);
    } else if (const int64_t x = static_cast<int64_t>(p) * pay; x < total) {
      for (int64_t cost = plan::seq_cost(seqlens[i], ov); c + cost <= x;
           cost = plan::seq_cost(seqlens[++i], ov)) {
        c += cost;
      }
      b = plan::boundary_in(p, x, i, c, pay, ov);
    }
    plan::write_boundary(metadata, num_parts, p, b);
  }
}

}  // namespace flashmla
