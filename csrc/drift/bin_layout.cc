#include "drift/bin_layout.h"

#include <algorithm>
#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include <cmath>
#include <limits>
#include <string>

#include "common/status.h"

namespace headrace::drift {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// Count of edges strictly below x, in exactly kSteps compare-and-add steps over edges padded
// with +inf to 2^kSteps. NaN compares false everywhere and yields 0; the caller redirects it.
template <std::size_t kSteps>
inline std::size_t edges_below(const double* edges, double x) noexcept {
  std::size_t pos = 0;
  for (std::size_t step = (std::size_t{1} << kSteps) >> 1; step > 0; step >>= 1) {
    pos += (edges[pos + step - 1] < x) ? step : 0;
  }
  return pos;
}

// Bin of a categorical code: c in [0, k) if x is that integer, k ("other") for anything else,
// k + 1 for NaN. Written with selects so that the compiler emits no data-dependent branch.
inline std::uint64_t categorical_bin(double x, double k) noexcept {
  const bool in_range = (x >= 0.0) && (x < k);
  const double safe = in_range ? x : 0.0;
  const auto code = static_cast<std::uint64_t>(safe);
  const bool integral = static_cast<double>(code) == safe;
  const auto other = static_cast<std::uint64_t>(k);
  const std::uint64_t bin = (in_range && integral) ? code : other;
  return std::isnan(x) ? other + 1 : bin;
}

// Bins are found for a block of values first and counted after: the increments' addresses then
// come from a buffer, not from a search still in flight, so the CPU never stalls later loads on a
// store whose address it does not know yet. (Measured: 20-40% faster than incrementing in the
// search loop.)
class CountBuffer {
 public:
  explicit CountBuffer(std::uint64_t* counts) noexcept : counts_(counts) {}
  CountBuffer(const CountBuffer&) = delete;
  CountBuffer& operator=(const CountBuffer&) = delete;
  ~CountBuffer() { flush(); }

  void push(std::uint64_t flat_bin) noexcept {
    if (size_ == kCapacity) flush();
    flat_[size_++] = static_cast<std::uint32_t>(flat_bin);
  }
  void flush() noexcept {
    for (std::size_t i = 0; i < size_; ++i) ++counts_[flat_[i]];
    size_ = 0;
  }

 private:
  static constexpr std::size_t kCapacity = 2048;
  std::uint64_t* counts_;
  std::size_t size_ = 0;
  std::uint32_t flat_[kCapacity];
};

bool cpu_has_avx2() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt");
#else
  return false;
#endif
}

std::size_t edges_below_runtime(const double* edges, std::size_t padded_length, double x) noexcept {
  std::size_t pos = 0;
  for (std::size_t step = padded_length >> 1; step > 0; step >>= 1) {
    pos += (edges[pos + step - 1] < x) ? step : 0;
  }
  return pos;
}

}  // namespace

void BinLayout::add_numerical(std::span<const double> edges) {
  if (edges.size() > kMaxEdges) {
    throw CoreError(StatusCode::kInvalidArgument,
                    "drift: a numerical feature may have at most " + std::to_string(kMaxEdges) +
                        " bin edges, got " + std::to_string(edges.size()));
  }
  for (std::size_t i = 0; i < edges.size(); ++i) {
    if (!std::isfinite(edges[i]) || (i > 0 && !(edges[i - 1] < edges[i]))) {
      throw CoreError(StatusCode::kInvalidArgument,
                      "drift: bin edges must be finite and strictly increasing (feature " +
                          std::to_string(kinds_.size()) + ", edge " + std::to_string(i) + ")");
    }
  }
  const std::size_t bins = edges.size() + 2;
  check_total(bins);
  kinds_.push_back(FeatureKind::kNumerical);
  bin_counts_.push_back(bins);
  offsets_.push_back(total_bins_);
  numerical_columns_.push_back(kinds_.size() - 1);
  numerical_edges_.emplace_back(edges.begin(), edges.end());
  numerical_offsets_.push_back(total_bins_);
  numerical_missing_.push_back(edges.size() + 1);
  total_bins_ += bins;
  std::size_t padded = padded_length_;
  while (padded < edges.size() + 1) padded <<= 1;
  repad(padded);
}

void BinLayout::add_categorical(std::int64_t n_categories) {
  if (n_categories < 0 || n_categories > static_cast<std::int64_t>(kMaxEdges)) {
    throw CoreError(StatusCode::kInvalidArgument,
                    "drift: a categorical feature needs 0 to " + std::to_string(kMaxEdges) +
                        " categories, got " + std::to_string(n_categories));
  }
  const auto k = static_cast<std::size_t>(n_categories);
  check_total(k + 2);
  kinds_.push_back(FeatureKind::kCategorical);
  bin_counts_.push_back(k + 2);
  offsets_.push_back(total_bins_);
  categorical_columns_.push_back(kinds_.size() - 1);
  categorical_sizes_.push_back(static_cast<double>(k));
  categorical_offsets_.push_back(total_bins_);
  total_bins_ += k + 2;
}

void BinLayout::check_total(std::size_t more_bins) const {
  // The hot loop buffers flat bin indices as 32-bit numbers.
  if (total_bins_ + more_bins > kMaxTotalBins) {
    throw CoreError(StatusCode::kInvalidArgument,
                    "drift: more than " + std::to_string(kMaxTotalBins) + " bins in all");
  }
}

bool BinLayout::set_simd(bool enabled) {
  simd_wanted_ = enabled;
  use_simd_ = simd_wanted_ && simd_available_;
  return use_simd_;
}

void BinLayout::repad(std::size_t padded_length) {
  simd_available_ = cpu_has_avx2() && padded_length <= kSimdEdges;
  use_simd_ = simd_wanted_ && simd_available_;
  simd_edges_.assign(simd_available_ ? numerical_edges_.size() * kSimdEdges : 0, kInf);
  simd_splitters_.assign(simd_available_ ? numerical_edges_.size() * 8 : 0, kInf);
  if (simd_available_) {
    for (std::size_t j = 0; j < numerical_edges_.size(); ++j) {
      std::copy(numerical_edges_[j].begin(), numerical_edges_[j].end(),
                simd_edges_.begin() + static_cast<std::ptrdiff_t>(j * kSimdEdges));
      for (std::size_t block = 0; block < 8; ++block) {
        simd_splitters_[j * 8 + block] = simd_edges_[j * kSimdEdges + block * 8 + 7];
      }
    }
  }
  padded_length_ = padded_length;
  search_steps_ = 0;
  while ((std::size_t{1} << search_steps_) < padded_length_) ++search_steps_;
  padded_edges_.assign(numerical_edges_.size() * padded_length_, kInf);
  for (std::size_t j = 0; j < numerical_edges_.size(); ++j) {
    std::copy(numerical_edges_[j].begin(), numerical_edges_[j].end(),
              padded_edges_.begin() + static_cast<std::ptrdiff_t>(j * padded_length_));
  }
}

std::span<const double> BinLayout::edges(std::size_t feature) const {
  if (kind(feature) != FeatureKind::kNumerical) return {};
  for (std::size_t j = 0; j < numerical_columns_.size(); ++j) {
    if (numerical_columns_[j] == feature) return numerical_edges_[j];
  }
  return {};
}

std::size_t BinLayout::bin_of(std::size_t feature, double value) const {
  if (feature >= kinds_.size()) {
    throw CoreError(StatusCode::kInvalidArgument, "drift: feature index out of range");
  }
  if (kinds_[feature] == FeatureKind::kNumerical) {
    for (std::size_t j = 0; j < numerical_columns_.size(); ++j) {
      if (numerical_columns_[j] != feature) continue;
      if (std::isnan(value)) return numerical_missing_[j];
      return edges_below_runtime(padded_edges_.data() + j * padded_length_, padded_length_, value);
    }
  }
  const std::size_t k = bin_counts_[feature] - 2;
  if (std::isnan(value)) return k + 1;
  if (value >= 0.0 && value < static_cast<double>(k) && std::floor(value) == value) {
    return static_cast<std::size_t>(value);
  }
  return k;
}

template <typename T, std::size_t kSteps>
void BinLayout::count_numerical(const T* rows, std::size_t n_rows, std::uint64_t* counts) const {
  constexpr std::size_t kPadded = std::size_t{1} << kSteps;
  const std::size_t n_features = kinds_.size();
  const std::size_t n_numerical = numerical_columns_.size();
  const std::size_t n_categorical = categorical_columns_.size();
  const double* edges = padded_edges_.data();
  const std::size_t* num_columns = numerical_columns_.data();
  const std::uint64_t* num_offsets = numerical_offsets_.data();
  const std::uint64_t* num_missing = numerical_missing_.data();
  const std::size_t* cat_columns = categorical_columns_.data();
  const double* cat_sizes = categorical_sizes_.data();
  const std::uint64_t* cat_offsets = categorical_offsets_.data();
  CountBuffer buffer(counts);
  for (std::size_t r = 0; r < n_rows; ++r) {
    const T* row = rows + r * n_features;
    for (std::size_t j = 0; j < n_numerical; ++j) {
      const auto x = static_cast<double>(row[num_columns[j]]);
      const std::size_t below = edges_below<kSteps>(edges + j * kPadded, x);
      const std::uint64_t bin = std::isnan(x) ? num_missing[j] : below;
      buffer.push(num_offsets[j] + bin);
    }
    for (std::size_t j = 0; j < n_categorical; ++j) {
      const auto x = static_cast<double>(row[cat_columns[j]]);
      buffer.push(cat_offsets[j] + categorical_bin(x, cat_sizes[j]));
    }
  }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
namespace {

// Edges of one feature strictly below x, for 64 padded edges: the 8 splitters (the last edge of
// each block of 8) say which block x falls in, then one block of 8 edges says where in it. Each
// level is two 4-wide compares and a popcount: one dependent load instead of six.
__attribute__((target("avx2,popcnt"))) inline std::size_t edges_below_avx2(
    const double* edges, const double* splitters, double x) noexcept {
  const __m256d xv = _mm256_set1_pd(x);
  const int block_mask =
      _mm256_movemask_pd(_mm256_cmp_pd(_mm256_loadu_pd(splitters), xv, _CMP_LT_OQ)) |
      (_mm256_movemask_pd(_mm256_cmp_pd(_mm256_loadu_pd(splitters + 4), xv, _CMP_LT_OQ)) << 4);
  const auto block =
      static_cast<std::size_t>(__builtin_popcount(static_cast<unsigned>(block_mask)));
  const double* base = edges + block * 8;
  const int edge_mask =
      _mm256_movemask_pd(_mm256_cmp_pd(_mm256_loadu_pd(base), xv, _CMP_LT_OQ)) |
      (_mm256_movemask_pd(_mm256_cmp_pd(_mm256_loadu_pd(base + 4), xv, _CMP_LT_OQ)) << 4);
  return block * 8 + static_cast<std::size_t>(__builtin_popcount(static_cast<unsigned>(edge_mask)));
}

template <typename T>
__attribute__((target("avx2,popcnt"))) void count_rows_avx2(
    const T* rows, std::size_t n_rows, std::size_t n_features, const double* edges,
    const double* splitters, const std::size_t* num_columns, const std::uint64_t* num_offsets,
    const std::uint64_t* num_missing, std::size_t n_numerical, const std::size_t* cat_columns,
    const double* cat_sizes, const std::uint64_t* cat_offsets, std::size_t n_categorical,
    std::uint64_t* counts) noexcept {
  CountBuffer buffer(counts);
  for (std::size_t r = 0; r < n_rows; ++r) {
    const T* row = rows + r * n_features;
    for (std::size_t j = 0; j < n_numerical; ++j) {
      const auto x = static_cast<double>(row[num_columns[j]]);
      const std::size_t below = edges_below_avx2(edges + j * 64, splitters + j * 8, x);
      const std::uint64_t bin = std::isnan(x) ? num_missing[j] : below;
      buffer.push(num_offsets[j] + bin);
    }
    for (std::size_t j = 0; j < n_categorical; ++j) {
      const auto x = static_cast<double>(row[cat_columns[j]]);
      buffer.push(cat_offsets[j] + categorical_bin(x, cat_sizes[j]));
    }
  }
}

}  // namespace

template <typename T>
void BinLayout::count_simd(const T* rows, std::size_t n_rows, std::uint64_t* counts) const {
  count_rows_avx2(rows, n_rows, kinds_.size(), simd_edges_.data(), simd_splitters_.data(),
                  numerical_columns_.data(), numerical_offsets_.data(),
                  numerical_missing_.data(), numerical_columns_.size(),
                  categorical_columns_.data(), categorical_sizes_.data(),
                  categorical_offsets_.data(), categorical_columns_.size(), counts);
}
#else
template <typename T>
void BinLayout::count_simd(const T* rows, std::size_t n_rows, std::uint64_t* counts) const {
  count_numerical<T, 6>(rows, n_rows, counts);  // never chosen: simd_available_ is false
}
#endif

template <typename T>
void BinLayout::count_rows_impl(const T* rows, std::size_t n_rows, std::uint64_t* counts) const {
  if (use_simd_) return count_simd(rows, n_rows, counts);
  // One instantiation per search depth, so the step loop is fully unrolled.
  switch (search_steps_) {
    case 0: return count_numerical<T, 0>(rows, n_rows, counts);
    case 1: return count_numerical<T, 1>(rows, n_rows, counts);
    case 2: return count_numerical<T, 2>(rows, n_rows, counts);
    case 3: return count_numerical<T, 3>(rows, n_rows, counts);
    case 4: return count_numerical<T, 4>(rows, n_rows, counts);
    case 5: return count_numerical<T, 5>(rows, n_rows, counts);
    case 6: return count_numerical<T, 6>(rows, n_rows, counts);
    case 7: return count_numerical<T, 7>(rows, n_rows, counts);
    case 8: return count_numerical<T, 8>(rows, n_rows, counts);
    case 9: return count_numerical<T, 9>(rows, n_rows, counts);
    case 10: return count_numerical<T, 10>(rows, n_rows, counts);
    case 11: return count_numerical<T, 11>(rows, n_rows, counts);
    default: return count_numerical<T, 12>(rows, n_rows, counts);
  }
}

void BinLayout::count_rows(const float* rows, std::size_t n_rows,
                           std::span<std::uint64_t> counts) const {
  if (counts.size() != total_bins_) {
    throw CoreError(StatusCode::kInternal, "drift: count array does not match the layout");
  }
  count_rows_impl(rows, n_rows, counts.data());
}

void BinLayout::count_rows(const double* rows, std::size_t n_rows,
                           std::span<std::uint64_t> counts) const {
  if (counts.size() != total_bins_) {
    throw CoreError(StatusCode::kInternal, "drift: count array does not match the layout");
  }
  count_rows_impl(rows, n_rows, counts.data());
}

}  // namespace headrace::drift
