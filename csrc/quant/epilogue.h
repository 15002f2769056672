// What happens to one row of int32 GEMM results before the next layer: dequantize
// (acc * activation_scale * weight_scale[n]), add the bias, apply the activation; and the
// quantization of float rows to int8 that feeds the next GEMM.
//
// The executor (QuantizedMlp) runs this per row right after the GEMM of a small block of rows, so
// the int32 block is still in cache: the fusion is per row block, not per register tile, because
// dynamic per-row requantization needs the whole row's maximum first.
//
// Ownership/threading: Epilogue only points at arrays owned by the layer; all functions are pure
// over their arguments and safe to call from many threads at once.
#pragma once

#include <cstddef>
#include <cstdint>

namespace headrace::quant {

// Values are the on-disk codes of the .int8 format (README.md); do not renumber.
enum class Activation : std::uint32_t {
  kNone = 0,
  kRelu = 1,
  kSigmoid = 2,
  kTanh = 3,
  kGeluErf = 4,   // ONNX Gelu, approximate="none": 0.5 x (1 + erf(x / sqrt 2))
  kGeluTanh = 5,  // ONNX Gelu, approximate="tanh"
  kSoftmax = 6,   // over the row (last axis); only valid on the last layer
};

// Largest defined code, for validating files.
constexpr std::uint32_t kMaxActivationCode = 6;

struct Epilogue {
  const float* weight_scales = nullptr;  // [n], or one value when per_tensor_weight_scale
  bool per_tensor_weight_scale = false;
  const float* bias = nullptr;  // [n] or nullptr
  Activation activation = Activation::kNone;
};

// out[j] = activation(acc[j] * activation_scale * weight_scale[j] + bias[j]) for j < n.
void apply_epilogue_row(const Epilogue& epilogue, const std::int32_t* acc, float activation_scale,
                        std::size_t n, float* out);

// Symmetric per-row quantization: scale = max|x| / 127, q = round_half_even(x / scale) in
// [-127, 127]. Returns the scale (0 for an all-zero row, whose q is all 0). Throws
// CoreError(kInvalidArgument) when the row holds NaN or infinity.
float quantize_row_dynamic(const float* x, std::size_t n, std::int8_t* q);

// Static (calibrated) quantization with a fixed scale > 0: q = clamp(round(x / scale), -127, 127).
// Throws CoreError(kInvalidArgument) on NaN.
void quantize_row_static(const float* x, std::size_t n, float scale, std::int8_t* q);

}  // namespace headrace::quant
