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
  min_samples_ = static_cast<std::size_t>(config_.deadline_min_cost_samples);
  margin_ns_ = config_.deadline_delivery_margin_us * 1000;
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
  const bool predict = cost.samples >= min_samples_;
  // Time from starting a batch of `rows` to its answers leaving the server: at the least (the
  // cost's lower bound), which dropping a request as doomed must be sure of; and typically (the
  // fitted cost), which deciding what a batch holds goes by -- a member kept on the lower
  // bound's optimism would most likely be answered late, its share of the batch wasted, while
  // one left out still runs in a later batch or is dropped once it is certainly late.
  const auto answered_after = [&cost, margin_ns = margin_ns_](std::int64_t rows) {
    return to_ns(cost.least_batch_ns(rows)) + margin_ns;
  };
  const auto typically_answered_after = [&cost, margin_ns = margin_ns_](std::int64_t rows) {
    return to_ns(cost.batch_ns(rows)) + margin_ns;
  };
  const auto has_deadline_before = [](const QueuedRequest& request, TimeNs t) {
    return request.deadline_ns != 0 && request.deadline_ns < t;
  };

  std::vector<std::size_t> order(requests.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  const auto by_level = [&](std::size_t x, std::size_t y) {
    return requests[x].level < requests[y].level;
  };
  if (!std::is_sorted(order.begin(), order.end(), by_level)) {
    std::stable_sort(order.begin(), order.end(), by_level);
  }

  // Pass 1: drop what has expired, is doomed, or can no longer meet the latency target; note the
  // earliest time one of the others will (so the scheduler wakes for it even with every
  // instance busy).
  TimeNs wake = Decision::kNever;
  std::vector<std::size_t> live;
  live.reserve(order.size());
  TimeNs oldest_ns = Decision::kNever;
  for (const std::size_t i : order) {
    const QueuedRequest& request = requests[i];
    const Overdue late = overdue(request, cost, now);
    if (late == Overdue::kExpired) {
      decision.expired.push_back(i);
      continue;
    }
    if (late == Overdue::kDoomed) {
      decision.doomed.push_back(i);
      continue;
    }
    if (predict && request.deadline_ns != 0) {
      wake = std::min(wake, request.deadline_ns - answered_after(request.rows) + 1);
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

  // Deadlines: every member must finish in time in the batch it runs in. When the FIFO batch
  // would make some member late, two choices: shrink it to the prefix that is on time (the
  // urgent head first), or keep the members that are on time at this size and refill with later
  // ones that are too. The one that serves more requests now wins, ties going to the prefix:
  // on a quiet server that runs an urgent head at once; under overload it keeps batches full
  // instead of shrinking them for requests about to be late, which would lower throughput just
  // when every request is nearing its deadline (the collapse of earliest-deadline-first).
  if (predict) {
    const TimeNs finish = now + typically_answered_after(pending_rows);
    std::size_t on_time_prefix = 0;
    std::int64_t prefix_rows = 0;
    TimeNs prefix_deadline = Decision::kNever;
    for (const std::size_t i : batch) {
      prefix_rows += requests[i].rows;
      if (requests[i].deadline_ns != 0) {
        prefix_deadline = std::min(prefix_deadline, requests[i].deadline_ns);
      }
      if (now + typically_answered_after(prefix_rows) > prefix_deadline) break;
      ++on_time_prefix;
    }
    if (on_time_prefix < batch.size()) {
      std::vector<std::size_t> kept;
      std::int64_t kept_rows = 0;
      for (const std::size_t i : batch) {
        if (has_deadline_before(requests[i], finish)) continue;
        kept.push_back(i);
        kept_rows += requests[i].rows;
      }
      // Refill from the rest of the group: finish only moves earlier as long as the rows stay
      // within what it was computed for.
      bool past_batch = false;
      for (const std::size_t i : live) {
        if (!past_batch) {
          past_batch = i == batch.back();
          continue;
        }
        const QueuedRequest& request = requests[i];
        if (request.shape_key != group || has_deadline_before(request, finish)) continue;
        if (kept_rows + request.rows > pending_rows) continue;
        kept.push_back(i);
        kept_rows += request.rows;
      }
      if (kept.size() > on_time_prefix) {
        batch = std::move(kept);
        pending_rows = kept_rows;
      } else {
        // The head is not doomed (overdue() found it could still make it): keep it at least.
        batch.resize(std::max<std::size_t>(on_time_prefix, 1));
        pending_rows = 0;
        for (const std::size_t i : batch) pending_rows += requests[i].rows;
      }
      full = true;  // a member's deadline decided the batch: send it now
      preferred_prefix = 0;
      std::int64_t rows = 0;
      for (std::size_t k = 0; k < batch.size(); ++k) {
        rows += requests[batch[k]].rows;
        if (is_preferred(rows)) preferred_prefix = k + 1;
      }
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
  if (predict) {
    // A wait for companions ends in time for the most urgent member.
    for (const std::size_t i : batch) {
      if (requests[i].deadline_ns == 0) continue;
      send_by =
          std::min(send_by, requests[i].deadline_ns - typically_answered_after(pending_rows));
    }
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

Overdue BatchingPolicy::overdue(const QueuedRequest& request, const CostEstimate& cost,
                                TimeNs now) const {
  if (request.deadline_ns == 0) return Overdue::kNo;
  if (request.deadline_ns <= now) return Overdue::kExpired;
  if (cost.samples < min_samples_) return Overdue::kNo;
  // The earliest it could be answered is after a batch of its own started now: if even that is
  // late, running it is wasted.
  const TimeNs alone_ns = to_ns(cost.least_batch_ns(request.rows)) + margin_ns_;
  return now > request.deadline_ns - alone_ns ? Overdue::kDoomed : Overdue::kNo;
}

Admission BatchingPolicy::admit(const AdmissionView& request, TimeNs now) const {
  Admission admission;
  if (request.deadline_ns == 0) return admission;
  if (request.deadline_ns <= now) {
    admission.verdict = Admission::Verdict::kExpired;
    return admission;
  }
  const CostEstimate& cost = request.cost;
  if (cost.samples < min_samples_) return admission;
  // Whole batches ahead of its own, run `instances` at a time; the rows that do not fill a
  // whole batch share its own.
  const std::int64_t rows_ahead = std::max<std::int64_t>(request.rows_ahead, 0);
  const std::int64_t waves = rows_ahead / cap_rows_ / config_.instances;
  const std::int64_t own_batch_rows =
      std::max(request.rows, std::min(cap_rows_, rows_ahead % cap_rows_ + request.rows));
  const double wait_ns = static_cast<double>(waves) * cost.least_batch_ns(cap_rows_);
  // Its own size counts through both fits: a request of one huge row is as slow as its bytes.
  const double run_ns = std::max(cost.least_batch_ns(own_batch_rows),
                                 cost.least_bytes_batch_ns(request.input_bytes)) +
                        static_cast<double>(margin_ns_);
  const TimeNs left_ns = request.deadline_ns - now;
  if (wait_ns + run_ns > static_cast<double>(left_ns)) {
    admission.verdict = Admission::Verdict::kCannotMeetDeadline;
    admission.wait_ns = to_ns(wait_ns);
    admission.run_ns = to_ns(run_ns);
    admission.left_ns = left_ns;
  }
  return admission;
}

}  // namespace headrace::batching
