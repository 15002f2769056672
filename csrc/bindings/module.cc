// headrace._core: the private native module. One register_<area>() per folder of csrc/; this file
// only wires them together. register_errors() comes first: it installs the one translation of
// core errors into headrace.errors' types that every other binding relies on.
#include <pybind11/pybind11.h>

#include "bindings/register.h"

namespace py = pybind11;

PYBIND11_MODULE(_core, m) {
  m.doc() = "headrace native core (private: use the headrace package's public API)";

  headrace::bindings::register_errors(m);
  headrace::bindings::register_tensors(m);
  headrace::bindings::register_batching(m);
  headrace::bindings::register_quant(m);
  headrace::bindings::register_drift(m);
  // Before register_runners: CudaMlpRunner's constructor takes a CudaMlp.
  headrace::bindings::register_cuda(m);
  headrace::bindings::register_runners(m);
  headrace::bindings::register_testing(m);
  // A new csrc/ area adds its register_<area>(m) here.
}
