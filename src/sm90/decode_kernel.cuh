// The sm90 split-KV MLA decode kernel. One CTA = (scheduler part, kv head, 64-row query tile).
// It walks the (sequence, KV block) range its part was given, keeping Q resident in shared
// memory and streaming 64-token KV tiles through a TMA ring. See docs/design.md.
#pragma once

#include <cuda.h>
#include <cuda_bf16.h>

#include <cstdint>

#include "flashmla/flashmla.h"
#include "scheduler/plan.h"
#include "sm90/decode_config.h"
#include "sm90/ptx.cuh"

namespace flashmla::sm90 {

__device__ __forceinline__ void sync(Barrier b, int threads) {
  named_barrier_sync(static_cast<int>(b), threads);
}
__device__ __forceinline__ void arrive(Barrier b, int threads) {
  named_barrier_arrive(static_cast<int>(b), threads);
}
__device__ __forceinline__ Barrier p_ready(int stage) {
  return stage == 0 ? Barrier::kPReadyStage0 : Barrier::kPReadyStage1;
}
__device__ __forceinline__ Barrier row_sum_ready(int piece) {
  return (piece & 1) ? Barrier::kRowSumReadyParity1 : Barrier::kRowSumReadyParity0;
}

// Byte offset of element (row, col) inside a 64x64 bf16 sub-tile stored 128B-swizzled:
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

__device__ __forceinline__ void producer(const MlaDecodeParams& p, const CUtensorMap* kv_map,
                                         SharedStorage& s, const PartWalk& walk, int kv_head) {
  int iter = 0;
  for (int i = walk.batch_begin; i <= walk.batch_end && i < p.batch; ++i) {
    const int nblocks = num_kv_blocks(p.cache_seqlens[i]);
    const int32_t* table = p.block_table + static_cast<int64_t>(i) * p.block_table_batch_stride;
    for (int blk = walk.lo(i), end = walk.hi(i, nblocks); blk < end; ++blk, ++iter) {
      const int stage = iter % kStages;
      if (iter >= kStages) mbar_wait(&s.empty[stage], ((iter / kStages) + 1) & 1);
      const int page = table[blk];
      mbar_expect_tx(&s.full[stage], kTileBytes);
#pragma unroll
      for (int t = 0; t < kSubTiles; ++t) {
        tma_load_4d(s.kv[stage][t], kv_map, &s.full[stage], t * kSubCols, 0, kv_head, page);
      }
    }
  }
}

// Q rows [m_tile*64, +64) of kv head `kv_head` of sequence i into sQ, zero-padded.
__device__ __forceinline__ void load_q(const MlaDecodeParams& p, SharedStorage& s, int i,
                                       int kv_head, int m_tile, int tid) {
  const int heads_per_kv = p.num_heads_q / p.num_heads_kv;
  const int rows = p.seqlen_q * heads_per_kv;
  const auto* q = static_cast<const __nv_bfloat16*>(p.q);
  constexpr int kChunksPerRow = kHeadDim / 8;  // 16-byte chunks
  for (int c = tid; c < kBlockM * kChunksPerRow; c += 128) {
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
__device__ __forceinline__ void sanitize_tail(SharedStorage& s, int stage, int valid, int tid) {
  const int chunks = (kBlockN - valid) * 8 * kSubTiles;  // 16-byte chunks, 8 per 128 B row
  for (int c = tid; c < chunks; c += 128) {
    const int t = c % kSubTiles, rest = c / kSubTiles;
    const int row = valid + rest / 8, chunk = rest % 8;
    char* sub = reinterpret_cast<char*>(s.kv[stage][t]);
    *reinterpret_cast<uint4*>(sub + row * 128 + chunk * 16) = make_uint4(0, 0, 0, 0);
  }
}

// 2^x on the SFU; -inf gives +0. The scores are bounded, so the approximation's relative
// error (~2^-22) is far below the bf16 rounding of P.
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

// A math warpgroup is done with a stage (one arrive per warpgroup).
__device__ __forceinline__ void release_stage(SharedStorage& s, int stage, int tid) {
  if (tid == 0) mbar_arrive(&s.empty[stage]);
}

// The accumulator rows of thread `tid` of a math warpgroup (wgmma m64nN f32 layout).
struct Rows {
  int row0, row1, quad;
  __device__ explicit Rows(int tid)
      : row0((tid / 32) * 16 + (tid % 32) / 4), row1(row0 + 8), quad(tid % 4) {}
};

__device__ __forceinline__ void rescale(float (&o)[128], float alpha0, float alpha1) {
  // Once a row's max has settled (most tiles of a long sequence) alpha is exactly 1:
  // skip the 128 multiplies when that holds for every row of the warp.
  if (__all_sync(0xffffffff, alpha0 == 1.f && alpha1 == 1.f)) return;
#pragma unroll
  for (int j = 0; j < 32; ++j) {
    o[j * 4 + 0] *= alpha0;
    o[j * 4 + 1] *= alpha0;
    o[j * 4 + 2] *= alpha1;
    o[j * 4 + 3] *= alpha1;
  }
}

// O[:, col_base .. col_base+255] += P V: A = P (sub-tile kPSubTile of the stage), B = the
// stage's V columns read MN-major (LBO = 8 KiB between 64-column sub-tiles, SBO = 1 KiB
// between 8-token groups).
__device__ __forceinline__ void issue_pv(float (&o)[128], SharedStorage& s, int stage,
                                         int col_base) {
  const uint32_t p_addr = smem_addr(s.kv[stage][kPSubTile]);
  const uint32_t v_addr = smem_addr(s.kv[stage][col_base / kSubCols]);
  wgmma_fence();
#pragma unroll
  for (int t = 0; t < kBlockN / 16; ++t) {
    wgmma_m64n256k16_bf16_tb(o, make_desc_sw128(p_addr + t * 32, 16, 1024),
                             make_desc_sw128(v_addr + t * 16 * 128, kSubTileBytes, 1024), 1);
  }
  wgmma_commit();
}

// Writes this warpgroup's 256 columns of its two rows: final bf16 output when the sequence
// was not split, else the fp32 partial at its split slot.
__device__ __forceinline__ void store_o(const MlaDecodeParams& p, const float (&o)[128], int i,
                                        int kv_head, int m_tile, const Rows& rw, int col_base,
                                        float inv0, float inv1, int n_splits, int split) {
  const int heads_per_kv = p.num_heads_q / p.num_heads_kv;
  const int rows = p.seqlen_q * heads_per_kv;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int r = m_tile * kBlockM + (half ? rw.row1 : rw.row0);
    if (r >= rows) continue;
    const float inv = half ? inv1 : inv0;
    const int sq = r / heads_per_kv, h = kv_head * heads_per_kv + r % heads_per_kv;
    if (n_splits == 1) {
      auto* out = static_cast<__nv_bfloat16*>(p.out) + i * p.o_batch_stride +
                  sq * p.o_seq_stride + h * p.o_head_stride + col_base;
#pragma unroll
      for (int j = 0; j < 32; ++j) {
        *reinterpret_cast<__nv_bfloat162*>(out + j * 8 + rw.quad * 2) = __floats2bfloat162_rn(
            o[j * 4 + half * 2] * inv, o[j * 4 + half * 2 + 1] * inv);
      }
    } else {
      const int64_t idx = (static_cast<int64_t>(split) * p.num_heads_kv + kv_head) * rows + r;
      float* oa = p.o_accum + idx * kHeadDimV + col_base;
#pragma unroll
      for (int j = 0; j < 32; ++j) {
        *reinterpret_cast<float2*>(oa + j * 8 + rw.quad * 2) =
            make_float2(o[j * 4 + half * 2] * inv, o[j * 4 + half * 2 + 1] * inv);
      }
    }
  }
}

// WG1: S, softmax, P/alpha handoff, and O[:, 0..255].
__device__ __forceinline__ void softmax_warpgroup(const MlaDecodeParams& p, SharedStorage& s,
                                                  const PartWalk& walk, int kv_head,
                                                  int m_tile, int tid) {
  const Rows rw(tid);
  const int heads_per_kv = p.num_heads_q / p.num_heads_kv;
  const int rows = p.seqlen_q * heads_per_kv;
  const float scale_log2 = p.softmax_scale * 1.4426950408889634f;
  const uint32_t sq_addr = smem_addr(s.q);

  int iter = 0, piece = 0;
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
    const int limit0 = limit_of(rw.row0), limit1 = limit_of(rw.row1);

    // Only this warpgroup reads Q, and its previous S is complete: no cross-warpgroup hazard.
    load_q(p, s, i, kv_head, m_tile, tid);
    fence_proxy_async();
    sync(Barrier::kSoftmaxQReady, 128);

    float o[128];
#pragma unroll
    for (int k = 0; k < 128; ++k) o[k] = 0.f;
    float m0 = -INFINITY, m1 = -INFINITY;  // running row max, log2 domain, scale applied
    float l0 = 0.f, l1 = 0.f;              // this thread's partial row sums

    // Waits for tile `it`, zeroes its tail if it is the sequence's last partial tile, and
    // issues S = Q K^T for its 64 tokens into `acc` (not waited).
    auto issue_s = [&](float (&acc)[32], int it, int blk) {
      const int stage = it % kStages;
      mbar_wait(&s.full[stage], (it / kStages) & 1);
      const int valid = seqlen - blk * kBlockN;
      if (valid < kBlockN) {
        sanitize_tail(s, stage, valid, tid);
        fence_proxy_async();
        sync(Barrier::kSoftmaxTileClean, 128);
      }
      const uint32_t kv_addr = smem_addr(s.kv[stage]);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kHeadDim / 16; ++kk) {
        const uint32_t off = (kk / 4) * kSubTileBytes + (kk % 4) * 32;
        wgmma_m64n64k16_bf16(acc, make_desc_sw128(sq_addr + off, 16, 1024),
                             make_desc_sw128(kv_addr + off, 16, 1024), kk > 0);
      }
      wgmma_commit();
    };

    // S(n+1) is issued right behind PV(n); not before the softmax of tile n: with two stages
    // tile n+1 is only requested when tile n-1 is released (v2 in docs/perf-log.md).
    float sc[32] = {};
    issue_s(sc, iter, lo);
    wgmma_wait<0>();
    fence_operands(sc);
    // The loop leaves through the `break` before S(n+1): a wgmma writing sc inside a branch
    // makes ptxas serialize every wgmma (C7518).
    for (int blk = lo;; ++blk, ++iter) {
      const int stage = iter % kStages;

      // Mask and row maxima on raw scores (scale > 0 commutes with max; it is folded into
      // the exponent's FFMA).
      float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int tok = blk * kBlockN + j * 8 + rw.quad * 2 + e;
          float& a = sc[j * 4 + e];
          float& b = sc[j * 4 + 2 + e];
          a = tok < limit0 ? a : -INFINITY;
          b = tok < limit1 ? b : -INFINITY;
          mx0 = fmaxf(mx0, a);
          mx1 = fmaxf(mx1, b);
        }
      }
      const float new0 = fmaxf(m0, quad_max(mx0) * scale_log2);
      const float new1 = fmaxf(m1, quad_max(mx1) * scale_log2);
      // A row that has seen no key yet keeps max -inf; subtract 0 then so exp2 gives 0, not NaN.
      const float use0 = new0 == -INFINITY ? 0.f : new0;
      const float use1 = new1 == -INFINITY ? 0.f : new1;
      const float alpha0 = fast_exp2(m0 - use0), alpha1 = fast_exp2(m1 - use1);
      m0 = new0;
      m1 = new1;

      // P into the stage's RoPE sub-tile: S of this tile, its only reader, is complete.
      char* sp = reinterpret_cast<char*>(s.kv[stage][kPSubTile]);
      float sum0 = 0.f, sum1 = 0.f;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const float p00 = fast_exp2(fmaf(sc[j * 4 + 0], scale_log2, -use0));
        const float p01 = fast_exp2(fmaf(sc[j * 4 + 1], scale_log2, -use0));
        const float p10 = fast_exp2(fmaf(sc[j * 4 + 2], scale_log2, -use1));
        const float p11 = fast_exp2(fmaf(sc[j * 4 + 3], scale_log2, -use1));
        sum0 += p00 + p01;
        sum1 += p10 + p11;
        const int col = j * 8 + rw.quad * 2;
        *reinterpret_cast<__nv_bfloat162*>(sp + swizzled_offset(rw.row0, col)) =
            __floats2bfloat162_rn(p00, p01);
        *reinterpret_cast<__nv_bfloat162*>(sp + swizzled_offset(rw.row1, col)) =
            __floats2bfloat162_rn(p10, p11);
      }
      l0 = l0 * alpha0 + sum0;
      l1 = l1 * alpha1 + sum1;
      if (rw.quad == 0) {
        s.alpha[stage][rw.row0] = alpha0;
        s.alpha[stage][rw.row1] = alpha1;
      }
      fence_proxy_async();
      arrive(p_ready(stage), kMathThreads);  // WG2 may start its PV(n)
      rescale(o, alpha0, alpha1);
      sync(Barrier::kSoftmaxTileClean, 128);  // all of P written before this WG's wgmma reads it

      issue_pv(o, s, stage, 0);
      if (blk + 1 == hi) {
        wgmma_wait<0>();
        fence_operands(o);
        release_stage(s, stage, tid);
        ++iter;
        break;
      }
      // S(n+1) goes into the same registers: P of tile n is already out of them.
      issue_s(sc, iter + 1, blk + 1);
      // wait_group 0, not 1: reading O while S(n+1) is in flight made ptxas serialize every
      // wgmma of the kernel (C7514), and v3/v4's wait_group 1 was silently turned into 0 (C7517).
      wgmma_wait<0>();
      fence_operands(o);
      fence_operands(sc);
      release_stage(s, stage, tid);
    }

    // Epilogue: this warpgroup saw all 64 tokens of each tile, so its quad sums are the row
    // sums; hand them to WG2, then write O[:, 0..255] and the LSE.
    l0 = quad_sum(l0);
    l1 = quad_sum(l1);
    if (rw.quad == 0) {
      s.row_sum[piece & 1][rw.row0] = l0;
      s.row_sum[piece & 1][rw.row1] = l1;
    }
    arrive(row_sum_ready(piece), kMathThreads);
    const int n_splits = p.num_splits[i + 1] - p.num_splits[i];
    const int split = p.num_splits[i] + (i == walk.batch_begin ? walk.split_begin : 0);
    store_o(p, o, i, kv_head, m_tile, rw, 0, l0 > 0.f ? 1.f / l0 : 0.f,
            l1 > 0.f ? 1.f / l1 : 0.f, n_splits, split);
    if (rw.quad == 0) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int r = m_tile * kBlockM + (half ? rw.row1 : rw.row0);
        if (r >= rows) continue;
        const float l = half ? l1 : l0, m = half ? m1 : m0;
        const float lse2 = l > 0.f ? m + __log2f(l) : -INFINITY;
        const int sq = r / heads_per_kv, h = kv_head * heads_per_kv + r % heads_per_kv;
        if (n_splits == 1) {
          p.lse[(static_cast<int64_t>(i) * p.num_heads_q + h) * p.seqlen_q + sq] =
              l > 0.f ? lse2 * 0.6931471805599453f : INFINITY;
        } else {
          p.lse_accum[(static_cast<int64_t>(split) * p.num_heads_kv + kv_head) * rows + r] = lse2;
        }
      }
    }
    ++piece;
  }
}

// WG2: O[:, 256..511] += P V with P and alpha handed over by WG1.
__device__ __forceinline__ void pv_warpgroup(const MlaDecodeParams& p, SharedStorage& s,
                                             const PartWalk& walk, int kv_head, int m_tile,
                                             int tid) {
  const Rows rw(tid);
  int iter = 0, piece = 0;
  for (int i = walk.batch_begin; i <= walk.batch_end && i < p.batch; ++i) {
    const int nblocks = num_kv_blocks(p.cache_seqlens[i]);
    const int lo = walk.lo(i), hi = walk.hi(i, nblocks);
    if (lo >= hi) continue;
    float o[128];
#pragma unroll
    for (int k = 0; k < 128; ++k) o[k] = 0.f;
    for (int blk = lo; blk < hi; ++blk, ++iter) {
      const int stage = iter % kStages;
      mbar_wait(&s.full[stage], (iter / kStages) & 1);  // V bytes visible to this warpgroup
      sync(p_ready(stage), kMathThreads);
      rescale(o, s.alpha[stage][rw.row0], s.alpha[stage][rw.row1]);
      issue_pv(o, s, stage, kColsPerMathWG);
      wgmma_wait<0>();
      fence_operands(o);
      release_stage(s, stage, tid);
    }
    sync(row_sum_ready(piece), kMathThreads);
    const float l0 = s.row_sum[piece & 1][rw.row0], l1 = s.row_sum[piece & 1][rw.row1];
    const int n_splits = p.num_splits[i + 1] - p.num_splits[i];
    const int split = p.num_splits[i] + (i == walk.batch_begin ? walk.split_begin : 0);
    store_o(p, o, i, kv_head, m_tile, rw, kColsPerMathWG, l0 > 0.f ? 1.f / l0 : 0.f,
            l1 > 0.f ? 1.f / l1 : 0.f, n_splits, split);
    ++piece;
  }
}

__global__ void __launch_bounds__(kThreads, 1)
    mla_decode_kernel(const __grid_constant__ MlaDecodeParams p,
                      const __grid_constant__ CUtensorMap kv_map) {
  extern __shared__ char smem_raw[];
  auto& s = *reinterpret_cast<SharedStorage*>(
      (reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  const int part = blockIdx.x, kv_head = blockIdx.y, m_tile = blockIdx.z;
  const PartWalk walk(p.tile_scheduler_metadata + part * kMetadataInts);

  if (threadIdx.x == 0) {
    tma_prefetch_descriptor(&kv_map);
    for (int st = 0; st < kStages; ++st) {
      mbar_init(&s.full[st], 1);
      mbar_init(&s.empty[st], 2);  // one arrive per math warpgroup
    }
    fence_barrier_init();
  }
  __syncthreads();

  if (threadIdx.x < 128) {
    setmaxnreg_dec<kProducerRegs>();
    if (threadIdx.x == 0) producer(p, &kv_map, s, walk, kv_head);
  } else {
    setmaxnreg_inc<kMathRegs>();
    if (threadIdx.x < 256) {
      softmax_warpgroup(p, s, walk, kv_head, m_tile, threadIdx.x - 128);
    } else {
      pv_warpgroup(p, s, walk, kv_head, m_tile, threadIdx.x - 256);
    }
  }
}

}  // namespace flashmla::sm90
