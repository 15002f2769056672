#include "batching/batching_policy.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <utility>

namespace headrace::batching {
namespace {

TimeNs to_ns(double value) noexcept {
  if (!(value < 9.0e18)) return Decision::kNever;
  return static_cast<TimeNs>(std::ceil(value));
}

}  // namespace

BatchingPolicy::BatchingPolicy(BatcherConfig config) : config_(std::move(config)) {
  config_.validate();
  cap_rows_ = config_.batch_cap();
  preferred_ = config_.preferred_batch_sizes;
  if (preferred_.empty()) preferred_.push_back(config_.max_batch_size);
  std::sort(preferred_.begin(), preferred_.end());
}

bool BatchingPolicy::is_preferred(std::int64_t rows) const noexcept {
  return std::binary_search(preferred_.begin(), preferred_.end(), rows);
}

Decision BatchingPolicy::decide(const QueueView& state, TimeNs now) const {
  Decision decision;
  const auto& requests = state.requests;
  const CostEstimate& cost = state.cost;
  const TimeNs target_ns = config_.latency_target_us * 1000;

  std::vector<std::size_t> order(requests.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  const auto by_level = [&](std::size_t x, std::size_t y) {
    return requests[x].level < requests[y].level;
  };
  if (!std::is_sorted(order.begin(), order.end(), by_level)) {
    std::stable_sort(order.begin(), order.end(), by_level);
  }

  // Pass 1: drop what has expired or can no longer meet the latency target; note the earliest
  // time one of the others will (so the scheduler wakes for it even with every instance busy).
  TimeNs wake = Decision::kNever;
  std::vector<std::size_t> live;
  live.reserve(order.size());
  TimeNs oldest_ns = Decision::kNever;
  for (const std::size_t i : order) {
    const QueuedRequest& request = requests[i];
    if (request.deadline_ns != 0 && request.deadline_ns <= now) {
      decision.expired.push_back(i);
      continue;
    }
    if (target_ns > 0) {
      // The earliest it could finish is now, alone: if even that is late, running it is wasted.
      const TimeNs alone_ns = to_ns(cost.batch_ns(request.rows));
      const TimeNs shed_after = request.enqueue_ns + target_ns - alone_ns;
      if (now > shed_after) {
        decision.shed.push_back(i);
        continue;
      }
      wake = std::min(wake, shed_after + 1);
    }
    if (request.deadline_ns != 0) wake = std::min(wake, request.deadline_ns);
    oldest_ns = std::min(oldest_ns, request.enqueue_ns);
    live.push_back(i);
  }

  const auto wait_or_idle = [&](TimeNs until) {
    decision.action = until == Decision::kNever ? Decision::Action::kIdle : Decision::Action::kWait;
    decision.wait_until_ns = until;
  };
  if (live.empty()) {
    wait_or_idle(Decision::kNever);
    return decision;
  }
  // A batch is formed only when an instance can take it: while all are busy the queue grows, so
  // batches get bigger under load by themselves (work-conserving, as Triton).
  if (state.free_instances <= 0) {
    wait_or_idle(wake);
    return decision;
  }

  // Pass 2: walk the head's shape group in priority order, adding whole requests.
  const std::uint64_t group = requests[live.front()].shape_key;
  std::vector<std::size_t> batch;
  std::int64_t pending_rows = 0;
  std::size_t preferred_prefix = 0;
  bool full = false;
  for (const std::size_t i : live) {
    const QueuedRequest& request = requests[i];
    if (request.shape_key != group) continue;
    if (!batch.empty() && pending_rows + request.rows > cap_rows_) {
      full = true;  // FIFO within the group: a later, smaller request does not jump the queue.
      break;
    }
    batch.push_back(i);
    pending_rows += request.rows;
    if (is_preferred(pending_rows)) preferred_prefix = batch.size();
    if (pending_rows >= cap_rows_) {
      full = true;  // also the oversize request, alone
      break;
    }
  }

  // Latency target: the oldest member sets how big the batch may be. Trim the tail until the
  // batch can still finish in time; the trimmed requests run in a later batch.
  TimeNs send_by = Decision::kNever;
  if (target_ns > 0) {
    const auto batch_deadline = [&] {
      TimeNs earliest = Decision::kNever;
      for (const std::size_t i : batch) earliest = std::min(earliest, requests[i].enqueue_ns + target_ns);
      return earliest;
    };
    bool trimmed = false;
    while (batch.size() > 1 && now + to_ns(cost.batch_ns(pending_rows)) > batch_deadline()) {
      pending_rows -= requests[batch.back()].rows;
      batch.pop_back();
      trimmed = true;
    }
    if (trimmed) {
      full = true;
      preferred_prefix = std::min(preferred_prefix, batch.size());
    }
    send_by = batch_deadline() - to_ns(cost.batch_ns(pending_rows));
  }

  // Is there still a reason to wait for the batch to fill?
  bool delay_over = state.flush || now >= send_by;
  TimeNs fill_until = Decision::kNever;
  if (!delay_over) {
    if (config_.auto_delay) {
      // Wait only while it is expected to pay. Two regimes:
      //  - Saturated (the CPU, or the event loop that takes requests in, is busy): every batch
      //    costs the shared CPU its fixed overhead (wake-ups of worker and loop, the runner's
      //    fixed cost), which comes straight out of throughput, so a wait that gathers
      //    companions pays. Whether one will (many callers, or a single closed-loop one whose
      //    next request only follows its answer) is learnt from the outcome of such waits
      //    (wait_yield), retried now and then (probe_due). A saturated wait lasts until about
      //    saturated_batch_requests arrival intervals from the oldest request, at most
      //    saturated_max_wait_us (a quarter of the latency target if tighter), and ends early
      //    when arrivals pause for lull_arrival_intervals (every caller may be waiting on it).
      //  - Otherwise a companion only shares the fixed cost b, so waiting up to b for one is
      //    worth it when the arrival rate predicts one within that time.
      // No arrival history or a slow rate means a lone request runs at once.
      const double interval = cost.arrival_interval_ns;
      const bool saturated = interval >= 0.0 && cost.saturated &&
                             (cost.wait_yield >= config_.keep_waiting_yield || cost.probe_due);
      if (saturated) {
        TimeNs cap_ns = config_.saturated_max_wait_us * 1000;
        if (target_ns > 0) cap_ns = std::min(cap_ns, target_ns / 4);
        const TimeNs fill_ns =
            std::min(cap_ns, to_ns(interval * config_.saturated_batch_requests));
        const TimeNs lull_end = std::max(oldest_ns, cost.last_arrival_ns) +
                                to_ns(config_.lull_arrival_intervals * interval);
        const TimeNs limit = std::min(oldest_ns + fill_ns, lull_end);
        decision.companion_wait = true;
        if (now >= limit) {
          delay_over = true;
        } else {
          fill_until = limit;
        }
      } else {
        const TimeNs limit = oldest_ns + to_ns(cost.b_ns);
        if (interval < 0.0 || now >= limit) {
          delay_over = true;
        } else {
          const TimeNs expected_next =
              std::max(now, cost.last_arrival_ns + to_ns(interval));
          if (expected_next > limit) {
            delay_over = true;
          } else {
            fill_until = limit;
          }
        }
      }
    } else {
      // Triton's fixed delay, with its gap fixed: the delay is spent only while such waits find
      // companions (or on a periodic try). One closed-loop caller's request would otherwise wait
      // the whole delay every time for a companion that cannot come.
      const TimeNs limit = oldest_ns + config_.max_queue_delay_us * 1000;
      const bool waits_pay = cost.wait_yield >= config_.keep_waiting_yield || cost.probe_due;
      if (config_.max_queue_delay_us == 0 || now >= limit || !waits_pay) {
        delay_over = true;
      } else {
        fill_until = limit;
      }
      decision.companion_wait = config_.max_queue_delay_us > 0 && waits_pay;
    }
  }

  // As Triton: a preferred size reached is sent at once (and trimmed to, while the delay runs);
  // a full batch is sent; once the delay is over, whatever is pending is sent.
  if (preferred_prefix > 0 && !delay_over) {
    batch.resize(preferred_prefix);
    full = true;
  }
  if (full || delay_over) {
    decision.action = Decision::Action::kRun;
    decision.run = std::move(batch);
    return decision;
  }
  wait_or_idle(std::min({wake, fill_until, send_by}));
  return decision;
}

}  // namespace headrace::batching
