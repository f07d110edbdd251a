// Decode benchmark of the C++ API (no torch).
//
//   bench_decode [--quick] [--matrix] [--regime NAME]... [--latency] [--no-matrix]
//                [--config b,s_k,h_q,s_q,causal[,h_kv]]... [--page N] [--sequential-pages] [--fp8] [--json PATH]
//                [--parts N] [--iters N] [--list]
//
// What runs: the fixed matrix (every sequence of length s_k, b=128) unless --config, --regime
// or --latency is given; --matrix adds it back (one JSON with matrix and regime rows), and
// --quick runs a smaller matrix. --config rows may carry per-sequence lengths instead of one
// s_k: "3,100:7000:0,128,1,0" (b lengths separated by ':'). --regime NAME adds one named
// latency regime (below), --latency all of them. --list prints the plan (lengths, floor,
// target, input sets) without touching a GPU. --page N sets the KV-cache page size
// (page_block_size, default 64) of every config; the JSON rows carry it as "page". --fp8 makes
// the KV cache of every config FP8 with scale (KvFormat::kFP8WithScale: 656-byte records made
// by flashmla::quantize_kv_fp8 from random bf16; q and out stay bf16); the JSON rows say
// "kv": "fp8" (else "bf16").
//
// Regimes (regime rows carry their name in the JSON; matrix rows "matrix", --config rows
// "config"). Random lengths come from a fixed-seed mt19937 through an explicit mapping, so
// they are the same on every platform; the JSON lists them ("seqlens", with "s_k" the longest).
//   b1_8k_h16          b=1, s_k=8192, h_q=16, s_q=1, causal                FlashMLA 34.5 us
//   b1_64k_h128        b=1, s_k=65536, h_q=128, s_q=1                      FlashMLA 103 us
//   skew_b64           b=64, one 65536, the rest U[128,1024], h_q=128      FlashMLA 108 us
//   quarter_empty_b16  b=16, 4 of length 0, the rest U[1,6000], h_q=128    FlashMLA 51 us
//   mtp4_b32           b=32, U[1000,32000], h_q=128, s_q=4, causal
//   b256_short         b=256, U[0,2048], h_q=64, s_q=1
//   b1_128k_h16        b=1, s_k=131072, h_q=16, s_q=2, causal
// (FlashMLA figures: upstream FlashMLA on the project's H100, decode call alone.)
//
// Three timings per config, each a CUDA graph of back-to-back calls replayed after a warm-up
// and timed with events (median of 5 batches of >= 10 ms):
//   meta_us   get_mla_metadata alone (once per decode step in a real model);
//   dec_us    mla_decode alone (decode kernel + split combine: the per-layer cost);
//   step_us   get_mla_metadata + mla_decode in one graph: a one-layer step, schedule included.
// And (JSON only) host_us: CPU time to enqueue one such step eagerly, without a graph.
// Consecutive calls read different input sets (q, block table, KV pages) whose live KV bytes
// together exceed 4x the L2 (also for b=1: then there are many small sets; memory for the
// sets is capped at 20 GiB and 80% of free memory), so each call streams its KV from HBM as in
// a real decode step over many layers. The output and split workspace are shared, as in a
// model that reuses them per layer.
//
// Roofline (sum over the actual lengths): FLOPs = 2 * s_q * sum(s_k) * h_q * (576 + 512)
// (causal masking not discounted), bytes = sum(s_k) * h_kv * T + b * s_q * h_q * (576 + 512) * 2
// with T = 1152 bytes of KV per token and kv head (576 bf16), or 656 with --fp8 (the bytes of a
// record, which is all the kernel reads), floor = max(bytes / 2968 GB/s, FLOPs / 789 TFLOPS)
// (H100 SXM / H200-class peaks in use). The L2 rotation below counts the same KV bytes.
// Latency target = 1.3 * floor + 5 us; "met" compares dec_us with it, "met+m" step_us.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "flashmla/flashmla.h"

namespace {

// The H100 ceilings measured for the project; FLASHMLA_PEAK_GBPS / FLASHMLA_PEAK_TFLOPS replace
// them with the card's own (bench_ceilings), e.g. on an H200, whose HBM is faster.
double peak_from_env(const char* name, double fallback, double unit) {
  const char* v = std::getenv(name);
  return v && *v ? std::atof(v) * unit : fallback;
}
const double kPeakBytesPerSec = peak_from_env("FLASHMLA_PEAK_GBPS", 2968e9, 1e9);
const double kPeakFlopsPerSec = peak_from_env("FLASHMLA_PEAK_TFLOPS", 789e12, 1e12);
constexpr double kTargetFactor = 1.3;
constexpr double kTargetSlackUs = 5.0;
constexpr size_t kMinL2Bytes = 50ull << 20;
constexpr size_t kSetMemoryCap = 20ull << 30;  // bytes of rotated input sets, at most
constexpr size_t kMaxSets = 8192;              // graph size bound (one page per set still fits)

void ck(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

struct Config {
  int b = 128, s_k = 4096, h_q = 128, s_q = 1, h_kv = 1;
  int page = 64;  // tokens per KV-cache page (--page)
  bool fp8 = false;  // FP8-with-scale KV cache (--fp8)
  bool shuffle_pages = true;  // false (--sequential-pages): pages in address order, to tell
                              // DRAM locality from kernel cost at small page sizes
  int parts = 0;  // num_sm_parts override (--parts, an experiment knob); 0: the library's choice
  bool causal = true;
  std::vector<int> lens;      // per-sequence lengths; empty: every sequence has length s_k
  std::string regime = "matrix";
  double flashmla_us = -1;    // upstream FlashMLA on the project's H100; < 0: not known

  bool varlen() const { return !lens.empty(); }
  std::vector<int> seqlens() const { return varlen() ? lens : std::vector<int>(b, s_k); }
};

// Everything about a config that needs no GPU: lengths, page layout, roofline, input sets.
// Bytes of KV one token occupies per kv head: a 656-byte FP8 record or 576 bf16.
size_t kv_token_bytes(const Config& c) {
  return c.fp8 ? static_cast<size_t>(flashmla::kFp8TokenBytes) : static_cast<size_t>(flashmla::kHeadDim) * 2;
}

const char* kv_text(const Config& c) { return c.fp8 ? "fp8" : "bf16"; }

struct Plan {
  std::vector<int> lens;
  int rows = 0, max_len = 0, min_len = 0, max_blocks = 1;
  size_t pages_per_set = 0, page_bytes = 0, q_elems = 0;
  size_t kv_bytes_per_set = 0;  // live KV bytes one call reads (what rotation must push past L2)
  size_t bytes_per_set = 0;     // device memory of one set: whole pages, q and block table
  size_t sets = 0;
  bool rotation_ok = false;   // sets * kv_bytes_per_set > 4 * L2
  double sum_sk = 0, flops = 0, bytes = 0, floor_us = 0, target_us = 0;
};

Plan make_plan(const Config& c, size_t l2_bytes, size_t free_bytes) {
  Plan p;
  p.lens = c.seqlens();
  if (static_cast<int>(p.lens.size()) != c.b) throw std::invalid_argument("need one length per sequence");
  p.rows = c.s_q * c.h_q / c.h_kv;
  p.max_len = *std::max_element(p.lens.begin(), p.lens.end());
  p.min_len = *std::min_element(p.lens.begin(), p.lens.end());
  if (p.min_len < 0) throw std::invalid_argument("negative sequence length");
  if (c.page < 1) throw std::invalid_argument("page size must be >= 1");
  p.max_blocks = std::max(1, (p.max_len + c.page - 1) / c.page);
  for (int len : p.lens) {
    p.pages_per_set += (len + c.page - 1) / c.page;
    p.sum_sk += len;
  }
  p.pages_per_set = std::max<size_t>(p.pages_per_set, 1);  // padding entries need a valid page
  const size_t token_bytes = kv_token_bytes(c);
  p.page_bytes = static_cast<size_t>(c.page) * c.h_kv * token_bytes;
  // Live tokens only: the unused tail of a large last page is allocated but never streamed,
  // so counting whole pages would overstate how much of the L2 the rotation flushes.
  p.kv_bytes_per_set = static_cast<size_t>(p.sum_sk) * c.h_kv * token_bytes;
  p.q_elems = static_cast<size_t>(c.b) * c.s_q * c.h_q * flashmla::kHeadDim;
  p.bytes_per_set = p.pages_per_set * p.page_bytes + p.q_elems * 2 + static_cast<size_t>(c.b) * p.max_blocks * 4;

  // Enough sets that the KV bytes cycled through exceed 4x L2, at least 2 so consecutive
  // calls never hit the same pages; bounded by memory.
  size_t sets = std::max<size_t>(2, 4 * l2_bytes / std::max<size_t>(p.kv_bytes_per_set, 1) + 1);
  sets = std::min(sets, kMaxSets);
  const size_t budget = std::min(kSetMemoryCap, free_bytes / 10 * 8);
  sets = std::min(sets, budget / p.bytes_per_set);
  p.sets = sets;
  p.rotation_ok = sets * p.kv_bytes_per_set > 4 * l2_bytes;

  p.flops = 2.0 * c.s_q * p.sum_sk * c.h_q * (flashmla::kHeadDim + flashmla::kHeadDimV);
  p.bytes = p.sum_sk * c.h_kv * static_cast<double>(token_bytes) +
            static_cast<double>(c.b) * c.s_q * c.h_q * (flashmla::kHeadDim + flashmla::kHeadDimV) * 2;
  p.floor_us = std::max(p.bytes / kPeakBytesPerSec, p.flops / kPeakFlopsPerSec) * 1e6;
  p.target_us = kTargetFactor * p.floor_us + kTargetSlackUs;
  return p;
}

struct Measurement {
  Config c;
  Plan plan;
  int parts = 0;
  double decode_us = 0, metadata_us = 0, step_us = 0, host_us = 0, gbps = 0, tflops = 0, pct_of_floor = 0;
  std::string error;
};

// ---------------------------------------------------------------------------------------
// Named regimes.

// Platform-independent uniform integers (std::uniform_int_distribution is not specified
// bit-exactly; mt19937's output is).
struct Rng {
  std::mt19937 g;
  explicit Rng(unsigned seed) : g(seed) {}
  int uniform(int lo, int hi) {  // inclusive
    return lo + static_cast<int>((static_cast<uint64_t>(g()) * static_cast<uint64_t>(hi - lo + 1)) >> 32);
  }
  template <class T>
  void shuffle(std::vector<T>& v) {  // Fisher-Yates
    for (int i = static_cast<int>(v.size()) - 1; i > 0; --i) std::swap(v[i], v[uniform(0, i)]);
  }
};

Config regime_config(const std::string& name, int b, int s_k, int h_q, int s_q, bool causal, double flashmla_us) {
  Config c;
  c.regime = name;
  c.b = b;
  c.s_k = s_k;
  c.h_q = h_q;
  c.s_q = s_q;
  c.causal = causal;
  c.flashmla_us = flashmla_us;
  return c;
}

void set_lens(Config& c, std::vector<int> lens) {
  c.lens = std::move(lens);
  c.s_k = *std::max_element(c.lens.begin(), c.lens.end());
}

const std::vector<std::string>& regime_names() {
  static const std::vector<std::string> names = {"b1_8k_h16",  "b1_64k_h128", "skew_b64",   "quarter_empty_b16",
                                                 "mtp4_b32",   "b256_short",  "b1_128k_h16"};
  return names;
}

Config make_regime(const std::string& name) {
  if (name == "b1_8k_h16") return regime_config(name, 1, 8192, 16, 1, true, 34.5);
  if (name == "b1_64k_h128") return regime_config(name, 1, 65536, 128, 1, false, 103);
  if (name == "b1_128k_h16") return regime_config(name, 1, 131072, 16, 2, true, -1);
  if (name == "skew_b64") {
    Config c = regime_config(name, 64, 0, 128, 1, false, 108);
    Rng rng(64001);
    std::vector<int> lens(c.b);
    for (int& len : lens) len = rng.uniform(128, 1024);
    lens[rng.uniform(0, c.b - 1)] = 65536;
    set_lens(c, lens);
    return c;
  }
  if (name == "quarter_empty_b16") {
    Config c = regime_config(name, 16, 0, 128, 1, false, 51);
    Rng rng(16001);
    std::vector<int> lens(c.b, 0);
    for (int i = c.b / 4; i < c.b; ++i) lens[i] = rng.uniform(1, 6000);
    rng.shuffle(lens);
    set_lens(c, lens);
    return c;
  }
  if (name == "mtp4_b32") {
    Config c = regime_config(name, 32, 0, 128, 4, true, -1);
    Rng rng(32004);
    std::vector<int> lens(c.b);
    for (int& len : lens) len = rng.uniform(1000, 32000);
    set_lens(c, lens);
    return c;
  }
  if (name == "b256_short") {
    Config c = regime_config(name, 256, 0, 64, 1, false, -1);
    Rng rng(256001);
    std::vector<int> lens(c.b);
    for (int& len : lens) len = rng.uniform(0, 2048);
    set_lens(c, lens);
    return c;
  }
  std::string known;
  for (const std::string& n : regime_names()) known += " " + n;
  throw std::invalid_argument("unknown regime '" + name + "' (known:" + known + ")");
}

// ---------------------------------------------------------------------------------------
// GPU side.

template <class T>
struct DeviceBuffer {
  T* ptr = nullptr;
  explicit DeviceBuffer(size_t n) { ck(cudaMalloc(reinterpret_cast<void**>(&ptr), std::max<size_t>(n, 1) * sizeof(T)), "cudaMalloc"); }
  ~DeviceBuffer() { cudaFree(ptr); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
};

struct GraphExec {
  cudaGraphExec_t exec = nullptr;
  GraphExec() = default;
  GraphExec(const GraphExec&) = delete;
  GraphExec& operator=(const GraphExec&) = delete;
  ~GraphExec() {
    if (exec) cudaGraphExecDestroy(exec);
  }
};

// Random non-zero bf16 values in +-[2^-4, 1): zeros could let a kernel (or the hardware)
// take shortcuts a real cache never offers.
std::vector<uint16_t> random_bf16(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::vector<uint16_t> v(n);
  for (auto& x : v) {
    const uint32_t r = rng();
    const uint16_t exponent = 123 + (r & 3);     // 2^-4 .. 2^-1
    const uint16_t mantissa = (r >> 2) & 0x7f;
    const uint16_t sign = (r >> 9) & 1;
    x = static_cast<uint16_t>(sign << 15 | exponent << 7 | mantissa);
  }
  return v;
}

// Fills a large device buffer by repeating a random host chunk (generating gigabytes of
// random numbers on the host would dominate the run time).
void fill_random(uint16_t* dst, size_t n, const std::vector<uint16_t>& chunk) {
  for (size_t done = 0; done < n; done += chunk.size()) {
    const size_t len = std::min(chunk.size(), n - done);
    ck(cudaMemcpy(dst + done, chunk.data(), len * 2, cudaMemcpyHostToDevice), "cudaMemcpy fill");
  }
}

// Fills n_tokens dense FP8 records (656 bytes each) with flashmla::quantize_kv_fp8 of random
// bf16 rows: a device staging buffer of chunk.size() / 576 rows is quantized over and over
// into successive ranges of records, so every record is valid (finite scales, the RoPE bf16).
void fill_random_fp8(uint8_t* dst, size_t n_tokens, const std::vector<uint16_t>& chunk, cudaStream_t stream) {
  const size_t rows = chunk.size() / flashmla::kHeadDim;
  DeviceBuffer<uint16_t> staging(rows * flashmla::kHeadDim);
  fill_random(staging.ptr, rows * flashmla::kHeadDim, chunk);
  for (size_t done = 0; done < n_tokens; done += rows) {
    const size_t len = std::min(rows, n_tokens - done);
    flashmla::quantize_kv_fp8(staging.ptr, flashmla::kHeadDim, dst + done * flashmla::kFp8TokenBytes,
                              flashmla::kFp8TokenBytes, static_cast<int64_t>(len), stream);
  }
  ck(cudaStreamSynchronize(stream), "quantize_kv_fp8");
}

// Microseconds per call of a graph holding `calls` calls: after a warm-up replay, the median
// of 5 timed batches, each of enough replays to last >= 10 ms.
double time_graph(cudaGraphExec_t exec, cudaStream_t stream, int calls) {
  cudaEvent_t start, stop;
  ck(cudaEventCreate(&start), "cudaEventCreate");
  ck(cudaEventCreate(&stop), "cudaEventCreate");
  auto timed = [&](int replays) {
    ck(cudaEventRecord(start, stream), "cudaEventRecord");
    for (int r = 0; r < replays; ++r) ck(cudaGraphLaunch(exec, stream), "cudaGraphLaunch");
    ck(cudaEventRecord(stop, stream), "cudaEventRecord");
    ck(cudaEventSynchronize(stop), "cudaEventSynchronize");
    float ms = 0;
    ck(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
    return static_cast<double>(ms);
  };
  try {
    timed(1);  // warm-up (clocks, instruction cache, first-touch of the graph)
    const double one_ms = std::max(timed(1), 1e-3);
    const int replays = std::max(1, std::min(1000, static_cast<int>(std::ceil(10.0 / one_ms))));
    std::vector<double> us;
    for (int k = 0; k < 5; ++k) us.push_back(timed(replays) * 1e3 / (static_cast<double>(calls) * replays));
    std::sort(us.begin(), us.end());
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    return us[us.size() / 2];
  } catch (...) {
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    throw;
  }
}

// Captures `calls` invocations of body(i) into a graph. Relaxed mode: the benchmark measures
// kernels, it is not the place to police what the host side may call during capture.
template <class Body>
void capture(GraphExec& out, cudaStream_t stream, int calls, Body body) {
  cudaGraph_t graph = nullptr;
  ck(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed), "cudaStreamBeginCapture");
  try {
    for (int i = 0; i < calls; ++i) body(i);
  } catch (...) {
    cudaStreamEndCapture(stream, &graph);
    if (graph) cudaGraphDestroy(graph);
    throw;
  }
  ck(cudaStreamEndCapture(stream, &graph), "cudaStreamEndCapture");
  const cudaError_t err = cudaGraphInstantiate(&out.exec, graph, 0);
  cudaGraphDestroy(graph);
  ck(err, "cudaGraphInstantiate");
}

Measurement run_config(const Config& c, int iters, int num_sms, size_t l2_bytes, cudaStream_t stream) {
  Measurement m;
  m.c = c;
  size_t free_bytes = 0, total_bytes = 0;
  ck(cudaMemGetInfo(&free_bytes, &total_bytes), "cudaMemGetInfo");
  m.plan = make_plan(c, l2_bytes, free_bytes);
  const Plan& pl = m.plan;
  const size_t sets = pl.sets;
  if (sets == 0) throw std::runtime_error("one input set does not fit in device memory");
  if (!pl.rotation_ok)
    std::fprintf(stderr, "  note: only %zu input set(s) fit: %.0f MB of KV cycled, under 4x L2\n", sets,
                 sets * pl.kv_bytes_per_set / 1e6);
  m.parts = c.parts > 0 ? c.parts : flashmla::num_sm_parts(num_sms, pl.rows, c.h_kv);

  const size_t table_per_set = static_cast<size_t>(c.b) * pl.max_blocks;
  const size_t kv_bytes = sets * pl.pages_per_set * pl.page_bytes;
  DeviceBuffer<uint8_t> k_cache(kv_bytes);
  DeviceBuffer<uint16_t> q(sets * pl.q_elems);
  DeviceBuffer<int32_t> table(sets * table_per_set), seqlens(c.b);
  DeviceBuffer<uint16_t> out(static_cast<size_t>(c.b) * c.s_q * c.h_q * flashmla::kHeadDimV);
  DeviceBuffer<float> lse(static_cast<size_t>(c.b) * c.h_q * c.s_q);
  DeviceBuffer<int32_t> meta(static_cast<size_t>(m.parts) * flashmla::kMetadataInts), splits(c.b + 1);
  DeviceBuffer<uint16_t> o_accum(flashmla::o_accum_elems(c.b, m.parts, c.h_kv, pl.rows));
  DeviceBuffer<float> lse_accum(flashmla::lse_accum_elems(c.b, m.parts, c.h_kv, pl.rows));

  const std::vector<uint16_t> chunk = random_bf16(size_t(16) << 20, 1234);
  if (c.fp8) {
    fill_random_fp8(k_cache.ptr, kv_bytes / flashmla::kFp8TokenBytes, chunk, stream);
  } else {
    fill_random(reinterpret_cast<uint16_t*>(k_cache.ptr), kv_bytes / 2, chunk);
  }
  fill_random(q.ptr, sets * pl.q_elems, random_bf16(std::min<size_t>(pl.q_elems, size_t(4) << 20), 99));

  // Each set owns a disjoint page range, handed out in a random order as in a real paged
  // cache; table entries past a sequence's last page point at the set's first page.
  std::mt19937 rng(7);
  std::vector<int32_t> table_host(sets * table_per_set);
  std::vector<int32_t> perm(pl.pages_per_set);
  for (size_t s = 0; s < sets; ++s) {
    const int32_t base = static_cast<int32_t>(s * pl.pages_per_set);
    std::iota(perm.begin(), perm.end(), base);
    if (c.shuffle_pages) std::shuffle(perm.begin(), perm.end(), rng);
    size_t next = 0;
    for (int i = 0; i < c.b; ++i) {
      int32_t* row = &table_host[s * table_per_set + static_cast<size_t>(i) * pl.max_blocks];
      const int used = (pl.lens[i] + c.page - 1) / c.page;
      for (int j = 0; j < pl.max_blocks; ++j) row[j] = j < used ? perm[next++] : base;
    }
  }
  ck(cudaMemcpy(table.ptr, table_host.data(), table_host.size() * 4, cudaMemcpyHostToDevice), "cudaMemcpy table");
  ck(cudaMemcpy(seqlens.ptr, pl.lens.data(), c.b * 4, cudaMemcpyHostToDevice), "cudaMemcpy seqlens");

  flashmla::MlaDecodeParams p;
  p.batch = c.b;
  p.seqlen_q = c.s_q;
  p.num_heads_q = c.h_q;
  p.num_heads_kv = c.h_kv;
  p.page_block_size = c.page;
  p.num_blocks = static_cast<int>(sets * pl.pages_per_set);
  p.max_blocks_per_seq = pl.max_blocks;
  p.softmax_scale = 1.f / std::sqrt(static_cast<float>(flashmla::kHeadDim));
  p.causal = c.causal;
  p.q_head_stride = flashmla::kHeadDim;
  p.q_seq_stride = static_cast<int64_t>(c.h_q) * flashmla::kHeadDim;
  p.q_batch_stride = static_cast<int64_t>(c.s_q) * p.q_seq_stride;
  p.kv_format = c.fp8 ? flashmla::KvFormat::kFP8WithScale : flashmla::KvFormat::kSameAsQ;
  p.k_cache = k_cache.ptr;
  // Elements of the cache: bf16 values, or bytes of FP8 records.
  p.k_head_stride = c.fp8 ? flashmla::kFp8TokenBytes : flashmla::kHeadDim;
  p.k_row_stride = static_cast<int64_t>(c.h_kv) * p.k_head_stride;
  p.k_block_stride = c.page * p.k_row_stride;
  p.block_table_batch_stride = pl.max_blocks;
  p.cache_seqlens = seqlens.ptr;
  p.out = out.ptr;
  p.o_head_stride = flashmla::kHeadDimV;
  p.o_seq_stride = static_cast<int64_t>(c.h_q) * flashmla::kHeadDimV;
  p.o_batch_stride = static_cast<int64_t>(c.s_q) * p.o_seq_stride;
  p.lse = lse.ptr;
  p.tile_scheduler_metadata = meta.ptr;
  p.num_sm_parts = m.parts;
  p.num_splits = splits.ptr;
  p.o_accum = o_accum.ptr;
  p.lse_accum = lse_accum.ptr;

  std::vector<flashmla::MlaDecodeParams> per_set(sets, p);
  for (size_t s = 0; s < sets; ++s) {
    per_set[s].q = q.ptr + s * pl.q_elems;
    per_set[s].block_table = table.ptr + s * table_per_set;
    flashmla::validate(per_set[s]);  // fail here, with the reason, rather than mid-capture
  }
  auto metadata = [&] {
    flashmla::get_mla_metadata(seqlens.ptr, c.b, pl.rows, c.h_kv, m.parts, meta.ptr, splits.ptr, stream);
  };

  {
    const int meta_calls = 50;
    GraphExec g;
    capture(g, stream, meta_calls, [&](int) { metadata(); });
    m.metadata_us = time_graph(g.exec, stream, meta_calls);
  }
  // The metadata is now valid for every set (same seqlens), so decode calls can be replayed.
  const int calls = std::max<int>(iters, static_cast<int>(sets));
  {
    GraphExec g;
    capture(g, stream, calls, [&](int i) { flashmla::mla_decode(per_set[i % sets], stream); });
    m.decode_us = time_graph(g.exec, stream, calls);
  }
  {
    GraphExec g;
    capture(g, stream, calls, [&](int i) {
      metadata();
      flashmla::mla_decode(per_set[i % sets], stream);
    });
    m.step_us = time_graph(g.exec, stream, calls);
  }
  {
    // Host cost of an eager step (no graph): the enqueue time alone, in batches short enough
    // that the launch queue never fills and blocks; the median batch.
    constexpr int kBatch = 64, kBatches = 7;
    std::vector<double> per_call;
    for (int r = 0; r < kBatches; ++r) {
      ck(cudaStreamSynchronize(stream), "sync before eager timing");
      const auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < kBatch; ++i) {
        metadata();
        flashmla::mla_decode(per_set[i % sets], stream);
      }
      const auto t1 = std::chrono::steady_clock::now();
      per_call.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count() / kBatch);
    }
    ck(cudaStreamSynchronize(stream), "sync after eager timing");
    std::sort(per_call.begin(), per_call.end());
    m.host_us = per_call[kBatches / 2];
  }
  ck(cudaGetLastError(), "after timing");

  m.gbps = pl.bytes / m.decode_us / 1e3;
  m.tflops = pl.flops / m.decode_us / 1e6;
  m.pct_of_floor = 100.0 * pl.floor_us / m.decode_us;
  return m;
}

// ---------------------------------------------------------------------------------------
// Output.

std::string json_escape(const std::string& s) {
  std::string r;
  for (char ch : s) {
    if (ch == '"' || ch == '\\') r += '\\';
    if (static_cast<unsigned char>(ch) < 0x20) continue;
    r += ch;
  }
  return r;
}

void write_config_json(std::ostream& f, const Config& c, const Plan* pl) {
  f << "\"regime\": \"" << json_escape(c.regime) << "\", \"b\": " << c.b << ", \"s_k\": " << c.s_k
    << ", \"h_q\": " << c.h_q << ", \"s_q\": " << c.s_q << ", \"h_kv\": " << c.h_kv << ", \"page\": " << c.page
    << ", \"kv\": \"" << kv_text(c) << "\""
    << ", \"causal\": " << (c.causal ? "true" : "false") << ", \"varlen\": " << (c.varlen() ? "true" : "false");
  if (c.varlen()) {
    f << ", \"seqlens\": [";
    for (size_t i = 0; i < c.lens.size(); ++i) f << (i ? ", " : "") << c.lens[i];
    f << "]";
  }
  if (c.flashmla_us >= 0) f << ", \"flashmla_us\": " << c.flashmla_us;
  if (pl) {
    f << ", \"sum_sk\": " << static_cast<int64_t>(pl->sum_sk) << ", \"min_sk\": " << pl->min_len
      << ", \"max_sk\": " << pl->max_len << ", \"mean_sk\": " << pl->sum_sk / c.b << ", \"flops\": " << pl->flops
      << ", \"bytes\": " << pl->bytes << ", \"floor_us\": " << pl->floor_us << ", \"target_us\": " << pl->target_us;
  }
}

void write_json(const std::string& path, const std::string& device, size_t l2_bytes, const std::vector<Measurement>& ms) {
  std::ofstream f(path);
  if (!f) throw std::runtime_error("cannot open " + path);
  f.precision(10);
  f << "{\n  \"device\": \"" << json_escape(device) << "\",\n  \"l2_bytes\": " << l2_bytes
    << ",\n  \"peak_gbps\": " << kPeakBytesPerSec / 1e9 << ",\n  \"peak_tflops\": " << kPeakFlopsPerSec / 1e12
    << ",\n  \"target\": \"" << kTargetFactor << " * floor_us + " << kTargetSlackUs << "\",\n  \"results\": [\n";
  for (size_t i = 0; i < ms.size(); ++i) {
    const Measurement& m = ms[i];
    f << "    {";
    if (!m.error.empty()) {
      write_config_json(f, m.c, nullptr);
      f << ", \"error\": \"" << json_escape(m.error) << "\"}";
    } else {
      const Plan& pl = m.plan;
      write_config_json(f, m.c, &pl);
      f << ", \"sets\": " << pl.sets << ", \"kv_bytes_per_set\": " << pl.kv_bytes_per_set
        << ", \"kv_cycled_over_l2\": " << static_cast<double>(pl.sets * pl.kv_bytes_per_set) / l2_bytes
        << ", \"num_sm_parts\": " << m.parts << ", \"metadata_us\": " << m.metadata_us
        << ", \"decode_us\": " << m.decode_us << ", \"sched_decode_us\": " << m.step_us << ", \"host_us\": " << m.host_us << ", \"gbps\": " << m.gbps
        << ", \"tflops\": " << m.tflops << ", \"pct_of_floor\": " << m.pct_of_floor
        << ", \"meets_target\": " << (m.decode_us <= pl.target_us ? "true" : "false")
        << ", \"meets_target_with_schedule\": " << (m.step_us <= pl.target_us ? "true" : "false") << "}";
    }
    f << (i + 1 < ms.size() ? ",\n" : "\n");
  }
  f << "  ]\n}\n";
}

// Without a usable GPU the JSON still appears, saying why it is empty, so that a driver
// script can tell "skipped" from "crashed".
int write_skipped_json(const std::string& path, const std::string& why) {
  if (path.empty()) return 0;
  std::ofstream f(path);
  if (!f) {
    std::fprintf(stderr, "bench_decode: cannot open %s\n", path.c_str());
    return 1;
  }
  f << "{\n  \"device\": null,\n  \"skipped\": \"" << json_escape(why) << "\",\n  \"results\": []\n}\n";
  return 0;
}

std::string sk_text(const Config& c) { return c.varlen() ? "var" : std::to_string(c.s_k); }

std::string fm_text(const Config& c) {
  if (c.flashmla_us < 0) return "-";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", c.flashmla_us);
  return buf;
}

void print_config_prefix(const Config& c, const Plan& pl) {
  std::printf("%-17s %4d %6s %8.0f %4d %3d %4d %2d |", c.regime.c_str(), c.b, sk_text(c).c_str(), pl.sum_sk, c.h_q,
              c.s_q, c.h_kv, c.causal);
}

void print_header() {
  std::printf("%-17s %4s %6s %8s %4s %3s %4s %2s | %7s %8s %8s | %6s %6s | %8s %6s %8s %4s %5s | %8s | %5s %5s\n",
              "regime", "b", "s_k", "sum_sk", "h_q", "s_q", "h_kv", "c", "meta_us", "dec_us", "step_us", "GB/s",
              "TFLOPS", "floor_us", "%floor", "target", "met", "met+m", "flashmla", "parts", "sets");
}

// Lengths of the variable-length configs, once, before the table.
void describe_lengths(const std::vector<Config>& configs) {
  for (const Config& c : configs) {
    if (!c.varlen()) continue;
    const Plan pl = make_plan(c, kMinL2Bytes, SIZE_MAX);
    const int empty = static_cast<int>(std::count(pl.lens.begin(), pl.lens.end(), 0));
    std::printf("  %s: b=%d lengths min %d mean %.0f max %d, %d empty, sum %.0f\n", c.regime.c_str(), c.b, pl.min_len,
                pl.sum_sk / c.b, pl.max_len, empty, pl.sum_sk);
  }
}

// --list: the plan of every config, no GPU needed (L2 taken as 50 MB, memory unbounded but
// for the 20 GiB cap).
void print_plan(const std::vector<Config>& configs, int page, bool fp8) {
  std::printf("KV page %d tokens, kv %s\n", page, fp8 ? "fp8" : "bf16");
  describe_lengths(configs);
  std::printf("%-17s %4s %6s %8s %4s %3s %4s %2s | %9s %9s %8s | %5s %9s %9s\n", "regime", "b", "s_k", "sum_sk", "h_q",
              "s_q", "h_kv", "c", "floor_us", "target", "flashmla", "sets", "KV/set_MB", "cycled/L2");
  for (const Config& c : configs) {
    const Plan pl = make_plan(c, kMinL2Bytes, SIZE_MAX);
    print_config_prefix(c, pl);
    std::printf(" %9.2f %9.2f %8s | %5zu %9.2f %9.2f%s\n", pl.floor_us, pl.target_us, fm_text(c).c_str(), pl.sets,
                pl.kv_bytes_per_set / 1e6, static_cast<double>(pl.sets * pl.kv_bytes_per_set) / kMinL2Bytes,
                pl.rotation_ok ? "" : "  (under 4x L2)");
  }
}

Config parse_config(const std::string& spec) {
  std::vector<std::string> f;
  size_t pos = 0;
  while (pos <= spec.size()) {
    const size_t comma = std::min(spec.find(',', pos), spec.size());
    f.push_back(spec.substr(pos, comma - pos));
    pos = comma + 1;
  }
  if (f.size() < 5 || f.size() > 6) throw std::invalid_argument("--config wants b,s_k,h_q,s_q,causal[,h_kv]");
  Config c;
  c.regime = "config";
  c.b = std::stoi(f[0]);
  c.h_q = std::stoi(f[2]);
  c.s_q = std::stoi(f[3]);
  c.causal = std::stoi(f[4]) != 0;
  if (f.size() == 6) c.h_kv = std::stoi(f[5]);
  if (c.b < 1 || c.h_q < 1 || c.s_q < 1 || c.h_kv < 1 || c.h_q % c.h_kv != 0)
    throw std::invalid_argument("--config: b, h_q, s_q, h_kv must be >= 1 and h_kv must divide h_q");
  if (f[1].find(':') == std::string::npos) {
    c.s_k = std::stoi(f[1]);
    if (c.s_k < 0) throw std::invalid_argument("--config: s_k must be >= 0");
  } else {
    std::vector<int> lens;
    size_t p = 0;
    while (p <= f[1].size()) {
      const size_t colon = std::min(f[1].find(':', p), f[1].size());
      lens.push_back(std::stoi(f[1].substr(p, colon - p)));
      if (lens.back() < 0) throw std::invalid_argument("--config: lengths must be >= 0");
      p = colon + 1;
    }
    if (static_cast<int>(lens.size()) != c.b)
      throw std::invalid_argument("--config: " + std::to_string(lens.size()) + " lengths for b=" + std::to_string(c.b));
    set_lens(c, lens);
  }
  return c;
}

void usage() {
  std::printf(
      "usage: bench_decode [--quick] [--matrix] [--no-matrix] [--regime NAME]... [--latency]\n"
      "                    [--config b,s_k,h_q,s_q,causal[,h_kv]]... [--page N] [--fp8] [--json PATH]\n"
      "                    [--iters N] [--list]\n"
      "  --page: tokens per KV-cache page for every config (default 64)\n"
      "  --sequential-pages: pages in address order instead of shuffled\n"
      "  --parts N: num_sm_parts (split-KV parts, CTAs per kv head) instead of the library's choice\n"
      "  --fp8: FP8-with-scale KV cache (656-byte records per token and kv head) for every config\n"
      "  s_k of --config may be b lengths separated by ':'; regimes:");
  for (const std::string& n : regime_names()) std::printf(" %s", n.c_str());
  std::printf("\n");
}

std::vector<Config> matrix_configs(bool quick) {
  std::vector<Config> configs;
  const std::vector<int> s_ks = quick ? std::vector<int>{4096} : std::vector<int>{4096, 8192, 16384};
  const std::vector<int> h_qs = quick ? std::vector<int>{64, 128} : std::vector<int>{16, 32, 64, 128};
  for (int s_k : s_ks)
    for (int h_q : h_qs)
      for (int s_q : {1, 2}) {
        Config c;
        c.s_k = s_k;
        c.h_q = h_q;
        c.s_q = s_q;
        configs.push_back(c);
      }
  return configs;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<Config> configs, regimes;
  std::string json_path;
  bool quick = false, want_matrix = false, no_matrix = false, list_only = false, fp8 = false;
  int iters = 32, page = 64;
  bool sequential_pages = false;
  int parts = 0;
  try {
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      const bool has_value = i + 1 < argc;
      if (a == "--quick") {
        quick = true;
      } else if (a == "--matrix") {
        want_matrix = true;
      } else if (a == "--no-matrix") {
        no_matrix = true;
      } else if (a == "--list") {
        list_only = true;
      } else if (a == "--fp8") {
        fp8 = true;
      } else if (a == "--latency") {
        for (const std::string& n : regime_names()) regimes.push_back(make_regime(n));
      } else if (a == "--regime" && has_value) {
        regimes.push_back(make_regime(argv[++i]));
      } else if (a == "--json" && has_value) {
        json_path = argv[++i];
      } else if (a == "--iters" && has_value) {
        iters = std::max(1, std::stoi(argv[++i]));
      } else if (a == "--parts" && has_value) {
        parts = std::stoi(argv[++i]);
        if (parts < 1) throw std::invalid_argument("--parts must be >= 1");
      } else if (a == "--sequential-pages") {
        sequential_pages = true;
      } else if (a == "--page" && has_value) {
        page = std::stoi(argv[++i]);
        if (page < 1) throw std::invalid_argument("--page must be >= 1");
      } else if (a == "--config" && has_value) {
        configs.push_back(parse_config(argv[++i]));
      } else if (a == "--help" || a == "-h") {
        usage();
        return 0;
      } else {
        usage();
        return 2;
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bad arguments: %s\n", e.what());
    usage();
    return 2;
  }
  const bool run_matrix = !no_matrix && (want_matrix || quick || (configs.empty() && regimes.empty()));
  if (run_matrix) {
    std::vector<Config> m = matrix_configs(quick);
    configs.insert(configs.begin(), m.begin(), m.end());
  }
  configs.insert(configs.end(), regimes.begin(), regimes.end());
  // Whether the library accepts the page size is left to flashmla::validate (a failed row
  // then says why), so that the benchmark can also show the rejection.
  for (Config& c : configs) {
    c.page = page;
    c.shuffle_pages = !sequential_pages;
    c.parts = parts;
    c.fp8 = fp8;
  }
  if (configs.empty()) {
    std::fprintf(stderr, "bench_decode: nothing to run (--no-matrix without --config or --regime)\n");
    return 2;
  }
  if (list_only) {
    print_plan(configs, page, fp8);
    return 0;
  }

  int devices = 0;
  const cudaError_t err = cudaGetDeviceCount(&devices);
  if (err != cudaSuccess || devices == 0) {
    const std::string why = std::string("no CUDA device (") +
                            (err != cudaSuccess ? cudaGetErrorString(err) : "device count is 0") + ")";
    std::printf("bench_decode: %s, nothing to measure\n", why.c_str());
    return write_skipped_json(json_path, why);
  }
  cudaDeviceProp prop{};
  int dev = 0;
  try {
    ck(cudaGetDevice(&dev), "cudaGetDevice");
    ck(cudaGetDeviceProperties(&prop, dev), "cudaGetDeviceProperties");
  } catch (const std::exception& e) {
    std::printf("bench_decode: %s\n", e.what());
    return 1;
  }
  if (prop.major != 9 || prop.minor != 0) {
    const std::string why = std::string("kernels are built for sm_90a, ") + prop.name + " is sm_" +
                            std::to_string(prop.major * 10 + prop.minor);
    std::printf("bench_decode: %s; nothing to measure\n", why.c_str());
    return write_skipped_json(json_path, why);
  }
  const size_t l2 = std::max<size_t>(kMinL2Bytes, static_cast<size_t>(prop.l2CacheSize));
  std::printf(
      "device: %s, %d SMs, L2 %.0f MB; KV page %d tokens; kv %s; target = %.1f * floor + %.0f us (met: dec_us, "
      "met+m: step_us)\n",
      prop.name, prop.multiProcessorCount, prop.l2CacheSize / 1048576.0, page, fp8 ? "fp8" : "bf16", kTargetFactor,
      kTargetSlackUs);
  describe_lengths(configs);
  print_header();

  cudaStream_t stream;
  if (cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) != cudaSuccess) {
    std::printf("bench_decode: cudaStreamCreate failed\n");
    return 1;
  }
  std::vector<Measurement> results;
  int failures = 0;
  for (const Config& c : configs) {
    Measurement m;
    try {
      m = run_config(c, iters, prop.multiProcessorCount, l2, stream);
      const Plan& pl = m.plan;
      print_config_prefix(c, pl);
      std::printf(" %7.2f %8.1f %8.1f | %6.0f %6.1f | %8.1f %5.1f%% %8.1f %4s %5s | %8s | %5d %5zu\n", m.metadata_us,
                  m.decode_us, m.step_us, m.gbps, m.tflops, pl.floor_us, m.pct_of_floor, pl.target_us,
                  m.decode_us <= pl.target_us ? "yes" : "NO", m.step_us <= pl.target_us ? "yes" : "NO",
                  fm_text(c).c_str(), m.parts, pl.sets);
    } catch (const std::exception& e) {
      m = Measurement();
      m.c = c;
      m.error = e.what();
      ++failures;
      std::printf("%-17s %4d %6s %8s %4d %3d %4d %2d | FAILED: %s\n", c.regime.c_str(), c.b, sk_text(c).c_str(), "",
                  c.h_q, c.s_q, c.h_kv, c.causal, e.what());
    }
    std::fflush(stdout);
    results.push_back(m);
    // A faulting kernel leaves the context unusable; later configs would only repeat it.
    const cudaError_t sync = cudaDeviceSynchronize();
    (void)cudaGetLastError();
    if (sync != cudaSuccess) {
      std::printf("bench_decode: device error (%s), stopping\n", cudaGetErrorString(sync));
      break;
    }
  }
  cudaStreamDestroy(stream);

  if (!json_path.empty()) {
    try {
      write_json(json_path, prop.name, l2, results);
      std::printf("wrote %s\n", json_path.c_str());
    } catch (const std::exception& e) {
      std::fprintf(stderr, "bench_decode: %s\n", e.what());
      return 1;
    }
  }
  return failures == 0 ? 0 : 1;
}
