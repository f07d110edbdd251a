// Argument checking of the public API. Runs without a GPU: the parameter block then holds
// fake (non-null, aligned) addresses, since pointer kinds cannot be classified there. With a
// GPU present the addresses are real allocations so the pointer-kind check passes too.
#include <gtest/gtest.h>

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "flashmla/flashmla.h"

namespace {

using flashmla::MlaDecodeParams;

constexpr int kBatch = 2, kSeqQ = 2, kHeadsQ = 16, kHeadsKV = 1, kBlocks = 8, kMaxBlocks = 4;
constexpr int kParts = 4;
constexpr int kRows = kSeqQ * kHeadsQ / kHeadsKV;

bool device_present() {
  static const bool present = [] {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      (void)cudaGetLastError();
      return false;
    }
    return n > 0;
  }();
  return present;
}

// Backing storage of one valid parameter block, allocated once per process.
struct Buffers {
  void *q, *k, *out, *lse, *table, *seqlens, *meta, *splits, *o_accum, *lse_accum;

  Buffers() {
    const size_t sizes[] = {
        size_t(kBatch) * kSeqQ * kHeadsQ * 576 * 2,
        size_t(kBlocks) * 64 * kHeadsKV * 576 * 2,
        size_t(kBatch) * kSeqQ * kHeadsQ * 512 * 2,
        size_t(kBatch) * kHeadsQ * kSeqQ * 4,
        size_t(kBatch) * kMaxBlocks * 4,
        size_t(kBatch) * 4,
        size_t(kParts) * flashmla::kMetadataInts * 4,
        size_t(kBatch + 1) * 4,
        flashmla::o_accum_elems(kBatch, kParts, kHeadsKV, kRows) * 2,
        flashmla::lse_accum_elems(kBatch, kParts, kHeadsKV, kRows) * 4,
    };
    void** slots[] = {&q, &k, &out, &lse, &table, &seqlens, &meta, &splits, &o_accum, &lse_accum};
    for (int i = 0; i < 10; ++i) {
      if (device_present()) {
        // Twice the dense size: the padded layouts below must stay inside their own buffer,
        // or the overlap checks would (rightly) refuse them.
        if (cudaMalloc(slots[i], 2 * sizes[i]) != cudaSuccess) std::abort();
      } else {
        // Distinct, 4 KiB-aligned, never dereferenced.
        *slots[i] = reinterpret_cast<void*>(uintptr_t(0x100000) * (i + 1));
      }
    }
  }
};

const Buffers& buffers() {
  static const Buffers b;  // device memory intentionally lives until process exit
  return b;
}

MlaDecodeParams valid_params() {
  const Buffers& buf = buffers();
  MlaDecodeParams p;
  p.batch = kBatch;
  p.seqlen_q = kSeqQ;
  p.num_heads_q = kHeadsQ;
  p.num_heads_kv = kHeadsKV;
  p.num_blocks = kBlocks;
  p.max_blocks_per_seq = kMaxBlocks;
  p.softmax_scale = 1.f / std::sqrt(576.f);
  p.causal = true;
  p.q = buf.q;
  p.q_head_stride = 576;
  p.q_seq_stride = kHeadsQ * 576;
  p.q_batch_stride = kSeqQ * kHeadsQ * 576;
  p.k_cache = buf.k;
  p.k_head_stride = 576;
  p.k_row_stride = kHeadsKV * 576;
  p.k_block_stride = 64 * kHeadsKV * 576;
  p.block_table = static_cast<const int32_t*>(buf.table);
  p.block_table_batch_stride = kMaxBlocks;
  p.cache_seqlens = static_cast<const int32_t*>(buf.seqlens);
  p.out = buf.out;
  p.o_head_stride = 512;
  p.o_seq_stride = kHeadsQ * 512;
  p.o_batch_stride = kSeqQ * kHeadsQ * 512;
  p.lse = static_cast<float*>(buf.lse);
  p.tile_scheduler_metadata = static_cast<const int32_t*>(buf.meta);
  p.num_sm_parts = kParts;
  p.num_splits = static_cast<const int32_t*>(buf.splits);
  p.o_accum = buf.o_accum;
  p.lse_accum = static_cast<float*>(buf.lse_accum);
  return p;
}

template <class T>
T* offset_bytes(T* p, int bytes) {
  return reinterpret_cast<T*>(reinterpret_cast<uintptr_t>(p) + bytes);
}

// Pages of `page` tokens over the same k_cache bytes, rows dense as in valid_params.
void set_page(MlaDecodeParams& p, int page) {
  p.page_block_size = page;
  p.k_block_stride = static_cast<int64_t>(page) * p.k_row_stride;
  p.num_blocks = std::max(1, kBlocks * 64 / page);
}

struct BadCase {
  const char* label;
  std::function<void(MlaDecodeParams&)> mutate;
  const char* expect;  // substring of the error message
};

std::vector<BadCase> bad_cases() {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  return {
      {"dtype value", [](auto& p) { p.dtype = static_cast<flashmla::DType>(7); }, "dtype"},
      {"batch 0", [](auto& p) { p.batch = 0; }, "batch"},
      {"batch -1", [](auto& p) { p.batch = -1; }, "batch"},
      {"seqlen_q 0", [](auto& p) { p.seqlen_q = 0; }, "seqlen_q"},
      {"heads 0", [](auto& p) { p.num_heads_q = 0; }, "num_heads_q"},
      {"kv heads 0", [](auto& p) { p.num_heads_kv = 0; }, "num_heads_kv"},
      {"kv heads not dividing", [](auto& p) { p.num_heads_kv = 3; }, "num_heads_kv"},
      {"head_dim", [](auto& p) { p.head_dim = 512; }, "head_dim must be 576, got 512"},
      {"head_dim_v", [](auto& p) { p.head_dim_v = 576; }, "head_dim_v must be 512, got 576"},
      {"page size 0", [](auto& p) { p.page_block_size = 0; }, "page_block_size"},
      {"page size 3", [](auto& p) { p.page_block_size = 3; }, "page_block_size"},
      {"page size 48", [](auto& p) { p.page_block_size = 48; }, "page_block_size"},
      {"page size -64", [](auto& p) { p.page_block_size = -64; }, "page_block_size"},
      // Strides grown with the page, so that only the page size itself is wrong.
      {"page size 512", [](auto& p) { set_page(p, 512); }, "page_block_size"},
      {"num_blocks", [](auto& p) { p.num_blocks = 0; }, "num_blocks"},
      {"max_blocks", [](auto& p) { p.max_blocks_per_seq = 0; }, "max_blocks_per_seq"},
      {"scale 0", [](auto& p) { p.softmax_scale = 0.f; }, "softmax_scale"},
      {"scale < 0", [](auto& p) { p.softmax_scale = -0.1f; }, "softmax_scale"},
      {"scale nan", [nan](auto& p) { p.softmax_scale = nan; }, "softmax_scale"},
      {"scale inf", [inf](auto& p) { p.softmax_scale = inf; }, "softmax_scale"},
      {"null q", [](auto& p) { p.q = nullptr; }, "q must not be null"},
      {"null k", [](auto& p) { p.k_cache = nullptr; }, "k_cache"},
      {"null table", [](auto& p) { p.block_table = nullptr; }, "block_table"},
      {"null seqlens", [](auto& p) { p.cache_seqlens = nullptr; }, "cache_seqlens"},
      {"null out", [](auto& p) { p.out = nullptr; }, "out must not be null"},
      {"null lse", [](auto& p) { p.lse = nullptr; }, "lse must not be null"},
      {"null meta", [](auto& p) { p.tile_scheduler_metadata = nullptr; }, "tile_scheduler_metadata"},
      {"null splits", [](auto& p) { p.num_splits = nullptr; }, "num_splits"},
      {"null o_accum", [](auto& p) { p.o_accum = nullptr; }, "o_accum"},
      {"null lse_accum", [](auto& p) { p.lse_accum = nullptr; }, "lse_accum"},
      {"parts 0", [](auto& p) { p.num_sm_parts = 0; }, "num_sm_parts"},
      {"q misaligned", [](auto& p) { p.q = offset_bytes(p.q, 2); }, "q must be 16-byte aligned"},
      {"k misaligned", [](auto& p) { p.k_cache = offset_bytes(p.k_cache, 8); }, "k_cache must be 16-byte aligned"},
      {"out misaligned", [](auto& p) { p.out = offset_bytes(p.out, 2); }, "out must be 16-byte aligned"},
      {"lse misaligned", [](auto& p) { p.lse = offset_bytes(p.lse, 1); }, "lse"},
      {"table misaligned", [](auto& p) { p.block_table = offset_bytes(p.block_table, 2); }, "block_table"},
      {"meta misaligned", [](auto& p) { p.tile_scheduler_metadata = offset_bytes(p.tile_scheduler_metadata, 4); }, "tile_scheduler_metadata"},
      {"o_accum misaligned", [](auto& p) { p.o_accum = offset_bytes(p.o_accum, 4); }, "o_accum"},
      {"q head overlap", [](auto& p) { p.q_head_stride = 512; }, "q_head_stride"},
      {"q head unaligned", [](auto& p) { p.q_head_stride = 580; }, "q_head_stride"},
      {"q seq overlap", [](auto& p) { p.q_seq_stride = 576; }, "q_seq_stride"},
      {"q batch overlap", [](auto& p) { p.q_batch_stride = 16 * 576; }, "q_batch_stride"},
      {"q batch negative", [](auto& p) { p.q_batch_stride = -2 * 16 * 576; }, "q_batch_stride"},
      {"k head unaligned", [](auto& p) { p.k_head_stride = 4; }, "k_head_stride"},
      {"k row overlap", [](auto& p) { p.k_row_stride = 512; }, "k_row_stride"},
      {"k row unaligned", [](auto& p) { p.k_row_stride = 577; }, "k_row_stride"},
      {"k block overlap", [](auto& p) { p.k_block_stride = 576; }, "k_block_stride"},
      {"k block unaligned", [](auto& p) { p.k_block_stride = 64 * 576 + 4; }, "k_block_stride"},
      {"o head overlap", [](auto& p) { p.o_head_stride = 256; }, "o_head_stride"},
      {"o seq overlap", [](auto& p) { p.o_seq_stride = 512; }, "o_seq_stride"},
      {"o batch overlap", [](auto& p) { p.o_batch_stride = 0; }, "o_batch_stride"},
      {"o head unaligned", [](auto& p) { p.o_head_stride = 514; }, "o_head_stride"},
      {"table stride", [](auto& p) { p.block_table_batch_stride = kMaxBlocks - 1; }, "block_table_batch_stride"},
      // The combine's grid.y (one CTA row per query row); strides grown to match.
      {"rows > 65535", [](auto& p) {
         p.seqlen_q = 4097;
         p.q_batch_stride = int64_t{4097} * kHeadsQ * 576;
         p.o_batch_stride = int64_t{4097} * kHeadsQ * 512;
       }, "seqlen_q * num_heads_q must be <= 65535, got 65552"},
      // Outputs aliasing inputs or each other: the kernels read and write them concurrently.
      {"out aliases q", [](auto& p) { p.out = const_cast<void*>(p.q); }, "out must not overlap q"},
      {"lse in k_cache", [](auto& p) { p.lse = offset_bytes(static_cast<float*>(const_cast<void*>(p.k_cache)), 1024); },
       "lse must not overlap k_cache"},
      {"lse on seqlens", [](auto& p) { p.lse = reinterpret_cast<float*>(const_cast<int32_t*>(p.cache_seqlens)); },
       "lse must not overlap cache_seqlens"},
      {"out on table", [](auto& p) { p.out = const_cast<int32_t*>(p.block_table); }, "out must not overlap block_table"},
      {"o_accum aliases out", [](auto& p) { p.o_accum = p.out; }, "o_accum must not overlap out"},
      {"lse_accum in o_accum", [](auto& p) { p.lse_accum = static_cast<float*>(p.o_accum) + 64; }, "lse_accum must not overlap o_accum"},
      {"o_accum on metadata", [](auto& p) { p.o_accum = const_cast<int32_t*>(p.tile_scheduler_metadata); },
       "o_accum must not overlap tile_scheduler_metadata"},
      {"lse_accum on splits", [](auto& p) { p.lse_accum = reinterpret_cast<float*>(const_cast<int32_t*>(p.num_splits)); },
       "lse_accum must not overlap num_splits"},
  };
}

TEST(Validation, ValidParamsPass) {
  const MlaDecodeParams p = valid_params();
  EXPECT_NO_THROW(flashmla::validate(p));
  std::string why = "stale";
  EXPECT_TRUE(flashmla::can_implement(p, &why));
  EXPECT_TRUE(why.empty());
  EXPECT_TRUE(flashmla::can_implement(p));
}

TEST(Validation, EveryBadArgumentIsNamed) {
  for (const BadCase& c : bad_cases()) {
    SCOPED_TRACE(c.label);
    MlaDecodeParams p = valid_params();
    c.mutate(p);
    try {
      flashmla::validate(p);
      ADD_FAILURE() << "validate accepted " << c.label;
    } catch (const flashmla::Error& e) {
      EXPECT_NE(std::string(e.what()).find(c.expect), std::string::npos)
          << "message \"" << e.what() << "\" does not contain \"" << c.expect << "\"";
      EXPECT_EQ(std::string(e.what()).rfind("flashmla: ", 0), 0u) << e.what();
    }
    std::string why;
    EXPECT_FALSE(flashmla::can_implement(p, &why));
    EXPECT_NE(why.find(c.expect), std::string::npos) << why;
    EXPECT_FALSE(flashmla::can_implement(p));  // null `why` is allowed
    // mla_decode validates before launching anything.
    EXPECT_THROW(flashmla::mla_decode(p, nullptr), flashmla::Error);
  }
}

TEST(Validation, Fp16IsAccepted) {
  MlaDecodeParams p = valid_params();
  p.dtype = flashmla::DType::kFP16;
  std::string why;
  EXPECT_TRUE(flashmla::can_implement(p, &why)) << why;
}

TEST(Validation, PowerOfTwoPageSizesPass) {
  for (int page = 1; page <= 256; page *= 2) {
    MlaDecodeParams p = valid_params();
    set_page(p, page);
    std::string why;
    EXPECT_TRUE(flashmla::can_implement(p, &why)) << "page_block_size " << page << ": " << why;
  }
}

TEST(Validation, LegalNonDenseLayoutsPass) {
  {  // q and out stored head-major ([b, h, s, d]) and padded
    MlaDecodeParams p = valid_params();
    p.q_seq_stride = 576;
    p.q_head_stride = kSeqQ * 576;
    p.q_batch_stride = kHeadsQ * kSeqQ * 576 + 64;
    p.o_head_stride = 512 + 64;
    p.o_seq_stride = kHeadsQ * (512 + 64);
    p.o_batch_stride = kSeqQ * kHeadsQ * (512 + 64);
    EXPECT_NO_THROW(flashmla::validate(p));
  }
  {  // extents of 1 leave their strides free (PyTorch gives such dims arbitrary strides)
    MlaDecodeParams p = valid_params();
    p.seqlen_q = 1;
    p.q_seq_stride = 1;
    p.o_seq_stride = 0;
    p.batch = 1;
    p.q_batch_stride = 3;
    p.o_batch_stride = -5;
    p.block_table_batch_stride = 0;
    EXPECT_NO_THROW(flashmla::validate(p));
  }
  {  // a k_cache page padded between rows and blocks
    MlaDecodeParams p = valid_params();
    p.k_row_stride = 576 + 8;
    p.k_block_stride = 64 * (576 + 8) + 128;
    EXPECT_NO_THROW(flashmla::validate(p));
  }
  {  // two kv heads, heads interleaved per token as in the standard layout
    MlaDecodeParams p = valid_params();
    p.num_heads_kv = 2;
    p.k_head_stride = 576;
    p.k_row_stride = 2 * 576;
    p.k_block_stride = 64 * 2 * 576;
    p.num_blocks = kBlocks / 2;  // same bytes
    EXPECT_NO_THROW(flashmla::validate(p));
  }
}

// Outputs right after the inputs they follow in one allocation are fine: the overlap check is
// on the bytes each tensor spans, not on the allocation. Fake addresses only (past the end of
// a real allocation the pointer-kind check would refuse them).
TEST(Validation, AdjacentBuffersPass) {
  if (device_present()) GTEST_SKIP() << "needs fake addresses";
  MlaDecodeParams p = valid_params();
  const int q_bytes = kBatch * kSeqQ * kHeadsQ * 576 * 2;
  p.out = offset_bytes(const_cast<void*>(p.q), q_bytes);
  p.lse = offset_bytes(static_cast<float*>(p.out), kBatch * kSeqQ * kHeadsQ * 512 * 2);
  std::string why;
  EXPECT_TRUE(flashmla::can_implement(p, &why)) << why;
  p.out = offset_bytes(const_cast<void*>(p.q), q_bytes - 16);
  EXPECT_FALSE(flashmla::can_implement(p, &why));
  EXPECT_NE(why.find("out must not overlap q"), std::string::npos) << why;
}

TEST(Validation, HostPointerRefusedOnGpuMachines) {
  if (!device_present()) GTEST_SKIP() << "no CUDA device: pointer kinds cannot be checked";
  void* host = std::aligned_alloc(256, 1 << 20);
  ASSERT_NE(host, nullptr);
  MlaDecodeParams p = valid_params();
  p.q = host;
  std::string why;
  EXPECT_FALSE(flashmla::can_implement(p, &why));
  EXPECT_NE(why.find("q must point to device"), std::string::npos) << why;
  p = valid_params();
  p.o_accum = host;
  EXPECT_FALSE(flashmla::can_implement(p, &why));
  EXPECT_NE(why.find("o_accum"), std::string::npos) << why;
  std::free(host);
}

TEST(Validation, ReferenceIgnoresScheduleFields) {
  if (device_present()) GTEST_SKIP() << "would launch on uninitialised device buffers";
  MlaDecodeParams p = valid_params();
  p.tile_scheduler_metadata = nullptr;
  p.num_sm_parts = 0;
  p.num_splits = nullptr;
  p.o_accum = nullptr;
  p.lse_accum = nullptr;
  // Without a device the launch itself fails, but never because of the schedule fields.
  try {
    flashmla::mla_decode_reference_gpu(p, nullptr);
  } catch (const flashmla::Error& e) {
    const std::string what = e.what();
    for (const char* field : {"tile_scheduler_metadata", "num_sm_parts", "num_splits", "o_accum", "lse_accum"})
      EXPECT_EQ(what.find(field), std::string::npos) << what;
  }
  // The shape part is still checked.
  p.head_dim = 512;
  EXPECT_THROW(flashmla::mla_decode_reference_gpu(p, nullptr), flashmla::Error);
}

TEST(Sizing, NumSmParts) {
  EXPECT_EQ(flashmla::num_sm_parts(132, 64, 1), 132);
  EXPECT_EQ(flashmla::num_sm_parts(132, 16, 1), 132);
  EXPECT_EQ(flashmla::num_sm_parts(132, 65, 1), 66);
  EXPECT_EQ(flashmla::num_sm_parts(132, 128, 1), 66);
  EXPECT_EQ(flashmla::num_sm_parts(132, 256, 1), 33);
  EXPECT_EQ(flashmla::num_sm_parts(132, 64, 2), 66);
  EXPECT_EQ(flashmla::num_sm_parts(132, 128, 4), 16);
  EXPECT_EQ(flashmla::num_sm_parts(1, 128, 1), 1);   // never 0
  EXPECT_EQ(flashmla::num_sm_parts(8, 64, 16), 1);
  EXPECT_THROW(flashmla::num_sm_parts(0, 64, 1), flashmla::Error);
  EXPECT_THROW(flashmla::num_sm_parts(132, 0, 1), flashmla::Error);
  EXPECT_THROW(flashmla::num_sm_parts(132, 64, 0), flashmla::Error);
}

TEST(Sizing, AccumElems) {
  EXPECT_EQ(flashmla::o_accum_elems(2, 4, 1, 32), size_t(6) * 32 * 512);
  EXPECT_EQ(flashmla::lse_accum_elems(2, 4, 1, 32), size_t(6) * 32);
  EXPECT_EQ(flashmla::o_accum_elems(128, 132, 2, 256), size_t(260) * 2 * 256 * 512);
  EXPECT_EQ(flashmla::lse_accum_elems(128, 132, 2, 256), size_t(260) * 2 * 256);
  // No 32-bit overflow for large shapes.
  EXPECT_EQ(flashmla::o_accum_elems(4096, 132, 1, 256), size_t(4228) * 256 * 512);
  EXPECT_THROW(flashmla::o_accum_elems(0, 4, 1, 32), flashmla::Error);
  EXPECT_THROW(flashmla::lse_accum_elems(2, 0, 1, 32), flashmla::Error);
}

TEST(Metadata, BadArgumentsAreNamed) {
  const Buffers& buf = buffers();
  auto seqlens = static_cast<const int32_t*>(buf.seqlens);
  auto meta = static_cast<int32_t*>(buf.meta);
  auto splits = static_cast<int32_t*>(buf.splits);
  struct Case {
    std::function<void()> call;
    const char* expect;
  };
  const Case cases[] = {
      {[&] { flashmla::get_mla_metadata(seqlens, 0, kRows, 1, kParts, meta, splits, nullptr); }, "batch"},
      {[&] { flashmla::get_mla_metadata(seqlens, kBatch, 0, 1, kParts, meta, splits, nullptr); }, "rows_per_kv_head"},
      {[&] { flashmla::get_mla_metadata(seqlens, kBatch, kRows, 0, kParts, meta, splits, nullptr); }, "num_heads_kv"},
      {[&] { flashmla::get_mla_metadata(seqlens, kBatch, kRows, 1, 0, meta, splits, nullptr); }, "num_sm_parts"},
      {[&] { flashmla::get_mla_metadata(nullptr, kBatch, kRows, 1, kParts, meta, splits, nullptr); }, "cache_seqlens"},
      {[&] { flashmla::get_mla_metadata(seqlens, kBatch, kRows, 1, kParts, nullptr, splits, nullptr); }, "tile_scheduler_metadata"},
      {[&] { flashmla::get_mla_metadata(seqlens, kBatch, kRows, 1, kParts, meta, nullptr, nullptr); }, "num_splits"},
      // The plan is written while the lengths are read: no two of the three may overlap.
      {[&] { flashmla::get_mla_metadata(seqlens, kBatch, kRows, 1, kParts, meta, const_cast<int32_t*>(seqlens), nullptr); },
       "num_splits must not overlap cache_seqlens"},
      {[&] { flashmla::get_mla_metadata(seqlens, kBatch, kRows, 1, kParts, const_cast<int32_t*>(seqlens), splits, nullptr); },
       "tile_scheduler_metadata must not overlap cache_seqlens"},
      {[&] { flashmla::get_mla_metadata(seqlens, kBatch, kRows, 1, kParts, meta, meta + 4, nullptr); },
       "num_splits must not overlap tile_scheduler_metadata"},
      {[&] { flashmla::get_mla_metadata(seqlens, kBatch, kRows, 1, kParts, meta + 1, splits, nullptr); },
       "tile_scheduler_metadata must be 16-byte aligned"},
  };
  for (const Case& c : cases) {
    try {
      c.call();
      ADD_FAILURE() << "accepted; expected an error about " << c.expect;
    } catch (const flashmla::Error& e) {
      EXPECT_NE(std::string(e.what()).find(c.expect), std::string::npos) << e.what();
    }
  }
}

}  // namespace
