// Internal launch entry points shared by the host API (src/api.cpp) and the CUDA sources.
// Everything here assumes the arguments were already checked by validate().
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>

#include "flashmla/flashmla.h"

namespace flashmla::detail {

// Throws Error("<b_name> must not overlap <a_name>") when the byte ranges [a, a + a_bytes) and
// [b, b + b_bytes) share a byte (the API's output checks and the FP8 converters').
inline void require_disjoint(const char* a_name, const void* a, int64_t a_bytes,
                             const char* b_name, const void* b, int64_t b_bytes) {
  const auto a0 = reinterpret_cast<uintptr_t>(a), b0 = reinterpret_cast<uintptr_t>(b);
  if (a0 < b0 + static_cast<uintptr_t>(b_bytes) && b0 < a0 + static_cast<uintptr_t>(a_bytes))
    throw Error(std::string(b_name) + " must not overlap " + a_name);
}

// Throws flashmla::Error("<what>: <cuda error string>") when err != cudaSuccess, after
// clearing the thread's last-error state: a caller that catches the exception (e.g. to fall
// back to another kernel) must not have its next, unrelated launch check report our error.
inline void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    throw Error(std::string(what) + ": " + cudaGetErrorString(err));
  }
}

// Switches this thread's stream-capture mode to relaxed for its lifetime: pointer queries and
// one-time setup (attribute queries, occupancy) are illegal in a global-mode capture, and a
// call may be the first one made while the caller captures a graph.
class RelaxedCaptureScope {
 public:
  RelaxedCaptureScope() {
    ok_ = cudaThreadExchangeStreamCaptureMode(&mode_) == cudaSuccess;
    if (!ok_) (void)cudaGetLastError();  // e.g. no device: the caller's checks report that
  }
  ~RelaxedCaptureScope() {
    if (ok_) cudaThreadExchangeStreamCaptureMode(&mode_);
  }
  RelaxedCaptureScope(const RelaxedCaptureScope&) = delete;
  RelaxedCaptureScope& operator=(const RelaxedCaptureScope&) = delete;

 private:
  cudaStreamCaptureMode mode_ = cudaStreamCaptureModeRelaxed;
  bool ok_ = false;
};

// src/metadata.cu: the closed-form split plan of src/scheduler/plan.h on the GPU (one CTA),
// no host sync.
// ov: the plan's overhead per piece in KV blocks (plan::split_overhead_blocks).
void launch_metadata(const int32_t* cache_seqlens, int batch, int num_parts, int ov,
                     int32_t* tile_scheduler_metadata, int32_t* num_splits, cudaStream_t stream);

// src/sm90/decode_*.cu: the split-KV decode kernel (writes out/lse for unsplit sequences,
// o_accum/lse_accum for split ones).
void launch_decode_sm90(const MlaDecodeParams& p, cudaStream_t stream);

// src/combine.cu: merges split partials by their LSEs; also writes out = 0, lse = +inf for
// empty sequences.
void launch_combine(const MlaDecodeParams& p, cudaStream_t stream);

// src/reference/reference_gpu.cu: the simple fp32 oracle.
void launch_reference_gpu(const MlaDecodeParams& p, cudaStream_t stream);

}  // namespace flashmla::detail
