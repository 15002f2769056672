// Assertions shared by the tests/cpp executables. A failed expectation is printed (the first
// kMaxPrinted) and counted rather than aborting, so one run reports every broken case; main()
// returns failures == 0 ? 0 : 1. Safe from any thread: stress tests check from their workers.
#pragma once

#include <atomic>
#include <cstdio>
#include <string>

namespace headrace::testing {

inline std::atomic<int> failures{0};
inline constexpr int kMaxPrinted = 20;

inline void expect(bool condition, const char* what) {
  if (!condition && failures.fetch_add(1) < kMaxPrinted) {
    std::fprintf(stderr, "FAILED: %s\n", what);
  }
}

inline void expect(bool condition, const std::string& what) { expect(condition, what.c_str()); }

}  // namespace headrace::testing
