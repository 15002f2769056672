// DriftCountingRunner: batches run by the wrapped runner are counted (inputs, then outputs) into
// the accumulator from several worker threads at once, exactly as a single-threaded count of the
// same rows; batches that do not fit the layout are skipped, not counted and not failed.
#include "check.h"
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "batching/runner.h"
#include "common/tensor.h"
#include "drift/bin_layout.h"
#include "drift/drift_accumulator.h"
#include "runners/drift_counting_runner.h"

namespace {

using headrace::batching::Batch;
using headrace::batching::Runner;
using headrace::Tensor;
using headrace::drift::BinLayout;
using headrace::drift::DriftAccumulator;
using headrace::drift::DriftAccumulatorOptions;
using headrace::runners::DriftCountingRunner;
using headrace::DataType;

using headrace::testing::expect;
using headrace::testing::failures;

constexpr std::int64_t kInputs = 3;
constexpr std::size_t kThreads = 4;
constexpr std::size_t kBatches = 400;
constexpr std::int64_t kRows = 17;

// y = x0 + x1 - x2, one output column.
class SumRunner final : public Runner {
 public:
  std::vector<Tensor> run(const Batch& batch) override {
    const auto* x = reinterpret_cast<const float*>(batch.inputs.front().data.get());
    std::uint8_t* out = nullptr;
    Tensor y = Tensor::allocate(DataType::kFp32, {batch.rows, 1},
                                static_cast<std::size_t>(batch.rows) * sizeof(float), &out);
    auto* values = reinterpret_cast<float*>(out);
    for (std::int64_t r = 0; r < batch.rows; ++r) {
      values[r] = x[r * kInputs] + x[r * kInputs + 1] - x[r * kInputs + 2];
    }
    return {y};
  }
};

Tensor make_input(std::mt19937& rng, std::int64_t rows, std::vector<float>& copy) {
  std::normal_distribution<float> normal(0.0F, 1.0F);
  std::uint8_t* out = nullptr;
  const auto count = static_cast<std::size_t>(rows * kInputs);
  Tensor x = Tensor::allocate(DataType::kFp32, {rows, kInputs}, count * sizeof(float), &out);
  auto* values = reinterpret_cast<float*>(out);
  for (std::size_t i = 0; i < count; ++i) values[i] = normal(rng);
  copy.assign(values, values + count);
  return x;
}

}  // namespace

int main() {
  BinLayout layout;
  const std::vector<double> edges = {-1.5, -0.5, 0.0, 0.5, 1.5};
  for (int f = 0; f < kInputs + 1; ++f) layout.add_numerical(edges);
  DriftAccumulatorOptions options;
  options.windows_kept = 4;
  auto accumulator = std::make_shared<DriftAccumulator>(layout, options, nullptr);
  DriftCountingRunner runner(std::make_shared<SumRunner>(), accumulator);

  std::vector<std::vector<float>> gathered(kThreads);  // [rows, 4] per thread, as counted
  std::vector<std::thread> threads;
  for (std::size_t t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(static_cast<std::uint32_t>(t + 1));
      std::vector<float> x;
      for (std::size_t b = 0; b < kBatches; ++b) {
        Batch batch;
        batch.inputs.push_back(make_input(rng, kRows, x));
        batch.rows = kRows;
        const std::vector<Tensor> outputs = runner.run(batch);
        const auto* y = reinterpret_cast<const float*>(outputs.front().data.get());
        for (std::int64_t r = 0; r < kRows; ++r) {
          for (std::int64_t f = 0; f < kInputs; ++f) {
            gathered[t].push_back(x[static_cast<std::size_t>(r * kInputs + f)]);
          }
          gathered[t].push_back(y[r]);
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();

  // A batch that does not fit (FP64 input) runs but is not counted.
  {
    std::uint8_t* out = nullptr;
    Batch batch;
    batch.inputs.push_back(Tensor::allocate(DataType::kFp64, {2, kInputs},
                                            2 * kInputs * sizeof(double), &out));
    std::memset(out, 0, 2 * kInputs * sizeof(double));
    batch.rows = 2;
    class Echo final : public Runner {
     public:
      std::vector<Tensor> run(const Batch& b) override { return b.inputs; }
    };
    DriftCountingRunner misfit(std::make_shared<Echo>(), accumulator);
    expect(misfit.run(batch).size() == 1, "a misfit batch still runs");
    expect(misfit.skipped_batches() == 1 && misfit.counted_batches() == 0,
           "a misfit batch is skipped");
  }

  std::vector<std::uint64_t> expected(layout.total_bins(), 0);
  for (const auto& rows : gathered) {
    layout.count_rows(rows.data(), rows.size() / (kInputs + 1), expected);
  }
  const auto open = accumulator->open_snapshot();
  expect(open.rows == kThreads * kBatches * kRows, "every row counted once");
  expect(open.counts == expected, "counts equal a single-threaded count of inputs and outputs");
  expect(runner.counted_batches() == kThreads * kBatches && runner.skipped_batches() == 0,
         "every batch counted");
  if (failures == 0) std::printf("drift_counting_runner_test: ok\n");
  return failures == 0 ? 0 : 1;
}
