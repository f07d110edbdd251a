// Tile sizes, warpgroup roles, named barriers and the shared-memory plan of the sm90 decode
// kernel. The design (what each warpgroup does per KV tile, and why) is in docs/design.md.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace flashmla::sm90 {

constexpr int kBlockM = 64;           // query rows per CTA (one wgmma M)
constexpr int kBlockN = 64;           // KV tokens per tile == one page
constexpr int kHeadDim = 576;         // QK^T depth
constexpr int kHeadDimV = 512;        // PV width
constexpr int kSubCols = 64;          // columns per 128-byte-swizzled sub-tile (64 bf16 = 128 B)
constexpr int kSubTiles = kHeadDim / kSubCols;  // 9
constexpr int kSubTileBytes = kBlockN * kSubCols * 2;  // 8 KiB: one TMA box
constexpr int kTileBytes = kSubTiles * kSubTileBytes;  // 72 KiB per KV tile
constexpr int kStages = 2;            // KV ring depth: Q + 2 tiles fill the 227 KiB

// Warpgroup roles. WG0 produces (one thread issues TMA). WG1, the softmax warpgroup,
// computes S = Q K^T for all 64 tokens of a tile (wgmma m64n64k16: 4 KiB of shared memory per
// 32 clocks, which the 128 B/clk shared memory sustains), the whole online softmax, and its
// half (columns 0..255) of O += P V. WG2, the PV warpgroup, only rescales and accumulates the
// other half (columns 256..511). A 64x512 fp32 O tile is 128 KiB of registers, so it has to be
// split over two warpgroups; splitting S the same way (v1-v4) made both warpgroups re-read Q
// for half-width wgmmas and stall together in the softmax (docs/perf-log.md).
constexpr int kThreads = 384;
constexpr int kMathThreads = 256;
constexpr int kColsPerMathWG = kHeadDimV / 2;   // 256
constexpr int kProducerRegs = 40;
constexpr int kMathRegs = 232;  // 128 * 40 + 256 * 232 <= 65536

// Named barriers (id 0 is __syncthreads). Each name says the state that holds once all its
// threads arrived. The per-stage and per-parity ids let the softmax warpgroup run one handoff
// ahead without reusing a barrier generation the PV warpgroup has not consumed yet.
enum class Barrier : int {
  kSoftmaxQReady = 1,       // 128: WG1 wrote this piece's Q tile into sQ
  kSoftmaxTileClean = 2,    // 128: WG1 zeroed the rows past the sequence end of a tile
  kPReadyStage0 = 3,        // 256: P and alpha of the tile in stage 0 are in shared memory
  kPReadyStage1 = 4,        // 256: same, stage 1
  kRowSumReadyParity0 = 5,  // 256: row sums of an even piece are in shared memory
  kRowSumReadyParity1 = 6,  // 256: same, odd piece
};
static_assert(kStages == 2, "one kPReady barrier per stage");

struct alignas(1024) SharedStorage {
  __nv_bfloat16 q[kSubTiles][kBlockM * kSubCols];           // 72 KiB, 128B-swizzled, K-major
  // 144 KiB as TMA writes them. Sub-tile 8 (the RoPE columns) is read by S only; once S is
  // done the softmax warpgroup overwrites it with P (64x64 bf16, same layout) for both PVs.
  __nv_bfloat16 kv[kStages][kSubTiles][kBlockN * kSubCols];
  float alpha[kStages][kBlockM];  // rescale factor of each row for the tile in that stage
  float row_sum[2][kBlockM];      // final row sums of a piece, by piece parity
  uint64_t full[kStages];         // TMA bytes of a stage landed
  uint64_t empty[kStages];        // both math warpgroups finished reading a stage
};
constexpr int kPSubTile = kSubTiles - 1;

// +1024: the dynamic shared-memory base is only guaranteed 16-byte aligned; the kernel
// rounds it up to the 1024-byte swizzle atom.
constexpr int kSmemBytes = static_cast<int>(sizeof(SharedStorage)) + 1024;
static_assert(kSmemBytes <= 232448, "shared memory plan exceeds the 227 KiB per-block limit");

}  // namespace flashmla::sm90
