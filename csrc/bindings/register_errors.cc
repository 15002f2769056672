// The one translation between core errors and Python exceptions, registered once for every
// binding of the module:
//   - C++ -> Python: a CoreError(code, message) escaping any binding is raised as the typed
//     exception of the pure-Python module headrace.errors that the code maps to
//     (headrace.errors.error_for_code: InvalidArgumentError, NotFoundError, UnavailableError,
//     DeadlineExceededError, CancelledError, UnimplementedError, InternalError; a code without a
//     class of its own gives HeadraceError with .code set). _core.CoreError is an alias of
//     headrace.errors.HeadraceError, so `except _core.CoreError` catches all of them.
//   - Python -> C++: an exception raised by a Python runner becomes the CoreError that
//     headrace.errors.runner_failure says it reads as (a HeadraceError keeps its code and
//     message; anything else is INTERNAL "model runner failed: <Type>: <message>").
//
// Threading: both directions run with the GIL held (exception translators always do; the
// Python runner holds it while it calls). The two functions of headrace.errors are looked up once
// at module init and kept for the life of the process: translation may still happen while the
// interpreter shuts down, after module objects are gone.
#include <pybind11/pybind11.h>

#include <exception>
#include <string>

#include "bindings/errors.h"
#include "bindings/register.h"
#include "common/status.h"

namespace py = pybind11;

namespace headrace::bindings {
namespace {

// Owned references, never released (see above).
PyObject* error_for_code = nullptr;
PyObject* runner_failure_of = nullptr;

// Raises the typed exception for (code, message) as the current Python error.
void raise_typed(StatusCode code, const std::string& message) {
  // Messages may quote request bytes (a tensor name): never fail on invalid UTF-8.
  PyObject* text = PyUnicode_DecodeUTF8(message.data(), static_cast<Py_ssize_t>(message.size()),
                                        "replace");
  if (text == nullptr) return;  // MemoryError is set
  PyObject* error =
      PyObject_CallFunction(error_for_code, "iO", static_cast<int>(code), text);
  Py_DECREF(text);
  if (error == nullptr) return;  // error_for_code itself failed: its exception stands
  PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(error)), error);
  Py_DECREF(error);
}

}  // namespace

CoreError runner_failure(const py::error_already_set& failure) {
  try {
    const py::object& value = failure.value();
    // The traceback travels beside the exception here; put it back for the log.
    if (failure.trace() && !failure.trace().is_none()) {
      PyException_SetTraceback(value.ptr(), failure.trace().ptr());
    }
    const py::object typed = py::reinterpret_borrow<py::object>(runner_failure_of)(value);
    const int code = typed.attr("code").cast<int>();
    return CoreError(static_cast<StatusCode>(code), typed.attr("message").cast<std::string>());
  } catch (const py::error_already_set&) {
    return CoreError(StatusCode::kInternal, "model runner failed");
  } catch (const py::cast_error&) {
    return CoreError(StatusCode::kInternal, "model runner failed");
  }
}

void register_errors(py::module_& m) {
  const py::module_ errors = py::module_::import("headrace.errors");
  error_for_code = py::object(errors.attr("error_for_code")).release().ptr();
  runner_failure_of = py::object(errors.attr("runner_failure")).release().ptr();
  m.attr("CoreError") = errors.attr("HeadraceError");
  py::register_exception_translator([](std::exception_ptr pointer) {
    try {
      if (pointer) std::rethrow_exception(pointer);
    } catch (const CoreError& error) {
      raise_typed(error.code(), error.message());
    }
  });
}

}  // namespace headrace::bindings
