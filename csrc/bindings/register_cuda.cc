// Bindings for csrc/cuda: device discovery, the tiled GEMM and the whole-MLP model (CudaMlp) on a
// device; both refuse with "no CUDA device: ..." where none is usable. CudaMlp's batcher runner,
// CudaMlpRunner, is bound with the other runners (register_runners.cc); the packings and the CPU
// emulations of the kernels are test-only (_core.testing, register_cuda_testing.cc). Device work
// releases the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "bindings/int8_matrix.h"
#include "bindings/register.h"
#include "cuda/cuda_device.h"
#include "cuda/cuda_gemm.h"
#include "cuda/cuda_mlp.h"
#include "quant/epilogue.h"
#include "quant/int8_model_file.h"
#include "common/status.h"

namespace py = pybind11;

namespace headrace::bindings {
namespace {

using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;

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
      "cuda_gemm_s32",
      [](const py::array& a_in, const py::array& w_in, int device) {
        const Int8Matrix a = int8_matrix(a_in, "a");
        const Int8Matrix w = int8_matrix(w_in, "w");
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
        const Int8Matrix a = int8_matrix(a_in, "a");
        const Int8Matrix w = int8_matrix(w_in, "w");
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
