// csrc/cuda in a build without a CUDA compiler (HEADRACE_CUDA=OFF, or AUTO with no nvcc): every
// entry point answers what such a build can do: discovery reports no device and why, everything
// that needs a device refuses with CoreError(kUnavailable, "no CUDA device: ..."). CMakeLists.txt
// compiles this file instead of the .cu files.
#include <memory>
#include <string>

#include "cuda/cuda_device.h"
#include "cuda/cuda_gemm.h"
#include "cuda/cuda_mlp.h"
#include "common/status.h"

namespace headrace::cuda {
namespace {

constexpr const char* kReason =
    "this build of headrace has no CUDA support (no CUDA compiler was found when it was built; "
    "rebuild with HEADRACE_CUDA=ON and nvcc on the PATH)";

[[noreturn]] void refuse() {
  throw CoreError(StatusCode::kUnavailable, std::string("no CUDA device: ") + kReason);
}

}  // namespace

CudaDiscovery discover_cuda_devices() noexcept {
  CudaDiscovery discovery;
  discovery.built_with_cuda = false;
  discovery.unavailable_reason = kReason;
  return discovery;
}

CudaDeviceInfo require_cuda_device(int) { refuse(); }

std::vector<std::int32_t> gemm_s8s8_s32(const std::int8_t*, std::size_t, std::size_t, std::size_t,
                                        const std::int8_t*, std::size_t, int) {
  refuse();
}

std::vector<float> gemm_s8s8_epilogue(const std::int8_t*, std::size_t, std::size_t, std::size_t,
                                      const std::int8_t*, std::size_t, const float*, const float*,
                                      bool, const float*, quant::Activation, int) {
  refuse();
}

GemmTiming time_gemm_s8s8_s32(std::size_t, std::size_t, std::size_t, int, int) { refuse(); }

// Never constructed in this build, but CudaMlp's members must exist for the linker.
struct CudaMlp::Impl {
  quant::TensorMetadata metadata;
};

CudaMlp::CudaMlp(const quant::Int8ModelFile&, CudaMlpOptions) { refuse(); }
// Refuses before reading the file: "no CUDA device" is the answer whatever the file holds.
std::shared_ptr<CudaMlp> CudaMlp::load(const std::string&, CudaMlpOptions) { refuse(); }
CudaMlp::~CudaMlp() = default;
void CudaMlp::run(const float*, std::size_t, float*) const { refuse(); }
double CudaMlp::time_launch_us(std::size_t, int, bool) const { refuse(); }
std::size_t CudaMlp::input_size() const noexcept { return 0; }
std::size_t CudaMlp::output_size() const noexcept { return 0; }
std::size_t CudaMlp::layer_count() const noexcept { return 0; }
const quant::TensorMetadata& CudaMlp::input() const noexcept { return impl_->metadata; }
const quant::TensorMetadata& CudaMlp::output() const noexcept { return impl_->metadata; }
int CudaMlp::device() const noexcept { return 0; }
int CudaMlp::cluster_size() const noexcept { return 0; }
std::size_t CudaMlp::shared_memory_bytes() const noexcept { return 0; }

}  // namespace headrace::cuda
