// Bindings for csrc/quant: ISA dispatch queries, the raw int8 GEMM and its timing (for tests and
// benchmarks), how weights pack, the peak probe, and QuantizedMlp (its batcher runner is in
// register_runners.cc, the portable quad-panel emulation in register_testing.cc). Heavy calls
// release the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "bindings/quant_operands.h"
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
  const Isa isa = resolve_isa(isa_name);
  GemmOperands ops = gemm_operands(a_in, b_in, "quant_gemm_s32", quant::max_activation_code(isa));
  py::array_t<std::int32_t> c({static_cast<py::ssize_t>(ops.m), static_cast<py::ssize_t>(ops.n)});
  std::int32_t* c_data = c.mutable_data();
  {
    py::gil_scoped_release release;
    const quant::PackedWeights weights(isa, ops.b.data(), ops.k, ops.n);
    quant::gemm_u8s8_s32(ops.a_padded.data(), ops.lda, ops.m, weights, c_data, ops.n);
  }
  return c;
}

// Seconds per call of the GEMM alone (weights packed once, before the first call), `repeats`
// calls: what a benchmark of the kernel wants, without the packing and copies of quant_gemm_s32.
std::vector<double> gemm_timings(const py::array& a_in, const py::array& b_in,
                                 const std::string& isa_name, std::size_t repeats) {
  const Isa isa = quant::parse_isa(isa_name);
  quant::require_isa(isa);
  GemmOperands ops = gemm_operands(a_in, b_in, "quant_gemm_timings", quant::max_activation_code(isa));
  std::vector<double> seconds;
  py::gil_scoped_release release;
  const quant::PackedWeights weights(isa, ops.b.data(), ops.k, ops.n);
  std::vector<std::int32_t> c(ops.m * ops.n);
  for (std::size_t i = 0; i < repeats; ++i) {
    const auto start = std::chrono::steady_clock::now();
    quant::gemm_u8s8_s32(ops.a_padded.data(), ops.lda, ops.m, weights, c.data(), ops.n);
    seconds.push_back(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  return seconds;
}

std::string shape_text(const std::vector<std::int64_t>& shape) {
  std::string text = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) text += ", ";
    text += i == 0 ? std::string("rows") : std::to_string(shape[i]);
  }
  return text + "]";
}

py::array_t<float> run_mlp(const quant::QuantizedMlp& mlp, const FloatArray& x) {
  // The input's own shape, or its rows flattened to [rows, input_size].
  const std::vector<std::int64_t>& declared = mlp.input().shape;
  bool matches = x.ndim() == 2 && static_cast<std::size_t>(x.shape(1)) == mlp.input_size();
  if (!matches && static_cast<std::size_t>(x.ndim()) == declared.size()) {
    matches = true;
    for (std::size_t i = 1; i < declared.size(); ++i) {
      matches = matches && x.shape(static_cast<py::ssize_t>(i)) == declared[i];
    }
  }
  if (!matches) {
    throw CoreError(StatusCode::kInvalidArgument,
                    "input '" + mlp.input().name + "' must be float32 " + shape_text(declared));
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
  m.def(
      "quant_max_activation_code",
      [](const std::string& isa) { return quant::max_activation_code(quant::parse_isa(isa)); },
      py::arg("isa"), "Largest activation code the ISA's kernel multiplies exactly (127 or 255).");
  m.def("quant_gemm_s32", &gemm_s32, py::arg("a"), py::arg("b"), py::arg("isa") = py::none(),
        "uint8 codes [m, k] x int8 [k, n] -> exact int32 [m, n] on one ISA (packs b each call).");
  m.def(
      "quant_packing",
      [](const Int8Array& b, const std::string& isa_name) {
        if (b.ndim() != 2 || b.shape(0) == 0 || b.shape(1) == 0) {
          throw CoreError(StatusCode::kInvalidArgument, "quant_packing takes int8 b [k, n]");
        }
        const Isa isa = quant::parse_isa(isa_name);
        const quant::PackedWeights weights(isa, b.data(), static_cast<std::size_t>(b.shape(0)),
                                           static_cast<std::size_t>(b.shape(1)));
        py::dict info;
        info["paired"] = weights.paired();
        info["corrections"] = weights.correction_count();
        info["aligned"] = reinterpret_cast<std::uintptr_t>(weights.bytes()) % 64 == 0;
        return info;
      },
      py::arg("b"), py::arg("isa"),
      "How weights pack for an ISA: paired (avx2), number of corrections, 64-byte alignment.");
  m.def("quant_gemm_timings", &gemm_timings, py::arg("a"), py::arg("b"), py::arg("isa"),
        py::arg("repeats"), "Seconds of each of `repeats` GEMM calls (packing excluded).");
  m.def(
      "quant_peak_gops",
      [](const std::string& isa, std::uint64_t iterations, bool paired) {
        const Isa parsed = quant::parse_isa(isa);
        py::gil_scoped_release release;
        return quant::measure_peak_gops(parsed, iterations, paired);
      },
      py::arg("isa"), py::arg("iterations"), py::arg("paired") = false,
      "Measured peak int8 GOPS of the ISA's dot-product step (register-only loop); paired: "
      "the avx2 step that sums two quads in int16.");

  py::class_<quant::QuantizedMlp, std::shared_ptr<quant::QuantizedMlp>>(m, "QuantizedMlp",
                                  "An int8 MLP loaded from a .int8 file; run() is thread-safe.")
      .def(py::init([](const std::string& path, const std::optional<std::string>& isa,
                       std::optional<std::uint32_t> activation_bits) {
             return quant::QuantizedMlp::load(path, resolve_isa(isa), activation_bits);
           }),
           py::arg("path"), py::arg("isa") = py::none(), py::arg("activation_bits") = py::none())
      .def_static(
          "from_bytes",
          [](const py::bytes& data, const std::optional<std::string>& isa,
             std::optional<std::uint32_t> activation_bits) {
            const std::string_view view = data;
            return quant::QuantizedMlp::from_bytes(
                {reinterpret_cast<const std::uint8_t*>(view.data()), view.size()},
                resolve_isa(isa), activation_bits);
          },
          py::arg("data"), py::arg("isa") = py::none(), py::arg("activation_bits") = py::none())
      .def("run", &run_mlp, py::arg("x"),
           "float32 [rows, ...input dims] -> float32 [rows, output_size]; releases the GIL.")
      .def_property_readonly("isa",
                             [](const quant::QuantizedMlp& mlp) {
                               return std::string(quant::isa_name(mlp.isa()));
                             })
      .def_property_readonly("activation_bits", &quant::QuantizedMlp::activation_bits)
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
