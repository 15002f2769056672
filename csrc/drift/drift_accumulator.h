// DriftAccumulator: counts every served value of one model version into tumbling windows.
//
// Hot path. observe() claims one per-thread shard, bins the batch into the shard's private counts
// with plain (non-atomic) increments, and releases the shard. A shard is claimed with one atomic
// exchange on its own cache line, per batch, not per value; a thread keeps a preferred shard
// (a thread-local slot index), so without contention it always finds the same shard free and
// that line stays in its own cache. If the preferred shard is busy (another thread, or a window
// close sweeping it), the thread takes the next free one, so writers never wait on each other.
// The only shared write per batch is one relaxed fetch_add on the open window's row counter.
//
// Shard protocol (what makes merging exact and TSan-clean): a shard's counts are read or written
// only by the holder of its `busy` flag, taken with exchange(acquire) and given back with
// store(release). A window close (or a snapshot) takes every shard's flag in turn, adds the
// shard's counts into the window and, for a close, zeroes them. So every batch lands whole in
// exactly one window: the one whose close sweeps its shard after the batch released it.
//
// Windows. A window closes when its rows reach window_rows, or when window_s has passed since it
// opened (0 turns either trigger off), whichever comes first. Windows are closed at batch
// granularity: a batch is never split, so a window closed by rows holds at least window_rows
// rows (exactly window_rows when batches divide it and one thread observes). The thread whose
// batch trips a trigger does the close (an O(shards x total_bins) sweep): for rows after counting
// its batch (which fills the window), for time before counting it (it arrived after the window
// ended). poll() closes a window that is due when no traffic arrives; an idle stretch of several
// window_s closes one (empty) window per poll, starting when the previous one closed. Closed
// windows are kept in a ring of the last windows_kept. Because writers only try the close lock,
// a window can overshoot window_rows while the closing thread is descheduled (more busy threads
// than cores): those rows are not lost, the window is just larger.
//
// Ownership/threading: observe(), import_counts() and poll() are safe from any number of threads
// at once. close_window(), closed_windows(), merged() and open_snapshot() are safe from any
// thread too; they take close_mutex_, which writers never wait on (they only try_lock it).
// The clock is called from observing threads and must be thread-safe.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "drift/bin_layout.h"

namespace headrace::drift {

// Monotonic nanoseconds; tests inject a fake one.
using ClockNs = std::function<std::int64_t()>;

struct WindowCounts {
  std::uint64_t index = 0;  // 0 for the first window of this accumulator, then 1, 2, ...
  std::int64_t start_ns = 0;
  std::int64_t end_ns = 0;
  std::uint64_t rows = 0;
  std::uint64_t windows = 1;          // how many windows these counts cover (merged(): 0..n)
  std::string closed_by;             // "rows", "time", "manual", "merged" or "open"
  std::vector<std::uint64_t> counts;  // BinLayout::total_bins() entries
};

struct DriftAccumulatorOptions {
  std::uint64_t window_rows = 0;  // 0: no row trigger
  std::int64_t window_ns = 0;     // 0: no time trigger
  std::size_t windows_kept = 16;
  std::size_t shards = 0;  // 0: twice the hardware threads, at least 4
};

class DriftAccumulator {
 public:
  DriftAccumulator(BinLayout layout, DriftAccumulatorOptions options, ClockNs clock);
  ~DriftAccumulator();
  DriftAccumulator(const DriftAccumulator&) = delete;
  DriftAccumulator& operator=(const DriftAccumulator&) = delete;

  const BinLayout& layout() const noexcept { return layout_; }
  const DriftAccumulatorOptions& options() const noexcept { return options_; }

  // Counts a row-major, contiguous [n_rows, layout().feature_count()] batch.
  void observe(const float* rows, std::size_t n_rows);
  void observe(const double* rows, std::size_t n_rows);
  // Adds counts exported by another accumulator with the same layout (another replica or
  // process) into the open window, as if its rows had been observed here.
  void import_counts(std::span<const std::uint64_t> counts, std::uint64_t rows);

  // Closes the open window if its time is up; returns whether it closed one.
  bool poll();
  // Closes the open window now (even when empty); returns its index.
  std::uint64_t close_window();

  // Closed windows, oldest first (at most windows_kept).
  std::vector<WindowCounts> closed_windows() const;
  // Exact sum of the last `windows` closed windows (fewer if fewer are kept); index is that of the
  // newest, start_ns of the oldest, closed_by "merged", and `windows` says how many it took.
  // With include_open, the open window's counts so far are added too (taken under the same lock,
  // so no window can close in between); index is then the open window's, end_ns now.
  WindowCounts merged(std::size_t windows, bool include_open = false) const;
  // Counts of the open window so far (not closed, not zeroed).
  WindowCounts open_snapshot() const;
  // Total windows closed since construction.
  std::uint64_t windows_closed() const;

 private:
  struct Shard;
  template <typename T>
  void observe_impl(const T* rows, std::size_t n_rows);
  Shard& claim_shard();
  void after_batch(std::uint64_t n_rows);
  void close_if_time_due();
  // Both require close_mutex_ held.
  void close_locked(std::int64_t now_ns, const char* closed_by);
  void add_open_locked(WindowCounts& window) const;

  BinLayout layout_;
  DriftAccumulatorOptions options_;
  ClockNs clock_;
  std::vector<std::unique_ptr<Shard>> shards_;

  // Rows counted since the last close swept them; writers add, the close subtracts what it swept,
  // so it may dip below zero for a moment while a batch that was swept adds its rows.
  alignas(64) std::atomic<std::int64_t> open_rows_{0};
  alignas(64) std::atomic<std::int64_t> open_start_ns_{0};

  mutable std::mutex close_mutex_;
  std::uint64_t next_index_ = 0;         // guarded by close_mutex_
  std::vector<WindowCounts> ring_;       // guarded by close_mutex_; oldest first
};

}  // namespace headrace::drift
