// The 16-bit element types of q, k_cache and out (BF16, FP16): conversions the kernels need,
// and the host-side dispatch from MlaDecodeParams::dtype to a template instantiation.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <string>

#include "flashmla/flashmla.h"

namespace flashmla {

template <typename T>
struct ElementOps;

template <>
struct ElementOps<__nv_bfloat16> {
  using Pair = __nv_bfloat162;
  static __device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
  static __device__ __forceinline__ __nv_bfloat16 from_float(float x) { return __float2bfloat16_rn(x); }
  static __device__ __forceinline__ Pair pack(float a, float b) { return __floats2bfloat162_rn(a, b); }
};

template <>
struct ElementOps<__half> {
  using Pair = __half2;
  static __device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
  static __device__ __forceinline__ __half from_float(float x) { return __float2half_rn(x); }
  static __device__ __forceinline__ Pair pack(float a, float b) { return __floats2half2_rn(a, b); }
};

// Calls f(T{}) with T the element type that `dtype` names.
template <typename F>
void dispatch_element(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kBF16:
      f(__nv_bfloat16{});
      return;
    case DType::kFP16:
      f(__half{});
      return;
  }
  throw Error("dtype must be kBF16 or kFP16, got " + std::to_string(static_cast<int>(dtype)));
}

}  // namespace flashmla
