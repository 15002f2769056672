// The inline decision in the core (Batcher::submit with a claim), under the sanitizers: a cheap
// lone request on an idle batcher is claimed by the submitting thread once the cost fit has
// BatcherConfig::inline_min_cost_samples samples and predicts at most inline_max_batch_us; it is
// never claimed with inline_max_batch_us = 0, nor for a runner that refuses the submitting
// thread. While submitter threads also claim and run their own jobs, worker-run batches go on,
// and every ticket is answered once. Prints "ok" or the failures.
#include "check.h"
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "batching/batcher.h"
#include "batching/completion_queue.h"
#include "common/status.h"

namespace {

using namespace headrace::batching;
using headrace::DataType;
using headrace::StatusCode;
using headrace::Tensor;

using headrace::testing::expect;
using headrace::testing::failures;

// Echoes its one input; records the threads it ran on.
class EchoRunner final : public Runner {
 public:
  explicit EchoRunner(bool on_submitter) : on_submitter_(on_submitter) {}

  std::vector<Tensor> run(const Batch& batch) override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      ++runs_by_thread_[std::this_thread::get_id()];
    }
    return {batch.inputs.at(0)};
  }
  bool runs_on_submitting_thread() const noexcept override { return on_submitter_; }

  int runs_on(std::thread::id thread) {
    std::lock_guard<std::mutex> lock(mutex_);
    return runs_by_thread_[thread];
  }

 private:
  const bool on_submitter_;
  std::mutex mutex_;
  std::map<std::thread::id, int> runs_by_thread_;
};

std::unique_ptr<Request> one_row(std::int32_t value) {
  auto request = std::make_unique<Request>();
  std::uint8_t* out = nullptr;
  Tensor x = Tensor::allocate(DataType::kInt32, {1, 1}, sizeof(std::int32_t), &out);
  *reinterpret_cast<std::int32_t*>(out) = value;
  request->inputs.push_back(std::move(x));
  return request;
}

// Waits until `ticket` is answered (each answer OK and given once).
void wait_for(CompletionQueue& queue, std::uint64_t ticket,
              std::map<std::uint64_t, int>& answered) {
  while (answered.count(ticket) == 0) {
    for (const Completion& completion : queue.drain()) {
      expect(answered[completion.ticket]++ == 0, "answered once");
      if (completion.code != StatusCode::kOk) expect(false, "request failed");
    }
    if (answered.count(ticket) == 0) std::this_thread::yield();
  }
}

// Lone requests one after another from this thread: which were claimed here.
std::vector<bool> claims(const BatcherConfig& config, bool runner_allows, int requests) {
  auto queue = std::make_shared<CompletionQueue>();
  auto runner = std::make_shared<EchoRunner>(runner_allows);
  Batcher batcher("inline", config, runner, queue);
  std::map<std::uint64_t, int> answered;
  std::vector<bool> claimed_here;
  for (int i = 0; i < requests; ++i) {
    Batcher::Job claimed;
    const std::uint64_t ticket = batcher.submit(one_row(i), &claimed);
    claimed_here.push_back(!claimed.empty());
    if (!claimed.empty()) batcher.run_claimed(std::move(claimed));
    wait_for(*queue, ticket, answered);
  }
  int claimed_count = 0;
  for (const bool here : claimed_here) claimed_count += here ? 1 : 0;
  expect(runner->runs_on(std::this_thread::get_id()) == claimed_count,
         "claimed jobs ran on the submitting thread, the others did not");
  batcher.shutdown(true);
  return claimed_here;
}

void single_thread_rules() {
  BatcherConfig generous;
  generous.inline_max_batch_us = 10'000'000;
  generous.inline_min_cost_samples = 2;
  const std::vector<bool> first = claims(generous, true, 6);
  expect(!first[0] && !first[1], "no claim before inline_min_cost_samples fitted batches");
  for (std::size_t i = 2; i < first.size(); ++i) expect(first[i], "claimed once fitted");

  BatcherConfig never = generous;
  never.inline_max_batch_us = 0;
  for (const bool here : claims(never, true, 6)) expect(!here, "inline_max_batch_us = 0: never");
  for (const bool here : claims(generous, false, 6)) {
    expect(!here, "a runner that refuses the submitting thread is never claimed");
  }
}

// Several submitters claim and run jobs while the workers run the others.
void concurrent_claims() {
  BatcherConfig config;
  config.instances = 2;
  config.inline_max_batch_us = 10'000'000;
  config.inline_min_cost_samples = 0;
  auto queue = std::make_shared<CompletionQueue>();
  auto runner = std::make_shared<EchoRunner>(true);
  Batcher batcher("inline", config, runner, queue);
  constexpr int kThreads = 4;
  constexpr int kPerThread = 200;
  std::atomic<int> claimed_total{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        Batcher::Job claimed;
        batcher.submit(one_row(t * kPerThread + i), &claimed);
        if (!claimed.empty()) {
          claimed_total.fetch_add(1);
          batcher.run_claimed(std::move(claimed));
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  batcher.shutdown(true);
  std::map<std::uint64_t, int> answered;
  for (const Completion& completion : queue->drain()) {
    expect(completion.code == StatusCode::kOk, "concurrent: ok");
    ++answered[completion.ticket];
  }
  expect(answered.size() == kThreads * kPerThread, "concurrent: every ticket answered");
  for (const auto& [ticket, count] : answered) expect(count == 1, "concurrent: answered once");
  const BatcherStats stats = batcher.stats();
  expect(stats.request_success == kThreads * kPerThread, "concurrent: stats count successes");
  expect(stats.busy_instances == 0, "concurrent: every claimed instance given back");
  std::printf("concurrent: claimed=%d of %d\n", claimed_total.load(), kThreads * kPerThread);
}

}  // namespace

int main() {
  single_thread_rules();
  concurrent_claims();
  if (failures.load() != 0) {
    std::fprintf(stderr, "%d failures\n", failures.load());
    return 1;
  }
  std::printf("ok\n");
  return 0;
}
