// The CPU epilogue (csrc/quant/epilogue.cc) in device code, operation for operation, so the GPU
// gives the same floats wherever IEEE arithmetic allows:
//   y = act(float(acc) * (activation_scale * weight_scale[n]) + bias[n])
// Each product and sum is rounded on its own (__fmul_rn / __fadd_rn): nvcc would otherwise fuse
// them into FMAs, which round once and differ from the CPU in the last bit. Dequantization, bias,
// ReLU and requantization are therefore bit-identical to the CPU; sigmoid, tanh, GELU and softmax
// call CUDA's expf/tanhf/erff, which are within 2 ulp of glibc's but not always equal.
//
// Requantization as quantize_row_dynamic / quantize_row_static: scale = max|y| / 127 (IEEE
// division), q = round-half-even(clamp(y * (127 / max|y|), -127, 127)).
//
// Threading: pure device functions.
#pragma once

#include <cstdint>

#include "quant/epilogue.h"

namespace headrace::cuda::device {

using quant::Activation;

__device__ __forceinline__ float activate(Activation activation, float x) {
  switch (activation) {
    case Activation::kRelu:
      return x > 0.0f ? x : 0.0f;
    case Activation::kSigmoid:
      return __fdiv_rn(1.0f, __fadd_rn(1.0f, expf(-x)));
    case Activation::kTanh:
      return tanhf(x);
    case Activation::kGeluErf:
      return __fmul_rn(__fmul_rn(0.5f, x), __fadd_rn(1.0f, erff(__fmul_rn(x, 0.70710678118654752f))));
    case Activation::kGeluTanh: {
      const float cube = __fmul_rn(__fmul_rn(__fmul_rn(0.044715f, x), x), x);
      const float inner = __fmul_rn(0.79788456080286536f, __fadd_rn(x, cube));
      return __fmul_rn(__fmul_rn(0.5f, x), __fadd_rn(1.0f, tanhf(inner)));
    }
    case Activation::kNone:
    case Activation::kSoftmax:
      return x;
  }
  return x;
}

// Dequantize + bias, before the activation. `combined_scale` = activation_scale * weight_scale,
// rounded once, exactly as the CPU forms it.
__device__ __forceinline__ float dequantize(std::int32_t acc, float combined_scale, float bias) {
  return __fadd_rn(__fmul_rn(__int2float_rn(acc), combined_scale), bias);
}

__device__ __forceinline__ std::int8_t to_int8(float scaled) {
  // clamp first (as the CPU does): out-of-range float -> int conversion is undefined.
  const float clamped = fminf(fmaxf(scaled, -127.0f), 127.0f);
  return static_cast<std::int8_t>(__float2int_rn(clamped));  // round half to even
}

// Packs four quantized values into one little-endian word (byte j = column j).
__device__ __forceinline__ std::uint32_t pack4(std::int8_t q0, std::int8_t q1, std::int8_t q2,
                                               std::int8_t q3) {
  return static_cast<std::uint32_t>(static_cast<std::uint8_t>(q0)) |
         (static_cast<std::uint32_t>(static_cast<std::uint8_t>(q1)) << 8) |
         (static_cast<std::uint32_t>(static_cast<std::uint8_t>(q2)) << 16) |
         (static_cast<std::uint32_t>(static_cast<std::uint8_t>(q3)) << 24);
}

}  // namespace headrace::cuda::device
