// The one definition of "how long is sequence i" for every kernel (decode, combine, GPU
// oracle): cache_seqlens[i] can break the caller contract by exceeding its block_table row,
// and each kernel must agree on where that starts and what it reads instead.
#pragma once

#include <cstdint>

#include "flashmla/flashmla.h"

namespace flashmla {

// Tokens the block_table row of a sequence can hold.
__device__ __forceinline__ int64_t table_capacity(const MlaDecodeParams& p) {
  return static_cast<int64_t>(p.max_blocks_per_seq) * p.page_block_size;
}
// cache_seqlens[i] longer than its block_table row (a broken caller contract): the pages past
// the row are another sequence's or past the table.
__device__ __forceinline__ bool seqlen_over_table(const MlaDecodeParams& p, int i) {
  return p.cache_seqlens[i] > table_capacity(p);
}
// The length every kernel uses for sequence i: cache_seqlens[i], cut to what its table row
// holds so that no page id is read past the row. An over-long sequence's output is NaN
// (the decode epilogues, the combine) rather than anything computed from the cut.
__device__ __forceinline__ int kernel_seqlen(const MlaDecodeParams& p, int i) {
  const int L = p.cache_seqlens[i];
  return L > table_capacity(p) ? static_cast<int>(table_capacity(p)) : L;
}

}  // namespace flashmla
