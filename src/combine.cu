// Split-KV combine: merges the partial results of a sequence that the scheduler cut into
// n >= 2 pieces, weighting each piece by its softmax denominator (its LSE). Also writes the
// empty-row result (out = 0, lse = +inf) for sequences with no piece at all (n == 0).
//
// One CTA per (sequence, kv head, query row) and per chunk of the 512 output columns: 4 chunks
// when the sequences are split many ways (num_sm_parts >= 8 * batch), 16 when very many
// (>= 128 * batch, i.e. b = 1), else 1. With kChunks chunks the CTA's 128 threads form
// kChunks groups, each covering the CTA's columns 4 per thread, group j taking the partials
// j, j + kChunks, ..., their sums added through shared memory: a row split n ways costs
// n / (8 kChunks) rounds of 8 overlapped 4-value loads per thread instead of n / 8 (b=1,
// s_k=8k: 20.4 -> 15.0 us per call at 4 chunks, 13.0 -> 12.4 at 16, docs/perf-log.md).
// One chunk is cheaper when each row has only a few partials (more CTAs,
// each redoing the LSE reductions, cost more than the shorter chains).
#include "element.cuh"

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "internal.h"
#include "launch.h"
#include "sm90/ptx.cuh"
#include "seqlen.cuh"

namespace flashmla::detail {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kColsPerThread = 4;
constexpr int kMaxStagedSplits = 256;  // partial weights staged in shared memory per pass
constexpr float kLn2 = 0.69314718055994530942f;

struct MaxOp {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct SumOp {
  __device__ float operator()(float a, float b) const { return a + b; }
};

// Reduces v over the CTA; every thread gets the result. scratch holds kWarps floats and may
// be reused right after the call returns (the trailing barrier protects it).
template <typename Op>
__device__ float block_reduce(float v, float* scratch, Op op) {
  for (int off = 16; off > 0; off >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, off));
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
  __syncthreads();
  v = scratch[0];
  for (int w = 1; w < kWarps; ++w) v = op(v, scratch[w]);
  __syncthreads();
  return v;
}

template <typename T, int kChunks>
__global__ void __launch_bounds__(kThreads) combine_kernel(const MlaDecodeParams p) {
  // The CTA's threads form kChunks groups of kGroupThreads, each group covering the CTA's
  // columns, group j taking the partials j, j + kChunks, ...
  constexpr int kGroupThreads = kThreads / kChunks;
  constexpr int kCtaCols = kHeadDimV / kChunks;
  static_assert(kGroupThreads * kColsPerThread == kCtaCols, "columns per CTA");
  __shared__ float s_scratch[kWarps];
  __shared__ float s_weight[kMaxStagedSplits];
  __shared__ float4 s_sum[kChunks > 1 ? kChunks - 1 : 1][kGroupThreads];

  const int b = blockIdx.x;
  const int h_per = p.num_heads_q / p.num_heads_kv;
  const int rows = p.seqlen_q * h_per;
  const int row = blockIdx.y;  // g * rows + r, the partials' row index within a split
  const int g = row / rows;
  const int r = row % rows;
  const int s = r / h_per;
  const int h = g * h_per + r % h_per;
  const int group = threadIdx.x / kGroupThreads, member = threadIdx.x % kGroupThreads;
  const int col = blockIdx.z * kCtaCols + kColsPerThread * member;

  const int first = p.num_splits[b];
  int n = p.num_splits[b + 1] - first;
  const int seqlen = p.cache_seqlens[b];  // loaded beside num_splits: no extra round trip
  // A broken caller contract is reported as NaN rather than read out of the workspace's
  // bounds or left as whatever the output held: num_splits from another call, cache_seqlens
  // changed since get_mla_metadata (pieces but no tokens, or tokens but no pieces), negative
  // or longer than the block_table row. Where a mismatch stays consistent with the lengths
  // the result is unspecified. Block-uniform; int64 so garbage num_splits cannot wrap.
  const bool broken = first < 0 || n < 0 ||
                      static_cast<int64_t>(first) + n > static_cast<int64_t>(p.batch) + p.num_sm_parts ||
                      (n > 0) != (seqlen > 0) || seqlen < 0 ||
                      seqlen > table_capacity(p);
  if (n == 1 && !broken) {  // the decode kernel wrote out and lse itself
    // One CTA still waits, so that this grid never completes before the decode does (work
    // queued after the combine may rely on the decode's out and lse).
    if (blockIdx.x == 0 && blockIdx.y == 0 && blockIdx.z == 0) sm90::griddep_wait();
    return;
  }
  // Launched as the decode's programmatic dependent (one chunk): everything above was complete
  // before any decode CTA triggered (after its own wait on the metadata kernel), so rows the
  // decode finishes itself (every row of a whole-sequence plan) leave without waiting, on SMs
  // the decode leaves idle; the rest wait here for the decode's partials. Without the launch
  // attribute this returns at once.
  sm90::griddep_wait();
  if (broken) n = 0;

  auto* out = static_cast<T*>(p.out) + b * p.o_batch_stride + s * p.o_seq_stride +
              h * p.o_head_stride + col;
  float* lse = p.lse + (static_cast<int64_t>(b) * p.num_heads_q + h) * p.seqlen_q + s;

  // Partial i of this row sits at index (first + i) * h_kv * rows + row.
  const int64_t split_stride = static_cast<int64_t>(p.num_heads_kv) * rows;
  const float* lse2 = p.lse_accum + first * split_stride + row;
  const T* o_part = static_cast<const T*>(p.o_accum) + (first * split_stride + row) * kHeadDimV + col;

  // Largest partial LSE (log2 domain); -inf when no piece saw a key, or when n == 0.
  // The LSEs of the first kMaxStagedSplits partials are read once, into registers: the max,
  // the sum and the weights each reading them again cost two more dependent L2 round trips
  // (b=16 a quarter empty: 37.0 -> 35.8 us, docs/perf-log.md session 11).
  constexpr int kCached = kMaxStagedSplits / kThreads;
  float lc[kCached];
#pragma unroll
  for (int c = 0; c < kCached; ++c) {
    const int i = threadIdx.x + c * kThreads;
    lc[c] = i < n ? lse2[i * split_stride] : -INFINITY;
  }
  float m = -INFINITY;
#pragma unroll
  for (int c = 0; c < kCached; ++c) m = fmaxf(m, lc[c]);
  for (int i = threadIdx.x + kMaxStagedSplits; i < n; i += kThreads) {
    m = fmaxf(m, lse2[i * split_stride]);
  }
  m = block_reduce(m, s_scratch, MaxOp());

  float result[kColsPerThread] = {0.f, 0.f, 0.f, 0.f};
  float lse_out = INFINITY;
  if (m != -INFINITY) {  // block-uniform, so the barriers below are reached by all threads
    float sum = 0.f;
#pragma unroll
    for (int c = 0; c < kCached; ++c) sum += exp2f(lc[c] - m);  // exp2(-inf) = 0 past n
    for (int i = threadIdx.x + kMaxStagedSplits; i < n; i += kThreads) {
      sum += exp2f(lse2[i * split_stride] - m);
    }
    sum = block_reduce(sum, s_scratch, SumOp());
    // Row LSE in the log2 domain; w_i = exp2(lse2_i - m) / sum = exp2(lse2_i - total). Folding
    // the 1/sum into the exponent avoids a division (whose slow path costs a call and a spill).
    const float total = m + log2f(sum);

    for (int base = 0; base < n; base += kMaxStagedSplits) {
      const int count = min(n - base, kMaxStagedSplits);
      if (base == 0) {
#pragma unroll
        for (int c = 0; c < kCached; ++c) {
          const int i = threadIdx.x + c * kThreads;
          if (i < count) s_weight[i] = exp2f(lc[c] - total);
        }
      } else {
        for (int i = threadIdx.x; i < count; i += kThreads) {
          s_weight[i] = exp2f(lse2[(base + i) * split_stride] - total);
        }
      }
      __syncthreads();
      // Eight partials are loaded before any is used, so eight L2 round trips overlap: with a
      // branch before each load, every split cost a full round trip, which dominated small
      // batches split many ways. The workspace is always valid memory, so the loads are
      // unconditional; a piece that saw no key (weight 0) may hold garbage or NaN, and the
      // select (not a multiply: 0 * NaN = NaN) keeps it out of the sum.
      auto accumulate = [&](float w, const float4& o) {
        const float4 r = make_float4(fmaf(w, o.x, result[0]), fmaf(w, o.y, result[1]),
                                     fmaf(w, o.z, result[2]), fmaf(w, o.w, result[3]));
        const bool use = w != 0.f;
        result[0] = use ? r.x : result[0];
        result[1] = use ? r.y : result[1];
        result[2] = use ? r.z : result[2];
        result[3] = use ? r.w : result[3];
      };
      auto partial = [&](int i) {
        const uint2 u = *reinterpret_cast<const uint2*>(o_part + (base + i) * split_stride * kHeadDimV);
        const T* e = reinterpret_cast<const T*>(&u);
        return make_float4(ElementOps<T>::to_float(e[0]), ElementOps<T>::to_float(e[1]),
                           ElementOps<T>::to_float(e[2]), ElementOps<T>::to_float(e[3]));
      };
      constexpr int kInFlight = 8;
      constexpr int kStep = kChunks;
      int i = group;
      for (; i + (kInFlight - 1) * kStep < count; i += kInFlight * kStep) {
        float4 o[kInFlight];
#pragma unroll
        for (int k = 0; k < kInFlight; ++k) o[k] = partial(i + k * kStep);
#pragma unroll
        for (int k = 0; k < kInFlight; ++k) accumulate(s_weight[i + k * kStep], o[k]);
      }
      for (; i < count; i += kStep) accumulate(s_weight[i], partial(i));
      __syncthreads();  // s_weight is overwritten by the next chunk
    }
    if (kChunks > 1 && group > 0) {
      s_sum[group - 1][member] = make_float4(result[0], result[1], result[2], result[3]);
    }
    __syncthreads();
    if (kChunks > 1 && group == 0) {
      for (int w = 0; w < kChunks - 1; ++w) {
        const float4 v = s_sum[w][member];
        result[0] += v.x;
        result[1] += v.y;
        result[2] += v.z;
        result[3] += v.w;
      }
    }
    lse_out = total * kLn2;
  }

  if (group != 0) return;
  if (broken) {
    for (int c = 0; c < kColsPerThread; ++c) result[c] = NAN;
    lse_out = NAN;
  }
  // Scalar stores: they assume nothing about the alignment of the out strides.
  for (int c = 0; c < kColsPerThread; ++c) out[c] = ElementOps<T>::from_float(result[c]);
  if (threadIdx.x == 0 && blockIdx.z == 0) *lse = lse_out;
}

// Dynamic shared memory that caps the combine at ceil(ctas / SMs) resident CTAs per SM, with
// the kernel's opt-in limit at the most a CTA may have (the same value from every thread: the
// limit is the kernel's, shared by all threads, and the request varies with the shape). As a programmatic dependent launch the
// combine's CTAs become resident while the decode still runs, each on the first SM with room,
// up to 2048 / kThreads = 16 per SM: a grid of a few hundred CTAs (b = 1) would sit on a few
// SMs (first those the decode leaves idle) and merge at their load rate (+1.2 to +2.1 us at
// b = 1 without the cap, perf-log session 17). 0 when the grid fills every SM anyway.
int combine_spread_smem(const void* kernel, int64_t ctas) {
  const DeviceInfo dev = current_device_info();
  const int64_t per_sm = (ctas + dev.sms - 1) / dev.sms;
  if (per_sm >= 2048 / kThreads) return 0;
  constexpr int64_t kReservedPerCta = 1024;  // shared memory the driver reserves per CTA
  const int static_smem = static_smem_bytes(kernel, "cudaFuncGetAttributes(combine_kernel)");
  const int most = dev.smem_per_block_optin - static_smem;
  const int64_t fit = dev.smem_per_sm / per_sm - kReservedPerCta - static_smem;
  ensure_dynamic_smem(kernel, most, "cudaFuncSetAttribute(combine_kernel)");
  return static_cast<int>(std::clamp<int64_t>(fit, 0, most));
}

}  // namespace

void launch_combine(const MlaDecodeParams& p, cudaStream_t stream) {
  const int64_t rows_all = static_cast<int64_t>(p.seqlen_q) * p.num_heads_q;  // h_kv * rows
  if (p.batch == 0 || rows_all == 0) return;  // a zero-sized grid is a launch error
  if (rows_all > 65535) {
    throw Error("combine: seqlen_q * num_heads_q must be <= 65535 (grid.y), got " +
                std::to_string(rows_all));
  }
  // Sequences get about num_sm_parts / batch pieces each (decided from shapes alone, so the
  // choice is the same under graph capture): split the columns when that is many.
  const int chunks = p.num_sm_parts >= 128 * p.batch ? 16 : p.num_sm_parts >= 8 * p.batch ? 4 : 1;
  const dim3 grid(static_cast<unsigned>(p.batch), static_cast<unsigned>(rows_all), chunks);
  dispatch_element(p.dtype, [&](auto element) {
    using T = decltype(element);
    // A programmatic dependent launch of the decode kernel just queued (its CTAs trigger after
    // their own wait, see griddep_wait() in combine_kernel). With one chunk most rows have one piece, and
    // their CTAs exit while the decode runs (b256_short -1.3%, skew_b64 -2.2%, b=128 h64 s4k
    // -2.8%); split many ways (b = 1), the early start hides the launch, and the grid is spread
    // by combine_spread_smem (perf-log session 18).
    auto kernel = chunks == 16 ? combine_kernel<T, 16> : chunks == 4 ? combine_kernel<T, 4> : combine_kernel<T, 1>;
    const int dyn_smem = combine_spread_smem(reinterpret_cast<const void*>(kernel),
                                             static_cast<int64_t>(grid.x) * grid.y * grid.z);
    const PdlLaunch launch(grid, dim3(kThreads), static_cast<size_t>(dyn_smem), stream);
    check_cuda(cudaLaunchKernelEx(&launch.cfg, kernel, p), "combine_kernel launch");
  });
}

}  // namespace flashmla::detail
