// numpy arrays <-> core tensors, shared by the bindings that hand tensors to the core (the
// batcher, the ONNX Runtime model).
//
// Threading: every function needs the GIL. Ownership: a tensor made from a fixed-size array
// borrows the array's memory and keeps the array alive through an owner whose deleter takes the
// GIL (so the tensor may be dropped on any thread); an array made from a tensor wraps the
// tensor's bytes and keeps its owner alive through a capsule.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "common/tensor.h"

namespace headrace::bindings {

// A numpy array as a tensor: fixed-size dtypes by reference (made C-contiguous if needed), object
// arrays serialized as BYTES. Throws CoreError(kInvalidArgument) naming `what`.
Tensor tensor_from_array(pybind11::handle object, const std::string& what);

// A tensor as a numpy array: fixed-size dtypes wrap the tensor's bytes, BYTES becomes an object
// array of bytes.
pybind11::array array_from_tensor(const Tensor& tensor);

}  // namespace headrace::bindings
