// Bindings for csrc/quant: ISA dispatch queries, the raw int8 GEMM (for tests and benchmarks),
// the peak probe, and QuantizedMlp (its batcher runner is in register_runners.cc, the VNNI
// emulation in register_testing.cc). Heavy calls release the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "bindings/register.h"
#include "quant/int8_gemm.h"
#include "quant/isa.h"
#include "quant/peak_probe.h"
#include "quant/quantized_mlp.h"
#include "common/status.h"

namespace py = pybind11;

namespace headrace::bindings {
namespace {

using quant::Isa;

Isa resolve_isa(const std::optional<std::string>& name) {
  if (!name) return quant::default_isa();
  const Isa isa = quant::parse_isa(*name);
  quant::require_isa(isa);
  return isa;
}

std::vector<std::string> isa_names(const std::vector<Isa>& isas) {
  std::vector<std::string> names;
  for (Isa isa : isas) names.emplace_back(quant::isa_name(isa));
  return names;
}

using Int8Array = py::array_t<std::int8_t, py::array::c_style | py::array::forcecast>;
using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;

py::array_t<std::int32_t> gemm_s32(const py::array& a_in, const py::array& b_in,
                                   const std::optional<std::string>& isa_name) {
  if (a_in.dtype().num() != py::dtype::of<std::int8_t>().num() ||
      b_in.dtype().num() != py::dtype::of<std::int8_t>().num()) {
    throw CoreError(StatusCode::kInvalidArgument, "quant_gemm_s32 takes int8 arrays");
  }
  const Int8Array a = Int8Array::ensure(a_in);
  const Int8Array b = Int8Array::ensure(b_in);
  if (a.ndim() != 2 || b.ndim() != 2 || a.shape(1) != b.shape(0)) {
    throw CoreError(StatusCode::kInvalidArgument,
                    "quant_gemm_s32 takes a [m, k] and b [k, n] with matching k");
  }
  const Isa isa = resolve_isa(isa_name);
  const auto m = static_cast<std::size_t>(a.shape(0));
  const auto k = static_cast<std::size_t>(a.shape(1));
  const auto n = static_cast<std::size_t>(b.shape(1));
  py::array_t<std::int32_t> c({a.shape(0), b.shape(1)});
  const std::int8_t* a_data = a.data();
  const std::int8_t* b_data = b.data();
  std::int32_t* c_data = c.mutable_data();
  {
    py::gil_scoped_release release;
    const quant::PackedWeights weights(isa, b_data, k, n);
    quant::GemmScratch scratch;
    quant::gemm_s8s8_s32(a_data, k, m, weights, c_data, n, scratch);
  }
  return c;
}

py::array_t<float> run_mlp(const quant::QuantizedMlp& mlp, const FloatArray& x) {
  if (x.ndim() != 2 || static_cast<std::size_t>(x.shape(1)) != mlp.input_size()) {
    throw CoreError(StatusCode::kInvalidArgument,
                    "input '" + mlp.input().name + "' must be float32 [rows, " +
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

py::dict tensor_metadata(const quant::TensorMetadata& meta) {
  py::dict result;
  result["name"] = meta.name;
  result["datatype"] = meta.datatype;
  result["shape"] = meta.shape;
  return result;
}

}  // namespace

void register_quant(py::module_& m) {
  m.def(
      "quant_supported_isas", [] { return isa_names(quant::supported_isas()); },
      "int8 ISAs this CPU can run, fastest last.");
  m.def(
      "quant_missing_features",
      [](const std::string& isa) { return quant::missing_cpu_features(quant::parse_isa(isa)); },
      py::arg("isa"), "CPU features an ISA needs that this CPU lacks (empty when supported).");
  m.def(
      "quant_default_isa", [] { return std::string(quant::isa_name(quant::default_isa())); },
      "The ISA a load picks: HEADRACE_QUANT_ISA if set, else the fastest supported.");
  m.def("quant_gemm_s32", &gemm_s32, py::arg("a"), py::arg("b"), py::arg("isa") = py::none(),
        "int8 [m, k] x int8 [k, n] -> exact int32 [m, n] on one ISA (packs b each call).");
  m.def(
      "quant_peak_gops",
      [](const std::string& isa, std::uint64_t iterations) {
        const Isa parsed = quant::parse_isa(isa);
        py::gil_scoped_release release;
        return quant::measure_peak_gops(parsed, iterations);
      },
      py::arg("isa"), py::arg("iterations"),
      "Measured peak int8 GOPS of the ISA's dot-product instruction (register-only loop).");

  py::class_<quant::QuantizedMlp, std::shared_ptr<quant::QuantizedMlp>>(m, "QuantizedMlp",
                                  "An int8 MLP loaded from a .int8 file; run() is thread-safe.")
      .def(py::init([](const std::string& path, const std::optional<std::string>& isa) {
             return quant::QuantizedMlp::load(path, resolve_isa(isa));
           }),
           py::arg("path"), py::arg("isa") = py::none())
      .def_static(
          "from_bytes",
          [](const py::bytes& data, const std::optional<std::string>& isa) {
            const std::string_view view = data;
            return quant::QuantizedMlp::from_bytes(
                {reinterpret_cast<const std::uint8_t*>(view.data()), view.size()},
                resolve_isa(isa));
          },
          py::arg("data"), py::arg("isa") = py::none())
      .def("run", &run_mlp, py::arg("x"),
           "float32 [rows, input_size] -> float32 [rows, output_size]; releases the GIL.")
      .def_property_readonly("isa",
                             [](const quant::QuantizedMlp& mlp) {
                               return std::string(quant::isa_name(mlp.isa()));
                             })
      .def_property_readonly("input_size", &quant::QuantizedMlp::input_size)
      .def_property_readonly("output_size", &quant::QuantizedMlp::output_size)
      .def_property_readonly("layer_count", &quant::QuantizedMlp::layer_count)
      .def_property_readonly(
          "input",
          [](const quant::QuantizedMlp& mlp) { return tensor_metadata(mlp.input()); })
      .def_property_readonly(
          "output",
          [](const quant::QuantizedMlp& mlp) { return tensor_metadata(mlp.output()); });
}

}  // namespace headrace::bindings
