// The split-KV planner on the GPU: one CTA evaluates the closed-form plan of
// scheduler/plan.h in parallel, with the same integer helpers as the host twin
// plan_schedule(), and writes metadata and num_splits straight to global memory. No host sync
// and no allocation, so it can be captured into a CUDA graph with the decode and combine
// kernels.
//
// Thread t owns the contiguous chunk of sequences [t * chunk, (t + 1) * chunk),
// chunk = ceil(batch / kThreads), so shared memory is O(kThreads) for any batch:
//   1. chunk cost sums -> block scan -> chunk start positions (shared), total; the largest
//      sequence cost -> block max -> whole-sequence plan or not, payload;
//   2. chunk piece counts -> block scan -> num_splits of the chunk;
//   3. thread per part boundary p in [0, num_parts]: binary search over the chunk starts, walk
//      inside the chunk, write row p's begin and row p - 1's end.
#include <cstdint>

#include "internal.h"
#include "launch.h"
#include "scheduler/plan.h"

namespace flashmla::detail {
namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
static_assert(kWarps <= 32, "the second scan level runs in one warp");

// %laneid through volatile asm: without it the compiler shares the `lane >= o` predicates
// between the two scans and keeps them alive across the 64-bit division calls in between,
// which costs a (predicate) spill.
__device__ __forceinline__ int lane_id() {
  int lane;
  asm volatile("mov.u32 %0, %%laneid;" : "=r"(lane));
  return lane;
}

// Exclusive scan of one int64 per thread over the CTA; *total gets the sum. Every thread must
// call it. warp_sums [kWarps] must not be reused by a later scan (its readers are not fenced).
__device__ __forceinline__ int64_t block_exclusive_scan(int64_t v, int64_t* warp_sums,
                                                        int64_t* total) {
  const int lane = lane_id(), warp = threadIdx.x >> 5;
  long long incl = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const long long n = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += n;
  }
  if (lane == 31) warp_sums[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    long long w = lane < kWarps ? warp_sums[lane] : 0;
#pragma unroll
    for (int o = 1; o < kWarps; o <<= 1) {
      const long long n = __shfl_up_sync(0xffffffffu, w, o);
      if (lane >= o) w += n;
    }
    if (lane < kWarps) warp_sums[lane] = w;
  }
  __syncthreads();
  *total = warp_sums[kWarps - 1];
  return (warp > 0 ? warp_sums[warp - 1] : 0) + incl - v;
}

// Max of one int64 per thread over the CTA, for every thread. warp_max [kWarps] as above.
__device__ __forceinline__ int64_t block_max(int64_t v, int64_t* warp_max) {
  long long m = v;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const long long n = __shfl_xor_sync(0xffffffffu, m, o);
    m = n > m ? n : m;
  }
  if (lane_id() == 0) warp_max[threadIdx.x >> 5] = m;
  __syncthreads();
  m = warp_max[0];
  for (int w = 1; w < kWarps; ++w) m = warp_max[w] > m ? warp_max[w] : m;
  return m;
}

__global__ void __launch_bounds__(kThreads)
    metadata_kernel(const int32_t* __restrict__ seqlens, int batch, int num_parts, int ov,
                    int32_t* __restrict__ metadata, int32_t* __restrict__ num_splits) {
  __shared__ int64_t s_chunk_start[kThreads];
  __shared__ int64_t s_warp_cost[kWarps];
  __shared__ int64_t s_warp_pieces[kWarps];
  __shared__ int64_t s_warp_max[kWarps];

  // The decode queued behind this kernel (a programmatic dependent launch) may start its
  // prologue now; it waits for this grid's completion before reading the plan.
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
  const int t = threadIdx.x;
  const int chunk = plan::chunk_size(batch, kThreads);
  const int lo = plan::chunk_begin(t, chunk, batch), hi = plan::chunk_begin(t + 1, chunk, batch);

  // 1. Positions: chunk starts and total.
  int64_t total;
  const int64_t start =
      block_exclusive_scan(plan::range_cost(seqlens, lo, hi, ov), s_warp_cost, &total);
  s_chunk_start[t] = start;
  const bool whole = plan::whole_sequences(block_max(plan::range_max_cost(seqlens, lo, hi, ov), s_warp_max),
                                           total, batch, num_parts);
  const int64_t pay = whole ? plan::kWholePayload : plan::payload(total, num_parts);

  // 2. Pieces -> num_splits. The scan's barriers also publish s_chunk_start for step 3.
  int64_t unused;
  const int64_t first_split =
      block_exclusive_scan(plan::range_pieces(seqlens, lo, hi, start, pay, ov), s_warp_pieces, &unused);
  if (t == 0) num_splits[0] = 0;
  plan::write_range_splits(seqlens, lo, hi, start, pay, ov, first_split, num_splits);

  // 3. Part boundaries.
  for (int p = t; p <= num_parts; p += kThreads) {
    const plan::Boundary b =
        whole ? plan::whole_boundary(p, batch)
              : plan::locate_boundary(p, pay, ov, total, seqlens, batch, s_chunk_start, kThreads, chunk);
    plan::write_boundary(metadata, num_parts, p, b);
  }
}

}  // namespace

void launch_metadata(const int32_t* cache_seqlens, int batch, int num_parts, int ov,
                     int32_t* tile_scheduler_metadata, int32_t* num_splits,
                     cudaStream_t stream) {
  if (num_parts < 1) throw Error("num_sm_parts must be >= 1, got " + std::to_string(num_parts));
  if (batch < 0) throw Error("batch must be >= 0, got " + std::to_string(batch));
  (void)current_device_info();  // an sm_90 device, or a clear error
  launch_plain(metadata_kernel, dim3(1), dim3(kThreads), 0, stream, "metadata_kernel launch", cache_seqlens,
               batch, num_parts, ov, tile_scheduler_metadata, num_splits);
}

}  // namespace flashmla::detail
