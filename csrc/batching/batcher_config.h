// Settings of one Batcher (one model version). Plain values, copied into the Batcher and its
// policy at construction; never changed afterwards, so any thread may read them.
//
// Every tuning constant of the batching area is a field here, named with its unit and described
// once, by what it trades off. The defaults are the project's settings; a deployment or a test
// may move one. validate() checks them all.
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

  // ---- Inline runs (Batcher::submit with a claim) ----
  // A lone request that would go straight to an idle instance runs on the submitting thread when
  // the fitted cost predicts its batch takes at most this long and the runner allows it
  // (Runner::runs_on_submitting_thread). That saves a worker wake-up and the completion's trip
  // back to a sleeping event loop, but blocks the submitter (the event loop) for the whole run:
  // keep it near what one request's own protocol handling costs. 0 = never inline.
  std::int64_t inline_max_batch_us = 100;
  // Fitted batch costs seen before a batch may run inline: until then the cost is the prior, a
  // guess that could put a slow model on the event loop. At most CostModel::kWindow.
  std::int64_t inline_min_cost_samples = 16;

  // ---- Auto delay and companion waits (see BatchingPolicy::decide) ----
  // Saturation of the server (LoadMonitor's busy fraction: the busier of the process's CPUs and
  // the intake thread) turns on at the enter threshold and off only below the leave threshold.
  // The gap is hysteresis: waiting for companions itself leaves the CPU idle now and then, and a
  // server hovering at one threshold would flip between waiting and not on every sample, answering
  // alike requests unalike. A lower enter threshold waits on less busy servers (fewer batches,
  // more latency).
  double saturated_enter_busy_fraction = 0.85;
  double saturated_leave_busy_fraction = 0.65;
  // A saturated wait gathers about this many requests: it lasts until this many mean arrival
  // intervals after the oldest request. Each batch's fixed overhead (worker and event-loop
  // wake-ups, the runner's fixed cost) is shared by its requests, so more companions free CPU;
  // but a few closed-loop callers synchronized on one batch leave the server idle while they all
  // wait, so more than a handful costs throughput.
  double saturated_batch_requests = 6.0;
  // Longest saturated wait (a quarter of latency_target_us when that is tighter): what waiting
  // for companions may add to a request's latency.
  std::int64_t saturated_max_wait_us = 2000;
  // A saturated wait also ends after this many mean arrival intervals without an arrival: with
  // fewer callers than a full batch, all of them may be waiting on this one.
  double lull_arrival_intervals = 3.0;
  // Companion waits (the fixed delay, and the saturated auto delay) go on while the share of such
  // waits that found company (CostEstimate::wait_yield) is at least this; below it a wait is
  // only tried now and then (probe_every_arrivals). Higher gives up sooner on a lone caller.
  double keep_waiting_yield = 0.5;
  // Arrivals between two tries of a companion wait while waits find nobody: a lone closed-loop
  // caller pays the try's wait on one request in this many (256 keeps it under the 1% a p99
  // sees); fewer notices sooner that company has come.
  std::int64_t probe_every_arrivals = 256;
  // Weight of the newest outcome in wait_yield: a wait that found company (gain), one that ran
  // alone (loss). Asymmetric: one success switches waiting on, while switching it off takes
  // about 7 lone batches in a row, because under many callers the intake is bursty (the loop
  // answers a whole batch before it takes new requests in) and a wait now and then finds nobody.
  double yield_gain_weight = 0.5;
  double yield_loss_weight = 0.1;
  // Weight of the newest inter-arrival time in the arrival-interval average: higher follows a
  // changing rate sooner and is noisier.
  double arrival_interval_weight = 0.2;

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
