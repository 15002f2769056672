// The tiled int8 GEMM on tensor cores (mma.sync m16n8k32 s8, int32 accumulation), callable with
// host arrays: for bit-exactness tests against the CPU reference, and a device-timed benchmark.
// The serving path uses the whole-MLP kernel (cuda_mlp.h), not this.
//
// Every function throws CoreError(kUnavailable, "no CUDA device: ...") where no device can run
// the kernels, CoreError(kInternal) for a failed CUDA call.
//
// Ownership/threading: each call owns its device buffers and stream; concurrent calls are safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "quant/epilogue.h"

namespace headrace::cuda {

// C[m][n] = sum_k A[m][k] * W[k][n], exact int32. a: m rows of k int8, row stride lda (>= k);
// w_kn: row-major [k][n]. Any m >= 0, k >= 1, n >= 1.
std::vector<std::int32_t> gemm_s8s8_s32(const std::int8_t* a, std::size_t lda, std::size_t m,
                                        std::size_t k, const std::int8_t* w_kn, std::size_t n,
                                        int device);

// The same GEMM with the CPU epilogue fused (quant/epilogue.h): y[i][j] = act(acc[i][j] *
// (row_scales[i] * weight_scale[j]) + bias[j]). weight_scales: n values, or 1 when
// per_tensor_scale; bias: n values or nullptr. Softmax needs whole rows and is refused
// (kInvalidArgument).
std::vector<float> gemm_s8s8_epilogue(const std::int8_t* a, std::size_t lda, std::size_t m,
                                      std::size_t k, const std::int8_t* w_kn, std::size_t n,
                                      const float* row_scales, const float* weight_scales,
                                      bool per_tensor_scale, const float* bias,
                                      quant::Activation activation, int device);

struct GemmTiming {
  double median_ms = 0.0;
  double min_ms = 0.0;
  int iterations = 0;
};

// Times the int32-output kernel on device-resident random operands (m x k, k x n), each launch
// between CUDA events, after warm-up launches; no host transfer inside the timing.
GemmTiming time_gemm_s8s8_s32(std::size_t m, std::size_t n, std::size_t k, int iterations,
                              int device);

}  // namespace headrace::cuda
