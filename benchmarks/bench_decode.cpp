// Decode benchmark of the C++ API (no torch).
//
//   bench_decode [--quick] [--json PATH] [--iters N] [--config b,s_k,h_q,s_q,causal[,h_kv]]...
//
// Every sequence of a config has length s_k. Timing: a CUDA graph of N back-to-back
// mla_decode calls, replayed after a warm-up and timed with events; consecutive calls read
// different input sets (q, block table, KV pages) whose KV bytes together exceed 4x the L2,
// so each call streams its KV cache from HBM as in a real decode step over many layers.
// get_mla_metadata is timed the same way, separately (it runs once per step, not per layer).
//
// Roofline: FLOPs = 2 * s_q * sum(s_k) * h_q * (576 + 512) (causal masking not discounted),
// bytes = (sum(s_k) * h_kv * 576 + b * s_q * h_q * (576 + 512)) * 2,
// floor = max(bytes / 2968 GB/s, FLOPs / 789 TFLOPS) (H100 SXM / H200-class peaks in use).
#include <cuda_runtime_api.h>

#include <algorithm>
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

constexpr double kPeakBytesPerSec = 2968e9;
constexpr double kPeakFlopsPerSec = 789e12;
constexpr size_t kMinL2Bytes = 50ull << 20;
constexpr int kPage = 64;

void ck(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

struct Config {
  int b = 128, s_k = 4096, h_q = 128, s_q = 1, h_kv = 1;
  bool causal = true;
};

struct Measurement {
  Config c;
  int sets = 0, parts = 0;
  double decode_us = 0, metadata_us = 0, gbps = 0, tflops = 0, floor_us = 0, pct_of_floor = 0;
  std::string error;
};

template <class T>
struct DeviceBuffer {
  T* ptr = nullptr;
  explicit DeviceBuffer(size_t n) { ck(cudaMalloc(reinterpret_cast<void**>(&ptr), std::max<size_t>(n, 1) * sizeof(T)), "cudaMalloc"); }
  ~DeviceBuffer() { cudaFree(ptr); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
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

// Elapsed microseconds per call of a graph holding `calls` calls, replayed `replays` times.
double time_graph(cudaGraphExec_t exec, cudaStream_t stream, int calls, int replays) {
  ck(cudaGraphLaunch(exec, stream), "cudaGraphLaunch (warm-up)");
  ck(cudaStreamSynchronize(stream), "warm-up");
  cudaEvent_t start, stop;
  ck(cudaEventCreate(&start), "cudaEventCreate");
  ck(cudaEventCreate(&stop), "cudaEventCreate");
  ck(cudaEventRecord(start, stream), "cudaEventRecord");
  for (int r = 0; r < replays; ++r) ck(cudaGraphLaunch(exec, stream), "cudaGraphLaunch");
  ck(cudaEventRecord(stop, stream), "cudaEventRecord");
  ck(cudaEventSynchronize(stop), "cudaEventSynchronize");
  float ms = 0;
  ck(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return ms * 1e3 / (static_cast<double>(calls) * replays);
}

// Captures `calls` invocations of body(i) into a graph. Relaxed mode: the benchmark measures
// kernels, it is not the place to police what the host side may call during capture.
template <class Body>
cudaGraphExec_t capture(cudaStream_t stream, int calls, Body body) {
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
  cudaGraphExec_t exec;
  ck(cudaGraphInstantiate(&exec, graph, 0), "cudaGraphInstantiate");
  ck(cudaGraphDestroy(graph), "cudaGraphDestroy");
  return exec;
}

Measurement run_config(const Config& c, int iters, int num_sms, size_t l2_bytes, cudaStream_t stream) {
  Measurement m;
  m.c = c;
  const int rows = c.s_q * c.h_q / c.h_kv;
  const int pages_per_seq = (c.s_k + kPage - 1) / kPage;
  const size_t pages_per_set = static_cast<size_t>(c.b) * pages_per_seq;
  const size_t page_elems = static_cast<size_t>(kPage) * c.h_kv * flashmla::kHeadDim;
  const size_t kv_bytes_per_set = pages_per_set * page_elems * 2;
  const size_t q_elems = static_cast<size_t>(c.b) * c.s_q * c.h_q * flashmla::kHeadDim;

  // Enough sets that the KV bytes cycled through exceed 4x L2, at least 2 so consecutive
  // calls never hit the same pages; bounded by free memory.
  size_t free_bytes = 0, total_bytes = 0;
  ck(cudaMemGetInfo(&free_bytes, &total_bytes), "cudaMemGetInfo");
  size_t sets = std::max<size_t>(2, (4 * l2_bytes + kv_bytes_per_set - 1) / kv_bytes_per_set);
  sets = std::min<size_t>(sets, 1024);
  const size_t budget = free_bytes / 10 * 8;
  if (sets * (kv_bytes_per_set + q_elems * 2) > budget) {
    sets = budget / (kv_bytes_per_set + q_elems * 2);
    if (sets == 0) throw std::runtime_error("one input set does not fit in device memory");
    std::fprintf(stderr, "  note: only %zu input set(s) fit in memory\n", sets);
  }
  m.sets = static_cast<int>(sets);
  m.parts = flashmla::num_sm_parts(num_sms, rows, c.h_kv);

  DeviceBuffer<uint16_t> k_cache(sets * pages_per_set * page_elems), q(sets * q_elems);
  DeviceBuffer<int32_t> table(sets * pages_per_set), seqlens(c.b);
  DeviceBuffer<uint16_t> out(static_cast<size_t>(c.b) * c.s_q * c.h_q * flashmla::kHeadDimV);
  DeviceBuffer<float> lse(static_cast<size_t>(c.b) * c.h_q * c.s_q);
  DeviceBuffer<int32_t> meta(static_cast<size_t>(m.parts) * flashmla::kMetadataInts), splits(c.b + 1);
  DeviceBuffer<float> o_accum(flashmla::o_accum_elems(c.b, m.parts, c.h_kv, rows));
  DeviceBuffer<float> lse_accum(flashmla::lse_accum_elems(c.b, m.parts, c.h_kv, rows));

  const std::vector<uint16_t> chunk = random_bf16(size_t(16) << 20, 1234);
  fill_random(k_cache.ptr, sets * pages_per_set * page_elems, chunk);
  fill_random(q.ptr, sets * q_elems, random_bf16(std::min<size_t>(q_elems, size_t(4) << 20), 99));

  // Each set owns a disjoint page range, visited in a random order as in a real paged cache.
  std::mt19937 rng(7);
  std::vector<int32_t> table_host(sets * pages_per_set);
  for (size_t s = 0; s < sets; ++s) {
    int32_t* t = &table_host[s * pages_per_set];
    std::iota(t, t + pages_per_set, static_cast<int32_t>(s * pages_per_set));
    std::shuffle(t, t + pages_per_set, rng);
  }
  ck(cudaMemcpy(table.ptr, table_host.data(), table_host.size() * 4, cudaMemcpyHostToDevice), "cudaMemcpy table");
  const std::vector<int32_t> seqlens_host(c.b, c.s_k);
  ck(cudaMemcpy(seqlens.ptr, seqlens_host.data(), c.b * 4, cudaMemcpyHostToDevice), "cudaMemcpy seqlens");

  flashmla::MlaDecodeParams p;
  p.batch = c.b;
  p.seqlen_q = c.s_q;
  p.num_heads_q = c.h_q;
  p.num_heads_kv = c.h_kv;
  p.num_blocks = static_cast<int>(sets * pages_per_set);
  p.max_blocks_per_seq = pages_per_seq;
  p.softmax_scale = 1.f / std::sqrt(static_cast<float>(flashmla::kHeadDim));
  p.causal = c.causal;
  p.q_head_stride = flashmla::kHeadDim;
  p.q_seq_stride = static_cast<int64_t>(c.h_q) * flashmla::kHeadDim;
  p.q_batch_stride = static_cast<int64_t>(c.s_q) * p.q_seq_stride;
  p.k_cache = k_cache.ptr;
  p.k_head_stride = flashmla::kHeadDim;
  p.k_row_stride = static_cast<int64_t>(c.h_kv) * flashmla::kHeadDim;
  p.k_block_stride = kPage * p.k_row_stride;
  p.block_table_batch_stride = pages_per_seq;
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
    per_set[s].q = q.ptr + s * q_elems;
    per_set[s].block_table = table.ptr + s * pages_per_set;
    flashmla::validate(per_set[s]);  // fail here, with the reason, rather than mid-capture
  }

  const int meta_calls = 50;
  cudaGraphExec_t meta_exec = capture(stream, meta_calls, [&](int) {
    flashmla::get_mla_metadata(seqlens.ptr, c.b, rows, c.h_kv, m.parts, meta.ptr, splits.ptr, stream);
  });
  m.metadata_us = time_graph(meta_exec, stream, meta_calls, 5);
  ck(cudaGraphExecDestroy(meta_exec), "cudaGraphExecDestroy");

  // The metadata is now valid for every set (same seqlens), so decode calls can be replayed.
  const int calls = std::max<int>(iters, static_cast<int>(sets));
  cudaGraphExec_t exec = capture(stream, calls, [&](int i) { flashmla::mla_decode(per_set[i % sets], stream); });
  m.decode_us = time_graph(exec, stream, calls, 3);
  ck(cudaGraphExecDestroy(exec), "cudaGraphExecDestroy");
  ck(cudaGetLastError(), "after timing");

  const double sum_sk = static_cast<double>(c.b) * c.s_k;
  const double flops = 2.0 * c.s_q * sum_sk * c.h_q * (flashmla::kHeadDim + flashmla::kHeadDimV);
  const double bytes = (sum_sk * c.h_kv * flashmla::kHeadDim +
                        static_cast<double>(c.b) * c.s_q * c.h_q * (flashmla::kHeadDim + flashmla::kHeadDimV)) * 2;
  m.gbps = bytes / m.decode_us / 1e3;
  m.tflops = flops / m.decode_us / 1e6;
  m.floor_us = std::max(bytes / kPeakBytesPerSec, flops / kPeakFlopsPerSec) * 1e6;
  m.pct_of_floor = 100.0 * m.floor_us / m.decode_us;
  return m;
}

std::string json_escape(const std::string& s) {
  std::string r;
  for (char ch : s) {
    if (ch == '"' || ch == '\\') r += '\\';
    if (static_cast<unsigned char>(ch) < 0x20) continue;
    r += ch;
  }
  return r;
}

void write_json(const std::string& path, const std::string& device, const std::vector<Measurement>& ms) {
  std::ofstream f(path);
  if (!f) throw std::runtime_error("cannot open " + path);
  f << "{\n  \"device\": \"" << json_escape(device) << "\",\n  \"peak_gbps\": " << kPeakBytesPerSec / 1e9
    << ",\n  \"peak_tflops\": " << kPeakFlopsPerSec / 1e12 << ",\n  \"results\": [\n";
  for (size_t i = 0; i < ms.size(); ++i) {
    const Measurement& m = ms[i];
    f << "    {\"b\": " << m.c.b << ", \"s_k\": " << m.c.s_k << ", \"h_q\": " << m.c.h_q
      << ", \"s_q\": " << m.c.s_q << ", \"h_kv\": " << m.c.h_kv << ", \"causal\": " << (m.c.causal ? "true" : "false");
    if (!m.error.empty()) {
      f << ", \"error\": \"" << json_escape(m.error) << "\"}";
    } else {
      f << ", \"sets\": " << m.sets << ", \"num_sm_parts\": " << m.parts << ", \"decode_us\": " << m.decode_us
        << ", \"metadata_us\": " << m.metadata_us << ", \"gbps\": " << m.gbps << ", \"tflops\": " << m.tflops
        << ", \"floor_us\": " << m.floor_us << ", \"pct_of_floor\": " << m.pct_of_floor << "}";
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

Config parse_config(const std::string& spec) {
  std::vector<int> v;
  size_t pos = 0;
  while (pos <= spec.size()) {
    const size_t comma = std::min(spec.find(',', pos), spec.size());
    v.push_back(std::stoi(spec.substr(pos, comma - pos)));
    pos = comma + 1;
  }
  if (v.size() < 5 || v.size() > 6) throw std::invalid_argument("--config wants b,s_k,h_q,s_q,causal[,h_kv]");
  Config c;
  c.b = v[0];
  c.s_k = v[1];
  c.h_q = v[2];
  c.s_q = v[3];
  c.causal = v[4] != 0;
  if (v.size() == 6) c.h_kv = v[5];
  return c;
}

void usage() {
  std::printf("usage: bench_decode [--quick] [--json PATH] [--iters N] [--config b,s_k,h_q,s_q,causal[,h_kv]]...\n");
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<Config> configs;
  std::string json_path;
  bool quick = false;
  int iters = 32;
  try {
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      const bool has_value = i + 1 < argc;
      if (a == "--quick") {
        quick = true;
      } else if (a == "--json" && has_value) {
        json_path = argv[++i];
      } else if (a == "--iters" && has_value) {
        iters = std::max(1, std::stoi(argv[++i]));
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
  if (configs.empty()) {
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
  std::printf("device: %s, %d SMs, L2 %.0f MB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize / 1048576.0);
  std::printf("%5s %6s %4s %4s %4s %6s | %9s %9s %8s %8s %9s %7s | %5s %5s\n", "b", "s_k", "h_q", "s_q", "h_kv",
              "causal", "us", "meta_us", "GB/s", "TFLOPS", "floor_us", "%floor", "parts", "sets");

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
      std::printf("%5d %6d %4d %4d %4d %6d | %9.1f %9.2f %8.0f %8.1f %9.1f %6.1f%% | %5d %5d\n", c.b, c.s_k, c.h_q,
                  c.s_q, c.h_kv, c.causal, m.decode_us, m.metadata_us, m.gbps, m.tflops, m.floor_us, m.pct_of_floor,
                  m.parts, m.sets);
    } catch (const std::exception& e) {
      m.c = c;
      m.error = e.what();
      ++failures;
      std::printf("%5d %6d %4d %4d %4d %6d | FAILED: %s\n", c.b, c.s_k, c.h_q, c.s_q, c.h_kv, c.causal, e.what());
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
      write_json(json_path, prop.name, results);
      std::printf("wrote %s\n", json_path.c_str());
    } catch (const std::exception& e) {
      std::fprintf(stderr, "bench_decode: %s\n", e.what());
      return 1;
    }
  }
  return failures == 0 ? 0 : 1;
}
