// Bindings for csrc/batching: the Batcher with a Python-callable runner, the shared
// CompletionQueue, and a PolicyHarness that drives the pure policy with a fake clock.
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

#include <algorithm>
#include <cstdint>
#include <memory>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "batching/batcher.h"
#include "batching/batching_policy.h"
#include "batching/completion_queue.h"
#include "batching/cost_model.h"
#include "batching/runner.h"
#include "batching/tensor.h"
#include "bindings/array_tensors.h"
#include "bindings/register.h"
#include "cuda/cuda_mlp_runner.h"
#include "drift/drift_accumulator.h"
#include "drift/drift_counting_runner.h"
#include "ort/ort_model.h"
#include "quant/quantized_mlp.h"
#include "quant/quantized_mlp_runner.h"
#include "tensors/status.h"
#include "tensors/tensor_codec.h"

namespace py = pybind11;

namespace headrace::bindings {
namespace {

using batching::DataType;
using batching::Tensor;

// Runs batches through a Python callable: list[np.ndarray] -> list[np.ndarray].
class PythonRunner final : public batching::Runner {
 public:
  explicit PythonRunner(py::object callable) : callable_(std::move(callable)) {}
  ~PythonRunner() override {
    py::gil_scoped_acquire gil;
    callable_ = py::object();
  }

  std::vector<Tensor> run(const batching::Batch& batch) override {
    py::gil_scoped_acquire gil;
    std::string failure;
    try {
      py::list inputs;
      for (const Tensor& input : batch.inputs) inputs.append(array_from_tensor(input));
      py::object result = callable_(inputs);
      if (!py::isinstance<py::list>(result) && !py::isinstance<py::tuple>(result)) {
        throw CoreError(StatusCode::kInternal,
                        "runner must return a list of numpy arrays, got " +
                            py::str(py::type::of(result)).cast<std::string>());
      }
      std::vector<Tensor> outputs;
      std::size_t k = 0;
      for (py::handle item : result) {
        outputs.push_back(tensor_from_array(item, "runner output " + std::to_string(k)));
        ++k;
      }
      return outputs;
    } catch (py::error_already_set& error) {
      failure = error.what();
    } catch (const CoreError& error) {
      failure = error.message();
    }
    throw CoreError(StatusCode::kInternal, "runner failed: " + failure);
  }

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
    std::shared_ptr<batching::Runner> native_runner;
    if (py::isinstance<quant::QuantizedMlp>(runner)) {
      // The int8 backend: batches run in C++ on the worker threads, never taking the GIL.
      native_runner = std::make_shared<quant::QuantizedMlpRunner>(
          runner.cast<std::shared_ptr<quant::QuantizedMlp>>());
    } else if (py::isinstance<cuda::CudaMlp>(runner)) {
      // The int8 backend on a GPU: the same C++ path, each batch on its own CUDA stream.
      native_runner = std::make_shared<cuda::CudaMlpRunner>(
          runner.cast<std::shared_ptr<cuda::CudaMlp>>());
    } else if (py::isinstance<ort::OrtRunner>(runner)) {
      // ONNX Runtime through its C API: no GIL on the worker threads either.
      native_runner = runner.cast<std::shared_ptr<ort::OrtRunner>>();
    } else if (PyCallable_Check(runner.ptr())) {
      runs_native_ = false;
      native_runner = std::make_shared<PythonRunner>(std::move(runner));
    } else {
      throw_invalid_argument("runner must be callable, a QuantizedMlp, a CudaMlp or an OrtRunner");
    }
    if (drift) {
      // Counted here, in C++ after each run and without the GIL, for native runners (their
      // batches never reach Python) and for Python runners whose profile needs no encoding
      // (numerical features only: the caller decides and passes no accumulator otherwise).
      counting_ = std::make_shared<drift::DriftCountingRunner>(std::move(native_runner),
                                                               std::move(drift));
      native_runner = counting_;
    }
    batcher_ = std::make_unique<batching::Batcher>(std::move(name), std::move(config),
                                                   std::move(native_runner), std::move(completions));
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

  // As submit, but a cheap batch for an idle batcher with a native runner runs right here (GIL
  // released), its completion queued before this returns: (ticket, ran_here).
  py::tuple submit_or_run(const py::object& inputs, std::int64_t priority,
                          std::int64_t deadline_ns) {
    batching::Batcher::Job claimed;
    const std::uint64_t ticket =
        batcher_->submit(make_request(inputs, priority, deadline_ns),
                         runs_native_ ? kInlineMaxNs : 0, &claimed);
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
  // Longest predicted batch that runs on the submitting thread (the event loop, which is blocked
  // meanwhile): about what one request's own gRPC handling costs, so a small model's run is
  // cheaper inline than the two thread wake-ups it saves.
  static constexpr batching::TimeNs kInlineMaxNs = 100'000;

  bool runs_native_ = true;  // false for a Python runner (it needs the GIL: never inline)
  std::shared_ptr<drift::DriftCountingRunner> counting_;
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

// The pure policy with a queue built by hand and a fake clock, for tests and for exploring
// settings. Requests are listed in the order added (arrival order); the policy orders levels.
class PolicyHarness {
 public:
  explicit PolicyHarness(const batching::BatcherConfig& config)
      : policy_(config), cost_(config.latency_target_us) {}

  void add(std::uint64_t ticket, std::int64_t rows, std::int64_t priority, std::int64_t enqueue_ns,
           std::int64_t deadline_ns, std::uint64_t shape_key) {
    if (rows < 1) throw_invalid_argument("rows must be >= 1");
    for (const auto& queued : queue_) {
      if (queued.ticket == ticket) throw_invalid_argument("ticket " + std::to_string(ticket) + " already queued");
    }
    batching::QueuedRequest request;
    request.ticket = ticket;
    request.rows = rows;
    request.level = policy_.config().level_index(priority);
    request.enqueue_ns = enqueue_ns;
    request.deadline_ns = deadline_ns;
    request.shape_key = shape_key;
    queue_.push_back(request);
    cost_.observe_arrival(enqueue_ns);
  }

  void remove(const std::vector<std::uint64_t>& tickets) {
    std::erase_if(queue_, [&](const batching::QueuedRequest& request) {
      return std::find(tickets.begin(), tickets.end(), request.ticket) != tickets.end();
    });
  }

  void set_instances(std::int64_t free, std::int64_t busy) {
    if (free < 0 || busy < 0) throw_invalid_argument("instance counts must be >= 0");
    free_ = free;
    busy_ = busy;
  }

  void set_saturated(bool saturated) { saturated_ = saturated; }

  py::dict decide(std::int64_t now_ns, bool flush) const {
    batching::QueueView state;
    state.requests = queue_;
    state.free_instances = free_;
    state.busy_instances = busy_;
    state.cost = cost_.estimate();
    state.cost.saturated = saturated_;
    state.flush = flush;
    const batching::Decision decision = policy_.decide(state, now_ns);
    const auto tickets = [&](const std::vector<std::size_t>& indices) {
      py::list out;
      for (const std::size_t i : indices) out.append(queue_[i].ticket);
      return out;
    };
    py::dict out;
    switch (decision.action) {
      case batching::Decision::Action::kRun: out["action"] = "run"; break;
      case batching::Decision::Action::kWait: out["action"] = "wait"; break;
      case batching::Decision::Action::kIdle: out["action"] = "idle"; break;
    }
    out["run"] = tickets(decision.run);
    out["expired"] = tickets(decision.expired);
    out["shed"] = tickets(decision.shed);
    out["companion_wait"] = decision.companion_wait;
    out["wait_until_ns"] = decision.action == batching::Decision::Action::kWait
                               ? py::object(py::int_(decision.wait_until_ns))
                               : py::object(py::none());
    return out;
  }

  py::dict cost() const {
    const batching::CostEstimate& estimate = cost_.estimate();
    py::dict out;
    out["a_ns_per_row"] = estimate.a_ns_per_row;
    out["b_ns"] = estimate.b_ns;
    out["arrival_interval_ns"] = estimate.arrival_interval_ns;
    out["wait_yield"] = estimate.wait_yield;
    out["probe_due"] = estimate.probe_due;
    out["samples"] = cost_.samples();
    return out;
  }

  std::vector<std::uint64_t> queued() const {
    std::vector<std::uint64_t> tickets;
    for (const auto& request : queue_) tickets.push_back(request.ticket);
    return tickets;
  }

  batching::CostModel& cost_model() { return cost_; }

 private:
  batching::BatchingPolicy policy_;
  batching::CostModel cost_;
  std::vector<batching::QueuedRequest> queue_;
  std::int64_t free_ = 1;
  std::int64_t busy_ = 0;
  bool saturated_ = false;
};

void shutdown_live_batchers() {
  const std::vector<PyBatcher*> live(live_batchers().begin(), live_batchers().end());
  for (PyBatcher* batcher : live) batcher->shutdown(false);
}

}  // namespace

void register_batching(py::module_& m) {
  py::module_::import("atexit").attr("register")(
      py::cpp_function(&shutdown_live_batchers, py::name("_shutdown_live_batchers")));

  m.def("monotonic_ns", &batching::monotonic_ns,
        "The steady clock (ns) that Batcher deadlines (deadline_ns) are measured on.");

  py::class_<batching::BatcherConfig>(m, "BatcherConfig",
                                      "Settings of one Batcher (see csrc/batching/batcher_config.h).")
      .def(py::init([](std::int64_t max_batch_size, std::int64_t instances,
                       std::int64_t max_queue_delay_us, bool auto_delay,
                       std::vector<std::int64_t> preferred_batch_sizes, std::int64_t max_queue_size,
                       std::int64_t priority_levels, std::int64_t default_priority_level,
                       std::int64_t default_timeout_us, std::int64_t latency_target_us) {
             batching::BatcherConfig config;
             config.max_batch_size = max_batch_size;
             config.instances = instances;
             config.max_queue_delay_us = max_queue_delay_us;
             config.auto_delay = auto_delay;
             config.preferred_batch_sizes = std::move(preferred_batch_sizes);
             config.max_queue_size = max_queue_size;
             config.priority_levels = priority_levels;
             config.default_priority_level = default_priority_level;
             config.default_timeout_us = default_timeout_us;
             config.latency_target_us = latency_target_us;
             return config;
           }),
           py::kw_only(), py::arg("max_batch_size") = 8, py::arg("instances") = 1,
           py::arg("max_queue_delay_us") = 0, py::arg("auto_delay") = false,
           py::arg("preferred_batch_sizes") = std::vector<std::int64_t>{},
           py::arg("max_queue_size") = 0, py::arg("priority_levels") = 0,
           py::arg("default_priority_level") = 0, py::arg("default_timeout_us") = 0,
           py::arg("latency_target_us") = 0)
      .def_readwrite("max_batch_size", &batching::BatcherConfig::max_batch_size)
      .def_readwrite("instances", &batching::BatcherConfig::instances)
      .def_readwrite("max_queue_delay_us", &batching::BatcherConfig::max_queue_delay_us)
      .def_readwrite("auto_delay", &batching::BatcherConfig::auto_delay)
      .def_readwrite("preferred_batch_sizes", &batching::BatcherConfig::preferred_batch_sizes)
      .def_readwrite("max_queue_size", &batching::BatcherConfig::max_queue_size)
      .def_readwrite("priority_levels", &batching::BatcherConfig::priority_levels)
      .def_readwrite("default_priority_level", &batching::BatcherConfig::default_priority_level)
      .def_readwrite("default_timeout_us", &batching::BatcherConfig::default_timeout_us)
      .def_readwrite("latency_target_us", &batching::BatcherConfig::latency_target_us)
      .def("validate", &batching::BatcherConfig::validate,
           "Raise CoreError(INVALID_ARGUMENT) naming the first bad field.");

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
           "drift: a DriftAccumulator that the runner's batches (inputs, then outputs) are "
           "counted into after each run.")
      .def_property_readonly("drift_counted_batches", &PyBatcher::drift_counted_batches)
      .def_property_readonly("drift_skipped_batches", &PyBatcher::drift_skipped_batches)
      .def("submit", &PyBatcher::submit, py::arg("inputs"), py::arg("priority") = 0,
           py::arg("deadline_ns") = 0,
           "Queue a request (one array per input, dim 0 = rows); returns its ticket.")
      .def("submit_or_run", &PyBatcher::submit_or_run, py::arg("inputs"), py::arg("priority") = 0,
           py::arg("deadline_ns") = 0,
           "As submit; a cheap batch on an idle batcher with a native runner runs in this thread "
           "(GIL released) and is queued as completed before returning: (ticket, ran_here).")
      .def("cancel", &PyBatcher::cancel, py::arg("ticket"),
           "Remove a queued request (answered CANCELLED); False when it is not queued.")
      .def("stats", &PyBatcher::stats)
      .def("shutdown", &PyBatcher::shutdown, py::arg("drain") = true)
      .def_property_readonly("name", &PyBatcher::name);

  py::class_<PolicyHarness>(m, "PolicyHarness",
                            "The pure batching policy over a hand-built queue and a fake clock.")
      .def(py::init<const batching::BatcherConfig&>(), py::arg("config"))
      .def("add", &PolicyHarness::add, py::arg("ticket"), py::arg("rows"), py::kw_only(),
           py::arg("priority") = 0, py::arg("enqueue_ns"), py::arg("deadline_ns") = 0,
           py::arg("shape_key") = 0)
      .def("remove", &PolicyHarness::remove, py::arg("tickets"))
      .def("set_instances", &PolicyHarness::set_instances, py::arg("free"), py::arg("busy"))
      .def("observe_batch",
           [](PolicyHarness& harness, std::int64_t rows, std::int64_t compute_ns) {
             harness.cost_model().observe_batch(rows, compute_ns);
           },
           py::arg("rows"), py::arg("compute_ns"))
      .def("observe_arrival",
           [](PolicyHarness& harness, std::int64_t arrival_ns) {
             harness.cost_model().observe_arrival(arrival_ns);
           },
           py::arg("arrival_ns"))
      .def("set_saturated", &PolicyHarness::set_saturated, py::arg("saturated"),
           "What LoadMonitor would report: whether the server's CPU is saturated.")
      .def("observe_companion_wait",
           [](PolicyHarness& harness, std::size_t requests) {
             harness.cost_model().observe_companion_wait(requests);
           },
           py::arg("requests"))
      .def("decide", &PolicyHarness::decide, py::arg("now_ns"), py::arg("flush") = false)
      .def("cost", &PolicyHarness::cost)
      .def_property_readonly("queued", &PolicyHarness::queued);
}

}  // namespace headrace::bindings
