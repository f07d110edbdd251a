// flashmla public C++ API: Multi-head Latent Attention decoding on Hopper (sm_90a).
//
// Torch-free and CUTLASS-free. All device pointers are plain CUDA device memory; every
// call is asynchronous on the given stream and never synchronizes the host, so the whole
// sequence (metadata, decode, combine) can be captured into a CUDA graph.
//
// Typical use, once per decode step:
//   int parts = flashmla::num_sm_parts(num_sms, s_q * h_q / h_kv, h_kv);
//   flashmla::get_mla_metadata(seqlens, b, s_q * h_q / h_kv, h_kv, parts, meta, splits, stream);
//   then per layer: fill MlaDecodeParams, flashmla::validate(p); flashmla::mla_decode(p, stream);
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace flashmla {

// The one exception type of the library. The message names the offending argument and what
// was expected, e.g. "flashmla: head_dim must be 576, got 512".
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error("flashmla: " + what) {}
};

enum class DType : int { kBF16 = 0, kFP16 = 1 };

// How k_cache stores a token. kFP8WithScale is FlashMLA's dense "FP8 with scale" format, one
// 656-byte record per (page row, kv head):
//   bytes [0, 512)    float8_e4m3 latent values, value_d / scale_{d / 128} (saturated to +-448)
//   bytes [512, 528)  4 float32 scales; scale g covers latent dims [128 g, 128 g + 128)
//   bytes [528, 656)  the 64 RoPE dims as bf16, unscaled
// Dequantized: latent_d = float(e4m3_d) * scale_{d / 128}, rope as stored.
enum class KvFormat : int { kSameAsQ = 0, kFP8WithScale = 1 };
constexpr int kFp8TokenBytes = 656;
constexpr int kFp8ScaleGroup = 128;  // latent dims per scale

// Fixed geometry of the MLA decode kernels.
constexpr int kHeadDim = 576;        // latent (512) + RoPE (64)
constexpr int kHeadDimV = 512;       // V = first 512 columns of each K row
constexpr int kPageBlockSize = 64;   // default tokens per KV-cache page
constexpr int kMaxPageBlockSize = 256;
constexpr int kTileRows = 64;        // query rows (s_q x heads of one kv head) per CTA
constexpr int kMetadataInts = 8;     // int32 per scheduler part in tile_scheduler_metadata

// Page sizes the kernels take: powers of two from 1 to 256 tokens. Pages of 16 and more are
// read with TMA, smaller ones with a cp.async gather (see docs/design.md for the speed of each).
constexpr bool is_supported_page_block_size(int n) {
  return n >= 1 && n <= kMaxPageBlockSize && (n & (n - 1)) == 0;
}

// One flat parameter block for the decode call. Strides are in elements; the last dimension
// of q / k_cache / out is contiguous. "rows" = s_q * (h_q / h_kv), the query rows that share
// one kv head; row r is (s = r / (h_q/h_kv), head-in-group = r % (h_q/h_kv)).
struct MlaDecodeParams {
  DType dtype = DType::kBF16;  // element type of q and out (and of k_cache when kSameAsQ)
  KvFormat kv_format = KvFormat::kSameAsQ;  // kFP8WithScale: dtype must be kBF16
  int batch = 0;               // b
  int seqlen_q = 0;            // s_q, query tokens per sequence (MTP / speculative decoding)
  int num_heads_q = 0;         // h_q
  int num_heads_kv = 0;        // h_kv (1 for MLA); h_q % h_kv == 0
  int head_dim = kHeadDim;     // d, must be 576
  int head_dim_v = kHeadDimV;  // dv, must be 512
  int page_block_size = kPageBlockSize;  // tokens per page: 1, 2, 4, ..., 256
  int num_blocks = 0;          // pages in k_cache
  int max_blocks_per_seq = 0;  // columns of block_table
  float softmax_scale = 0.f;   // > 0; the Python front defaults it to 1/sqrt(576)
  bool causal = false;         // query i of s_q sees keys 0 .. L - s_q + i

  const void* q = nullptr;            // [b, s_q, h_q, d]
  int64_t q_batch_stride = 0;
  int64_t q_seq_stride = 0;
  int64_t q_head_stride = 0;

  const void* k_cache = nullptr;      // [num_blocks, page_block_size, h_kv, d]; V aliases it.
                                      // kFP8WithScale: [.., .., h_kv, 656] bytes, strides in bytes
  int64_t k_block_stride = 0;
  int64_t k_row_stride = 0;
  int64_t k_head_stride = 0;

  const int32_t* block_table = nullptr;  // [b, max_blocks_per_seq], page ids in [0, num_blocks)
  int64_t block_table_batch_stride = 0;
  const int32_t* cache_seqlens = nullptr;  // [b], each in [0, max_blocks_per_seq * page] (else NaN out)

  void* out = nullptr;                // [b, s_q, h_q, dv]
  int64_t o_batch_stride = 0;
  int64_t o_seq_stride = 0;
  int64_t o_head_stride = 0;
  float* lse = nullptr;               // [b, h_q, s_q] contiguous, natural log, +inf if empty

  // Both from one get_mla_metadata call on these cache_seqlens values (not checkable on the
  // host; a mismatch cannot hang or write out of bounds, and unmergeable sequences come out NaN).
  const int32_t* tile_scheduler_metadata = nullptr;  // [num_sm_parts, kMetadataInts]
  int num_sm_parts = 0;
  const int32_t* num_splits = nullptr;  // [b + 1], prefix sums of splits per sequence

  // [b + num_sm_parts, h_kv, rows, dv] split partial outputs, in out's dtype (16-bit): each
  // is a normalised average of V rows, so it is within V's range up to rounding, and half
  // the bytes of fp32 halve the split's workspace traffic (docs/perf-log.md session 17).
  void* o_accum = nullptr;
  float* lse_accum = nullptr;  // [b + num_sm_parts, h_kv, rows] split partial LSEs (log2 domain)
};

// Number of scheduler parts for a device with num_sms SMs: one CTA per part per
// (kv head, 64-row tile), so that the grid fills the machine once.
int num_sm_parts(int num_sms, int rows_per_kv_head, int num_heads_kv);

// Elements of o_accum (16-bit, out's dtype) and lse_accum (float) that mla_decode needs for
// these shapes.
size_t o_accum_elems(int batch, int num_sm_parts, int num_heads_kv, int rows_per_kv_head);
size_t lse_accum_elems(int batch, int num_sm_parts, int num_heads_kv, int rows_per_kv_head);

// Split-KV schedule, computed on the GPU from device cache_seqlens without a host sync.
// Writes tile_scheduler_metadata [num_sm_parts, 8] and num_splits [batch + 1] (device).
void get_mla_metadata(const int32_t* cache_seqlens, int batch, int rows_per_kv_head,
                      int num_heads_kv, int num_sm_parts, int32_t* tile_scheduler_metadata,
                      int32_t* num_splits, cudaStream_t stream);

// Checks every shape, stride, pointer and scalar, and that no output (out, lse, o_accum,
// lse_accum) overlaps another buffer; throws Error naming the argument. Overlap is judged on
// each tensor's address range (first to last element), so interleaved layouts such as q and
// out as column slices of one buffer are refused. seqlen_q * num_heads_q is at most 65535
// (the combine's grid).
void validate(const MlaDecodeParams& p);

// Non-throwing form of validate: false and the reason in *why (if given).
bool can_implement(const MlaDecodeParams& p, std::string* why = nullptr);

// Validates, then runs the decode kernel and the split combine on `stream`.
void mla_decode(const MlaDecodeParams& p, cudaStream_t stream);

// FP8 KV-cache conversion, elementwise over token records (asynchronous on `stream`).
// quantize: n_tokens bf16 rows of 576 (row stride `src_stride` elements, >= 576, a multiple of 8)
// -> n_tokens records of 656 bytes (row stride `dst_stride` bytes, >= 656, a multiple of 16).
// scale_g = max|latent dims of group g| / 448 (1 if the group is all zero).
// dequantize: the inverse direction into bf16 rows (strides as above, swapped).
// A paged cache [num_blocks, page, h_kv, ...] that is contiguous in its leading dims is
// n_tokens = num_blocks * page * h_kv rows.
void quantize_kv_fp8(const void* src_bf16, int64_t src_stride, void* dst_fp8, int64_t dst_stride,
                     int64_t n_tokens, cudaStream_t stream);
void dequantize_kv_fp8(const void* src_fp8, int64_t src_stride, void* dst_bf16,
                       int64_t dst_stride, int64_t n_tokens, cudaStream_t stream);

// Simple GPU reference (one CTA per query row, fp32 accumulate, no splits): the test oracle
// for shapes too large for the CPU reference. Same semantics and outputs as mla_decode;
// scheduling and workspace fields are ignored.
void mla_decode_reference_gpu(const MlaDecodeParams& p, cudaStream_t stream);

}  // namespace flashmla
