#include <cuda_runtime.h>
#include <dlfcn.h>

#include <string>

#include "cuda/cuda_device.h"
#include "common/status.h"

namespace headrace::cuda {
namespace {

std::string describe(cudaError_t status) {
  std::string text =
      std::string(cudaGetErrorString(status)) + " (" + cudaGetErrorName(status) + ")";
  if (status == cudaErrorInsufficientDriver) {
    // The runtime says "insufficient driver" also when there is no driver at all: say which.
    void* driver = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL);
    if (driver == nullptr) return "no NVIDIA driver (libcuda.so.1 not found); " + text;
    dlclose(driver);
  }
  return text;
}

}  // namespace

CudaDiscovery discover_cuda_devices() noexcept {
  CudaDiscovery discovery;
  discovery.built_with_cuda = true;
  try {
    int count = 0;
    const cudaError_t status = cudaGetDeviceCount(&count);
    if (status != cudaSuccess) {
      // Without a driver or a device the runtime says so here; clear the sticky last error so a
      // later, unrelated cudaGetLastError does not report it.
      static_cast<void>(cudaGetLastError());
      discovery.unavailable_reason = describe(status);
      return discovery;
    }
    for (int index = 0; index < count; ++index) {
      cudaDeviceProp properties{};
      if (cudaGetDeviceProperties(&properties, index) != cudaSuccess) {
        static_cast<void>(cudaGetLastError());
        continue;
      }
      CudaDeviceInfo info;
      info.index = index;
      info.name = properties.name;
      info.compute_major = properties.major;
      info.compute_minor = properties.minor;
      info.multiprocessors = properties.multiProcessorCount;
      info.memory_bytes = properties.totalGlobalMem;
      info.shared_memory_per_block_bytes = properties.sharedMemPerBlockOptin;
      info.cluster_launch = properties.major >= 9;
      discovery.devices.push_back(info);
    }
    bool usable = false;
    for (const CudaDeviceInfo& info : discovery.devices) {
      usable = usable || info.compute_major >= kMinComputeMajor;
    }
    if (discovery.devices.empty()) {
      discovery.unavailable_reason = "the CUDA runtime reports no device";
    } else if (!usable) {
      discovery.unavailable_reason = "no device of compute capability " +
                                     std::to_string(kMinComputeMajor) +
                                     ".0 or newer (int8 mma.sync m16n8k32)";
    }
  } catch (const std::exception& error) {  // allocation failure while describing devices
    discovery.unavailable_reason = error.what();
  }
  return discovery;
}

CudaDeviceInfo require_cuda_device(int index) {
  const CudaDiscovery discovery = discover_cuda_devices();
  if (discovery.devices.empty() || !discovery.unavailable_reason.empty()) {
    throw CoreError(StatusCode::kUnavailable, "no CUDA device: " + discovery.unavailable_reason);
  }
  for (const CudaDeviceInfo& info : discovery.devices) {
    if (info.index != index) continue;
    if (info.compute_major < kMinComputeMajor) {
      throw CoreError(StatusCode::kUnavailable,
                      "no CUDA device: device " + std::to_string(index) + " (" + info.name +
                          ") has compute capability " + std::to_string(info.compute_major) + "." +
                          std::to_string(info.compute_minor) + ", the int8 kernels need " +
                          std::to_string(kMinComputeMajor) + ".0");
    }
    return info;
  }
  throw CoreError(StatusCode::kUnavailable,
                  "no CUDA device: there is no device " + std::to_string(index) + " (" +
                      std::to_string(discovery.devices.size()) + " present)");
}

}  // namespace headrace::cuda
