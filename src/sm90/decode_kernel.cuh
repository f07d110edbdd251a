// The sm90 split-KV MLA decode kernel. One CTA = (scheduler part, kv head, 64-row query tile).
// It walks the (sequence, KV block) range its part was given, keeping Q resident in shared
// memory and streaming 64-token KV tiles through a TMA ring. See docs/design.md.
#pragma once

#include "sm90/decode_common.cuh"
#include "sm90/decode_math.cuh"
#include "sm90/decode_producers.cuh"

namespace flashmla::sm90 {

template <typename T>
__global__ void __launch_bounds__(kThreads, 1)
    mla_decode_kernel(const __grid_constant__ MlaDecodeParams p,
                      const __grid_constant__ KvMaps maps) {
  extern __shared__ char smem_raw[];
  // Launched as the programmatic dependent of the kernel before it (get_mla_metadata's in a
  // step that plans and decodes), which may still be running: wait before reading anything.
  // Waiting after the barrier setup instead cost the wide and the FP8 two-block kernels 4 and
  // 12 more bytes of spill (ptxas).
  griddep_wait();
  // Only now: the combine CTAs this lets start read num_splits before their own wait, and
  // after get_mla_metadata's kernel (this grid's PDL predecessor) num_splits is final only
  // once the wait above returned. Triggering at entry let them read the previous plan's
  // num_splits when this grid left SMs free (docs/design.md, Launches).
  griddep_launch_dependents();  // the combine's CTAs with nothing to merge exit under this grid
  // Rounded up by pointer arithmetic on the __shared__ array, not through an integer cast,
  // so the compiler keeps knowing it is shared memory (LDS/STS, 32-bit addresses) instead of
  // falling back to generic 64-bit loads and stores everywhere.
  const uint32_t pad = (1024u - (smem_addr(smem_raw) & 1023u)) & 1023u;
  auto& s = *reinterpret_cast<SharedStorage*>(smem_raw + pad);
  const int part = blockIdx.x, kv_head = blockIdx.y, m_tile = blockIdx.z;
  const PartWalk walk(p.tile_scheduler_metadata + part * kMetadataInts);
  const bool fp8 = p.kv_format == KvFormat::kFP8WithScale;

  if (threadIdx.x == 0) {
    tma_prefetch_descriptor(&maps.kv);
    if (fp8) {
      tma_prefetch_descriptor(&maps.fp8_scale);
      tma_prefetch_descriptor(&maps.fp8_rope);
    }
    for (int st = 0; st < kStages; ++st) {
      // TMA: one arrive (with its byte count) per sub-tile; gather, FP8: one per thread.
      const int producers = fp8 || p.page_block_size < kMinTmaPage ? kProducerThreads : 1;
      for (int t = 0; t < kSubTiles; ++t) mbar_init(&s.full[st][t], producers);
      mbar_init(&s.empty[st][0], 1);  // one arrive per math warpgroup
      mbar_init(&s.empty[st][1], 1);
      mbar_init(&s.staged[st], 1);  // FP8: raw records landed (TMA, one issuing thread)
    }
    fence_barrier_init();
  }
  __syncthreads();

  if (threadIdx.x < 128) {
    setmaxnreg_dec<kProducerRegs>();
    if (fp8) {
      producer_fp8(p, maps, s, walk, kv_head, threadIdx.x);
    } else if (p.page_block_size < kMinTmaPage) {
      producer_gather(p, s, walk, kv_head, threadIdx.x);
    } else if (p.page_block_size < kBlockN) {
      if (threadIdx.x % 32 < kBlockN / p.page_block_size)
        producer_tma<true>(p, &maps.kv, s, walk, kv_head, threadIdx.x / 32, threadIdx.x % 32);
    } else if (threadIdx.x % 32 == 0) {
      producer_tma<false>(p, &maps.kv, s, walk, kv_head, threadIdx.x / 32, 0);
    }
  } else {
    setmaxnreg_inc<kMathRegs>();
    math_pingpong<T>(p, s, walk, kv_head, m_tile, threadIdx.x - 128);
  }
}

}  // namespace flashmla::sm90
