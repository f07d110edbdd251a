// The split-KV planner on the GPU: one CTA stages cache_seqlens in shared memory, then one
// thread runs the sequential plan_schedule() (the same code the host unit tests run) and
// writes the metadata and num_splits straight to global memory. No host sync and no
// allocation, so it can be captured into a CUDA graph with the decode and combine kernels.
#include <cstdint>

#include "internal.h"
#include "scheduler/plan.h"

namespace flashmla::detail {
namespace {

constexpr int kThreads = 256;
constexpr size_t kMaxStagedBytes = 48 * 1024;  // dynamic smem usable without an opt-in

__global__ void __launch_bounds__(kThreads)
    metadata_kernel(const int32_t* seqlens, int batch, int num_parts, bool stage,
                    int32_t* metadata, int32_t* num_splits) {
  extern __shared__ int32_t s_seqlens[];
  // plan_schedule reads each seqlen several times from one thread; shared memory turns
  // those dependent global loads into cheap ones. Too large a batch reads global directly.
  const int32_t* lens = seqlens;
  if (stage) {  // uniform across the CTA, so the barrier below is reached by every thread
    for (int i = threadIdx.x; i < batch; i += kThreads) s_seqlens[i] = seqlens[i];
    __syncthreads();
    lens = s_seqlens;
  }
  if (threadIdx.x == 0) plan_schedule(lens, batch, num_parts, metadata, num_splits);
}

}  // namespace

void launch_metadata(const int32_t* cache_seqlens, int batch, int num_parts,
                     int32_t* tile_scheduler_metadata, int32_t* num_splits,
                     cudaStream_t stream) {
  if (num_parts < 1) throw Error("num_sm_parts must be >= 1, got " + std::to_string(num_parts));
  if (batch < 0) throw Error("batch must be >= 0, got " + std::to_string(batch));
  const size_t bytes = static_cast<size_t>(batch) * sizeof(int32_t);
  const bool stage = bytes <= kMaxStagedBytes;
  metadata_kernel<<<1, kThreads, stage ? bytes : 0, stream>>>(
      cache_seqlens, batch, num_parts, stage, tile_scheduler_metadata, num_splits);
  check_cuda(cudaGetLastError(), "metadata_kernel launch");
}

}  // namespace flashmla::detail
