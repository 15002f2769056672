#include "batching/batcher_config.h"

#include <algorithm>
#include <string>

#include "batching/cost_model.h"
#include "common/status.h"

namespace headrace::batching {
namespace {

[[noreturn]] void invalid(const std::string& message) {
  throw_invalid_argument("batcher config: " + message);
}

// Written so that NaN fails too.
bool within(double value, double low, double high) noexcept {
  return value >= low && value <= high;
}

}  // namespace

void BatcherConfig::validate() const {
  if (max_batch_size < 1) invalid("max_batch_size must be >= 1");
  if (instances < 1 || instances > 1024) invalid("instances must be in 1..1024");
  if (max_queue_delay_us < 0) invalid("max_queue_delay_us must be >= 0");
  if (max_queue_size < 0) invalid("max_queue_size must be >= 0 (0 = unbounded)");
  if (default_timeout_us < 0) invalid("default_timeout_us must be >= 0 (0 = none)");
  if (latency_target_us < 0) invalid("latency_target_us must be >= 0 (0 = none)");
  for (const std::int64_t size : preferred_batch_sizes) {
    if (size < 1 || size > max_batch_size) {
      invalid("preferred batch size " + std::to_string(size) + " is outside 1..max_batch_size (" +
              std::to_string(max_batch_size) + ")");
    }
  }
  if (priority_levels < 0 || priority_levels > 1024) invalid("priority_levels must be in 0..1024");
  if (priority_levels > 0 && (default_priority_level < 1 || default_priority_level > priority_levels)) {
    invalid("default_priority_level must be in 1..priority_levels (" +
            std::to_string(priority_levels) + ")");
  }
  if (inline_max_batch_us < 0) invalid("inline_max_batch_us must be >= 0 (0 = never inline)");
  if (inline_min_cost_samples < 0 ||
      inline_min_cost_samples > static_cast<std::int64_t>(CostModel::kWindow)) {
    invalid("inline_min_cost_samples must be in 0.." + std::to_string(CostModel::kWindow));
  }
  if (!within(saturated_enter_busy_fraction, 0.0, 1.0) || saturated_enter_busy_fraction == 0.0) {
    invalid("saturated_enter_busy_fraction must be in (0, 1]");
  }
  if (!within(saturated_leave_busy_fraction, 0.0, saturated_enter_busy_fraction) ||
      saturated_leave_busy_fraction == 0.0) {
    invalid("saturated_leave_busy_fraction must be in (0, saturated_enter_busy_fraction]");
  }
  if (!within(saturated_batch_requests, 1.0, 1e6)) {
    invalid("saturated_batch_requests must be in 1..1e6");
  }
  if (saturated_max_wait_us < 0) invalid("saturated_max_wait_us must be >= 0");
  if (!within(lull_arrival_intervals, 0.0, 1e6) || lull_arrival_intervals == 0.0) {
    invalid("lull_arrival_intervals must be in (0, 1e6]");
  }
  if (!within(keep_waiting_yield, 0.0, 1.0)) invalid("keep_waiting_yield must be in 0..1");
  if (probe_every_arrivals < 1) invalid("probe_every_arrivals must be >= 1");
  if (!within(yield_gain_weight, 0.0, 1.0) || yield_gain_weight == 0.0) {
    invalid("yield_gain_weight must be in (0, 1]");
  }
  if (!within(yield_loss_weight, 0.0, 1.0) || yield_loss_weight == 0.0) {
    invalid("yield_loss_weight must be in (0, 1]");
  }
  if (!within(arrival_interval_weight, 0.0, 1.0) || arrival_interval_weight == 0.0) {
    invalid("arrival_interval_weight must be in (0, 1]");
  }
}

std::int64_t BatcherConfig::batch_cap() const noexcept {
  if (preferred_batch_sizes.empty()) return max_batch_size;
  return *std::max_element(preferred_batch_sizes.begin(), preferred_batch_sizes.end());
}

std::size_t BatcherConfig::level_count() const noexcept {
  return priority_levels > 0 ? static_cast<std::size_t>(priority_levels) : 1;
}

std::size_t BatcherConfig::level_index(std::int64_t priority) const {
  if (priority_levels == 0) {
    if (priority < 0) {
      throw CoreError(StatusCode::kInvalidArgument, "priority must be >= 0");
    }
    return 0;  // Priorities off: every request shares the one level, as in Triton.
  }
  if (priority < 0 || priority > priority_levels) {
    throw CoreError(StatusCode::kInvalidArgument,
                    "priority " + std::to_string(priority) + " is outside 0..priority_levels (" +
                        std::to_string(priority_levels) + ")");
  }
  const std::int64_t level = priority == 0 ? default_priority_level : priority;
  return static_cast<std::size_t>(level - 1);
}

}  // namespace headrace::batching
