// Which CUDA devices this process can use, asked without ever failing: a machine without a GPU,
// without a driver, or a build without CUDA answers "no device" with the reason, never a crash or
// an import error. The CUDA runtime is linked statically (CMakeLists.txt), so headrace._core
// loads on machines with no CUDA installed at all; the runtime only looks for the driver
// (libcuda.so.1) on the first call here.
//
// Ownership/threading: plain values; every function is safe from any thread.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace headrace::cuda {

// The int8 tensor-core kernels need mma.sync m16n8k32 s8: compute capability 8.0 or newer.
constexpr int kMinComputeMajor = 8;

struct CudaDeviceInfo {
  int index = 0;
  std::string name;
  int compute_major = 0;
  int compute_minor = 0;
  int multiprocessors = 0;
  std::size_t memory_bytes = 0;
  std::size_t shared_memory_per_block_bytes = 0;  // the opt-in maximum for one block
  bool cluster_launch = false;                     // thread-block clusters (sm_90+)
};

struct CudaDiscovery {
  bool built_with_cuda = false;
  std::vector<CudaDeviceInfo> devices;  // every device the runtime reports, usable or not
  // Empty when at least one device can run the kernels; else why not, e.g. "CUDA driver version
  // is insufficient for CUDA runtime version (cudaErrorInsufficientDriver)".
  std::string unavailable_reason;
};

CudaDiscovery discover_cuda_devices() noexcept;

// The device `index` if it can run the kernels; else CoreError(kUnavailable,
// "no CUDA device: <reason>").
CudaDeviceInfo require_cuda_device(int index);

}  // namespace headrace::cuda
