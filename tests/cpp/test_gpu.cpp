// End-to-end GPU tests: get_mla_metadata + mla_decode against the CPU oracle (small shapes)
// and the GPU reference (large shapes and the FP8 KV cache), GPU metadata against the host
// planner, and graph capture with seqlens changing between replays. Without an sm_90 device
// every test skips with the reason.
//
// Inputs are hostile on purpose: page tables are shuffled, unused table entries are huge
// ids, every KV slot no live token owns (spare pages, page tails, stride padding) is NaN, and
// all outputs and workspaces start as NaN, so any read of dead data or any unwritten output
// shows up as a NaN.
#include <gtest/gtest.h>

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <numeric>
#include <ostream>
#include <random>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "flashmla/flashmla.h"
#include "gpu_test_util.h"
#include "reference/bf16.h"
#include "reference/reference_cpu.h"
#include "scheduler/plan.h"

namespace {

using flashmla::reference::bf16_to_float;
using flashmla::reference::float_to_bf16;
using flashmla::reference::kBF16QuietNaN;
using flashmla::test::ck;
using flashmla::test::DeviceBuffer;
using flashmla::test::GpuTest;
using flashmla::test::to_device;

constexpr int kD = 576, kDv = 512;
constexpr int32_t kUnusedPage = 0x7fffffff;

int device_sms() {
  int dev = 0, sms = 0;
  ck(cudaGetDevice(&dev), "cudaGetDevice");
  ck(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), "cudaDeviceGetAttribute");
  return sms;
}

struct Shape {
  int b = 1, s_q = 1, h_q = 16, h_kv = 1;
  bool causal = false;
  std::vector<int32_t> seqlens;
  unsigned seed = 1;
  float scale = 1.f / std::sqrt(576.f);
  bool padded = false;  // non-dense strides for q, k_cache and out
  int page = 64;        // tokens per KV-cache page (page_block_size)
  // Each 128-dim latent group of each token scaled by 2^u, u uniform in [-k_spread, k_spread]:
  // FP8 scales spread over 2^(2 k_spread) within a sequence.
  int k_spread = 0;
  // The latent part of token 5 of every sequence scaled by 2^k_outlier: one large-scale token,
  // dominant for some heads and of negligible weight for the others.
  int k_outlier = 0;
};

// Host data of one problem: dense copies for the CPU oracle plus the device-layout images.
struct Problem {
  Shape sh;
  flashmla::reference::CpuProblem cpu;
  int64_t qh, qs, qb, kh, kr, kb, oh, os, ob;  // element strides of the device layouts
  std::vector<int32_t> table;                   // [b, max_blocks]
  std::vector<uint16_t> q, k;                   // dense: [b,s_q,h_q,576], [blocks,page,h_kv,576]
  std::vector<uint16_t> q_dev, k_dev;           // strided images with NaN padding

  explicit Problem(const Shape& shape) : sh(shape) {
    if (static_cast<int>(sh.seqlens.size()) != sh.b) throw std::runtime_error("seqlens size != b");
    std::mt19937 rng(sh.seed);
    std::normal_distribution<float> normal(0.f, 1.f);
    const int page = sh.page;
    int max_len = 0, live_pages = 0;
    for (int L : sh.seqlens) {
      max_len = std::max(max_len, L);
      live_pages += (L + page - 1) / page;
    }
    cpu.batch = sh.b;
    cpu.seqlen_q = sh.s_q;
    cpu.num_heads_q = sh.h_q;
    cpu.num_heads_kv = sh.h_kv;
    cpu.causal = sh.causal;
    cpu.softmax_scale = sh.scale;
    cpu.page_block_size = page;
    cpu.max_blocks_per_seq = (max_len + page - 1) / page + 1;    // a column nobody uses
    cpu.num_blocks = live_pages + 3;                              // pages nobody owns

    const int pad = sh.padded ? 64 : 0;
    qh = kD + pad;
    qs = sh.h_q * qh;
    qb = sh.s_q * qs + pad;
    kh = kD + pad;
    kr = sh.h_kv * kh + (sh.padded ? 8 : 0);
    kb = page * kr + 2 * pad;
    oh = kDv + pad;
    os = sh.h_q * oh;
    ob = sh.s_q * os + pad;

    std::vector<int32_t> pages(cpu.num_blocks);
    std::iota(pages.begin(), pages.end(), 0);
    std::shuffle(pages.begin(), pages.end(), rng);
    table.assign(static_cast<size_t>(sh.b) * cpu.max_blocks_per_seq, kUnusedPage);
    k.assign(static_cast<size_t>(cpu.num_blocks) * page * sh.h_kv * kD, kBF16QuietNaN);
    int next = 0;
    for (int b = 0; b < sh.b; ++b)
      for (int t = 0; t < sh.seqlens[b]; ++t) {
        int32_t& entry = table[static_cast<size_t>(b) * cpu.max_blocks_per_seq + t / page];
        if (t % page == 0) entry = pages[next++];
        uint16_t* row = &k[(static_cast<size_t>(entry) * page + t % page) * sh.h_kv * kD];
        for (int c = 0; c < sh.h_kv * kD; ++c) row[c] = float_to_bf16(normal(rng));
        if (sh.k_outlier > 0 && t == 5) {
          for (int h = 0; h < sh.h_kv; ++h)
            for (int c = 0; c < kDv; ++c) {
              uint16_t& x = row[h * kD + c];
              x = float_to_bf16(bf16_to_float(x) * std::ldexp(1.f, sh.k_outlier));
            }
        }
        if (sh.k_spread > 0) {
          std::uniform_int_distribution<int> u(-sh.k_spread, sh.k_spread);
          for (int h = 0; h < sh.h_kv; ++h)
            for (int g = 0; g < kDv / 128; ++g) {
              const float f = std::ldexp(1.f, u(rng));
              for (int c = 0; c < 128; ++c) {
                uint16_t& x = row[h * kD + g * 128 + c];
                x = float_to_bf16(bf16_to_float(x) * f);  // exact: a power of two
              }
            }
        }
      }
    q.resize(static_cast<size_t>(sh.b) * sh.s_q * sh.h_q * kD);
    for (auto& x : q) x = float_to_bf16(normal(rng));

    q_dev.assign(static_cast<size_t>(sh.b) * qb, kBF16QuietNaN);
    for (int b = 0; b < sh.b; ++b)
      for (int s = 0; s < sh.s_q; ++s)
        for (int h = 0; h < sh.h_q; ++h)
          std::copy_n(&q[((static_cast<size_t>(b) * sh.s_q + s) * sh.h_q + h) * kD], kD,
                      &q_dev[b * qb + s * qs + h * qh]);
    k_dev.assign(static_cast<size_t>(cpu.num_blocks) * kb, kBF16QuietNaN);
    for (int p = 0; p < cpu.num_blocks; ++p)
      for (int r = 0; r < page; ++r)
        for (int h = 0; h < sh.h_kv; ++h)
          std::copy_n(&k[((static_cast<size_t>(p) * page + r) * sh.h_kv + h) * kD], kD,
                      &k_dev[p * kb + r * kr + h * kh]);
  }

  int rows() const { return sh.s_q * sh.h_q / sh.h_kv; }
  size_t out_elems() const { return static_cast<size_t>(sh.b) * ob; }
  size_t lse_elems() const { return static_cast<size_t>(sh.b) * sh.h_q * sh.s_q; }

  void reference_cpu(std::vector<float>& out, std::vector<float>& lse) const {
    out.assign(static_cast<size_t>(sh.b) * sh.s_q * sh.h_q * kDv, 0.f);
    lse.assign(lse_elems(), 0.f);
    flashmla::reference::mla_decode_cpu(cpu, q.data(), k.data(), table.data(), sh.seqlens.data(),
                                        out.data(), lse.data());
  }

  // Dense [b, s_q, h_q, 512] floats out of a strided bf16 image.
  std::vector<float> gather_out(const std::vector<uint16_t>& dev) const {
    std::vector<float> out(static_cast<size_t>(sh.b) * sh.s_q * sh.h_q * kDv);
    for (int b = 0; b < sh.b; ++b)
      for (int s = 0; s < sh.s_q; ++s)
        for (int h = 0; h < sh.h_q; ++h)
          for (int c = 0; c < kDv; ++c)
            out[((static_cast<size_t>(b) * sh.s_q + s) * sh.h_q + h) * kDv + c] =
                bf16_to_float(dev[b * ob + s * os + h * oh + c]);
    return out;
  }
};

// Device copies of one problem plus the parameter block pointing at them.
struct DeviceProblem {
  DeviceBuffer<uint16_t> q, k, out;
  DeviceBuffer<int32_t> table, seqlens;
  DeviceBuffer<float> lse;
  flashmla::MlaDecodeParams p;

  explicit DeviceProblem(const Problem& h)
      : q(h.q_dev.size()), k(h.k_dev.size()), out(h.out_elems()), table(h.table.size()),
        seqlens(h.sh.b), lse(h.lse_elems()) {
    upload(h);
    p.batch = h.sh.b;
    p.seqlen_q = h.sh.s_q;
    p.num_heads_q = h.sh.h_q;
    p.num_heads_kv = h.sh.h_kv;
    p.page_block_size = h.sh.page;
    p.num_blocks = h.cpu.num_blocks;
    p.max_blocks_per_seq = h.cpu.max_blocks_per_seq;
    p.softmax_scale = h.sh.scale;
    p.causal = h.sh.causal;
    p.q = q.get();
    p.q_head_stride = h.qh;
    p.q_seq_stride = h.qs;
    p.q_batch_stride = h.qb;
    p.k_cache = k.get();
    p.k_head_stride = h.kh;
    p.k_row_stride = h.kr;
    p.k_block_stride = h.kb;
    p.block_table = table.get();
    p.block_table_batch_stride = h.cpu.max_blocks_per_seq;
    p.cache_seqlens = seqlens.get();
    p.out = out.get();
    p.o_head_stride = h.oh;
    p.o_seq_stride = h.os;
    p.o_batch_stride = h.ob;
    p.lse = lse.get();
  }

  // Same shapes, new contents (used to change seqlens under a captured graph).
  void upload(const Problem& h) {
    q.upload(h.q_dev);
    k.upload(h.k_dev);
    table.upload(h.table);
    seqlens.upload(h.sh.seqlens);
  }
};

// Scheduler metadata and split workspace for one parts count.
struct Schedule {
  DeviceBuffer<int32_t> meta, splits;
  DeviceBuffer<uint16_t> o_accum;  // out's 16-bit dtype
  DeviceBuffer<float> lse_accum;
  int parts;

  Schedule(const Problem& h, int num_parts)
      : meta(static_cast<size_t>(num_parts) * flashmla::kMetadataInts), splits(h.sh.b + 1),
        o_accum(flashmla::o_accum_elems(h.sh.b, num_parts, h.sh.h_kv, h.rows())),
        lse_accum(flashmla::lse_accum_elems(h.sh.b, num_parts, h.sh.h_kv, h.rows())),
        parts(num_parts) {}

  void attach(flashmla::MlaDecodeParams& p) const {
    p.tile_scheduler_metadata = meta.get();
    p.num_sm_parts = parts;
    p.num_splits = splits.get();
    p.o_accum = o_accum.get();
    p.lse_accum = lse_accum.get();
  }
};

struct Result {
  std::vector<float> out, lse;
};

Result fetch(const Problem& h, const DeviceProblem& d) {
  return {h.gather_out(d.out.download()), d.lse.download()};
}

// Poisons the outputs and the split workspace, runs the decode on `stream` with the metadata
// already in `sch`, waits.
void decode_on_metadata(DeviceProblem& d, Schedule& sch, cudaStream_t stream) {
  d.out.poison(stream);
  d.lse.poison(stream);
  sch.o_accum.poison(stream);
  sch.lse_accum.poison(stream);
  sch.attach(d.p);
  flashmla::mla_decode(d.p, stream);
  ck(cudaGetLastError(), "launch");
  ck(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
}

// Poisons all outputs and workspaces, runs metadata + decode on `stream`, waits.
void run_decode(DeviceProblem& d, Schedule& sch, const Problem& h, cudaStream_t stream) {
  sch.meta.poison(stream);
  sch.splits.poison(stream);
  flashmla::get_mla_metadata(d.seqlens.get(), h.sh.b, h.rows(), h.sh.h_kv, sch.parts, sch.meta.get(),
                             sch.splits.get(), stream);
  decode_on_metadata(d, sch, stream);
}

// Per sequence, ||got - ref|| / ||ref|| < 1e-2 over its out (judged per sequence: the output
// of a long sequence is an average with a small norm, which a global norm would let a short
// sequence's output swamp); lse within lse_tol * max(1, |lse|); +inf exactly where the
// reference has it (with an all-zero output row); no NaN anywhere.
void expect_close(const Result& ref, const Result& got, const Shape& sh, const std::string& label,
                  double lse_tol = 1e-3) {
  SCOPED_TRACE(label);
  ASSERT_EQ(ref.out.size(), got.out.size());
  ASSERT_EQ(ref.lse.size(), got.lse.size());
  ASSERT_EQ(ref.out.size(), static_cast<size_t>(sh.b) * sh.s_q * sh.h_q * kDv);
  const size_t per_seq = static_cast<size_t>(sh.s_q) * sh.h_q * kDv;  // out is [b, s_q, h_q, dv]
  size_t nan_out = 0;
  int bad_out = 0;
  for (int b = 0; b < sh.b; ++b) {
    double diff2 = 0, ref2 = 0;
    for (size_t i = b * per_seq; i < (b + 1) * per_seq; ++i) {
      if (std::isnan(got.out[i])) {
        ++nan_out;
        continue;
      }
      const double d = static_cast<double>(got.out[i]) - ref.out[i];
      diff2 += d * d;
      ref2 += static_cast<double>(ref.out[i]) * ref.out[i];
    }
    const bool ok = ref2 == 0 ? diff2 == 0 : std::sqrt(diff2 / ref2) < 1e-2;
    if (!ok && ++bad_out <= 10) {
      ADD_FAILURE() << "out of sequence b=" << b << " (length " << sh.seqlens[b]
                    << "): relative L2 error " << (ref2 == 0 ? diff2 : std::sqrt(diff2 / ref2))
                    << (ref2 == 0 ? " (reference all zero: absolute)" : "");
    }
  }
  ASSERT_EQ(nan_out, 0u) << "NaN in out";

  int bad_lse = 0;
  for (int b = 0; b < sh.b; ++b)
    for (int h = 0; h < sh.h_q; ++h)
      for (int s = 0; s < sh.s_q; ++s) {
        const size_t i = (static_cast<size_t>(b) * sh.h_q + h) * sh.s_q + s;
        const float r = ref.lse[i], g = got.lse[i];
        const bool ok = std::isinf(r) ? (g == r) : (std::isfinite(g) && std::fabs(g - r) < lse_tol * std::max(1.f, std::fabs(r)));
        if (!ok && ++bad_lse <= 10)
          ADD_FAILURE() << "lse[b=" << b << ",h=" << h << ",s=" << s << "] = " << g << ", expected " << r;
        if (std::isinf(r)) {
          const float* row = &got.out[((static_cast<size_t>(b) * sh.s_q + s) * sh.h_q + h) * kDv];
          for (int c = 0; c < kDv; ++c)
            if (row[c] != 0.f) {
              ADD_FAILURE() << "row with no visible key must be 0: b=" << b << " s=" << s << " h=" << h;
              break;
            }
        }
      }
  EXPECT_EQ(bad_lse, 0) << "lse mismatches";
}

std::string describe(const Shape& s, int parts) {
  std::string d = "b=" + std::to_string(s.b) + " s_q=" + std::to_string(s.s_q) + " h_q=" +
                  std::to_string(s.h_q) + " h_kv=" + std::to_string(s.h_kv) + " page=" + std::to_string(s.page) +
                  (s.causal ? " causal" : "") + (s.padded ? " padded" : "") + " parts=" +
                  std::to_string(parts) + " seqlens=[";
  for (size_t i = 0; i < s.seqlens.size() && i < 16; ++i) d += (i ? "," : "") + std::to_string(s.seqlens[i]);
  return d + (s.seqlens.size() > 16 ? ",...]" : "]");
}

// Decodes one problem with the natural parts count and with a few forced ones (1 = no
// splitting beyond necessity, 7 = few long splits, one more part than SMs = a second wave of
// CTAs), each against the same CPU reference. With the natural count the decode runs a second
// time on the same metadata, as every layer of a decode step does.
void check_against_cpu(const Shape& sh) {
  const Problem h(sh);
  Result ref;
  h.reference_cpu(ref.out, ref.lse);
  DeviceProblem d(h);
  cudaStream_t stream;
  ck(cudaStreamCreate(&stream), "cudaStreamCreate");
  const int natural = flashmla::num_sm_parts(device_sms(), h.rows(), sh.h_kv);
  for (int parts : {natural, 1, 7, device_sms() + 1}) {
    Schedule sch(h, parts);
    run_decode(d, sch, h, stream);
    expect_close(ref, fetch(h, d), sh, describe(sh, parts));
    if (parts != natural) continue;
    decode_on_metadata(d, sch, stream);
    expect_close(ref, fetch(h, d), sh, "second call on the same metadata, " + describe(sh, parts));
  }
  ck(cudaStreamDestroy(stream), "cudaStreamDestroy");
}

// Varied lengths: empty, 1, page boundaries +-1, and long ones, in shuffled order.
std::vector<int32_t> varlen(std::mt19937& rng, int b, int max_len) {
  std::uniform_int_distribution<int> lenient(2, max_len), tail(0, 63);
  std::vector<int32_t> s = {0, 1, 63, 64, 65, max_len - tail(rng), 128 + tail(rng)};
  while (static_cast<int>(s.size()) < b) s.push_back(lenient(rng));
  s.resize(b);
  std::shuffle(s.begin(), s.end(), rng);
  return s;
}

// --- main matrix: h_q x s_q x causal x h_kv, varlen batch of 8 -----------------------------

struct MatrixCase {
  int h_q, s_q, h_kv;
  bool causal;
};

void PrintTo(const MatrixCase& c, std::ostream* os) {
  *os << "h_q=" << c.h_q << " s_q=" << c.s_q << " h_kv=" << c.h_kv << (c.causal ? " causal" : "");
}

class GpuMatrix : public GpuTest, public ::testing::WithParamInterface<MatrixCase> {};

TEST_P(GpuMatrix, VarlenBatchMatchesCpu) {
  const MatrixCase c = GetParam();
  Shape sh;
  sh.seed = 1000 + c.h_q * 16 + c.s_q * 4 + c.h_kv * 2 + c.causal;
  std::mt19937 rng(sh.seed);
  sh.b = 8;
  sh.s_q = c.s_q;
  sh.h_q = c.h_q;
  sh.h_kv = c.h_kv;
  sh.causal = c.causal;
  sh.seqlens = varlen(rng, sh.b, 2000);
  check_against_cpu(sh);
}

std::vector<MatrixCase> matrix_cases() {
  std::vector<MatrixCase> v;
  for (int h_q : {16, 32, 64, 128})
    for (int s_q : {1, 2})
      for (bool causal : {false, true})
        for (int h_kv : {1, 2}) v.push_back({h_q, s_q, h_kv, causal});
  return v;
}

INSTANTIATE_TEST_SUITE_P(Shapes, GpuMatrix, ::testing::ValuesIn(matrix_cases()),
                         [](const ::testing::TestParamInfo<MatrixCase>& info) {
                           const MatrixCase& c = info.param;
                           return "hq" + std::to_string(c.h_q) + "_sq" + std::to_string(c.s_q) + "_hkv" +
                                  std::to_string(c.h_kv) + (c.causal ? "_causal" : "_full");
                         });

// --- named cases: page sizes, more query tokens, head counts ----------------------------------

struct NamedShape {
  std::string name;  // the test name suffix
  Shape shape;
};

void PrintTo(const NamedShape& c, std::ostream* os) { *os << c.name; }

class GpuCase : public GpuTest, public ::testing::WithParamInterface<NamedShape> {};

TEST_P(GpuCase, MatchesCpu) { check_against_cpu(GetParam().shape); }

std::string case_name(const ::testing::TestParamInfo<NamedShape>& info) { return info.param.name; }

// Every page size the kernels accept, with lengths at page and 64-token tile boundaries: below
// 64 one tile gathers several scattered pages, above 64 one page holds several tiles.
std::vector<NamedShape> page_cases() {
  std::vector<NamedShape> v;
  unsigned seed = 6000;
  for (int page : {1, 2, 16, 32, 64, 128, 256})
    for (bool mtp : {true, false}) {
      Shape sh;
      sh.seed = ++seed;
      sh.page = page;
      sh.s_q = mtp ? 2 : 1;
      sh.h_q = mtp ? 64 : 16;
      sh.causal = mtp;
      sh.seqlens = {0, 1, page - 1, page, page + 1, 63, 64, 65, 1000, 3000};
      std::mt19937 rng(sh.seed);
      std::shuffle(sh.seqlens.begin(), sh.seqlens.end(), rng);
      sh.b = static_cast<int>(sh.seqlens.size());
      v.push_back({"Page" + std::to_string(page) + (mtp ? "_SQ2_H64_Causal" : "_SQ1_H16"), sh});
    }
  return v;
}

// More query tokens per sequence (MTP / speculative decoding), up to 2048 query rows per kv
// head. Causal lengths below s_q leave the first queries without any key. Lengths stay short
// for h_q = 128 so that the CPU reference stays fast.
std::vector<NamedShape> multi_token_cases() {
  std::vector<NamedShape> v;
  unsigned seed = 6100;
  for (int s_q : {3, 8, 16})
    for (int h_q : {16, 128})
      for (bool causal : {false, true}) {
        Shape sh;
        sh.seed = ++seed;
        sh.s_q = s_q;
        sh.h_q = h_q;
        sh.causal = causal;
        sh.seqlens = {0, 1, s_q - 1, s_q, 65, h_q == 128 ? 700 : 2000};
        std::mt19937 rng(sh.seed);
        std::shuffle(sh.seqlens.begin(), sh.seqlens.end(), rng);
        sh.b = static_cast<int>(sh.seqlens.size());
        v.push_back({"SQ" + std::to_string(s_q) + "_H" + std::to_string(h_q) + (causal ? "_Causal" : ""), sh});
      }
  return v;
}

// Few heads: a 64-row tile mostly empty (h_q = 1), and a group count that is not a power of two.
std::vector<NamedShape> head_cases() {
  struct Heads {
    int h_q, h_kv;
  };
  std::vector<NamedShape> v;
  unsigned seed = 6200;
  for (Heads hd : {Heads{1, 1}, Heads{2, 1}, Heads{8, 1}, Heads{24, 1}, Heads{8, 2}})
    for (bool mtp : {false, true}) {
      Shape sh;
      sh.seed = ++seed;
      sh.h_q = hd.h_q;
      sh.h_kv = hd.h_kv;
      sh.s_q = mtp ? 2 : 1;
      sh.causal = mtp;
      std::mt19937 rng(sh.seed);
      sh.b = 8;
      sh.seqlens = varlen(rng, sh.b, 2000);
      v.push_back({"H" + std::to_string(hd.h_q) + "_KV" + std::to_string(hd.h_kv) + (mtp ? "_SQ2_Causal" : "_SQ1"),
                   sh});
    }
  return v;
}

// 17-32 query rows per kv head on 16-bit pages of >= 16 tokens (two row blocks of 16 for a
// kernel that packs rows by 16): 24 rows (the second block half padding) on 32-token pages,
// MTP s_q = 4 x 8 heads (per-row causal limits across both blocks), 32 rows on 16-token pages,
// and 32 rows per kv head of two; lengths at page and tile boundaries.
std::vector<NamedShape> two_block_cases() {
  struct TwoBlock {
    const char* name;
    int h_q, h_kv, s_q, page;
    bool causal;
  };
  std::vector<NamedShape> v;
  unsigned seed = 6300;
  for (TwoBlock c : {TwoBlock{"H24_SQ1_Page32", 24, 1, 1, 32, false},
                     TwoBlock{"H8_SQ4_Causal", 8, 1, 4, 64, true},
                     TwoBlock{"H32_SQ1_Page16_Causal", 32, 1, 1, 16, true},
                     TwoBlock{"H64_KV2_SQ1_Page128", 64, 2, 1, 128, false}}) {
    Shape sh;
    sh.seed = ++seed;
    sh.h_q = c.h_q;
    sh.h_kv = c.h_kv;
    sh.s_q = c.s_q;
    sh.page = c.page;
    sh.causal = c.causal;
    sh.seqlens = {0, 1, 3, c.page - 1, c.page + 1, 63, 64, 65, 1500, 2900};
    std::mt19937 rng(sh.seed);
    std::shuffle(sh.seqlens.begin(), sh.seqlens.end(), rng);
    sh.b = static_cast<int>(sh.seqlens.size());
    v.push_back({c.name, sh});
  }
  return v;
}

INSTANTIATE_TEST_SUITE_P(PageSizes, GpuCase, ::testing::ValuesIn(page_cases()), case_name);
INSTANTIATE_TEST_SUITE_P(TwoRowBlocks, GpuCase, ::testing::ValuesIn(two_block_cases()), case_name);
INSTANTIATE_TEST_SUITE_P(MultiToken, GpuCase, ::testing::ValuesIn(multi_token_cases()), case_name);
INSTANTIATE_TEST_SUITE_P(Heads, GpuCase, ::testing::ValuesIn(head_cases()), case_name);

// --- special batches ------------------------------------------------------------------------

TEST_F(GpuTest, SingleSequence) {
  for (int L : {1, 64, 1000, 2047}) {
    Shape sh;
    sh.seed = 2000 + L;
    sh.h_q = 128;
    sh.s_q = 2;
    sh.causal = true;
    sh.seqlens = {L};
    check_against_cpu(sh);
  }
  // Long enough that the sequence is split once per part: with >= 128 parts (h_q = 16 on 132
  // SMs; both with SMs + 1 parts) the combine splits each row's columns 16 ways, each of its 16
  // thread groups merging 8 or more partials.
  for (int h_q : {16, 128}) {
    Shape sh;
    sh.seed = 2050 + h_q;
    sh.h_q = h_q;
    sh.seqlens = {h_q == 16 ? 30000 : 9000};
    check_against_cpu(sh);
  }
  Shape empty;
  empty.seed = 2100;
  empty.h_q = 64;
  empty.seqlens = {0};
  check_against_cpu(empty);
}

TEST_F(GpuTest, AllEmptyBatch) {
  Shape sh;
  sh.seed = 2200;
  sh.b = 5;
  sh.h_q = 32;
  sh.s_q = 2;
  sh.seqlens = {0, 0, 0, 0, 0};
  check_against_cpu(sh);
}

TEST_F(GpuTest, SkewedBatch) {
  Shape sh;
  sh.seed = 2300;
  sh.b = 8;
  sh.h_q = 128;
  sh.s_q = 2;
  sh.causal = true;
  sh.seqlens = {3, 2000, 1, 7, 0, 10, 2, 5};
  check_against_cpu(sh);
}

TEST_F(GpuTest, PeakySoftmax) {
  // A large scale makes the softmax nearly one-hot: stresses the running max and the
  // rescaling of partial results across splits.
  Shape sh;
  sh.seed = 2400;
  sh.b = 4;
  sh.h_q = 64;
  sh.s_q = 2;
  sh.causal = true;
  sh.scale = 0.5f;
  sh.seqlens = {1999, 640, 65, 1};
  check_against_cpu(sh);
}

TEST_F(GpuTest, PaddedStrides) {
  for (int h_kv : {1, 2}) {
    Shape sh;
    sh.seed = 2500 + h_kv;
    sh.b = 3;
    sh.h_q = 64;
    sh.h_kv = h_kv;
    sh.s_q = 2;
    sh.causal = true;
    sh.padded = true;
    sh.seqlens = {700, 0, 129};
    check_against_cpu(sh);
  }
}

// Padded k_cache rows and blocks with pages other than 64: k_block_stride is then not
// page * k_row_stride.
TEST_F(GpuTest, PaddedStridesOtherPageSizes) {
  for (int page : {1, 16, 128, 256}) {
    Shape sh;
    sh.seed = 2600 + page;
    sh.b = 3;
    sh.h_q = 16;
    sh.s_q = 2;
    sh.causal = true;
    sh.padded = true;
    sh.page = page;
    sh.seqlens = {700, 0, 129};
    check_against_cpu(sh);
  }
}

// --- large shapes against the GPU reference --------------------------------------------------

// Shapes whose CPU reference would take too long: the GPU reference (fp32, one thread per
// row, no split) is the oracle, itself checked against the CPU in GpuReferenceMatchesCpu.
void check_against_gpu_reference(const Shape& sh, cudaStream_t stream) {
  const Problem h(sh);
  DeviceProblem d(h);
  d.out.poison(stream);
  d.lse.poison(stream);
  flashmla::mla_decode_reference_gpu(d.p, stream);
  ck(cudaGetLastError(), "reference launch");
  ck(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  const Result ref = fetch(h, d);
  // The oracle must itself be sane before it judges anything.
  for (float x : ref.out) ASSERT_FALSE(std::isnan(x)) << "NaN in GPU reference output";

  Schedule sch(h, flashmla::num_sm_parts(device_sms(), h.rows(), sh.h_kv));
  run_decode(d, sch, h, stream);
  expect_close(ref, fetch(h, d), sh, describe(sh, sch.parts));
}

TEST_F(GpuTest, LargeBatchMatchesGpuReference) {
  cudaStream_t stream;
  ck(cudaStreamCreate(&stream), "cudaStreamCreate");
  unsigned seed = 3000;
  for (int h_q : {64, 128})
    for (int s_q : {1, 2}) {
      Shape sh;
      sh.seed = ++seed;
      std::mt19937 rng(sh.seed);
      sh.b = 16;
      sh.h_q = h_q;
      sh.s_q = s_q;
      sh.causal = true;
      std::uniform_int_distribution<int> len(7000, 9000);
      for (int i = 0; i < sh.b; ++i) sh.seqlens.push_back(i == 5 ? 0 : len(rng));
      check_against_gpu_reference(sh, stream);
    }
  ck(cudaStreamDestroy(stream), "cudaStreamDestroy");
}

// A batch of more than 16 (the combine's few-pieces kernel) with one long sequence split
// across most parts (more than 32 pieces: the kernel's second round of LSEs) among short and
// empty ones, as in the skew_b64 benchmark regime; two kv heads for the row mapping.
TEST_F(GpuTest, SkewedLargeBatchMatchesGpuReference) {
  cudaStream_t stream;
  ck(cudaStreamCreate(&stream), "cudaStreamCreate");
  unsigned seed = 3200;
  struct Heads {
    int h_q, h_kv, s_q;
  };
  for (Heads hd : {Heads{16, 1, 1}, Heads{32, 2, 2}, Heads{128, 1, 1}}) {
    Shape sh;
    sh.seed = ++seed;
    std::mt19937 rng(sh.seed);
    sh.b = 24;
    sh.h_q = hd.h_q;
    sh.h_kv = hd.h_kv;
    sh.s_q = hd.s_q;
    sh.causal = hd.s_q > 1;
    std::uniform_int_distribution<int> len(1, 600);
    for (int i = 0; i < sh.b; ++i) sh.seqlens.push_back(i == 7 ? 40000 : i % 5 == 2 ? 0 : len(rng));
    check_against_gpu_reference(sh, stream);
  }
  ck(cudaStreamDestroy(stream), "cudaStreamDestroy");
}

TEST_F(GpuTest, GpuReferenceMatchesCpu) {
  Shape sh;
  sh.seed = 3100;
  std::mt19937 rng(sh.seed);
  sh.b = 4;
  sh.h_q = 32;
  sh.h_kv = 2;
  sh.s_q = 2;
  sh.causal = true;
  sh.seqlens = varlen(rng, sh.b, 1500);
  const Problem h(sh);
  Result ref;
  h.reference_cpu(ref.out, ref.lse);
  DeviceProblem d(h);
  d.out.poison(nullptr);
  d.lse.poison(nullptr);
  flashmla::mla_decode_reference_gpu(d.p, nullptr);
  ck(cudaGetLastError(), "reference launch");
  ck(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  expect_close(ref, fetch(h, d), sh, "GPU reference vs CPU");
}

// --- FP8 KV cache (KvFormat::kFP8WithScale) against the GPU reference --------------------------
//
// The cache is a Problem's bf16 cache (NaN in every slot no live token owns) quantized on the
// GPU by flashmla::quantize_kv_fp8 into 656-byte records (padded to 672 bytes for padded
// shapes); then every record that holds no live token, and all padding, is set to 0xFF bytes:
// NaN as an e4m3 value, as a float32 scale and as a bf16 RoPE value.
//
// Two oracles, both mla_decode_reference_gpu: on the FP8 cache itself (dequantized in fp32,
// never rounded to bf16: the format's own values) and on flashmla::dequantize_kv_fp8 of it (the
// bf16 values). Which one a kernel follows decides which is strict: the wide kernel (more than
// 32 query rows per kv head, or pages under 16 tokens) expands the records to bf16 as
// dequantize_kv_fp8 does; the small-head kernel computes S^T from the e4m3 values and fp32
// scales themselves (Q as three e4m3 terms) and O^T from exact e4m3 V with the scale folded
// into P. Against the oracle it follows every tolerance of the bf16 tests applies; against the
// other out still must be within 1e-2, but lse only within kFp8ExactLseTol: rounding K to bf16
// moves a score by up to 2^-8 * softmax_scale * sum_d |q_d k_d|, for unit-normal data ~1.5e-3
// (std) and up to ~8e-3 (the largest of 5M samples), which for a sequence of one key is the
// whole lse error. reads_exact_fp8 restates the launcher's choice (decode_launch.cuh,
// small_kernel_blocks): change both together.
bool reads_exact_fp8(const Problem& h) {
  const char* env = std::getenv("FLASHMLA_SMALL_HEADS");
  const bool small_enabled = env == nullptr || std::string(env) != "0";
  return small_enabled && h.rows() <= 32 && h.sh.page >= 16;
}

constexpr int64_t kFp8PaddedRecordBytes = flashmla::kFp8TokenBytes + 16;
constexpr double kFp8ExactLseTol = 2e-2;

struct Fp8Cache {
  DeviceBuffer<uint8_t> records;
  int64_t record_stride = 0, head_stride = 0, row_stride = 0, block_stride = 0;  // bytes
  int64_t n_tokens = 0;  // records: num_blocks * page * h_kv
};

// One flag per (page, row) slot: 1 where a token of some sequence lives.
std::vector<char> live_slots(const Problem& h) {
  const int page = h.sh.page;
  std::vector<char> live(static_cast<size_t>(h.cpu.num_blocks) * page, 0);
  for (int b = 0; b < h.sh.b; ++b)
    for (int t = 0; t < h.sh.seqlens[b]; ++t) {
      const int32_t id = h.table[static_cast<size_t>(b) * h.cpu.max_blocks_per_seq + t / page];
      live[static_cast<size_t>(id) * page + t % page] = 1;
    }
  return live;
}

Fp8Cache make_fp8_cache(const Problem& h, int64_t record_stride, cudaStream_t stream) {
  const int page = h.sh.page, h_kv = h.sh.h_kv;
  Fp8Cache f;
  f.n_tokens = static_cast<int64_t>(h.cpu.num_blocks) * page * h_kv;
  f.record_stride = record_stride;
  f.head_stride = record_stride;
  f.row_stride = h_kv * record_stride;
  f.block_stride = page * f.row_stride;
  const DeviceBuffer<uint16_t> src = to_device(h.k);  // dense bf16 [num_blocks, page, h_kv, 576]
  f.records = DeviceBuffer<uint8_t>(static_cast<size_t>(f.n_tokens * record_stride));
  f.records.poison(stream);  // padding between records stays 0xFF
  flashmla::quantize_kv_fp8(src.get(), kD, f.records.get(), record_stride, f.n_tokens, stream);
  ck(cudaGetLastError(), "quantize_kv_fp8 launch");
  ck(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  std::vector<uint8_t> bytes = f.records.download();
  const std::vector<char> live = live_slots(h);
  for (size_t slot = 0; slot < live.size(); ++slot)
    if (!live[slot]) std::fill_n(bytes.begin() + slot * f.row_stride, f.row_stride, uint8_t{0xFF});
  f.records.upload(bytes);
  return f;
}

void use_fp8_cache(flashmla::MlaDecodeParams& p, const Fp8Cache& f) {
  p.kv_format = flashmla::KvFormat::kFP8WithScale;
  p.k_cache = f.records.get();
  p.k_head_stride = f.head_stride;
  p.k_row_stride = f.row_stride;
  p.k_block_stride = f.block_stride;
}

// Runs the GPU reference with p (its out / lse are d's buffers) and fetches the result.
Result gpu_reference(DeviceProblem& d, const Problem& h, const flashmla::MlaDecodeParams& p,
                     cudaStream_t stream) {
  d.out.poison(stream);
  d.lse.poison(stream);
  flashmla::mla_decode_reference_gpu(p, stream);
  ck(cudaGetLastError(), "reference launch");
  ck(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  return fetch(h, d);
}

void check_fp8_against_gpu_reference(const Shape& sh) {
  const Problem h(sh);
  DeviceProblem d(h);
  cudaStream_t stream;
  ck(cudaStreamCreate(&stream), "cudaStreamCreate");
  const Fp8Cache f = make_fp8_cache(h, sh.padded ? kFp8PaddedRecordBytes : flashmla::kFp8TokenBytes, stream);

  // The bf16 cache the kernel computes with: dequantize_kv_fp8 of the records (dense rows).
  DeviceBuffer<uint16_t> rounded_kv(static_cast<size_t>(f.n_tokens) * kD);
  flashmla::dequantize_kv_fp8(f.records.get(), f.record_stride, rounded_kv.get(), kD, f.n_tokens, stream);
  ck(cudaGetLastError(), "dequantize_kv_fp8 launch");
  flashmla::MlaDecodeParams rounded_p = d.p;
  rounded_p.kv_format = flashmla::KvFormat::kSameAsQ;
  rounded_p.k_cache = rounded_kv.get();
  rounded_p.k_head_stride = kD;
  rounded_p.k_row_stride = static_cast<int64_t>(sh.h_kv) * kD;
  rounded_p.k_block_stride = static_cast<int64_t>(sh.page) * rounded_p.k_row_stride;

  use_fp8_cache(d.p, f);
  const Result exact = gpu_reference(d, h, d.p, stream);
  const Result rounded = gpu_reference(d, h, rounded_p, stream);
  // The oracles must themselves be sane before they judge anything.
  for (float x : exact.out) ASSERT_FALSE(std::isnan(x)) << "NaN in the GPU reference on the FP8 cache";
  for (float x : rounded.out) ASSERT_FALSE(std::isnan(x)) << "NaN in the GPU reference on the bf16-rounded cache";

  const int natural = flashmla::num_sm_parts(device_sms(), h.rows(), sh.h_kv);
  for (int parts : {natural, 1, 7, device_sms() + 1}) {
    Schedule sch(h, parts);
    run_decode(d, sch, h, stream);
    const Result got = fetch(h, d);
    const std::string label = "FP8 " + describe(sh, parts);
    if (reads_exact_fp8(h)) {
      // With a 2^10 token the scores that token gets are ~10^3 times their unit-scale size and
      // mostly cancel (a score of ~30 from terms of ~10^4): Q's three e4m3 terms (2^-12 of a
      // row's largest |q|) then move such an lse by up to ~3e-3 relative (seen on the H200:
      // 2.9e-3, 1.5e-3), so lse is judged loosely there; out, what the case is for, strictly.
      // Groups scaled by up to 2^6 (k_spread) do the same on a smaller scale: a score is the
      // sum of four group terms up to 2^6 times its unit-scale size, each off by 2^-12 of Q's
      // largest |q| times its group's sum |k| (seen on the H100: 2.5e-3 on the lse of a
      // one-key sequence, Small2_Page64_H24_SQ1_ScaleSpread4096).
      expect_close(exact, got, sh, label + " vs reference on the FP8 cache",
                   sh.k_outlier > 0 || sh.k_spread > 0 ? kFp8ExactLseTol : 1e-3);
      // The other oracle's lse bound holds for unit-scale keys: with a scale spread the
      // scores, and what bf16 rounding of K moves them by, grow with 2^k_spread.
      if (sh.k_spread == 0 && sh.k_outlier == 0)
        expect_close(rounded, got, sh, label + " vs reference on the bf16-rounded cache", kFp8ExactLseTol);
    } else {
      expect_close(rounded, got, sh, label + " vs reference on the bf16-rounded cache");
      expect_close(exact, got, sh, label + " vs reference on the FP8 cache", kFp8ExactLseTol);
    }
  }
  ck(cudaStreamDestroy(stream), "cudaStreamDestroy");
}

class GpuFp8Case : public GpuTest, public ::testing::WithParamInterface<NamedShape> {};

TEST_P(GpuFp8Case, MatchesGpuReference) { check_fp8_against_gpu_reference(GetParam().shape); }

// Page sizes 1 (cp.async gather), 16 (several TMA-sized pages per tile), 64, 256 (several
// tiles per page) x h_q 16 / 128 x s_q 1 / 2, causal; lengths at page and tile boundaries.
// Then two kv heads with padded records (672-byte stride) and padded q / out, and more
// shapes for the small-head kernel.
std::vector<NamedShape> fp8_cases() {
  std::vector<NamedShape> v;
  unsigned seed = 7000;
  for (int page : {1, 16, 64, 256})
    for (int h_q : {16, 128})
      for (int s_q : {1, 2}) {
        Shape sh;
        sh.seed = ++seed;
        sh.page = page;
        sh.h_q = h_q;
        sh.s_q = s_q;
        sh.causal = true;
        sh.seqlens = {0, 1, 63, 64, 65, page - 1, page, page + 1, 1000, 3000};
        std::mt19937 rng(sh.seed);
        std::shuffle(sh.seqlens.begin(), sh.seqlens.end(), rng);
        sh.b = static_cast<int>(sh.seqlens.size());
        v.push_back({"Page" + std::to_string(page) + "_H" + std::to_string(h_q) + "_SQ" + std::to_string(s_q), sh});
      }
  auto shape = [](unsigned seed, int page, int h_q, int h_kv, int s_q, bool causal, bool padded,
                  std::vector<int32_t> seqlens) {
    Shape sh;
    sh.seed = seed;
    sh.page = page;
    sh.h_q = h_q;
    sh.h_kv = h_kv;
    sh.s_q = s_q;
    sh.causal = causal;
    sh.padded = padded;
    sh.b = static_cast<int>(seqlens.size());
    sh.seqlens = std::move(seqlens);
    return sh;
  };
  v.push_back({"Page64_H32_KV2_SQ2_PaddedRecords", shape(7100, 64, 32, 2, 2, true, true, {700, 0, 129, 1, 64})});
  // The small-head kernel's FP8 path beyond one kv head and s_q = 1: 16 rows from two query
  // positions of 8 heads per kv head (per-row causal limits, kv head 1, padded records), and 8
  // rows (half the tile's query rows are padding) on 32-token pages.
  v.push_back({"Small_Page64_H16_KV2_SQ2_PaddedRecords",
               shape(7200, 64, 16, 2, 2, true, true, {700, 0, 129, 1, 64, 2})});
  v.push_back({"Small_Page32_H8_SQ1", shape(7201, 32, 8, 1, 1, false, false, {31, 32, 33, 1000, 1})});
  // Two row blocks of the FP8 small-head kernel (17-32 rows): 24 rows (block 1 half padding,
  // not causal, scales spread), 32 rows on 128-token pages, and MTP s_q = 4 x 8 heads (per-row
  // causal limits across both blocks).
  Shape rows24 = shape(7204, 64, 24, 1, 1, false, false, {3000, 1, 700, 64, 65, 0});
  rows24.k_spread = 6;
  v.push_back({"Small2_Page64_H24_SQ1_ScaleSpread4096", rows24});
  v.push_back({"Small2_Page128_H32_SQ1", shape(7205, 128, 32, 1, 1, true, false, {127, 128, 129, 2000, 5})});
  v.push_back({"Small2_Page64_H8_SQ4_Causal", shape(7206, 64, 8, 1, 4, true, false, {4, 3, 66, 1500, 640})});
  // Scales spread over 2^12 within each sequence: the small-head kernel's P^T is fp16 relative
  // to each group's running largest scale (small_kernel.cuh), exact to fp16 precision over
  // spreads up to 2^14.
  Shape spread = shape(7202, 64, 16, 1, 1, true, false, {3000, 1, 700, 64, 65});
  spread.k_spread = 6;
  v.push_back({"Small_Page64_H16_ScaleSpread4096", spread});
  // One token 2^10 above the rest in every sequence: the P^T bound follows it, so the others
  // sit 2^10 below the bound (within the 2^14 that fp16 keeps exact).
  Shape outlier = shape(7203, 64, 16, 1, 1, true, false, {3000, 6, 700, 64, 100});
  outlier.k_outlier = 10;
  v.push_back({"Small_Page64_H16_ScaleOutlier1024", outlier});
  return v;
}

INSTANTIATE_TEST_SUITE_P(Fp8, GpuFp8Case, ::testing::ValuesIn(fp8_cases()), case_name);

// validate() with an FP8 cache: q / out must be bf16, and every k_cache stride a whole number
// of 16 bytes (8 bytes would do for a 16-bit cache).
TEST_F(GpuTest, Fp8ValidationNamesTheArgument) {
  Shape sh;
  sh.seed = 7200;
  sh.b = 2;
  sh.h_q = 16;
  sh.seqlens = {100, 5};
  const Problem h(sh);
  DeviceProblem d(h);
  cudaStream_t stream;
  ck(cudaStreamCreate(&stream), "cudaStreamCreate");
  const Fp8Cache f = make_fp8_cache(h, flashmla::kFp8TokenBytes, stream);
  Schedule sch(h, 1);
  sch.attach(d.p);
  use_fp8_cache(d.p, f);
  std::string why;
  ASSERT_TRUE(flashmla::can_implement(d.p, &why)) << why;

  auto expect_rejected = [](const flashmla::MlaDecodeParams& p, const std::string& needle) {
    SCOPED_TRACE("expecting a rejection naming " + needle);
    try {
      flashmla::validate(p);
      ADD_FAILURE() << "validate accepted it";
    } catch (const flashmla::Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
    std::string reason;
    EXPECT_FALSE(flashmla::can_implement(p, &reason));
  };
  flashmla::MlaDecodeParams fp16 = d.p;
  fp16.dtype = flashmla::DType::kFP16;
  expect_rejected(fp16, "dtype");
  flashmla::MlaDecodeParams row = d.p;
  row.k_row_stride = flashmla::kFp8TokenBytes + 8;  // a multiple of 8, not of 16
  row.k_block_stride = sh.page * row.k_row_stride;
  expect_rejected(row, "k_row_stride");
  ck(cudaStreamDestroy(stream), "cudaStreamDestroy");
}

// --- metadata ---------------------------------------------------------------------------------

TEST_F(GpuTest, MetadataMatchesHostPlanner) {
  std::mt19937 rng(4000);
  cudaStream_t stream;
  ck(cudaStreamCreate(&stream), "cudaStreamCreate");
  for (int trial = 0; trial < 60; ++trial) {
    int b = trial % 3 == 0 ? std::uniform_int_distribution<int>(1, 1024)(rng)
                           : std::uniform_int_distribution<int>(1, 64)(rng);
    std::vector<int32_t> seqlens(b);
    std::uniform_int_distribution<int> len(0, 20000), coin(0, 3);
    for (auto& L : seqlens) L = coin(rng) == 0 ? 0 : len(rng);
    if (trial == 1) std::fill(seqlens.begin(), seqlens.end(), 0);
    const int parts_choices[] = {1, 7, 78, 132, 264, std::uniform_int_distribution<int>(1, 264)(rng)};
    const int parts = parts_choices[trial % 6];
    if (trial % 5 == 2) {  // one length, about as many sequences as parts: the whole-sequence plan
      b = std::max(1, parts - trial % 3);
      seqlens.assign(b, len(rng));
    }
    SCOPED_TRACE("trial " + std::to_string(trial) + " b=" + std::to_string(b) + " parts=" + std::to_string(parts));

    std::vector<int32_t> meta_host(static_cast<size_t>(parts) * flashmla::kMetadataInts);
    std::vector<int32_t> splits_host(b + 1);
    // rows_per_kv_head 64 below, or 16 on odd trials (the plan's overhead may differ by rows).
    const int rows = trial % 2 ? 16 : 64;
    flashmla::plan_schedule(seqlens.data(), b, parts, flashmla::plan::split_overhead_blocks(rows),
                            meta_host.data(), splits_host.data());

    DeviceBuffer<int32_t> seq_d(b), meta_d(meta_host.size()), splits_d(b + 1);
    seq_d.upload(seqlens);
    meta_d.poison(stream);
    splits_d.poison(stream);
    flashmla::get_mla_metadata(seq_d.get(), b, rows, 1, parts, meta_d.get(), splits_d.get(), stream);
    ck(cudaGetLastError(), "metadata launch");
    ck(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
    ASSERT_EQ(meta_d.download(), meta_host);
    ASSERT_EQ(splits_d.download(), splits_host);
  }
  ck(cudaStreamDestroy(stream), "cudaStreamDestroy");
}

// --- CUDA graphs --------------------------------------------------------------------------------

// Capture metadata + decode once (global capture mode, as torch.cuda.graph uses by default),
// then change seqlens / tables / data in place and replay: the schedule must follow.
// One graph of get_mla_metadata + mla_decode replayed over a, b, a: lengths that change under
// the graph, and each replay's metadata kernel overwriting the previous plan while the decode
// and combine of the new one start under PDL. parts 0: the library's count.
void check_graph_replay(const Shape& a, const Shape& b, int parts) {
  const Problem ha(a), hb(b);
  ASSERT_EQ(ha.q_dev.size(), hb.q_dev.size());
  ASSERT_EQ(ha.k_dev.size(), hb.k_dev.size());
  ASSERT_EQ(ha.table.size(), hb.table.size());
  DeviceProblem d(ha);
  Schedule sch(ha, parts > 0 ? parts : flashmla::num_sm_parts(device_sms(), ha.rows(), a.h_kv));
  sch.attach(d.p);

  cudaStream_t stream;
  ck(cudaStreamCreate(&stream), "cudaStreamCreate");
  cudaGraph_t graph;
  ck(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), "cudaStreamBeginCapture");
  try {
    flashmla::get_mla_metadata(d.seqlens.get(), a.b, ha.rows(), a.h_kv, sch.parts, sch.meta.get(),
                               sch.splits.get(), stream);
    flashmla::mla_decode(d.p, stream);
  } catch (...) {
    cudaStreamEndCapture(stream, &graph);
    throw;
  }
  ck(cudaStreamEndCapture(stream, &graph), "cudaStreamEndCapture");
  cudaGraphExec_t exec;
  ck(cudaGraphInstantiate(&exec, graph, 0), "cudaGraphInstantiate");

  for (const Problem* h : {&ha, &hb, &ha}) {
    Result ref;
    h->reference_cpu(ref.out, ref.lse);
    d.upload(*h);
    d.out.poison(stream);
    d.lse.poison(stream);
    sch.o_accum.poison(stream);
    ck(cudaGraphLaunch(exec, stream), "cudaGraphLaunch");
    ck(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
    expect_close(ref, fetch(*h, d), h->sh, "graph replay " + describe(h->sh, sch.parts));
  }
  ck(cudaGraphExecDestroy(exec), "cudaGraphExecDestroy");
  ck(cudaGraphDestroy(graph), "cudaGraphDestroy");
  ck(cudaStreamDestroy(stream), "cudaStreamDestroy");
}

TEST_F(GpuTest, GraphReplayFollowsNewSeqlens) {
  Shape a;
  a.seed = 5000;
  a.b = 6;
  a.h_q = 128;
  a.s_q = 2;
  a.causal = true;
  a.seqlens = {1500, 1, 0, 700, 64, 1900};
  Shape b = a;
  b.seed = 5001;
  b.seqlens = {64, 1900, 1500, 0, 1, 700};  // same page count and max, so buffers fit
  check_graph_replay(a, b, 0);
}

// The same where the decode grid leaves SMs free (32 parts of the small-head kernel): its
// combine CTAs can start early, and must not act on the previous replay's num_splits (a
// sequence split in one plan and whole in the next swaps roles between a and b).
TEST_F(GpuTest, GraphReplayFollowsNewSeqlensFewParts) {
  for (int h_q : {16, 32}) {
    Shape a;
    a.seed = 5010 + h_q;
    a.b = 4;
    a.h_q = h_q;
    a.seqlens = {6000, 64, 1, 0};
    Shape b = a;
    b.seed = 5011 + h_q;
    b.seqlens = {64, 6000, 0, 1};
    check_graph_replay(a, b, 32);
  }
}

}  // namespace
