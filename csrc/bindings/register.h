// Declarations of the per-area binding functions, defined in register_<area>.cc.
#pragma once

#include <pybind11/pybind11.h>

namespace headrace::bindings {

void register_tensors(pybind11::module_& m);
void register_batching(pybind11::module_& m);
void register_quant(pybind11::module_& m);
void register_drift(pybind11::module_& m);
void register_ort(pybind11::module_& m);
void register_cuda(pybind11::module_& m);

}  // namespace headrace::bindings
