// Tile sizes, warpgroup roles, named barriers and the shared-memory plan of the sm90 decode
// kernel. The design (what each warpgroup does per KV tile, and why) is in docs/design.md.
#pragma once

#include <cstdint>

namespace flashmla::sm90 {

constexpr int kBlockM = 64;           // query rows per CTA (one wgmma M)
constexpr int kBlockN = 64;           // KV tokens per tile == one page
constexpr int kHeadDim = 576;         // QK^T depth
constexpr int kHeadDimV = 512;        // PV width
constexpr int kSubCols = 64;          // columns per 128-byte-swizzled sub-tile (64 x 2 B = 128 B)
constexpr int kSubTiles = kHeadDim / kSubCols;  // 9
constexpr int kSubTileBytes = kBlockN * kSubCols * 2;  // 8 KiB: one TMA box
constexpr int kTileBytes = kSubTiles * kSubTileBytes;  // 72 KiB per KV tile
constexpr int kStages = 2;            // KV ring depth: Q + 2 tiles fill the 227 KiB
// Page sizes: a 64-token tile is one box per 64x64 sub-tile when a page holds >= 64 tokens,
// 64/page boxes per sub-tile for 16- and 32-token pages (each lands 1024-byte aligned, so the
// 128B swizzle pattern is the one a 64-row box would have written), and a cp.async gather by
// the whole producer warpgroup below 16 tokens, where TMA would issue up to 576 tiny boxes.
// (The GPU reference reads a bad page id as TMA or the gather would: zeros or page 0.)
constexpr int kMinTmaPage = 16;

// Warpgroup roles: WG0 produces (TMA, or a cp.async gather / FP8 expansion), WG1 and WG2
// compute. The math warpgroups take the tiles of a sequence piece in pairs, each computing S
// and the softmax of its own tile of the pair, and each owning half of the 512 output columns
// for every tile, so no matrix work is duplicated and O costs 128 registers/thread
// (decode_math.cuh).
constexpr int kThreads = 384;
constexpr int kMathThreads = 256;
constexpr int kColsPerMathWG = kHeadDimV / 2;   // 256
constexpr int kProducerRegs = 40;
constexpr int kMathRegs = 232;  // 128 * 40 + 256 * 232 <= 65536

// Named barriers among the math threads (id 0 is __syncthreads, 6 the producer warpgroup's).
// Each name says the state that holds once every thread that waits on it may go on.
enum class MathBarrier : int {
  kQReady = 1,           // the sequence's Q tile is in sQ (and the previous one is unused)
  kRowSumPublished = 5,  // both warpgroups' row sums are in row_sum
  // The owner of a tile arrives, the other warpgroup waits; indexed by the tile's stage.
  kPTileReady = 7,       // P of the stage's tile is in its RoPE sub-tile, its max and alpha in
                         // row_max/alpha[stage] (ids 7, 8)
  kFirstSDone = 11,      // warpgroup 0's S of the pair's first tile is issued (WG0 arrives)
  // One warpgroup alone (128 threads): kTailZeroed + warpgroup.
  kTailZeroed = 9,       // the rows past the sequence end of its tile are zeroed (ids 9, 10)
};

struct alignas(1024) SharedStorage {
  // 16-bit elements (BF16 or FP16: the layout does not depend on which).
  uint16_t q[kSubTiles][kBlockM * kSubCols];           // 72 KiB, 128B-swizzled, K-major
  // 144 KiB, as TMA writes them. Sub-tile 8 (RoPE) holds P of its tile once S is done.
  uint16_t kv[kStages][kSubTiles][kBlockN * kSubCols];
  float row_max[kStages][kBlockM];  // the running max after the stage's tile (log2 domain)
  float alpha[kStages][kBlockM];    // exp2(previous max - that max): O's rescale factor
  float row_sum[2][kBlockM];        // per math warpgroup, at the end of a sequence piece
  // One per sub-tile, so S can start on the first 64 columns while the rest land.
  uint64_t full[kStages][kSubTiles];
  // Math warpgroup w is done with the stage: w's PV columns (sub-tiles 4w..4w+3) may be
  // refilled; the RoPE sub-tile (P) and the rest of the stage when both are.
  uint64_t empty[kStages][2];
  uint64_t staged[kStages];  // FP8: a stage's raw records landed, ready to expand
};

// +1024: the dynamic shared-memory base is only guaranteed 16-byte aligned; the kernel
// rounds it up to the 1024-byte swizzle atom.
constexpr int kSmemBytes = static_cast<int>(sizeof(SharedStorage)) + 1024;
static_assert(kSmemBytes <= 232448, "shared memory plan exceeds the 227 KiB per-block limit");

}  // namespace flashmla::sm90
