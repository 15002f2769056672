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
//     requests that cannot meet it any more are shed;
//   - deadlines are met, not just watched (once the cost model has data): a request that can no
//     longer finish before its deadline even alone leaves the queue at once (doomed), a batch
//     only holds requests that finish in time in it, and admit() refuses at submit a request
//     that the queue ahead of it already makes late. Compute is never spent on an answer that
//     would arrive after its deadline, so under overload the server's time goes to requests
//     that still count (goodput), and a refused caller learns it at once. First come, first
//     served stays the order under overload: admission keeps the queue to what the deadlines
//     allow, so what is admitted can be served in order, and newest-first would only trade
//     fairness (and starve the oldest into timing out) for nothing. bench/overload_core.py
//     measures the batcher's goodput under 2x and 4x overload.
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
  // Still before their deadline, but a batch of their own started now would end after it:
  // answer DEADLINE_EXCEEDED without running. Reported with any action.
  std::vector<std::size_t> doomed;
  // kRun: the batch was gathered by a wait for companions (the fixed delay, or auto on a
  // saturated server); its size tells the cost model whether such waits find any
  // (CostModel::observe_companion_wait).
  bool companion_wait = false;
};

// Whether a queued request can still be answered in time: kExpired (its deadline has passed),
// kDoomed (a batch of its own started now would end too late; once the cost is fitted).
enum class Overdue { kNo, kExpired, kDoomed };

// What admit() knows of a request about to be queued and of the queue it would join.
struct AdmissionView {
  std::int64_t rows = 1;
  std::uint64_t input_bytes = 0;
  TimeNs deadline_ns = 0;         // absolute; 0 = none
  std::int64_t rows_ahead = 0;    // queued rows at its priority level or above
  CostEstimate cost;
};

struct Admission {
  enum class Verdict { kAdmit, kExpired, kCannotMeetDeadline };
  Verdict verdict = Verdict::kAdmit;
  // kCannotMeetDeadline: the prediction that refused it (all ns; run_ns includes the delivery
  // margin).
  TimeNs wait_ns = 0;
  TimeNs run_ns = 0;
  TimeNs left_ns = 0;
};

class BatchingPolicy {
 public:
  // Validates the config (CoreError(kInvalidArgument)).
  explicit BatchingPolicy(BatcherConfig config);

  Decision decide(const QueueView& state, TimeNs now) const;

  // Whether a request can still meet its deadline if queued now. kExpired when the deadline has
  // passed; kCannotMeetDeadline when the work queued ahead of it (whole batches of batch_cap()
  // rows, split over the instances) plus its own batch ends after the deadline. The prediction
  // is a lower bound, so a refusal is certain by the cost model: batches already running count
  // as ending now and a wait for companions as zero; requests admitted on that optimism and
  // still late are dropped as doomed before they run.
  Admission admit(const AdmissionView& request, TimeNs now) const;

  // decide()'s own verdict on one queued request's deadline at `now`.
  Overdue overdue(const QueuedRequest& request, const CostEstimate& cost, TimeNs now) const;

  const BatcherConfig& config() const noexcept { return config_; }

 private:
  bool is_preferred(std::int64_t rows) const noexcept;

  BatcherConfig config_;
  std::int64_t cap_rows_;
  std::vector<std::int64_t> preferred_;
  // config_.deadline_min_cost_samples and deadline_delivery_margin_us, in the units used.
  std::size_t min_samples_;
  TimeNs margin_ns_;
};

}  // namespace headrace::batching
