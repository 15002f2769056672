#include "batching/batch_assembly.h"

#include <cstring>
#include <numeric>
#include <optional>
#include <string>

#include "common/status.h"
#include "tensors/tensor_codec.h"

namespace headrace::batching {

namespace {

// Checks the shape and returns the elements per row (product of shape[1:]), refusing shapes
// whose non-zero dims multiply past RowOffsets::kMaxExtent.
std::uint64_t checked_elements_per_row(const Tensor& tensor, std::string_view what) {
  if (tensor.shape.empty()) {
    throw CoreError(StatusCode::kInvalidArgument,
                    std::string(what) + ": a batched tensor needs at least one dimension");
  }
  std::uint64_t extent = 1;   // product of the non-zero dims
  std::uint64_t per_row = 1;  // product of the non-zero dims after the first
  bool row_empty = false;
  for (std::size_t axis = 0; axis < tensor.shape.size(); ++axis) {
    const std::int64_t dim = tensor.shape[axis];
    if (dim < 0) {
      throw CoreError(StatusCode::kInvalidArgument, std::string(what) + ": negative dimension");
    }
    if (dim == 0) {
      row_empty = row_empty || axis > 0;
      continue;
    }
    const auto udim = static_cast<std::uint64_t>(dim);
    if (extent > RowOffsets::kMaxExtent / udim) {
      throw CoreError(StatusCode::kInvalidArgument,
                      std::string(what) + ": shape has more than " +
                          std::to_string(RowOffsets::kMaxExtent) + " index positions");
    }
    extent *= udim;
    if (axis > 0) per_row *= udim;  // <= extent: exact
  }
  return row_empty ? 0 : per_row;
}

// BYTES: walks the prefixes (validating them) and calls on_row_end(row, end) for each row.
template <typename OnRowEnd>
void walk_bytes_rows(const Tensor& tensor, std::uint64_t per_row, std::string_view what,
                     OnRowEnd&& on_row_end) {
  const auto rows = static_cast<std::uint64_t>(tensor.rows());
  const std::span<const std::uint8_t> blob(tensor.data.get(), tensor.byte_size);
  if (per_row == 0) {
    // Rows without elements: the blob must be empty, whatever the row count.
    tensors::validate_bytes_elements(blob, 0, what);
    return;
  }
  // per_row * rows <= the extent checked above: exact. The walk refuses a count the bytes
  // cannot hold before it does anything per element.
  tensors::validate_bytes_elements(blob, per_row * rows, what);
  std::size_t pos = 0;
  for (std::uint64_t r = 0; r < rows; ++r) {
    for (std::uint64_t e = 0; e < per_row; ++e) {
      std::uint32_t length = 0;
      std::memcpy(&length, blob.data() + pos, 4);  // validated above
      pos += 4 + length;
    }
    on_row_end(r, pos);
  }
}

}  // namespace

RowOffsets::RowOffsets(const Tensor& tensor, std::string_view what) {
  const std::uint64_t per_row = checked_elements_per_row(tensor, what);
  const auto rows = static_cast<std::uint64_t>(tensor.rows());
  if (tensor.dtype != DataType::kBytes) {
    const std::uint64_t row_bytes = per_row * element_size(tensor.dtype);
    // rows * row_bytes <= kMaxExtent * 8: exact in 64 bits.
    if (rows * row_bytes != tensor.byte_size) {
      throw CoreError(StatusCode::kInvalidArgument,
                      std::string(what) + ": " + std::to_string(tensor.byte_size) +
                          " bytes do not match its shape");
    }
    row_bytes_ = static_cast<std::size_t>(row_bytes);
    return;
  }
  if (per_row == 0) {
    walk_bytes_rows(tensor, per_row, what, [](std::uint64_t, std::size_t) {});
    return;  // every row starts at 0 (row_bytes_ == 0)
  }
  // Reserved only after the walk has checked rows * per_row <= bytes / 4.
  walk_bytes_rows(tensor, per_row, what, [this, rows](std::uint64_t row, std::size_t end) {
    if (row == 0) {
      table_.reserve(static_cast<std::size_t>(rows) + 1);
      table_.push_back(0);
    }
    table_.push_back(end);
  });
}

void RowOffsets::validate(const Tensor& tensor, std::string_view what) {
  const std::uint64_t per_row = checked_elements_per_row(tensor, what);
  if (tensor.dtype != DataType::kBytes) {
    const std::uint64_t row_bytes = per_row * element_size(tensor.dtype);
    if (static_cast<std::uint64_t>(tensor.rows()) * row_bytes != tensor.byte_size) {
      throw CoreError(StatusCode::kInvalidArgument,
                      std::string(what) + ": " + std::to_string(tensor.byte_size) +
                          " bytes do not match its shape");
    }
    return;
  }
  const auto rows = static_cast<std::uint64_t>(tensor.rows());
  const std::span<const std::uint8_t> blob(tensor.data.get(), tensor.byte_size);
  tensors::validate_bytes_elements(blob, per_row * rows, what);
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
