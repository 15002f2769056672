// Bindings for csrc/drift: bin layout, the sharded accumulator and the count statistics.
// Every call that counts or takes the accumulator's close lock releases the GIL, so a Python
// clock (which re-takes the GIL) can never deadlock against a thread waiting for that lock.
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "bindings/register.h"
#include "drift/bin_layout.h"
#include "drift/drift_accumulator.h"
#include "drift/drift_statistics.h"
#include "common/status.h"

namespace py = pybind11;

namespace headrace::bindings {
namespace {

using drift::BinLayout;
using drift::DriftAccumulator;
using drift::WindowCounts;
using CountArray = py::array_t<std::uint64_t, py::array::c_style | py::array::forcecast>;
using DoubleArray = py::array_t<double, py::array::c_style | py::array::forcecast>;

std::span<const std::uint64_t> count_span(const CountArray& array) {
  if (array.ndim() != 1) {
    throw CoreError(StatusCode::kInvalidArgument, "drift: counts must be a 1-D array");
  }
  return {array.data(), static_cast<std::size_t>(array.size())};
}

py::array_t<std::uint64_t> to_numpy(const std::vector<std::uint64_t>& values) {
  py::array_t<std::uint64_t> out(static_cast<py::ssize_t>(values.size()));
  std::copy(values.begin(), values.end(), out.mutable_data());
  return out;
}

// A float32/float64 C-contiguous 2-D batch is used in place; anything else numeric is copied to
// float64 once.
py::array as_batch(const py::array& batch, std::size_t features) {
  py::array out = batch;
  const bool is_float = py::isinstance<py::array_t<float>>(batch) ||
                        py::isinstance<py::array_t<double>>(batch);
  if (!is_float || !(batch.flags() & py::array::c_style)) {
    out = DoubleArray::ensure(batch);
    if (!out) throw py::error_already_set();
  }
  if (out.ndim() != 2 || static_cast<std::size_t>(out.shape(1)) != features) {
    throw CoreError(StatusCode::kInvalidArgument,
                    "drift: a batch must be 2-D [rows, " + std::to_string(features) +
                        "], got ndim " + std::to_string(out.ndim()));
  }
  return out;
}

void observe(DriftAccumulator& accumulator, const py::array& batch) {
  const py::array rows = as_batch(batch, accumulator.layout().feature_count());
  const auto n_rows = static_cast<std::size_t>(rows.shape(0));
  if (py::isinstance<py::array_t<float>>(rows)) {
    const auto* data = static_cast<const float*>(rows.data());
    py::gil_scoped_release release;
    accumulator.observe(data, n_rows);
  } else {
    const auto* data = static_cast<const double*>(rows.data());
    py::gil_scoped_release release;
    accumulator.observe(data, n_rows);
  }
}

drift::ClockNs python_clock(const py::object& clock) {
  if (clock.is_none()) return {};
  // Shared so that copies of the std::function never touch the Python refcount without the GIL.
  auto holder = std::shared_ptr<py::object>(new py::object(clock), [](py::object* object) {
    py::gil_scoped_acquire acquire;
    delete object;
  });
  return [holder]() -> std::int64_t {
    py::gil_scoped_acquire acquire;
    const double seconds = (*holder)().cast<double>();
    return static_cast<std::int64_t>(std::llround(seconds * 1e9));
  };
}

template <typename Fn>
auto without_gil(Fn&& fn) {
  py::gil_scoped_release release;
  return fn();
}

}  // namespace

void register_drift(py::module_& m) {
  py::class_<BinLayout>(m, "BinLayout",
                        "Where each feature's values land in the flat count array.")
      .def(py::init<>())
      .def(
          "add_numerical",
          [](BinLayout& layout, const DoubleArray& edges) {
            layout.add_numerical({edges.data(), static_cast<std::size_t>(edges.size())});
          },
          py::arg("edges"), "Add a numerical feature with these bin edges (bins are (e_i-1, e_i]).")
      .def("add_categorical", &BinLayout::add_categorical, py::arg("n_categories"),
           "Add a categorical feature whose values are integer codes 0..n_categories-1.")
      .def_property_readonly("feature_count", &BinLayout::feature_count)
      .def_property_readonly("total_bins", &BinLayout::total_bins)
      .def("bin_count", &BinLayout::bin_count, py::arg("feature"))
      .def("bin_offset", &BinLayout::bin_offset, py::arg("feature"))
      .def("is_categorical",
           [](const BinLayout& layout, std::size_t feature) {
             return layout.kind(feature) == drift::FeatureKind::kCategorical;
           },
           py::arg("feature"))
      .def("set_simd", &BinLayout::set_simd, py::arg("enabled"),
           "Allow (default) or forbid the AVX2 kernel; returns whether it is in use.")
      .def_property_readonly("simd", &BinLayout::simd)
      .def("bin_of", &BinLayout::bin_of, py::arg("feature"), py::arg("value"),
           "Bin of one value within its feature (the hot loop's search).")
      .def(
          "count",
          [](const BinLayout& layout, const py::array& batch) {
            const py::array rows = as_batch(batch, layout.feature_count());
            std::vector<std::uint64_t> counts(layout.total_bins(), 0);
            const auto n_rows = static_cast<std::size_t>(rows.shape(0));
            if (py::isinstance<py::array_t<float>>(rows)) {
              layout.count_rows(static_cast<const float*>(rows.data()), n_rows, counts);
            } else {
              layout.count_rows(static_cast<const double*>(rows.data()), n_rows, counts);
            }
            return to_numpy(counts);
          },
          py::arg("batch"), "Flat counts of one batch, without an accumulator.");

  py::class_<WindowCounts>(m, "WindowCounts", "Counts of one window (or a merge of windows).")
      .def_readonly("index", &WindowCounts::index)
      .def_readonly("start_ns", &WindowCounts::start_ns)
      .def_readonly("end_ns", &WindowCounts::end_ns)
      .def_readonly("rows", &WindowCounts::rows)
      .def_readonly("windows", &WindowCounts::windows)
      .def_readonly("closed_by", &WindowCounts::closed_by)
      .def_property_readonly("counts",
                             [](const WindowCounts& window) { return to_numpy(window.counts); });

  // Shared holder: a batcher's DriftCountingRunner counts into the same accumulator.
  py::class_<DriftAccumulator, std::shared_ptr<DriftAccumulator>>(
      m, "DriftAccumulator", "Per-thread sharded drift counts in tumbling windows.")
      .def(py::init([](const BinLayout& layout, std::uint64_t window_rows, double window_s,
                       std::size_t windows_kept, std::size_t shards, const py::object& clock) {
             if (!(window_s >= 0.0) || !std::isfinite(window_s)) {
               throw CoreError(StatusCode::kInvalidArgument,
                               "drift: window_s must be finite and >= 0");
             }
             drift::DriftAccumulatorOptions options;
             options.window_rows = window_rows;
             options.window_ns = static_cast<std::int64_t>(std::llround(window_s * 1e9));
             options.windows_kept = windows_kept;
             options.shards = shards;
             return std::make_shared<DriftAccumulator>(layout, options, python_clock(clock));
           }),
           py::arg("layout"), py::arg("window_rows") = 0, py::arg("window_s") = 0.0,
           py::arg("windows_kept") = 16, py::arg("shards") = 0, py::arg("clock") = py::none())
      .def("observe", &observe, py::arg("batch"),
           "Count a [rows, features] batch (float32/float64 used in place; GIL released).")
      .def(
          "import_counts",
          [](DriftAccumulator& accumulator, const CountArray& counts, std::uint64_t rows) {
            const auto span = count_span(counts);
            py::gil_scoped_release release;
            accumulator.import_counts(span, rows);
          },
          py::arg("counts"), py::arg("rows"))
      .def("poll", [](DriftAccumulator& a) { return without_gil([&] { return a.poll(); }); })
      .def("close_window",
           [](DriftAccumulator& a) { return without_gil([&] { return a.close_window(); }); })
      .def("closed_windows",
           [](const DriftAccumulator& a) {
             return without_gil([&] { return a.closed_windows(); });
           })
      .def(
          "merged",
          [](const DriftAccumulator& a, std::size_t windows, bool include_open) {
            return without_gil([&] { return a.merged(windows, include_open); });
          },
          py::arg("windows"), py::arg("include_open") = false)
      .def("open_snapshot",
           [](const DriftAccumulator& a) { return without_gil([&] { return a.open_snapshot(); }); })
      .def_property_readonly(
          "windows_closed",
          [](const DriftAccumulator& a) { return without_gil([&] { return a.windows_closed(); }); })
      .def_property_readonly("shards",
                             [](const DriftAccumulator& a) { return a.options().shards; })
      .def_property_readonly("total_bins",
                             [](const DriftAccumulator& a) { return a.layout().total_bins(); })
      .def_property_readonly("feature_count", [](const DriftAccumulator& a) {
        return a.layout().feature_count();
      });

  m.def(
      "population_stability_index",
      [](const CountArray& reference, const CountArray& current, double floor_share) {
        return drift::population_stability_index(count_span(reference), count_span(current),
                                                  floor_share);
      },
      py::arg("reference"), py::arg("current"), py::arg("floor_share") = drift::kPsiFloorShare);
  m.def(
      "chi_square",
      [](const CountArray& reference, const CountArray& current, double min_expected) {
        const auto r = drift::chi_square(count_span(reference), count_span(current), min_expected);
        return py::make_tuple(r.statistic, r.dof, r.p_value, r.merged_bins);
      },
      py::arg("reference"), py::arg("current"), py::arg("min_expected") = 5.0,
      "(statistic, dof, p_value, merged_bins)");
  m.def(
      "binned_ks",
      [](const CountArray& reference, const CountArray& current) {
        const auto r = drift::binned_ks(count_span(reference), count_span(current));
        return py::make_tuple(r.d_lower, r.d_upper, r.p_value, r.effective_n);
      },
      py::arg("reference"), py::arg("current"), "(d_lower, d_upper, p_value, effective_n)");
  m.def(
      "reject_hypotheses",
      [](const DoubleArray& p_values, double alpha, const std::string& correction) {
        return drift::reject_hypotheses(
            {p_values.data(), static_cast<std::size_t>(p_values.size())}, alpha,
            drift::parse_correction(correction));
      },
      py::arg("p_values"), py::arg("alpha"), py::arg("correction"));
}

}  // namespace headrace::bindings
