// int8 matrices from numpy for the csrc/cuda bindings (register_cuda.cc, register_cuda_testing.cc):
// strict dtype and rank checks, and vectors back to 2-D arrays.
//
// Threading: every function needs the GIL. Ownership: a Matrix holds a reference to (or a
// C-contiguous copy of) the caller's array; to_array copies into a fresh array.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"

namespace headrace::bindings {

using Int8Array = pybind11::array_t<std::int8_t, pybind11::array::c_style | pybind11::array::forcecast>;

struct Int8Matrix {
  Int8Array array;
  std::size_t rows;
  std::size_t cols;
};

// Refuses anything but a 2-D int8 array: forcecast would otherwise quietly wrap int16 values.
inline Int8Matrix int8_matrix(const pybind11::array& array, const char* what) {
  if (array.dtype().num() != pybind11::dtype::of<std::int8_t>().num() || array.ndim() != 2) {
    throw_invalid_argument(std::string(what) + " must be a 2-D int8 array");
  }
  Int8Array checked = Int8Array::ensure(array);
  const auto rows = static_cast<std::size_t>(checked.shape(0));
  const auto cols = static_cast<std::size_t>(checked.shape(1));
  return {std::move(checked), rows, cols};
}

// a [m, k] times w [k, n]: k and n at least 1.
inline void require_matching(const Int8Matrix& a, const Int8Matrix& w) {
  if (a.cols != w.rows || w.rows == 0 || w.cols == 0) {
    throw_invalid_argument("a [m, k] and w [k, n] need matching k >= 1 and n >= 1");
  }
}

template <typename T>
pybind11::array_t<T> to_array(const std::vector<T>& values, std::size_t rows, std::size_t cols) {
  pybind11::array_t<T> out({static_cast<pybind11::ssize_t>(rows), static_cast<pybind11::ssize_t>(cols)});
  if (!values.empty()) std::copy(values.begin(), values.end(), out.mutable_data());
  return out;
}

}  // namespace headrace::bindings
