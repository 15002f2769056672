// Stress test of the batcher's queue, scheduler and workers with a native runner, built under
// ThreadSanitizer (HEADRACE_SANITIZE=thread). Many submitter threads with random row counts,
// shapes, priorities, deadlines and cancels; several instances; a runner that is slow sometimes
// and throws on "poison" requests. Checks every ticket is answered exactly once, each OK answer
// holds exactly its own rows, the runner never saw a request answered without running, failed
// batches fail whole and alone, and the statistics add up. Prints "ok" or the failures.
#include "check.h"
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <stdexcept>
#include <thread>
#include <vector>

#include "batching/batcher.h"
#include "batching/completion_queue.h"
#include "common/status.h"

namespace {

using namespace headrace::batching;
using headrace::CoreError;
using headrace::DataType;
using headrace::monotonic_ns;
using headrace::Tensor;
using headrace::TimeNs;
using headrace::StatusCode;

using headrace::testing::expect;
using headrace::testing::failures;

constexpr std::int32_t kPoisonEvery = 97;

// Input 0: int32 [rows, width]; element [r][0] is the request id, [r][c] = r * 10 + c.
// Output 0: input * 2; output 1: int64 row sums [rows].
class DoublingRunner : public Runner {
 public:
  std::vector<Tensor> run(const Batch& batch) override {
    const Tensor& x = batch.inputs.at(0);
    expect(x.shape.size() == 2 && x.shape[0] == batch.rows, "batch shape");
    const auto width = static_cast<std::size_t>(x.shape[1]);
    const auto rows = static_cast<std::size_t>(batch.rows);
    const auto* in = reinterpret_cast<const std::int32_t*>(x.data.get());
    bool poison = false;
    std::uint64_t batch_number = 0;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      batch_number = ++batches_;
      for (std::size_t r = 0; r < rows; ++r) {
        const std::int32_t id = in[r * width];
        seen_[id] = batch_number;
        if (id % kPoisonEvery == 0) poison = true;
      }
      if (poison) poison_batches_.insert(batch_number);
      max_rows_ = std::max<std::int64_t>(max_rows_, batch.rows);
    }
    const int running = running_.fetch_add(1) + 1;
    expect(running <= instances_, "no more concurrent runs than instances");
    if (batch_number % 7 == 0) std::this_thread::sleep_for(std::chrono::microseconds(300));
    running_.fetch_sub(1);
    if (poison) throw std::runtime_error("poison request in batch");

    std::uint8_t* out0 = nullptr;
    Tensor doubled = Tensor::allocate(DataType::kInt32, x.shape, x.byte_size, &out0);
    std::uint8_t* out1 = nullptr;
    Tensor sums = Tensor::allocate(DataType::kInt64, {batch.rows}, rows * sizeof(std::int64_t), &out1);
    auto* d = reinterpret_cast<std::int32_t*>(out0);
    auto* s = reinterpret_cast<std::int64_t*>(out1);
    for (std::size_t r = 0; r < rows; ++r) {
      std::int64_t sum = 0;
      for (std::size_t c = 0; c < width; ++c) {
        d[r * width + c] = in[r * width + c] * 2;
        sum += in[r * width + c];
      }
      s[r] = sum;
    }
    return {std::move(doubled), std::move(sums)};
  }

  explicit DoublingRunner(int instances) : instances_(instances) {}

  std::mutex mutex_;
  std::map<std::int32_t, std::uint64_t> seen_;  // request id -> batch number
  std::set<std::uint64_t> poison_batches_;
  std::uint64_t batches_ = 0;
  std::int64_t max_rows_ = 0;
  std::atomic<int> running_{0};
  const int instances_;
};

struct Expected {
  std::int32_t id;
  std::int64_t rows;
  std::int64_t width;
};

std::unique_ptr<Request> make_request(std::int32_t id, std::int64_t rows, std::int64_t width) {
  auto request = std::make_unique<Request>();
  const auto count = static_cast<std::size_t>(rows * width);
  std::uint8_t* out = nullptr;
  Tensor x = Tensor::allocate(DataType::kInt32, {rows, width}, count * sizeof(std::int32_t), &out);
  auto* values = reinterpret_cast<std::int32_t*>(out);
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t c = 0; c < width; ++c) {
      values[r * width + c] = c == 0 ? id : static_cast<std::int32_t>(r * 10 + c);
    }
  }
  request->inputs.push_back(std::move(x));
  return request;
}

bool holds_own_rows(const Completion& completion, const Expected& expected) {
  if (completion.outputs.size() != 2) return false;
  const Tensor& doubled = completion.outputs[0];
  const Tensor& sums = completion.outputs[1];
  if (doubled.shape != std::vector<std::int64_t>{expected.rows, expected.width}) return false;
  if (sums.shape != std::vector<std::int64_t>{expected.rows}) return false;
  const auto* d = reinterpret_cast<const std::int32_t*>(doubled.data.get());
  const auto* s = reinterpret_cast<const std::int64_t*>(sums.data.get());
  for (std::int64_t r = 0; r < expected.rows; ++r) {
    std::int64_t sum = 0;
    for (std::int64_t c = 0; c < expected.width; ++c) {
      const std::int32_t value = c == 0 ? expected.id : static_cast<std::int32_t>(r * 10 + c);
      if (d[r * expected.width + c] != value * 2) return false;
      sum += value;
    }
    if (s[r] != sum) return false;
  }
  return true;
}

// Two batchers share one CompletionQueue; one is shut down without draining while submitters
// and cancellers are still at it. Every admitted ticket (unique across both) is answered once.
void shutdown_race() {
  auto completions = std::make_shared<CompletionQueue>();
  auto runner_a = std::make_shared<DoublingRunner>(2);
  auto runner_b = std::make_shared<DoublingRunner>(2);
  BatcherConfig config;
  config.max_batch_size = 8;
  config.instances = 2;
  config.max_queue_delay_us = 100;
  config.default_timeout_us = 300;
  Batcher a("a", config, runner_a, completions);
  Batcher b("b", config, runner_b, completions);

  std::mutex mutex;
  std::map<std::uint64_t, char> admitted;  // ticket -> batcher
  std::atomic<bool> b_stopped{false};
  std::atomic<int> refused_after_stop{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 6; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 random(static_cast<std::uint32_t>(99 + t));
      for (int i = 0; i < 200; ++i) {
        const bool to_b = (i + t) % 2 == 0;
        Batcher& target = to_b ? b : a;
        const bool stopped_before = b_stopped.load();
        try {
          const std::uint64_t ticket =
              target.submit(make_request(1 + t * 1000 + i, 1 + static_cast<std::int64_t>(random() % 3), 2));
          std::lock_guard<std::mutex> lock(mutex);
          expect(admitted.emplace(ticket, to_b ? 'b' : 'a').second, "tickets unique across batchers");
          expect(!(to_b && stopped_before), "no admission after shutdown returned");
        } catch (const CoreError& error) {
          expect(error.code() == StatusCode::kUnavailable, "only UNAVAILABLE refusals");
          if (to_b && stopped_before) refused_after_stop.fetch_add(1);
        }
        if (random() % 4 == 0) {
          std::uint64_t victim = 0;
          {
            std::lock_guard<std::mutex> lock(mutex);
            if (!admitted.empty()) victim = std::prev(admitted.end())->first;
          }
          if (victim != 0) (void)(random() % 2 ? a : b).cancel(victim);
        }
      }
    });
  }
  threads.emplace_back([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    b.shutdown(false);
    b_stopped.store(true);
  });
  for (auto& thread : threads) thread.join();
  a.shutdown(true);
  b.shutdown(true);  // idempotent

  std::map<std::uint64_t, int> answers;
  for (Completion& completion : completions->drain()) ++answers[completion.ticket];
  expect(answers.size() == admitted.size(), "race: every admitted ticket answered");
  for (const auto& [ticket, count] : answers) {
    expect(count == 1, "race: answered once");
    expect(admitted.count(ticket) == 1, "race: no answer for an unknown ticket");
  }
  const BatcherStats stats_a = a.stats();
  const BatcherStats stats_b = b.stats();
  expect(stats_a.request_success + stats_a.request_failure + stats_b.request_success +
                 stats_b.request_failure ==
             admitted.size(),
         "race: stats count every admitted request once");
  std::printf("race: admitted=%zu refused_after_stop=%d\n", admitted.size(),
              refused_after_stop.load());
}

}  // namespace

int main() {
  shutdown_race();

  constexpr int kInstances = 3;
  constexpr int kSubmitters = 8;
  constexpr int kPerSubmitter = 250;

  auto completions = std::make_shared<CompletionQueue>();
  auto runner = std::make_shared<DoublingRunner>(kInstances);
  BatcherConfig config;
  config.max_batch_size = 16;
  config.instances = kInstances;
  config.max_queue_delay_us = 200;
  config.preferred_batch_sizes = {8, 16};
  config.max_queue_size = 96;
  config.priority_levels = 3;
  config.default_priority_level = 2;
  auto batcher = std::make_unique<Batcher>("stress", config, runner, completions);

  std::mutex expected_mutex;
  std::map<std::uint64_t, Expected> expected;  // ticket -> request
  std::set<std::uint64_t> cancelled_ok;        // cancel() returned true
  std::atomic<int> rejected{0};
  std::atomic<int> deadline_refused{0};
  std::atomic<bool> submitting{true};

  std::map<std::uint64_t, Completion> answered;
  int answered_twice = 0;
  std::thread consumer([&] {
    while (true) {
      const bool more = submitting.load();
      completions->wait_for(2'000'000);
      for (Completion& completion : completions->drain()) {
        if (answered.count(completion.ticket) != 0) ++answered_twice;
        answered[completion.ticket] = std::move(completion);
      }
      if (!more && completions->pending() == 0) break;
    }
  });

  std::vector<std::thread> submitters;
  for (int t = 0; t < kSubmitters; ++t) {
    submitters.emplace_back([&, t] {
      std::mt19937 random(static_cast<std::uint32_t>(1234 + t));
      std::vector<std::uint64_t> mine;
      for (int i = 0; i < kPerSubmitter; ++i) {
        const std::int32_t id = t * kPerSubmitter + i + 1;
        const std::int64_t rows = 1 + static_cast<std::int64_t>(random() % 4);
        const std::int64_t width = (random() % 3 == 0) ? 3 : 2;  // two shape groups
        auto request = make_request(id, rows, width);
        request->priority = static_cast<std::int64_t>(random() % 4);
        const bool has_deadline = random() % 5 == 0;
        if (has_deadline) {
          // Some deadlines pass while queued, some before the request is even looked at.
          request->deadline_ns = monotonic_ns() + static_cast<TimeNs>(random() % 400'000);
        }
        try {
          const std::uint64_t ticket = batcher->submit(std::move(request));
          {
            std::lock_guard<std::mutex> lock(expected_mutex);
            expected[ticket] = Expected{id, rows, width};
          }
          mine.push_back(ticket);
        } catch (const CoreError& error) {
          // Queue full (UNAVAILABLE), or refused for its deadline: already past
          // (DEADLINE_EXCEEDED) or out of reach behind the queue (UNAVAILABLE).
          const bool for_deadline = error.message().find("deadline") != std::string::npos;
          expect(error.code() == StatusCode::kUnavailable ||
                     (for_deadline && error.code() == StatusCode::kDeadlineExceeded),
                 "only queue-full and deadline refusals");
          expect(!for_deadline || has_deadline, "deadline refusals only with a deadline");
          (for_deadline ? deadline_refused : rejected).fetch_add(1);
          std::this_thread::sleep_for(std::chrono::microseconds(100));
        }
        if (!mine.empty() && random() % 6 == 0) {
          const std::uint64_t victim = mine[random() % mine.size()];
          if (batcher->cancel(victim)) {
            std::lock_guard<std::mutex> lock(expected_mutex);
            expect(cancelled_ok.insert(victim).second, "cancel succeeds at most once");
          }
        }
        if (random() % 50 == 0) (void)batcher->stats();
      }
    });
  }
  for (auto& submitter : submitters) submitter.join();

  // Invalid requests are refused at once and never queued.
  bool refused = false;
  try {
    auto bad = make_request(-1, 2, 2);
    bad->inputs.push_back(make_request(-1, 3, 2)->inputs.front());  // 2 rows vs 3 rows
    batcher->submit(std::move(bad));
  } catch (const CoreError& error) {
    refused = error.code() == StatusCode::kInvalidArgument;
  }
  expect(refused, "inputs with different row counts are refused INVALID_ARGUMENT");

  batcher->shutdown(true);
  bool after_shutdown = false;
  try {
    batcher->submit(make_request(-2, 1, 2));
  } catch (const CoreError& error) {
    after_shutdown = error.code() == StatusCode::kUnavailable;
  }
  expect(after_shutdown, "submit after shutdown is UNAVAILABLE");
  const BatcherStats stats = batcher->stats();
  submitting.store(false);
  consumer.join();
  batcher.reset();

  expect(answered_twice == 0, "every ticket answered once");
  expect(answered.size() == expected.size(), "every admitted ticket answered");
  std::uint64_t ok = 0, expired = 0, cancelled = 0, internal = 0, cancelled_when_overdue = 0;
  std::int64_t rows_ok = 0;
  for (const auto& [ticket, request] : expected) {
    const auto found = answered.find(ticket);
    if (found == answered.end()) {
      expect(false, "admitted ticket has an answer");
      continue;
    }
    const Completion& completion = found->second;
    std::uint64_t seen_batch = 0;
    bool seen = false;
    {
      std::lock_guard<std::mutex> lock(runner->mutex_);
      const auto it = runner->seen_.find(request.id);
      seen = it != runner->seen_.end();
      if (seen) seen_batch = it->second;
    }
    switch (completion.code) {
      case StatusCode::kOk:
        ++ok;
        rows_ok += request.rows;
        expect(holds_own_rows(completion, request), "OK answer holds exactly its own rows");
        expect(seen && runner->poison_batches_.count(seen_batch) == 0, "OK request ran, unpoisoned");
        break;
      case StatusCode::kDeadlineExceeded:
        ++expired;
        // cancel() on an overdue request answers it as expired.
        if (cancelled_ok.count(ticket) == 1) ++cancelled_when_overdue;
        expect(!seen, "an expired request never reaches the runner");
        break;
      case StatusCode::kCancelled:
        ++cancelled;
        expect(!seen, "a cancelled request never reaches the runner");
        expect(cancelled_ok.count(ticket) == 1, "CANCELLED only after cancel() returned true");
        break;
      case StatusCode::kInternal:
        ++internal;
        expect(seen && runner->poison_batches_.count(seen_batch) == 1,
               "INTERNAL only for requests in a batch with a poison request");
        expect(completion.message.find("poison") != std::string::npos, "runner message kept");
        break;
      default:
        expect(false, "unexpected status code");
    }
  }
  expect(cancelled + cancelled_when_overdue == cancelled_ok.size(),
         "every successful cancel answered CANCELLED (or DEADLINE_EXCEEDED when overdue)");
  expect(stats.request_success == ok, "stats: successes");
  expect(stats.request_failure == expired + cancelled + internal, "stats: failures");
  expect(stats.expired_count == expired, "stats: expired");
  expect(stats.cancelled_count == cancelled, "stats: cancelled");
  expect(stats.rejected_count == static_cast<std::uint64_t>(rejected.load()), "stats: rejected");
  expect(stats.deadline_refused_count == static_cast<std::uint64_t>(deadline_refused.load()),
         "stats: refused for their deadline");
  expect(stats.doomed_count <= stats.expired_count, "stats: doomed are counted as expired");
  expect(stats.pending_requests == 0 && stats.busy_instances == 0, "stats: nothing left");
  std::uint64_t histogram_batches = 0;
  for (const auto& [rows, size_stats] : stats.batch_sizes) {
    histogram_batches += size_stats.count;
    expect(rows >= 1 && rows <= config.max_batch_size, "batches never exceed max_batch_size");
  }
  expect(histogram_batches == stats.execution_count, "histogram adds up to executions");
  expect(runner->max_rows_ <= config.max_batch_size, "runner never saw more than max rows");
  expect(stats.execution_count < ok + internal, "some batches held several requests");
  expect(ok > 0 && rows_ok > 0, "requests succeeded");

  std::printf("requests=%zu ok=%llu expired=%llu cancelled=%llu internal=%llu rejected=%d "
              "deadline_refused=%d batches=%llu\n",
              expected.size(), static_cast<unsigned long long>(ok),
              static_cast<unsigned long long>(expired), static_cast<unsigned long long>(cancelled),
              static_cast<unsigned long long>(internal), rejected.load(), deadline_refused.load(),
              static_cast<unsigned long long>(stats.execution_count));
  if (failures.load() != 0) {
    std::fprintf(stderr, "%d failures\n", failures.load());
    return 1;
  }
  std::printf("ok\n");
  return 0;
}
