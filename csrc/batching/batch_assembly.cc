#include "batching/batch_assembly.h"

#include <cstring>
#include <numeric>
#include <string>

#include "common/status.h"
#include "tensors/tensor_codec.h"

namespace headrace::batching {

std::vector<std::size_t> row_byte_offsets(const Tensor& tensor, std::string_view what) {
  if (tensor.shape.empty()) {
    throw CoreError(StatusCode::kInvalidArgument,
                    std::string(what) + ": a batched tensor needs at least one dimension");
  }
  for (const std::int64_t dim : tensor.shape) {
    if (dim < 0) {
      throw CoreError(StatusCode::kInvalidArgument, std::string(what) + ": negative dimension");
    }
  }
  const auto rows = static_cast<std::size_t>(tensor.rows());
  const std::uint64_t per_row = tensor.elements_per_row();
  std::vector<std::size_t> offsets(rows + 1, 0);
  const std::size_t item = element_size(tensor.dtype);
  if (tensor.dtype != DataType::kBytes) {
    const std::size_t row_bytes = static_cast<std::size_t>(per_row) * item;
    if (row_bytes * rows != tensor.byte_size) {
      throw CoreError(StatusCode::kInvalidArgument,
                      std::string(what) + ": " + std::to_string(tensor.byte_size) +
                          " bytes do not match its shape");
    }
    for (std::size_t r = 0; r <= rows; ++r) offsets[r] = r * row_bytes;
    return offsets;
  }
  // BYTES: the spans validate every prefix; a row ends where its last element's payload ends.
  const std::span<const std::uint8_t> blob(tensor.data.get(), tensor.byte_size);
  const std::vector<std::uint64_t> spans =
      tensors::bytes_element_spans(blob, per_row * rows, std::string(what));
  for (std::size_t r = 1; r <= rows; ++r) {
    if (per_row == 0) break;
    const std::size_t last = r * static_cast<std::size_t>(per_row) - 1;
    offsets[r] = static_cast<std::size_t>(spans[2 * last] + spans[2 * last + 1]);
  }
  if (per_row == 0) return offsets;
  offsets[rows] = tensor.byte_size;
  return offsets;
}

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
    std::vector<std::size_t> offsets;
    try {
      offsets = row_byte_offsets(output, what);
    } catch (const CoreError& error) {
      throw CoreError(StatusCode::kInternal, error.message());
    }
    std::size_t row = 0;
    for (std::size_t r = 0; r < rows.size(); ++r) {
      const auto count = static_cast<std::size_t>(rows[r]);
      Tensor view;
      view.dtype = output.dtype;
      view.shape = output.shape;
      view.shape.front() = rows[r];
      view.data = std::shared_ptr<const std::uint8_t>(output.data, output.data.get() + offsets[row]);
      view.byte_size = offsets[row + count] - offsets[row];
      result[r].push_back(std::move(view));
      row += count;
    }
  }
  return result;
}

}  // namespace headrace::batching
