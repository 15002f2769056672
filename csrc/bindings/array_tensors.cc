#include "bindings/array_tensors.h"

#include <cstdint>
#include <memory>
#include <span>
#include <utility>
#include <vector>

#include "bindings/bytes_objects.h"
#include "common/status.h"
#include "tensors/tensor_codec.h"

namespace py = pybind11;

namespace headrace::bindings {
namespace {


// Keeps a Python object alive for as long as C++ references `data`; the last reference may be
// dropped on any thread, so the deleter takes the GIL.
std::shared_ptr<const std::uint8_t> python_owned(py::object object, const void* data) {
  std::shared_ptr<PyObject> holder(object.release().ptr(), [](PyObject* held) {
    py::gil_scoped_acquire gil;
    Py_DECREF(held);
  });
  return std::shared_ptr<const std::uint8_t>(holder, static_cast<const std::uint8_t*>(data));
}

DataType datatype_of(const py::dtype& dtype, const std::string& what) {
  const char kind = dtype.kind();
  const auto size = dtype.itemsize();
  if (kind != 'O' && size > 1 && dtype.byteorder() == '>') {
    throw_invalid_argument(what + ": big-endian arrays are not supported; convert to native byte order");
  }
  switch (kind) {
    case 'b':
      return DataType::kBool;
    case 'u':
      if (size == 1) return DataType::kUint8;
      if (size == 2) return DataType::kUint16;  // also bfloat16 passed as a uint16 view
      if (size == 4) return DataType::kUint32;
      if (size == 8) return DataType::kUint64;
      break;
    case 'i':
      if (size == 1) return DataType::kInt8;
      if (size == 2) return DataType::kInt16;
      if (size == 4) return DataType::kInt32;
      if (size == 8) return DataType::kInt64;
      break;
    case 'f':
      if (size == 2) return DataType::kFp16;
      if (size == 4) return DataType::kFp32;
      if (size == 8) return DataType::kFp64;
      break;
    case 'O':
      return DataType::kBytes;
    default:
      break;
  }
  throw_invalid_argument(what + ": unsupported numpy dtype '" + py::str(dtype).cast<std::string>() + "'");
}

py::dtype numpy_dtype(DataType dtype) {
  switch (dtype) {
    case DataType::kBool: return py::dtype("?");
    case DataType::kUint8: return py::dtype("u1");
    case DataType::kUint16: return py::dtype("u2");
    case DataType::kUint32: return py::dtype("u4");
    case DataType::kUint64: return py::dtype("u8");
    case DataType::kInt8: return py::dtype("i1");
    case DataType::kInt16: return py::dtype("i2");
    case DataType::kInt32: return py::dtype("i4");
    case DataType::kInt64: return py::dtype("i8");
    case DataType::kFp16: return py::dtype("f2");
    case DataType::kFp32: return py::dtype("f4");
    case DataType::kFp64: return py::dtype("f8");
    case DataType::kBf16: return py::dtype("u2");  // numpy has no bfloat16: a uint16 view
    case DataType::kBytes: return py::dtype("O");
  }
  return py::dtype("O");
}

// BYTES elements (bytes or str) serialized once, so that the core batches them as plain bytes.
Tensor bytes_tensor_from_array(const py::array& array, std::vector<std::int64_t> shape,
                               const std::string& what) {
  auto blob = std::make_shared<std::string>(encode_bytes_objects(array, what));
  Tensor tensor;
  tensor.dtype = DataType::kBytes;
  tensor.shape = std::move(shape);
  tensor.byte_size = blob->size();
  const auto* bytes = reinterpret_cast<const std::uint8_t*>(blob->data());
  tensor.data = std::shared_ptr<const std::uint8_t>(std::move(blob), bytes);
  return tensor;
}

}  // namespace

// A numpy array as a tensor: fixed-size dtypes by reference (made C-contiguous if needed), object
// arrays serialized. Needs the GIL.
Tensor tensor_from_array(py::handle object, const std::string& what) {
  if (!py::isinstance<py::array>(object)) {
    throw_invalid_argument(what + " is not a numpy array (got " +
            py::str(py::type::of(object)).cast<std::string>() + ")");
  }
  py::array array = py::reinterpret_borrow<py::array>(object);
  const DataType dtype = datatype_of(array.dtype(), what);
  std::vector<std::int64_t> shape(array.shape(), array.shape() + array.ndim());
  if (dtype == DataType::kBytes) return bytes_tensor_from_array(array, std::move(shape), what);
  if (!(array.flags() & py::array::c_style)) {
    // A strided view costs one extra copy here; contiguous arrays (the usual case) are borrowed.
    array = py::array::ensure(py::module_::import("numpy").attr("ascontiguousarray")(array));
  }
  Tensor tensor;
  tensor.dtype = dtype;
  tensor.shape = std::move(shape);
  tensor.byte_size = static_cast<std::size_t>(array.nbytes());
  const void* data = array.data();
  tensor.data = python_owned(std::move(array), data);
  return tensor;
}

// A tensor as a numpy array: fixed-size dtypes wrap the tensor's bytes (the capsule keeps the
// owner alive), BYTES is decoded into an object array of bytes. Needs the GIL.
py::array array_from_tensor(const Tensor& tensor) {
  std::vector<py::ssize_t> shape(tensor.shape.begin(), tensor.shape.end());
  if (tensor.dtype == DataType::kBytes) {
    std::uint64_t count = 1;
    for (const std::int64_t dim : tensor.shape) count *= static_cast<std::uint64_t>(dim);
    const std::span<const std::uint8_t> blob(tensor.data.get(), tensor.byte_size);
    const std::vector<std::uint64_t> spans = tensors::bytes_element_spans(blob, count, "output");
    py::array out(py::dtype("O"), shape);
    auto** slots = static_cast<PyObject**>(out.mutable_data());
    for (std::uint64_t i = 0; i < count; ++i) {
      const char* start = reinterpret_cast<const char*>(blob.data() + spans[2 * i]);
      PyObject* element =
          PyBytes_FromStringAndSize(start, static_cast<py::ssize_t>(spans[2 * i + 1]));
      if (element == nullptr) throw py::error_already_set();
      Py_XDECREF(slots[i]);
      slots[i] = element;
    }
    return out;
  }
  auto* keep = new std::shared_ptr<const std::uint8_t>(tensor.data);
  py::capsule base(keep, [](void* pointer) {
    delete static_cast<std::shared_ptr<const std::uint8_t>*>(pointer);
  });
  return py::array(numpy_dtype(tensor.dtype), shape, tensor.data.get(), base);
}

}  // namespace headrace::bindings
