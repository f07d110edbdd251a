// PyTorch binding of the flashmla C++ core: torch.ops.flash_mla.{get_mla_metadata,
// fwd_kvcache_mla}. Thin on purpose: it checks tensors, allocates outputs and workspace with
// torch (the caching allocator makes the calls CUDA-graph capturable), fills the flat
// MlaDecodeParams and calls the core on the current stream. No kernels live here.
//
// Only light torch headers are included (no torch/extension.h, no ATen/ATen.h, no pybind11)
// so that the whole binding compiles in a few seconds.

// Python.h first: it may set feature macros that the system headers below depend on.
#include <Python.h>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_runtime_api.h>

#include <cstdint>
#include <tuple>

#include "flashmla/flashmla.h"

namespace {

// TORCH_CHECK_VALUE raises c10::ValueError, which torch turns into a Python ValueError.
void check_cuda_tensor(const at::Tensor& t, const char* name, const at::Device& device) {
  TORCH_CHECK_VALUE(t.is_cuda(), name, " must be a CUDA tensor, got device ", t.device());
  TORCH_CHECK_VALUE(t.device() == device, name, " must be on ", device, " (like q), got ",
                    t.device());
}

void check_int32_vector(const at::Tensor& t, const char* name, int64_t len) {
  TORCH_CHECK_VALUE(t.scalar_type() == at::kInt, name, " must be int32, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == len, name, " must have shape [", len,
                    "], got ", t.sizes());
  TORCH_CHECK_VALUE(t.is_contiguous(), name, " must be contiguous");
}

// The core takes int sizes; anything larger than int32 is a caller error, not a wrap-around.
int as_int(int64_t v, const char* what) {
  TORCH_CHECK_VALUE(v >= INT32_MIN && v <= INT32_MAX, what, " = ", v, " does not fit in int32");
  return static_cast<int>(v);
}

// The core reports every problem as flashmla::Error; callers of the op should see the same
// ValueError as for the checks above, with the core's message (it names the argument).
template <typename F>
void call_core(F&& f) {
  try {
    f();
  } catch (const flashmla::Error& e) {
    TORCH_CHECK_VALUE(false, e.what());
  }
}

int sm_count(c10::DeviceIndex device) {
  int sms = 0;
  // An attribute query, not a stream operation: allowed during CUDA-graph capture.
  const cudaError_t err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  TORCH_CHECK(err == cudaSuccess, "flashmla: cudaDeviceGetAttribute failed: ",
              cudaGetErrorString(err));
  return sms;
}

std::tuple<at::Tensor, at::Tensor> get_mla_metadata(const at::Tensor& cache_seqlens,
                                                    int64_t num_q_tokens_per_head_k,
                                                    int64_t num_heads_k) {
  TORCH_CHECK_VALUE(cache_seqlens.is_cuda(), "cache_seqlens must be a CUDA tensor, got device ",
                    cache_seqlens.device());
  TORCH_CHECK_VALUE(cache_seqlens.dim() == 1, "cache_seqlens must be 1-D [batch], got shape ",
                    cache_seqlens.sizes());
  // (shape is [batch] by definition here; this checks dtype and contiguity)
  check_int32_vector(cache_seqlens, "cache_seqlens", cache_seqlens.size(0));
  TORCH_CHECK_VALUE(num_q_tokens_per_head_k > 0,
                    "num_q_tokens_per_head_k must be positive, got ", num_q_tokens_per_head_k);
  TORCH_CHECK_VALUE(num_heads_k > 0, "num_heads_k must be positive, got ", num_heads_k);

  const c10::cuda::CUDAGuard guard(cache_seqlens.device());
  const c10::DeviceIndex dev = cache_seqlens.device().index();
  const int batch = as_int(cache_seqlens.size(0), "cache_seqlens batch");
  const int rows = as_int(num_q_tokens_per_head_k, "num_q_tokens_per_head_k");
  const int h_kv = as_int(num_heads_k, "num_heads_k");

  int parts = 0;
  call_core([&] { parts = flashmla::num_sm_parts(sm_count(dev), rows, h_kv); });
  const auto opts = cache_seqlens.options().dtype(at::kInt);
  at::Tensor metadata = at::empty({parts, flashmla::kMetadataInts}, opts);
  at::Tensor num_splits = at::empty({batch + 1}, opts);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(dev).stream();
  call_core([&] {
    flashmla::get_mla_metadata(cache_seqlens.data_ptr<int32_t>(), batch, rows, h_kv, parts,
                               metadata.data_ptr<int32_t>(), num_splits.data_ptr<int32_t>(),
                               stream);
  });
  return {metadata, num_splits};
}

std::tuple<at::Tensor, at::Tensor> fwd_kvcache_mla(
    const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& block_table,
    const at::Tensor& cache_seqlens, int64_t head_dim_v, const at::Tensor& tile_scheduler_metadata,
    const at::Tensor& num_splits, double softmax_scale, bool causal, bool is_fp8_kvcache) {
  // Devices first: this function is also registered for CPU so that all-CPU inputs give a
  // ValueError rather than the dispatcher's NotImplementedError.
  TORCH_CHECK_VALUE(q.is_cuda(), "q must be a CUDA tensor, got device ", q.device());
  const at::Device device = q.device();
  check_cuda_tensor(k_cache, "k_cache", device);
  check_cuda_tensor(block_table, "block_table", device);
  check_cuda_tensor(cache_seqlens, "cache_seqlens", device);
  check_cuda_tensor(tile_scheduler_metadata, "tile_scheduler_metadata", device);
  check_cuda_tensor(num_splits, "num_splits", device);

  // dtypes and ranks; sizes the core cares about (576, 512, page size, head ratio) are checked
  // here too so that the message names the tensor, and again by flashmla::validate.
  const auto dtype = q.scalar_type();
  TORCH_CHECK_VALUE(dtype == at::kBFloat16 || dtype == at::kHalf,
                    "q must be bfloat16 (or float16), got ", dtype);
  const bool fp8_bytes = k_cache.scalar_type() == at::kFloat8_e4m3fn || k_cache.scalar_type() == at::kByte;
  if (is_fp8_kvcache) {
    TORCH_CHECK_VALUE(dtype == at::kBFloat16, "q must be bfloat16 with an FP8 k_cache, got ", dtype);
    TORCH_CHECK_VALUE(fp8_bytes, "k_cache must be float8_e4m3fn (or uint8) 656-byte records when "
                      "is_fp8_kvcache=True, got ", k_cache.scalar_type());
  } else {
    TORCH_CHECK_VALUE(k_cache.scalar_type() == dtype, "k_cache must have q's dtype ", dtype,
                      ", got ", k_cache.scalar_type(),
                      fp8_bytes ? " (an FP8 cache needs is_fp8_kvcache=True)" : "");
  }
  TORCH_CHECK_VALUE(q.dim() == 4, "q must be 4-D [batch, seqlen_q, num_heads_q, head_dim], got shape ",
                    q.sizes());
  TORCH_CHECK_VALUE(k_cache.dim() == 4,
                    "k_cache must be 4-D [num_blocks, page_block_size, num_heads_k, head_dim], "
                    "got shape ", k_cache.sizes());
  TORCH_CHECK_VALUE(q.size(3) == flashmla::kHeadDim, "q head_dim (last dim) must be ",
                    flashmla::kHeadDim, ", got ", q.size(3));
  if (is_fp8_kvcache) {
    TORCH_CHECK_VALUE(k_cache.size(3) == flashmla::kFp8TokenBytes,
                      "k_cache last dim must be ", flashmla::kFp8TokenBytes,
                      " bytes (FP8 with scale) when is_fp8_kvcache=True, got ", k_cache.size(3));
  } else {
    TORCH_CHECK_VALUE(k_cache.size(3) == q.size(3), "k_cache head_dim (last dim) must be ",
                      q.size(3), " like q, got ", k_cache.size(3));
  }
  TORCH_CHECK_VALUE(k_cache.size(1) <= flashmla::kMaxPageBlockSize &&
                        flashmla::is_supported_page_block_size(static_cast<int>(k_cache.size(1))),
                    "k_cache page_block_size (dim 1) must be a power of two from 1 to ",
                    flashmla::kMaxPageBlockSize, ", got ", k_cache.size(1));
  TORCH_CHECK_VALUE(head_dim_v == flashmla::kHeadDimV, "head_dim_v must be ",
                    flashmla::kHeadDimV, ", got ", head_dim_v);
  TORCH_CHECK_VALUE(q.stride(3) == 1, "q must be contiguous in its last dim");
  TORCH_CHECK_VALUE(k_cache.stride(3) == 1, "k_cache must be contiguous in its last dim");

  const int64_t batch = q.size(0), seqlen_q = q.size(1), h_q = q.size(2);
  TORCH_CHECK_VALUE(batch > 0 && seqlen_q > 0 && h_q > 0,
                    "q must have batch, seqlen_q and num_heads_q >= 1, got shape ", q.sizes());
  const int64_t h_kv = k_cache.size(2);
  TORCH_CHECK_VALUE(h_kv > 0 && h_q % h_kv == 0, "k_cache num_heads_k (dim 2) = ", h_kv,
                    " must divide q's num_heads_q = ", h_q);

  TORCH_CHECK_VALUE(block_table.scalar_type() == at::kInt, "block_table must be int32, got ",
                    block_table.scalar_type());
  TORCH_CHECK_VALUE(block_table.dim() == 2 && block_table.size(0) == batch,
                    "block_table must have shape [", batch, ", max_blocks_per_seq], got ",
                    block_table.sizes());
  TORCH_CHECK_VALUE(block_table.stride(1) == 1, "block_table must be contiguous in its last dim");
  check_int32_vector(cache_seqlens, "cache_seqlens", batch);
  TORCH_CHECK_VALUE(tile_scheduler_metadata.scalar_type() == at::kInt,
                    "tile_scheduler_metadata must be int32, got ",
                    tile_scheduler_metadata.scalar_type());
  TORCH_CHECK_VALUE(tile_scheduler_metadata.dim() == 2 &&
                        tile_scheduler_metadata.size(1) == flashmla::kMetadataInts &&
                        tile_scheduler_metadata.size(0) > 0,
                    "tile_scheduler_metadata must have shape [num_sm_parts, ",
                    flashmla::kMetadataInts, "], got ", tile_scheduler_metadata.sizes());
  TORCH_CHECK_VALUE(tile_scheduler_metadata.is_contiguous(),
                    "tile_scheduler_metadata must be contiguous");
  check_int32_vector(num_splits, "num_splits", batch + 1);

  const c10::cuda::CUDAGuard guard(device);
  const int rows = as_int(seqlen_q * (h_q / h_kv), "q seqlen_q * num_heads_q / num_heads_k");
  const int parts = as_int(tile_scheduler_metadata.size(0), "tile_scheduler_metadata num_sm_parts");
  const int b = as_int(batch, "q batch"), kv_heads = as_int(h_kv, "k_cache num_heads_k");

  at::Tensor out = at::empty({batch, seqlen_q, h_q, head_dim_v}, q.options());
  at::Tensor lse = at::empty({batch, h_q, seqlen_q}, q.options().dtype(at::kFloat));
  // Split-KV workspace, sized from shapes only (never from sequence lengths), so that a
  // captured graph stays valid for any lengths replayed into it.
  size_t o_accum_elems = 0, lse_accum_elems = 0;
  call_core([&] {  // these reject batch == 0 etc. with a flashmla::Error
    o_accum_elems = flashmla::o_accum_elems(b, parts, kv_heads, rows);
    lse_accum_elems = flashmla::lse_accum_elems(b, parts, kv_heads, rows);
  });
  const auto f32 = q.options().dtype(at::kFloat);
  at::Tensor o_accum = at::empty({static_cast<int64_t>(o_accum_elems)}, q.options());  // out's dtype
  at::Tensor lse_accum = at::empty({static_cast<int64_t>(lse_accum_elems)}, f32);

  flashmla::MlaDecodeParams p;
  p.dtype = dtype == at::kBFloat16 ? flashmla::DType::kBF16 : flashmla::DType::kFP16;
  p.kv_format = is_fp8_kvcache ? flashmla::KvFormat::kFP8WithScale : flashmla::KvFormat::kSameAsQ;
  p.batch = b;
  p.seqlen_q = as_int(seqlen_q, "q seqlen_q");
  p.num_heads_q = as_int(h_q, "q num_heads_q");
  p.num_heads_kv = kv_heads;
  p.head_dim = as_int(q.size(3), "q head_dim");
  p.head_dim_v = as_int(head_dim_v, "head_dim_v");
  p.page_block_size = as_int(k_cache.size(1), "k_cache page_block_size");
  p.num_blocks = as_int(k_cache.size(0), "k_cache num_blocks");
  p.max_blocks_per_seq = as_int(block_table.size(1), "block_table max_blocks_per_seq");
  p.softmax_scale = static_cast<float>(softmax_scale);
  p.causal = causal;

  p.q = q.data_ptr();
  p.q_batch_stride = q.stride(0);
  p.q_seq_stride = q.stride(1);
  p.q_head_stride = q.stride(2);
  p.k_cache = k_cache.data_ptr();
  p.k_block_stride = k_cache.stride(0);
  p.k_row_stride = k_cache.stride(1);
  p.k_head_stride = k_cache.stride(2);
  p.block_table = block_table.data_ptr<int32_t>();
  p.block_table_batch_stride = block_table.stride(0);
  p.cache_seqlens = cache_seqlens.data_ptr<int32_t>();

  p.out = out.data_ptr();
  p.o_batch_stride = out.stride(0);
  p.o_seq_stride = out.stride(1);
  p.o_head_stride = out.stride(2);
  p.lse = lse.data_ptr<float>();

  p.tile_scheduler_metadata = tile_scheduler_metadata.data_ptr<int32_t>();
  p.num_sm_parts = parts;
  p.num_splits = num_splits.data_ptr<int32_t>();
  p.o_accum = o_accum.data_ptr();
  p.lse_accum = lse_accum.data_ptr<float>();

  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device.index()).stream();
  call_core([&] { flashmla::mla_decode(p, stream); });
  return {out, lse};
}

// FP8 cache conversion over the token records of a tensor [..., 576] bf16 <-> [..., 656]
// float8_e4m3fn bytes. Leading dims are flattened (a copy only if they are not uniform);
// `convert(src, src_stride, dst, dst_stride, n, stream)` is the core's function.
template <typename Convert>
at::Tensor convert_records(const at::Tensor& src, int64_t dst_width, at::ScalarType dst_dtype,
                           Convert convert) {
  const c10::cuda::CUDAGuard guard(src.device());
  at::Tensor rows = src.reshape({-1, src.size(-1)});
  // The core reads each record as 16-byte chunks: rows must start 16-byte aligned, one row
  // after the other at a stride of whole chunks, each contiguous. Any other view (a column
  // slice, an odd row pitch) is copied into fresh memory; a single row's stride is never used.
  const int64_t n = rows.size(0);
  const int64_t chunk = 16 / rows.element_size();
  const bool usable = n == 0 || (rows.stride(1) == 1 && reinterpret_cast<uintptr_t>(rows.data_ptr()) % 16 == 0 &&
                                 (n == 1 || rows.stride(0) % chunk == 0));
  if (!usable) rows = rows.clone(at::MemoryFormat::Contiguous);
  const int64_t row_stride = n <= 1 ? rows.size(1) : rows.stride(0);
  auto out_shape = src.sizes().vec();
  out_shape.back() = dst_width;
  at::Tensor out = at::empty(out_shape, src.options().dtype(dst_dtype));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(src.device().index()).stream();
  call_core([&] { convert(rows.data_ptr(), row_stride, out.data_ptr(), dst_width, n, stream); });
  return out;
}

at::Tensor quantize_kv_fp8(const at::Tensor& kv) {
  TORCH_CHECK_VALUE(kv.is_cuda(), "kv must be a CUDA tensor, got device ", kv.device());
  TORCH_CHECK_VALUE(kv.scalar_type() == at::kBFloat16, "kv must be bfloat16, got ", kv.scalar_type());
  TORCH_CHECK_VALUE(kv.dim() >= 1 && kv.size(-1) == flashmla::kHeadDim, "kv last dim must be ",
                    flashmla::kHeadDim, ", got shape ", kv.sizes());
  return convert_records(kv, flashmla::kFp8TokenBytes, at::kFloat8_e4m3fn,
                         flashmla::quantize_kv_fp8);
}

at::Tensor dequantize_kv_fp8(const at::Tensor& kv_fp8) {
  TORCH_CHECK_VALUE(kv_fp8.is_cuda(), "kv_fp8 must be a CUDA tensor, got device ", kv_fp8.device());
  TORCH_CHECK_VALUE(kv_fp8.scalar_type() == at::kFloat8_e4m3fn || kv_fp8.scalar_type() == at::kByte,
                    "kv_fp8 must be float8_e4m3fn or uint8, got ", kv_fp8.scalar_type());
  TORCH_CHECK_VALUE(kv_fp8.dim() >= 1 && kv_fp8.size(-1) == flashmla::kFp8TokenBytes,
                    "kv_fp8 last dim must be ", flashmla::kFp8TokenBytes, ", got shape ",
                    kv_fp8.sizes());
  return convert_records(kv_fp8, flashmla::kHeadDim, at::kBFloat16, flashmla::dequantize_kv_fp8);
}

// _C.num_sm_parts(num_sms, rows_per_kv_head, num_heads_kv): the core's own formula, for the
// Python fake (meta) kernel of get_mla_metadata, so that the shapes torch.compile traces can
// never disagree with the real op.
PyObject* py_num_sm_parts(PyObject* /*self*/, PyObject* args) {
  int sms = 0, rows = 0, h_kv = 0;
  if (!PyArg_ParseTuple(args, "iii", &sms, &rows, &h_kv)) return nullptr;
  try {
    return PyLong_FromLong(flashmla::num_sm_parts(sms, rows, h_kv));
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_ValueError, e.what());
    return nullptr;
  }
}

PyMethodDef methods[] = {
    {"num_sm_parts", py_num_sm_parts, METH_VARARGS,
     "num_sm_parts(num_sms, rows_per_kv_head, num_heads_kv) -> int"},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_C", "flashmla torch ops (thin binding)", -1, methods,
    nullptr, nullptr, nullptr, nullptr,
};

}  // namespace

// Importing flash_mla._C loads this library; its static initializers below register the ops.
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module_def); }

TORCH_LIBRARY(flash_mla, m) {
  m.def(
      "get_mla_metadata(Tensor cache_seqlens, int num_q_tokens_per_head_k, int num_heads_k)"
      " -> (Tensor, Tensor)");
  m.def(
      "fwd_kvcache_mla(Tensor q, Tensor k_cache, Tensor block_table, Tensor cache_seqlens,"
      " int head_dim_v, Tensor tile_scheduler_metadata, Tensor num_splits,"
      " float softmax_scale, bool causal, bool is_fp8_kvcache=False) -> (Tensor, Tensor)");
  m.def("quantize_kv_fp8(Tensor kv) -> Tensor");
  m.def("dequantize_kv_fp8(Tensor kv_fp8) -> Tensor");
}

TORCH_LIBRARY_IMPL(flash_mla, CUDA, m) {
  m.impl("get_mla_metadata", &get_mla_metadata);
  m.impl("fwd_kvcache_mla", &fwd_kvcache_mla);
  m.impl("quantize_kv_fp8", &quantize_kv_fp8);
  m.impl("dequantize_kv_fp8", &dequantize_kv_fp8);
}

// CPU inputs reach these only to be told, as a ValueError naming the argument, that they must
// be on the GPU (both functions check devices before anything else).
TORCH_LIBRARY_IMPL(flash_mla, CPU, m) {
  m.impl("get_mla_metadata", &get_mla_metadata);
  m.impl("fwd_kvcache_mla", &fwd_kvcache_mla);
}
