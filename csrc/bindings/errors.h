// Core errors on the Python side, for binding code. The translation of CoreError into
// headrace.errors' typed exceptions is registered once (register_errors in register_errors.cc);
// this header offers the other direction.
#pragma once

#include <pybind11/pybind11.h>

#include "common/status.h"

namespace headrace::bindings {

// What a Python runner's exception reads as, decided in one place
// (headrace.errors.runner_failure): a HeadraceError keeps its code and message; any other
// exception becomes kInternal "model runner failed: <Type>: <message>" (its traceback is logged
// there, never sent). Needs the GIL.
CoreError runner_failure(const pybind11::error_already_set& failure);

}  // namespace headrace::bindings
