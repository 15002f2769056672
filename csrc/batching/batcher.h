// The dynamic batcher of one model version: a bounded request queue, one scheduler thread that
// applies the BatchingPolicy, and `instances` worker threads that assemble, run and scatter
// batches through a Runner. Finished requests go to a CompletionQueue shared by all batchers.
//
// Ownership: the Batcher owns its queue, threads and queued requests; it shares the Runner and the
// CompletionQueue. It knows nothing of Python.
//
// Threading: submit, cancel, stats and shutdown may be called from any thread, concurrently.
// They take the Batcher's mutex briefly and never run the model or free request tensors under it
// (freeing may need the GIL, and a Python caller must not hold the GIL while it waits for the
// mutex: the bindings release it first). The destructor shuts down without draining and joins.
// The threads are named "batch-scheduler" and "batch-worker" (top -H, ps -L, profilers); they
// inherit the scheduling policy of the thread that builds the Batcher (headrace serve's helper
// policy, thread_policy.py).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "batching/batcher_config.h"
#include "batching/batcher_stats.h"
#include "batching/batching_policy.h"
#include "batching/completion_queue.h"
#include "batching/cost_model.h"
#include "batching/request.h"
#include "batching/request_queue.h"
#include "batching/runner.h"

namespace headrace::batching {

class Batcher {
 public:
  // Validates the config (CoreError(kInvalidArgument)) and starts the threads.
  Batcher(std::string name, BatcherConfig config, std::shared_ptr<Runner> runner,
          std::shared_ptr<CompletionQueue> completions);
  ~Batcher();
  Batcher(const Batcher&) = delete;
  Batcher& operator=(const Batcher&) = delete;

  // Queues a request and returns its ticket; its completion arrives on the CompletionQueue.
  // Throws CoreError: kInvalidArgument for inputs that do not agree (no inputs, no batch dim,
  // differing row counts, 0 rows, bytes not matching a shape, priority out of range);
  // kUnavailable when the queue is full, the batcher is shut down, or the work queued ahead
  // makes the request's deadline out of reach (BatchingPolicy::admit); kDeadlineExceeded when
  // its deadline has already passed.
  std::uint64_t submit(std::unique_ptr<Request> request);

  using Job = std::vector<std::unique_ptr<Request>>;
  // As submit, but a cheap batch may run on the caller's thread: when the request would go
  // straight to an idle instance, the runner allows it (Runner::runs_on_submitting_thread) and
  // the fitted cost of its rows AND its input bytes (a single wide row is not cheap) predicts
  // the batch takes at most config().inline_max_batch_us (after inline_min_cost_samples fitted
  // batches), the job moves into *claimed (holding an instance for it) instead of waking a
  // worker, and the caller must pass it to run_claimed() at once.
  // That saves a worker wake-up and the completion's trip back to a sleeping event loop (context
  // switches that cost more than a small model's run). The caller must hold no lock that the
  // runner takes. *claimed stays empty when the request was queued instead.
  std::uint64_t submit(std::unique_ptr<Request> request, Job* claimed);
  void run_claimed(Job job) { run_batch(std::move(job)); }

  // Before a request is even parsed (its rows, bytes and priority unknown): throws what submit
  // would throw for the least demanding request it could be -- one row, no input bytes, the
  // highest priority -- so that a caller whose remaining time not even that could use is turned
  // away before it costs anything more. kDeadlineExceeded when deadline_ns has passed,
  // kUnavailable with the prediction when the work ahead and a batch of one row end after it;
  // counted in deadline_refused_count. Returns when it may be admitted (or without a deadline,
  // or with the cost not fitted yet).
  //
  // `in_flight` is the caller's count of this model's requests admitted and not yet answered:
  // besides the queue, they include requests on their way to it (parsed, routed) and batches
  // running. Each counts as at least one row ahead, so the work ahead is at least
  // max(queued rows, in_flight): requests piling up before the queue (a swamped intake) count
  // too. A running batch is counted as just starting, the rest with the lower bounds of the
  // costs, so the refusal stays certain by the cost model.
  void check_deadline(TimeNs deadline_ns, std::int64_t in_flight = 0);

  // Removes a queued request and answers it CANCELLED -- or, when its deadline already left it
  // no time (BatchingPolicy::overdue), DEADLINE_EXCEEDED, counted as expired: gRPC cancels a
  // call at its deadline, racing the scheduler for the same event. False when it is not queued
  // (already running, answered or unknown): a running batch is never interrupted.
  bool cancel(std::uint64_t ticket);

  BatcherStats stats() const;


  // drain: run everything queued, then stop. Otherwise queued requests are answered UNAVAILABLE
  // "shutting down". Batches already running finish either way. Joins the threads; idempotent.
  void shutdown(bool drain);

  const std::string& name() const noexcept { return name_; }
  const BatcherConfig& config() const noexcept { return policy_.config(); }

 private:
  void scheduler_loop();
  void worker_loop();
  void run_batch(Job job);
  // Throws the error for a deadline refusal (admission.verdict is not kAdmit).
  [[noreturn]] void throw_deadline_refusal(const Admission& admission) const;
  // Answers requests that never ran; called without the mutex.
  void answer(std::vector<std::unique_ptr<Request>>& requests, StatusCode code,
              const std::string& message);

  const std::string name_;
  const BatchingPolicy policy_;
  const std::shared_ptr<Runner> runner_;
  const std::shared_ptr<CompletionQueue> completions_;
  const std::int64_t instances_;
  const bool runs_inline_;  // runner_->runs_on_submitting_thread(), asked once

  mutable std::mutex mutex_;
  std::condition_variable scheduler_wake_;
  std::condition_variable worker_wake_;
  RequestQueue queue_;            // guarded by mutex_
  std::deque<Job> jobs_;          // guarded by mutex_: batches formed, not yet taken by a worker
  std::int64_t busy_ = 0;         // guarded by mutex_: jobs queued or running
  CostModel cost_;                // guarded by mutex_
  BatcherStats stats_;            // guarded by mutex_
  // guarded by mutex_: when the sleeping scheduler will decide again (kNever: only when woken).
  // submit() skips the wake-up when the new request cannot change the decision.
  TimeNs scheduler_wake_ns_ = 0;
  bool stopping_ = false;         // guarded by mutex_
  bool draining_ = false;         // guarded by mutex_
  bool workers_stop_ = false;     // guarded by mutex_

  std::mutex shutdown_mutex_;  // serializes shutdown() callers while they join
  std::thread scheduler_;
  std::vector<std::thread> workers_;
};

}  // namespace headrace::batching
