// The core's one clock: a steady clock in nanoseconds. Deadlines that requests carry
// (deadline_ns) are absolute points on it; headrace._core.monotonic_ns() reads the same clock, so
// Python computes deadlines that the scheduler compares without conversion.
//
// Only the scheduler and the worker threads read it; the policy never does (it is handed `now`),
// which is what lets tests drive the policy with a fake clock.
#pragma once

#include <chrono>
#include <cstdint>

namespace headrace {

// Nanoseconds on the steady clock. Signed so that differences (ages, slack) need no casts.
using TimeNs = std::int64_t;

inline TimeNs monotonic_ns() noexcept {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace headrace
