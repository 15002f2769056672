// Declarations of the per-area binding functions, defined in register_<area>.cc.
#pragma once

#include <pybind11/pybind11.h>

namespace headrace::bindings {

// Must run first: the others' errors are translated through it.
void register_errors(pybind11::module_& m);
void register_tensors(pybind11::module_& m);
void register_batching(pybind11::module_& m);
void register_quant(pybind11::module_& m);
void register_drift(pybind11::module_& m);
void register_runners(pybind11::module_& m);
// csrc/cuda: device discovery, the device GEMM entry points, CudaMlp (its runner is in runners).
void register_cuda(pybind11::module_& m);
// _core.testing: bindings that exist only for tests (harnesses, emulations).
void register_testing(pybind11::module_& m);
// The csrc/cuda part of _core.testing (fragment packings, CPU emulations of the kernels); called
// by register_testing with the testing submodule.
void register_cuda_testing(pybind11::module_& testing);

}  // namespace headrace::bindings
