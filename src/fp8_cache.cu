// FP8 KV-cache conversion (KvFormat::kFP8WithScale): bf16 rows of 576 <-> 656-byte records.
//
// One warp per token. Lane l owns latent dims [16 l, 16 l + 16): two 16-byte bf16 loads and
// one 16-byte fp8 store (or the reverse). A 128-dim scale group is then 8 consecutive lanes,
// so its max is a 3-step shuffle. Lanes 0..7 also move the 64 RoPE dims, 16 bytes each.
// Memory-bound: the arithmetic is a few instructions per 16 bytes.
//
// Bit-exact with src/reference/fp8_cache_host.cpp: the scale and the quotient are IEEE fp32
// divisions (__fdiv_rn, whatever the compile flags), the products IEEE multiplies, and the
// conversions round to nearest even in hardware.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <climits>
#include <cstdint>
#include <sstream>
#include <string>

#include "flashmla/flashmla.h"
#include "fp8_record.cuh"
#include "internal.h"
#include "launch.h"

namespace flashmla {
namespace {

constexpr int kLatent = kHeadDimV;                        // 512 scaled dims
using fp8::kRopeOffset;
using fp8::kScaleOffset;
constexpr int kRopeChunks = (kHeadDim - kLatent) * 2 / 16;  // 8 chunks of 16 bytes
constexpr int kDimsPerLane = kLatent / 32;                // 16
constexpr int kLanesPerGroup = kFp8ScaleGroup / kDimsPerLane;  // 8
constexpr int kWarpsPerBlock = 8;
constexpr float kE4m3Max = 448.f;
static_assert(kRopeOffset % 16 == 0, "RoPE dims of a record are moved as 16-byte chunks");

// 8 bf16 <-> one uint4, element i in the i-th 16-bit half of the words.
union Bf16x8 {
  uint4 raw;
  __nv_bfloat162 pair[4];
  uint32_t word[4];
};

__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    quantize_kernel(const char* __restrict__ src, int64_t src_stride_bytes, char* __restrict__ dst,
                    int64_t dst_stride_bytes, int64_t n_tokens) {
  const int lane = threadIdx.x % 32;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t t = first; t < n_tokens; t += step) {
    const char* row = src + t * src_stride_bytes;
    char* rec = dst + t * dst_stride_bytes;

    Bf16x8 in[2];
    const uint4* lane_src = reinterpret_cast<const uint4*>(row) + 2 * lane;
    in[0].raw = lane_src[0];
    in[1].raw = lane_src[1];
    float v[kDimsPerLane];
    for (int i = 0; i < kDimsPerLane / 2; ++i) {
      const float2 f = __bfloat1622float2(in[i / 4].pair[i % 4]);
      v[2 * i] = f.x;
      v[2 * i + 1] = f.y;
    }

    // fmaxf drops NaN operands, signalling ones too, so no NaN becomes a scale (as in the
    // host twin; checked over every bf16 NaN pattern by the tests).
    float amax = 0.f;
    for (int i = 0; i < kDimsPerLane; ++i) amax = fmaxf(amax, fabsf(v[i]));
    for (int off = kLanesPerGroup / 2; off > 0; off >>= 1)
      amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, off));
    const float scale = amax == 0.f ? 1.f : __fdiv_rn(amax, kE4m3Max);

    uint32_t packed[4];
    for (int w = 0; w < 4; ++w) {
      const int i = 4 * w;
      const __nv_fp8x2_storage_t lo = __nv_cvt_float2_to_fp8x2(
          make_float2(__fdiv_rn(v[i], scale), __fdiv_rn(v[i + 1], scale)), __NV_SATFINITE, __NV_E4M3);
      const __nv_fp8x2_storage_t hi = __nv_cvt_float2_to_fp8x2(
          make_float2(__fdiv_rn(v[i + 2], scale), __fdiv_rn(v[i + 3], scale)), __NV_SATFINITE,
          __NV_E4M3);
      packed[w] = static_cast<uint32_t>(lo) | static_cast<uint32_t>(hi) << 16;
    }
    reinterpret_cast<uint4*>(rec)[lane] = make_uint4(packed[0], packed[1], packed[2], packed[3]);

    // Lane 0 holds group 0's scale; fetch the other three from the first lane of each group.
    const float s1 = __shfl_sync(0xffffffffu, scale, 1 * kLanesPerGroup);
    const float s2 = __shfl_sync(0xffffffffu, scale, 2 * kLanesPerGroup);
    const float s3 = __shfl_sync(0xffffffffu, scale, 3 * kLanesPerGroup);
    if (lane == 0) *reinterpret_cast<float4*>(rec + kScaleOffset) = make_float4(scale, s1, s2, s3);

    if (lane < kRopeChunks) {
      reinterpret_cast<uint4*>(rec + kRopeOffset)[lane] =
          reinterpret_cast<const uint4*>(row + 2 * kLatent)[lane];
    }
  }
}

__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    dequantize_kernel(const char* __restrict__ src, int64_t src_stride_bytes, char* __restrict__ dst,
                      int64_t dst_stride_bytes, int64_t n_tokens) {
  const int lane = threadIdx.x % 32;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t t = first; t < n_tokens; t += step) {
    const char* rec = src + t * src_stride_bytes;
    char* row = dst + t * dst_stride_bytes;

    const uint4 q = reinterpret_cast<const uint4*>(rec)[lane];
    const float scale = reinterpret_cast<const float*>(rec + kScaleOffset)[lane / kLanesPerGroup];
    const uint32_t words[4] = {q.x, q.y, q.z, q.w};
    Bf16x8 out[2];
    for (int i = 0; i < kDimsPerLane / 2; ++i) {
      const uint32_t word = words[i / 2];
      out[i / 4].word[i % 4] = fp8::e4m3x2_to_bf16x2(i % 2 == 0 ? word : word >> 16, scale);
    }
    uint4* lane_dst = reinterpret_cast<uint4*>(row) + 2 * lane;
    lane_dst[0] = out[0].raw;
    lane_dst[1] = out[1].raw;

    if (lane < kRopeChunks) {
      reinterpret_cast<uint4*>(row + 2 * kLatent)[lane] =
          reinterpret_cast<const uint4*>(rec + kRopeOffset)[lane];
    }
  }
}

std::string address(const void* p) {
  std::ostringstream s;
  s << p;
  return s.str();
}

void require_pointer(const char* name, const void* p) {
  if (p == nullptr) throw Error(std::string(name) + " must not be null");
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0)
    throw Error(std::string(name) + " must be 16-byte aligned, got address " + address(p));
}

// A row stride of `unit`-byte elements: at least one row, and a whole number of 16 bytes so
// that every row starts aligned for the vector loads and stores.
void require_stride(const char* name, int64_t stride, int64_t min, int64_t unit, int64_t n_tokens) {
  if (stride < min)
    throw Error(std::string(name) + " must be >= " + std::to_string(min) + ", got " +
                std::to_string(stride));
  if (stride * unit % 16 != 0)
    throw Error(std::string(name) + " must be a multiple of " + std::to_string(16 / unit) +
                (unit == 1 ? " bytes" : " elements (16 bytes)") + ", got " + std::to_string(stride));
  if (stride > INT64_MAX / unit / n_tokens)
    throw Error(std::string(name) + " is too large for " + std::to_string(n_tokens) +
                " tokens, got " + std::to_string(stride));
}

struct Rows {
  const char* name;
  const void* ptr;
  const char* stride_name;
  int64_t stride;     // in elements
  int64_t elem_bytes;
  int64_t row_bytes;  // bytes of one row without padding
};

// Validates both sides; false when there is nothing to do (n_tokens == 0, where null
// pointers of empty tensors are accepted).
bool check_args(const Rows& src, const Rows& dst, int64_t n_tokens) {
  if (n_tokens < 0) throw Error("n_tokens must be >= 0, got " + std::to_string(n_tokens));
  if (n_tokens == 0) return false;
  for (const Rows& r : {src, dst}) {
    require_pointer(r.name, r.ptr);
    require_stride(r.stride_name, r.stride, r.row_bytes / r.elem_bytes, r.elem_bytes, n_tokens);
  }
  const auto span = [n_tokens](const Rows& r) { return (n_tokens - 1) * r.stride * r.elem_bytes + r.row_bytes; };
  // In-place or partially overlapping conversion would read bytes already overwritten.
  detail::require_disjoint(src.name, src.ptr, span(src), dst.name, dst.ptr, span(dst));
  return true;
}

unsigned grid_for(int64_t n_tokens) {
  const int64_t blocks = (n_tokens + kWarpsPerBlock - 1) / kWarpsPerBlock;
  return static_cast<unsigned>(blocks < INT_MAX ? blocks : INT_MAX);  // the kernels stride past it
}

}  // namespace

void quantize_kv_fp8(const void* src_bf16, int64_t src_stride, void* dst_fp8, int64_t dst_stride,
                     int64_t n_tokens, cudaStream_t stream) {
  const Rows src{"src_bf16", src_bf16, "src_stride", src_stride, 2, 2 * kHeadDim};
  const Rows dst{"dst_fp8", dst_fp8, "dst_stride", dst_stride, 1, kFp8TokenBytes};
  if (!check_args(src, dst, n_tokens)) return;
  (void)detail::current_device_info();  // an sm_90 device, or a clear error
  detail::launch_plain(quantize_kernel, grid_for(n_tokens), dim3(kWarpsPerBlock * 32), 0, stream,
                       "quantize_kv_fp8 launch", static_cast<const char*>(src_bf16), 2 * src_stride,
                       static_cast<char*>(dst_fp8), dst_stride, n_tokens);
}

void dequantize_kv_fp8(const void* src_fp8, int64_t src_stride, void* dst_bf16,
                       int64_t dst_stride, int64_t n_tokens, cudaStream_t stream) {
  const Rows src{"src_fp8", src_fp8, "src_stride", src_stride, 1, kFp8TokenBytes};
  const Rows dst{"dst_bf16", dst_bf16, "dst_stride", dst_stride, 2, 2 * kHeadDim};
  if (!check_args(src, dst, n_tokens)) return;
  (void)detail::current_device_info();
  detail::launch_plain(dequantize_kernel, grid_for(n_tokens), dim3(kWarpsPerBlock * 32), 0, stream,
                       "dequantize_kv_fp8 launch", static_cast<const char*>(src_fp8), src_stride,
                       static_cast<char*>(dst_bf16), 2 * dst_stride, n_tokens);
}

}  // namespace flashmla
