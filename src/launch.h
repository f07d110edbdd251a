// Host-side launch helpers shared by the decode and combine launches: one place that builds a
// programmatic-dependent (PDL) launch, and per-device facts cached so a launch makes no
// attribute queries (at b <= 4 a few driver calls per step are a visible share of ~12 us).
#pragma once

#include <cuda_runtime.h>

#include <string>
#include <utility>
#include <vector>

#include "internal.h"

namespace flashmla::detail {

// A launch configuration with programmatic stream serialization (the kernel may start while
// the previous kernel on the stream runs; it calls griddepcontrol.wait before reading what
// that kernel wrote) and, for cluster_z > 1, clusters of cluster_z CTAs along z.
struct PdlLaunch {
  cudaLaunchAttribute attr[2]{};
  cudaLaunchConfig_t cfg{};
  PdlLaunch(dim3 grid, dim3 block, size_t dynamic_smem, cudaStream_t stream, unsigned cluster_z = 1) {
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    attr[1].id = cudaLaunchAttributeClusterDimension;
    attr[1].val.clusterDim.x = 1;
    attr[1].val.clusterDim.y = 1;
    attr[1].val.clusterDim.z = cluster_z;
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = dynamic_smem;
    cfg.stream = stream;
    cfg.attrs = attr;                      // points into this object: not copyable
    cfg.numAttrs = cluster_z > 1 ? 2 : 1;  // a size-1 cluster launch is not a plain launch
  }
  PdlLaunch(const PdlLaunch&) = delete;
  PdlLaunch& operator=(const PdlLaunch&) = delete;
};

// A launch without attributes whose error is its own: cudaGetLastError() after a <<<>>>
// launch would also report an earlier, unrelated error of the caller's as ours.
template <typename... Params, typename... Args>
void launch_plain(void (*kernel)(Params...), dim3 grid, dim3 block, size_t dynamic_smem,
                  cudaStream_t stream, const char* what, Args&&... args) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = dynamic_smem;
  cfg.stream = stream;
  check_cuda(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...), what);
}

struct DeviceInfo {
  int device = -1;
  int sms = 0;                   // multiprocessors
  int smem_per_sm = 0;           // bytes of shared memory per SM
  int smem_per_block_optin = 0;  // the most a CTA may opt in to
  int cc_major = 0, cc_minor = 0;
};

// The current device's facts, queried once per (thread, device): cudaGetDevice is the only
// driver call on the hot path. The kernels are built for sm_90a only: any other device is
// refused here with its name rather than by the first launch ("invalid device function").
inline DeviceInfo current_device_info() {
  thread_local std::vector<DeviceInfo> known;
  int dev = 0;
  check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
  for (const DeviceInfo& d : known)
    if (d.device == dev) return d;
  RelaxedCaptureScope relaxed;  // the first call may come while the caller captures a graph
  DeviceInfo d;
  d.device = dev;
  check_cuda(cudaDeviceGetAttribute(&d.cc_major, cudaDevAttrComputeCapabilityMajor, dev), "compute capability");
  check_cuda(cudaDeviceGetAttribute(&d.cc_minor, cudaDevAttrComputeCapabilityMinor, dev), "compute capability");
  if (d.cc_major != 9 || d.cc_minor != 0)
    throw Error("flashmla's kernels run on sm_90 GPUs (H100, H800, H200); device " + std::to_string(dev) +
                " has compute capability " + std::to_string(d.cc_major) + "." + std::to_string(d.cc_minor));
  check_cuda(cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, dev), "SM count");
  check_cuda(cudaDeviceGetAttribute(&d.smem_per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, dev),
             "shared memory per SM");
  check_cuda(cudaDeviceGetAttribute(&d.smem_per_block_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev),
             "shared memory per block");
  known.push_back(d);
  return d;
}

// Raises `kernel`'s dynamic shared memory opt-in on the current device to at least `bytes`.
// The attribute belongs to the kernel on one device (a process-wide once would leave a second
// GPU at the 48 KiB default), so the cache is per (thread, device, kernel). It is shared by
// every thread, and this cache cannot see another thread's setting: a kernel must always ask
// for the same `bytes` (one thread lowering what another relies on fails that launch).
inline void ensure_dynamic_smem(const void* kernel, int bytes, const char* what) {
  struct Entry {
    int device;
    const void* kernel;
    int bytes;
  };
  thread_local std::vector<Entry> set;
  const int dev = current_device_info().device;
  for (Entry& e : set) {
    if (e.device == dev && e.kernel == kernel) {
      if (e.bytes >= bytes) return;
      check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes), what);
      e.bytes = bytes;
      return;
    }
  }
  RelaxedCaptureScope relaxed;
  check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes), what);
  set.push_back({dev, kernel, bytes});
}

// `kernel`'s static shared memory in bytes (the same on every device of one build), queried once
// per (thread, kernel).
inline int static_smem_bytes(const void* kernel, const char* what) {
  thread_local std::vector<std::pair<const void*, int>> known;
  for (const auto& k : known)
    if (k.first == kernel) return k.second;
  RelaxedCaptureScope relaxed;
  cudaFuncAttributes attr{};
  check_cuda(cudaFuncGetAttributes(&attr, kernel), what);
  known.emplace_back(kernel, static_cast<int>(attr.sharedSizeBytes));
  return known.back().second;
}

}  // namespace flashmla::detail
