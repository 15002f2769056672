// What the auto delay knows about a model: an online fit of batch cost `a*rows + b` (and, for the
// cost of one request of any width, `a*bytes + b` over the batches' input bytes), an estimate of
// how often requests arrive, whether companion waits find company, and whether the server is
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

  // The same cost fitted over input bytes instead of rows: rows alone cannot tell a request of
  // one narrow row from one of a single huge row.
  double a_ns_per_byte = 0.0;
  double b_bytes_ns = 0.0;
  // Batches the fits are made of (<= CostModel::kWindow); 0 means both are priors (guesses).
  std::size_t samples = 0;

  // Predicted run time of a batch of `rows` rows.
  double batch_ns(std::int64_t rows) const noexcept {
    return a_ns_per_row * static_cast<double>(rows) + b_ns;
  }
  // Deadline decisions (dropping, refusing) must be sure a request is late, so they take the
  // cheaper reading when the fit cannot tell fixed cost from per-row cost: when every sampled
  // batch had the same rows, the cost may as well be proportional to rows (mean cost over mean
  // rows, a row at a time) as fixed (the prior slope, the rest in the intercept).
  // And a batch never takes longer than the quickest sampled batch of more rows: a line fitted
  // to batches timed while the CPU was contended can put a small batch above a large one (the
  // small ones ran while the server was busiest), and deadline decisions taken on that would
  // refuse every request while no batch runs to correct it.
  bool rows_spread = false;  // the samples hold batches of different sizes
  double proportional_ns_per_row = 0.0;
  std::int64_t largest_rows = 0;       // the most rows of a sampled batch
  double largest_quickest_ns = 0.0;    // the quickest sampled batch of largest_rows rows
  double least_batch_ns(std::int64_t rows) const noexcept {
    double least = batch_ns(rows);
    if (samples == 0) return least;
    if (!rows_spread) {
      const double proportional = proportional_ns_per_row * static_cast<double>(rows);
      if (proportional < least) least = proportional;
    }
    if (rows <= largest_rows && largest_quickest_ns < least) least = largest_quickest_ns;
    return least;
  }
  // Predicted run time of a batch of `rows` rows holding `bytes` input bytes: the larger of the
  // two fits, so that neither a wide request nor a long one passes for cheap.
  double batch_ns(std::int64_t rows, std::uint64_t bytes) const noexcept {
    const double by_bytes = bytes_batch_ns(bytes);
    const double by_rows = batch_ns(rows);
    return by_bytes > by_rows ? by_bytes : by_rows;
  }
  // The bytes fit alone.
  double bytes_batch_ns(std::uint64_t bytes) const noexcept {
    return a_ns_per_byte * static_cast<double>(bytes) + b_bytes_ns;
  }
  // The bytes fit for deadline decisions: never more than the quickest sampled batch of more
  // bytes (as least_batch_ns), and nothing for no bytes.
  std::uint64_t largest_bytes = 0;            // the most input bytes of a sampled batch
  double largest_bytes_quickest_ns = 0.0;     // the quickest sampled batch of that many bytes
  double least_bytes_batch_ns(std::uint64_t bytes) const noexcept {
    if (bytes == 0) return 0.0;
    const double fitted = bytes_batch_ns(bytes);
    if (samples > 0 && bytes <= largest_bytes && largest_bytes_quickest_ns < fitted) {
      return largest_bytes_quickest_ns;
    }
    return fitted;
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

  // A batch of `rows` rows and `input_bytes` bytes of inputs ran in compute_ns. Batches without
  // input bytes (every tensor empty) say nothing about cost and are not kept.
  void observe_batch(std::int64_t rows, std::uint64_t input_bytes, TimeNs compute_ns) noexcept;
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
  std::array<double, kWindow> bytes_{};
  std::array<double, kWindow> compute_ns_{};
  std::size_t count_ = 0;  // valid samples, <= kWindow
  std::size_t next_ = 0;   // ring position of the next sample
  std::uint64_t arrivals_ = 0;
  std::uint64_t arrivals_since_probe_ = 0;
  CostEstimate estimate_;
};

}  // namespace headrace::batching
