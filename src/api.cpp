// Host side of the public API: argument checking, workspace sizing and the launch sequence.
//
// What validate() cannot check: cache_seqlens, block_table and the metadata live in device
// memory, and reading them would need a host sync (and would break CUDA-graph capture). The
// caller must guarantee 0 <= cache_seqlens[i] <= max_blocks_per_seq * page_block_size, that
// every block_table entry covering a live token is in [0, num_blocks), and that
// tile_scheduler_metadata and num_splits come from one get_mla_metadata call on these same
// cache_seqlens. The kernels only keep a broken contract from hanging or reading or writing
// out of bounds: a length outside [0, max_blocks_per_seq * page_block_size] is cut to the
// table row and its sequence's output is NaN, as is a sequence that a mismatched metadata pair
// leaves unmergeable. An out-of-range page id is read as zeros (TMA) or as page 0 (the cp.async
// gather of pages below 16 tokens): a wrong answer for its sequence, not a fault. The sizes of
// o_accum / lse_accum are not part of MlaDecodeParams either: allocate at least
// o_accum_elems() / lse_accum_elems() for the same batch, num_sm_parts and heads.
#include <algorithm>
#include <atomic>
#include <climits>
#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>

#include "flashmla/flashmla.h"
#include "internal.h"
#include "scheduler/plan.h"

namespace flashmla {
namespace {

template <class T>
std::string str(T v) {
  std::ostringstream s;
  s << v;
  return s.str();
}

void require_at_least(const char* name, int64_t value, int64_t min) {
  if (value < min) throw Error(std::string(name) + " must be >= " + str(min) + ", got " + str(value));
}

void require_equal(const char* name, int64_t value, int64_t expected) {
  if (value != expected)
    throw Error(std::string(name) + " must be " + str(expected) + ", got " + str(value));
}

void require_non_null(const char* name, const void* ptr) {
  if (ptr == nullptr) throw Error(std::string(name) + " must not be null");
}

void require_aligned(const char* name, const void* ptr, uintptr_t bytes) {
  if (reinterpret_cast<uintptr_t>(ptr) % bytes != 0)
    throw Error(std::string(name) + " must be " + str(bytes) + "-byte aligned, got address " +
                str(ptr));
}

// The runtime of a CPU-only machine cannot classify pointers at all; validation of shapes
// must still work there (unit tests, building the params before a device is picked).
bool cuda_device_present() {
  // Only a success is kept: a failure (e.g. in a forked child where CUDA could not start yet)
  // must not switch the pointer checks off for the rest of the process.
  static std::atomic<bool> present{false};
  if (present.load(std::memory_order_relaxed)) return true;
  detail::RelaxedCaptureScope relaxed;  // the first call may come while a graph is being captured
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();  // do not leave our probe's error for the caller to find
    return false;
  }
  if (n > 0) present.store(true, std::memory_order_relaxed);
  return n > 0;
}

int current_device() {
  int dev = 0;
  detail::check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
  return dev;
}

// `dev`: the current device (current_device(), queried once per call, not per buffer).
void require_device_pointer(const char* name, const void* ptr, int dev) {
  cudaPointerAttributes attr{};
  const cudaError_t err = cudaPointerGetAttributes(&attr, ptr);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    throw Error(std::string(name) + " is not a valid pointer (cudaPointerGetAttributes: " +
                cudaGetErrorString(err) + ")");
  }
  if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged)
    throw Error(std::string(name) + " must point to device or managed memory, got " +
                (attr.type == cudaMemoryTypeHost ? "pinned host memory" : "unregistered host memory"));
  // The kernels run on the current device; another GPU's memory is an illegal address there
  // (without peer access), which would end the CUDA context instead of raising an error.
  if (attr.type == cudaMemoryTypeDevice && attr.device != dev)
    throw Error(std::string(name) + " is on device " + str(attr.device) + ", but the current device is " +
                str(dev) + " (the kernels run on the current device)");
}

// A device buffer argument: its name (for the message) and the alignment the kernels need.
struct Buffer {
  const char* name;
  const void* ptr;
  uintptr_t alignment;
};

template <size_t N>
void require_buffers(const Buffer (&buffers)[N]) {
  for (const Buffer& b : buffers) require_non_null(b.name, b.ptr);
  for (const Buffer& b : buffers) require_aligned(b.name, b.ptr, b.alignment);
}

// Only where a device exists, so that the CPU-only tests can validate with fake pointers.
template <size_t N>
void require_device_buffers(const Buffer (&buffers)[N]) {
  if (!cuda_device_present()) return;
  // Pointer queries are not stream work, but a thread in global capture mode may refuse any
  // call it deems unsafe and invalidate the capture: relaxed mode keeps validate() (and so
  // mla_decode) usable inside torch.cuda.graph capture.
  detail::RelaxedCaptureScope relaxed;
  const int dev = current_device();
  for (const Buffer& b : buffers) require_device_pointer(b.name, b.ptr, dev);
}

// One dimension of a strided tensor whose innermost dimension is contiguous.
struct Dim {
  const char* stride_name;
  int64_t extent;
  int64_t stride;  // elements
};

// Vector loads and TMA read 16-byte chunks, so every stride that is actually stepped must
// be a whole number of 16 bytes: `chunk` elements (8 for 16-bit tensors, 16 for FP8 records). Rows must not overlap: sort the stepped dims by
// stride and require each to clear the span of everything inside it. A dimension of extent 1
// is never stepped, so its stride is free (PyTorch gives such dims arbitrary strides) unless
// `strict` - k_cache strides all go into a TMA descriptor whatever the extent.
// Returns the tensor's span in elements (first element to one past the last).
template <int N>
int64_t check_layout(const char* tensor, int64_t inner_extent, Dim (&dims)[N], bool strict,
                     int64_t chunk = 8) {
  Dim stepped[N];
  int n = 0;
  for (const Dim& d : dims) {
    if (d.extent <= 1 && !strict) continue;
    if (d.stride <= 0 || d.stride % chunk != 0)
      throw Error(std::string(d.stride_name) + " must be a positive multiple of " + str(chunk) +
                  " elements (16 bytes), got " + str(d.stride));
    if (d.extent > 1) stepped[n++] = d;
  }
  std::stable_sort(stepped, stepped + n, [](const Dim& a, const Dim& b) { return a.stride < b.stride; });
  int64_t span = inner_extent;  // elements from the first to one past the last of the inner dims
  for (int i = 0; i < n; ++i) {
    const Dim& d = stepped[i];
    if (d.stride < span)
      throw Error(std::string(d.stride_name) + " must be >= " + str(span) + " so that " + tensor +
                  " rows do not overlap, got " + str(d.stride));
    if (d.stride > (INT64_MAX - span) / (d.extent - 1))
      throw Error(std::string(d.stride_name) + " is too large, got " + str(d.stride));
    span += d.stride * (d.extent - 1);
  }
  return span;
}

// A buffer's bytes, for the overlap checks: [begin, begin + bytes).
struct Span {
  const char* name;
  const void* begin;
  int64_t bytes;
};

// Every written buffer against every other one: the kernels read and write them concurrently,
// so an output aliasing an input (or another output) gives a wrong answer, not an error.
template <size_t W, size_t R>
void require_disjoint(const Span (&written)[W], const Span (&read)[R]) {
  for (size_t i = 0; i < W; ++i) {
    for (size_t j = i + 1; j < W; ++j)
      detail::require_disjoint(written[i].name, written[i].begin, written[i].bytes,
                               written[j].name, written[j].begin, written[j].bytes);
    for (const Span& r : read)
      detail::require_disjoint(r.name, r.begin, r.bytes, written[i].name, written[i].begin, written[i].bytes);
  }
}

// The decode's inputs and outputs as byte spans (layouts already checked).
struct ProblemSpans {
  Span read[4];   // q, k_cache, block_table, cache_seqlens
  Span written[2];  // out, lse
};

ProblemSpans problem_spans(const MlaDecodeParams& p, int64_t q_bytes, int64_t k_bytes,
                           int64_t table_ints, int64_t out_bytes) {
  return {{{"q", p.q, q_bytes},
           {"k_cache", p.k_cache, k_bytes},
           {"block_table", p.block_table, 4 * table_ints},
           {"cache_seqlens", p.cache_seqlens, int64_t{4} * p.batch}},
          {{"out", p.out, out_bytes},
           {"lse", p.lse, int64_t{4} * p.batch * p.seqlen_q * p.num_heads_q}}};
}

// Shapes, scalars, q / k_cache / block_table / seqlens / out / lse: what both the decode
// path and the GPU reference read (`decode`: also the decode path's own limits). Returns their
// byte spans for validate_schedule.
ProblemSpans validate_problem(const MlaDecodeParams& p, bool decode) {
  if (p.dtype != DType::kBF16 && p.dtype != DType::kFP16)
    throw Error("dtype must be kBF16 or kFP16, got " + str(static_cast<int>(p.dtype)));
  if (p.kv_format != KvFormat::kSameAsQ && p.kv_format != KvFormat::kFP8WithScale)
    throw Error("kv_format must be kSameAsQ or kFP8WithScale, got " +
                str(static_cast<int>(p.kv_format)));
  const bool fp8 = p.kv_format == KvFormat::kFP8WithScale;
  if (fp8 && p.dtype != DType::kBF16)
    throw Error("dtype must be kBF16 when kv_format is kFP8WithScale (q and out are bf16), got " +
                std::string(p.dtype == DType::kFP16 ? "kFP16" : str(static_cast<int>(p.dtype))));

  require_at_least("batch", p.batch, 1);
  require_at_least("seqlen_q", p.seqlen_q, 1);
  require_at_least("num_heads_q", p.num_heads_q, 1);
  require_at_least("num_heads_kv", p.num_heads_kv, 1);
  if (p.num_heads_q % p.num_heads_kv != 0)
    throw Error("num_heads_q must be a multiple of num_heads_kv, got num_heads_q = " +
                str(p.num_heads_q) + ", num_heads_kv = " + str(p.num_heads_kv));
  if (static_cast<int64_t>(p.seqlen_q) * p.num_heads_q > INT_MAX)
    throw Error("seqlen_q * num_heads_q must fit in int32, got " +
                str(static_cast<int64_t>(p.seqlen_q) * p.num_heads_q));
  // The combine's grid has a CTA row per query row of a batch entry (grid.y <= 65535).
  if (decode && p.seqlen_q * p.num_heads_q > 65535)
    throw Error("seqlen_q * num_heads_q must be <= 65535, got " + str(p.seqlen_q * p.num_heads_q));
  require_equal("head_dim", p.head_dim, kHeadDim);
  require_equal("head_dim_v", p.head_dim_v, kHeadDimV);
  if (!is_supported_page_block_size(p.page_block_size))
    throw Error("page_block_size must be a power of two from 1 to " + str(kMaxPageBlockSize) +
                " (1, 2, 4, ..., 256), got " + str(p.page_block_size));
  require_at_least("num_blocks", p.num_blocks, 1);
  require_at_least("max_blocks_per_seq", p.max_blocks_per_seq, 1);
  if (!std::isfinite(p.softmax_scale) || p.softmax_scale <= 0.f)
    throw Error("softmax_scale must be finite and > 0, got " + str(p.softmax_scale));

  // 16 bytes where the kernels use vector loads or TMA, 4 for int32/fp32 arrays.
  const Buffer buffers[] = {{"q", p.q, 16},
                            {"k_cache", p.k_cache, 16},
                            {"block_table", p.block_table, 4},
                            {"cache_seqlens", p.cache_seqlens, 4},
                            {"out", p.out, 16},
                            {"lse", p.lse, 4}};
  require_buffers(buffers);

  Dim q_dims[] = {{"q_head_stride", p.num_heads_q, p.q_head_stride},
                  {"q_seq_stride", p.seqlen_q, p.q_seq_stride},
                  {"q_batch_stride", p.batch, p.q_batch_stride}};
  const int64_t q_span = check_layout("q", kHeadDim, q_dims, /*strict=*/false);
  Dim k_dims[] = {{"k_head_stride", p.num_heads_kv, p.k_head_stride},
                  {"k_row_stride", p.page_block_size, p.k_row_stride},
                  {"k_block_stride", p.num_blocks, p.k_block_stride}};
  const int64_t k_bytes = fp8 ? check_layout("k_cache", kFp8TokenBytes, k_dims, /*strict=*/true, /*chunk=*/16)
                              : 2 * check_layout("k_cache", kHeadDim, k_dims, /*strict=*/true);
  Dim o_dims[] = {{"o_head_stride", p.num_heads_q, p.o_head_stride},
                  {"o_seq_stride", p.seqlen_q, p.o_seq_stride},
                  {"o_batch_stride", p.batch, p.o_batch_stride}};
  const int64_t o_span = check_layout("out", kHeadDimV, o_dims, /*strict=*/false);
  if (p.batch > 1 && p.block_table_batch_stride < p.max_blocks_per_seq)
    throw Error("block_table_batch_stride must be >= max_blocks_per_seq (" +
                str(p.max_blocks_per_seq) + "), got " + str(p.block_table_batch_stride));

  const int64_t table_ints = static_cast<int64_t>(p.batch - 1) * p.block_table_batch_stride + p.max_blocks_per_seq;
  const ProblemSpans spans = problem_spans(p, 2 * q_span, k_bytes, table_ints, 2 * o_span);
  require_disjoint(spans.written, spans.read);

  require_device_buffers(buffers);
  return spans;
}

// The split-KV schedule and its workspace, used by mla_decode only.
void validate_schedule(const MlaDecodeParams& p, const ProblemSpans& problem) {
  require_at_least("num_sm_parts", p.num_sm_parts, 1);
  const Buffer buffers[] = {{"tile_scheduler_metadata", p.tile_scheduler_metadata, 16},
                            {"num_splits", p.num_splits, 4},
                            {"o_accum", p.o_accum, 16},
                            {"lse_accum", p.lse_accum, 4}};
  require_buffers(buffers);

  const int rows = p.seqlen_q * (p.num_heads_q / p.num_heads_kv);
  const Span written[] = {
      problem.written[0], problem.written[1],
      {"o_accum", p.o_accum, 2 * static_cast<int64_t>(o_accum_elems(p.batch, p.num_sm_parts, p.num_heads_kv, rows))},
      {"lse_accum", p.lse_accum, 4 * static_cast<int64_t>(lse_accum_elems(p.batch, p.num_sm_parts, p.num_heads_kv, rows))}};
  const Span read[] = {problem.read[0], problem.read[1], problem.read[2], problem.read[3],
                       {"tile_scheduler_metadata", p.tile_scheduler_metadata, int64_t{4} * kMetadataInts * p.num_sm_parts},
                       {"num_splits", p.num_splits, int64_t{4} * (p.batch + 1)}};
  require_disjoint(written, read);
  require_device_buffers(buffers);
}

void check_sizes(int batch, int num_parts, int num_heads_kv, int rows_per_kv_head) {
  require_at_least("batch", batch, 1);
  require_at_least("num_sm_parts", num_parts, 1);
  require_at_least("num_heads_kv", num_heads_kv, 1);
  require_at_least("rows_per_kv_head", rows_per_kv_head, 1);
}

}  // namespace

int num_sm_parts(int num_sms, int rows_per_kv_head, int num_heads_kv) {
  require_at_least("num_sms", num_sms, 1);
  require_at_least("rows_per_kv_head", rows_per_kv_head, 1);
  require_at_least("num_heads_kv", num_heads_kv, 1);
  const int tiles = (rows_per_kv_head + kTileRows - 1) / kTileRows;
  return std::max(1, num_sms / num_heads_kv / tiles);
}

size_t o_accum_elems(int batch, int num_sm_parts, int num_heads_kv, int rows_per_kv_head) {
  check_sizes(batch, num_sm_parts, num_heads_kv, rows_per_kv_head);
  // Split pieces number at most batch + num_sm_parts - 1 (each part adds at most one cut).
  return (static_cast<size_t>(batch) + num_sm_parts) * num_heads_kv * rows_per_kv_head * kHeadDimV;
}

size_t lse_accum_elems(int batch, int num_sm_parts, int num_heads_kv, int rows_per_kv_head) {
  check_sizes(batch, num_sm_parts, num_heads_kv, rows_per_kv_head);
  return (static_cast<size_t>(batch) + num_sm_parts) * num_heads_kv * rows_per_kv_head;
}

void get_mla_metadata(const int32_t* cache_seqlens, int batch, int rows_per_kv_head,
                      int num_heads_kv, int num_sm_parts, int32_t* tile_scheduler_metadata,
                      int32_t* num_splits, cudaStream_t stream) {
  check_sizes(batch, num_sm_parts, num_heads_kv, rows_per_kv_head);
  require_non_null("cache_seqlens", cache_seqlens);
  require_non_null("tile_scheduler_metadata", tile_scheduler_metadata);
  require_non_null("num_splits", num_splits);
  require_aligned("tile_scheduler_metadata", tile_scheduler_metadata, 16);
  // The plan is written while the lengths are read (one CTA): overlaps would plan from lengths
  // it has half overwritten.
  const int64_t meta_bytes = int64_t{4} * kMetadataInts * num_sm_parts, splits_bytes = int64_t{4} * (batch + 1);
  detail::require_disjoint("cache_seqlens", cache_seqlens, int64_t{4} * batch, "tile_scheduler_metadata",
                           tile_scheduler_metadata, meta_bytes);
  detail::require_disjoint("cache_seqlens", cache_seqlens, int64_t{4} * batch, "num_splits", num_splits,
                           splits_bytes);
  detail::require_disjoint("tile_scheduler_metadata", tile_scheduler_metadata, meta_bytes, "num_splits",
                           num_splits, splits_bytes);
  if (cuda_device_present()) {
    detail::RelaxedCaptureScope relaxed;
    const int dev = current_device();
    require_device_pointer("cache_seqlens", cache_seqlens, dev);
    require_device_pointer("tile_scheduler_metadata", tile_scheduler_metadata, dev);
    require_device_pointer("num_splits", num_splits, dev);
  }
  detail::launch_metadata(cache_seqlens, batch, num_sm_parts,
                          plan::split_overhead_blocks(rows_per_kv_head), tile_scheduler_metadata,
                          num_splits, stream);
}

void validate(const MlaDecodeParams& p) {
  validate_schedule(p, validate_problem(p, /*decode=*/true));
}

bool can_implement(const MlaDecodeParams& p, std::string* why) {
  try {
    validate(p);
  } catch (const Error& e) {
    if (why) *why = e.what();
    return false;
  }
  if (why) why->clear();
  return true;
}

void mla_decode(const MlaDecodeParams& p, cudaStream_t stream) {
  validate(p);
  detail::launch_decode_sm90(p, stream);
  detail::launch_combine(p, stream);
}

void mla_decode_reference_gpu(const MlaDecodeParams& p, cudaStream_t stream) {
  validate_problem(p, /*decode=*/false);
  detail::launch_reference_gpu(p, stream);
}

}  // namespace flashmla
