// The sm90 split-KV MLA decode kernel. One CTA = (scheduler part, kv head, 64-row query tile).
// It walks the (sequence, KV block) range its part was given, keeping Q resident in shared
// memory and streaming 64-token KV tiles through a TMA ring. See docs/design.md.
#pragma once

#include <cuda.h>

#include <cstdint>

#include "element.cuh"
#include "flashmla/flashmla.h"
#include "scheduler/plan.h"
#include "sm90/decode_config.h"
#include "sm90/ptx.cuh"

namespace flashmla::sm90 {

__device__ __forceinline__ void math_sync(MathBarrier b) {
  named_barrier_sync(static_cast<int>(b), kMathThreads);
}

// Byte offset of element (row, col) inside a 64x64 16-bit sub-tile stored 128B-swizzled:
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
                                       int kv_head, int m_tile, int math_tid) {
  const int heads_per_kv = p.num_heads_q / p.num_heads_kv;
  const int rows = p.seqlen_q * heads_per_kv;
  const auto* q = static_cast<const uint16_t*>(p.q);  // moved as raw 16-byte chunks
  constexpr int kChunksPerRow = kHeadDim / 8;  // 16-byte chunks
  for (int c = math_tid; c < kBlockM * kChunksPerRow; c += kMathThreads) {
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
__device__ __forceinline__ void sanitize_tail(SharedStorage& s, int stage, int valid,
                                              int math_tid) {
  const int chunks = (kBlockN - valid) * 8 * kSubTiles;  // 16-byte chunks, 8 per 128 B row
  for (int c = math_tid; c < chunks; c += kMathThreads) {
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

template <typename T>
__device__ __forceinline__ void math(const MlaDecodeParams& p, SharedStorage& s,
                                     const PartWalk& walk, int kv_head, int m_tile,
                                     int math_tid) {
  const int wg = math_tid / 128;          // 0 or 1: which token half / column half
  const int warp = (math_tid % 128) / 32;  // warp within the warpgroup: rows warp*16 ..
  const int lane = math_tid % 32;
  const int row0 = warp * 16 + lane / 4;  // this thread's two accumulator rows
  const int row1 = row0 + 8;
  const int quad = lane % 4;

  const int heads_per_kv = p.num_heads_q / p.num_heads_kv;
  const int rows = p.seqlen_q * heads_per_kv;
  const float scale_log2 = p.softmax_scale * 1.4426950408889634f;
  const uint32_t sq_addr = smem_addr(s.q);
  const uint32_t sp_addr = smem_addr(s.p);

  int iter = 0;
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
    const int limit0 = limit_of(row0), limit1 = limit_of(row1);

    load_q(p, s, i, kv_head, m_tile, math_tid);
    fence_proxy_async();
    math_sync(MathBarrier::kQReady);

    float o[128];
#pragma unroll
    for (int k = 0; k < 128; ++k) o[k] = 0.f;
    float m0 = -INFINITY, m1 = -INFINITY;  // running row max, log2 domain
    float l0 = 0.f, l1 = 0.f;              // this thread's partial row sums

    // Waits for tile `it` to land, zeroes its tail if it is the sequence's last partial
    // tile, and issues S = Q K^T over this warpgroup's 32 tokens into `acc` (not waited).
    auto issue_s = [&](float (&acc)[16], int it, int blk) {
      const int stage = it % kStages;
      mbar_wait(&s.full[stage], (it / kStages) & 1);
      const int valid = seqlen - blk * kBlockN;
      if (valid < kBlockN) {
        sanitize_tail(s, stage, valid, math_tid);
        fence_proxy_async();
        math_sync(MathBarrier::kTileSanitized);
      }
      const uint32_t kv_addr = smem_addr(s.kv[stage]);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kHeadDim / 16; ++kk) {
        const uint32_t off = (kk / 4) * kSubTileBytes + (kk % 4) * 32;
        wgmma_m64n32k16<T>(acc, make_desc_sw128(sq_addr + off, 16, 1024),
                             make_desc_sw128(kv_addr + off + wg * 32 * 128, 16, 1024), kk > 0);
      }
      wgmma_commit();
    };

    // S of tile n+1 is issued right behind PV of tile n, so the tensor cores go from one to
    // the other without a drain. It is not issued before the softmax of tile n: with two
    // stages, tile n+1 is only requested when tile n-1 is released, and waiting for it there
    // put the whole load latency on the critical path (v2 in docs/perf-log.md).
    float sc[16] = {}, sc_next[16] = {};
    issue_s(sc, iter, lo);
    wgmma_wait<0>();
    fence_operands(sc);
    for (int blk = lo; blk < hi; ++blk, ++iter) {
      const int stage = iter % kStages;
      const bool has_next = blk + 1 < hi;

      // Scale, mask, and this half's row maxima.
      float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int tok = blk * kBlockN + wg * kTokensPerMathWG + j * 8 + quad * 2 + e;
          float& a = sc[j * 4 + e];
          float& b = sc[j * 4 + 2 + e];
          // Raw scores: scale > 0, so the row max commutes with the scaling, which is
          // folded into the exponent's FFMA below.
          a = tok < limit0 ? a : -INFINITY;
          b = tok < limit1 ? b : -INFINITY;
          mx0 = fmaxf(mx0, a);
          mx1 = fmaxf(mx1, b);
        }
      }
      mx0 = quad_max(mx0);
      mx1 = quad_max(mx1);
      if (quad == 0) {
        s.row_max[wg][row0] = mx0;
        s.row_max[wg][row1] = mx1;
      }
      math_sync(MathBarrier::kRowMaxPublished);
      const float new0 =
          fmaxf(m0, fmaxf(s.row_max[0][row0], s.row_max[1][row0]) * scale_log2);
      const float new1 =
          fmaxf(m1, fmaxf(s.row_max[0][row1], s.row_max[1][row1]) * scale_log2);
      // A row that has seen no key yet keeps max -inf; subtract 0 then so exp2 gives 0, not NaN.
      const float use0 = new0 == -INFINITY ? 0.f : new0;
      const float use1 = new1 == -INFINITY ? 0.f : new1;
      const float alpha0 = fast_exp2(m0 - use0), alpha1 = fast_exp2(m1 - use1);
      m0 = new0;
      m1 = new1;

      float sum0 = 0.f, sum1 = 0.f;
      char* sp = reinterpret_cast<char*>(s.p);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float p00 = fast_exp2(fmaf(sc[j * 4 + 0], scale_log2, -use0));
        const float p01 = fast_exp2(fmaf(sc[j * 4 + 1], scale_log2, -use0));
        const float p10 = fast_exp2(fmaf(sc[j * 4 + 2], scale_log2, -use1));
        const float p11 = fast_exp2(fmaf(sc[j * 4 + 3], scale_log2, -use1));
        sum0 += p00 + p01;
        sum1 += p10 + p11;
        const int col = wg * kTokensPerMathWG + j * 8 + quad * 2;
        using Pair = typename ElementOps<T>::Pair;
        *reinterpret_cast<Pair*>(sp + swizzled_offset(row0, col)) = ElementOps<T>::pack(p00, p01);
        *reinterpret_cast<Pair*>(sp + swizzled_offset(row1, col)) = ElementOps<T>::pack(p10, p11);
      }
      l0 = l0 * alpha0 + sum0;
      l1 = l1 * alpha1 + sum1;
      // Once a row's max has settled (most tiles of a long sequence) alpha is exactly 1:
      // skip the 128 multiplies when that holds for every row of the warp.
      if (!__all_sync(0xffffffff, alpha0 == 1.f && alpha1 == 1.f)) {
#pragma unroll
        for (int j = 0; j < 32; ++j) {
          o[j * 4 + 0] *= alpha0;
          o[j * 4 + 1] *= alpha0;
          o[j * 4 + 2] *= alpha1;
          o[j * 4 + 3] *= alpha1;
        }
      }
      fence_proxy_async();
      math_sync(MathBarrier::kPReady);

      // O[:, this half's 256 columns] += P (64x64) V (64 x 256).
      const uint32_t kv_addr = smem_addr(s.kv[stage]);
      wgmma_fence();
#pragma unroll
      for (int t = 0; t < kBlockN / 16; ++t) {
        wgmma_m64n256k16_tb<T>(
            o, make_desc_sw128(sp_addr + t * 32, 16, 1024),
            make_desc_sw128(kv_addr + wg * 4 * kSubTileBytes + t * 16 * 128, kSubTileBytes, 1024),
            1);
      }
      wgmma_commit();
      if (has_next) issue_s(sc_next, iter + 1, blk + 1);
      // wait_group 0, not 1: reading O while S(n+1) is still in flight makes ptxas inject a
      // full wait anyway (C7517) or serialize every wgmma of the kernel (C7514).
      wgmma_wait<0>();
      fence_operands(o);
      fence_operands(sc_next);
      if (math_tid % 128 == 0) mbar_arrive(&s.empty[stage]);
#pragma unroll
      for (int k = 0; k < 16; ++k) sc[k] = sc_next[k];
    }

    // Epilogue: combine the two halves' row sums, normalise, write.
    l0 = quad_sum(l0);
    l1 = quad_sum(l1);
    if (quad == 0) {
      s.row_sum[wg][row0] = l0;
      s.row_sum[wg][row1] = l1;
    }
    math_sync(MathBarrier::kRowSumPublished);
    const float tot0 = s.row_sum[0][row0] + s.row_sum[1][row0];
    const float tot1 = s.row_sum[0][row1] + s.row_sum[1][row1];
    const float inv0 = tot0 > 0.f ? 1.f / tot0 : 0.f;
    const float inv1 = tot1 > 0.f ? 1.f / tot1 : 0.f;
    const float lse2_0 = tot0 > 0.f ? m0 + __log2f(tot0) : -INFINITY;
    const float lse2_1 = tot1 > 0.f ? m1 + __log2f(tot1) : -INFINITY;

    const int n_splits = p.num_splits[i + 1] - p.num_splits[i];
    const int split = p.num_splits[i] + (i == walk.batch_begin ? walk.split_begin : 0);
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int row = half ? row1 : row0;
      const int r = m_tile * kBlockM + row;
      if (r >= rows) continue;
      const float inv = half ? inv1 : inv0;
      const float lse2 = half ? lse2_1 : lse2_0;
      const int sq = r / heads_per_kv, h = kv_head * heads_per_kv + r % heads_per_kv;
      if (n_splits == 1) {
        auto* out = static_cast<T*>(p.out) + i * p.o_batch_stride +
                    sq * p.o_seq_stride + h * p.o_head_stride + wg * kColsPerMathWG;
#pragma unroll
        for (int j = 0; j < 32; ++j) {
          *reinterpret_cast<typename ElementOps<T>::Pair*>(out + j * 8 + quad * 2) =
              ElementOps<T>::pack(o[j * 4 + half * 2] * inv, o[j * 4 + half * 2 + 1] * inv);
        }
        if (wg == 0 && quad == 0) {
          p.lse[(static_cast<int64_t>(i) * p.num_heads_q + h) * p.seqlen_q + sq] =
              lse2 == -INFINITY ? INFINITY : lse2 * 0.6931471805599453f;
        }
      } else {
        const int64_t idx = (static_cast<int64_t>(split) * p.num_heads_kv + kv_head) * rows + r;
        float* oa = p.o_accum + idx * kHeadDimV + wg * kColsPerMathWG;
#pragma unroll
        for (int j = 0; j < 32; ++j) {
          *reinterpret_cast<float2*>(oa + j * 8 + quad * 2) =
              make_float2(o[j * 4 + half * 2] * inv, o[j * 4 + half * 2 + 1] * inv);
        }
        if (wg == 0 && quad == 0) p.lse_accum[idx] = lse2;
      }
    }
  }
}

template <typename T>
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
    math<T>(p, s, walk, kv_head, m_tile, threadIdx.x - 128);
  }
}

}  // namespace flashmla::sm90
