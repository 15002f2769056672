// The operands of the int8 GEMM bindings (register_quant.cc, register_testing.cc) from numpy:
// uint8 activation codes a [m, k] laid out as the executor lays them (rows of round_up(k, 4)
// bytes, zero padded: the kernels' contract), int8 weights b [k, n].
//
// Threading: needs the GIL. Ownership: GemmOperands owns copies of both operands, so the GEMM can
// run with the GIL released.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

namespace headrace::bindings {

struct GemmOperands {
  std::size_t m, k, n;
  std::vector<std::uint8_t> a_padded;
  std::size_t lda;
  std::vector<std::int8_t> b;
};

// Refuses other dtypes, shapes that do not chain, k = 0, and codes above max_code (the largest
// the kernel multiplies exactly), naming `what`.
inline GemmOperands gemm_operands(const pybind11::array& a_in, const pybind11::array& b_in,
                                  const char* what, std::uint32_t max_code) {
  using Uint8Array =
      pybind11::array_t<std::uint8_t, pybind11::array::c_style | pybind11::array::forcecast>;
  using Int8Array =
      pybind11::array_t<std::int8_t, pybind11::array::c_style | pybind11::array::forcecast>;
  if (a_in.dtype().num() != pybind11::dtype::of<std::uint8_t>().num() ||
      b_in.dtype().num() != pybind11::dtype::of<std::int8_t>().num()) {
    throw_invalid_argument(std::string(what) + " takes uint8 activation codes and int8 weights");
  }
  const Uint8Array a = Uint8Array::ensure(a_in);
  const Int8Array b = Int8Array::ensure(b_in);
  if (a.ndim() != 2 || b.ndim() != 2 || a.shape(1) != b.shape(0) || a.shape(1) == 0) {
    throw_invalid_argument(std::string(what) + " takes a [m, k] and b [k, n] with matching k >= 1");
  }
  GemmOperands ops;
  ops.m = static_cast<std::size_t>(a.shape(0));
  ops.k = static_cast<std::size_t>(a.shape(1));
  ops.n = static_cast<std::size_t>(b.shape(1));
  ops.lda = (ops.k + 3) / 4 * 4;
  ops.a_padded.assign(ops.m * ops.lda, 0);
  const std::uint8_t* a_data = a.data();
  for (std::size_t row = 0; row < ops.m; ++row) {
    for (std::size_t col = 0; col < ops.k; ++col) {
      const std::uint8_t code = a_data[row * ops.k + col];
      if (code > max_code) {
        throw_invalid_argument(std::string(what) + ": activation code " + std::to_string(code) +
                               " is above " + std::to_string(max_code) +
                               ", the largest this kernel multiplies exactly");
      }
      ops.a_padded[row * ops.lda + col] = code;
    }
  }
  ops.b.assign(b.data(), b.data() + ops.k * ops.n);
  return ops;
}

}  // namespace headrace::bindings
