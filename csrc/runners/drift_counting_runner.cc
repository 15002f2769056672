#include "runners/drift_counting_runner.h"

#include <algorithm>
#include <cstddef>
#include <utility>

namespace headrace::runners {

DriftCountingRunner::DriftCountingRunner(std::shared_ptr<batching::Runner> inner,
                                         std::shared_ptr<drift::DriftAccumulator> accumulator)
    : inner_(std::move(inner)), accumulator_(std::move(accumulator)) {}

std::vector<Tensor> DriftCountingRunner::run(const batching::Batch& batch) {
  std::vector<Tensor> outputs = inner_->run(batch);
  if (count(batch, outputs)) {
    counted_.fetch_add(1, std::memory_order_relaxed);
  } else {
    skipped_.fetch_add(1, std::memory_order_relaxed);
  }
  return outputs;
}

bool DriftCountingRunner::count(const batching::Batch& batch,
                                const std::vector<Tensor>& outputs) {
  const auto rows = static_cast<std::size_t>(batch.rows);
  std::vector<const Tensor*> tensors;
  tensors.reserve(batch.inputs.size() + outputs.size());
  for (const auto& t : batch.inputs) tensors.push_back(&t);
  for (const auto& t : outputs) tensors.push_back(&t);
  std::size_t width = 0;
  for (const Tensor* t : tensors) {
    if (t->dtype != DataType::kFp32 || t->shape.empty() ||
        static_cast<std::size_t>(t->rows()) != rows ||
        t->byte_size < rows * t->elements_per_row() * sizeof(float)) {
      return false;
    }
    width += t->elements_per_row();
  }
  if (width != accumulator_->layout().feature_count()) return false;
  if (tensors.size() == 1) {
    accumulator_->observe(reinterpret_cast<const float*>(tensors.front()->data.get()), rows);
    return true;
  }
  thread_local std::vector<float> scratch;
  scratch.resize(rows * width);
  std::size_t column = 0;
  for (const Tensor* t : tensors) {
    const std::size_t per_row = t->elements_per_row();
    const auto* source = reinterpret_cast<const float*>(t->data.get());
    for (std::size_t r = 0; r < rows; ++r) {
      std::copy_n(source + r * per_row, per_row, scratch.data() + r * width + column);
    }
    column += per_row;
  }
  accumulator_->observe(scratch.data(), rows);
  return true;
}

}  // namespace headrace::runners
