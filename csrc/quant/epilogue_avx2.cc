// The AVX2 row kernels: the recipe of epilogue_kernels.h, eight floats at a time, with the scalar
// code finishing each row's tail so both give the same bits. Target "avx2" only (no "fma"), so
// the compiler cannot contract a multiply and an add into one differently rounded FMA.
#include <immintrin.h>

#include <cmath>

#include "quant/epilogue_kernels.h"

namespace headrace::quant::epilogue_detail {
namespace {

#define HEADRACE_AVX2_TARGET __attribute__((target("avx2")))

HEADRACE_AVX2_TARGET inline float horizontal_min(__m256 v) {
  __m128 low = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  low = _mm_min_ps(low, _mm_movehl_ps(low, low));
  low = _mm_min_ss(low, _mm_shuffle_ps(low, low, 1));
  return _mm_cvtss_f32(low);
}

HEADRACE_AVX2_TARGET inline float horizontal_max(__m256 v) {
  __m128 high = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  high = _mm_max_ps(high, _mm_movehl_ps(high, high));
  high = _mm_max_ss(high, _mm_shuffle_ps(high, high, 1));
  return _mm_cvtss_f32(high);
}

HEADRACE_AVX2_TARGET void input_range(const float* x, std::size_t n, float* lo, float* hi) {
  __m256 low = _mm256_setzero_ps();
  __m256 high = _mm256_setzero_ps();
  __m256 nan_seen = _mm256_setzero_ps();
  std::size_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 v = _mm256_loadu_ps(x + j);
    // vminps/vmaxps return the second operand when either is NaN: NaNs are caught apart.
    low = _mm256_min_ps(v, low);
    high = _mm256_max_ps(v, high);
    nan_seen = _mm256_or_ps(nan_seen, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  }
  float low_value = horizontal_min(low);
  float high_value = horizontal_max(high);
  bool nan = _mm256_movemask_ps(nan_seen) != 0;
  for (; j < n; ++j) {
    low_value = x[j] < low_value ? x[j] : low_value;
    high_value = x[j] > high_value ? x[j] : high_value;
    nan = nan || x[j] != x[j];
  }
  if (nan || !std::isfinite(low_value) || !std::isfinite(high_value)) throw_non_finite_input();
  *lo = low_value;
  *hi = high_value;
}

HEADRACE_AVX2_TARGET void quantize(const float* x, std::size_t n, const RowQuantization& q,
                                   std::uint32_t max_code, std::uint8_t* codes) {
  const float inverse = q.inverse_scale;
  const auto zero_point = static_cast<float>(q.zero_point);
  const auto top = static_cast<float>(max_code);
  const __m256 inverse_v = _mm256_set1_ps(inverse);
  const __m256 low_limit = _mm256_set1_ps(-kScaledLimit);
  const __m256 high_limit = _mm256_set1_ps(kScaledLimit);
  const __m256 shift = _mm256_set1_ps(kRoundShift);
  const __m256 zero_point_v = _mm256_set1_ps(zero_point);
  const __m256 zero = _mm256_setzero_ps();
  const __m256 top_v = _mm256_set1_ps(top);
  std::size_t j = 0;
  for (; j + 32 <= n; j += 32) {
    __m256i words[4];
    for (std::size_t part = 0; part < 4; ++part) {
      __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + j + part * 8), inverse_v);
      v = _mm256_max_ps(v, low_limit);
      v = _mm256_min_ps(v, high_limit);
      __m256 r = _mm256_sub_ps(_mm256_add_ps(v, shift), shift);
      r = _mm256_add_ps(r, zero_point_v);
      r = _mm256_max_ps(r, zero);
      r = _mm256_min_ps(r, top_v);
      words[part] = _mm256_cvttps_epi32(r);  // exact: r is a whole number in [0, 255]
    }
    // packs work per 128-bit lane; the final permute restores element order.
    const __m256i pairs01 = _mm256_packs_epi32(words[0], words[1]);
    const __m256i pairs23 = _mm256_packs_epi32(words[2], words[3]);
    const __m256i bytes = _mm256_packus_epi16(pairs01, pairs23);
    const __m256i ordered =
        _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(codes + j), ordered);
  }
  for (; j < n; ++j) {
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
HEADRACE_AVX2_TARGET inline __m256 activate_fast(__m256 y, __m256 alpha, __m256 beta) {
  if constexpr (kind == Activation::kRelu) return _mm256_max_ps(y, _mm256_setzero_ps());
  if constexpr (kind == Activation::kLeakyRelu) {
    const __m256 positive = _mm256_cmp_ps(y, _mm256_setzero_ps(), _CMP_GT_OQ);
    return _mm256_blendv_ps(_mm256_mul_ps(alpha, y), y, positive);
  }
  if constexpr (kind == Activation::kClip) return _mm256_min_ps(_mm256_max_ps(y, alpha), beta);
  return y;
}

template <Activation kind>
inline float activate_fast_scalar(float y, float alpha, float beta) {
  if constexpr (kind == Activation::kRelu) return y > 0.0f ? y : 0.0f;
  if constexpr (kind == Activation::kLeakyRelu) return y > 0.0f ? y : alpha * y;
  if constexpr (kind == Activation::kClip) {
    const float low = y > alpha ? y : alpha;
    return low < beta ? low : beta;
  }
  return y;
}

template <Activation kind, bool kPerTensor, bool kBias, bool kRange>
HEADRACE_AVX2_TARGET void affine(const DenseEpilogue& e, const std::int32_t* acc,
                                 const RowQuantization& q, std::size_t n, float* y, float* lo,
                                 float* hi) {
  const float alpha = e.activation.alpha;
  const float beta = e.activation.beta;
  const float tensor_scale = q.scale * e.weight_scales[0];
  const __m256i zero_point_v = _mm256_set1_epi32(q.zero_point);
  const bool has_zero_point = q.zero_point != 0;
  const __m256 row_scale_v = _mm256_set1_ps(q.scale);
  const __m256 tensor_scale_v = _mm256_set1_ps(tensor_scale);
  const __m256 alpha_v = _mm256_set1_ps(alpha);
  const __m256 beta_v = _mm256_set1_ps(beta);
  __m256 low = _mm256_set1_ps(INFINITY);
  __m256 high = _mm256_set1_ps(-INFINITY);
  std::size_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256i sums = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(acc + j));
    const __m256i column_sums =
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(e.column_sums + j));
    // Rows after Relu have zero point 0: skip vpmulld (two multiply-port uops) there; the loop
    // is unswitched on this invariant.
    const __m256i d = has_zero_point
                          ? _mm256_sub_epi32(sums, _mm256_mullo_epi32(zero_point_v, column_sums))
                          : sums;
    const __m256 scale =
        kPerTensor ? tensor_scale_v : _mm256_mul_ps(row_scale_v, _mm256_loadu_ps(e.weight_scales + j));
    __m256 value = _mm256_mul_ps(_mm256_cvtepi32_ps(d), scale);
    if constexpr (kBias) value = _mm256_add_ps(value, _mm256_loadu_ps(e.bias + j));
    value = activate_fast<kind>(value, alpha_v, beta_v);
    _mm256_storeu_ps(y + j, value);
    if constexpr (kRange) {
      // (value, running) order: a NaN value leaves the running extreme, as in row_range.
      low = _mm256_min_ps(value, low);
      high = _mm256_max_ps(value, high);
    }
  }
  float low_value = INFINITY;
  float high_value = -INFINITY;
  if constexpr (kRange) {
    low_value = horizontal_min(low);
    high_value = horizontal_max(high);
  }
  for (; j < n; ++j) {
    const std::int32_t d = acc[j] - q.zero_point * e.column_sums[j];
    const float scale = kPerTensor ? tensor_scale : q.scale * e.weight_scales[j];
    float value = static_cast<float>(d) * scale;
    if constexpr (kBias) value = value + e.bias[j];
    value = activate_fast_scalar<kind>(value, alpha, beta);
    y[j] = value;
    if constexpr (kRange) {
      low_value = value < low_value ? value : low_value;
      high_value = value > high_value ? value : high_value;
    }
  }
  if constexpr (kRange) {
    *lo = low_value;
    *hi = high_value;
  }
}

template <Activation kind>
void affine_for(const DenseEpilogue& e, const std::int32_t* acc, const RowQuantization& q,
                std::size_t n, float* y, float* lo, float* hi) {
  const bool bias = e.bias != nullptr;
  const bool range = lo != nullptr;
  if (e.per_tensor_weight_scale) {
    if (bias) {
      return range ? affine<kind, true, true, true>(e, acc, q, n, y, lo, hi)
                   : affine<kind, true, true, false>(e, acc, q, n, y, lo, hi);
    }
    return range ? affine<kind, true, false, true>(e, acc, q, n, y, lo, hi)
                 : affine<kind, true, false, false>(e, acc, q, n, y, lo, hi);
  }
  if (bias) {
    return range ? affine<kind, false, true, true>(e, acc, q, n, y, lo, hi)
                 : affine<kind, false, true, false>(e, acc, q, n, y, lo, hi);
  }
  return range ? affine<kind, false, false, true>(e, acc, q, n, y, lo, hi)
               : affine<kind, false, false, false>(e, acc, q, n, y, lo, hi);
}

void dequantize(const DenseEpilogue& e, const std::int32_t* acc, const RowQuantization& q,
                std::size_t n, float* y, float* lo, float* hi) {
  switch (e.activation.kind) {
    case Activation::kRelu:
      return affine_for<Activation::kRelu>(e, acc, q, n, y, lo, hi);
    case Activation::kLeakyRelu:
      return affine_for<Activation::kLeakyRelu>(e, acc, q, n, y, lo, hi);
    case Activation::kClip:
      return affine_for<Activation::kClip>(e, acc, q, n, y, lo, hi);
    case Activation::kNone:
      return affine_for<Activation::kNone>(e, acc, q, n, y, lo, hi);
    default:
      break;
  }
  affine_for<Activation::kNone>(e, acc, q, n, y, nullptr, nullptr);
  apply_slow_activation(e.activation, y, n);
  if (lo != nullptr) row_range(y, n, lo, hi);
}

#undef HEADRACE_AVX2_TARGET

}  // namespace

const RowKernels& avx2_row_kernels() {
  static const RowKernels kernels{input_range, quantize, dequantize};
  return kernels;
}

}  // namespace headrace::quant::epilogue_detail
