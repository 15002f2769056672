#include "batching/completion_queue.h"

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

void CompletionQueue::signal_locked() {
  ready_.notify_all();
  if (signalled_) return;  // the loop has not drained since the last signal: one wake-up is enough
  const std::uint64_t one = 1;
  // A full counter (EAGAIN) still leaves the fd readable, which is all the loop needs.
  [[maybe_unused]] const ssize_t written = ::write(fd_, &one, sizeof(one));
  signalled_ = true;
}

void CompletionQueue::push(std::vector<Completion>& completions) {
  if (completions.empty()) return;
  std::lock_guard<std::mutex> lock(mutex_);
  pending_.insert(pending_.end(), std::make_move_iterator(completions.begin()),
                  std::make_move_iterator(completions.end()));
  completions.clear();  // moved-from shells only: no tensor owner is freed under the mutex
  signal_locked();
}

void CompletionQueue::push(Completion completion) {
  std::lock_guard<std::mutex> lock(mutex_);
  pending_.push_back(std::move(completion));
  signal_locked();
}

std::vector<Completion> CompletionQueue::drain() {
  std::vector<Completion> taken;
  std::lock_guard<std::mutex> lock(mutex_);
  taken.swap(pending_);
  if (signalled_) {
    std::uint64_t count = 0;
    [[maybe_unused]] const ssize_t read_bytes = ::read(fd_, &count, sizeof(count));
    signalled_ = false;
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
