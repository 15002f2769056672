#include "batching/completion_queue.h"

#include "batching/load_monitor.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <iterator>
#include <utility>

namespace headrace::batching {

CompletionQueue::CompletionQueue() {
  fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (fd_ < 0) {
    throw CoreError(StatusCode::kInternal,
                    std::string("completion queue: eventfd failed: ") + std::strerror(errno));
  }
}

CompletionQueue::~CompletionQueue() {
  if (fd_ >= 0) ::close(fd_);
}

bool CompletionQueue::mark_signalled_locked() noexcept {
  if (signalled_) return false;  // the loop has not drained since the last signal: one is enough
  signalled_ = true;
  return true;
}

void CompletionQueue::signal(bool write_fd) {
  // Outside the mutex: on a shared core the woken loop would otherwise run, block on the mutex
  // still held here, and hand the CPU straight back (two extra context switches per batch).
  ready_.notify_all();
  if (!write_fd) return;
  const std::uint64_t one = 1;
  // A full counter (EAGAIN) still leaves the fd readable, which is all the loop needs. A drain
  // that ran between the unlock and this write leaves one spurious wake-up: the loop then drains
  // nothing, and the nonblocking read keeps that harmless.
  [[maybe_unused]] const ssize_t written = ::write(fd_, &one, sizeof(one));
}

void CompletionQueue::push(std::vector<Completion>& completions) {
  if (completions.empty()) return;
  bool write_fd = false;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    pending_.insert(pending_.end(), std::make_move_iterator(completions.begin()),
                    std::make_move_iterator(completions.end()));
    completions.clear();  // moved-from shells only: no tensor owner is freed under the mutex
    write_fd = mark_signalled_locked();
  }
  signal(write_fd);
}

void CompletionQueue::push(Completion completion) {
  bool write_fd = false;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    pending_.push_back(std::move(completion));
    write_fd = mark_signalled_locked();
  }
  signal(write_fd);
}

std::vector<Completion> CompletionQueue::drain() {
  LoadMonitor::process().note_intake_thread();
  std::vector<Completion> taken;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    taken.swap(pending_);
    if (signalled_) {
      std::uint64_t count = 0;
      [[maybe_unused]] const ssize_t read_bytes = ::read(fd_, &count, sizeof(count));
      signalled_ = false;
    }
  }
  return taken;
}

bool CompletionQueue::wait_for(TimeNs timeout_ns) {
  std::unique_lock<std::mutex> lock(mutex_);
  return ready_.wait_for(lock, std::chrono::nanoseconds(timeout_ns),
                         [this] { return !pending_.empty(); });
}

std::size_t CompletionQueue::pending() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return pending_.size();
}

}  // namespace headrace::batching
