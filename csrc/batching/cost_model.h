// What the auto delay knows about a model: an online fit of batch cost `a*rows + b` and an
// estimate of how often requests arrive. Observations come from the Batcher (completed batches,
// admitted requests); the policy reads a CostEstimate snapshot, so the policy itself stays pure.
//
// Threading: not synchronized. The Batcher mutates and reads it under its own mutex; tests use it
// from one thread.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

#include "common/clock.h"

namespace headrace::batching {

// A snapshot the policy decides with. All times in ns.
struct CostEstimate {
  double a_ns_per_row = 0.0;
  double b_ns = 0.0;
  // Mean time between arrivals (EWMA); < 0 while fewer than two arrivals were seen.
  double arrival_interval_ns = -1.0;
  TimeNs last_arrival_ns = 0;
  // Whether waiting for companions finds any: an average over the batches formed after such a
  // wait (1 = it had company, 0 = it ran alone). One closed-loop caller sends its next request
  // only after its answer, so its waits find nobody; 32 callers' waits do. From the server's side
  // both can look alike (the process is busy either way, and gRPC holds the other callers'
  // requests until the event loop takes them in), so the policy finds out by trying.
  double wait_yield = 0.0;
  // While waits do not pay, one is still tried every kProbeArrivals arrivals (and the first).
  bool probe_due = true;
  // How busy the server's CPU is (LoadMonitor::busy_fraction), and whether that counts as
  // saturated (LoadMonitor::saturated, with hysteresis); set by the Batcher per decision.
  double busy_fraction = 0.0;
  bool saturated = false;

  // Predicted run time of a batch of `rows` rows.
  double batch_ns(std::int64_t rows) const noexcept {
    return a_ns_per_row * static_cast<double>(rows) + b_ns;
  }
};

class CostModel {
 public:
  // Samples kept for the least-squares fit: enough to average out noise, few enough to follow a
  // model whose cost drifts (warm-up, other load on the machine).
  static constexpr std::size_t kWindow = 64;
  // Weight of the newest inter-arrival time in the EWMA.
  static constexpr double kArrivalWeight = 0.2;
  // Weight of the newest saturated-wait outcome. Asymmetric: one success switches waiting on;
  // switching it off takes ~7 lone batches in a row, because under many callers the intake is
  // bursty (the loop answers a whole batch before it takes new requests in) and a wait now and
  // then finds nobody.
  static constexpr double kYieldGainWeight = 0.5;
  static constexpr double kYieldLossWeight = 0.1;
  // Arrivals between two tries while waiting does not pay: a lone caller pays the try's wait on
  // 1 request in this many (under the 1% a p99 would see).
  static constexpr std::uint64_t kProbeArrivals = 256;

  // Priors used until the fit has data: 1 ms per batch plus 50 us per row, scaled down when a
  // latency target is tighter than that would allow (so the first requests are not shed on a
  // guess).
  explicit CostModel(std::int64_t latency_target_us = 0);

  void observe_batch(std::int64_t rows, TimeNs compute_ns) noexcept;
  void observe_arrival(TimeNs arrival_ns) noexcept;
  // A batch gathered by a wait for companions ran with `requests` requests.
  void observe_companion_wait(std::size_t requests) noexcept;

  const CostEstimate& estimate() const noexcept { return estimate_; }
  std::size_t samples() const noexcept { return count_; }

 private:
  void refit() noexcept;

  double prior_a_ns_per_row_;
  double prior_b_ns_;
  std::array<double, kWindow> rows_{};
  std::array<double, kWindow> compute_ns_{};
  std::size_t count_ = 0;  // valid samples, <= kWindow
  std::size_t next_ = 0;   // ring position of the next sample
  std::uint64_t arrivals_ = 0;
  std::uint64_t arrivals_since_probe_ = 0;
  CostEstimate estimate_;
};

}  // namespace headrace::batching
