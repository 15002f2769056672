// Bindings for csrc/tensors: request validation and the BYTES codec.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "bindings/register.h"
#include "tensors/status.h"
#include "tensors/tensor_codec.h"

namespace py = pybind11;

namespace headrace::bindings {
namespace {

// Shape products are held in uint64 and multiplied by an element size of at most 8; keeping the
// limit under 2^60 keeps that product exact.
constexpr std::uint64_t kMaxElementsCeiling = std::uint64_t{1} << 60;

std::uint64_t clamp_limit(std::uint64_t max_elements) {
  return max_elements < kMaxElementsCeiling ? max_elements : kMaxElementsCeiling;
}

std::span<const std::uint8_t> buffer_bytes(const py::buffer_info& info) {
  return {static_cast<const std::uint8_t*>(info.ptr), static_cast<std::size_t>(info.size) *
                                                          static_cast<std::size_t>(info.itemsize)};
}

py::array decode_bytes(const py::buffer& blob, std::uint64_t count, const std::string& name) {
  py::buffer_info info = blob.request();
  const auto bytes = buffer_bytes(info);
  const std::vector<std::uint64_t> spans = tensors::bytes_element_spans(bytes, count, name);
  std::vector<py::ssize_t> out_shape{static_cast<py::ssize_t>(count)};
  py::array out(py::dtype("object"), out_shape);
  auto** slots = static_cast<PyObject**>(out.mutable_data());
  for (std::uint64_t i = 0; i < count; ++i) {
    const char* start = reinterpret_cast<const char*>(bytes.data() + spans[2 * i]);
    PyObject* element = PyBytes_FromStringAndSize(start, static_cast<py::ssize_t>(spans[2 * i + 1]));
    if (element == nullptr) throw py::error_already_set();
    // numpy fills a fresh object array with references to None; replace them one by one.
    Py_XDECREF(slots[i]);
    slots[i] = element;
  }
  return out;
}

py::bytes encode_bytes(const py::array& elements, const std::string& name) {
  if (elements.dtype().kind() != 'O') {
    throw CoreError(StatusCode::kInvalidArgument,
                    "output '" + name + "': BYTES tensors must be numpy object arrays");
  }
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
                      "output '" + name + "': BYTES element " + std::to_string(i) +
                          " is neither bytes nor str");
    }
    views.emplace_back(data, static_cast<std::size_t>(length));
  }
  const std::string blob = tensors::encode_bytes_elements(views, name);
  return py::bytes(blob.data(), blob.size());
}

}  // namespace

void register_tensors(py::module_& m) {
  m.def(
      "validate_raw_tensor",
      [](const std::string& datatype, const std::vector<std::int64_t>& shape,
         std::size_t raw_byte_size, std::uint64_t max_elements, const std::string& name) {
        return tensors::validate_raw_tensor(datatype, shape, raw_byte_size,
                                            clamp_limit(max_elements), name);
      },
      py::arg("datatype"), py::arg("shape"), py::arg("raw_byte_size"), py::arg("max_elements"),
      py::arg("name"),
      "Check a raw tensor's datatype, shape and byte size; return its element count.");
  m.def(
      "checked_element_count",
      [](const std::vector<std::int64_t>& shape, std::uint64_t max_elements,
         const std::string& name) {
        return tensors::checked_element_count(shape, clamp_limit(max_elements), name);
      },
      py::arg("shape"), py::arg("max_elements"), py::arg("name"),
      "Element count of a shape, refusing negative dims and products over the limit.");
  m.def("decode_bytes", &decode_bytes, py::arg("blob"), py::arg("count"), py::arg("name"),
        "Split a length-prefixed BYTES blob into a 1-D numpy object array of bytes.");
  m.def("encode_bytes", &encode_bytes, py::arg("elements"), py::arg("name"),
        "Serialize a numpy object array of bytes/str as length-prefixed BYTES.");
}

}  // namespace headrace::bindings
