// What the auto delay knows about a model: an online fit of batch cost `a*rows + b`, an estimate
// of how often requests arrive, whether companion waits find company, and whether the server is
// saturated. Observations come from the Batcher (completed batches, admitted requests, the load
// it sampled); the policy reads a CostEstimate snapshot, so the policy itself stays pure. The
// weights and thresholds are BatcherConfig fields.
//
// Threading: not synchronized. The Batcher mutates and reads it under its own mutex; tests use it
// from one thread.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

#include "batching/batcher_config.h"
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
  // While waits do not pay, one is still tried every probe_every_arrivals arrivals (and the
  // first).
  bool probe_due = true;
  // How busy the server's CPU is (LoadMonitor::busy_fraction), and whether that counts as
  // saturated (BatcherConfig's enter/leave thresholds, with hysteresis); observed per decision.
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
  // model whose cost drifts (warm-up, other load on the machine). A storage size, so a constant.
  static constexpr std::size_t kWindow = 64;
  // Priors used until the fit has data: 1 ms per batch plus 50 us per row, a guess on the slow
  // side. A latency target tighter than that would allow caps
  // them at the target divided by these, so the first requests are not shed on a guess.
  static constexpr double kPriorBatchNs = 1'000'000.0;
  static constexpr double kPriorRowNs = 50'000.0;
  static constexpr double kPriorBatchTargetDivisor = 30.0;
  static constexpr double kPriorRowTargetDivisor = 300.0;

  // Reads latency_target_us and the weights from `config` (validated by the caller).
  explicit CostModel(const BatcherConfig& config);

  void observe_batch(std::int64_t rows, TimeNs compute_ns) noexcept;
  void observe_arrival(TimeNs arrival_ns) noexcept;
  // A batch gathered by a wait for companions ran with `requests` requests.
  void observe_companion_wait(std::size_t requests) noexcept;
  // The server's busy fraction now (LoadMonitor); updates busy_fraction and, with hysteresis,
  // saturated.
  void observe_load(double busy_fraction) noexcept;

  const CostEstimate& estimate() const noexcept { return estimate_; }
  std::size_t samples() const noexcept { return count_; }

 private:
  void refit() noexcept;

  double prior_a_ns_per_row_;
  double prior_b_ns_;
  double arrival_weight_;
  double yield_gain_weight_;
  double yield_loss_weight_;
  std::uint64_t probe_every_arrivals_;
  double saturated_enter_;
  double saturated_leave_;
  std::array<double, kWindow> rows_{};
  std::array<double, kWindow> compute_ns_{};
  std::size_t count_ = 0;  // valid samples, <= kWindow
  std::size_t next_ = 0;   // ring position of the next sample
  std::uint64_t arrivals_ = 0;
  std::uint64_t arrivals_since_probe_ = 0;
  CostEstimate estimate_;
};

}  // namespace headrace::batching
