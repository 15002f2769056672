#include "batching/batch_assembly.h"

#include <cstring>
#include <numeric>
#include <optional>
#include <string>

#include "tensors/status.h"

namespace headrace::batching {

Batch assemble_batch(std::span<const std::unique_ptr<Request>> requests) {
  Batch batch;
  batch.requests = requests.size();
  if (requests.empty()) return batch;
  for (const auto& request : requests) batch.rows += request->rows;
  const std::vector<Tensor>& head = requests.front()->inputs;
  batch.inputs.reserve(head.size());
  for (std::size_t k = 0; k < head.size(); ++k) {
    std::size_t bytes = 0;
    for (const auto& request : requests) bytes += request->inputs[k].byte_size;
    std::vector<std::int64_t> shape = head[k].shape;
    shape.front() = batch.rows;
    std::uint8_t* out = nullptr;
    Tensor tensor = Tensor::allocate(head[k].dtype, std::move(shape), bytes, &out);
    for (const auto& request : requests) {
      const Tensor& input = request->inputs[k];
      if (input.byte_size > 0) std::memcpy(out, input.data.get(), input.byte_size);
      out += input.byte_size;
    }
    batch.inputs.push_back(std::move(tensor));
  }
  return batch;
}

std::vector<std::vector<Tensor>> scatter_outputs(const std::vector<Tensor>& outputs,
                                                 std::span<const std::int64_t> rows) {
  const std::int64_t total = std::accumulate(rows.begin(), rows.end(), std::int64_t{0});
  std::vector<std::vector<Tensor>> result(rows.size());
  for (auto& per_request : result) per_request.reserve(outputs.size());
  for (std::size_t k = 0; k < outputs.size(); ++k) {
    const Tensor& output = outputs[k];
    const std::string what = "runner output " + std::to_string(k);
    if (output.shape.empty() || output.rows() != total) {
      throw CoreError(StatusCode::kInternal,
                      what + " has " +
                          (output.shape.empty() ? std::string("no batch dimension")
                                                : std::to_string(output.rows()) + " rows") +
                          "; the batch has " + std::to_string(total) + " rows");
    }
    // No per-row table for fixed-size outputs: however many rows the batch declares, the
    // split costs one view per request.
    std::optional<RowOffsets> offsets;
    try {
      offsets.emplace(output, what);
    } catch (const CoreError& error) {
      throw CoreError(StatusCode::kInternal, error.message());
    }
    std::size_t row = 0;
    for (std::size_t r = 0; r < rows.size(); ++r) {
      const auto count = static_cast<std::size_t>(rows[r]);
      const std::size_t start = offsets->start(row);
      Tensor view;
      view.dtype = output.dtype;
      view.shape = output.shape;
      view.shape.front() = rows[r];
      view.data = std::shared_ptr<const std::uint8_t>(output.data, output.data.get() + start);
      view.byte_size = offsets->start(row + count) - start;
      result[r].push_back(std::move(view));
      row += count;
    }
  }
  return result;
}

}  // namespace headrace::batching
