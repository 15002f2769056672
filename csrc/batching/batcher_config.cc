#include "batching/batcher_config.h"

#include <algorithm>
#include <string>

#include "common/status.h"

namespace headrace::batching {
namespace {

[[noreturn]] void invalid(const std::string& message) {
  throw_invalid_argument("batcher config: " + message);
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
