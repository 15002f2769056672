// Settings of one Batcher (one model version). Plain values, copied into the Batcher and its
// policy at construction; never changed afterwards, so any thread may read them.
#pragma once

#include <cstdint>
#include <vector>

namespace headrace::batching {

struct BatcherConfig {
  // Most rows (dim 0 summed over requests) in one batch. A single request with more rows still
  // runs, alone: requests are never split.
  std::int64_t max_batch_size = 8;
  // Concurrent batches: one worker thread per instance, each runs one batch at a time.
  std::int64_t instances = 1;
  // Fixed delay: the longest the oldest queued request waits for a batch to fill. 0 = send what is
  // there as soon as an instance is free. Ignored when auto_delay is set.
  std::int64_t max_queue_delay_us = 0;
  // Choose the delay from the fitted batch cost and the arrival rate instead (see CostModel).
  bool auto_delay = false;
  // Batch sizes (rows) sent as soon as they are reached. Empty = {max_batch_size}. Batches never
  // grow beyond the largest preferred size.
  std::vector<std::int64_t> preferred_batch_sizes;
  // Queued requests beyond which submit fails with UNAVAILABLE. 0 = unbounded.
  std::int64_t max_queue_size = 0;
  // Priority levels 1 (highest) .. priority_levels; 0 = priorities off (one level).
  std::int64_t priority_levels = 0;
  // The level of a request that asks for priority 0.
  std::int64_t default_priority_level = 0;
  // Deadline given to a request that brings none (0 = none).
  std::int64_t default_timeout_us = 0;
  // With a value > 0, a queued request whose predicted completion (age + fitted batch cost) can
  // no longer meet it is shed (UNAVAILABLE) instead of run late.
  std::int64_t latency_target_us = 0;

  // Throws CoreError(kInvalidArgument) naming the first bad field.
  void validate() const;
  // The largest size a batch grows to: max(preferred_batch_sizes), or max_batch_size.
  std::int64_t batch_cap() const noexcept;
  // Maps a request's priority (0 = default) to a level index 0 .. levels-1. Throws
  // CoreError(kInvalidArgument) for a priority outside 0 .. priority_levels.
  std::size_t level_index(std::int64_t priority) const;
  std::size_t level_count() const noexcept;
};

}  // namespace headrace::batching
