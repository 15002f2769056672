#include "quant/epilogue.h"

#include <algorithm>
#include <cmath>

#include "quant/epilogue_kernels.h"
#include "common/status.h"

namespace headrace::quant {
namespace epilogue_detail {
namespace {

float activate_slow(Activation activation, float x) {
  switch (activation) {
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
    default:
      return x;
  }
}

// The fast activations, written with the operand order of vmaxps/vminps/vblendvps.
template <Activation kind>
inline float activate_fast(float y, float alpha, float beta) {
  if constexpr (kind == Activation::kRelu) return y > 0.0f ? y : 0.0f;
  if constexpr (kind == Activation::kLeakyRelu) return y > 0.0f ? y : alpha * y;
  if constexpr (kind == Activation::kClip) {
    const float low = y > alpha ? y : alpha;
    return low < beta ? low : beta;
  }
  return y;
}

void scalar_input_range(const float* x, std::size_t n, float* lo, float* hi) {
  // Branch-free (vectorizable): a NaN never wins a comparison, so it is counted apart; an
  // infinity shows up as a non-finite extreme.
  float low = 0.0f;
  float high = 0.0f;
  int nan_seen = 0;
  for (std::size_t j = 0; j < n; ++j) {
    low = x[j] < low ? x[j] : low;
    high = x[j] > high ? x[j] : high;
    nan_seen |= static_cast<int>(x[j] != x[j]);
  }
  if (nan_seen != 0 || !std::isfinite(low) || !std::isfinite(high)) throw_non_finite_input();
  *lo = low;
  *hi = high;
}

void scalar_quantize(const float* x, std::size_t n, const RowQuantization& q,
                     std::uint32_t max_code, std::uint8_t* codes) {
  const float inverse = q.inverse_scale;
  const auto zero_point = static_cast<float>(q.zero_point);
  const auto top = static_cast<float>(max_code);
  for (std::size_t j = 0; j < n; ++j) {
    float v = x[j] * inverse;
    v = v > -kScaledLimit ? v : -kScaledLimit;
    v = v < kScaledLimit ? v : kScaledLimit;
    float r = (v + kRoundShift) - kRoundShift;
    r = r + zero_point;
    r = r > 0.0f ? r : 0.0f;
    r = r < top ? r : top;
    codes[j] = static_cast<std::uint8_t>(static_cast<int>(r));
  }
}

template <Activation kind>
void scalar_affine(const DenseEpilogue& e, const std::int32_t* acc, const RowQuantization& q,
                   std::size_t n, float* y, float* lo, float* hi) {
  const std::int32_t zero_point = q.zero_point;
  const float alpha = e.activation.alpha;
  const float beta = e.activation.beta;
  const float tensor_scale = q.scale * e.weight_scales[0];
  for (std::size_t j = 0; j < n; ++j) {
    const std::int32_t d = acc[j] - zero_point * e.column_sums[j];
    const float scale = e.per_tensor_weight_scale ? tensor_scale : q.scale * e.weight_scales[j];
    float value = static_cast<float>(d) * scale;
    if (e.bias != nullptr) value = value + e.bias[j];
    y[j] = activate_fast<kind>(value, alpha, beta);
  }
  if (lo != nullptr) row_range(y, n, lo, hi);
}

void scalar_dequantize(const DenseEpilogue& e, const std::int32_t* acc, const RowQuantization& q,
                       std::size_t n, float* y, float* lo, float* hi) {
  switch (e.activation.kind) {
    case Activation::kRelu:
      return scalar_affine<Activation::kRelu>(e, acc, q, n, y, lo, hi);
    case Activation::kLeakyRelu:
      return scalar_affine<Activation::kLeakyRelu>(e, acc, q, n, y, lo, hi);
    case Activation::kClip:
      return scalar_affine<Activation::kClip>(e, acc, q, n, y, lo, hi);
    case Activation::kNone:
      return scalar_affine<Activation::kNone>(e, acc, q, n, y, lo, hi);
    default:
      break;
  }
  scalar_affine<Activation::kNone>(e, acc, q, n, y, nullptr, nullptr);
  apply_slow_activation(e.activation, y, n);
  if (lo != nullptr) row_range(y, n, lo, hi);
}

}  // namespace

void row_range(const float* y, std::size_t n, float* lo, float* hi) noexcept {
  float low = INFINITY;
  float high = -INFINITY;
  for (std::size_t j = 0; j < n; ++j) {
    low = y[j] < low ? y[j] : low;
    high = y[j] > high ? y[j] : high;
  }
  *lo = low;
  *hi = high;
}

bool is_fast_activation(Activation activation) noexcept {
  return activation == Activation::kNone || activation == Activation::kRelu ||
         activation == Activation::kLeakyRelu || activation == Activation::kClip;
}

void apply_slow_activation(const ActivationSpec& activation, float* y, std::size_t n) {
  if (activation.kind == Activation::kSoftmax || activation.kind == Activation::kLogSoftmax) {
    // Subtracting the row maximum keeps exp() finite without changing the result.
    const float row_max = *std::max_element(y, y + n);
    if (activation.kind == Activation::kSoftmax) {
      float total = 0.0f;
      for (std::size_t j = 0; j < n; ++j) {
        y[j] = std::exp(y[j] - row_max);
        total += y[j];
      }
      for (std::size_t j = 0; j < n; ++j) y[j] /= total;
    } else {
      float total = 0.0f;
      for (std::size_t j = 0; j < n; ++j) total += std::exp(y[j] - row_max);
      const float log_total = std::log(total);
      for (std::size_t j = 0; j < n; ++j) y[j] = (y[j] - row_max) - log_total;
    }
    return;
  }
  for (std::size_t j = 0; j < n; ++j) y[j] = activate_slow(activation.kind, y[j]);
}

[[noreturn]] void throw_non_finite_input() {
  throw CoreError(StatusCode::kInvalidArgument,
                  "int8 model input holds NaN or infinity, which int8 cannot represent");
}

const RowKernels& scalar_row_kernels() {
  static const RowKernels kernels{scalar_input_range, scalar_quantize, scalar_dequantize};
  return kernels;
}

}  // namespace epilogue_detail

bool is_row_activation(Activation activation) noexcept {
  return activation == Activation::kSoftmax || activation == Activation::kLogSoftmax;
}

RowQuantization quantization_for_range(float lo, float hi, std::uint32_t max_code) noexcept {
  const double low = std::min(static_cast<double>(lo), 0.0);
  const double high = std::max(static_cast<double>(hi), 0.0);
  if (!(high > low)) return {};
  // In double: hi - lo of two large floats can exceed the float range; the scale cannot.
  const double range = high - low;
  const double top = static_cast<double>(max_code);
  RowQuantization q;
  q.scale = static_cast<float>(range / top);
  q.inverse_scale = static_cast<float>(top / range);
  q.zero_point = static_cast<std::int32_t>(std::clamp(std::nearbyint(-low * top / range), 0.0, top));
  return q;
}

bool contains_nan(const float* x, std::size_t n) noexcept {
  int nan_seen = 0;
  for (std::size_t j = 0; j < n; ++j) nan_seen |= static_cast<int>(x[j] != x[j]);
  return nan_seen != 0;
}

const RowKernels& row_kernels(Isa isa) {
  if (isa == Isa::kScalar) return epilogue_detail::scalar_row_kernels();
  require_isa(Isa::kAvx2);
  return epilogue_detail::avx2_row_kernels();
}

}  // namespace headrace::quant
