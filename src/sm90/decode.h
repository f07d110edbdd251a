// The sm90 decode launcher, one instantiation per element type (decode_bf16.cu, decode_fp16.cu).
#pragma once

#include <cuda_runtime_api.h>

#include "flashmla/flashmla.h"

namespace flashmla::detail {

template <typename T>
void launch_decode(const MlaDecodeParams& p, cudaStream_t stream);

}  // namespace flashmla::detail
