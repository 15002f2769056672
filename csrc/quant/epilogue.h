// What happens to one row around a layer's GEMM: the quantization of a float row into unsigned
// activation codes (before), and the dequantization + bias + activation of the int32 sums
// (after), which also measures the row's range so the next layer's quantization needs no extra
// pass ("quantize on the fly": the row is still in L1 when it is quantized for the next layer).
//
// Activation codes: x ~= scale * (q - zero_point), q in [0, max_code] (127 for 7-bit, 255 for
// 8-bit codes). The range [lo, hi] is widened to include 0, so 0 is exact and a non-negative row
// (after Relu, Sigmoid, Softmax, ReLU6) gets zero_point 0 and all max_code + 1 levels.
//
// Every function exists twice, scalar and AVX2 (RowKernels), doing the same IEEE operations in the
// same order (no FMA contraction, the same rounding), so both give identical bits; the scalar ISA
// uses the scalar set, avx2 and avx512vnni the AVX2 set.
//
// Ownership/threading: Epilogue only points at arrays owned by the layer; all functions are pure
// over their arguments and safe to call from many threads at once.
#pragma once

#include <cstddef>
#include <cstdint>

#include "quant/isa.h"

namespace headrace::quant {

// Values are the on-disk codes of the .int8 format (README.md); do not renumber.
enum class Activation : std::uint32_t {
  kNone = 0,
  kRelu = 1,
  kSigmoid = 2,
  kTanh = 3,
  kGeluErf = 4,     // ONNX Gelu, approximate="none": 0.5 x (1 + erf(x / sqrt 2))
  kGeluTanh = 5,    // ONNX Gelu, approximate="tanh"
  kSoftmax = 6,     // over the row (last axis); only valid on the last layer
  kLeakyRelu = 7,   // x > 0 ? x : alpha * x
  kClip = 8,        // min(max(x, alpha), beta); ReLU6 is alpha = 0, beta = 6
  kLogSoftmax = 9,  // over the row; only valid on the last layer
};

// Largest defined code, for validating files.
constexpr std::uint32_t kMaxActivationCode = 9;

struct ActivationSpec {
  Activation kind = Activation::kNone;
  float alpha = 0.0f;  // LeakyRelu slope; Clip lower bound
  float beta = 0.0f;   // Clip upper bound
};

// Softmax and LogSoftmax need the whole row; they may only end the network.
bool is_row_activation(Activation activation) noexcept;

// x ~= scale * (q - zero_point). inverse_scale is what quantization multiplies by (0 for an
// all-zero range, which maps every value to code zero_point = 0).
struct RowQuantization {
  float scale = 0.0f;
  float inverse_scale = 0.0f;
  std::int32_t zero_point = 0;
};

// The quantization of values in [lo, hi] (each widened to include 0) onto codes [0, max_code].
RowQuantization quantization_for_range(float lo, float hi, std::uint32_t max_code) noexcept;

struct DenseEpilogue {
  const float* weight_scales = nullptr;  // [n], or one value when per_tensor_weight_scale
  bool per_tensor_weight_scale = false;
  const std::int32_t* column_sums = nullptr;  // sum_k W[k][n]: zero-point correction
  const float* bias = nullptr;                // [n] or nullptr
  ActivationSpec activation;
};

struct RowKernels {
  // lo/hi of x[0..n). Throws CoreError(kInvalidArgument) when x holds NaN or infinity.
  void (*input_range)(const float* x, std::size_t n, float* lo, float* hi);
  // codes[j] = clamp(round_half_even(x[j] * q.inverse_scale) + q.zero_point, 0, max_code).
  // NaN maps to code 0; callers reject NaN before where it matters.
  void (*quantize)(const float* x, std::size_t n, const RowQuantization& q,
                   std::uint32_t max_code, std::uint8_t* codes);
  // y[j] = activation((acc[j] - q.zero_point * column_sums[j]) * (q.scale * weight_scale[j])
  //                   + bias[j]); when lo and hi are given, also the range of y.
  void (*dequantize)(const DenseEpilogue& epilogue, const std::int32_t* acc,
                     const RowQuantization& q, std::size_t n, float* y, float* lo, float* hi);
};

// The row functions the executor uses for `isa` (scalar for kScalar, AVX2 otherwise).
const RowKernels& row_kernels(Isa isa);

// True when x[0..n) holds a NaN (static quantization refuses those, as dynamic does).
bool contains_nan(const float* x, std::size_t n) noexcept;

}  // namespace headrace::quant
