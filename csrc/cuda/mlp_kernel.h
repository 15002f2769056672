// The whole-MLP kernel's parameters and launch (internal to csrc/cuda; cuda_mlp.cu drives it).
//
// One cluster of `cluster_size` CTAs carries up to 64 rows through every layer; grid.y is the
// number of 64-row chunks. Per layer: the cluster's CTAs split the output columns (32-column
// groups, fragment_layout.h), each warp streams its weight slabs through a cp.async ring and runs
// mma.sync against the activations in its CTA's shared memory, partial sums meet by shared-memory
// atomics, the owner applies the epilogue, per-row maxima cross the cluster through distributed
// shared memory, and the requantized int8 columns are written into every CTA's activations.
//
// Threading: launches are asynchronous on the given stream; the parameters point at device memory
// that must outlive the launch.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "quant/epilogue.h"

namespace headrace::cuda {

struct MlpLayerParams {
  const std::int8_t* weights;  // pack_mlp_weights slabs
  const float* weight_scales;  // [n] or [1]
  const float* bias;           // [n] or nullptr
  int k;
  int n;
  int k_steps;  // mlp_k_pad(k) / 64
  int groups;   // mlp_n_pad(n) / 32
  int per_tensor_scale;
  quant::Activation activation;
  int input_static;   // this layer's input: 1 static per-tensor scale, 0 dynamic per row
  float input_scale;  // when input_static
};

struct MlpParams {
  const MlpLayerParams* layers;  // device array
  int layer_count;
  const float* x;  // [rows][layers[0].k]
  float* y;        // [rows][layers[last].n]
  int rows;
  int* error_flag;  // set to 1 when an input or hidden row holds NaN/inf where int8 can't
  int activation_stride;   // bytes
  int accumulator_stride;  // words
  int cluster_size;
};

// Raises the kernel's dynamic shared-memory limit to `shared_bytes` (and allows non-portable
// cluster sizes above 8), on the current device.
void configure_mlp_kernel(std::size_t shared_bytes, int cluster_size);

// Most clusters of this size and shared memory that can be resident at once (0: not launchable).
int mlp_max_active_clusters(std::size_t shared_bytes, int cluster_size);

void launch_mlp_kernel(const MlpParams& params, std::size_t shared_bytes, cudaStream_t stream);

}  // namespace headrace::cuda
