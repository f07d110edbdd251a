// Shared helpers of the GPU tests (test_gpu.cpp, test_fp8_cache.cpp): CUDA error checks, the
// reason GPU tests skip, a fixture that skips with it, and an RAII device buffer.
#pragma once

#include <gtest/gtest.h>

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace flashmla::test {

inline void ck(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

// Empty string if the GPU tests can run, else why not.
inline std::string gpu_unavailable_reason() {
  static const std::string reason = [] {
    int n = 0;
    const cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess) {
      (void)cudaGetLastError();
      return std::string("no CUDA device (cudaGetDeviceCount: ") + cudaGetErrorString(err) + ")";
    }
    if (n == 0) return std::string("no CUDA device (cudaGetDeviceCount returned 0)");
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) return std::string("cudaGetDeviceProperties failed");
    if (prop.major != 9 || prop.minor != 0)
      return "kernels are built for sm_90a, device 0 is sm_" + std::to_string(prop.major * 10 + prop.minor);
    return std::string();
  }();
  return reason;
}

// Fixture of the GPU tests: skips (printing the reason) without an sm_90 device.
class GpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string why = gpu_unavailable_reason();
    if (!why.empty()) {
      std::printf("skipping: %s\n", why.c_str());
      GTEST_SKIP() << why;
    }
  }
};

// n elements of T in device memory; move-only.
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t n) : n_(n) { ck(cudaMalloc(reinterpret_cast<void**>(&ptr_), std::max<size_t>(n, 1) * sizeof(T)), "cudaMalloc"); }
  ~DeviceBuffer() {
    if (ptr_) cudaFree(ptr_);
  }
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), n_(o.n_) { o.ptr_ = nullptr; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    std::swap(ptr_, o.ptr_);
    std::swap(n_, o.n_);
    return *this;
  }
  T* get() const { return ptr_; }
  size_t size() const { return n_; }
  void upload(const std::vector<T>& h) {
    if (h.size() != n_) throw std::runtime_error("upload: size mismatch");
    ck(cudaMemcpy(ptr_, h.data(), n_ * sizeof(T), cudaMemcpyHostToDevice), "cudaMemcpy H2D");
  }
  std::vector<T> download() const {
    std::vector<T> h(n_);
    ck(cudaMemcpy(h.data(), ptr_, n_ * sizeof(T), cudaMemcpyDeviceToHost), "cudaMemcpy D2H");
    return h;
  }
  // All-ones bytes are a NaN in bf16 and fp32, and -1 as int32.
  void poison(cudaStream_t s) { ck(cudaMemsetAsync(ptr_, 0xff, n_ * sizeof(T), s), "cudaMemsetAsync"); }

 private:
  T* ptr_ = nullptr;
  size_t n_ = 0;
};

// A device copy of a host vector.
template <class T>
DeviceBuffer<T> to_device(const std::vector<T>& host) {
  DeviceBuffer<T> d(host.size());
  d.upload(host);
  return d;
}

}  // namespace flashmla::test
