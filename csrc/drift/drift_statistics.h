// Drift statistics computed from bin counts (reference vs current window), never from raw values,
// so they are exact functions of counts that merge by addition across threads, windows and
// replicas. All functions are pure and safe from any thread.
//
// Bin order matters for KS and for the chi-square merge: numerical value bins in value order,
// categorical bins in profile order (most frequent category first, then "other"), with the
// missing bin last.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

namespace headrace::drift {

// Shares of zero are floored at this share before taking logs (Evidently's default): a bin that
// is empty on one side adds a large but finite term instead of infinity.
inline constexpr double kPsiFloorShare = 1e-4;

// PSI = sum_i (c_i - r_i) * ln(c_i / r_i) over shares r_i = ref_i / n_ref, c_i = cur_i / n_cur,
// each floored at floor_share. Every bin, the missing bin included, takes part. NaN when either
// side is empty.
double population_stability_index(std::span<const std::uint64_t> reference,
                                  std::span<const std::uint64_t> current,
                                  double floor_share = kPsiFloorShare);

struct ChiSquareResult {
  double statistic = 0.0;
  std::int64_t dof = 0;   // merged bins - 1
  double p_value = 1.0;   // 1 when dof == 0 (nothing to test)
  std::size_t merged_bins = 0;
};

// Pearson chi-square of the current counts against expected_i = ref_i * n_cur / n_ref.
// Merge rule: walking the bins in order, bins are pooled into a group until the group's expected
// count reaches min_expected; a last group still under min_expected joins the group before it.
// Bins with zero expected count therefore never stand alone (no division by zero). p-value from
// the regularized upper incomplete gamma Q(dof / 2, statistic / 2). NaN when either side is empty.
ChiSquareResult chi_square(std::span<const std::uint64_t> reference,
                           std::span<const std::uint64_t> current, double min_expected = 5.0);

struct KsResult {
  double d_lower = 0.0;  // max |F_ref(e) - F_cur(e)| over the bin edges e: the "binned KS" D
  double d_upper = 0.0;  // a proven upper bound on the exact two-sample D
  double p_value = 1.0;  // asymptotic Kolmogorov p-value of d_lower
  double effective_n = 0.0;  // n_ref * n_cur / (n_ref + n_cur)
};

// Two-sample Kolmogorov-Smirnov from value-bin counts (the missing bin excluded by the caller).
// Bins are (e_{i-1}, e_i], so cumulative shares at the edges are the exact empirical CDFs there
// and d_lower never exceeds the exact D; the exact D lies in [d_lower, d_upper] and
// d_upper <= d_lower + the largest bin share on either side, about 1/bins without drift.
// p = Q_KS(sqrt(n_eff) * d_lower) with Q_KS(l) = 2 sum_k (-1)^(k-1) exp(-2 k^2 l^2): since
// d_lower <= D, this p is never below the p of the exact D (conservative). NaN when a side is
// empty.
KsResult binned_ks(std::span<const std::uint64_t> reference,
                   std::span<const std::uint64_t> current);

// Kolmogorov distribution survival function Q_KS(lambda) = P(K > lambda).
double kolmogorov_survival(double lambda);
// Regularized upper incomplete gamma Q(a, x), a > 0, x >= 0.
double gamma_q(double a, double x);
// Chi-square survival function with dof degrees of freedom.
double chi_square_survival(double statistic, double dof);

enum class Correction { kNone, kBonferroni, kBenjaminiHochberg };
Correction parse_correction(std::string_view name);  // "none", "bonferroni", "bh"

// Which of the p-values are rejected at family level alpha. NaN p-values are never rejected
// and do not count as tests.
std::vector<bool> reject_hypotheses(std::span<const double> p_values, double alpha,
                                    Correction correction);

}  // namespace headrace::drift
