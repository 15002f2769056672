// Is the server out of CPU? The auto batching delay asks this: on a saturated server every batch
// costs the shared CPU its fixed overhead (worker and event-loop wake-ups, the runner's fixed
// cost), so waiting for companions pays; on a server with CPU to spare it only adds latency.
//
// busy_fraction() is the busier of two bottlenecks, each as a fraction of what it can use:
//   - the process's CPU time over the CPUs it may run on (sched_getaffinity), and
//   - the intake thread's CPU time: the thread that drains completions (the asyncio event loop
//     that also decodes every request), which is one thread and saturates alone.
// Sampled at most every kSampleNs and smoothed, so calling it per decision costs a time check.
// Whether that counts as saturated is each Batcher's call (BatcherConfig's thresholds,
// CostModel::observe_load).
//
// Threading: one process-wide instance; every method is thread-safe.
#pragma once

#include <pthread.h>
#include <time.h>

#include <atomic>
#include <mutex>

#include "common/clock.h"

namespace headrace::batching {

class LoadMonitor {
 public:
  // How the measurement is taken, process-wide (not per batcher): CPU clocks read at most every
  // kSampleNs (shorter reacts sooner, and the readings get noisier), averaged with kWeight on the
  // newest sample (higher follows load changes sooner).
  static constexpr TimeNs kSampleNs = 10'000'000;
  static constexpr double kWeight = 0.3;

  static LoadMonitor& process();

  // The smoothed busy fraction in 0..1, sampled anew when the last sample is kSampleNs old.
  double busy_fraction(TimeNs now) noexcept;

  // Records the calling thread as the intake thread (called by CompletionQueue::drain).
  void note_intake_thread() noexcept;

 private:
  LoadMonitor() = default;
  void sample_locked(TimeNs now) noexcept;

  std::atomic<pthread_t> intake_thread_{};
  std::atomic<bool> has_intake_{false};
  std::mutex mutex_;
  clockid_t intake_clock_{};
  bool intake_clock_valid_ = false;
  bool intake_changed_ = false;
  TimeNs last_sample_ns_ = 0;
  TimeNs last_process_cpu_ns_ = 0;
  TimeNs last_intake_cpu_ns_ = -1;
  double busy_ = 0.0;
};

}  // namespace headrace::batching
