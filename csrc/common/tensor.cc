#include "common/tensor.h"

#include <utility>

namespace headrace {

std::size_t element_size(DataType dtype) noexcept {
  switch (dtype) {
    case DataType::kBool:
    case DataType::kUint8:
    case DataType::kInt8:
      return 1;
    case DataType::kUint16:
    case DataType::kInt16:
    case DataType::kFp16:
    case DataType::kBf16:
      return 2;
    case DataType::kUint32:
    case DataType::kInt32:
    case DataType::kFp32:
      return 4;
    case DataType::kUint64:
    case DataType::kInt64:
    case DataType::kFp64:
      return 8;
    case DataType::kBytes:
      return 0;
  }
  return 0;
}

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

}  // namespace headrace
