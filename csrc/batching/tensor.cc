#include "batching/tensor.h"

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
  const std::size_t item = tensors::element_size(tensor.dtype);
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

}  // namespace headrace::batching
