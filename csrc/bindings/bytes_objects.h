// BYTES tensors held by numpy as object arrays (of bytes or str), serialized into the v2 wire
// form (4-byte little-endian length + payload per element). Shared by the tensor codec and the
// batcher's bindings.
//
// Threading: needs the GIL (it reads Python objects).
#pragma once

#include <pybind11/numpy.h>

#include <string>

namespace headrace::bindings {

// `what` names the tensor in errors ("output 'y'", "input 0"). str elements are encoded UTF-8;
// any other element is CoreError(kInvalidArgument).
std::string encode_bytes_objects(const pybind11::array& elements, const std::string& what);

}  // namespace headrace::bindings
