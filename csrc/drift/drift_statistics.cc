#include "drift/drift_statistics.h"

#include <math.h>  // lgamma_r

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>

#include "common/status.h"

namespace headrace::drift {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kPi = 3.14159265358979323846;

std::uint64_t total(std::span<const std::uint64_t> counts) {
  return std::accumulate(counts.begin(), counts.end(), std::uint64_t{0});
}

void require_same_size(std::span<const std::uint64_t> a, std::span<const std::uint64_t> b) {
  if (a.size() != b.size()) {
    throw CoreError(StatusCode::kInvalidArgument,
                    "drift: reference and current counts differ in length (" +
                        std::to_string(a.size()) + " vs " + std::to_string(b.size()) + ")");
  }
}

// std::lgamma writes the global signgam in glibc, a data race between threads; lgamma_r does not.
double log_gamma(double a) {
#if defined(__GLIBC__)
  int sign = 0;
  return ::lgamma_r(a, &sign);
#else
  return std::lgamma(a);
#endif
}

// Series for the regularized lower incomplete gamma P(a, x), good for x < a + 1.
double gamma_p_series(double a, double x) {
  double term = 1.0 / a;
  double sum = term;
  for (int n = 1; n < 10000; ++n) {
    term *= x / (a + n);
    sum += term;
    if (std::fabs(term) < std::fabs(sum) * 1e-17) break;
  }
  return sum * std::exp(-x + a * std::log(x) - log_gamma(a));
}

// Continued fraction (modified Lentz) for Q(a, x), good for x >= a + 1.
double gamma_q_fraction(double a, double x) {
  constexpr double kTiny = 1e-300;
  double b = x + 1.0 - a;
  double c = 1.0 / kTiny;
  double d = 1.0 / b;
  double h = d;
  for (int i = 1; i < 10000; ++i) {
    const double an = -i * (i - a);
    b += 2.0;
    d = an * d + b;
    if (std::fabs(d) < kTiny) d = kTiny;
    c = b + an / c;
    if (std::fabs(c) < kTiny) c = kTiny;
    d = 1.0 / d;
    const double delta = d * c;
    h *= delta;
    if (std::fabs(delta - 1.0) < 1e-16) break;
  }
  return std::exp(-x + a * std::log(x) - log_gamma(a)) * h;
}

}  // namespace

double population_stability_index(std::span<const std::uint64_t> reference,
                                  std::span<const std::uint64_t> current, double floor_share) {
  require_same_size(reference, current);
  const std::uint64_t n_ref = total(reference);
  const std::uint64_t n_cur = total(current);
  if (n_ref == 0 || n_cur == 0) return kNaN;
  double psi = 0.0;
  for (std::size_t i = 0; i < reference.size(); ++i) {
    const double r = std::max(static_cast<double>(reference[i]) / static_cast<double>(n_ref),
                              floor_share);
    const double c =
        std::max(static_cast<double>(current[i]) / static_cast<double>(n_cur), floor_share);
    psi += (c - r) * std::log(c / r);
  }
  return psi;
}

ChiSquareResult chi_square(std::span<const std::uint64_t> reference,
                           std::span<const std::uint64_t> current, double min_expected) {
  require_same_size(reference, current);
  const std::uint64_t n_ref = total(reference);
  const std::uint64_t n_cur = total(current);
  ChiSquareResult result;
  if (n_ref == 0 || n_cur == 0) {
    result.statistic = kNaN;
    result.p_value = kNaN;
    return result;
  }
  const double scale = static_cast<double>(n_cur) / static_cast<double>(n_ref);
  std::vector<double> observed;
  std::vector<double> expected;
  double group_observed = 0.0;
  double group_expected = 0.0;
  for (std::size_t i = 0; i < reference.size(); ++i) {
    group_observed += static_cast<double>(current[i]);
    group_expected += static_cast<double>(reference[i]) * scale;
    if (group_expected >= min_expected) {
      observed.push_back(group_observed);
      expected.push_back(group_expected);
      group_observed = 0.0;
      group_expected = 0.0;
    }
  }
  if (group_observed > 0.0 || group_expected > 0.0) {
    if (observed.empty()) {
      observed.push_back(group_observed);
      expected.push_back(group_expected);
    } else {
      observed.back() += group_observed;
      expected.back() += group_expected;
    }
  }
  for (std::size_t g = 0; g < observed.size(); ++g) {
    const double diff = observed[g] - expected[g];
    result.statistic += diff * diff / expected[g];
  }
  result.merged_bins = observed.size();
  result.dof = static_cast<std::int64_t>(observed.size()) - 1;
  result.p_value =
      result.dof > 0 ? chi_square_survival(result.statistic, static_cast<double>(result.dof)) : 1.0;
  return result;
}

KsResult binned_ks(std::span<const std::uint64_t> reference,
                   std::span<const std::uint64_t> current) {
  require_same_size(reference, current);
  const std::uint64_t n_ref = total(reference);
  const std::uint64_t n_cur = total(current);
  KsResult result;
  if (n_ref == 0 || n_cur == 0) {
    result.d_lower = result.d_upper = result.p_value = kNaN;
    return result;
  }
  const double inv_ref = 1.0 / static_cast<double>(n_ref);
  const double inv_cur = 1.0 / static_cast<double>(n_cur);
  std::uint64_t cum_ref = 0;
  std::uint64_t cum_cur = 0;
  for (std::size_t i = 0; i < reference.size(); ++i) {
    const double ref_before = static_cast<double>(cum_ref) * inv_ref;
    const double cur_before = static_cast<double>(cum_cur) * inv_cur;
    cum_ref += reference[i];
    cum_cur += current[i];
    const double ref_after = static_cast<double>(cum_ref) * inv_ref;
    const double cur_after = static_cast<double>(cum_cur) * inv_cur;
    result.d_lower = std::max(result.d_lower, std::fabs(ref_after - cur_after));
    // Inside bin i both CDFs stay between their values at the bin's two ends.
    result.d_upper =
        std::max({result.d_upper, ref_after - cur_before, cur_after - ref_before});
  }
  result.d_upper = std::max(result.d_upper, result.d_lower);
  result.effective_n = static_cast<double>(n_ref) * static_cast<double>(n_cur) /
                       (static_cast<double>(n_ref) + static_cast<double>(n_cur));
  result.p_value = kolmogorov_survival(std::sqrt(result.effective_n) * result.d_lower);
  return result;
}

double kolmogorov_survival(double lambda) {
  if (std::isnan(lambda)) return kNaN;
  if (lambda <= 0.0) return 1.0;
  if (lambda < 1.18) {
    // The alternating series converges slowly for small lambda; use the theta-function form
    // 1 - sqrt(2 pi) / lambda * sum_k exp(-(2k - 1)^2 pi^2 / (8 lambda^2)).
    const double w = kPi * kPi / (8.0 * lambda * lambda);
    double sum = 0.0;
    for (int k = 1; k < 100; ++k) {
      const double odd = 2.0 * k - 1.0;
      const double term = std::exp(-odd * odd * w);
      sum += term;
      if (term < 1e-18 * sum) break;
    }
    return std::clamp(1.0 - std::sqrt(2.0 * kPi) / lambda * sum, 0.0, 1.0);
  }
  double sum = 0.0;
  for (int k = 1; k < 100; ++k) {
    const double term = std::exp(-2.0 * k * k * lambda * lambda);
    sum += (k % 2 == 1) ? term : -term;
    if (term < 1e-18 * std::fabs(sum)) break;
  }
  return std::clamp(2.0 * sum, 0.0, 1.0);
}

double gamma_q(double a, double x) {
  if (!(a > 0.0) || !(x >= 0.0)) {
    throw CoreError(StatusCode::kInvalidArgument, "drift: gamma_q needs a > 0 and x >= 0");
  }
  if (x == 0.0) return 1.0;
  if (x < a + 1.0) return 1.0 - gamma_p_series(a, x);
  return gamma_q_fraction(a, x);
}

double chi_square_survival(double statistic, double dof) {
  if (std::isnan(statistic)) return kNaN;
  return gamma_q(0.5 * dof, 0.5 * std::max(statistic, 0.0));
}

Correction parse_correction(std::string_view name) {
  if (name == "none") return Correction::kNone;
  if (name == "bonferroni") return Correction::kBonferroni;
  if (name == "bh" || name == "fdr" || name == "benjamini-hochberg") {
    return Correction::kBenjaminiHochberg;
  }
  throw CoreError(StatusCode::kInvalidArgument,
                  "drift: correction must be 'bonferroni', 'bh' or 'none', got '" +
                      std::string(name) + "'");
}

std::vector<bool> reject_hypotheses(std::span<const double> p_values, double alpha,
                                    Correction correction) {
  std::vector<bool> rejected(p_values.size(), false);
  std::vector<std::size_t> valid;
  for (std::size_t i = 0; i < p_values.size(); ++i) {
    if (!std::isnan(p_values[i])) valid.push_back(i);
  }
  const auto m = static_cast<double>(valid.size());
  if (valid.empty()) return rejected;
  switch (correction) {
    case Correction::kNone:
      for (std::size_t i : valid) rejected[i] = p_values[i] < alpha;
      break;
    case Correction::kBonferroni:
      for (std::size_t i : valid) rejected[i] = p_values[i] < alpha / m;
      break;
    case Correction::kBenjaminiHochberg: {
      std::stable_sort(valid.begin(), valid.end(),
                       [&](std::size_t a, std::size_t b) { return p_values[a] < p_values[b]; });
      std::size_t last = 0;  // number of rejections: the largest rank k with p_(k) <= k alpha / m
      for (std::size_t rank = 1; rank <= valid.size(); ++rank) {
        if (p_values[valid[rank - 1]] <= static_cast<double>(rank) * alpha / m) last = rank;
      }
      for (std::size_t rank = 0; rank < last; ++rank) rejected[valid[rank]] = true;
      break;
    }
  }
  return rejected;
}

}  // namespace headrace::drift
