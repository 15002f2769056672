// BinLayout: where every feature's value lands in a flat array of counts.
//
// A numerical feature with E edges e_0 < ... < e_{E-1} (reference quantiles) has E + 1 value bins
// and one missing bin: bin i holds (e_{i-1}, e_i], so the cumulative count up to bin i is exactly
// the empirical CDF at e_i (what KS needs), bin E holds (e_{E-1}, +inf], and NaN goes to the
// missing bin E + 1. -inf lands in bin 0.
// A categorical feature with K categories holds codes: an integer code c in [0, K) lands in bin c,
// anything else that is not NaN (unknown categories, which the Python layer codes as K) in the
// "other" bin K, and NaN in the missing bin K + 1.
//
// Bin search is branch-free: every numerical feature's edges are padded with +inf to the same
// power-of-two length, and the search takes exactly log2(length) compare-and-add steps whatever
// the value, so random data costs no branch mispredictions (std::upper_bound costs 3-5x more).
//
// Ownership/threading: built once (add_* calls from one thread), then immutable; const methods are
// safe from any number of threads at once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace headrace::drift {

enum class FeatureKind : std::uint8_t { kNumerical = 0, kCategorical = 1 };

class BinLayout {
 public:
  // Edges must be finite and strictly increasing; at most kMaxEdges of them.
  void add_numerical(std::span<const double> edges);
  // n_categories >= 0 (0 means every non-missing value is "other").
  void add_categorical(std::int64_t n_categories);

  std::size_t feature_count() const noexcept { return kinds_.size(); }
  // Length of the flat count array: the sum of every feature's bins (missing bins included).
  std::size_t total_bins() const noexcept { return total_bins_; }
  FeatureKind kind(std::size_t feature) const { return kinds_.at(feature); }
  // Bins of one feature (value bins + other + missing), and where they start in the flat array.
  std::size_t bin_count(std::size_t feature) const { return bin_counts_.at(feature); }
  std::size_t bin_offset(std::size_t feature) const { return offsets_.at(feature); }
  std::span<const double> edges(std::size_t feature) const;

  // Bin (within the feature, not flat) of one value; the same search the hot loop runs.
  std::size_t bin_of(std::size_t feature, double value) const;

  // The hot loop has an AVX2 kernel (two levels of 8-wide compares against 64 padded edges, no
  // dependent loads but one) for features of at most 63 edges, chosen at run time when the CPU
  // has AVX2; otherwise, and for more edges, the scalar branch-free binary search. Both give
  // identical bins. set_simd(false) forces the scalar search (tests and benchmarks); returns
  // whether the AVX2 kernel is now in use.
  bool set_simd(bool enabled);
  bool simd() const noexcept { return use_simd_; }

  // Adds one to counts[flat bin] for every value of a row-major [rows, feature_count()] batch.
  // counts must hold total_bins() entries. The caller owns counts exclusively for the call.
  void count_rows(const float* rows, std::size_t n_rows, std::span<std::uint64_t> counts) const;
  void count_rows(const double* rows, std::size_t n_rows, std::span<std::uint64_t> counts) const;

  static constexpr std::size_t kMaxEdges = 4095;
  static constexpr std::size_t kMaxTotalBins = std::size_t{1} << 31;

 private:
  template <typename T>
  void count_rows_impl(const T* rows, std::size_t n_rows, std::uint64_t* counts) const;
  template <typename T, std::size_t kSteps>
  void count_numerical(const T* rows, std::size_t n_rows, std::uint64_t* counts) const;
  template <typename T>
  void count_simd(const T* rows, std::size_t n_rows, std::uint64_t* counts) const;
  void repad(std::size_t padded_length);
  void check_total(std::size_t more_bins) const;

  std::vector<FeatureKind> kinds_;
  std::vector<std::size_t> bin_counts_;
  std::vector<std::size_t> offsets_;
  std::size_t total_bins_ = 0;
  // Numerical features: column, edges (unpadded, for edges()), flat offset, missing bin.
  std::vector<std::size_t> numerical_columns_;
  std::vector<std::vector<double>> numerical_edges_;
  std::vector<std::uint64_t> numerical_offsets_;
  std::vector<std::uint64_t> numerical_missing_;
  // All numerical edges, padded with +inf to padded_length_ each, feature after feature.
  std::vector<double> padded_edges_;
  std::size_t padded_length_ = 1;  // a power of two > the largest edge count
  std::size_t search_steps_ = 0;   // log2(padded_length_)
  // AVX2 kernel layout: every numerical feature's edges padded with +inf to kSimdEdges, and every
  // 8th of them (the last edge of each block of 8) as that feature's 8 splitters.
  static constexpr std::size_t kSimdEdges = 64;
  std::vector<double> simd_edges_;
  std::vector<double> simd_splitters_;
  bool simd_available_ = false;  // the CPU has AVX2 and every feature fits kSimdEdges
  bool simd_wanted_ = true;
  bool use_simd_ = false;
  // Categorical features: column, number of categories, flat offset.
  std::vector<std::size_t> categorical_columns_;
  std::vector<double> categorical_sizes_;
  std::vector<std::uint64_t> categorical_offsets_;
};

}  // namespace headrace::drift
