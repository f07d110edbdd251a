// Tile sizes, warp roles, named barriers and the shared-memory plan of the sm90 small-head
// decode kernel (at most 16 query rows per kv head; sm90/small_kernel.cuh, docs/design.md).
#pragma once

#include <cstdint>

#include "sm90/decode_config.h"

namespace flashmla::sm90 {

// Transposed products: S^T = K Q^T (M = 64 tokens, N = 16 query rows) and O^T = V^T P^T
// (M = 64 dims per block, 8 blocks). Padding 16 rows to the 64 of the wide kernel quadrupled
// its tensor work; here a tile costs 68 m64n16k16, O^T is 64 registers per thread and Q 18 KiB,
// which leaves shared memory for a 25-sub-tile ring (or an FP8 staging ring next to one).
constexpr int kSmallRows = 16;
// Warpgroups 0 and 1 expand the FP8 records of alternate tiles (one warpgroup alone, a warp
// per scheduler, was too slow: docs/perf-log.md v13), warpgroup 2 is the math, and warp 12 (warpgroup 3) issues TMA. ptxas gives a wgmma kernel its registers per
// warpgroup; setmaxnreg moves them to the math (four S^T accumulators and O^T).
constexpr int kSmallThreads = 512;
constexpr int kSmallExpanders = 2;
constexpr int kSmallMathWarp = 8;
constexpr int kSmallTmaWarp = 12;
constexpr int kSmallExpandRegs = 120;
constexpr int kSmallMathRegs = 232;
constexpr int kSmallTmaRegs = 40;  // 128 * (2 * 120 + 232 + 40) <= 65536
constexpr int kSmallMathThreads = 128;
constexpr int kSmallExpandThreads = 128;

// The ring is a run of 8 KiB sub-tile slots (one 64-token x 64-column box each), used in
// order: tile n's sub-tile t sits wherever the running position was, and each slot is released
// on its own (the RoPE sub-tile right after S^T, V sub-tile j right after O^T block j).
constexpr int kSmallRingBytes = 25 * kSubTileBytes + 2048;  // + what the plan has left
constexpr int kSmallSlots16 = 25;  // 16-bit caches: 2.8 tiles
// FP8: raw records land in staging tiles (TMA: 4 x 64 rows x 128 latent bytes, 128B-swizzled,
// then 16 B of scales per row), and the expander warpgroups turn them into bf16 sub-tiles in
// the slots after them; they read the RoPE part (already bf16) straight from global memory.
// The slot count is what limits: the math holds 9 slots from S^T to O^T, and the sub-tiles of
// the next tile that do not fit in the rest are expanded only after that release, on the
// math's path (docs/perf-log.md v13).
constexpr int kFp8LatentBytes = 4 * kBlockN * 128;
constexpr int kFp8StagingScales = kFp8LatentBytes;
constexpr int kFp8StagingBytes = kFp8StagingScales + kBlockN * 16;  // 33 KiB
constexpr int kSmallFp8Staging = 2;  // 17 slots; 3 (12 slots) measured 11% slower
__host__ __device__ constexpr int small_fp8_slots(int staging) {
  return (kSmallRingBytes - staging * kFp8StagingBytes) / kSubTileBytes;
}
constexpr int kSmallSlotsMax = kSmallSlots16;
static_assert(small_fp8_slots(kSmallFp8Staging) <= kSmallSlotsMax, "barrier arrays cover both");
// Expander warpgroup w takes tiles w, w + 2, ..: with one staging tile per expander each waits
// only on its own staging barriers, in order (a shared one let a warpgroup pass a parity wait a
// lap early: the crash of the measured 1-staging-tile variant, docs/perf-log.md v13).
static_assert(kSmallFp8Staging == kSmallExpanders, "one staging tile per expander warpgroup");
static_assert(kFp8StagingBytes % 1024 == 0, "staging tiles keep the 1024-byte swizzle atom");
static_assert(small_fp8_slots(kSmallFp8Staging) >= kSubTiles, "S^T needs 9 slots at once");

// Named barriers of the math warpgroup (128 threads; id 0 is __syncthreads).
enum class SmallBarrier : int {
  kQFree = 1,          // every math thread is done with the previous piece's Q and row sums
  kQReady = 2,         // the piece's Q is in sQ
  kMaxPublished = 3,   // every warp's column maxima of the tile are in red_max
  kPReady = 4,         // P^T of the tile is in sP
  kTailZeroed = 5,     // rows past the sequence end of the sub-tile are zeroed (16-bit caches)
  kSumPublished = 6,   // every warp's row sums of the piece are in red_sum
};

struct alignas(1024) SmallStorage {
  uint16_t q[kSubTiles][kSmallRows * kSubCols];  // 18 KiB: Q, 128B-swizzled, K-major (B of S^T)
  // P [row][token], K-major (B of O^T). One buffer: every warp has waited for the tile's O^T
  // (one collective wgmma) before any writes the next tile's P.
  uint16_t p[kSmallRows * kBlockN];
  alignas(1024) char ring[kSmallRingBytes];
  float red_max[2][4][kSmallRows];  // per tile parity: each warp's max over its 16 tokens
  float red_sum[4][kSmallRows];
  uint64_t full[kSmallSlotsMax];   // slot holds its sub-tile (TMA bytes, or 128 expanders)
  uint64_t empty[kSmallSlotsMax];  // the math is done with the slot
  uint64_t staged_full[kSmallFp8Staging];   // FP8: the tile's raw records landed
  uint64_t staged_empty[kSmallFp8Staging];  // FP8: its 128 expander threads are done with them
};

constexpr int kSmallSmemBytes = static_cast<int>(sizeof(SmallStorage)) + 1024;
static_assert(kSmallSmemBytes <= 232448, "small-head shared memory plan exceeds 227 KiB");

}  // namespace flashmla::sm90
