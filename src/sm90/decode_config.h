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
constexpr int kStages = 2;            // KV ring depth: Q + 2 tiles + P fill the 227 KiB

// Warpgroup roles: WG0 produces (one thread issues TMA), WG1 and WG2 compute. Each math
// warpgroup owns half of the 64 tokens of a tile for S = QK^T and half of the 512 output
// columns for O += PV, so no matrix work is duplicated and O costs 128 registers/thread.
constexpr int kThreads = 384;
constexpr int kMathThreads = 256;
constexpr int kTokensPerMathWG = kBlockN / 2;   // 32
constexpr int kColsPerMathWG = kHeadDimV / 2;   // 256
constexpr int kProducerRegs = 40;
constexpr int kMathRegs = 232;  // 128 * 40 + 256 * 232 <= 65536

// Named barriers among the 256 math threads (id 0 is __syncthreads). Each name says the
// state that holds once every math thread has arrived.
enum class MathBarrier : int {
  kQReady = 1,           // the sequence's Q tile is in sQ (and the previous one is unused)
  kTileSanitized = 2,    // rows past the sequence end of the current KV tile are zeroed
  kRowMaxPublished = 3,  // both halves' row maxima of the current tile are in sRowMax
  kPReady = 4,           // the full 64x64 P tile is in sP
  kRowSumPublished = 5,  // both halves' row sums are in sRowSum
};

struct alignas(1024) SharedStorage {
  // 16-bit elements (BF16 or FP16: the layout does not depend on which).
  uint16_t q[kSubTiles][kBlockM * kSubCols];           // 72 KiB, 128B-swizzled, K-major
  uint16_t kv[kStages][kSubTiles][kBlockN * kSubCols];  // 144 KiB, as TMA writes them
  uint16_t p[kBlockM * kBlockN];                        // 8 KiB, 128B-swizzled, K-major
  float row_max[2][kBlockM];
  float row_sum[2][kBlockM];
  uint64_t full[kStages];   // TMA bytes of a stage landed
  uint64_t empty[kStages];  // both math warpgroups finished reading a stage
  uint64_t staged[kStages];  // FP8: a stage's raw records landed, ready to expand
};

// +1024: the dynamic shared-memory base is only guaranteed 16-byte aligned; the kernel
// rounds it up to the 1024-byte swizzle atom.
constexpr int kSmemBytes = static_cast<int>(sizeof(SharedStorage)) + 1024;
static_assert(kSmemBytes <= 232448, "shared memory plan exceeds the 227 KiB per-block limit");

}  // namespace flashmla::sm90
