#include "quant/epilogue.h"

#include <algorithm>
#include <cmath>

#include "tensors/status.h"

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

}  // namespace

void apply_epilogue_row(const Epilogue& epilogue, const std::int32_t* acc, float activation_scale,
                        std::size_t n, float* out) {
  for (std::size_t j = 0; j < n; ++j) {
    const float weight_scale =
        epilogue.per_tensor_weight_scale ? epilogue.weight_scales[0] : epilogue.weight_scales[j];
    float value = static_cast<float>(acc[j]) * (activation_scale * weight_scale);
    if (epilogue.bias != nullptr) value += epilogue.bias[j];
    out[j] = value;
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
  } else if (epilogue.activation != Activation::kNone) {
    for (std::size_t j = 0; j < n; ++j) out[j] = activate(epilogue.activation, out[j]);
  }
}

float quantize_row_dynamic(const float* x, std::size_t n, std::int8_t* q) {
  float max_abs = 0.0f;
  bool finite = true;
  for (std::size_t j = 0; j < n; ++j) {
    finite = finite && std::isfinite(x[j]);
    max_abs = std::max(max_abs, std::fabs(x[j]));
  }
  if (!finite) throw_non_finite();
  if (max_abs == 0.0f) {
    std::fill(q, q + n, std::int8_t{0});
    return 0.0f;
  }
  const float scale = max_abs / 127.0f;
  const float inverse = 127.0f / max_abs;
  for (std::size_t j = 0; j < n; ++j) {
    // x * inverse is within [-127, 127] up to rounding; the clamp absorbs that last ulp.
    const float scaled = std::clamp(std::nearbyint(x[j] * inverse), -127.0f, 127.0f);
    q[j] = static_cast<std::int8_t>(scaled);
  }
  return scale;
}

void quantize_row_static(const float* x, std::size_t n, float scale, std::int8_t* q) {
  const float inverse = 1.0f / scale;
  for (std::size_t j = 0; j < n; ++j) {
    if (std::isnan(x[j])) throw_non_finite();
    // Clamp before converting: out-of-range float -> int conversion is undefined behaviour.
    const float scaled = std::clamp(std::nearbyint(x[j] * inverse), -127.0f, 127.0f);
    q[j] = static_cast<std::int8_t>(scaled);
  }
}

}  // namespace headrace::quant
