#include "bindings/wire_bytes.h"

#include <cstring>
#include <memory>

#include "tensors/tensor_codec.h"

namespace py = pybind11;

namespace headrace::bindings {

std::span<const std::uint8_t> WireBytesTensor::blob() const {
  const auto* data = reinterpret_cast<const std::uint8_t*>(PyBytes_AS_STRING(message.ptr()));
  return {data + offset_bytes, size_bytes};
}

py::array WireBytesTensor::to_numpy() const {
  const std::span<const std::uint8_t> bytes = blob();
  if (!validated) tensors::validate_bytes_elements(bytes, count, name);
  std::vector<py::ssize_t> out_shape(shape.begin(), shape.end());
  py::array out(py::dtype("O"), out_shape);
  auto** slots = static_cast<PyObject**>(out.mutable_data());
  std::size_t pos = 0;
  for (std::uint64_t i = 0; i < count; ++i) {
    // Validated above: every prefix and payload lies inside the blob.
    std::uint32_t length = 0;
    std::memcpy(&length, bytes.data() + pos, 4);
    pos += 4;
    PyObject* element = PyBytes_FromStringAndSize(reinterpret_cast<const char*>(bytes.data() + pos),
                                                  static_cast<py::ssize_t>(length));
    if (element == nullptr) throw py::error_already_set();
    pos += length;
    // numpy fills a fresh object array with references to None; replace them one by one.
    Py_XDECREF(slots[i]);
    slots[i] = element;
  }
  return out;
}

std::optional<std::uint64_t> WireBytesTensor::first_non_utf8_element() const {
  return tensors::first_non_utf8_element(blob(), count, name);
}

Tensor WireBytesTensor::tensor() const {
  // The message stays alive as long as the tensor (or a batch view of it) does; dropping the
  // last reference may happen on a worker thread, hence the GIL in the deleter.
  std::shared_ptr<PyObject> holder(py::object(message).release().ptr(), [](PyObject* held) {
    py::gil_scoped_acquire gil;
    Py_DECREF(held);
  });
  const std::span<const std::uint8_t> bytes = blob();
  Tensor tensor;
  tensor.dtype = DataType::kBytes;
  tensor.shape = shape;
  tensor.byte_size = bytes.size();
  tensor.data = std::shared_ptr<const std::uint8_t>(std::move(holder), bytes.data());
  return tensor;
}

}  // namespace headrace::bindings
