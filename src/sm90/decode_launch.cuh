// Host launcher of the sm90 decode kernel, templated on the element type; decode_bf16.cu and
// decode_fp16.cu instantiate it, decode.cu dispatches on MlaDecodeParams::dtype.
#pragma once

#include <cuda.h>
#include <cudaTypedefs.h>  // PFN_cuTensorMapEncodeTiled_v12000
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <mutex>
#include <string>
#include <type_traits>

#include "internal.h"
#include "sm90/decode.h"
#include "sm90/decode_kernel.cuh"

namespace flashmla::detail {
namespace decode_launch {

// cuTensorMapEncodeTiled lives in the driver API; take it through the runtime so the
// library links only against cudart.
inline PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* ptr = nullptr;
    cudaDriverEntryPointQueryResult status{};
    check_cuda(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &ptr, 12000,
                                                cudaEnableDefault, &status),
               "cudaGetDriverEntryPointByVersion(cuTensorMapEncodeTiled)");
    if (status != cudaDriverEntryPointSuccess || ptr == nullptr) {
      throw Error("the CUDA driver does not provide cuTensorMapEncodeTiled (need CUDA 12+)");
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(ptr);
  }();
  return fn;
}

// The KV cache as a 4-D tensor (d, row in page, kv head, page) so one TMA box is one 64x64
// sub-tile of a page for one kv head, whatever the page/row/head strides are.
template <typename T>
CUtensorMap make_kv_map(const MlaDecodeParams& p) {
  CUtensorMap map{};
  const cuuint64_t dims[4] = {static_cast<cuuint64_t>(p.head_dim),
                              static_cast<cuuint64_t>(p.page_block_size),
                              static_cast<cuuint64_t>(p.num_heads_kv),
                              static_cast<cuuint64_t>(p.num_blocks)};
  const cuuint64_t strides[3] = {static_cast<cuuint64_t>(p.k_row_stride) * 2,
                                 static_cast<cuuint64_t>(p.k_head_stride) * 2,
                                 static_cast<cuuint64_t>(p.k_block_stride) * 2};
  const cuuint32_t box[4] = {sm90::kSubCols, sm90::kBlockN, 1, 1};
  const cuuint32_t elem_strides[4] = {1, 1, 1, 1};
  const CUresult r = tensor_map_encoder()(
      &map,
      std::is_same_v<T, __half> ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 4, const_cast<void*>(p.k_cache), dims, strides, box,
      elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
      CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) {
    throw Error("k_cache: cannot describe it to TMA (cuTensorMapEncodeTiled error " +
                std::to_string(static_cast<int>(r)) + "); strides must be multiples of 8 elements");
  }
  return map;
}

}  // namespace decode_launch

template <typename T>
void launch_decode(const MlaDecodeParams& p, cudaStream_t stream) {
  static std::once_flag attr_once;
  std::call_once(attr_once, [] {
    check_cuda(cudaFuncSetAttribute(sm90::mla_decode_kernel<T>,
                                    cudaFuncAttributeMaxDynamicSharedMemorySize, sm90::kSmemBytes),
               "cudaFuncSetAttribute(mla_decode_kernel)");
  });
  const CUtensorMap map = decode_launch::make_kv_map<T>(p);
  const int rows = p.seqlen_q * (p.num_heads_q / p.num_heads_kv);
  const dim3 grid(p.num_sm_parts, p.num_heads_kv, (rows + sm90::kBlockM - 1) / sm90::kBlockM);
  sm90::mla_decode_kernel<T><<<grid, sm90::kThreads, sm90::kSmemBytes, stream>>>(p, map);
  check_cuda(cudaGetLastError(), "mla_decode_kernel launch");
}

}  // namespace flashmla::detail
