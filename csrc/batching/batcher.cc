#include "batching/batcher.h"

#include <algorithm>
#include <chrono>
#include <exception>
#include <utility>

#include "batching/batch_assembly.h"
#include "batching/load_monitor.h"
#include "common/thread_name.h"

#if defined(__GLIBCXX__)
#include <cxxabi.h>
#endif

namespace headrace::batching {
namespace {

std::chrono::steady_clock::time_point to_time_point(TimeNs ns) {
  return std::chrono::steady_clock::time_point(std::chrono::nanoseconds(ns));
}

// "1.25 ms": predictions in refusal messages.
std::string milliseconds(TimeNs ns) {
  const TimeNs hundredths = (ns + 5'000) / 10'000;
  std::string fraction = std::to_string(hundredths % 100);
  if (fraction.size() < 2) fraction.insert(0, 1, '0');
  return std::to_string(hundredths / 100) + "." + fraction + " ms";
}

std::int64_t epoch_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Rows of a request, after checking that its inputs agree with each other and with their bytes.
// Nothing here is sized by the shapes: a tensor of many empty rows is checked in O(dims).
std::int64_t validated_rows(const Request& request) {
  if (request.inputs.empty()) {
    throw CoreError(StatusCode::kInvalidArgument, "request has no inputs");
  }
  const std::int64_t rows = request.inputs.front().shape.empty() ? -1 : request.inputs.front().rows();
  for (std::size_t k = 0; k < request.inputs.size(); ++k) {
    const Tensor& input = request.inputs[k];
    const std::string what = "input " + std::to_string(k);
    if (input.shape.empty()) {
      throw CoreError(StatusCode::kInvalidArgument,
                      what + " has no batch dimension (dim 0 = rows)");
    }
    if (input.rows() != rows) {
      throw CoreError(StatusCode::kInvalidArgument,
                      what + " has " + std::to_string(input.rows()) + " rows; input 0 has " +
                          std::to_string(rows) + " (all inputs share dim 0)");
    }
    RowOffsets::validate(input, what);  // shape vs bytes, BYTES prefixes
  }
  if (rows < 1) throw CoreError(StatusCode::kInvalidArgument, "request has 0 rows");
  return rows;
}

}  // namespace

Batcher::Batcher(std::string name, BatcherConfig config, std::shared_ptr<Runner> runner,
                 std::shared_ptr<CompletionQueue> completions)
    : name_(std::move(name)),
      policy_(std::move(config)),
      runner_(std::move(runner)),
      completions_(std::move(completions)),
      instances_(policy_.config().instances),
      runs_inline_(runner_ != nullptr && runner_->runs_on_submitting_thread()),
      queue_(policy_.config().level_count()),
      cost_(policy_.config()) {
  if (!runner_ || !completions_) {
    throw CoreError(StatusCode::kInvalidArgument, "batcher needs a runner and a completion queue");
  }
  stats_.cost = cost_.estimate();
  workers_.reserve(static_cast<std::size_t>(instances_));
  try {
    scheduler_ = std::thread([this] {
      name_this_thread("batch-scheduler");
      scheduler_loop();
    });
    for (std::int64_t i = 0; i < instances_; ++i) {
      workers_.emplace_back([this] {
        name_this_thread("batch-worker");
        worker_loop();
      });
    }
  } catch (...) {
    shutdown(false);
    throw;
  }
}

Batcher::~Batcher() { shutdown(false); }

std::uint64_t Batcher::submit(std::unique_ptr<Request> request) {
  return submit(std::move(request), nullptr);
}

std::uint64_t Batcher::submit(std::unique_ptr<Request> request, Job* claimed) {
  if (!request) throw CoreError(StatusCode::kInvalidArgument, "null request");
  const BatcherConfig& config = policy_.config();
  request->rows = validated_rows(*request);
  request->input_bytes = 0;
  for (const Tensor& input : request->inputs) request->input_bytes += input.byte_size;
  request->level = config.level_index(request->priority);
  const TimeNs now = monotonic_ns();
  if (request->deadline_ns == 0 && config.default_timeout_us > 0) {
    request->deadline_ns = now + config.default_timeout_us * 1000;
  }
  request->enqueue_ns = now;
  std::uint64_t ticket = 0;
  std::size_t queued = 0;
  bool stopped = false;
  Admission admission;
  // Wake-ups are sent after the mutex is released: a thread woken while it is still held would,
  // on a shared core, run only to block on it and hand the CPU back.
  bool wake_worker = false;
  bool wake_scheduler = false;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    queued = queue_.size();
    if (!stopping_) {
      AdmissionView view;
      view.rows = request->rows;
      view.input_bytes = request->input_bytes;
      view.deadline_ns = request->deadline_ns;
      view.rows_ahead = queue_.rows_at_or_above(request->level);
      view.cost = cost_.estimate();
      admission = policy_.admit(view, now);
    }
    if (stopping_) {
      stopped = true;
    } else if (admission.verdict != Admission::Verdict::kAdmit) {
      ++stats_.deadline_refused_count;
    } else if (config.max_queue_size > 0 &&
               queued >= static_cast<std::size_t>(config.max_queue_size)) {
      ++stats_.rejected_count;
    } else {
      cost_.observe_arrival(now);
      ticket = completions_->next_ticket();
      request->ticket = ticket;
      // While every instance is busy no batch can form, so a new request only matters to the
      // scheduler if it must wake earlier: for its deadline, or (latency target) to shed it.
      // Skipping the other wake-ups keeps a long queue from being re-scanned per submit.
      const bool matters = busy_ < instances_ || config.latency_target_us > 0 ||
                           (request->deadline_ns != 0 && request->deadline_ns < scheduler_wake_ns_);
      if (queue_.empty() && busy_ < instances_ && jobs_.empty() && !stopping_) {
        // Fast path for a lone request on an idle batcher: ask the same pure policy about a
        // queue holding just this request; if it says "run now", hand it straight to a worker.
        // That skips a wake-up of the scheduler thread (a context switch and a second hop) on
        // the path whose latency matters most, without changing any decision.
        const QueuedRequest alone{ticket, request->rows, request->level, request->enqueue_ns,
                                  request->deadline_ns, request->shape_key};
        QueueView state;
        state.requests = std::span<const QueuedRequest>(&alone, 1);
        state.free_instances = instances_ - busy_;
        state.busy_instances = busy_;
        cost_.observe_load(LoadMonitor::process().busy_fraction(now));
        state.cost = cost_.estimate();
        const Decision decision = policy_.decide(state, now);
        if (decision.action == Decision::Action::kRun && decision.run.size() == 1 &&
            decision.expired.empty() && decision.doomed.empty() && decision.shed.empty()) {
          if (decision.companion_wait) cost_.observe_companion_wait(1);
          ++stats_.queue_count;  // queued for 0 ns
          Job job;
          job.push_back(std::move(request));
          ++busy_;
          // The prediction is for this request's own rows AND bytes: one row of a huge width
          // costs what its bytes say, and must not block the caller's thread.
          const TimeNs inline_max_ns = config.inline_max_batch_us * 1000;
          if (claimed != nullptr && inline_max_ns > 0 && runs_inline_ &&
              cost_.samples() >= static_cast<std::size_t>(config.inline_min_cost_samples) &&
              state.cost.batch_ns(alone.rows, job.front()->input_bytes) <=
                  static_cast<double>(inline_max_ns)) {
            *claimed = std::move(job);
          } else {
            jobs_.push_back(std::move(job));
            wake_worker = true;
          }
        }
      }
      if (request) {  // neither handed to a worker nor claimed
        queue_.push(std::move(request));
        wake_scheduler = matters;
      }
    }
  }
  if (wake_worker) worker_wake_.notify_one();
  if (wake_scheduler) scheduler_wake_.notify_one();
  if (ticket != 0) return ticket;
  // Refused: the request (and its input owners) is freed by the caller's frame, outside the mutex.
  if (stopped) {
    throw CoreError(StatusCode::kUnavailable, "batcher for model " + name_ + " is shut down");
  }
  if (admission.verdict != Admission::Verdict::kAdmit) throw_deadline_refusal(admission);
  throw CoreError(StatusCode::kUnavailable, "queue full: " + std::to_string(queued) +
                                                " requests queued for model " + name_);
}

void Batcher::throw_deadline_refusal(const Admission& admission) const {
  if (admission.verdict == Admission::Verdict::kExpired) {
    throw CoreError(StatusCode::kDeadlineExceeded,
                    "deadline already passed when the request reached model " + name_);
  }
  throw CoreError(StatusCode::kUnavailable,
                  "model " + name_ + " cannot answer before the request's deadline: " +
                      milliseconds(admission.left_ns) + " left, predicted " +
                      milliseconds(admission.wait_ns) + " queued behind earlier requests + " +
                      milliseconds(admission.run_ns) +
                      " to run and answer; retry later or allow more time");
}

void Batcher::check_deadline(TimeNs deadline_ns, std::int64_t in_flight) {
  if (deadline_ns == 0) return;
  Admission admission;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_) return;  // submit says why
    AdmissionView view;
    view.rows = 1;
    view.deadline_ns = deadline_ns;
    view.rows_ahead = std::max(queue_.rows_at_or_above(0), in_flight);
    view.cost = cost_.estimate();
    admission = policy_.admit(view, monotonic_ns());
    if (admission.verdict == Admission::Verdict::kAdmit) return;
    ++stats_.deadline_refused_count;
  }
  throw_deadline_refusal(admission);
}

bool Batcher::cancel(std::uint64_t ticket) {
  std::vector<std::unique_ptr<Request>> removed;
  Overdue overdue = Overdue::kNo;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    std::unique_ptr<Request> request = queue_.remove(ticket);
    if (!request) return false;
    // gRPC cancels a call on the server at its deadline, racing the scheduler's own timer for
    // the same event: a cancel that finds the request already overdue is counted (and
    // answered) as the deadline's doing, whichever timer fired first.
    const QueuedRequest queued{request->ticket, request->rows, request->level,
                               request->enqueue_ns, request->deadline_ns, request->shape_key};
    overdue = policy_.overdue(queued, cost_.estimate(), monotonic_ns());
    removed.push_back(std::move(request));
    if (overdue == Overdue::kNo) {
      ++stats_.cancelled_count;
    } else {
      ++stats_.expired_count;
      if (overdue == Overdue::kDoomed) ++stats_.doomed_count;
    }
    ++stats_.request_failure;
    scheduler_wake_.notify_one();  // the oldest request, and so the delay, may have changed
  }
  if (overdue == Overdue::kNo) {
    answer(removed, StatusCode::kCancelled, "request cancelled while queued");
  } else {
    answer(removed, StatusCode::kDeadlineExceeded,
           "deadline exceeded while queued for model " + name_ + " (then cancelled)");
  }
  return true;
}

BatcherStats Batcher::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  BatcherStats copy = stats_;
  copy.pending_requests = queue_.size();
  copy.busy_instances = busy_;
  // saturated: as the last decision saw it; busy_fraction: now.
  copy.cost = cost_.estimate();
  copy.cost.busy_fraction = LoadMonitor::process().busy_fraction(monotonic_ns());
  return copy;
}

void Batcher::answer(std::vector<std::unique_ptr<Request>>& requests, StatusCode code,
                     const std::string& message) {
  if (requests.empty()) return;
  std::vector<Completion> completions;
  completions.reserve(requests.size());
  for (const auto& request : requests) {
    completions.push_back(Completion{request->ticket, code, message, {}, std::move(request->inputs)});
  }
  completions_->push(completions);
  requests.clear();
}

void Batcher::shutdown(bool drain) {
  std::lock_guard<std::mutex> joining(shutdown_mutex_);
  std::vector<std::unique_ptr<Request>> dropped;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!stopping_) {
      stopping_ = true;
      draining_ = drain;
    }
    if (!draining_) {
      dropped = queue_.take_all();
      stats_.request_failure += dropped.size();
    }
    scheduler_wake_.notify_all();
  }
  answer(dropped, StatusCode::kUnavailable, "shutting down");
  if (scheduler_.joinable()) scheduler_.join();
  {
    // The scheduler has stopped forming batches; workers finish the ones already formed.
    std::lock_guard<std::mutex> lock(mutex_);
    workers_stop_ = true;
    worker_wake_.notify_all();
  }
  for (auto& worker : workers_) {
    if (worker.joinable()) worker.join();
  }
}

void Batcher::scheduler_loop() {
  std::vector<QueuedRequest> view;
  std::unique_lock<std::mutex> lock(mutex_);
  while (true) {
    if (stopping_ && (!draining_ || queue_.empty())) return;
    queue_.snapshot(view);
    QueueView state;
    state.requests = view;
    state.free_instances = instances_ - busy_;
    state.busy_instances = busy_;
    state.flush = stopping_;
    const TimeNs now = monotonic_ns();
    cost_.observe_load(LoadMonitor::process().busy_fraction(now));
    state.cost = cost_.estimate();
    Decision decision = policy_.decide(state, now);

    // One take() for everything leaving the queue: indices refer to this snapshot only.
    std::vector<std::size_t> leaving;
    leaving.reserve(decision.expired.size() + decision.doomed.size() + decision.shed.size() +
                    decision.run.size());
    leaving.insert(leaving.end(), decision.expired.begin(), decision.expired.end());
    leaving.insert(leaving.end(), decision.doomed.begin(), decision.doomed.end());
    leaving.insert(leaving.end(), decision.shed.begin(), decision.shed.end());
    leaving.insert(leaving.end(), decision.run.begin(), decision.run.end());
    if (!leaving.empty()) {
      std::vector<std::unique_ptr<Request>> taken = queue_.take(leaving);
      const auto expired_end = taken.begin() + static_cast<std::ptrdiff_t>(decision.expired.size());
      const auto doomed_end = expired_end + static_cast<std::ptrdiff_t>(decision.doomed.size());
      const auto shed_end = doomed_end + static_cast<std::ptrdiff_t>(decision.shed.size());
      std::vector<std::unique_ptr<Request>> expired(std::make_move_iterator(taken.begin()),
                                                    std::make_move_iterator(expired_end));
      std::vector<std::unique_ptr<Request>> doomed(std::make_move_iterator(expired_end),
                                                   std::make_move_iterator(doomed_end));
      std::vector<std::unique_ptr<Request>> shed(std::make_move_iterator(doomed_end),
                                                 std::make_move_iterator(shed_end));
      if (decision.action == Decision::Action::kRun) {
        if (decision.companion_wait) cost_.observe_companion_wait(decision.run.size());
        Job job(std::make_move_iterator(shed_end), std::make_move_iterator(taken.end()));
        for (const auto& request : job) {
          stats_.queue_ns += now - request->enqueue_ns;
          ++stats_.queue_count;
        }
        jobs_.push_back(std::move(job));
        ++busy_;
        // Woken without the mutex held, so that it can take the job at once (see submit).
        lock.unlock();
        worker_wake_.notify_one();
        lock.lock();
      }
      stats_.expired_count += expired.size() + doomed.size();
      stats_.doomed_count += doomed.size();
      stats_.shed_count += shed.size();
      stats_.request_failure += expired.size() + doomed.size() + shed.size();
      if (!expired.empty() || !doomed.empty() || !shed.empty()) {
        lock.unlock();
        answer(expired, StatusCode::kDeadlineExceeded,
               "deadline exceeded while queued for model " + name_);
        answer(doomed, StatusCode::kDeadlineExceeded,
               "deadline exceeded: left the queue of model " + name_ +
                   " when no batch could end before its deadline any more");
        answer(shed, StatusCode::kUnavailable,
               "shed: request cannot meet the latency target of model " + name_);
        lock.lock();
      }
      continue;  // decide again: more may be ready to run
    }
    if (decision.action == Decision::Action::kWait) {
      scheduler_wake_ns_ = decision.wait_until_ns;
      scheduler_wake_.wait_until(lock, to_time_point(decision.wait_until_ns));
    } else {
      scheduler_wake_ns_ = Decision::kNever;
      scheduler_wake_.wait(lock);
    }
    scheduler_wake_ns_ = 0;  // awake: deciding again sees every request queued meanwhile
  }
}

void Batcher::worker_loop() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (true) {
    worker_wake_.wait(lock, [this] { return !jobs_.empty() || workers_stop_; });
    if (jobs_.empty()) return;
    Job job = std::move(jobs_.front());
    jobs_.pop_front();
    lock.unlock();
    run_batch(std::move(job));
    lock.lock();
  }
}

void Batcher::run_batch(Job job) {
  std::vector<std::int64_t> rows;
  rows.reserve(job.size());
  for (const auto& request : job) rows.push_back(request->rows);
  std::vector<Completion> completions(job.size());
  for (std::size_t r = 0; r < job.size(); ++r) completions[r].ticket = job[r]->ticket;

  StatusCode code = StatusCode::kOk;
  std::string message;
  TimeNs compute_ns = 0;
  std::int64_t batch_rows = 0;
  std::uint64_t batch_bytes = 0;
  bool ran = false;
  TimeNs start = 0;
  {
    Batch batch;
    std::vector<Tensor> outputs;
    try {
      batch = assemble_batch(job);
      batch_rows = batch.rows;
      for (const Tensor& input : batch.inputs) batch_bytes += input.byte_size;
      start = monotonic_ns();
      ran = true;
      outputs = runner_->run(batch);
      compute_ns = monotonic_ns() - start;
      std::vector<std::vector<Tensor>> per_request = scatter_outputs(outputs, rows);
      for (std::size_t r = 0; r < job.size(); ++r) completions[r].outputs = std::move(per_request[r]);
    } catch (const CoreError& error) {
      code = error.code() == StatusCode::kOk ? StatusCode::kInternal : error.code();
      message = error.message();
    } catch (const std::exception& error) {
      code = StatusCode::kInternal;
      message = std::string("model runner failed: ") + error.what();
#if defined(__GLIBCXX__)
    } catch (abi::__forced_unwind&) {
      throw;  // thread cancellation (pthread_exit) must unwind through, not be reported
#endif
    } catch (...) {
      code = StatusCode::kInternal;
      message = "model runner failed with an unknown exception";
    }
    if (code != StatusCode::kOk) {
      if (ran && compute_ns == 0) compute_ns = monotonic_ns() - start;
      for (auto& completion : completions) {
        completion.code = code;
        completion.message = message;
        completion.outputs.clear();
      }
    }
    // batch and outputs (and any Python owners) are freed here, without the mutex.
  }
  bool wake_scheduler = false;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (ran) {
      ++stats_.execution_count;
      stats_.inference_count += static_cast<std::uint64_t>(batch_rows);
      stats_.compute_ns += compute_ns;
      ++stats_.compute_count;
      BatchSizeStats& size_stats = stats_.batch_sizes[batch_rows];
      ++size_stats.count;
      size_stats.compute_ns += compute_ns;
      stats_.last_inference_ms = epoch_ms();
      if (code == StatusCode::kOk) cost_.observe_batch(batch_rows, batch_bytes, compute_ns);
    }
    if (code == StatusCode::kOk) {
      stats_.request_success += job.size();
    } else {
      stats_.request_failure += job.size();
    }
    --busy_;
    // An instance is free: a batch may form, if anything is queued (otherwise the next submit
    // wakes the scheduler as needed, and a needless wake-up costs two context switches).
    wake_scheduler = !queue_.empty() || stopping_;
  }
  if (wake_scheduler) scheduler_wake_.notify_one();  // after the unlock, see submit
  // The requests' (perhaps Python-owned) inputs travel back with their completions and are freed
  // by the drainer, which holds the GIL anyway: never here.
  for (std::size_t r = 0; r < job.size(); ++r) completions[r].inputs = std::move(job[r]->inputs);
  completions_->push(completions);
  job.clear();
}

}  // namespace headrace::batching
