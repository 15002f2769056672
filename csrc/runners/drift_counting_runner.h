// DriftCountingRunner: a batching::Runner decorator that counts every batch's inputs and outputs
// into a DriftAccumulator after the wrapped runner ran it. It serves native runners (the int8
// model), whose batches never reach Python, so drift counting stays as GIL-free as the model.
//
// Features are the columns of the FP32 input tensors in order, then those of the output tensors,
// each tensor flattened to [rows, elements_per_row]; their total must equal the accumulator's
// feature count. A batch that does not fit (another datatype, other widths) is not counted and
// adds one to skipped_batches(): monitoring never fails a batch.
//
// Ownership/threading: shares the wrapped runner and the accumulator. run() may be called by any
// number of workers at once (as the wrapped runner allows); the row-major scratch buffer the
// counted rows are gathered into is per thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "batching/runner.h"
#include "drift/drift_accumulator.h"

namespace headrace::runners {

class DriftCountingRunner final : public batching::Runner {
 public:
  DriftCountingRunner(std::shared_ptr<batching::Runner> inner,
                      std::shared_ptr<drift::DriftAccumulator> accumulator);

  std::vector<Tensor> run(const batching::Batch& batch) override;
  bool runs_on_submitting_thread() const noexcept override {
    return inner_->runs_on_submitting_thread();
  }

  std::uint64_t counted_batches() const noexcept { return counted_.load(std::memory_order_relaxed); }
  std::uint64_t skipped_batches() const noexcept { return skipped_.load(std::memory_order_relaxed); }

 private:
  // Gathers the batch's features row-major and counts them; false if the batch does not fit.
  bool count(const batching::Batch& batch, const std::vector<Tensor>& outputs);

  std::shared_ptr<batching::Runner> inner_;
  std::shared_ptr<drift::DriftAccumulator> accumulator_;
  std::atomic<std::uint64_t> counted_{0};
  std::atomic<std::uint64_t> skipped_{0};
};

}  // namespace headrace::runners
