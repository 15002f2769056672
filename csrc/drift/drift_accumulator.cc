#include "drift/drift_accumulator.h"

#include <algorithm>
#include <chrono>
#include <string>
#include <thread>
#include <utility>

#include "common/status.h"

namespace headrace::drift {
namespace {

// Each thread's preferred shard is its slot modulo the shard count. Slots are handed out once per
// thread, so threads that run together prefer different shards.
std::atomic<std::size_t> next_thread_slot{0};

std::size_t thread_slot() {
  thread_local const std::size_t slot = next_thread_slot.fetch_add(1, std::memory_order_relaxed);
  return slot;
}

std::int64_t steady_now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

struct alignas(64) DriftAccumulator::Shard {
  // Whoever holds `busy` owns rows and counts; see the protocol in the header.
  std::atomic<bool> busy{false};
  std::uint64_t rows = 0;
  std::vector<std::uint64_t> counts;
};

DriftAccumulator::DriftAccumulator(BinLayout layout, DriftAccumulatorOptions options,
                                   ClockNs clock)
    : layout_(std::move(layout)), options_(options), clock_(std::move(clock)) {
  if (layout_.feature_count() == 0) {
    throw CoreError(StatusCode::kInvalidArgument, "drift: the layout has no features");
  }
  if (options_.windows_kept == 0) {
    throw CoreError(StatusCode::kInvalidArgument, "drift: windows_kept must be at least 1");
  }
  if (options_.window_ns < 0) {
    throw CoreError(StatusCode::kInvalidArgument, "drift: window_s must not be negative");
  }
  if (options_.shards == 0) {
    const std::size_t threads = std::thread::hardware_concurrency();
    options_.shards = std::clamp<std::size_t>(2 * threads, 4, 256);
  }
  if (options_.shards > 1024) {
    throw CoreError(StatusCode::kInvalidArgument, "drift: at most 1024 shards");
  }
  if (!clock_) clock_ = steady_now_ns;
  shards_.reserve(options_.shards);
  for (std::size_t i = 0; i < options_.shards; ++i) {
    auto shard = std::make_unique<Shard>();
    shard->counts.assign(layout_.total_bins(), 0);
    shards_.push_back(std::move(shard));
  }
  open_start_ns_.store(clock_(), std::memory_order_relaxed);
}

DriftAccumulator::~DriftAccumulator() = default;

DriftAccumulator::Shard& DriftAccumulator::claim_shard() {
  const std::size_t n = shards_.size();
  const std::size_t start = thread_slot() % n;
  for (;;) {
    for (std::size_t i = 0; i < n; ++i) {
      Shard& shard = *shards_[(start + i) % n];
      // Load first so a busy shard costs a shared read, not a write to its line.
      if (!shard.busy.load(std::memory_order_relaxed) &&
          !shard.busy.exchange(true, std::memory_order_acquire)) {
        return shard;
      }
    }
    std::this_thread::yield();
  }
}

template <typename T>
void DriftAccumulator::observe_impl(const T* rows, std::size_t n_rows) {
  // A batch that arrives after the open window's time is up belongs to the next window, so the
  // time trigger is checked before counting; the row trigger after (the batch that fills a window
  // belongs to it).
  if (options_.window_ns > 0) close_if_time_due();
  if (n_rows > 0) {
    Shard& shard = claim_shard();
    layout_.count_rows(rows, n_rows, shard.counts);
    shard.rows += n_rows;
    shard.busy.store(false, std::memory_order_release);
  }
  after_batch(n_rows);
}

void DriftAccumulator::observe(const float* rows, std::size_t n_rows) {
  observe_impl(rows, n_rows);
}

void DriftAccumulator::observe(const double* rows, std::size_t n_rows) {
  observe_impl(rows, n_rows);
}

void DriftAccumulator::import_counts(std::span<const std::uint64_t> counts, std::uint64_t rows) {
  if (counts.size() != layout_.total_bins()) {
    throw CoreError(StatusCode::kInvalidArgument,
                    "drift: imported counts have " + std::to_string(counts.size()) +
                        " bins, this layout has " + std::to_string(layout_.total_bins()));
  }
  if (options_.window_ns > 0) close_if_time_due();
  Shard& shard = claim_shard();
  for (std::size_t i = 0; i < counts.size(); ++i) shard.counts[i] += counts[i];
  shard.rows += rows;
  shard.busy.store(false, std::memory_order_release);
  after_batch(rows);
}

void DriftAccumulator::after_batch(std::uint64_t n_rows) {
  const auto added = static_cast<std::int64_t>(n_rows);
  const std::int64_t open_rows = open_rows_.fetch_add(added, std::memory_order_relaxed) + added;
  if (options_.window_rows == 0 || open_rows < static_cast<std::int64_t>(options_.window_rows)) {
    return;
  }
  // Writers never wait here: if another thread is closing (or reading), that close takes this
  // batch with it or the next batch sees the trigger again.
  std::unique_lock<std::mutex> lock(close_mutex_, std::try_to_lock);
  if (!lock.owns_lock()) return;
  // Re-checked under the lock: another thread may have closed this window meanwhile.
  if (open_rows_.load(std::memory_order_relaxed) >=
      static_cast<std::int64_t>(options_.window_rows)) {
    close_locked(clock_(), "rows");
  }
}

void DriftAccumulator::close_if_time_due() {
  if (clock_() - open_start_ns_.load(std::memory_order_relaxed) < options_.window_ns) return;
  std::unique_lock<std::mutex> lock(close_mutex_, std::try_to_lock);
  if (!lock.owns_lock()) return;
  const std::int64_t now = clock_();
  if (now - open_start_ns_.load(std::memory_order_relaxed) >= options_.window_ns) {
    close_locked(now, "time");
  }
}

bool DriftAccumulator::poll() {
  std::lock_guard<std::mutex> lock(close_mutex_);
  const std::int64_t now = clock_();
  if (options_.window_rows > 0 &&
      open_rows_.load(std::memory_order_relaxed) >=
          static_cast<std::int64_t>(options_.window_rows)) {
    close_locked(now, "rows");
    return true;
  }
  if (options_.window_ns > 0 &&
      now - open_start_ns_.load(std::memory_order_relaxed) >= options_.window_ns) {
    close_locked(now, "time");
    return true;
  }
  return false;
}

std::uint64_t DriftAccumulator::close_window() {
  std::lock_guard<std::mutex> lock(close_mutex_);
  const std::uint64_t index = next_index_;
  close_locked(clock_(), "manual");
  return index;
}

void DriftAccumulator::close_locked(std::int64_t now_ns, const char* closed_by) {
  WindowCounts window;
  window.index = next_index_++;
  window.start_ns = open_start_ns_.load(std::memory_order_relaxed);
  window.end_ns = now_ns;
  window.closed_by = closed_by;
  window.counts.assign(layout_.total_bins(), 0);
  for (auto& shard_ptr : shards_) {
    Shard& shard = *shard_ptr;
    // Wait for the holder's batch to finish (one batch at most); writers meanwhile use others.
    while (shard.busy.exchange(true, std::memory_order_acquire)) std::this_thread::yield();
    for (std::size_t i = 0; i < window.counts.size(); ++i) window.counts[i] += shard.counts[i];
    std::fill(shard.counts.begin(), shard.counts.end(), 0);
    window.rows += shard.rows;
    shard.rows = 0;
    shard.busy.store(false, std::memory_order_release);
  }
  open_rows_.fetch_sub(static_cast<std::int64_t>(window.rows), std::memory_order_relaxed);
  // The next window opens when this one closes.
  open_start_ns_.store(now_ns, std::memory_order_relaxed);
  ring_.push_back(std::move(window));
  if (ring_.size() > options_.windows_kept) ring_.erase(ring_.begin());
}

std::vector<WindowCounts> DriftAccumulator::closed_windows() const {
  std::lock_guard<std::mutex> lock(close_mutex_);
  return ring_;
}

WindowCounts DriftAccumulator::merged(std::size_t windows, bool include_open) const {
  std::lock_guard<std::mutex> lock(close_mutex_);
  WindowCounts total;
  total.closed_by = "merged";
  total.counts.assign(layout_.total_bins(), 0);
  const std::size_t take = std::min(windows, ring_.size());
  total.windows = take;
  if (take > 0) {
    const std::size_t first = ring_.size() - take;
    total.index = ring_.back().index;
    total.start_ns = ring_[first].start_ns;
    total.end_ns = ring_.back().end_ns;
    for (std::size_t w = first; w < ring_.size(); ++w) {
      total.rows += ring_[w].rows;
      for (std::size_t i = 0; i < total.counts.size(); ++i) total.counts[i] += ring_[w].counts[i];
    }
  }
  if (include_open) {
    if (take == 0) total.start_ns = open_start_ns_.load(std::memory_order_relaxed);
    total.index = next_index_;
    total.end_ns = clock_();
    total.windows += 1;
    add_open_locked(total);
  }
  return total;
}

void DriftAccumulator::add_open_locked(WindowCounts& window) const {
  for (const auto& shard_ptr : shards_) {
    Shard& shard = *shard_ptr;
    while (shard.busy.exchange(true, std::memory_order_acquire)) std::this_thread::yield();
    for (std::size_t i = 0; i < window.counts.size(); ++i) window.counts[i] += shard.counts[i];
    window.rows += shard.rows;
    shard.busy.store(false, std::memory_order_release);
  }
}

WindowCounts DriftAccumulator::open_snapshot() const {
  std::lock_guard<std::mutex> lock(close_mutex_);
  WindowCounts window;
  window.index = next_index_;
  window.start_ns = open_start_ns_.load(std::memory_order_relaxed);
  window.end_ns = clock_();
  window.closed_by = "open";
  window.counts.assign(layout_.total_bins(), 0);
  add_open_locked(window);
  return window;
}

std::uint64_t DriftAccumulator::windows_closed() const {
  std::lock_guard<std::mutex> lock(close_mutex_);
  return next_index_;
}

}  // namespace headrace::drift
