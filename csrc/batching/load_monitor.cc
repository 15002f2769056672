#include "batching/load_monitor.h"

#include <sched.h>

#include <algorithm>

namespace headrace::batching {
namespace {

TimeNs read_clock(clockid_t clock, bool* ok) noexcept {
  timespec now{};
  *ok = clock_gettime(clock, &now) == 0;
  return static_cast<TimeNs>(now.tv_sec) * 1'000'000'000 + now.tv_nsec;
}

int usable_cpus() noexcept {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return 1;
  return std::max(1, CPU_COUNT(&set));
}

}  // namespace

LoadMonitor& LoadMonitor::process() {
  // Never destroyed: batcher threads may still ask while static destructors run at exit.
  static LoadMonitor* const monitor = new LoadMonitor();
  return *monitor;
}

void LoadMonitor::note_intake_thread() noexcept {
  const pthread_t self = pthread_self();
  if (has_intake_.load(std::memory_order_acquire) &&
      pthread_equal(intake_thread_.load(std::memory_order_relaxed), self)) {
    return;
  }
  std::lock_guard<std::mutex> lock(mutex_);
  clockid_t clock{};
  intake_clock_valid_ = pthread_getcpuclockid(self, &clock) == 0;
  intake_clock_ = clock;
  intake_changed_ = true;
  intake_thread_.store(self, std::memory_order_relaxed);
  has_intake_.store(true, std::memory_order_release);
}

double LoadMonitor::busy_fraction(TimeNs now) noexcept {
  std::lock_guard<std::mutex> lock(mutex_);
  sample_locked(now);
  return busy_;
}

void LoadMonitor::sample_locked(TimeNs now) noexcept {
  if (last_sample_ns_ != 0 && now - last_sample_ns_ < kSampleNs) return;
  bool ok = false;
  const TimeNs process_cpu = read_clock(CLOCK_PROCESS_CPUTIME_ID, &ok);
  if (!ok) return;
  TimeNs intake_cpu = -1;
  if (intake_clock_valid_) {
    bool intake_ok = false;
    intake_cpu = read_clock(intake_clock_, &intake_ok);
    if (!intake_ok) {
      intake_cpu = -1;  // the thread is gone; wait for the next drainer to register
      intake_clock_valid_ = false;
    }
  }
  if (last_sample_ns_ != 0) {
    const auto wall = static_cast<double>(now - last_sample_ns_);
    double sample =
        static_cast<double>(process_cpu - last_process_cpu_ns_) / (wall * usable_cpus());
    if (intake_cpu >= 0 && last_intake_cpu_ns_ >= 0 && !intake_changed_) {
      sample = std::max(sample, static_cast<double>(intake_cpu - last_intake_cpu_ns_) / wall);
    }
    sample = std::clamp(sample, 0.0, 1.0);
    busy_ = (1.0 - kWeight) * busy_ + kWeight * sample;
  }
  intake_changed_ = false;
  last_sample_ns_ = now;
  last_process_cpu_ns_ = process_cpu;
  last_intake_cpu_ns_ = intake_cpu;
}

}  // namespace headrace::batching
