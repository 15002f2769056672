// Bindings for csrc/tensors: request validation, the BYTES codec and the ModelInfer wire codec.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "bindings/bytes_objects.h"
#include "bindings/register.h"
#include "tensors/infer_wire.h"
#include "common/status.h"
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

std::string encode_bytes_blob(const py::array& elements, const std::string& name) {
  if (elements.dtype().kind() != 'O') {
    throw CoreError(StatusCode::kInvalidArgument,
                    "output '" + name + "': BYTES tensors must be numpy object arrays");
  }
  return encode_bytes_objects(elements, "output '" + name + "'");
}

py::bytes encode_bytes(const py::array& elements, const std::string& name) {
  const std::string blob = encode_bytes_blob(elements, name);
  return py::bytes(blob.data(), blob.size());
}

// ---- ModelInfer wire codec ----

py::object utf8_str(std::string_view text) {
  // The parser has checked every string field for valid UTF-8.
  PyObject* out = PyUnicode_DecodeUTF8(text.data(), static_cast<py::ssize_t>(text.size()), nullptr);
  if (out == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(out);
}

py::object parameter_object(const tensors::InferParameterValue& value) {
  struct ToPython {
    py::object operator()(std::monostate) const { return py::none(); }
    py::object operator()(bool v) const { return py::bool_(v); }
    py::object operator()(std::int64_t v) const { return py::int_(v); }
    py::object operator()(std::string_view v) const { return utf8_str(v); }
    py::object operator()(double v) const { return py::float_(v); }
    py::object operator()(std::uint64_t v) const { return py::int_(v); }
  };
  return std::visit(ToPython{}, value);
}

// numpy type numbers (stable numpy ABI values); BF16 travels as uint16 bit patterns. The 64-bit
// integers go through pybind11 so that they are the platform's own np.int64/np.uint64.
int numpy_typenum(DataType dtype) {
  switch (dtype) {
    case DataType::kBool: return 0;     // NPY_BOOL
    case DataType::kInt8: return 1;     // NPY_BYTE
    case DataType::kUint8: return 2;    // NPY_UBYTE
    case DataType::kInt16: return 3;    // NPY_SHORT
    case DataType::kUint16: return 4;   // NPY_USHORT
    case DataType::kBf16: return 4;     // NPY_USHORT
    case DataType::kInt32: return 5;    // NPY_INT
    case DataType::kUint32: return 6;   // NPY_UINT
    case DataType::kInt64: return py::dtype::of<std::int64_t>().num();
    case DataType::kUint64: return py::dtype::of<std::uint64_t>().num();
    case DataType::kFp32: return 11;    // NPY_FLOAT
    case DataType::kFp64: return 12;    // NPY_DOUBLE
    case DataType::kFp16: return 23;    // NPY_HALF
    case DataType::kBytes: return 17;   // NPY_OBJECT
  }
  return 17;
}

// A raw input as a read-only numpy view of the message bytes; the array's base keeps them alive.
py::object raw_input_array(const py::bytes& message, const std::uint8_t* message_data,
                           const tensors::ParsedInferInput& input) {
  const DataType dtype = tensors::parse_datatype(input.datatype, input.name);
  std::vector<py::ssize_t> shape(input.shape.begin(), input.shape.end());
  const std::uint8_t* raw = message_data + input.raw_offset_bytes;
  if (dtype == DataType::kBytes) {
    py::array out(py::dtype(numpy_typenum(dtype)), shape);
    auto** slots = static_cast<PyObject**>(out.mutable_data());
    for (std::uint64_t i = 0; i < input.element_count; ++i) {
      const char* start = reinterpret_cast<const char*>(raw + input.bytes_spans[2 * i]);
      PyObject* element =
          PyBytes_FromStringAndSize(start, static_cast<py::ssize_t>(input.bytes_spans[2 * i + 1]));
      if (element == nullptr) throw py::error_already_set();
      Py_XDECREF(slots[i]);
      slots[i] = element;
    }
    return out;
  }
  py::array out(py::dtype(numpy_typenum(dtype)), shape, {}, raw, message);
  // pybind11 marks a view with a non-array base writeable; the bytes object is immutable.
  py::detail::array_proxy(out.ptr())->flags &= ~py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
  return out;
}

py::tuple parse_infer_request(const py::bytes& message, std::uint64_t max_elements) {
  const auto* data = reinterpret_cast<const std::uint8_t*>(PyBytes_AS_STRING(message.ptr()));
  const auto size = static_cast<std::size_t>(PyBytes_GET_SIZE(message.ptr()));
  const tensors::ParsedInferRequest request =
      tensors::parse_infer_request({data, size}, clamp_limit(max_elements));
  py::dict parameters;
  for (const auto& [key, value] : request.parameters) {
    parameters[utf8_str(key)] = parameter_object(value);
  }
  py::list inputs(request.inputs.size());
  for (std::size_t i = 0; i < request.inputs.size(); ++i) {
    const auto& input = request.inputs[i];
    py::object array = input.has_raw_contents ? raw_input_array(message, data, input) : py::none();
    inputs[i] = py::make_tuple(utf8_str(input.name), utf8_str(input.datatype), std::move(array));
  }
  py::list output_names(request.output_names.size());
  for (std::size_t i = 0; i < request.output_names.size(); ++i) {
    output_names[i] = utf8_str(request.output_names[i]);
  }
  return py::make_tuple(utf8_str(request.model_name), utf8_str(request.model_version),
                        utf8_str(request.id), std::move(parameters), std::move(inputs),
                        std::move(output_names), py::bool_(request.has_typed_contents));
}

std::string_view str_view(py::handle text, const char* what) {
  if (!PyUnicode_Check(text.ptr())) {
    throw py::type_error(std::string(what) + " must be a str");
  }
  py::ssize_t length = 0;
  const char* data = PyUnicode_AsUTF8AndSize(text.ptr(), &length);  // cached on the str
  if (data == nullptr) throw py::error_already_set();
  return {data, static_cast<std::size_t>(length)};
}

// Response parameters as (key, value) str pairs; None or empty: none. Views into the strs,
// which the caller's list keeps alive for the call.
std::vector<tensors::StringParameterView> string_parameters(const py::object& parameters) {
  std::vector<tensors::StringParameterView> views;
  if (parameters.is_none()) return views;
  const auto items = py::reinterpret_borrow<py::list>(parameters);
  views.reserve(items.size());
  for (py::handle item : items) {
    if (!PyTuple_Check(item.ptr()) || PyTuple_GET_SIZE(item.ptr()) != 2) {
      throw py::type_error("each parameter must be a (key, value) tuple of str");
    }
    views.push_back({str_view(PyTuple_GET_ITEM(item.ptr(), 0), "parameter key"),
                     str_view(PyTuple_GET_ITEM(item.ptr(), 1), "parameter value")});
  }
  return views;
}

py::bytes serialize_infer_response(const py::str& model_name, const py::str& model_version,
                                   const py::str& id, const py::list& outputs,
                                   const py::object& parameters) {
  if (!parameters.is_none() && !PyList_Check(parameters.ptr())) {
    throw py::type_error("parameters must be a list of (key, value) tuples or None");
  }
  const auto params = string_parameters(parameters);
  const std::size_t count = outputs.size();
  std::vector<tensors::InferOutputView> views(count);
  std::vector<py::array> arrays(count);    // keeps contiguous copies alive
  std::vector<std::string> blobs(count);   // BYTES outputs, length-prefixed
  std::size_t total_dims = 0;
  for (std::size_t i = 0; i < count; ++i) {
    py::handle item = outputs[i];
    if (!PyTuple_Check(item.ptr()) || PyTuple_GET_SIZE(item.ptr()) != 3) {
      throw py::type_error("each output must be a (name, datatype, array) tuple");
    }
    views[i].name = str_view(PyTuple_GET_ITEM(item.ptr(), 0), "output name");
    views[i].datatype = str_view(PyTuple_GET_ITEM(item.ptr(), 1), "output datatype");
    py::handle array = PyTuple_GET_ITEM(item.ptr(), 2);
    const std::string name(views[i].name);
    if (views[i].datatype == "BYTES") {
      py::array elements = py::array::ensure(array);
      if (!elements) throw py::type_error("output '" + name + "': not an array");
      const char kind = elements.dtype().kind();
      if (kind == 'U' || kind == 'S') elements = elements.attr("astype")(py::dtype("object"));
      blobs[i] = encode_bytes_blob(elements, name);
      views[i].raw = {reinterpret_cast<const std::uint8_t*>(blobs[i].data()), blobs[i].size()};
      arrays[i] = std::move(elements);
    } else {
      py::array contiguous = py::array::ensure(array, py::array::c_style);
      if (!contiguous) throw py::error_already_set();
      if (contiguous.dtype().kind() == 'O') {
        throw CoreError(StatusCode::kInvalidArgument,
                        "output '" + name + "': datatype " + std::string(views[i].datatype) +
                            " needs a numeric array, not an object array");
      }
      views[i].raw = {static_cast<const std::uint8_t*>(contiguous.data()),
                      static_cast<std::size_t>(contiguous.nbytes())};
      arrays[i] = std::move(contiguous);
    }
    total_dims += static_cast<std::size_t>(arrays[i].ndim());
  }
  // One buffer for every shape; reserved first so the spans below stay valid.
  std::vector<std::int64_t> dims;
  dims.reserve(total_dims);
  for (std::size_t i = 0; i < count; ++i) {
    const std::size_t start = dims.size();
    const auto ndim = static_cast<std::size_t>(arrays[i].ndim());
    for (std::size_t axis = 0; axis < ndim; ++axis) {
      dims.push_back(static_cast<std::int64_t>(arrays[i].shape()[axis]));
    }
    views[i].shape = std::span<const std::int64_t>(dims.data() + start, ndim);
  }
  const std::string_view model = str_view(model_name, "model_name");
  const std::string_view version = str_view(model_version, "model_version");
  const std::string_view request_id = str_view(id, "id");
  const std::size_t size =
      tensors::infer_response_size_bytes(model, version, request_id, views, params);
  PyObject* out = PyBytes_FromStringAndSize(nullptr, static_cast<py::ssize_t>(size));
  if (out == nullptr) throw py::error_already_set();
  auto result = py::reinterpret_steal<py::bytes>(out);
  tensors::write_infer_response(
      model, version, request_id, views,
      {reinterpret_cast<std::uint8_t*>(PyBytes_AS_STRING(out)), size}, params);
  return result;
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
  m.def("parse_infer_request", &parse_infer_request, py::arg("message"), py::arg("max_elements"),
        "Parse and validate a serialized ModelInferRequest: (model_name, model_version, id, "
        "parameters, [(name, datatype, array or None)], output_names, has_typed_contents). "
        "Raw inputs are read-only numpy views of `message`.");
  m.def("serialize_infer_response", &serialize_infer_response, py::arg("model_name"),
        py::arg("model_version"), py::arg("id"), py::arg("outputs"),
        py::arg("parameters") = py::none(),
        "Serialize a ModelInferResponse from [(name, datatype, array)] with raw output contents "
        "and [(key, value)] string response parameters.");
}

}  // namespace headrace::bindings
