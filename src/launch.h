// Host-side launch helpers shared by the decode and combine launches: one place that builds a
// programmatic-dependent (PDL) launch, and per-device facts cached so a launch makes no
// attribute queries (at b <= 4 a few driver calls per step are a visible share of ~12 us).
#pragma once

#include <cuda_runtime_api.h>

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

struct DeviceInfo {
  int device = -1;
  int sms = 0;                   // multiprocessors
  int smem_per_sm = 0;           // bytes of shared memory per SM
  int smem_per_block_optin = 0;  // the most a CTA may opt in to
};

// The current device's facts, queried once per (thread, device): cudaGetDevice is the only
// driver call on the hot path.
inline DeviceInfo current_device_info() {
  thread_local std::vector<DeviceInfo> known;
  int dev = 0;
  check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
  for (const DeviceInfo& d : known)
    if (d.device == dev) return d;
  DeviceInfo d;
  d.device = dev;
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
// GPU at the 48 KiB default), so the cache is per (thread, device, kernel).
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
  check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes), what);
  set.push_back({dev, kernel, bytes});
}

// `kernel`'s static shared memory in bytes (the same on every device of one build), queried once
// per (thread, kernel).
inline int static_smem_bytes(const void* kernel, const char* what) {
  thread_local std::vector<std::pair<const void*, int>> known;
  for (const auto& k : known)
    if (k.first == kernel) return k.second;
  cudaFuncAttributes attr{};
  check_cuda(cudaFuncGetAttributes(&attr, kernel), what);
  known.emplace_back(kernel, static_cast<int>(attr.sharedSizeBytes));
  return known.back().second;
}

}  // namespace flashmla::detail
