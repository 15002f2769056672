#include "batching/tensor.h"

#include <cstring>
#include <span>
#include <utility>

#include "tensors/status.h"

namespace headrace::batching {

Tensor Tensor::allocate(DataType dtype, std::vector<std::int64_t> shape, std::size_t byte_size,
                        std::uint8_t** out) {
  // make_shared_for_overwrite: the batch buffer is fully written by the copy that follows, so
  // zero-filling it first would touch every byte twice.
  std::shared_ptr<std::uint8_t[]> buffer =
      std::make_shared_for_overwrite<std::uint8_t[]>(byte_size == 0 ? 1 : byte_size);
  *out = buffer.get();
  Tensor tensor;
  tensor.dtype = dtype;
  tensor.shape = std::move(shape);
  tensor.data = std::shared_ptr<const std::uint8_t>(buffer, buffer.get());
  tensor.byte_size = byte_size;
  return tensor;
}

std::uint64_t Tensor::elements_per_row() const noexcept {
  std::uint64_t count = 1;
  for (std::size_t i = 1; i < shape.size(); ++i) count *= static_cast<std::uint64_t>(shape[i]);
  return count;
}

std::string_view datatype_name(DataType dtype) noexcept {
  switch (dtype) {
    case DataType::kBool: return "BOOL";
    case DataType::kUint8: return "UINT8";
    case DataType::kUint16: return "UINT16";
    case DataType::kUint32: return "UINT32";
    case DataType::kUint64: return "UINT64";
    case DataType::kInt8: return "INT8";
    case DataType::kInt16: return "INT16";
    case DataType::kInt32: return "INT32";
    case DataType::kInt64: return "INT64";
    case DataType::kFp16: return "FP16";
    case DataType::kFp32: return "FP32";
    case DataType::kFp64: return "FP64";
    case DataType::kBf16: return "BF16";
    case DataType::kBytes: return "BYTES";
  }
  return "UNKNOWN";
}

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
    const std::uint64_t row_bytes = per_row * tensors::element_size(tensor.dtype);
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
    const std::uint64_t row_bytes = per_row * tensors::element_size(tensor.dtype);
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

}  // namespace headrace::batching
