// Internal to csrc/quant: the two implementations of RowKernels (epilogue.h) and what they share.
//
// Both follow the same recipe, so their results are bit-identical:
//   dequantize:  d = acc - zero_point * column_sum           (int32, exact)
//                y = float(d) * (scale * weight_scale) [+ bias]   (multiply, then add: no FMA)
//                fast activations in the same pass: Relu = max(y, 0), LeakyRelu = y > 0 ? y : a*y,
//                Clip = min(max(y, lo), hi), with the operand order of vmaxps / vminps;
//                other activations afterwards in shared scalar code (libm), then the range.
//   quantize:    v = clamp(x * inverse_scale, -256, 256); r = round_half_even(v) via the
//                1.5 * 2^23 shift; code = clamp(r + zero_point, 0, max_code).
//
// Ownership/threading: stateless functions.
#pragma once

#include <cstddef>

#include "quant/epilogue.h"

namespace headrace::quant::epilogue_detail {

// 1.5 * 2^23: adding and subtracting it rounds a float of magnitude < 2^22 to an integer, half to
// even (the default rounding mode), with no libm call and the same result in SSE and AVX.
constexpr float kRoundShift = 12582912.0f;
// Scaled values are clamped to +-kScaledLimit before rounding: enough to reach every code after
// adding a zero point in [0, 255], small enough for the shift trick.
constexpr float kScaledLimit = 256.0f;

// lo/hi of y[0..n) starting from +-infinity; a NaN never replaces an extreme (the semantics of
// vminps(value, running) and vmaxps(value, running)).
void row_range(const float* y, std::size_t n, float* lo, float* hi) noexcept;

// Relu, LeakyRelu, Clip and none run inside the dequantization pass.
bool is_fast_activation(Activation activation) noexcept;

// The activations the fast pass leaves out (Sigmoid, Tanh, Gelu, Softmax, LogSoftmax), in place.
void apply_slow_activation(const ActivationSpec& activation, float* y, std::size_t n);

[[noreturn]] void throw_non_finite_input();

const RowKernels& scalar_row_kernels();
// Only called where the CPU has AVX2 (row_kernels checks the ISA).
const RowKernels& avx2_row_kernels();

}  // namespace headrace::quant::epilogue_detail
