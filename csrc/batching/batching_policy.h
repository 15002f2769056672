// The batching decision as a pure function: (queue state, now) -> run these requests now, wait
// until t, or idle; plus which requests have expired or must be shed. Triton's rules
// (src/dynamic_batch_scheduler.cc, GetDynamicBatch), with its gaps fixed:
//   - rows (dim 0) are counted, never requests; a request is never split; one with more rows than
//     max_batch_size runs as a batch of its own;
//   - batches grow to a preferred size (or max_batch_size) and are sent as soon as one is reached;
//     the delay counts from the oldest queued request;
//   - priority level 1 before level 2; within a level, first come first served;
//   - a batch is formed from the head request's shape group only (same inputs, dtypes and
//     non-batch dims), so shapes never mix;
//   - expired requests are reported, and the wait includes the next deadline, so the scheduler
//     answers them AT their deadline, even while every instance is busy (Triton #7512);
//   - with auto_delay, whether to wait comes from the fitted batch cost, the arrival rate, how
//     many requests are in flight and whether the CPU is saturated; with latency_target_us,
//     requests that cannot meet it any more are shed.
//
// No clock, no thread, no allocation beyond the returned decision: the scheduler passes `now`
// and tests pass a fake one. decide() is const and may be called from any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <vector>

#include "batching/batcher_config.h"
#include "common/clock.h"
#include "batching/cost_model.h"

namespace headrace::batching {

// What the policy sees of one queued request.
struct QueuedRequest {
  std::uint64_t ticket = 0;
  std::int64_t rows = 1;
  std::size_t level = 0;       // 0 = highest priority (config level 1)
  TimeNs enqueue_ns = 0;
  TimeNs deadline_ns = 0;      // absolute; 0 = none
  std::uint64_t shape_key = 0; // equal keys <=> same inputs, dtypes and shape[1:]
};

struct QueueView {
  // Queued requests. The Batcher passes them in priority order (level, then arrival); the policy
  // orders them itself (stably) when they are not.
  std::span<const QueuedRequest> requests;
  std::int64_t free_instances = 1;
  std::int64_t busy_instances = 0;
  CostEstimate cost;
  // Shutting down with drain: send what is queued without waiting for batches to fill.
  bool flush = false;
};

struct Decision {
  enum class Action { kIdle, kWait, kRun };
  static constexpr TimeNs kNever = std::numeric_limits<TimeNs>::max();

  Action action = Action::kIdle;
  // Indices into QueueView::requests. `run`: the batch, in batch order (kRun only).
  std::vector<std::size_t> run;
  // Past their deadline: answer DEADLINE_EXCEEDED without running. Reported with any action.
  std::vector<std::size_t> expired;
  // Cannot meet latency_target_us any more: answer UNAVAILABLE. Reported with any action.
  std::vector<std::size_t> shed;
  // kWait: decide again at this time (or earlier, when something changes).
  TimeNs wait_until_ns = kNever;
  // kRun: the batch was gathered by a wait for companions (the fixed delay, or auto on a
  // saturated server); its size tells the cost model whether such waits find any
  // (CostModel::observe_companion_wait).
  bool companion_wait = false;
};

class BatchingPolicy {
 public:
  // Validates the config (CoreError(kInvalidArgument)).
  explicit BatchingPolicy(BatcherConfig config);

  Decision decide(const QueueView& state, TimeNs now) const;

  const BatcherConfig& config() const noexcept { return config_; }

 private:
  bool is_preferred(std::int64_t rows) const noexcept;

  BatcherConfig config_;
  std::int64_t cap_rows_;
  std::vector<std::int64_t> preferred_;
};

}  // namespace headrace::batching
