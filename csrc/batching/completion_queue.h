// Where finished requests wait for the event loop: shared by every Batcher of a process.
//
// Workers push all completions of a batch at once and signal an eventfd once per push (not per
// request); Python's asyncio loop watches fd() with loop.add_reader and calls drain() to take
// everything at once. drain() resets the eventfd. Native consumers (the C++ tests) may block in
// wait_for() instead.
//
// Threading: every method may be called from any thread. push() never frees tensors and never
// blocks on anything but the queue's own short mutex, so a thread holding the GIL may call
// drain() while workers push. Tickets come from here so that they are unique across batchers.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "common/clock.h"
#include "common/tensor.h"
#include "common/status.h"

namespace headrace::batching {

struct Completion {
  std::uint64_t ticket = 0;
  StatusCode code = StatusCode::kOk;
  std::string message;
  // The request's rows of every output (views sharing the batch output's owner); empty unless
  // code == kOk.
  std::vector<Tensor> outputs;
  // The request's own input tensors, handed back so that whoever drains frees them: their owners
  // may be Python objects, and the draining thread (the event loop) holds the GIL anyway, so
  // workers never take it just to let go of a request's inputs.
  std::vector<Tensor> inputs;
};

class CompletionQueue {
 public:
  // Throws CoreError(kInternal) when the eventfd cannot be created.
  CompletionQueue();
  ~CompletionQueue();
  CompletionQueue(const CompletionQueue&) = delete;
  CompletionQueue& operator=(const CompletionQueue&) = delete;

  // Readable while completions are pending.
  int fd() const noexcept { return fd_; }

  std::uint64_t next_ticket() noexcept { return next_ticket_.fetch_add(1, std::memory_order_relaxed); }

  // Appends and signals once. `completions` is moved from.
  void push(std::vector<Completion>& completions);
  void push(Completion completion);

  // Takes every pending completion (in push order) and resets the eventfd. The calling thread is
  // noted as the intake thread for LoadMonitor (the event loop drains).
  std::vector<Completion> drain();

  // Blocks until a completion is pending or `timeout_ns` passes; true if one is pending.
  bool wait_for(TimeNs timeout_ns);

  std::size_t pending() const;

 private:
  // Under the mutex: whether this push must write the eventfd (once per drain).
  bool mark_signalled_locked() noexcept;
  // Without the mutex: wakes wait_for() callers and, if asked, the eventfd's reader.
  void signal(bool write_fd);

  int fd_ = -1;
  std::atomic<std::uint64_t> next_ticket_{1};
  mutable std::mutex mutex_;
  std::condition_variable ready_;
  std::vector<Completion> pending_;
  bool signalled_ = false;  // eventfd holds a count not yet read
};

}  // namespace headrace::batching
