// The two ceilings the floors are computed from, plus the one the multi-query-tile configs
// hit first, measured on the card at hand (no torch):
//   copy  device-to-device copy of 2 GiB, GB/s counting bytes read + written (DRAM ceiling);
//   l2    every SM streaming 16-byte loads (ld.global.cg) over a 24 MiB buffer that stays in
//         L2, GB/s delivered from L2 to the SMs. Decode configs with 2-4 query tiles per kv
//         head read each KV tile once per query tile from L2 (docs/perf-log.md v5), so this
//         caps them below the tensor rate when it is the smaller of the two.
// bf16 GEMM throughput is measured through torch (benchmarks/device_suite.sh), not here.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

void ck(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

// Each CTA walks the buffer from its own offset, `per_cta` bytes in all; the XOR of what it
// read is stored so the loads cannot be dropped.
__global__ void l2_read_kernel(const uint4* buf, size_t n_vec, size_t per_cta_vec, uint4* sink) {
  uint32_t acc = 0;
  size_t i = (static_cast<size_t>(blockIdx.x) * 7919 * blockDim.x + threadIdx.x) % n_vec;
  for (size_t k = threadIdx.x; k < per_cta_vec; k += blockDim.x) {
    uint4 v;
    asm volatile("ld.global.cg.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(buf + i));
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
    i += blockDim.x;
    if (i >= n_vec) i -= n_vec;
  }
  if (acc == 0x9e3779b9u) sink[threadIdx.x] = make_uint4(acc, 0, 0, 0);
}

template <class F>
float median_ms(F&& launch, int reps) {
  cudaEvent_t a, b;
  ck(cudaEventCreate(&a), "event");
  ck(cudaEventCreate(&b), "event");
  launch();  // warm-up
  ck(cudaDeviceSynchronize(), "warm-up");
  std::vector<float> t;
  for (int r = 0; r < reps; ++r) {
    ck(cudaEventRecord(a), "record");
    launch();
    ck(cudaEventRecord(b), "record");
    ck(cudaEventSynchronize(b), "sync");
    float ms = 0;
    ck(cudaEventElapsedTime(&ms, a, b), "elapsed");
    t.push_back(ms);
  }
  std::sort(t.begin(), t.end());
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return t[t.size() / 2];
}

}  // namespace

int main() {
  try {
    cudaDeviceProp prop{};
    ck(cudaGetDeviceProperties(&prop, 0), "properties");
    std::printf("device: %s, %d SMs, L2 %d MiB\n", prop.name, prop.multiProcessorCount,
                prop.l2CacheSize >> 20);

    const size_t copy_bytes = 2ull << 30;
    void *src = nullptr, *dst = nullptr;
    ck(cudaMalloc(&src, copy_bytes), "malloc");
    ck(cudaMalloc(&dst, copy_bytes), "malloc");
    ck(cudaMemset(src, 0x5a, copy_bytes), "memset");
    const float copy_ms = median_ms(
        [&] { ck(cudaMemcpyAsync(dst, src, copy_bytes, cudaMemcpyDeviceToDevice), "copy"); }, 9);
    std::printf("copy: %.0f GB/s (read + write, 2 GiB)\n", 2.0 * copy_bytes / (copy_ms * 1e-3) / 1e9);

    const size_t l2_bytes = 24ull << 20;
    const size_t n_vec = l2_bytes / 16;
    const int ctas = prop.multiProcessorCount * 2, threads = 1024;
    const size_t per_cta_vec = (64ull << 20) / 16;  // 64 MiB per CTA
    uint4* sink = nullptr;
    ck(cudaMalloc(&sink, threads * sizeof(uint4)), "malloc");
    const float l2_ms = median_ms(
        [&] {
          l2_read_kernel<<<ctas, threads>>>(static_cast<const uint4*>(src), n_vec, per_cta_vec, sink);
          ck(cudaGetLastError(), "l2 kernel");
        },
        9);
    std::printf("l2: %.0f GB/s (L2 -> SM, %d CTAs x 64 MiB over a 24 MiB buffer)\n",
                static_cast<double>(ctas) * per_cta_vec * 16 / (l2_ms * 1e-3) / 1e9, ctas);
    cudaFree(src);
    cudaFree(dst);
    cudaFree(sink);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_ceilings: %s\n", e.what());
    return 1;
  }
  return 0;
}
