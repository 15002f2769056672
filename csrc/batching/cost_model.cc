#include "batching/cost_model.h"

#include <algorithm>

namespace headrace::batching {

CostModel::CostModel(const BatcherConfig& config)
    : prior_a_ns_per_row_(kPriorRowNs),
      prior_b_ns_(kPriorBatchNs),
      arrival_weight_(config.arrival_interval_weight),
      yield_gain_weight_(config.yield_gain_weight),
      yield_loss_weight_(config.yield_loss_weight),
      probe_every_arrivals_(
          static_cast<std::uint64_t>(std::max<std::int64_t>(1, config.probe_every_arrivals))),
      saturated_enter_(config.saturated_enter_busy_fraction),
      saturated_leave_(config.saturated_leave_busy_fraction) {
  if (config.latency_target_us > 0) {
    const double target_ns = static_cast<double>(config.latency_target_us) * 1000.0;
    prior_b_ns_ = std::min(prior_b_ns_, target_ns / kPriorBatchTargetDivisor);
    prior_a_ns_per_row_ = std::min(prior_a_ns_per_row_, target_ns / kPriorRowTargetDivisor);
  }
  estimate_.a_ns_per_row = prior_a_ns_per_row_;
  estimate_.b_ns = prior_b_ns_;
}

void CostModel::observe_batch(std::int64_t rows, std::uint64_t input_bytes,
                              TimeNs compute_ns) noexcept {
  if (rows <= 0 || input_bytes == 0 || compute_ns < 0) return;
  rows_[next_] = static_cast<double>(rows);
  bytes_[next_] = static_cast<double>(input_bytes);
  compute_ns_[next_] = static_cast<double>(compute_ns);
  next_ = (next_ + 1) % kWindow;
  count_ = std::min(count_ + 1, kWindow);
  refit();
}

void CostModel::observe_companion_wait(std::size_t requests) noexcept {
  const double outcome = requests > 1 ? 1.0 : 0.0;
  const double weight = requests > 1 ? yield_gain_weight_ : yield_loss_weight_;
  estimate_.wait_yield = (1.0 - weight) * estimate_.wait_yield + weight * outcome;
  arrivals_since_probe_ = 0;
  estimate_.probe_due = false;
}

void CostModel::observe_arrival(TimeNs arrival_ns) noexcept {
  if (++arrivals_since_probe_ >= probe_every_arrivals_) estimate_.probe_due = true;
  if (arrivals_ > 0) {
    const double interval = static_cast<double>(std::max<TimeNs>(0, arrival_ns - estimate_.last_arrival_ns));
    estimate_.arrival_interval_ns =
        estimate_.arrival_interval_ns < 0.0
            ? interval
            : (1.0 - arrival_weight_) * estimate_.arrival_interval_ns + arrival_weight_ * interval;
  }
  estimate_.last_arrival_ns = std::max(estimate_.last_arrival_ns, arrival_ns);
  ++arrivals_;
}

void CostModel::observe_load(double busy_fraction) noexcept {
  estimate_.busy_fraction = busy_fraction;
  if (busy_fraction >= saturated_enter_) estimate_.saturated = true;
  if (busy_fraction < saturated_leave_) estimate_.saturated = false;
}

namespace {

struct Line {
  double a = 0.0;
  double b = 0.0;
  bool spread = false;       // the x values differ
  double through_origin = 0.0;  // the slope of the best line through the origin
};

// Least squares of y = a*x + b over n samples. Without spread in x, the samples only say what
// that x costs: with a prior slope the rest goes in the intercept; without one (prior < 0) the
// line goes through the origin, which over-predicts for larger x rather than under-predicts.
Line fit_line(const std::array<double, CostModel::kWindow>& xs,
              const std::array<double, CostModel::kWindow>& ys, std::size_t count,
              double prior_slope) noexcept {
  const double n = static_cast<double>(count);
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (std::size_t i = 0; i < count; ++i) {
    sx += xs[i];
    sy += ys[i];
    sxx += xs[i] * xs[i];
    sxy += xs[i] * ys[i];
  }
  const double mean_x = sx / n;
  const double mean_y = sy / n;
  const double var_x = sxx / n - mean_x * mean_x;
  const double through_origin = sxx > 0.0 ? std::max(sxy / sxx, 0.0) : 0.0;
  // The variance test is relative so that rounding does not pass for spread.
  const bool spread = var_x > 1e-9 * std::max(1.0, mean_x * mean_x);
  if (!spread && prior_slope < 0.0) return {through_origin, 0.0, spread, through_origin};
  double a = spread ? (sxy / n - mean_x * mean_y) / var_x : prior_slope;
  a = std::max(a, 0.0);  // Noise can tilt the line; a batch never gets cheaper with more rows.
  const double b = mean_y - a * mean_x;
  // Cost proportional to x: fit the line through the origin instead.
  if (b < 0.0) return {sxx > 0.0 ? through_origin : prior_slope, 0.0, spread, through_origin};
  return {a, b, spread, through_origin};
}

}  // namespace

void CostModel::refit() noexcept {
  const Line by_rows = fit_line(rows_, compute_ns_, count_, prior_a_ns_per_row_);
  const Line by_bytes = fit_line(bytes_, compute_ns_, count_, -1.0);
  estimate_.a_ns_per_row = by_rows.a;
  estimate_.b_ns = by_rows.b;
  estimate_.a_ns_per_byte = by_bytes.a;
  estimate_.b_bytes_ns = by_bytes.b;
  estimate_.samples = count_;
  estimate_.rows_spread = by_rows.spread;
  estimate_.proportional_ns_per_row = by_rows.through_origin;
  std::int64_t largest = 0;
  double quickest = 0.0;
  for (std::size_t i = 0; i < count_; ++i) {
    const auto rows = static_cast<std::int64_t>(rows_[i]);
    if (rows > largest || (rows == largest && compute_ns_[i] < quickest)) {
      largest = rows;
      quickest = compute_ns_[i];
    }
  }
  estimate_.largest_rows = largest;
  estimate_.largest_quickest_ns = quickest;
  std::uint64_t largest_bytes = 0;
  double bytes_quickest = 0.0;
  for (std::size_t i = 0; i < count_; ++i) {
    const auto bytes = static_cast<std::uint64_t>(bytes_[i]);
    if (bytes > largest_bytes || (bytes == largest_bytes && compute_ns_[i] < bytes_quickest)) {
      largest_bytes = bytes;
      bytes_quickest = compute_ns_[i];
    }
  }
  estimate_.largest_bytes = largest_bytes;
  estimate_.largest_bytes_quickest_ns = bytes_quickest;
}

}  // namespace headrace::batching
