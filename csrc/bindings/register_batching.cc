// Bindings for csrc/batching: BatcherConfig, the Batcher, the shared CompletionQueue, and
// NativeRunner, the one Python face of every C++ runner (csrc/runners). A Batcher takes a
// NativeRunner (run on the workers without the GIL) or a Python callable (PythonRunner below).
// The policy's test harness is in register_testing.cc (_core.testing).
//
// GIL rules kept here (the core knows none of them):
//   - No thread holds a Batcher's mutex while it waits for the GIL. submit keeps the GIL (it is
//     on every request's path and the mutex is held only briefly); the calls that may wait for
//     worker threads (shutdown, destruction) and cancel/stats release it first.
//   - Python objects are referenced from C++ tensors only through owners whose deleter takes the
//     GIL, so they may be dropped on any thread. A request's inputs come back with its completion
//     and are dropped by drain(), which holds the GIL anyway: workers never take the GIL for them.
//   - The Python runner holds the GIL only to wrap the batch buffers as numpy arrays (no copy),
//     call the callable, and read what it returns.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "batching/batcher.h"
#include "batching/completion_queue.h"
#include "batching/runner.h"
#include "bindings/array_tensors.h"
#include "bindings/errors.h"
#include "bindings/register.h"
#include "common/status.h"
#include "common/tensor.h"
#include "drift/drift_accumulator.h"
#include "runners/drift_counting_runner.h"

namespace py = pybind11;

namespace headrace::bindings {
namespace {

// Runs batches through a Python callable: list[np.ndarray] -> list[np.ndarray]. Its failure reads
// one way (headrace.errors.runner_failure): an exception the callable raises keeps its code and
// message when it is a HeadraceError and is INTERNAL "model runner failed: <Type>: <message>"
// otherwise; outputs that do not make tensors are INTERNAL "model runner failed: <why>".
class PythonRunner final : public batching::Runner {
 public:
  explicit PythonRunner(py::object callable) : callable_(std::move(callable)) {}
  ~PythonRunner() override {
    py::gil_scoped_acquire gil;
    callable_ = py::object();
  }

  std::vector<Tensor> run(const batching::Batch& batch) override {
    py::gil_scoped_acquire gil;
    py::object result;
    try {
      py::list inputs;
      for (const Tensor& input : batch.inputs) inputs.append(array_from_tensor(input));
      result = callable_(inputs);
    } catch (const py::error_already_set& failure) {
      throw runner_failure(failure);
    } catch (const CoreError& error) {
      throw CoreError(StatusCode::kInternal, "model runner failed: " + error.message());
    }
    try {
      if (!py::isinstance<py::list>(result) && !py::isinstance<py::tuple>(result)) {
        throw CoreError(StatusCode::kInternal,
                        "it must return a list of numpy arrays, got " +
                            py::str(py::type::of(result)).cast<std::string>());
      }
      std::vector<Tensor> outputs;
      std::size_t k = 0;
      for (py::handle item : result) {
        outputs.push_back(tensor_from_array(item, "output " + std::to_string(k)));
        ++k;
      }
      return outputs;
    } catch (const CoreError& error) {
      throw CoreError(StatusCode::kInternal, "model runner failed: " + error.message());
    } catch (const py::error_already_set& failure) {
      throw runner_failure(failure);
    }
  }

  // It needs the GIL, which the submitting Python thread holds.
  bool runs_on_submitting_thread() const noexcept override { return false; }

 private:
  py::object callable_;
};

class PyBatcher;

// Batchers alive in this interpreter; only touched with the GIL held. An atexit hook shuts them
// down while the interpreter is still whole: worker threads that need the GIL during
// finalization would otherwise never get it, and joining them would hang the exit.
std::set<PyBatcher*>& live_batchers() {
  static std::set<PyBatcher*> live;
  return live;
}

// The Python face of a Batcher: converts arrays, and releases the GIL around every call that may
// wait for the batcher's mutex or threads (including destruction).
class PyBatcher {
 public:
  PyBatcher(std::string name, batching::BatcherConfig config, py::object runner,
            std::shared_ptr<batching::CompletionQueue> completions, const py::object& drift_counts) {
    if (!completions) throw_invalid_argument("completions must be a CompletionQueue");
    std::shared_ptr<drift::DriftAccumulator> drift;
    if (!drift_counts.is_none()) drift = drift_counts.cast<std::shared_ptr<drift::DriftAccumulator>>();
    std::shared_ptr<batching::Runner> core_runner;
    if (py::isinstance<batching::Runner>(runner)) {
      // Any C++ runner (ONNX Runtime, int8): batches run on the workers, never taking the GIL.
      core_runner = runner.cast<std::shared_ptr<batching::Runner>>();
    } else if (PyCallable_Check(runner.ptr())) {
      core_runner = std::make_shared<PythonRunner>(std::move(runner));
    } else {
      throw_invalid_argument("runner must be a NativeRunner or a callable");
    }
    if (drift) {
      // Counted here, in C++ after each run and without the GIL, for native runners (their
      // batches never reach Python) and for Python runners whose profile needs no encoding
      // (numerical features only: the caller decides and passes no accumulator otherwise).
      counting_ = std::make_shared<runners::DriftCountingRunner>(std::move(core_runner),
                                                                 std::move(drift));
      core_runner = counting_;
    }
    batcher_ = std::make_unique<batching::Batcher>(std::move(name), std::move(config),
                                                   std::move(core_runner), std::move(completions));
    live_batchers().insert(this);
  }
  ~PyBatcher() {
    live_batchers().erase(this);
    py::gil_scoped_release nogil;
    batcher_.reset();
  }
  PyBatcher(const PyBatcher&) = delete;
  PyBatcher& operator=(const PyBatcher&) = delete;

  std::unique_ptr<batching::Request> make_request(const py::object& inputs, std::int64_t priority,
                                                  std::int64_t deadline_ns) {
    // An array is a sequence too: iterating one would silently split it into "inputs".
    if (!py::isinstance<py::list>(inputs) && !py::isinstance<py::tuple>(inputs)) {
      throw_invalid_argument("inputs must be a list of numpy arrays, one per model input");
    }
    if (deadline_ns < 0) throw_invalid_argument("deadline_ns must be >= 0 (0 = none)");
    auto request = std::make_unique<batching::Request>();
    std::size_t k = 0;
    for (py::handle input : inputs) {
      request->inputs.push_back(tensor_from_array(input, "input " + std::to_string(k)));
      ++k;
    }
    request->priority = priority;
    request->deadline_ns = deadline_ns;
    return request;
  }

  // Kept in both submits: the GIL. The batcher's mutex is never held by a thread that waits for
  // the GIL (the scheduler and workers free Python-owned tensors only after unlocking), so taking
  // it here cannot deadlock; and not dropping the GIL spares the event loop a hand-off to a
  // worker thread and back on every request. A refused request's Python inputs are freed in this
  // frame, with the GIL held.
  std::uint64_t submit(const py::object& inputs, std::int64_t priority, std::int64_t deadline_ns) {
    return batcher_->submit(make_request(inputs, priority, deadline_ns));
  }

  // As submit, but a batch the core decides to run inline (Batcher::submit with a claim: cheap,
  // an idle instance, a runner that needs no GIL) runs right here with the GIL released, its
  // completion queued before this returns: (ticket, ran_here).
  py::tuple submit_or_run(const py::object& inputs, std::int64_t priority,
                          std::int64_t deadline_ns) {
    batching::Batcher::Job claimed;
    const std::uint64_t ticket =
        batcher_->submit(make_request(inputs, priority, deadline_ns), &claimed);
    if (claimed.empty()) return py::make_tuple(ticket, false);
    {
      py::gil_scoped_release nogil;
      batcher_->run_claimed(std::move(claimed));
    }
    return py::make_tuple(ticket, true);
  }

  bool cancel(std::uint64_t ticket) {
    py::gil_scoped_release nogil;
    return batcher_->cancel(ticket);
  }

  py::dict stats() const {
    batching::BatcherStats stats;
    {
      py::gil_scoped_release nogil;
      stats = batcher_->stats();
    }
    py::dict batch_sizes;
    for (const auto& [rows, size_stats] : stats.batch_sizes) {
      py::dict entry;
      entry["count"] = size_stats.count;
      entry["compute_ns"] = size_stats.compute_ns;
      batch_sizes[py::int_(rows)] = entry;
    }
    py::dict out;
    out["request_success"] = stats.request_success;
    out["request_failure"] = stats.request_failure;
    out["inference_count"] = stats.inference_count;
    out["execution_count"] = stats.execution_count;
    out["queue_ns"] = stats.queue_ns;
    out["queue_count"] = stats.queue_count;
    out["compute_ns"] = stats.compute_ns;
    out["compute_count"] = stats.compute_count;
    out["batch_sizes"] = batch_sizes;
    out["pending_requests"] = stats.pending_requests;
    out["busy_instances"] = stats.busy_instances;
    out["shed_count"] = stats.shed_count;
    out["expired_count"] = stats.expired_count;
    out["cancelled_count"] = stats.cancelled_count;
    out["rejected_count"] = stats.rejected_count;
    out["last_inference_ms"] = stats.last_inference_ms;
    out["cost_a_ns_per_row"] = stats.cost.a_ns_per_row;
    out["cost_b_ns"] = stats.cost.b_ns;
    out["arrival_interval_ns"] = stats.cost.arrival_interval_ns;
    out["wait_yield"] = stats.cost.wait_yield;
    out["busy_fraction"] = stats.cost.busy_fraction;
    out["saturated"] = stats.cost.saturated;
    return out;
  }

  void shutdown(bool drain) {
    py::gil_scoped_release nogil;
    batcher_->shutdown(drain);
  }

  const std::string& name() const { return batcher_->name(); }
  const batching::BatcherConfig& config() const { return batcher_->config(); }
  std::uint64_t drift_counted_batches() const {
    return counting_ ? counting_->counted_batches() : 0;
  }
  std::uint64_t drift_skipped_batches() const {
    return counting_ ? counting_->skipped_batches() : 0;
  }

 private:
  std::shared_ptr<runners::DriftCountingRunner> counting_;
  std::unique_ptr<batching::Batcher> batcher_;
};

py::list drain_completions(batching::CompletionQueue& queue) {
  // The queue's mutex is never held while waiting for the GIL, so draining with it is safe.
  std::vector<batching::Completion> taken = queue.drain();
  py::list out;
  for (batching::Completion& completion : taken) {
    py::object outputs = py::none();
    if (completion.code == StatusCode::kOk) {
      py::list arrays;
      for (const Tensor& output : completion.outputs) arrays.append(array_from_tensor(output));
      outputs = std::move(arrays);
    }
    out.append(py::make_tuple(completion.ticket, static_cast<int>(completion.code),
                              completion.message, outputs));
  }
  return out;
}

void shutdown_live_batchers() {
  const std::vector<PyBatcher*> live(live_batchers().begin(), live_batchers().end());
  for (PyBatcher* batcher : live) batcher->shutdown(false);
}

}  // namespace

void register_batching(py::module_& m) {
  py::module_::import("atexit").attr("register")(
      py::cpp_function(&shutdown_live_batchers, py::name("_shutdown_live_batchers")));

  m.def("monotonic_ns", &monotonic_ns,
        "The steady clock (ns) that Batcher deadlines (deadline_ns) are measured on.");

  // Registered before any runner (register_runners.cc), which names it as its base.
  py::class_<batching::Runner, std::shared_ptr<batching::Runner>>(
      m, "NativeRunner",
      "A C++ runner (ONNX Runtime, int8): a Batcher given one runs its batches on the worker "
      "threads without the GIL, and may run a cheap batch inline in submit_or_run.");

  using batching::BatcherConfig;
  py::class_<BatcherConfig> config(
      m, "BatcherConfig",
      "Settings of one Batcher; every field is documented once, in "
      "csrc/batching/batcher_config.h. Keyword-only: BatcherConfig(max_batch_size=8, ...); a "
      "field not given keeps the core's default.");
  config.def_readwrite("max_batch_size", &BatcherConfig::max_batch_size)
      .def_readwrite("instances", &BatcherConfig::instances)
      .def_readwrite("max_queue_delay_us", &BatcherConfig::max_queue_delay_us)
      .def_readwrite("auto_delay", &BatcherConfig::auto_delay)
      .def_readwrite("preferred_batch_sizes", &BatcherConfig::preferred_batch_sizes)
      .def_readwrite("max_queue_size", &BatcherConfig::max_queue_size)
      .def_readwrite("priority_levels", &BatcherConfig::priority_levels)
      .def_readwrite("default_priority_level", &BatcherConfig::default_priority_level)
      .def_readwrite("default_timeout_us", &BatcherConfig::default_timeout_us)
      .def_readwrite("latency_target_us", &BatcherConfig::latency_target_us)
      .def_readwrite("inline_max_batch_us", &BatcherConfig::inline_max_batch_us)
      .def_readwrite("inline_min_cost_samples", &BatcherConfig::inline_min_cost_samples)
      .def_readwrite("saturated_enter_busy_fraction",
                     &BatcherConfig::saturated_enter_busy_fraction)
      .def_readwrite("saturated_leave_busy_fraction",
                     &BatcherConfig::saturated_leave_busy_fraction)
      .def_readwrite("saturated_batch_requests", &BatcherConfig::saturated_batch_requests)
      .def_readwrite("saturated_max_wait_us", &BatcherConfig::saturated_max_wait_us)
      .def_readwrite("lull_arrival_intervals", &BatcherConfig::lull_arrival_intervals)
      .def_readwrite("keep_waiting_yield", &BatcherConfig::keep_waiting_yield)
      .def_readwrite("probe_every_arrivals", &BatcherConfig::probe_every_arrivals)
      .def_readwrite("yield_gain_weight", &BatcherConfig::yield_gain_weight)
      .def_readwrite("yield_loss_weight", &BatcherConfig::yield_loss_weight)
      .def_readwrite("arrival_interval_weight", &BatcherConfig::arrival_interval_weight)
      .def("validate", &BatcherConfig::validate,
           "Raise InvalidArgumentError naming the first bad field.");
  // The constructor sets the fields named above from keywords, so the defaults live only in the
  // C++ struct and a new field needs only its def_readwrite line.
  config.def(py::init([](const py::kwargs& settings) {
    const py::object type = py::type::of<BatcherConfig>();
    const py::object property = py::module_::import("builtins").attr("property");
    py::object made = py::cast(BatcherConfig{});
    for (const auto& [key, value] : settings) {
      const std::string name = py::str(key);
      if (!py::hasattr(type, name.c_str()) ||
          !py::isinstance(type.attr(name.c_str()), property)) {
        throw py::type_error("BatcherConfig has no setting '" + name + "'");
      }
      made.attr(name.c_str()) = value;
    }
    return made.cast<BatcherConfig>();
  }));

  py::class_<batching::CompletionQueue, std::shared_ptr<batching::CompletionQueue>>(
      m, "CompletionQueue",
      "Finished requests of every Batcher; fd is an eventfd readable while completions wait.")
      .def(py::init<>())
      .def_property_readonly("fd", &batching::CompletionQueue::fd)
      .def_property_readonly("pending", &batching::CompletionQueue::pending)
      .def("drain", &drain_completions,
           "Take every finished request as (ticket, status_code, message, outputs or None) and "
           "reset the eventfd.");

  py::class_<PyBatcher>(m, "Batcher", "Dynamic batcher of one model version (csrc/batching).")
      .def(py::init<std::string, batching::BatcherConfig, py::object,
                    std::shared_ptr<batching::CompletionQueue>, const py::object&>(),
           py::arg("name"), py::arg("config"), py::arg("runner"), py::arg("completions"),
           py::arg("drift") = py::none(),
           "runner: a NativeRunner, or a callable list[ndarray] -> list[ndarray] (called with the "
           "GIL on a worker thread). drift: a DriftAccumulator that the runner's batches "
           "(inputs, then outputs) are counted into after each run.")
      .def_property_readonly("drift_counted_batches", &PyBatcher::drift_counted_batches)
      .def_property_readonly("drift_skipped_batches", &PyBatcher::drift_skipped_batches)
      .def("submit", &PyBatcher::submit, py::arg("inputs"), py::arg("priority") = 0,
           py::arg("deadline_ns") = 0,
           "Queue a request (one array per input, dim 0 = rows); returns its ticket.")
      .def("submit_or_run", &PyBatcher::submit_or_run, py::arg("inputs"), py::arg("priority") = 0,
           py::arg("deadline_ns") = 0,
           "As submit; a cheap batch on an idle batcher with a NativeRunner runs in this thread "
           "(GIL released) and is queued as completed before returning: (ticket, ran_here). "
           "BatcherConfig.inline_max_batch_us and inline_min_cost_samples say when.")
      .def("cancel", &PyBatcher::cancel, py::arg("ticket"),
           "Remove a queued request (answered CANCELLED); False when it is not queued.")
      .def("stats", &PyBatcher::stats)
      .def("shutdown", &PyBatcher::shutdown, py::arg("drain") = true)
      .def_property_readonly("name", &PyBatcher::name);
}

}  // namespace headrace::bindings
