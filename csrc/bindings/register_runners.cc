// Bindings for csrc/runners: what runs a batch in C++. Each runner is a NativeRunner (the one
// bound base class, registered in register_batching.cc), which a Batcher takes in place of a
// Python callable: OrtRunner (made by OrtModel.runner), QuantizedMlpRunner (made from a
// QuantizedMlp) and CudaMlpRunner (made from a CudaMlp, register_cuda.cc). OrtModel is an ONNX Runtime session driven through the C API; its run()
// releases the GIL for the whole ONNX Runtime call. ort_library_version() loads (once per
// process) the ONNX Runtime library and answers its release.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>
#include <vector>

#include "batching/runner.h"
#include "bindings/array_tensors.h"
#include "bindings/register.h"
#include "bindings/without_gil.h"
#include "common/status.h"
#include "cuda/cuda_mlp.h"
#include "quant/quantized_mlp.h"
#include "runners/cuda_mlp_runner.h"
#include "runners/ort/ort_model.h"
#include "runners/quantized_mlp_runner.h"

namespace py = pybind11;

namespace headrace::bindings {
namespace {

namespace ort = runners::ort;

py::list describe(const std::vector<ort::OrtTensorInfo>& infos) {
  py::list out;
  for (const ort::OrtTensorInfo& info : infos) {
    out.append(py::make_tuple(info.name, std::string(datatype_name(info.dtype)),
                              py::tuple(py::cast(info.shape))));
  }
  return out;
}

py::list run_model(const ort::OrtModel& model, const py::dict& feed,
                   const std::vector<std::string>& output_names, bool idle_priority) {
  std::vector<Tensor> inputs;
  std::vector<std::size_t> input_indices;
  for (const auto& [key, value] : feed) {
    const std::string name = py::str(key);
    input_indices.push_back(model.input_index(name));
    inputs.push_back(tensor_from_array(value, "input '" + name + "'"));
  }
  std::vector<std::size_t> output_indices;
  for (const std::string& name : output_names) output_indices.push_back(model.output_index(name));
  // idle_priority (shadow copies): the thread never holds the GIL at idle priority.
  const std::vector<Tensor> outputs = run_without_gil(
      idle_priority, [&] { return model.run(inputs, input_indices, output_indices); });
  py::list arrays;
  for (const Tensor& output : outputs) arrays.append(array_from_tensor(output));
  return arrays;
}

}  // namespace

void register_runners(py::module_& m) {
  m.attr("ORT_API_VERSION") = ort::kApiVersion;
  m.attr("ORT_OLDEST_SUPPORTED_RELEASE") = ort::kOldestSupportedRelease;
  m.def(
      "ort_library_version",
      [](const std::string& library) {
        auto lib = ort::OrtLibrary::open(library);
        return lib->version();
      },
      py::arg("library"),
      "Load the ONNX Runtime library at this path (once per process; requests C API version "
      "ORT_API_VERSION) and return its release, as its GetVersionString says.");

  py::class_<ort::OrtModel, std::shared_ptr<ort::OrtModel>>(
      m, "OrtModel", "An ONNX Runtime session driven through the C API, without the GIL.")
      .def(py::init([](const std::string& library, const std::string& path, int intra, int inter) {
             auto lib = ort::OrtLibrary::open(library);
             py::gil_scoped_release nogil;  // loading may take a while; it needs no Python
             return std::make_shared<ort::OrtModel>(std::move(lib), path, intra, inter);
           }),
           py::arg("library"), py::arg("path"), py::arg("intra_op_threads") = 0,
           py::arg("inter_op_threads") = 0)
      .def_property_readonly("inputs", [](const ort::OrtModel& model) { return describe(model.inputs()); })
      .def_property_readonly("outputs",
                             [](const ort::OrtModel& model) { return describe(model.outputs()); })
      .def_property_readonly("version",
                             [](const ort::OrtModel& model) { return model.library().version(); })
      .def("run", &run_model, py::arg("feed"), py::arg("output_names"),
           py::arg("idle_priority") = false,
           "Runs the model on {input name: array}; returns the named outputs in order. With "
           "idle_priority, the calling thread runs the model (and only the model, without the "
           "GIL) under SCHED_IDLE, back to its own policy before the GIL is taken again.")
      .def(
          "runner",
          [](const std::shared_ptr<ort::OrtModel>& model, const std::vector<std::string>& inputs,
             const std::vector<std::string>& outputs) {
            return std::make_shared<ort::OrtRunner>(model, inputs, outputs);
          },
          py::arg("input_names"), py::arg("output_names"),
          "A batcher runner feeding batch inputs in this order and returning these outputs.");

  py::class_<ort::OrtRunner, batching::Runner, std::shared_ptr<ort::OrtRunner>>(
      m, "OrtRunner", "A NativeRunner running an OrtModel's batches (no GIL).");

  py::class_<runners::QuantizedMlpRunner, batching::Runner,
             std::shared_ptr<runners::QuantizedMlpRunner>>(
      m, "QuantizedMlpRunner",
      "A NativeRunner running a QuantizedMlp's batches: one FP32 input, one FP32 output.")
      .def(py::init([](std::shared_ptr<quant::QuantizedMlp> model) {
             if (!model) throw_invalid_argument("QuantizedMlpRunner needs a QuantizedMlp");
             return std::make_shared<runners::QuantizedMlpRunner>(std::move(model));
           }),
           py::arg("model"));

  py::class_<runners::CudaMlpRunner, batching::Runner, std::shared_ptr<runners::CudaMlpRunner>>(
      m, "CudaMlpRunner",
      "A NativeRunner running a CudaMlp's batches on its device: one FP32 input, one FP32 "
      "output; each batch on a stream of its own.")
      .def(py::init([](std::shared_ptr<cuda::CudaMlp> model) {
             if (!model) throw_invalid_argument("CudaMlpRunner needs a CudaMlp");
             return std::make_shared<runners::CudaMlpRunner>(std::move(model));
           }),
           py::arg("model"));
}

}  // namespace headrace::bindings
