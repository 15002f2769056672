// Stress test of DriftAccumulator under ThreadSanitizer: several threads count batches (float and
// double) and import counts while others close windows by rows, by time (a fake clock that a
// thread advances) and by hand, and read windows and snapshots. At the end the closed windows
// must add up exactly to a single-threaded count of the same data: no value lost or counted twice.
#include "check.h"
#include <atomic>
#include <cstdint>
#include <chrono>
#include <cstdio>
#include <limits>
#include <random>
#include <thread>
#include <vector>

#include "drift/bin_layout.h"
#include "drift/drift_accumulator.h"

namespace {

using headrace::drift::BinLayout;
using headrace::drift::DriftAccumulator;
using headrace::drift::DriftAccumulatorOptions;

using headrace::testing::expect;
using headrace::testing::failures;

constexpr std::size_t kNumerical = 6;
constexpr std::size_t kCategorical = 2;
constexpr std::size_t kFeatures = kNumerical + kCategorical;
constexpr std::size_t kWriters = 4;
constexpr std::size_t kBatches = 1500;
constexpr std::size_t kRowsPerBatch = 37;  // does not divide window_rows: windows overshoot

BinLayout make_layout() {
  BinLayout layout;
  for (std::size_t f = 0; f < kNumerical; ++f) {
    std::vector<double> edges;
    for (int e = 0; e < 9 + static_cast<int>(f); ++e) edges.push_back(-2.0 + 0.5 * e);
    layout.add_numerical(edges);
  }
  layout.add_categorical(5);
  layout.add_categorical(0);
  return layout;
}

std::vector<double> make_rows(std::uint32_t seed, std::size_t n_rows) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.5);
  std::uniform_int_distribution<int> code(-1, 7);  // -1 and 5..7 land in "other"
  std::vector<double> rows(n_rows * kFeatures);
  for (std::size_t r = 0; r < n_rows; ++r) {
    for (std::size_t f = 0; f < kFeatures; ++f) {
      double v = f < kNumerical ? normal(rng) : static_cast<double>(code(rng));
      if ((r + f) % 53 == 0) v = std::numeric_limits<double>::quiet_NaN();
      rows[r * kFeatures + f] = v;
    }
  }
  return rows;
}

void run(std::size_t shards) {
  const BinLayout layout = make_layout();
  std::atomic<std::int64_t> fake_now_ns{0};
  DriftAccumulatorOptions options;
  options.window_rows = 1000;
  options.window_ns = 5000;
  options.windows_kept = 1 << 20;  // keep every window, so the totals can be checked
  options.shards = shards;
  DriftAccumulator accumulator(layout, options,
                               [&] { return fake_now_ns.load(std::memory_order_relaxed); });

  std::vector<std::vector<double>> data;
  std::vector<std::uint64_t> expected(layout.total_bins(), 0);
  std::uint64_t expected_rows = 0;
  for (std::size_t w = 0; w < kWriters; ++w) {
    data.push_back(make_rows(static_cast<std::uint32_t>(100 + w), kBatches * kRowsPerBatch));
    // Float writers count the float-rounded values; the reference counts the same.
    std::vector<float> as_float(data.back().begin(), data.back().end());
    if (w % 2 == 1) {
      layout.count_rows(as_float.data(), kBatches * kRowsPerBatch, expected);
    } else {
      layout.count_rows(data.back().data(), kBatches * kRowsPerBatch, expected);
    }
    expected_rows += kBatches * kRowsPerBatch;
  }
  std::vector<std::uint64_t> imported(layout.total_bins(), 0);
  for (std::size_t i = 0; i < imported.size(); ++i) imported[i] = i % 3;
  constexpr std::uint64_t kImports = 40;
  constexpr std::uint64_t kImportRows = 2;
  for (std::size_t i = 0; i < imported.size(); ++i) expected[i] += kImports * imported[i];
  expected_rows += kImports * kImportRows;

  std::atomic<bool> writers_done{false};
  std::vector<std::thread> threads;
  for (std::size_t w = 0; w < kWriters; ++w) {
    threads.emplace_back([&, w] {
      const std::vector<double>& rows = data[w];
      const std::vector<float> as_float(rows.begin(), rows.end());
      for (std::size_t b = 0; b < kBatches; ++b) {
        const std::size_t at = b * kRowsPerBatch * kFeatures;
        if (w % 2 == 1) {
          accumulator.observe(as_float.data() + at, kRowsPerBatch);
        } else {
          accumulator.observe(rows.data() + at, kRowsPerBatch);
        }
        // Spread the writers over time so the reader's clock and closes interleave with them.
        if (b % 10 == 9) std::this_thread::sleep_for(std::chrono::microseconds(50));
      }
    });
  }
  threads.emplace_back([&] {
    for (std::uint64_t i = 0; i < kImports; ++i) accumulator.import_counts(imported, kImportRows);
  });
  std::thread clock_and_readers([&] {
    std::uint64_t reads = 0;
    while (!writers_done.load(std::memory_order_acquire)) {
      fake_now_ns.fetch_add(options.window_ns, std::memory_order_relaxed);
      accumulator.poll();
      if (reads % 7 == 0) accumulator.close_window();
      const auto snapshot = accumulator.open_snapshot();
      const auto merged = accumulator.merged(3, /*include_open=*/reads % 2 == 0);
      expect(snapshot.counts.size() == layout.total_bins(), "snapshot size");
      expect(merged.counts.size() == layout.total_bins(), "merged size");
      ++reads;
      // Readers are rare in a server; pausing lets writers trip the row trigger themselves.
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  });
  for (auto& thread : threads) thread.join();
  writers_done.store(true, std::memory_order_release);
  clock_and_readers.join();
  accumulator.close_window();

  const auto windows = accumulator.closed_windows();
  expect(windows.size() == accumulator.windows_closed(), "every window kept");
  std::vector<std::uint64_t> total(layout.total_bins(), 0);
  std::uint64_t total_rows = 0;
  bool by_rows = false;
  bool by_time = false;
  bool by_hand = false;
  for (std::size_t i = 0; i < windows.size(); ++i) {
    expect(windows[i].index == i, "window indices are consecutive");
    total_rows += windows[i].rows;
    for (std::size_t b = 0; b < total.size(); ++b) total[b] += windows[i].counts[b];
    by_rows |= windows[i].closed_by == "rows";
    by_time |= windows[i].closed_by == "time";
    by_hand |= windows[i].closed_by == "manual";
  }
  expect(total == expected, "windows add up to the single-threaded counts");
  expect(total_rows == expected_rows, "windows add up to every row");
  expect(by_rows, "some window closed by rows");
  expect(by_time, "some window closed by time");
  expect(by_hand, "some window closed by hand");
  const auto merged_all = accumulator.merged(windows.size());
  expect(merged_all.counts == expected, "merged() of all windows equals the totals");
  std::fprintf(stderr, "shards=%zu: %zu windows (closed by rows %d, time %d, hand %d), %llu rows\n",
               shards, windows.size(), by_rows, by_time, by_hand,
               static_cast<unsigned long long>(total_rows));
}

}  // namespace

int main() {
  run(2);  // fewer shards than writers: threads fall over to other shards
  run(16);
  if (failures == 0) std::fprintf(stderr, "drift_stress_test: OK\n");
  return failures == 0 ? 0 : 1;
}
