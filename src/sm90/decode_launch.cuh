// Host launcher of the sm90 decode kernel, templated on the element type; decode_bf16.cu and
// decode_fp16.cu instantiate it, decode.cu dispatches on MlaDecodeParams::dtype.
#pragma once

#include <cuda.h>
#include <cudaTypedefs.h>  // PFN_cuTensorMapEncodeTiled_v12000
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdlib>
#include <string>
#include <type_traits>

#include "internal.h"
#include "launch.h"
#include "sm90/decode.h"
#include "sm90/decode_kernel.cuh"
#include "sm90/small_kernel.cuh"

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

// A 4-D view (d, row in page, kv head, page) of the cache starting `offset_bytes` into each
// record, `width` elements wide, so one TMA box is `box_cols` x min(page, 64) rows of a page
// for one kv head, whatever the page/row/head strides are.
inline CUtensorMap make_map(const MlaDecodeParams& p, CUtensorMapDataType type, int offset_bytes,
                            int width, int box_cols, CUtensorMapSwizzle swizzle,
                            const char* what) {
  CUtensorMap map{};
  const cuuint64_t dims[4] = {static_cast<cuuint64_t>(width),
                              static_cast<cuuint64_t>(p.page_block_size),
                              static_cast<cuuint64_t>(p.num_heads_kv),
                              static_cast<cuuint64_t>(p.num_blocks)};
  // Strides of 16-bit caches are in elements, of FP8 records in bytes.
  const int64_t unit = p.kv_format == KvFormat::kFP8WithScale ? 1 : 2;
  const cuuint64_t strides[3] = {static_cast<cuuint64_t>(p.k_row_stride * unit),
                                 static_cast<cuuint64_t>(p.k_head_stride * unit),
                                 static_cast<cuuint64_t>(p.k_block_stride * unit)};
  // A page smaller than a tile is one box per page (the kernel issues 64/page of them).
  const cuuint32_t box_rows = p.page_block_size < sm90::kBlockN ? p.page_block_size : sm90::kBlockN;
  const cuuint32_t box[4] = {static_cast<cuuint32_t>(box_cols), box_rows, 1, 1};
  const cuuint32_t elem_strides[4] = {1, 1, 1, 1};
  void* base = const_cast<char*>(static_cast<const char*>(p.k_cache) + offset_bytes);
  const CUresult r = tensor_map_encoder()(&map, type, 4, base, dims, strides, box, elem_strides,
                                          CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle,
                                          CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                                          CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) {
    throw Error(std::string("k_cache: cannot describe its ") + what +
                " to TMA (cuTensorMapEncodeTiled error " + std::to_string(static_cast<int>(r)) +
                "); strides must be multiples of 16 bytes");
  }
  return map;
}

// TMA producers only: 16-bit caches with pages of >= 16 tokens (one map), FP8 caches with
// pages of >= 16 tokens (latent bytes, scales, RoPE). The gather producers read no map.
template <typename T>
sm90::KvMaps make_kv_maps(const MlaDecodeParams& p) {
  sm90::KvMaps maps{};
  if (p.page_block_size < sm90::kMinTmaPage) return maps;
  if (p.kv_format == KvFormat::kFP8WithScale) {
    maps.kv = make_map(p, CU_TENSOR_MAP_DATA_TYPE_UINT8, 0, kHeadDimV, 128,
                       CU_TENSOR_MAP_SWIZZLE_NONE, "FP8 latent bytes");
    maps.fp8_scale = make_map(p, CU_TENSOR_MAP_DATA_TYPE_UINT8, fp8::kScaleOffset, 16, 16,
                              CU_TENSOR_MAP_SWIZZLE_NONE, "FP8 scales");
    maps.fp8_rope = make_map(p, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, fp8::kRopeOffset,
                             kHeadDim - kHeadDimV, sm90::kSubCols, CU_TENSOR_MAP_SWIZZLE_128B,
                             "FP8 RoPE part");
    maps.fp8_latent_sw128 = make_map(p, CU_TENSOR_MAP_DATA_TYPE_UINT8, 0, kHeadDimV, 128,
                                     CU_TENSOR_MAP_SWIZZLE_128B, "FP8 latent bytes");
  } else {
    maps.kv = make_map(p,
                       std::is_same_v<T, __half> ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16
                                                 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
                       0, kHeadDim, sm90::kSubCols, CU_TENSOR_MAP_SWIZZLE_128B, "rows");
  }
  return maps;
}

// Row blocks of 16 the small-head kernel takes (16-bit caches: any page size, TMA from 16
// tokens up and a cp.async gather below; FP8: pages of >= 16 tokens): 16-bit caches up to
// 16 query rows per kv head, FP8 caches up to 32 (two blocks; above that, and for 16-bit caches
// above 16 rows, the wide kernel is at the memory floor or compute-bound). 0: the wide kernel.
// FLASHMLA_SMALL_HEADS=0 forces the wide kernel (A/B measurements).
inline int small_kernel_blocks(const MlaDecodeParams& p) {
  static const bool enabled = [] {
    const char* e = std::getenv("FLASHMLA_SMALL_HEADS");
    return e == nullptr || std::string(e) != "0";
  }();
  const int rows = p.seqlen_q * (p.num_heads_q / p.num_heads_kv);
  const bool fp8 = p.kv_format == KvFormat::kFP8WithScale;
  // 16-bit caches: TMA boxes for pages >= 16 tokens, a cp.async gather below; FP8: TMA only.
  if (!enabled || (fp8 && p.page_block_size < sm90::kMinTmaPage)) return 0;
  if (rows <= sm90::kSmallRows) return 1;
  if (fp8 && rows <= sm90::kSmallMaxRows) return 2;
  return 0;
}

template <typename T, bool kFp8, int kBlocks, bool kGather = false>
void launch_small(const MlaDecodeParams& p, const sm90::KvMaps& maps, cudaStream_t stream) {
  const auto kernel = sm90::mla_decode_small_kernel<T, kFp8, kBlocks, kGather>;
  ensure_dynamic_smem(reinterpret_cast<const void*>(kernel), sm90::kSmallSmemBytes,
                      "cudaFuncSetAttribute(mla_decode_small_kernel)");
  const PdlLaunch launch(dim3(p.num_sm_parts, p.num_heads_kv, 1), dim3(sm90::kSmallThreads),
                         sm90::kSmallSmemBytes, stream);
  check_cuda(cudaLaunchKernelEx(&launch.cfg, kernel, p, maps),
             "mla_decode_small_kernel launch");
}

// CTAs per thread-block cluster of the wide kernel: 2 when the query tiles of a (part, kv
// head) come in pairs, the cache is 16-bit and read by TMA, else 1. The query tiles of a part
// read the same KV tiles, and a cluster launch (no cluster feature is used: no multicast, no
// remote barrier) starts a pair together on one GPC. Measured on the H100 (docs/perf-log.md,
// session 16): -2 to -4% at h_q = 128 (s_q = 1, 2, 4; pages of 16 and 64), skew_b64 and
// b1_64k_h128; the FP8 wide path is 1.5% slower so, and clusters of 4 (s_q = 2) 1.6x slower.
// FLASHMLA_CLUSTER=1 turns it off (A/B). Also 1 if the device cannot hold such a cluster.
template <typename T>
int wide_cluster_size(const MlaDecodeParams& p, unsigned m_tiles) {
  static const bool enabled = [] {
    const char* e = std::getenv("FLASHMLA_CLUSTER");
    return e == nullptr || std::string(e) != "1";
  }();
  // Per (thread, device): a process-wide answer would be the first GPU's for every other.
  thread_local std::vector<std::pair<int, bool>> known;
  const int dev = current_device_info().device;
  bool fits = false, found = false;
  for (const auto& k : known)
    if (k.first == dev) fits = k.second, found = true;
  if (!found) {
    RelaxedCaptureScope relaxed;  // the first call may come while the caller captures a graph
    const PdlLaunch launch(dim3(1, 1, 2), dim3(sm90::kThreads), sm90::kSmemBytes, nullptr, 2);
    int clusters = 0;
    if (cudaOccupancyMaxActiveClusters(&clusters, sm90::mla_decode_kernel<T>, &launch.cfg) !=
        cudaSuccess) {
      (void)cudaGetLastError();  // clear what the query set: no clusters is no launch error
      clusters = 0;
    }
    fits = clusters > 0;
    known.emplace_back(dev, fits);
  }
  const bool tma16 = p.kv_format != KvFormat::kFP8WithScale && p.page_block_size >= sm90::kMinTmaPage;
  return enabled && fits && tma16 && m_tiles % 2 == 0 ? 2 : 1;
}

}  // namespace decode_launch

template <typename T>
void launch_decode(const MlaDecodeParams& p, cudaStream_t stream) {
  const sm90::KvMaps maps = decode_launch::make_kv_maps<T>(p);
  if (const int blocks = decode_launch::small_kernel_blocks(p)) {
    // FP8 caches come with bf16 queries only (validated): no half instantiation of that path.
    if constexpr (std::is_same_v<T, __nv_bfloat16>) {
      if (p.kv_format == KvFormat::kFP8WithScale) {
        if (blocks == 2) {
          decode_launch::launch_small<T, true, 2>(p, maps, stream);
        } else {
          decode_launch::launch_small<T, true, 1>(p, maps, stream);
        }
        return;
      }
    }
    if (p.page_block_size < sm90::kMinTmaPage) {
      decode_launch::launch_small<T, false, 1, true>(p, maps, stream);
    } else {
      decode_launch::launch_small<T, false, 1, false>(p, maps, stream);
    }
    return;
  }
  ensure_dynamic_smem(reinterpret_cast<const void*>(sm90::mla_decode_kernel<T>), sm90::kSmemBytes,
                      "cudaFuncSetAttribute(mla_decode_kernel)");
  const int rows = p.seqlen_q * (p.num_heads_q / p.num_heads_kv);
  const dim3 grid(p.num_sm_parts, p.num_heads_kv, (rows + sm90::kBlockM - 1) / sm90::kBlockM);
  const int cluster = decode_launch::wide_cluster_size<T>(p, grid.z);
  const PdlLaunch launch(grid, dim3(sm90::kThreads), sm90::kSmemBytes, stream, static_cast<unsigned>(cluster));
  check_cuda(cudaLaunchKernelEx(&launch.cfg, sm90::mla_decode_kernel<T>, p, maps),
             "mla_decode_kernel launch (query-tile clusters)");
}

}  // namespace flashmla::detail
