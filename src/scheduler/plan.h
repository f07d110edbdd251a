// Split-KV planner shared by the GPU metadata kernel and its host twin (unit-tested on CPU).
//
// Work is measured in KV blocks (64 tokens). Every non-empty sequence piece also costs
// kSplitOverheadBlocks (prologue, Q load, epilogue, and for split pieces the combine), so that
// many short sequences are not packed as if they were free. Parts are filled in batch order:
// a part takes whole sequences while they fit its payload and then a prefix of the next one.
//
// Bound (tested): every part's cost <= total / num_parts + 2 * kSplitOverheadBlocks + 1, where
// total = sum over non-empty sequences of (blocks + kSplitOverheadBlocks).
// Why: payload = ceil(total / P) + overhead; a non-last part stops only once full, overshooting
// by at most one overhead, and at most P - 1 pieces beyond the first are created, so the last
// part gets at most total / P.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define FLASHMLA_HOST_DEVICE __host__ __device__
#else
#define FLASHMLA_HOST_DEVICE
#endif

namespace flashmla {

constexpr int kSplitOverheadBlocks = 5;

// Layout of one row of tile_scheduler_metadata.
enum MetadataField : int {
  kMetaBeginBatch = 0,  // first sequence of the part
  kMetaBeginBlock = 1,  // first KV block of that sequence
  kMetaEndBatch = 2,    // last sequence touched (may be == batch, meaning none)
  kMetaEndBlock = 3,    // exclusive end block inside kMetaEndBatch
  kMetaBeginSplit = 4,  // piece index of the first sequence (0 unless it was split before)
};

FLASHMLA_HOST_DEVICE inline int num_kv_blocks(int seqlen) { return (seqlen + 63) / 64; }

// Fills metadata [num_parts, 8] and num_splits [batch + 1]. Sequential and O(batch +
// num_parts); the GPU runs it on one thread after staging seqlens in shared memory.
FLASHMLA_HOST_DEVICE inline void plan_schedule(const int32_t* seqlens, int batch, int num_parts,
                                               int32_t* metadata, int32_t* num_splits) {
  int64_t total = 0;
  for (int i = 0; i < batch; ++i) {
    int n = num_kv_blocks(seqlens[i] > 0 ? seqlens[i] : 0);
    if (n > 0) total += n + kSplitOverheadBlocks;
  }
  const int64_t payload = (total + num_parts - 1) / num_parts + kSplitOverheadBlocks;

  int cb = 0, ck = 0, cs = 0;  // cursor: batch, block within it, piece index within it
  num_splits[0] = 0;
  for (int p = 0; p < num_parts; ++p) {
    int32_t* row = metadata + p * 8;
    row[kMetaBeginBatch] = cb;
    row[kMetaBeginBlock] = ck;
    row[kMetaBeginSplit] = cs;
    int64_t remain = (p == num_parts - 1) ? INT64_MAX : payload;
    while (cb < batch && remain > 0) {
      const int n = num_kv_blocks(seqlens[cb] > 0 ? seqlens[cb] : 0);
      if (n == 0) {
        num_splits[cb + 1] = num_splits[cb];
        ++cb;
        continue;
      }
      const int left = n - ck;
      int64_t want = remain - kSplitOverheadBlocks;
      if (want < 1) want = 1;
      const int take = want < left ? static_cast<int>(want) : left;
      remain -= take + kSplitOverheadBlocks;
      ck += take;
      if (ck == n) {
        num_splits[cb + 1] = num_splits[cb] + cs + 1;
        ++cb;
        ck = 0;
        cs = 0;
      } else {
        ++cs;
      }
    }
    row[kMetaEndBatch] = cb;
    row[kMetaEndBlock] = ck;
    row[5] = row[6] = row[7] = 0;
  }
}

}  // namespace flashmla
