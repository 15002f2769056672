// The tiled int8 GEMM (cuda_gemm.h): 128 x 128 output tiles per CTA, 8 warps of 64 x 32, k in
// stages of 128 bytes through a 3-deep cp.async pipeline, fragments by ldmatrix from swizzled
// shared memory (fragment_layout.h), mma.sync m16n8k32 s8 with int32 accumulators.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cuda/cuda_check.h"
#include "cuda/cuda_device.h"
#include "cuda/cuda_gemm.h"
#include "cuda/epilogue_device.cuh"
#include "cuda/fragment_layout.h"
#include "cuda/fragment_packing.h"
#include "cuda/mma_device.cuh"

namespace headrace::cuda {
namespace {

using namespace layout;

struct EpilogueParams {
  const float* row_scales;     // [m]
  const float* weight_scales;  // [n] or [1]
  int per_tensor_scale;
  const float* bias;  // [n] or nullptr
  quant::Activation activation;
};

constexpr int kGemmSharedBytes = 2 * kGemmStages * kGemmTileBytes;  // A and B^T stages

// a: [m][k_pad] (row stride lda), bt: [n][k_pad] (row stride ldb); k_pad a multiple of 16 and
// lda, ldb multiples of 16 so every cp.async source is 16-byte aligned.
template <bool kFloatOut>
__global__ void __launch_bounds__(kGemmThreads, 2)
    gemm_kernel(const std::int8_t* __restrict__ a, std::size_t lda,
                const std::int8_t* __restrict__ bt, std::size_t ldb, int m, int n, int k_pad,
                void* __restrict__ c, std::size_t ldc, EpilogueParams epilogue) {
  extern __shared__ __align__(128) std::int8_t shared[];
  std::int8_t* a_stages = shared;
  std::int8_t* b_stages = shared + kGemmStages * kGemmTileBytes;

  const int thread = static_cast<int>(threadIdx.x);
  const int warp = thread >> 5;
  const int lane = thread & 31;
  const int m0 = static_cast<int>(blockIdx.y) * kGemmTileRows;
  const int n0 = static_cast<int>(blockIdx.x) * kGemmTileRows;
  const int k_tiles = (k_pad + kGemmTileK - 1) / kGemmTileK;

  auto load_stage = [&](int k_tile, int stage) {
    const int k0 = k_tile * kGemmTileK;
#pragma unroll
    for (int i = 0; i < kGemmCopiesPerThread; ++i) {
      const TileChunk chunk = gemm_copy_chunk(thread, i);
      const int kk = k0 + chunk.chunk * 16;
      const int offset = stage * kGemmTileBytes + gemm_swizzled_offset(chunk.row, chunk.chunk);
      const int a_row = m0 + chunk.row;
      const bool a_valid = a_row < m && kk < k_pad;
      device::cp_async_16(a_stages + offset,
                          a_valid ? a + static_cast<std::size_t>(a_row) * lda + kk : a, a_valid);
      const int b_row = n0 + chunk.row;
      const bool b_valid = b_row < n && kk < k_pad;
      device::cp_async_16(b_stages + offset,
                          b_valid ? bt + static_cast<std::size_t>(b_row) * ldb + kk : bt, b_valid);
    }
  };

#pragma unroll
  for (int stage = 0; stage < kGemmStages - 1; ++stage) {
    if (stage < k_tiles) load_stage(stage, stage);
    device::cp_async_commit();
  }

  std::int32_t acc[4][4][4] = {};
  const int row0 = gemm_warp_row0(warp);
  const int col0 = gemm_warp_col0(warp);
  for (int k_tile = 0; k_tile < k_tiles; ++k_tile) {
    device::cp_async_wait<kGemmStages - 2>();
    // Makes every thread's copies of this stage visible, and guarantees every warp is done with
    // the stage the next load overwrites (the one computed in the previous iteration).
    __syncthreads();
    const int next = k_tile + kGemmStages - 1;
    if (next < k_tiles) load_stage(next, next % kGemmStages);
    device::cp_async_commit();

    const int stage = k_tile % kGemmStages;
    const std::uint32_t a_base = device::shared_address(a_stages + stage * kGemmTileBytes);
    const std::uint32_t b_base = device::shared_address(b_stages + stage * kGemmTileBytes);
#pragma unroll
    for (int kk = 0; kk < kGemmTileK / kMmaK; ++kk) {
      std::uint32_t a_frag[4][4];
      std::uint32_t b_frag[4][2];
#pragma unroll
      for (int mt = 0; mt < 4; ++mt) {
        device::ldmatrix_x4(a_frag[mt], a_base + static_cast<std::uint32_t>(gemm_a_ldmatrix_offset(
                                                     lane, row0 + mt * kMmaM, kk)));
      }
#pragma unroll
      for (int pair = 0; pair < 2; ++pair) {
        std::uint32_t regs[4];
        device::ldmatrix_x4(regs, b_base + static_cast<std::uint32_t>(gemm_b_ldmatrix_offset(
                                               lane, col0 + pair * 16, kk)));
        b_frag[2 * pair][0] = regs[0];
        b_frag[2 * pair][1] = regs[1];
        b_frag[2 * pair + 1][0] = regs[2];
        b_frag[2 * pair + 1][1] = regs[3];
      }
#pragma unroll
      for (int mt = 0; mt < 4; ++mt) {
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) device::mma_s8(acc[mt][nt], a_frag[mt], b_frag[nt][0], b_frag[nt][1]);
      }
    }
  }
  device::cp_async_wait<0>();

#pragma unroll
  for (int mt = 0; mt < 4; ++mt) {
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
      for (int reg = 0; reg < 4; ++reg) {
        const RowCol at = c_fragment_element(lane, reg);
        const int row = m0 + row0 + mt * kMmaM + at.row;
        const int col = n0 + col0 + nt * kMmaN + at.col;
        if (row >= m || col >= n) continue;
        const std::size_t index = static_cast<std::size_t>(row) * ldc + static_cast<std::size_t>(col);
        if constexpr (kFloatOut) {
          const float weight_scale = epilogue.weight_scales[epilogue.per_tensor_scale ? 0 : col];
          const float combined = __fmul_rn(epilogue.row_scales[row], weight_scale);
          float y = __fmul_rn(__int2float_rn(acc[mt][nt][reg]), combined);
          if (epilogue.bias != nullptr) y = __fadd_rn(y, epilogue.bias[col]);
          static_cast<float*>(c)[index] = device::activate(epilogue.activation, y);
        } else {
          static_cast<std::int32_t*>(c)[index] = acc[mt][nt][reg];
        }
      }
    }
  }
}

// Fills int8 device memory with a fixed pseudo-random pattern (a 32-bit hash of the index), so
// the benchmark times realistic operands without a host transfer of gigabytes.
__global__ void fill_random_kernel(std::int8_t* data, std::size_t count, std::uint32_t seed) {
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += stride) {
    std::uint32_t h = static_cast<std::uint32_t>(i) * 0x9E3779B1u ^ seed;
    h ^= h >> 15;
    h *= 0x85EBCA77u;
    h ^= h >> 13;
    data[i] = static_cast<std::int8_t>(h & 0xFFu);
  }
}

template <bool kFloatOut>
void configure_kernel() {
  check_cuda(cudaFuncSetAttribute(gemm_kernel<kFloatOut>,
                                  cudaFuncAttributeMaxDynamicSharedMemorySize, kGemmSharedBytes),
             "cudaFuncSetAttribute(gemm)");
}

template <bool kFloatOut>
void launch(const std::int8_t* a, std::size_t lda, const std::int8_t* bt, std::size_t ldb,
            std::size_t m, std::size_t n, std::size_t k_pad, void* c, std::size_t ldc,
            const EpilogueParams& epilogue, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((n + kGemmTileRows - 1) / kGemmTileRows),
                  static_cast<unsigned>((m + kGemmTileRows - 1) / kGemmTileRows));
  gemm_kernel<kFloatOut><<<grid, kGemmThreads, kGemmSharedBytes, stream>>>(
      a, lda, bt, ldb, static_cast<int>(m), static_cast<int>(n), static_cast<int>(k_pad), c, ldc,
      epilogue);
  check_cuda(cudaGetLastError(), "gemm kernel launch");
}

void check_shape(std::size_t m, std::size_t k, std::size_t lda, std::size_t n) {
  if (k == 0 || n == 0 || lda < k) {
    throw_invalid_argument("cuda gemm: need k >= 1, n >= 1 and lda >= k");
  }
  // The kernel indexes with int: keep every dimension well inside it.
  constexpr std::size_t kMaxDimension = std::size_t{1} << 30;
  if (m > kMaxDimension || n > kMaxDimension || k > kMaxDimension) {
    throw_invalid_argument("cuda gemm: dimensions above 2^30");
  }
}

// Uploads A padded to [m][k_pad] and W as B^T [n][k_pad].
struct DeviceOperands {
  DeviceBuffer a;
  DeviceBuffer bt;
  std::size_t k_pad;
};

DeviceOperands upload(const std::int8_t* a, std::size_t lda, std::size_t m, std::size_t k,
                      const std::int8_t* w_kn, std::size_t n, cudaStream_t stream) {
  const std::size_t k_pad = gemm_k_pad(k);
  std::vector<std::int8_t> a_pad(std::max<std::size_t>(m, 1) * k_pad, 0);
  for (std::size_t r = 0; r < m; ++r) std::memcpy(&a_pad[r * k_pad], a + r * lda, k);
  const std::vector<std::int8_t> bt = pack_gemm_weights(w_kn, k, n);
  DeviceOperands operands{DeviceBuffer(a_pad.size()), DeviceBuffer(bt.size()), k_pad};
  check_cuda(cudaMemcpyAsync(operands.a.as<void>(), a_pad.data(), a_pad.size(),
                             cudaMemcpyHostToDevice, stream),
             "cudaMemcpyAsync(A)");
  check_cuda(cudaMemcpyAsync(operands.bt.as<void>(), bt.data(), bt.size(), cudaMemcpyHostToDevice,
                             stream),
             "cudaMemcpyAsync(W)");
  // The host vectors die at return: wait for the copies (pageable copies may still read them).
  check_cuda(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  return operands;
}

template <typename T>
DeviceBuffer upload_vector(const T* values, std::size_t count, cudaStream_t stream) {
  DeviceBuffer buffer(count * sizeof(T));
  check_cuda(cudaMemcpyAsync(buffer.as<void>(), values, count * sizeof(T), cudaMemcpyHostToDevice,
                             stream),
             "cudaMemcpyAsync");
  check_cuda(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  return buffer;
}

}  // namespace

std::vector<std::int32_t> gemm_s8s8_s32(const std::int8_t* a, std::size_t lda, std::size_t m,
                                        std::size_t k, const std::int8_t* w_kn, std::size_t n,
                                        int device) {
  check_shape(m, k, lda, n);
  require_cuda_device(device);
  check_cuda(cudaSetDevice(device), "cudaSetDevice");
  std::vector<std::int32_t> c(m * n);
  if (m == 0) return c;
  configure_kernel<false>();
  const Stream stream;
  const DeviceOperands operands = upload(a, lda, m, k, w_kn, n, stream.get());
  const DeviceBuffer c_device(m * n * sizeof(std::int32_t));
  launch<false>(operands.a.as<const std::int8_t>(), operands.k_pad,
                operands.bt.as<const std::int8_t>(), operands.k_pad, m, n, operands.k_pad,
                c_device.as<void>(), n, EpilogueParams{}, stream.get());
  check_cuda(cudaMemcpyAsync(c.data(), c_device.as<void>(), c.size() * sizeof(std::int32_t),
                             cudaMemcpyDeviceToHost, stream.get()),
             "cudaMemcpyAsync(C)");
  check_cuda(cudaStreamSynchronize(stream.get()), "cudaStreamSynchronize");
  return c;
}

std::vector<float> gemm_s8s8_epilogue(const std::int8_t* a, std::size_t lda, std::size_t m,
                                      std::size_t k, const std::int8_t* w_kn, std::size_t n,
                                      const float* row_scales, const float* weight_scales,
                                      bool per_tensor_scale, const float* bias,
                                      quant::Activation activation, int device) {
  check_shape(m, k, lda, n);
  if (activation == quant::Activation::kSoftmax) {
    throw_invalid_argument("cuda gemm: softmax needs whole rows; the fused epilogue refuses it");
  }
  require_cuda_device(device);
  check_cuda(cudaSetDevice(device), "cudaSetDevice");
  std::vector<float> y(m * n);
  if (m == 0) return y;
  configure_kernel<true>();
  const Stream stream;
  const DeviceOperands operands = upload(a, lda, m, k, w_kn, n, stream.get());
  const DeviceBuffer scales = upload_vector(row_scales, m, stream.get());
  const DeviceBuffer weight = upload_vector(weight_scales, per_tensor_scale ? 1 : n, stream.get());
  const DeviceBuffer bias_device =
      bias != nullptr ? upload_vector(bias, n, stream.get()) : DeviceBuffer();
  const DeviceBuffer y_device(m * n * sizeof(float));
  const EpilogueParams epilogue{scales.as<const float>(), weight.as<const float>(),
                                per_tensor_scale ? 1 : 0,
                                bias != nullptr ? bias_device.as<const float>() : nullptr,
                                activation};
  launch<true>(operands.a.as<const std::int8_t>(), operands.k_pad,
               operands.bt.as<const std::int8_t>(), operands.k_pad, m, n, operands.k_pad,
               y_device.as<void>(), n, epilogue, stream.get());
  check_cuda(cudaMemcpyAsync(y.data(), y_device.as<void>(), y.size() * sizeof(float),
                             cudaMemcpyDeviceToHost, stream.get()),
             "cudaMemcpyAsync(Y)");
  check_cuda(cudaStreamSynchronize(stream.get()), "cudaStreamSynchronize");
  return y;
}

GemmTiming time_gemm_s8s8_s32(std::size_t m, std::size_t n, std::size_t k, int iterations,
                              int device) {
  check_shape(m, k, k, n);
  if (m == 0 || iterations < 1) throw_invalid_argument("cuda gemm timing: need m >= 1, iterations >= 1");
  require_cuda_device(device);
  check_cuda(cudaSetDevice(device), "cudaSetDevice");
  configure_kernel<false>();
  const std::size_t k_pad = gemm_k_pad(k);
  const Stream stream;
  const DeviceBuffer a(m * k_pad);
  const DeviceBuffer bt(n * k_pad);
  const DeviceBuffer c(m * n * sizeof(std::int32_t));
  fill_random_kernel<<<1024, 256, 0, stream.get()>>>(a.as<std::int8_t>(), m * k_pad, 1u);
  fill_random_kernel<<<1024, 256, 0, stream.get()>>>(bt.as<std::int8_t>(), n * k_pad, 2u);
  check_cuda(cudaGetLastError(), "fill kernel launch");

  cudaEvent_t start = nullptr;
  cudaEvent_t stop = nullptr;
  check_cuda(cudaEventCreate(&start), "cudaEventCreate");
  check_cuda(cudaEventCreate(&stop), "cudaEventCreate");
  std::vector<float> times_ms;
  try {
    constexpr int kWarmup = 3;
    for (int i = 0; i < kWarmup + iterations; ++i) {
      check_cuda(cudaEventRecord(start, stream.get()), "cudaEventRecord");
      launch<false>(a.as<const std::int8_t>(), k_pad, bt.as<const std::int8_t>(), k_pad, m, n,
                    k_pad, c.as<void>(), n, EpilogueParams{}, stream.get());
      check_cuda(cudaEventRecord(stop, stream.get()), "cudaEventRecord");
      check_cuda(cudaEventSynchronize(stop), "cudaEventSynchronize");
      float elapsed_ms = 0.0f;
      check_cuda(cudaEventElapsedTime(&elapsed_ms, start, stop), "cudaEventElapsedTime");
      if (i >= kWarmup) times_ms.push_back(elapsed_ms);
    }
  } catch (...) {
    static_cast<void>(cudaEventDestroy(start));
    static_cast<void>(cudaEventDestroy(stop));
    throw;
  }
  static_cast<void>(cudaEventDestroy(start));
  static_cast<void>(cudaEventDestroy(stop));
  std::sort(times_ms.begin(), times_ms.end());
  GemmTiming timing;
  timing.iterations = iterations;
  timing.median_ms = times_ms[times_ms.size() / 2];
  timing.min_ms = times_ms.front();
  return timing;
}

}  // namespace headrace::cuda
