// Issue rates of the instruction shapes the small-head kernel is built from, on the card at
// hand (docs/perf-log.md v14, v15): clocks per wgmma for m64n16k16 with A in shared memory
// (K-major, MN-major) or in registers (f16) and for the wide kernel's m64n64k16, from one or
// two warpgroups per SM and one or four independent accumulators; and clocks per converted e4m3
// pair for an e4m3 -> bf16 route and the small-head kernel's e4m3 -> f16 route, at one and four
// warps per scheduler. The kernel's route is also checked on every byte pair against the e4m3
// definition.
//   bench_wgmma
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

#include "fp8_record.cuh"
#include "sm90/ptx.cuh"

namespace {
using namespace flashmla::sm90;

void ck(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

constexpr int kRounds = 256;
constexpr int kPerRound = 16;
constexpr int kSmemBytes = 4 * 8192 + 8192 + 1024;

// kMode 0: SS m64n16k16, A K-major; 1: SS, A MN-major; 2: RS m64n16k16; 3: SS m64n64k16.
template <int kMode, int kAcc>
__global__ void __launch_bounds__(256, 1) wgmma_rate(long long* clocks, float* sink) {
  extern __shared__ char raw[];
  char* base = raw + ((1024 - (smem_addr(raw) & 1023)) & 1023);
  for (int i = threadIdx.x; i < (4 * 8192 + 8192) / 4; i += blockDim.x)
    reinterpret_cast<uint32_t*>(base)[i] = 0x3c003c00u ^ ((i * 2654435761u) & 0x00ff00ffu);
  fence_proxy_async();
  __syncthreads();
  const uint32_t a0 = smem_addr(base), b0 = smem_addr(base + 4 * 8192);
  const uint64_t da = make_desc_sw128(a0, kMode == 1 ? 8192 : 16, 1024);
  const uint64_t db = make_desc_sw128(b0, 16, 1024);
  constexpr int kN = kMode == 3 ? 32 : 8;
  float acc[kAcc][kN];
  for (int a = 0; a < kAcc; ++a)
    for (int e = 0; e < kN; ++e) acc[a][e] = 0.f;
  uint32_t ra[4][4];
  for (int k = 0; k < 4; ++k)
    for (int e = 0; e < 4; ++e) ra[k][e] = 0x3c003c00u ^ (threadIdx.x * 7 + k * 4 + e);
  __syncthreads();
  const long long t0 = clock64();
  for (int r = 0; r < kRounds; ++r) {
    wgmma_fence();
#pragma unroll
    for (int k = 0; k < kPerRound; ++k) {
      float(&d)[kN] = acc[k % kAcc];
      const uint32_t off = (k % 4) * 32 + ((k / 4) % 4) * 8192;
      if constexpr (kMode == 0 || kMode == 1) {
        wgmma_m64n16k16<__nv_bfloat16, kMode>(
            reinterpret_cast<float(&)[8]>(d),
            desc_advance(da, kMode == 1 ? (k % 4) * 2048 + ((k / 4) % 4) * 8192 : off),
            desc_advance(db, (k % 4) * 32), 1);
      } else if constexpr (kMode == 2) {
        wgmma_m64n16k16_f16_rs(reinterpret_cast<float(&)[8]>(d), ra[k % 4], desc_advance(db, (k % 4) * 32), 1);
      } else {
        wgmma_m64n64k16<__nv_bfloat16>(reinterpret_cast<float(&)[32]>(d), desc_advance(da, off),
                                       desc_advance(db, (k % 4) * 32), 1);
      }
    }
    wgmma_commit();
    wgmma_wait<1>();
  }
  wgmma_wait<0>();
  const long long t1 = clock64();
  for (int a = 0; a < kAcc; ++a) fence_operands(acc[a]);
  float x = 0.f;
  for (int a = 0; a < kAcc; ++a)
    for (int e = 0; e < kN; ++e) x += acc[a][e];
  if (x == 1234.5f) sink[threadIdx.x] = x;
  if (threadIdx.x % 128 == 0) clocks[blockIdx.x * 2 + threadIdx.x / 128] = t1 - t0;
}

// kMethod 0: no conversion (the loop's own cost); 1: cvt e4m3x2 -> f16x2 -> f32 -> bf16x2
// (fp8::e4m3x2_to_bf16x2 with scale 1); 2: the small-head kernel's route, one byte permute and
// two cvt e4m3x2 -> f16x2 (fp8::e4m3x4_to_f16x2_pairs).
template <int kMethod>
__global__ void convert_rate(int iters, long long* clocks, uint32_t* sink) {
  uint32_t x[8], acc = 0;
  for (int j = 0; j < 8; ++j) x[j] = (threadIdx.x * 0x9e3779b9u) ^ (j * 0x85ebca6bu);
  const long long t0 = clock64();
  for (int i = 0; i < iters; ++i) {
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      uint32_t r0, r1;
      if constexpr (kMethod == 0) {
        r0 = x[j];
        r1 = x[j] >> 16;
      } else if constexpr (kMethod == 1) {
        r0 = flashmla::fp8::e4m3x2_to_bf16x2(x[j], 1.f);
        r1 = flashmla::fp8::e4m3x2_to_bf16x2(x[j] >> 16, 1.f);
      } else {
        flashmla::fp8::e4m3x4_to_f16x2_pairs(x[j], r0, r1);
      }
      acc ^= r0 + r1;
      x[j] += 0x01010101u;
    }
  }
  const long long t1 = clock64();
  if (acc == 0x12345678u) sink[threadIdx.x] = acc;
  if (threadIdx.x == 0) clocks[blockIdx.x] = t1 - t0;
}

// The exact value of an e4m3 byte from its bits (NaN for S.1111.111).
__device__ float e4m3_value(uint32_t b) {
  const int e = (b >> 3) & 15, m = b & 7;
  if (e == 15 && m == 7) return __int_as_float(0x7fc00000);
  const float mag = e == 0 ? ldexpf(static_cast<float>(m), -9) : ldexpf(static_cast<float>(8 + m), e - 10);
  return (b & 0x80) ? -mag : mag;
}

// Every byte pair through the small-head kernel's route against the bit definition; counts the
// pairs that differ (NaN must stay NaN).
__global__ void convert_check(unsigned* mismatches, unsigned* first_bad) {
  const uint32_t two = blockIdx.x * blockDim.x + threadIdx.x;  // 0 .. 65535
  uint32_t even, odd;
  // bytes (lo, hi) of `two` go to b0, b2 of a word: the route's even pair
  flashmla::fp8::e4m3x4_to_f16x2_pairs(__byte_perm(two, 0, 0x4140), even, odd);
  bool ok = true;
  for (int h = 0; h < 2; ++h) {
    const float want = e4m3_value((two >> (8 * h)) & 0xff);
    const float got = __half2float(__ushort_as_half(static_cast<unsigned short>(even >> (16 * h))));
    ok = ok && (isnan(want) ? isnan(got) : got == want);
  }
  if (!ok) {
    if (atomicAdd(mismatches, 1u) == 0) *first_bad = two;
  }
}

template <int kMode, int kAcc>
void run_wgmma(int sms, int wgs, long long* d_clocks, float* d_sink) {
  auto k = wgmma_rate<kMode, kAcc>;
  ck(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes), "attr");
  k<<<sms, 128 * wgs, kSmemBytes>>>(d_clocks, d_sink);
  ck(cudaDeviceSynchronize(), "wgmma_rate");
  std::vector<long long> c(sms * 2);
  ck(cudaMemcpy(c.data(), d_clocks, c.size() * sizeof(long long), cudaMemcpyDeviceToHost), "copy");
  double worst = 0;
  for (int b = 0; b < sms; ++b)
    for (int w = 0; w < wgs; ++w) worst = std::max(worst, static_cast<double>(c[b * 2 + w]));
  const double per = worst / (kRounds * kPerRound);
  static const char* names[] = {"m64n16k16 SS A K-major ", "m64n16k16 SS A MN-major", "m64n16k16 RS           ",
                                "m64n64k16 SS A K-major "};
  std::printf("wgmma %s acc=%d wgs=%d: %6.1f clk per wgmma per warpgroup, %6.1f per SM\n", names[kMode], kAcc,
              wgs, per, per / wgs);
}

template <int kMethod>
void run_convert(int sms, int warps, long long* d_clocks, uint32_t* d_sink) {
  const int iters = 512;
  convert_rate<kMethod><<<sms, 32 * warps>>>(iters, d_clocks, d_sink);
  ck(cudaDeviceSynchronize(), "convert_rate");
  std::vector<long long> c(sms);
  ck(cudaMemcpy(c.data(), d_clocks, c.size() * sizeof(long long), cudaMemcpyDeviceToHost), "copy");
  double worst = 0;
  for (long long v : c) worst = std::max(worst, static_cast<double>(v));
  // 16 pairs per thread per iteration; a scheduler runs warps / 4 warps
  const double per_pair_per_warp = worst / (iters * 16.0);
  static const char* names[] = {"loop only        ", "cvt f16/f32/pack ", "prmt + 2 cvt f16 "};
  std::printf("convert %s warps/scheduler=%d: %5.2f clk per pair per warp, %5.2f clk per warp-pair per "
              "scheduler\n",
              names[kMethod], warps / 4, per_pair_per_warp, per_pair_per_warp / (warps / 4));
}

}  // namespace

int main() {
  try {
    int dev = 0, sms = 0;
    ck(cudaGetDevice(&dev), "device");
    ck(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), "sms");
    long long* d_clocks;
    float* d_sink;
    uint32_t* d_usink;
    unsigned* d_bad;
    ck(cudaMalloc(&d_clocks, sms * 2 * sizeof(long long)), "malloc");
    ck(cudaMalloc(&d_sink, 4096), "malloc");
    ck(cudaMalloc(&d_usink, 4096), "malloc");
    ck(cudaMalloc(&d_bad, 8), "malloc");
    ck(cudaMemset(d_bad, 0, 8), "memset");
    convert_check<<<256, 256>>>(d_bad, d_bad + 1);
    ck(cudaDeviceSynchronize(), "convert_check");
    unsigned bad[2];
    ck(cudaMemcpy(bad, d_bad, 8, cudaMemcpyDeviceToHost), "copy");
    std::printf("convert check: %u of 65536 byte pairs differ from the e4m3 definition (first 0x%04x)\n", bad[0],
                bad[0] ? bad[1] : 0);
    for (int wgs = 1; wgs <= 2; ++wgs) {
      run_wgmma<0, 1>(sms, wgs, d_clocks, d_sink);
      run_wgmma<0, 4>(sms, wgs, d_clocks, d_sink);
      run_wgmma<1, 4>(sms, wgs, d_clocks, d_sink);
      run_wgmma<2, 1>(sms, wgs, d_clocks, d_sink);
      run_wgmma<2, 4>(sms, wgs, d_clocks, d_sink);
      run_wgmma<3, 1>(sms, wgs, d_clocks, d_sink);
      run_wgmma<3, 2>(sms, wgs, d_clocks, d_sink);
    }
    for (int warps : {4, 16}) {
      run_convert<0>(sms, warps, d_clocks, d_usink);
      run_convert<1>(sms, warps, d_clocks, d_usink);
      run_convert<2>(sms, warps, d_clocks, d_usink);
    }
    return bad[0] == 0 ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_wgmma: %s\n", e.what());
    return 2;
  }
}
