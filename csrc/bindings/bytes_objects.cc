#include "bindings/bytes_objects.h"

#include <string_view>
#include <vector>

#include "common/status.h"
#include "tensors/tensor_codec.h"

namespace py = pybind11;

namespace headrace::bindings {

std::string encode_bytes_objects(const py::array& elements, const std::string& what) {
  py::array flat = py::array::ensure(elements.attr("ravel")());
  const auto count = static_cast<std::size_t>(flat.size());
  auto* const* slots = static_cast<PyObject* const*>(flat.data());
  std::vector<std::string_view> views;
  views.reserve(count);
  std::vector<py::object> keep_alive;  // UTF-8 encodings of str elements
  for (std::size_t i = 0; i < count; ++i) {
    PyObject* item = slots[i];
    char* data = nullptr;
    Py_ssize_t length = 0;
    if (PyBytes_Check(item)) {
      PyBytes_AsStringAndSize(item, &data, &length);
    } else if (PyUnicode_Check(item)) {
      py::object encoded = py::reinterpret_steal<py::object>(PyUnicode_AsUTF8String(item));
      if (!encoded) throw py::error_already_set();
      PyBytes_AsStringAndSize(encoded.ptr(), &data, &length);
      keep_alive.push_back(std::move(encoded));
    } else {
      throw CoreError(StatusCode::kInvalidArgument,
                      what + ": BYTES element " + std::to_string(i) + " is neither bytes nor str");
    }
    views.emplace_back(data, static_cast<std::size_t>(length));
  }
  return tensors::encode_bytes_elements(views, what);
}

}  // namespace headrace::bindings
