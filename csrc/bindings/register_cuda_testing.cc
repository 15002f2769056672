// The csrc/cuda part of _core.testing: the host packings of the weights for both tensor-core
// kernels and CPU emulations of mma.sync and of both kernels (their index math is the kernels'
// own, fragment_layout.h), so the layouts are tested on any machine. Never used by the server.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <vector>

#include "bindings/int8_matrix.h"
#include "bindings/register.h"
#include "common/status.h"
#include "cuda/fragment_packing.h"

namespace py = pybind11;

namespace headrace::bindings {
namespace {

using Uint32Array = py::array_t<std::uint32_t, py::array::c_style | py::array::forcecast>;

}  // namespace

void register_cuda_testing(py::module_& testing) {
  testing.def(
      "cuda_pack_mlp_weights",
      [](const py::array& w) {
        const Int8Matrix weights = int8_matrix(w, "w");
        const std::vector<std::int8_t> packed =
            cuda::pack_mlp_weights(weights.array.data(), weights.rows, weights.cols);
        return to_array(packed, 1, packed.size()).attr("reshape")(-1);
      },
      py::arg("w"), "W [k, n] int8 -> the whole-MLP kernel's fragment slabs (1-D int8).");
  testing.def(
      "cuda_pack_gemm_weights",
      [](const py::array& w) {
        const Int8Matrix weights = int8_matrix(w, "w");
        return to_array(cuda::pack_gemm_weights(weights.array.data(), weights.rows, weights.cols),
                        weights.cols, cuda::gemm_k_pad(weights.rows));
      },
      py::arg("w"), "W [k, n] int8 -> B^T [n, k rounded up to 16] for the tiled GEMM.");
  testing.def(
      "cuda_emulate_mma",
      [](const Uint32Array& a, const Uint32Array& b, const py::array_t<std::int32_t>& c) {
        if (a.ndim() != 2 || a.shape(0) != 32 || a.shape(1) != 4 || b.ndim() != 2 ||
            b.shape(0) != 32 || b.shape(1) != 2 || c.ndim() != 2 || c.shape(0) != 32 ||
            c.shape(1) != 4) {
          throw_invalid_argument("registers must be a [32, 4], b [32, 2], c [32, 4]");
        }
        std::uint32_t a_regs[32][4];
        std::uint32_t b_regs[32][2];
        std::int32_t c_regs[32][4];
        std::int32_t d_regs[32][4];
        for (int lane = 0; lane < 32; ++lane) {
          for (int r = 0; r < 4; ++r) a_regs[lane][r] = a.at(lane, r);
          for (int r = 0; r < 2; ++r) b_regs[lane][r] = b.at(lane, r);
          for (int r = 0; r < 4; ++r) c_regs[lane][r] = c.at(lane, r);
        }
        cuda::emulate_mma_m16n8k32(a_regs, b_regs, c_regs, d_regs);
        py::array_t<std::int32_t> d({32, 4});
        for (int lane = 0; lane < 32; ++lane) {
          for (int r = 0; r < 4; ++r) d.mutable_at(lane, r) = d_regs[lane][r];
        }
        return d;
      },
      py::arg("a"), py::arg("b"), py::arg("c"),
      "One warp's mma.sync m16n8k32 s8 on registers [lane][reg], emulated on the CPU.");
  testing.def(
      "cuda_emulate_mlp_layer",
      [](const py::array& a_in, const py::array& w_in, int cluster_size) {
        const Int8Matrix a = int8_matrix(a_in, "a");
        const Int8Matrix w = int8_matrix(w_in, "w");
        require_matching(a, w);
        const std::vector<std::int8_t> packed =
            cuda::pack_mlp_weights(w.array.data(), w.rows, w.cols);
        return to_array(cuda::emulate_mlp_layer(a.array.data(), a.rows, a.cols, packed, w.cols,
                                                cluster_size),
                        a.rows, w.cols);
      },
      py::arg("a"), py::arg("w"), py::arg("cluster_size"),
      "The whole-MLP kernel's GEMM phase (<= 64 rows, one cluster) emulated on the CPU: int32.");
  testing.def(
      "cuda_emulate_tiled_gemm",
      [](const py::array& a_in, const py::array& w_in) {
        const Int8Matrix a = int8_matrix(a_in, "a");
        const Int8Matrix w = int8_matrix(w_in, "w");
        require_matching(a, w);
        const std::vector<std::int8_t> bt = cuda::pack_gemm_weights(w.array.data(), w.rows, w.cols);
        return to_array(cuda::emulate_tiled_gemm(a.array.data(), a.cols, a.rows, a.cols, bt, w.cols),
                        a.rows, w.cols);
      },
      py::arg("a"), py::arg("w"), "The tiled GEMM kernel emulated on the CPU: int32 [m, n].");
}

}  // namespace headrace::bindings
