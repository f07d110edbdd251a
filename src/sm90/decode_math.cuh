// The math warpgroups of the sm90 decode kernel: ping-pong over pairs of KV tiles.
//
// The earlier lockstep math had both warpgroups compute half of S, wait for each other through
// the softmax and then run their halves of PV: the tensor cores idled through every softmax,
// and a 32-token S (m64n32k16, both operands in shared memory) needs 1.5x the shared-memory
// rate (docs/perf-log.md v4-v10).
//
// Here the tiles of a sequence piece go in pairs (a, b): warpgroup 0 computes all of S for
// tile a (m64n64k16), warpgroup 1 all of S for tile b, each does the softmax of its own tile
// while the tensor cores run the other's work, and each keeps its 256 columns of O for every
// tile. Per pair, in the order the tensor cores see it:
//
//   WG0: S_a  softmax_a -> P_a  PV_a(0) [P_a regs]                       PV_b(0) [P_b smem]
//   WG1:      S_b                 PV_a(1) [P_a smem]  softmax_b -> P_b   PV_b(1) [P_b regs]
//
// softmax_a runs under S_b (issued once all of S_a is, so it queues behind S_a), softmax_b
// under the two PV_a.
// P of a tile goes into its stage's RoPE sub-tile (dead once that tile's S is done), so P is
// double-buffered by the stage ring at no shared-memory cost; the owner keeps P in registers
// as the A operand of its own PV. The running row max passes from one warpgroup to the other
// with each tile (row_max/alpha[stage], named barrier kPTileReady + stage): the owner of a
// tile needs the max after the previous tile, and the other warpgroup rescales its half of O
// by the owner's alpha. Each warpgroup releases its half of a stage (empty[stage][wg]) as soon
// as its last read of it is done, and S consumes the sub-tiles in the order they are refilled,
// so the refill of a stage overlaps the rest of the pair (docs/perf-log.md v12).
#pragma once

#include "element.cuh"
#include "sm90/decode_common.cuh"

namespace flashmla::sm90 {

template <typename T>
__device__ __forceinline__ void math_pingpong(const MlaDecodeParams& p, SharedStorage& s,
                                              const PartWalk& walk, int kv_head, int m_tile,
                                              int math_tid) {
  // Branch conditions around wgmma must be warp-uniform for ptxas, which cannot see that
  // values every lane computes alike (or loads from one address) are: without the broadcasts
  // it puts waits on the divergent paths and serializes every wgmma of the kernel (C7518).
  const auto uniform = [](int v) { return __shfl_sync(0xffffffff, v, 0); };
  const int wg = uniform(math_tid / 128);  // 0 owns the first tile of each pair, 1 the second
  const int wtid = math_tid % 128;
  const int lane = wtid % 32;
  const int row0 = (wtid / 32) * 16 + lane / 4;  // this thread's two accumulator rows
  const int row1 = row0 + 8;
  const int quad = lane % 4;
  const float scale_log2 = p.softmax_scale * 1.4426950408889634f;
  const uint32_t sq_addr = smem_addr(s.q);
  const bool gather = p.page_block_size < kMinTmaPage;

  int iter = 0;
  for (int i = walk.batch_begin; i <= walk.batch_end && i < p.batch; ++i) {
    // The walk's first piece issues Q's copies before its length is read, so that the two
    // latencies overlap at the kernel's start (b=1, s_k=64k, h_q=128: Q ready 5.4 -> 3.1 us,
    // docs/perf-log.md session 12; a part starts on one of its blocks, so that piece is not
    // empty). Later pieces read the length first: empty sequences then cost no Q load.
    const bool early = i == walk.batch_begin;
    const auto issue_q = [&] { load_q<kBlockM, kMathThreads>(p, s.q[0], i, kv_head, m_tile * kBlockM, math_tid); };
    if (early) issue_q();
    const int seqlen = uniform(kernel_seqlen(p, i));
    const int lo = uniform(walk.lo(i)), hi = uniform(walk.hi(i, num_kv_blocks(seqlen)));
    if (lo >= hi) {
      cp_async_wait_all();  // sQ is written again by the next piece
      continue;
    }
    if (!early) issue_q();
    cp_async_wait_all();
    const int limit0 = row_limit(p, seqlen, m_tile, row0);
    const int limit1 = row_limit(p, seqlen, m_tile, row1);
    fence_proxy_async();
    math_sync(MathBarrier::kQReady);

    float o[128];
#pragma unroll
    for (int k = 0; k < 128; ++k) o[k] = 0.f;
    float m0 = -INFINITY, m1 = -INFINITY;  // running row max, log2 domain (both warpgroups)
    float l0 = 0.f, l1 = 0.f;  // this thread's part of the row sums of its own tiles' P

    // S = Q K^T of the it-th tile (block blk) over all 64 tokens into acc, committed, not
    // waited. Sub-tiles in the order the stage is refilled: warpgroup 0's PV columns (its PV
    // of a tile runs before warpgroup 1's on the tensor cores), then warpgroup 1's, then RoPE
    // (P until the second PV is done). A tile with rows past the sequence end is zeroed first.
    auto issue_s = [&](float (&acc)[32], int it, int blk) {
      const int stage = KvRing::slot(it);
      const uint32_t parity = KvRing::phase(it);
      const int valid = seqlen - blk * kBlockN;
      if (valid < kBlockN || gather) {
#pragma unroll 1
        for (int t = 0; t < kSubTiles; ++t) mbar_wait(&s.full[stage][t], parity);
        // cp.async writes are generic-proxy writes; wgmma reads through the async proxy.
        if (gather) fence_proxy_async();
        if (valid < kBlockN) {
          sanitize_tail(s, stage, valid, wtid, 128);
          fence_proxy_async();
          named_barrier_sync(static_cast<int>(MathBarrier::kTailZeroed) + wg, 128);
        }
      }
      const uint64_t q_desc = make_desc_sw128(sq_addr, 16, 1024);
      const uint64_t k_desc = make_desc_sw128(smem_addr(s.kv[stage]), 16, 1024);
      fence_operands(acc);
#pragma unroll
      for (int t = 0; t < kSubTiles; ++t) {
        mbar_wait(&s.full[stage][t], parity);
        // After the wait loop (a branch): without an explicit fence here ptxas inserts one
        // itself on the divergent path and then serializes every wgmma of the kernel (C7520).
        wgmma_fence();
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          const uint32_t off = t * kSubTileBytes + k * 32;
          wgmma_m64n64k16<T>(acc, desc_advance(q_desc, off), desc_advance(k_desc, off), t + k > 0);
        }
      }
      wgmma_commit();
      fence_operands(acc);
    };

    // Softmax of this warpgroup's own tile: mask, new running max, P = exp2(S scale - max)
    // as A fragments (pa: k step kk is pa[4 kk .. 4 kk + 3]) and, the same values, in the
    // stage's RoPE sub-tile for the other warpgroup; publishes max and alpha.
    auto softmax_own = [&](float (&sc)[32], uint32_t (&pa)[16], int stage, int blk,
                           float& alpha0, float& alpha1) {
      float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int tok = blk * kBlockN + j * 8 + quad * 2 + e;
          // Raw scores: scale > 0, so the row max commutes with the scaling, which is folded
          // into the exponent's FFMA below.
          sc[j * 4 + e] = tok < limit0 ? sc[j * 4 + e] : -INFINITY;
          sc[j * 4 + 2 + e] = tok < limit1 ? sc[j * 4 + 2 + e] : -INFINITY;
          mx0 = fmaxf(mx0, sc[j * 4 + e]);
          mx1 = fmaxf(mx1, sc[j * 4 + 2 + e]);
        }
      }
      const float new0 = fmaxf(m0, quad_max(mx0) * scale_log2);
      const float new1 = fmaxf(m1, quad_max(mx1) * scale_log2);
      // A row that has seen no key yet keeps max -inf; subtract 0 then so exp2 gives 0, not NaN.
      const float use0 = new0 == -INFINITY ? 0.f : new0;
      const float use1 = new1 == -INFINITY ? 0.f : new1;
      alpha0 = fast_exp2(m0 - use0);
      alpha1 = fast_exp2(m1 - use1);
      m0 = new0;
      m1 = new1;
      char* sp = reinterpret_cast<char*>(s.kv[stage][kSubTiles - 1]);
      float sum0 = 0.f, sum1 = 0.f;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const float p00 = fast_exp2(fmaf(sc[j * 4 + 0], scale_log2, -use0));
        const float p01 = fast_exp2(fmaf(sc[j * 4 + 1], scale_log2, -use0));
        const float p10 = fast_exp2(fmaf(sc[j * 4 + 2], scale_log2, -use1));
        const float p11 = fast_exp2(fmaf(sc[j * 4 + 3], scale_log2, -use1));
        sum0 += p00 + p01;
        sum1 += p10 + p11;
        pa[2 * j] = pack_bits<T>(p00, p01);
        pa[2 * j + 1] = pack_bits<T>(p10, p11);
        const int col = j * 8 + quad * 2;
        *reinterpret_cast<uint32_t*>(sp + swizzled_offset(row0, col)) = pa[2 * j];
        *reinterpret_cast<uint32_t*>(sp + swizzled_offset(row1, col)) = pa[2 * j + 1];
      }
      l0 = l0 * alpha0 + sum0;
      l1 = l1 * alpha1 + sum1;
      if (quad == 0) {
        s.row_max[stage][row0] = m0;
        s.row_max[stage][row1] = m1;
        s.alpha[stage][row0] = alpha0;
        s.alpha[stage][row1] = alpha1;
      }
      fence_proxy_async();  // P is read by the other warpgroup's wgmma
      named_barrier_arrive(static_cast<int>(MathBarrier::kPTileReady) + stage, kMathThreads);
    };

    // The other warpgroup's tile: wait for its P, take over its running max and alpha.
    auto take_other = [&](int stage, float& alpha0, float& alpha1) {
      named_barrier_sync(static_cast<int>(MathBarrier::kPTileReady) + stage, kMathThreads);
      alpha0 = s.alpha[stage][row0];
      alpha1 = s.alpha[stage][row1];
      m0 = s.row_max[stage][row0];
      m1 = s.row_max[stage][row1];
      l0 *= alpha0;
      l1 *= alpha1;
    };

    // Once a row's max has settled (most tiles of a long sequence) alpha is exactly 1: skip
    // the 128 multiplies when that holds for every row of the warp. O must not be in flight.
    auto rescale = [&](float alpha0, float alpha1) {
      if (__all_sync(0xffffffff, alpha0 == 1.f && alpha1 == 1.f)) return;
#pragma unroll
      for (int j = 0; j < 32; ++j) {
        o[j * 4 + 0] *= alpha0;
        o[j * 4 + 1] *= alpha0;
        o[j * 4 + 2] *= alpha1;
        o[j * 4 + 3] *= alpha1;
      }
    };

    // O[:, this warpgroup's 256 columns] += P (64x64) V (64 x 256), V read MN-major from the
    // stage (sub-tiles 4 wg .. 4 wg + 3); P from registers (own tile) or from the stage's
    // RoPE sub-tile (the other's).
    auto pv_own = [&](const uint32_t (&pa)[16], int stage) {
      const uint64_t v_desc = make_desc_sw128(smem_addr(s.kv[stage][4 * wg]), kSubTileBytes, 1024);
      fence_operands(o);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kBlockN / 16; ++kk) {
        const uint32_t a[4] = {pa[4 * kk], pa[4 * kk + 1], pa[4 * kk + 2], pa[4 * kk + 3]};
        wgmma_m64n256k16_rs_tb<T>(o, a, desc_advance(v_desc, kk * 16 * 128), 1);
      }
      wgmma_commit();
      fence_operands(o);
    };
    auto pv_other = [&](int stage) {
      const uint64_t v_desc = make_desc_sw128(smem_addr(s.kv[stage][4 * wg]), kSubTileBytes, 1024);
      const uint64_t p_desc = make_desc_sw128(smem_addr(s.kv[stage][kSubTiles - 1]), 16, 1024);
      fence_operands(o);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kBlockN / 16; ++kk) {
        wgmma_m64n256k16_tb<T>(o, desc_advance(p_desc, kk * 32), desc_advance(v_desc, kk * 16 * 128), 1);
      }
      wgmma_commit();
      fence_operands(o);
    };
    // Called after a wgmma wait that covers this warpgroup's last read of the stage.
    auto release = [&](int stage) {
      if (wtid == 0) mbar_arrive(&s.empty[stage][wg]);
    };

    const int iter0 = iter;
    for (int blk = lo; blk < hi; blk += 2) {
      const int it = iter0 + (blk - lo);
      const int sa = KvRing::slot(it), sb = KvRing::slot(it + 1);
      const bool has_b = blk + 1 < hi;
      float sc[32];
      uint32_t pa[16];
      float alpha0, alpha1;
      if (wg == 0) {
        issue_s(sc, it, blk);
        if (has_b) named_barrier_arrive(static_cast<int>(MathBarrier::kFirstSDone), kMathThreads);
        wgmma_wait<0>();
        fence_operands(sc);
        softmax_own(sc, pa, sa, blk, alpha0, alpha1);
        rescale(alpha0, alpha1);
        pv_own(pa, sa);
        if (has_b) {
          take_other(sb, alpha0, alpha1);
          wgmma_wait<0>();
          fence_operands(o);
          release(sa);
          rescale(alpha0, alpha1);
          pv_other(sb);
        }
        wgmma_wait<0>();
        fence_operands(o);
        release(has_b ? sb : sa);
      } else {
        // S_b is issued once all of S_a is: issued together the two interleave on the tensor
        // cores and delay S_a, and with it softmax_a; this way S_b queues behind S_a and runs
        // under softmax_a (-2 to -3.5% at 128+ rows against interleaving, docs/perf-log.md v12;
        // waiting for S_a's completion instead left a gap on the tensor cores, -1 to -2.6%
        // more, v18). S_b is waited for before O is rescaled
        // for tile a: ptxas serializes every wgmma of the kernel (C7515) when O is written
        // while any wgmma is in flight, even one that does not touch O. PV_a queues behind S_b
        // on the tensor cores either way.
        if (has_b) {
          named_barrier_sync(static_cast<int>(MathBarrier::kFirstSDone), kMathThreads);
          issue_s(sc, it + 1, blk + 1);
          wgmma_wait<0>();
          fence_operands(sc);
        }
        take_other(sa, alpha0, alpha1);
        rescale(alpha0, alpha1);
        pv_other(sa);
        if (has_b) {
          softmax_own(sc, pa, sb, blk + 1, alpha0, alpha1);  // while PV_a runs
          wgmma_wait<0>();
          fence_operands(o);
          release(sa);
          rescale(alpha0, alpha1);
          pv_own(pa, sb);
        }
        wgmma_wait<0>();
        fence_operands(o);
        release(has_b ? sb : sa);
      }
    }
    iter = iter0 + (hi - lo);

    write_output<T>(p, s, walk, i, kv_head, m_tile, math_tid, o, m0, m1, l0, l1);
  }
}

}  // namespace flashmla::sm90
