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

void CostModel::observe_batch(std::int64_t rows, TimeNs compute_ns) noexcept {
  if (rows <= 0 || compute_ns < 0) return;
  rows_[next_] = static_cast<double>(rows);
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

void CostModel::refit() noexcept {
  const double n = static_cast<double>(count_);
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (std::size_t i = 0; i < count_; ++i) {
    sx += rows_[i];
    sy += compute_ns_[i];
    sxx += rows_[i] * rows_[i];
    sxy += rows_[i] * compute_ns_[i];
  }
  const double mean_x = sx / n;
  const double mean_y = sy / n;
  const double var_x = sxx / n - mean_x * mean_x;
  double a = prior_a_ns_per_row_;
  // One batch size only says what that size costs: keep the prior slope and put the rest in the
  // intercept. The variance test is relative so that rounding does not pass for spread.
  if (var_x > 1e-9 * std::max(1.0, mean_x * mean_x)) {
    a = (sxy / n - mean_x * mean_y) / var_x;
  }
  a = std::max(a, 0.0);  // Noise can tilt the line; a batch never gets cheaper with more rows.
  double b = mean_y - a * mean_x;
  if (b < 0.0) {
    // Cost proportional to rows: fit the line through the origin instead.
    b = 0.0;
    a = sxx > 0.0 ? std::max(sxy / sxx, 0.0) : prior_a_ns_per_row_;
  }
  estimate_.a_ns_per_row = a;
  estimate_.b_ns = b;
}

}  // namespace headrace::batching
