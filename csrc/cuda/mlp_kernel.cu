// The whole-MLP kernel (mlp_kernel.h describes the phases).
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "cuda/cuda_check.h"
#include "cuda/epilogue_device.cuh"
#include "cuda/fragment_layout.h"
#include "cuda/mlp_kernel.h"
#include "cuda/mma_device.cuh"

namespace headrace::cuda {
namespace {

using namespace layout;
using quant::Activation;

constexpr unsigned kFullMask = 0xffffffffu;

// ---- the cluster: distributed shared memory on sm_90+, a lone CTA before ----
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
__device__ __forceinline__ int cluster_rank() {
  return static_cast<int>(cooperative_groups::this_cluster().block_rank());
}
__device__ __forceinline__ void cluster_sync() { cooperative_groups::this_cluster().sync(); }
template <typename T>
__device__ __forceinline__ T* peer(T* pointer, int rank) {
  return cooperative_groups::this_cluster().map_shared_rank(pointer, static_cast<unsigned>(rank));
}
#else
__device__ __forceinline__ int cluster_rank() { return 0; }
__device__ __forceinline__ void cluster_sync() { __syncthreads(); }
template <typename T>
__device__ __forceinline__ T* peer(T* pointer, int) {
  return pointer;
}
#endif

__device__ __forceinline__ float warp_max(float value) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    value = fmaxf(value, __shfl_xor_sync(kFullMask, value, offset));
  }
  return value;
}

__device__ __forceinline__ float warp_sum(float value) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    value = __fadd_rn(value, __shfl_xor_sync(kFullMask, value, offset));
  }
  return value;
}

__device__ __forceinline__ void flag_error(int* error_flag) { atomicOr(error_flag, 1); }

// Phase 0: every CTA quantizes the chunk's input rows into its own activations (the input is
// small next to the weights; computing it redundantly saves a cluster exchange).
__device__ void quantize_input(const MlpParams& params, const MlpLayerParams& layer, int row0,
                               int rows_here, std::int8_t* activations, float* row_scale,
                               int warp, int lane) {
  const int k = layer.k;
  for (int r = warp; r < rows_here; r += kMlpWarps) {
    const float* x = params.x + static_cast<std::size_t>(row0 + r) * static_cast<std::size_t>(k);
    std::int8_t* q = activations + static_cast<std::size_t>(r) * static_cast<std::size_t>(params.activation_stride);
    bool bad = false;
    float scale;
    float inverse;
    if (layer.input_static != 0) {
      scale = layer.input_scale;
      inverse = __fdiv_rn(1.0f, scale);
      for (int c = lane; c < k; c += kWarpLanes) bad = bad || isnan(x[c]);
    } else {
      float max_abs = 0.0f;
      for (int c = lane; c < k; c += kWarpLanes) {
        const float v = x[c];
        bad = bad || isnan(v);
        max_abs = fmaxf(max_abs, fabsf(v));  // fmaxf ignores a NaN operand
      }
      max_abs = warp_max(max_abs);
      bad = bad || isinf(max_abs);
      scale = max_abs == 0.0f ? 0.0f : __fdiv_rn(max_abs, 127.0f);
      inverse = max_abs == 0.0f ? 0.0f : __fdiv_rn(127.0f, max_abs);
    }
    if (__any_sync(kFullMask, bad) && lane == 0) flag_error(params.error_flag);
    for (int c = lane; c < k; c += kWarpLanes) q[c] = device::to_int8(__fmul_rn(x[c], inverse));
    if (lane == 0) row_scale[r] = scale;
  }
}

// One warp's work item: int32 partial sums of one 32-column group over a run of k steps, added
// into the CTA's accumulators.
__device__ void run_work_item(const MlpLayerParams& layer, const WorkItem& item, int first_group,
                              int m_tiles, const std::int8_t* activations,
                              std::size_t activation_stride, std::int32_t* accumulators,
                              int accumulator_stride, std::uint8_t* ring, int lane) {
  const std::size_t tile0 = static_cast<std::size_t>((first_group + item.group) * kMlpGroupTiles);
  const std::size_t k_steps = static_cast<std::size_t>(layer.k_steps);
  const int steps = item.step_end - item.step_first;

  auto issue = [&](int i) {
    const std::size_t step = static_cast<std::size_t>(item.step_first + i);
    std::uint8_t* stage = ring + (i % kMlpStages) * kMlpStageBytes + lane * 16;
#pragma unroll
    for (int t = 0; t < kMlpGroupTiles; ++t) {
      device::cp_async_16(stage + t * kMlpSlabBytes,
                          layer.weights + mlp_slab_offset(tile0 + static_cast<std::size_t>(t), step, k_steps, lane),
                          true);
    }
  };

#pragma unroll
  for (int i = 0; i < kMlpStages - 1; ++i) {
    if (i < steps) issue(i);
    device::cp_async_commit();
  }

  std::int32_t acc[kMlpMaxMTiles][kMlpGroupTiles][4] = {};
  for (int i = 0; i < steps; ++i) {
    if (i + kMlpStages - 1 < steps) issue(i + kMlpStages - 1);
    device::cp_async_commit();
    device::cp_async_wait<kMlpStages - 1>();  // this lane's copies for step i have landed

    const std::uint8_t* stage = ring + (i % kMlpStages) * kMlpStageBytes + lane * 16;
    uint4 slab[kMlpGroupTiles];
#pragma unroll
    for (int t = 0; t < kMlpGroupTiles; ++t) {
      slab[t] = *reinterpret_cast<const uint4*>(stage + t * kMlpSlabBytes);
    }
    const std::size_t step_k = static_cast<std::size_t>(item.step_first + i) * kMlpKStep;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      std::uint32_t a_frag[kMlpMaxMTiles][4] = {};
#pragma unroll
      for (int mt = 0; mt < kMlpMaxMTiles; ++mt) {
        if (mt < m_tiles) {
#pragma unroll
          for (int reg = 0; reg < 4; ++reg) {
            a_frag[mt][reg] = *reinterpret_cast<const std::uint32_t*>(
                activations + mlp_a_offset(lane, reg, mt, step_k + static_cast<std::size_t>(half * kMmaK),
                                           activation_stride));
          }
        }
      }
#pragma unroll
      for (int t = 0; t < kMlpGroupTiles; ++t) {
        const std::uint32_t b0 = half == 0 ? slab[t].x : slab[t].z;
        const std::uint32_t b1 = half == 0 ? slab[t].y : slab[t].w;
#pragma unroll
        for (int mt = 0; mt < kMlpMaxMTiles; ++mt) {
          if (mt < m_tiles) device::mma_s8(acc[mt][t], a_frag[mt], b0, b1);
        }
      }
    }
  }
  device::cp_async_wait<0>();  // the ring is reused by this warp's next item

#pragma unroll
  for (int mt = 0; mt < kMlpMaxMTiles; ++mt) {
    if (mt >= m_tiles) continue;
#pragma unroll
    for (int t = 0; t < kMlpGroupTiles; ++t) {
#pragma unroll
      for (int reg = 0; reg < 4; ++reg) {
        const RowCol at = c_fragment_element(lane, reg);
        const int row = mt * kMmaM + at.row;
        const int col = item.group * kMlpGroupColumns + t * kMmaN + at.col;
        atomicAdd(&accumulators[row * accumulator_stride + col], acc[mt][t][reg]);
      }
    }
  }
}

__global__ void __launch_bounds__(kMlpThreads, 1) mlp_kernel(const MlpParams params) {
  extern __shared__ __align__(16) std::uint8_t shared[];
  const std::size_t activation_stride = static_cast<std::size_t>(params.activation_stride);
  const int accumulator_stride = params.accumulator_stride;
  const MlpSharedLayout shared_layout = mlp_shared_layout(activation_stride, accumulator_stride);
  auto* activations = reinterpret_cast<std::int8_t*>(shared + shared_layout.activations);
  auto* accumulators = reinterpret_cast<std::int32_t*>(shared + shared_layout.accumulators);
  auto* outputs = reinterpret_cast<float*>(shared + shared_layout.accumulators);  // in place
  auto* partial = reinterpret_cast<float*>(shared + shared_layout.partial);
  auto* partial_sum = reinterpret_cast<float*>(shared + shared_layout.partial_sum);
  auto* row_scale = reinterpret_cast<float*>(shared + shared_layout.row_scale);

  const int thread = static_cast<int>(threadIdx.x);
  const int warp = thread >> 5;
  const int lane = thread & 31;
  std::uint8_t* ring = shared + shared_layout.ring +
                       static_cast<std::size_t>(warp) * kMlpStages * kMlpStageBytes;
  const int cluster_size = params.cluster_size;
  const int rank = cluster_rank();
  const int row0 = static_cast<int>(blockIdx.y) * kMlpMaxRows;
  const int rows_here = min(kMlpMaxRows, params.rows - row0);
  const int m_tiles = (rows_here + kMmaM - 1) / kMmaM;

  quantize_input(params, params.layers[0], row0, rows_here, activations, row_scale, warp, lane);
  __syncthreads();

  for (int l = 0; l < params.layer_count; ++l) {
    const MlpLayerParams& layer = params.layers[l];
    const bool last = l + 1 == params.layer_count;
    const GroupRange owned = mlp_owned_groups(layer.groups, cluster_size, rank);
    const int owned_groups = owned.end - owned.first;
    const int owned_columns = owned_groups * kMlpGroupColumns;
    const int column0 = owned.first * kMlpGroupColumns;
    const int real_columns = max(0, min(owned_columns, layer.n - column0));

    // ---- GEMM: partial sums of every work item into this CTA's accumulators ----
    for (int i = thread; i < m_tiles * kMmaM * owned_columns; i += kMlpThreads) {
      accumulators[(i / owned_columns) * accumulator_stride + i % owned_columns] = 0;
    }
    __syncthreads();
    const WorkSplit split = mlp_work_split(owned_groups, layer.k_steps);
    for (int item = warp; item < split.items; item += kMlpWarps) {
      run_work_item(layer, mlp_work_item(item, owned_groups, split.k_parts, layer.k_steps),
                    owned.first, m_tiles, activations, activation_stride, accumulators,
                    accumulator_stride, ring, lane);
    }
    __syncthreads();

    // ---- epilogue on the owned columns, one warp per row ----
    const bool softmax = layer.activation == Activation::kSoftmax;
    const MlpLayerParams* next = last ? nullptr : &params.layers[l + 1];
    for (int r = warp; r < rows_here; r += kMlpWarps) {
      const float activation_scale = row_scale[r];
      float reduced = softmax ? -INFINITY : 0.0f;
      bool bad = false;
      float* out_row = outputs + r * accumulator_stride;
      float* global_row =
          params.y + static_cast<std::size_t>(row0 + r) * static_cast<std::size_t>(layer.n);
      for (int c = lane; c < real_columns; c += kWarpLanes) {
        const int column = column0 + c;
        const float weight_scale = layer.weight_scales[layer.per_tensor_scale != 0 ? 0 : column];
        float y = __fmul_rn(__int2float_rn(accumulators[r * accumulator_stride + c]),
                            __fmul_rn(activation_scale, weight_scale));
        if (layer.bias != nullptr) y = __fadd_rn(y, layer.bias[column]);
        y = device::activate(layer.activation, y);
        if (softmax) {
          out_row[c] = y;
          reduced = fmaxf(reduced, y);
        } else if (last) {
          global_row[column] = y;
        } else {
          out_row[c] = y;
          bad = bad || isnan(y);
          reduced = fmaxf(reduced, fabsf(y));
        }
      }
      reduced = warp_max(reduced);
      if (__any_sync(kFullMask, bad) && lane == 0) flag_error(params.error_flag);
      if (lane == 0) partial[r] = reduced;
    }

    if (!last) {
      cluster_sync();  // every CTA's partial maxima are written
      // ---- requantize for the next layer; write the int8 columns into every CTA ----
      for (int r = warp; r < rows_here; r += kMlpWarps) {
        float scale;
        float inverse;
        if (next->input_static != 0) {
          scale = next->input_scale;
          inverse = __fdiv_rn(1.0f, scale);
        } else {
          float max_abs = 0.0f;
          for (int q = 0; q < cluster_size; ++q) max_abs = fmaxf(max_abs, peer(partial, q)[r]);
          if (isinf(max_abs) && lane == 0) flag_error(params.error_flag);
          scale = max_abs == 0.0f ? 0.0f : __fdiv_rn(max_abs, 127.0f);
          inverse = max_abs == 0.0f ? 0.0f : __fdiv_rn(127.0f, max_abs);
        }
        const float* out_row = outputs + r * accumulator_stride;
        for (int c = lane * 4; c < owned_columns; c += kWarpLanes * 4) {
          std::int8_t q[4];
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            q[j] = c + j < real_columns ? device::to_int8(__fmul_rn(out_row[c + j], inverse))
                                        : std::int8_t{0};
          }
          const std::uint32_t word = device::pack4(q[0], q[1], q[2], q[3]);
          const std::size_t offset = static_cast<std::size_t>(r) * activation_stride +
                                     static_cast<std::size_t>(column0 + c);
          for (int target = 0; target < cluster_size; ++target) {
            *reinterpret_cast<std::uint32_t*>(peer(activations, target) + offset) = word;
          }
        }
        if (lane == 0) row_scale[r] = scale;
      }
      cluster_sync();  // the next layer's activations are complete in every CTA
      continue;
    }

    if (softmax) {
      cluster_sync();  // every CTA's partial row maxima are written
      for (int r = warp; r < rows_here; r += kMlpWarps) {
        float row_max = -INFINITY;
        for (int q = 0; q < cluster_size; ++q) row_max = fmaxf(row_max, peer(partial, q)[r]);
        float* out_row = outputs + r * accumulator_stride;
        float sum = 0.0f;
        for (int c = lane; c < real_columns; c += kWarpLanes) {
          const float e = expf(__fsub_rn(out_row[c], row_max));
          out_row[c] = e;
          sum = __fadd_rn(sum, e);
        }
        sum = warp_sum(sum);
        if (lane == 0) partial_sum[r] = sum;
      }
      cluster_sync();  // every CTA's partial sums are written
      for (int r = warp; r < rows_here; r += kMlpWarps) {
        float total = 0.0f;
        for (int q = 0; q < cluster_size; ++q) total = __fadd_rn(total, peer(partial_sum, q)[r]);
        const float* out_row = outputs + r * accumulator_stride;
        float* global_row =
            params.y + static_cast<std::size_t>(row0 + r) * static_cast<std::size_t>(layer.n);
        for (int c = lane; c < real_columns; c += kWarpLanes) {
          global_row[column0 + c] = __fdiv_rn(out_row[c], total);
        }
      }
    }
  }
  // No CTA may exit while another can still read its shared memory.
  cluster_sync();
}

}  // namespace

void configure_mlp_kernel(std::size_t shared_bytes, int cluster_size) {
  check_cuda(cudaFuncSetAttribute(mlp_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(shared_bytes)),
             "cudaFuncSetAttribute(mlp shared memory)");
  if (cluster_size > 8) {
    check_cuda(cudaFuncSetAttribute(mlp_kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1),
               "cudaFuncSetAttribute(mlp cluster size)");
  }
}

namespace {

cudaLaunchConfig_t launch_config(int cluster_size, unsigned chunks, std::size_t shared_bytes,
                                 cudaStream_t stream, cudaLaunchAttribute* attribute) {
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(static_cast<unsigned>(cluster_size), chunks, 1);
  config.blockDim = dim3(kMlpThreads, 1, 1);
  config.dynamicSmemBytes = shared_bytes;
  config.stream = stream;
  attribute->id = cudaLaunchAttributeClusterDimension;
  attribute->val.clusterDim.x = static_cast<unsigned>(cluster_size);
  attribute->val.clusterDim.y = 1;
  attribute->val.clusterDim.z = 1;
  config.attrs = attribute;
  // A lone CTA needs no cluster attribute, which also keeps pre-Hopper devices launchable.
  config.numAttrs = cluster_size > 1 ? 1 : 0;
  return config;
}

}  // namespace

int mlp_max_active_clusters(std::size_t shared_bytes, int cluster_size) {
  if (cluster_size <= 1) return 1;
  cudaLaunchAttribute attribute{};
  const cudaLaunchConfig_t config = launch_config(cluster_size, 1, shared_bytes, nullptr, &attribute);
  int clusters = 0;
  if (cudaOccupancyMaxActiveClusters(&clusters, mlp_kernel, &config) != cudaSuccess) {
    static_cast<void>(cudaGetLastError());
    return 0;
  }
  return clusters;
}

void launch_mlp_kernel(const MlpParams& params, std::size_t shared_bytes, cudaStream_t stream) {
  const unsigned chunks = static_cast<unsigned>((params.rows + kMlpMaxRows - 1) / kMlpMaxRows);
  cudaLaunchAttribute attribute{};
  const cudaLaunchConfig_t config =
      launch_config(params.cluster_size, chunks, shared_bytes, stream, &attribute);
  check_cuda(cudaLaunchKernelEx(&config, mlp_kernel, params), "whole-MLP kernel launch");
}

}  // namespace headrace::cuda
