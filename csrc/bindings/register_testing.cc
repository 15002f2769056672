// _core.testing: bindings that exist only for tests, kept out of the module the server uses.
//   - PolicyHarness: the pure batching policy and its cost model over a hand-built queue and a
//     fake clock (every time is a number handed to it), with admission as submit asks it;
//   - infer_request_parse_steps: the wire parser's count of work units, to test it stays linear;
//   - quant_gemm_quads_emulated: the quad-panel algorithm of the int8 SIMD kernels in portable
//     code, so their packing is tested on any CPU;
//   - kolmogorov_survival, gamma_q, chi_square_survival: the special functions behind the drift
//     statistics' p-values, checked against SciPy;
//   - cuda_*: the tensor-core weight packings and CPU emulations of the CUDA kernels
//     (register_cuda_testing.cc).
// headrace's own Python code never imports _core.testing.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <sched.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "batching/batcher_config.h"
#include "batching/batching_policy.h"
#include "batching/cost_model.h"
#include "bindings/quant_operands.h"
#include "bindings/register.h"
#include "bindings/without_gil.h"
#include "common/status.h"
#include "drift/drift_statistics.h"
#include "quant/int8_gemm.h"
#include "quant/packed_weights.h"
#include "tensors/infer_wire.h"

namespace py = pybind11;

namespace headrace::bindings {
namespace {

// The pure policy with a queue built by hand and a fake clock, for tests and for exploring
// settings. Requests are listed in the order added (arrival order); the policy orders levels.
class PolicyHarness {
 public:
  explicit PolicyHarness(const batching::BatcherConfig& config)
      : policy_(config), cost_(policy_.config()) {}

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

  // A LoadMonitor reading, through the cost model's hysteresis (the config's thresholds).
  bool observe_load(double busy_fraction) {
    cost_.observe_load(busy_fraction);
    saturated_ = cost_.estimate().saturated;
    return saturated_;
  }

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
    out["doomed"] = tickets(decision.doomed);
    out["companion_wait"] = decision.companion_wait;
    out["wait_until_ns"] = decision.action == batching::Decision::Action::kWait
                               ? py::object(py::int_(decision.wait_until_ns))
                               : py::object(py::none());
    return out;
  }

  // What submit would answer for a request arriving at now_ns behind the hand-built queue.
  py::dict admit(std::int64_t rows, std::int64_t priority, std::int64_t deadline_ns,
                 std::int64_t now_ns, std::uint64_t input_bytes) const {
    if (rows < 1) throw_invalid_argument("rows must be >= 1");
    const std::size_t level = policy_.config().level_index(priority);
    batching::AdmissionView view;
    view.rows = rows;
    view.input_bytes = input_bytes;
    view.deadline_ns = deadline_ns;
    for (const auto& queued : queue_) {
      if (queued.level <= level) view.rows_ahead += queued.rows;
    }
    view.cost = cost_.estimate();
    const batching::Admission admission = policy_.admit(view, now_ns);
    py::dict out;
    switch (admission.verdict) {
      case batching::Admission::Verdict::kAdmit: out["verdict"] = "admit"; break;
      case batching::Admission::Verdict::kExpired: out["verdict"] = "expired"; break;
      case batching::Admission::Verdict::kCannotMeetDeadline: out["verdict"] = "late"; break;
    }
    out["wait_ns"] = admission.wait_ns;
    out["run_ns"] = admission.run_ns;
    out["left_ns"] = admission.left_ns;
    return out;
  }

  py::dict cost() const {
    const batching::CostEstimate& estimate = cost_.estimate();
    py::dict out;
    out["a_ns_per_row"] = estimate.a_ns_per_row;
    out["b_ns"] = estimate.b_ns;
    out["a_ns_per_byte"] = estimate.a_ns_per_byte;
    out["b_bytes_ns"] = estimate.b_bytes_ns;
    out["arrival_interval_ns"] = estimate.arrival_interval_ns;
    out["wait_yield"] = estimate.wait_yield;
    out["probe_due"] = estimate.probe_due;
    out["busy_fraction"] = estimate.busy_fraction;
    out["saturated"] = saturated_;
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


py::array_t<std::int32_t> gemm_quads_emulated(const py::array& a_in, const py::array& b_in) {
  const GemmOperands ops = gemm_operands(a_in, b_in, "quant_gemm_quads_emulated", 255);
  const std::vector<std::int8_t> packed = quant::pack_quad_panels(ops.b.data(), ops.k, ops.n);
  py::array_t<std::int32_t> c({static_cast<py::ssize_t>(ops.m), static_cast<py::ssize_t>(ops.n)});
  quant::gemm_quads_emulated(ops.a_padded.data(), ops.lda, ops.m, packed.data(), ops.k, ops.n,
                             c.mutable_data(), ops.n);
  return c;
}

}  // namespace

void register_testing(py::module_& m) {
  py::module_ testing = m.def_submodule(
      "testing", "Bindings that exist only for tests: harnesses and emulations (never used by "
                 "the server).");
  // `import headrace._core.testing` works too, not only attribute access.
  py::module_::import("sys").attr("modules")["headrace._core.testing"] = testing;

  py::class_<PolicyHarness>(testing, "PolicyHarness",
                            "The pure batching policy over a hand-built queue and a fake clock.")
      .def(py::init<const batching::BatcherConfig&>(), py::arg("config"))
      .def("add", &PolicyHarness::add, py::arg("ticket"), py::arg("rows"), py::kw_only(),
           py::arg("priority") = 0, py::arg("enqueue_ns"), py::arg("deadline_ns") = 0,
           py::arg("shape_key") = 0)
      .def("remove", &PolicyHarness::remove, py::arg("tickets"))
      .def("set_instances", &PolicyHarness::set_instances, py::arg("free"), py::arg("busy"))
      .def("observe_batch",
           [](PolicyHarness& harness, std::int64_t rows, std::int64_t compute_ns,
              std::optional<std::uint64_t> input_bytes) {
             const std::uint64_t bytes = input_bytes ? *input_bytes
                                                     : static_cast<std::uint64_t>(
                                                           std::max<std::int64_t>(rows, 0));
             harness.cost_model().observe_batch(rows, bytes, compute_ns);
           },
           py::arg("rows"), py::arg("compute_ns"), py::arg("input_bytes") = py::none(),
           "A batch ran: input_bytes defaults to one byte per row.")
      .def("admit", &PolicyHarness::admit, py::arg("rows"), py::kw_only(),
           py::arg("priority") = 0, py::arg("deadline_ns"), py::arg("now_ns"),
           py::arg("input_bytes") = 0,
           "What submit decides for such a request behind the queued ones: {verdict: "
           "'admit'|'expired'|'late', wait_ns, run_ns, left_ns}.")
      .def("observe_arrival",
           [](PolicyHarness& harness, std::int64_t arrival_ns) {
             harness.cost_model().observe_arrival(arrival_ns);
           },
           py::arg("arrival_ns"))
      .def("set_saturated", &PolicyHarness::set_saturated, py::arg("saturated"),
           "Whether the server counts as saturated, as the batcher would have concluded.")
      .def("observe_load", &PolicyHarness::observe_load, py::arg("busy_fraction"),
           "A LoadMonitor busy fraction, through the config's saturation hysteresis; returns "
           "whether the server now counts as saturated.")
      .def("observe_companion_wait",
           [](PolicyHarness& harness, std::size_t requests) {
             harness.cost_model().observe_companion_wait(requests);
           },
           py::arg("requests"))
      .def("decide", &PolicyHarness::decide, py::arg("now_ns"), py::arg("flush") = false)
      .def("cost", &PolicyHarness::cost)
      .def_property_readonly("queued", &PolicyHarness::queued);

  testing.def(
      "infer_request_parse_steps",
      [](const py::bytes& message, std::uint64_t max_elements, bool validate_bytes) -> py::tuple {
        const std::span<const std::uint8_t> bytes(
            reinterpret_cast<const std::uint8_t*>(PyBytes_AS_STRING(message.ptr())),
            static_cast<std::size_t>(PyBytes_GET_SIZE(message.ptr())));
        std::uint64_t steps = 0;
        try {
          // Clamped as _core.parse_infer_request clamps it (2^60 keeps byte counts exact).
          tensors::parse_infer_request(bytes, std::min(max_elements, std::uint64_t{1} << 60),
                                       validate_bytes, &steps);
        } catch (const CoreError& error) {
          return py::make_tuple(steps, static_cast<int>(error.code()), error.message());
        }
        return py::make_tuple(steps, 0, std::string());
      },
      py::arg("message"), py::arg("max_elements"), py::arg("validate_bytes") = false,
      "Parse as parse_infer_request does: (units of work taken -- fields read, set lookups, "
      "BYTES elements walked --, status code, message), also for refused messages; for tests "
      "that the parse stays linear.");

  testing.def("quant_gemm_quads_emulated", &gemm_quads_emulated, py::arg("a"), py::arg("b"),
              "The quad-panel algorithm of the SIMD kernels (vpdpbusd / vpmaddubsw + vpmaddwd) "
              "in portable code; runs on any CPU.");
  testing.def(
      "probe_without_gil",
      [](bool idle_priority) {
        const auto inside = run_without_gil(idle_priority, [] {
          return std::make_pair(sched_getscheduler(0), PyGILState_Check() != 0);
        });
        return py::make_tuple(inside.first, inside.second, sched_getscheduler(0));
      },
      py::arg("idle_priority"),
      "Runs work through run_without_gil, the path of OrtModel.run: (the thread's scheduling "
      "policy during the work, whether it held the GIL then, its policy after the call).");
  testing.def("kolmogorov_survival", &drift::kolmogorov_survival, py::arg("lam"));
  testing.def("gamma_q", &drift::gamma_q, py::arg("a"), py::arg("x"));
  testing.def("chi_square_survival", &drift::chi_square_survival, py::arg("statistic"),
              py::arg("dof"));
  register_cuda_testing(testing);
}

}  // namespace headrace::bindings
