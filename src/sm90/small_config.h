// Tile sizes, warp roles, named barriers and the shared-memory plan of the sm90 small-head
// decode kernel (at most 16 query rows per kv head, 32 with FP8 caches; sm90/small_kernel.cuh,
// docs/design.md).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "sm90/decode_config.h"

namespace flashmla::sm90 {

// Transposed products: S^T = K Q^T (M = 64 tokens, N = 16 query rows) and O^T = V^T P^T
// (M = 64 dims per block, 8 blocks). Padding 16 rows to the 64 of the wide kernel quadrupled
// its tensor work; here a tile costs 68 m64n16k16, O^T is 64 registers per thread and Q 18 KiB,
// which leaves shared memory for a 25-sub-tile ring (or four whole-tile FP8 stages).
constexpr int kSmallRows = 16;
// Warp roles (512 threads, four warpgroups; ptxas sizes registers by whole warpgroups, so a
// fifth warp for TMA would cost 96 registers a thread at launch). The math is split in two
// warpgroups that pipeline across tiles: warpgroup 2 (scores) computes S^T and the softmax of
// tile n + 1 and hands P^T over while warpgroup 3 (values) computes O^T of tile n (one
// warpgroup doing both in sequence was latency-bound: its warps issued 20% of the time;
// splitting O^T of FP8 tiles over two values warpgroups measured 7-17% slower, perf-log v14).
// Thread 0 issues every TMA; warpgroups 0 and 1 otherwise idle (with two row blocks warpgroup 1
// is the second scores warpgroup), and setmaxnreg moves their registers to the math.
constexpr int kSmallThreads = 512;
constexpr int kSmallScoreWarp = 8;
constexpr int kSmallValueWarp = 12;
constexpr int kSmallIdleRegs = 24;
constexpr int kSmallTmaRegs = 40;  // warpgroup 0
constexpr int kSmallMathRegs = 224;
static_assert(kSmallTmaRegs + kSmallIdleRegs + 2 * kSmallMathRegs <= 4 * 128,
              "setmaxnreg plan exceeds the 128 registers a thread the launch holds");
// Two row blocks (FP8, 17-32 rows): warpgroup 1 is block 1's scores warpgroup, and the values
// warpgroup's O^T (N = 32) holds 128 accumulator registers. The TMA thread's loop fits in the
// minimum (24). The values warpgroup needs 232: at 216 its double-buffered A fragments next to
// the accumulators made ptxas serialize every wgmma of the kernel (C7512, 4-8% slower); the
// scores warpgroups then have 128, where ptxas keeps a few values of per-piece state in local
// memory (60 bytes; per tile two stores before S^T and their loads after, L1 hits; perf-log v18).
constexpr int kSmall2TmaRegs = 24;
constexpr int kSmall2ScoreRegs = 128;
constexpr int kSmall2ValueRegs = 232;
static_assert(kSmall2TmaRegs + 2 * kSmall2ScoreRegs + kSmall2ValueRegs <= 4 * 128,
              "two-block setmaxnreg plan exceeds the 128 registers a thread the launch holds");
constexpr int kSmallMathThreads = 128;  // one math warpgroup
// Lazy rescale (log2 domain): the scores warpgroup keeps a row's softmax offset until a score
// passes it by more than this, so P <= 2^8 (far inside fp16 and fp32 range) and
// most tiles skip the cross-warp max exchange and the values warpgroup's rescale of O
// (docs/perf-log.md v15).
constexpr float kSmallLazyRescale = 8.f;

// 16-bit caches: the ring is a run of 8 KiB sub-tile slots (one 64-token x 64-column box
// each), used in order: tile n's sub-tile t sits wherever the running position was, and each
// slot is released on its own (the RoPE sub-tile right after S^T, V sub-tile j right after
// O^T block j).
constexpr int kSmallRingBytes = 25 * kSubTileBytes;
constexpr int kSmallSlots16 = 25;  // 2.8 tiles
// FP8 caches: whole-tile stages of the raw records as TMA writes them (latent 4 x 64 rows x
// 128 e4m3, 128B-swizzled; the RoPE sub-tile, bf16 and swizzled; 16 B of scales per row), no
// bf16 copy of the latent part: S^T runs on e4m3 wgmma with K read from the stage (both operands in
// shared memory) and Q as three e4m3 terms; O^T, whose V^T operand is MN-major (no 8-bit wgmma
// takes that), converts the bytes into f16 A fragments in registers. The scales act outside
// the products: on the S^T sum of each 128-dim group per token, and folded into P^T (one copy
// per group). small_fp8.cuh, docs/perf-log.md v14-v17.
//
// FP8 caches also take 17-32 rows (v17): kBlocks = 2 blocks of 16 rows, each with its own
// scores warpgroup (the otherwise idle warpgroup 1 takes block 1), and one values warpgroup
// whose O^T has N = 32. The conversion of V, the one costly step of O^T, is then shared by
// both blocks; a 16-row kernel run twice over the same tiles would convert every tile twice.
constexpr int kSmallMaxBlocks = 2;
constexpr int kSmallMaxRows = kSmallMaxBlocks * kSmallRows;
constexpr int kFp8LatentBytes = 4 * kBlockN * 128;
constexpr int kFp8RopeOffset = kFp8LatentBytes;
constexpr int kFp8ScalesOffset = kFp8RopeOffset + kSubTileBytes;
constexpr int kFp8StageBytes = kFp8ScalesOffset + kBlockN * 16;  // 41 KiB
// The FP8 plan overlays SmallStorage's q, p and ring (byte offsets from its start):
// Q as three e4m3 terms of the scaled latent part, [group][block][term][16 rows][128 B]
// (128B-swizzled, 6 KiB a block: the three terms of a block are the 48 rows of one m64n48k32 B
// operand), the stages, P^T [buffer][group] ([rows][token] f16, the blocks' rows one after the
// other: one B operand of N = 16 kBlocks), and Q's bf16 RoPE sub-tile ([rows][128 B]).
// Four stages at 16 rows; three at 32 (Q and P^T take twice the room). Three stages cost the
// 16-row kernel 4% (perf-log v17), and the 32-row one is bound by its math, not its loads.
template <int kBlocks>
struct Fp8Plan {
  static constexpr int kRows = kBlocks * kSmallRows;
  static constexpr int kQBlockBytes = 3 * kSmallRows * 128;
  static constexpr int kQGroupBytes = kBlocks * kQBlockBytes;
  static constexpr int kStages = kBlocks == 1 ? 4 : 3;
  static constexpr int kPBytes = kRows * kBlockN * 2;  // P^T of one group
  static constexpr int kStagesOffset = 4 * kQGroupBytes;
  static constexpr int kPOffset = kStagesOffset + kStages * kFp8StageBytes;
  static constexpr int kQRopeOffset = kPOffset + 2 * 4 * kPBytes;
  static constexpr int kBytes = kQRopeOffset + kRows * 128;
  static_assert(kStagesOffset % 1024 == 0 && kPOffset % 1024 == 0 && kQRopeOffset % 1024 == 0,
                "FP8 stages, P^T and Q keep the 1024-byte swizzle atom");
};
constexpr int kFp8MaxStages = 4;
// Each Q row is scaled by 2^k (exact) so that its largest |q|, mx, lands in (224, 448], e4m3's
// top binade. k is clamped to [-126, 126] so that 2^k and 2^-k stay normal floats: a row of
// values so small that 448 / mx would overflow keeps finite terms (no 0 * inf = NaN). Zero or
// non-finite mx: k = 0. Host-callable for its unit test (test_fp8_cache).
__host__ __device__ inline int small_q_scale_exponent(float mx) {
  if (!(mx > 0.f) || !(mx <= 3.40282347e38f)) return 0;
  int e;
  frexpf(mx, &e);  // mx in [2^(e - 1), 2^e)
  int k = 9 - e;   // mx * 2^k in [256, 512)
  if (ldexpf(mx, k) > 448.f) --k;
  return k < -126 ? -126 : (k > 126 ? 126 : k);
}
// The FP8 P^T bound (small_kernel.cuh): the exponent e of a power of two 2^e > x, from x's
// exponent field, kept in [-125, 126] so that 2^e and 2^-e are normal floats (a scale past
// 2^126 then gives P^T <= 4 P, still far inside fp16). For x > 0, inf included.
// Host-callable for its unit test (test_fp8_cache).
__host__ __device__ inline int small_scale_bound_exponent(float x) {
  uint32_t bits;
  memcpy(&bits, &x, sizeof bits);
  const int e = static_cast<int>((bits >> 23) & 0xff) - 126;
  const int lo = e < -125 ? -125 : e;
  return lo > 126 ? 126 : lo;
}
__host__ __device__ inline float small_pow2(int k) {  // 2^k for k in [-126, 127], exact
  uint32_t bits = static_cast<uint32_t>(k + 127) << 23;
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}
static_assert(kFp8StageBytes % 1024 == 0, "FP8 stages keep the 1024-byte swizzle atom");

// Named barriers (id 0 is __syncthreads). kQFree .. kSumPublished are a scores warpgroup's
// own (128 threads; block 1's scores warpgroup uses the same names at id + kSmallBlock1Ids) and
// kVTailZeroed the values warpgroup's; the P hand-off ones pair the scores warpgroups with the
// values warpgroup (small_handoff_threads), per P buffer.
enum class SmallBarrier : int {
  kQFree = 1,          // every scores thread is done with the previous piece's Q and row sums
  kQReady = 2,         // the piece's Q is in sQ
  kMaxPublished = 3,   // the lazy vote is in; then: every warp's column maxima (and FP8 scale
                       // maxima) of the tile are in red_max (red_smax)
  kTailZeroed = 4,     // rows past the sequence end of the sub-tile are zeroed (16-bit caches)
  kSumPublished = 5,   // every warp's row sums of the piece are in red_sum
  kPFull0 = 6,         // P^T buffer 0 (and its alpha, final row stats) written: values may read
  kPFull1 = 7,
  kPEmpty0 = 8,        // the values warpgroup's O^T is done with P^T buffer 0: scores may write
  kPEmpty1 = 9,
  kVTailZeroed = 10,   // FP8: the values warpgroup zeroed the stage's rows past the sequence end
};
constexpr int kSmallBlock1Ids = 10;  // block 1's kQFree .. kSumPublished: ids 11 .. 15
static_assert(static_cast<int>(SmallBarrier::kSumPublished) + kSmallBlock1Ids <= 15,
              "named barrier ids stop at 15");
constexpr int small_handoff_threads(int blocks) { return (blocks + 1) * kSmallMathThreads; }

struct alignas(1024) SmallStorage {
  uint16_t q[kSubTiles][kSmallRows * kSubCols];  // 18 KiB: Q, 128B-swizzled, K-major (B of S^T)
  // P [row][token], K-major (B of O^T), double-buffered between the two math warpgroups.
  uint16_t p[2][kSmallRows * kBlockN];
  alignas(1024) char ring[kSmallRingBytes];
  // Per-row arrays span kSmallMaxRows: block b's scores warpgroup owns rows 16 b .. 16 b + 15.
  float red_max[2][4][kSmallMaxRows];  // per tile parity: each warp's max over its 16 tokens
  float red_sum[4][kSmallMaxRows];
  // Per P buffer: the tile's rescale of O (exp2 of old max - new max) per query row, and for the
  // last tile of a piece its final row max (log2 domain) and row sum, for the epilogue.
  float alpha[2][kSmallMaxRows];
  float fin_max[2][kSmallMaxRows];
  float fin_sum[2][kSmallMaxRows];
  float q_unscale[kSmallMaxRows];  // FP8: 1 / the power of two Q's latent row was scaled by
  // FP8, per 128-dim group: each warp's largest scale of the tile (per tile parity and block),
  // and per P buffer the rescale of O's group blocks (old / new running scale bound) and, for
  // the last tile of a piece, the bound itself (P^T is in units of it). Both blocks' scores
  // warpgroups compute the same bounds (same tokens, same scales); block 0's are published.
  float red_smax[2][kSmallMaxBlocks][4][4];
  float gfac[2][4];
  float fin_gmax[2][4];
  uint64_t full[kSmallSlots16];   // 16-bit: slot holds its sub-tile (TMA bytes)
  uint64_t empty[kSmallSlots16];  // 16-bit: the math is done with the slot
  uint64_t staged_full[kFp8MaxStages];   // FP8: the tile's records landed
  uint64_t staged_empty[kFp8MaxStages];  // FP8: the values warpgroup's O^T is done with them
};

static_assert(Fp8Plan<1>::kBytes <= offsetof(SmallStorage, ring) + kSmallRingBytes &&
                  Fp8Plan<2>::kBytes <= offsetof(SmallStorage, ring) + kSmallRingBytes,
              "FP8 plan exceeds SmallStorage's q, p and ring");
static_assert(Fp8Plan<1>::kStages <= kFp8MaxStages && Fp8Plan<2>::kStages <= kFp8MaxStages,
              "FP8 stage barriers");

constexpr int kSmallSmemBytes = static_cast<int>(sizeof(SmallStorage)) + 1024;
static_assert(kSmallSmemBytes <= 232448, "small-head shared memory plan exceeds 227 KiB");

}  // namespace flashmla::sm90
