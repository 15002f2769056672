// headrace._core: the private native module. One register_<area>() per folder of csrc/; this file
// only wires them together and installs the error translation shared by all of them.
#include <pybind11/pybind11.h>

#include "bindings/register.h"
#include "tensors/status.h"

namespace py = pybind11;

PYBIND11_MODULE(_core, m) {
  m.doc() = "headrace native core (private: use the headrace package's public API)";

  // CoreError(code, message): code is a gRPC canonical status code. headrace.errors maps it to a
  // typed exception; keeping the code numeric here keeps this module free of Python policy.
  static py::exception<headrace::CoreError> core_error(m, "CoreError", PyExc_RuntimeError);
  py::register_exception_translator([](std::exception_ptr ptr) {
    try {
      if (ptr) std::rethrow_exception(ptr);
    } catch (const headrace::CoreError& error) {
      py::object args = py::make_tuple(static_cast<int>(error.code()), error.message());
      PyErr_SetObject(core_error.ptr(), args.ptr());
    }
  });

  headrace::bindings::register_tensors(m);
  headrace::bindings::register_batching(m);
  headrace::bindings::register_quant(m);
  headrace::bindings::register_drift(m);
  headrace::bindings::register_ort(m);
  headrace::bindings::register_cuda(m);
  // A new csrc/ area adds its register_<area>(m) here.
}
