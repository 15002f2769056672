// Bindings for csrc/cuda: device discovery, the host reference of the tensor-core weight packings
// and the emulations of both kernels (run anywhere), the tiled GEMM and the whole-MLP model on a
// device (refuse with "no CUDA device: ..." where none is usable). Device work releases the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "bindings/register.h"
#include "cuda/cuda_device.h"
#include "cuda/cuda_gemm.h"
#include "cuda/cuda_mlp.h"
#include "cuda/fragment_packing.h"
#include "quant/epilogue.h"
#include "quant/int8_model_file.h"
#include "tensors/status.h"

namespace py = pybind11;

namespace headrace::bindings {
namespace {

using Int8Array = py::array_t<std::int8_t, py::array::c_style | py::array::forcecast>;
using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;
using Uint32Array = py::array_t<std::uint32_t, py::array::c_style | py::array::forcecast>;

// Refuses anything but an int8 matrix: forcecast would otherwise quietly wrap int16 values.
Int8Array int8_matrix(const py::array& array, const char* what) {
  if (array.dtype().num() != py::dtype::of<std::int8_t>().num() || array.ndim() != 2) {
    throw_invalid_argument(std::string(what) + " must be a 2-D int8 array");
  }
  return Int8Array::ensure(array);
}

struct Matrix {
  Int8Array array;
  std::size_t rows;
  std::size_t cols;
};

Matrix matrix(const py::array& array, const char* what) {
  Int8Array checked = int8_matrix(array, what);
  const auto rows = static_cast<std::size_t>(checked.shape(0));
  const auto cols = static_cast<std::size_t>(checked.shape(1));
  return {std::move(checked), rows, cols};
}

void require_matching(const Matrix& a, const Matrix& w) {
  if (a.cols != w.rows || w.rows == 0 || w.cols == 0) {
    throw_invalid_argument("a [m, k] and w [k, n] need matching k >= 1 and n >= 1");
  }
}

template <typename T>
py::array_t<T> to_array(const std::vector<T>& values, std::size_t rows, std::size_t cols) {
  py::array_t<T> out({static_cast<py::ssize_t>(rows), static_cast<py::ssize_t>(cols)});
  if (!values.empty()) std::copy(values.begin(), values.end(), out.mutable_data());
  return out;
}

py::dict device_dict(const cuda::CudaDeviceInfo& info) {
  py::dict d;
  d["index"] = info.index;
  d["name"] = info.name;
  d["compute_capability"] = py::make_tuple(info.compute_major, info.compute_minor);
  d["multiprocessors"] = info.multiprocessors;
  d["memory_bytes"] = info.memory_bytes;
  d["shared_memory_per_block_bytes"] = info.shared_memory_per_block_bytes;
  d["cluster_launch"] = info.cluster_launch;
  return d;
}

py::dict tensor_metadata(const quant::TensorMetadata& meta) {
  py::dict result;
  result["name"] = meta.name;
  result["datatype"] = meta.datatype;
  result["shape"] = meta.shape;
  return result;
}

quant::Activation activation_from_code(int code) {
  if (code < 0 || code > static_cast<int>(quant::kMaxActivationCode)) {
    throw_invalid_argument("activation code must be 0.." +
                           std::to_string(quant::kMaxActivationCode) + ", got " +
                           std::to_string(code));
  }
  return static_cast<quant::Activation>(code);
}

py::array_t<float> run_mlp(const cuda::CudaMlp& mlp, const FloatArray& x) {
  if (x.ndim() != 2 || static_cast<std::size_t>(x.shape(1)) != mlp.input_size()) {
    throw_invalid_argument("input '" + mlp.input().name + "' must be float32 [rows, " +
                           std::to_string(mlp.input_size()) + "]");
  }
  const auto rows = static_cast<std::size_t>(x.shape(0));
  py::array_t<float> y({x.shape(0), static_cast<py::ssize_t>(mlp.output_size())});
  const float* x_data = x.data();
  float* y_data = y.mutable_data();
  {
    py::gil_scoped_release release;
    mlp.run(x_data, rows, y_data);
  }
  return y;
}

cuda::CudaMlpOptions options(int device, int cluster_size, bool use_graphs) {
  cuda::CudaMlpOptions result;
  result.device = device;
  result.cluster_size = cluster_size;
  result.use_graphs = use_graphs;
  return result;
}

}  // namespace

void register_cuda(py::module_& m) {
  m.def(
      "cuda_discover",
      [] {
        const cuda::CudaDiscovery discovery = cuda::discover_cuda_devices();
        py::dict result;
        result["built_with_cuda"] = discovery.built_with_cuda;
        py::list devices;
        for (const cuda::CudaDeviceInfo& info : discovery.devices) devices.append(device_dict(info));
        result["devices"] = devices;
        result["reason"] = discovery.unavailable_reason;
        return result;
      },
      "CUDA devices and, when none can run the int8 kernels, why (never raises).");

  m.def(
      "cuda_pack_mlp_weights",
      [](const py::array& w) {
        const Matrix weights = matrix(w, "w");
        const std::vector<std::int8_t> packed =
            cuda::pack_mlp_weights(weights.array.data(), weights.rows, weights.cols);
        return to_array(packed, 1, packed.size()).attr("reshape")(-1);
      },
      py::arg("w"), "W [k, n] int8 -> the whole-MLP kernel's fragment slabs (1-D int8).");
  m.def(
      "cuda_pack_gemm_weights",
      [](const py::array& w) {
        const Matrix weights = matrix(w, "w");
        return to_array(cuda::pack_gemm_weights(weights.array.data(), weights.rows, weights.cols),
                        weights.cols, cuda::gemm_k_pad(weights.rows));
      },
      py::arg("w"), "W [k, n] int8 -> B^T [n, k rounded up to 16] for the tiled GEMM.");
  m.def(
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
  m.def(
      "cuda_emulate_mlp_layer",
      [](const py::array& a_in, const py::array& w_in, int cluster_size) {
        const Matrix a = matrix(a_in, "a");
        const Matrix w = matrix(w_in, "w");
        require_matching(a, w);
        const std::vector<std::int8_t> packed =
            cuda::pack_mlp_weights(w.array.data(), w.rows, w.cols);
        return to_array(cuda::emulate_mlp_layer(a.array.data(), a.rows, a.cols, packed, w.cols,
                                                cluster_size),
                        a.rows, w.cols);
      },
      py::arg("a"), py::arg("w"), py::arg("cluster_size"),
      "The whole-MLP kernel's GEMM phase (<= 64 rows, one cluster) emulated on the CPU: int32.");
  m.def(
      "cuda_emulate_tiled_gemm",
      [](const py::array& a_in, const py::array& w_in) {
        const Matrix a = matrix(a_in, "a");
        const Matrix w = matrix(w_in, "w");
        require_matching(a, w);
        const std::vector<std::int8_t> bt = cuda::pack_gemm_weights(w.array.data(), w.rows, w.cols);
        return to_array(cuda::emulate_tiled_gemm(a.array.data(), a.cols, a.rows, a.cols, bt, w.cols),
                        a.rows, w.cols);
      },
      py::arg("a"), py::arg("w"), "The tiled GEMM kernel emulated on the CPU: int32 [m, n].");

  m.def(
      "cuda_gemm_s32",
      [](const py::array& a_in, const py::array& w_in, int device) {
        const Matrix a = matrix(a_in, "a");
        const Matrix w = matrix(w_in, "w");
        require_matching(a, w);
        std::vector<std::int32_t> c;
        {
          py::gil_scoped_release release;
          c = cuda::gemm_s8s8_s32(a.array.data(), a.cols, a.rows, a.cols, w.array.data(), w.cols,
                                  device);
        }
        return to_array(c, a.rows, w.cols);
      },
      py::arg("a"), py::arg("w"), py::arg("device") = 0,
      "int8 [m, k] x int8 [k, n] -> exact int32 [m, n] on the GPU's tensor cores.");
  m.def(
      "cuda_gemm_epilogue",
      [](const py::array& a_in, const py::array& w_in, const FloatArray& row_scales,
         const FloatArray& weight_scales, const std::optional<FloatArray>& bias, int activation,
         int device) {
        const Matrix a = matrix(a_in, "a");
        const Matrix w = matrix(w_in, "w");
        require_matching(a, w);
        const bool per_tensor = weight_scales.size() == 1;
        if (static_cast<std::size_t>(row_scales.size()) != a.rows ||
            (!per_tensor && static_cast<std::size_t>(weight_scales.size()) != w.cols) ||
            (bias && static_cast<std::size_t>(bias->size()) != w.cols)) {
          throw_invalid_argument("row_scales [m], weight_scales [n] or [1], bias [n]");
        }
        const quant::Activation kind = activation_from_code(activation);
        const float* bias_data = bias ? bias->data() : nullptr;
        std::vector<float> y;
        {
          py::gil_scoped_release release;
          y = cuda::gemm_s8s8_epilogue(a.array.data(), a.cols, a.rows, a.cols, w.array.data(),
                                       w.cols, row_scales.data(), weight_scales.data(), per_tensor,
                                       bias_data, kind, device);
        }
        return to_array(y, a.rows, w.cols);
      },
      py::arg("a"), py::arg("w"), py::arg("row_scales"), py::arg("weight_scales"),
      py::arg("bias"), py::arg("activation"), py::arg("device") = 0,
      "The GEMM with the CPU epilogue fused: act(acc * row_scale * weight_scale + bias).");
  m.def(
      "cuda_time_gemm",
      [](std::size_t m_size, std::size_t n_size, std::size_t k_size, int iterations, int device) {
        cuda::GemmTiming timing;
        {
          py::gil_scoped_release release;
          timing = cuda::time_gemm_s8s8_s32(m_size, n_size, k_size, iterations, device);
        }
        py::dict result;
        result["median_ms"] = timing.median_ms;
        result["min_ms"] = timing.min_ms;
        result["iterations"] = timing.iterations;
        result["tops"] = 2.0 * static_cast<double>(m_size) * static_cast<double>(n_size) *
                         static_cast<double>(k_size) / (timing.median_ms * 1e9);
        return result;
      },
      py::arg("m"), py::arg("n"), py::arg("k"), py::arg("iterations"), py::arg("device") = 0,
      "Device-timed int32-output GEMM on random operands: median/min ms and TOPS at the median.");

  py::class_<cuda::CudaMlp, std::shared_ptr<cuda::CudaMlp>>(
      m, "CudaMlp", "An int8 MLP (.int8 file) on a CUDA device: every layer in one launch.")
      .def(py::init([](const std::string& path, int device, int cluster_size, bool use_graphs) {
             return cuda::CudaMlp::load(path, options(device, cluster_size, use_graphs));
           }),
           py::arg("path"), py::arg("device") = 0, py::arg("cluster_size") = 0,
           py::arg("use_graphs") = true)
      .def_static(
          "from_bytes",
          [](const py::bytes& data, int device, int cluster_size, bool use_graphs) {
            const std::string_view view = data;
            const quant::Int8ModelFile model = quant::Int8ModelFile::parse(
                {reinterpret_cast<const std::uint8_t*>(view.data()), view.size()}, "<bytes>");
            return std::make_shared<cuda::CudaMlp>(model, options(device, cluster_size, use_graphs));
          },
          py::arg("data"), py::arg("device") = 0, py::arg("cluster_size") = 0,
          py::arg("use_graphs") = true)
      .def("run", &run_mlp, py::arg("x"),
           "float32 [rows, input_size] -> float32 [rows, output_size]; releases the GIL.")
      .def(
          "time_launch_us",
          [](const cuda::CudaMlp& mlp, std::size_t rows, int iterations, bool graph) {
            py::gil_scoped_release release;
            return mlp.time_launch_us(rows, iterations, graph);
          },
          py::arg("rows"), py::arg("iterations"), py::arg("graph"),
          "Device time of one launch (median of 5 runs of `iterations` back-to-back launches).")
      .def_property_readonly("input_size", &cuda::CudaMlp::input_size)
      .def_property_readonly("output_size", &cuda::CudaMlp::output_size)
      .def_property_readonly("layer_count", &cuda::CudaMlp::layer_count)
      .def_property_readonly("device", &cuda::CudaMlp::device)
      .def_property_readonly("cluster_size", &cuda::CudaMlp::cluster_size)
      .def_property_readonly("shared_memory_bytes", &cuda::CudaMlp::shared_memory_bytes)
      .def_property_readonly("input",
                             [](const cuda::CudaMlp& mlp) { return tensor_metadata(mlp.input()); })
      .def_property_readonly(
          "output", [](const cuda::CudaMlp& mlp) { return tensor_metadata(mlp.output()); });
}

}  // namespace headrace::bindings
