// The GPU oracle: one CTA per query row (b, s, h), fp32 everywhere, no splits, no tiling
// tricks. It is meant to be obviously correct, not fast; the tests compare mla_decode
// against it for shapes too large for the CPU reference.
//
// Work split: 8 warps walk the visible tokens round-robin (warp w takes j = w, w + 8, ...).
// Lane l owns the head-dim elements l + 32 * i (i = 0..17); elements below 512 (i < 16) are
// also its V columns, so each K/V row is read from memory exactly once and every load of a
// warp touches 64 contiguous bytes. Each warp keeps its own online softmax; the 8 partial
// results are merged through shared memory at the end.
#include "element.cuh"

#include <cuda_fp8.h>

#include <climits>
#include <cmath>
#include <cstdint>

#include "internal.h"
#include "launch.h"
#include "seqlen.cuh"
#include "sm90/decode_config.h"

namespace flashmla::detail {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kQkPerLane = kHeadDim / 32;  // 18
constexpr int kVPerLane = kHeadDimV / 32;  // 16

__device__ __forceinline__ float warp_sum(float v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;  // xor butterfly: every lane holds the full sum
}

template <typename T>
__global__ void __launch_bounds__(kThreads) reference_kernel(const MlaDecodeParams p) {
  __shared__ float s_q[kHeadDim];
  __shared__ float s_max[kWarps];
  __shared__ float s_sum[kWarps];
  __shared__ float s_acc[kWarps][kHeadDimV];

  // blockIdx.x enumerates (b, s, h) with h fastest.
  const int h = blockIdx.x % p.num_heads_q;
  const int s = (blockIdx.x / p.num_heads_q) % p.seqlen_q;
  const int b = blockIdx.x / (p.num_heads_q * p.seqlen_q);
  const int g = h / (p.num_heads_q / p.num_heads_kv);
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;

  // Lengths cut to [0, the block_table row], as the kernels do; like them, a length outside
  // [0, the row] (a broken caller contract) gives NaN (broken, below).
  const bool broken = p.cache_seqlens[b] < 0 || seqlen_over_table(p, b);
  const int seqlen = max(kernel_seqlen(p, b), 0);
  int limit = seqlen;  // exclusive end of the keys this query row sees
  if (p.causal) limit = min(max(seqlen - p.seqlen_q + s + 1, 0), seqlen);

  const auto* q = static_cast<const T*>(p.q) + b * p.q_batch_stride +
                  s * p.q_seq_stride + h * p.q_head_stride;
  for (int i = threadIdx.x; i < kHeadDim; i += kThreads) s_q[i] = ElementOps<T>::to_float(q[i]);
  __syncthreads();

  const auto* k_cache = static_cast<const T*>(p.k_cache);
  const int32_t* pages = p.block_table + b * p.block_table_batch_stride;
  const bool fp8 = p.kv_format == KvFormat::kFP8WithScale;

  // Online softmax in the natural-log domain. m and l are warp-uniform (the score is
  // broadcast by the butterfly reduction), acc holds this lane's 16 V columns.
  float m = -INFINITY;
  float l = 0.f;
  float acc[kVPerLane];
  for (int i = 0; i < kVPerLane; ++i) acc[i] = 0.f;

  for (int j = warp; j < limit; j += kWarps) {
    // j < limit <= seqlen, so only block_table entries below ceil(seqlen / page) and only valid
    // KV rows are ever read.
    // An id outside the cache (a broken caller contract) reads as the kernels read it: zeros
    // for pages of >= 16 tokens (TMA), page 0 below (the gather).
    int64_t page = pages[j / p.page_block_size];
    const bool bad_page = page < 0 || page >= p.num_blocks;
    if (bad_page) page = 0;
    const int64_t offset = page * p.k_block_stride + (j % p.page_block_size) * p.k_row_stride +
                           g * p.k_head_stride;
    float x[kQkPerLane];
    if (fp8) {
      // Dequantized in fp32 (never rounded to 16 bits): the oracle of the FP8 format itself.
      const auto* rec = static_cast<const uint8_t*>(p.k_cache) + offset;
      const auto* scales = reinterpret_cast<const float*>(rec + kHeadDimV);
      const auto* rope = reinterpret_cast<const __nv_bfloat16*>(rec + kHeadDimV + 16);
      for (int i = 0; i < kQkPerLane; ++i) {
        const int d = lane + 32 * i;
        if (d < kHeadDimV) {
          __nv_fp8_e4m3 e;
          e.__x = rec[d];
          x[i] = static_cast<float>(e) * scales[d / kFp8ScaleGroup];
        } else {
          x[i] = __bfloat162float(rope[d - kHeadDimV]);
        }
      }
    } else {
      const T* kv = k_cache + offset;
      for (int i = 0; i < kQkPerLane; ++i) x[i] = ElementOps<T>::to_float(kv[lane + 32 * i]);
    }
    if (bad_page && p.page_block_size >= sm90::kMinTmaPage) {
      for (int i = 0; i < kQkPerLane; ++i) x[i] = 0.f;
    }
    float dot = 0.f;
    for (int i = 0; i < kQkPerLane; ++i) dot = fmaf(s_q[lane + 32 * i], x[i], dot);
    const float score = warp_sum(dot) * p.softmax_scale;

    const float m_new = fmaxf(m, score);
    const float correction = expf(m - m_new);  // 0 on the first token (m = -inf)
    const float weight = expf(score - m_new);
    l = l * correction + weight;
    for (int i = 0; i < kVPerLane; ++i) acc[i] = fmaf(weight, x[i], acc[i] * correction);
    m = m_new;
  }

  // Merge the warps: rescale each to the global max, then sum columns across warps.
  if (lane == 0) {
    s_max[warp] = m;
    s_sum[warp] = l;
  }
  __syncthreads();
  float m_all = -INFINITY;
  for (int w = 0; w < kWarps; ++w) m_all = fmaxf(m_all, s_max[w]);
  // m_all is block-uniform, so this early exit keeps every thread on the same path.
  const bool empty = (m_all == -INFINITY);  // no visible key (limit == 0)
  float l_all = 0.f;
  if (!empty) {
    for (int w = 0; w < kWarps; ++w) l_all += s_sum[w] * expf(s_max[w] - m_all);
    // A warp that saw no key has m = -inf: its scale is exp(-inf) = 0 and its acc is 0.
    const float scale = expf(m - m_all);
    for (int i = 0; i < kVPerLane; ++i) s_acc[warp][lane + 32 * i] = acc[i] * scale;
  }
  __syncthreads();

  auto* out = static_cast<T*>(p.out) + b * p.o_batch_stride + s * p.o_seq_stride +
              h * p.o_head_stride;
  const float inv_l = empty ? 0.f : 1.f / l_all;
  for (int c = threadIdx.x; c < kHeadDimV; c += kThreads) {
    float sum = 0.f;
    if (!empty) {
      for (int w = 0; w < kWarps; ++w) sum += s_acc[w][c];
    }
    out[c] = ElementOps<T>::from_float(broken ? NAN : sum * inv_l);
  }
  if (threadIdx.x == 0) {
    const int64_t lse_index = (static_cast<int64_t>(b) * p.num_heads_q + h) * p.seqlen_q + s;
    p.lse[lse_index] = broken ? NAN : empty ? INFINITY : m_all + logf(l_all);
  }
}

}  // namespace

void launch_reference_gpu(const MlaDecodeParams& p, cudaStream_t stream) {
  const int64_t rows = static_cast<int64_t>(p.batch) * p.seqlen_q * p.num_heads_q;
  if (rows == 0) return;  // a zero-sized grid is a launch error; there is nothing to write
  if (rows > INT_MAX) throw Error("reference: batch * seqlen_q * num_heads_q exceeds INT_MAX");
  (void)current_device_info();  // an sm_90 device, or a clear error
  dispatch_element(p.dtype, [&](auto element) {
    launch_plain(reference_kernel<decltype(element)>, dim3(static_cast<unsigned>(rows)), dim3(kThreads), 0,
                 stream, "reference_kernel launch", p);
  });
}

}  // namespace flashmla::detail
