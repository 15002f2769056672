#include "quant/epilogue.h"

#include <algorithm>
#include <cmath>

#include "common/status.h"

namespace headrace::quant {
namespace {

[[noreturn]] void throw_non_finite() {
  throw CoreError(StatusCode::kInvalidArgument,
                  "int8 model input holds NaN or infinity, which int8 cannot represent");
}

float activate(Activation activation, float x) {
  switch (activation) {
    case Activation::kRelu:
      return x > 0.0f ? x : 0.0f;
    case Activation::kSigmoid:
      return 1.0f / (1.0f + std::exp(-x));
    case Activation::kTanh:
      return std::tanh(x);
    case Activation::kGeluErf:
      return 0.5f * x * (1.0f + std::erf(x * 0.70710678118654752f));
    case Activation::kGeluTanh: {
      const float inner = 0.79788456080286536f * (x + 0.044715f * x * x * x);
      return 0.5f * x * (1.0f + std::tanh(inner));
    }
    case Activation::kNone:
    case Activation::kSoftmax:
      return x;
  }
  return x;
}

// Round half to even for |x| <= 2^22 without a libm call: adding 1.5 * 2^23 pushes the fraction
// out of the float's mantissa, rounding in the default (nearest-even) mode, exactly as
// std::nearbyint would, but inlined and vectorizable. Callers clamp to [-127, 127] first.
inline float round_half_even_small(float x) {
  constexpr float kShift = 12582912.0f;  // 1.5 * 2^23
  return (x + kShift) - kShift;
}

inline std::int8_t to_int8(float scaled) {
  return static_cast<std::int8_t>(round_half_even_small(std::clamp(scaled, -127.0f, 127.0f)));
}

template <Activation kind>
void activate_row(float* out, std::size_t n) {
  for (std::size_t j = 0; j < n; ++j) out[j] = activate(kind, out[j]);
}

}  // namespace

void apply_epilogue_row(const Epilogue& epilogue, const std::int32_t* acc, float activation_scale,
                        std::size_t n, float* out) {
  // Branches hoisted out of the loops so each loop is a straight line the compiler vectorizes.
  if (epilogue.per_tensor_weight_scale) {
    const float scale = activation_scale * epilogue.weight_scales[0];
    for (std::size_t j = 0; j < n; ++j) out[j] = static_cast<float>(acc[j]) * scale;
  } else {
    for (std::size_t j = 0; j < n; ++j) {
      out[j] = static_cast<float>(acc[j]) * (activation_scale * epilogue.weight_scales[j]);
    }
  }
  if (epilogue.bias != nullptr) {
    for (std::size_t j = 0; j < n; ++j) out[j] += epilogue.bias[j];
  }
  if (epilogue.activation == Activation::kSoftmax) {
    // Subtracting the row maximum keeps exp() finite without changing the result.
    const float row_max = *std::max_element(out, out + n);
    float total = 0.0f;
    for (std::size_t j = 0; j < n; ++j) {
      out[j] = std::exp(out[j] - row_max);
      total += out[j];
    }
    for (std::size_t j = 0; j < n; ++j) out[j] /= total;
    return;
  }
  switch (epilogue.activation) {
    case Activation::kRelu:
      activate_row<Activation::kRelu>(out, n);
      break;
    case Activation::kSigmoid:
      activate_row<Activation::kSigmoid>(out, n);
      break;
    case Activation::kTanh:
      activate_row<Activation::kTanh>(out, n);
      break;
    case Activation::kGeluErf:
      activate_row<Activation::kGeluErf>(out, n);
      break;
    case Activation::kGeluTanh:
      activate_row<Activation::kGeluTanh>(out, n);
      break;
    case Activation::kNone:
    case Activation::kSoftmax:
      break;
  }
}

float quantize_row_dynamic(const float* x, std::size_t n, std::int8_t* q) {
  // One branch-free pass (vectorizable): a NaN never wins the comparison, so it is counted apart;
  // an infinity wins it and shows up as a non-finite maximum.
  float max_abs = 0.0f;
  int nan_seen = 0;
  for (std::size_t j = 0; j < n; ++j) {
    const float magnitude = std::fabs(x[j]);
    max_abs = magnitude > max_abs ? magnitude : max_abs;
    nan_seen |= static_cast<int>(x[j] != x[j]);
  }
  if (nan_seen != 0 || !std::isfinite(max_abs)) throw_non_finite();
  if (max_abs == 0.0f) {
    std::fill(q, q + n, std::int8_t{0});
    return 0.0f;
  }
  const float scale = max_abs / 127.0f;
  const float inverse = 127.0f / max_abs;
  for (std::size_t j = 0; j < n; ++j) {
    // x * inverse is within [-127, 127] up to rounding; the clamp absorbs that last ulp.
    q[j] = to_int8(x[j] * inverse);
  }
  return scale;
}

void quantize_row_static(const float* x, std::size_t n, float scale, std::int8_t* q) {
  const float inverse = 1.0f / scale;
  int nan_seen = 0;
  for (std::size_t j = 0; j < n; ++j) nan_seen |= static_cast<int>(x[j] != x[j]);
  if (nan_seen != 0) throw_non_finite();
  for (std::size_t j = 0; j < n; ++j) {
    // Infinities clamp to +-127. Clamped before converting: out-of-range float -> int conversion is undefined behaviour.
    q[j] = to_int8(x[j] * inverse);
  }
}

}  // namespace headrace::quant
