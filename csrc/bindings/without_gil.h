// Runs native work with the GIL released and, when asked, at idle CPU priority: the thread is
// lowered only after the GIL is released and restored before the GIL is taken back, so it never
// holds the GIL at idle priority (common/idle_priority.h says why that matters). OrtModel.run
// (register_runners.cc) runs its model through it; _core.testing.probe_without_gil observes it.
//
// Threading: call with the GIL held; `work` runs on the calling thread without it.
#pragma once

#include <pybind11/pybind11.h>

#include <utility>

#include "common/idle_priority.h"

namespace headrace::bindings {

template <class Work>
auto run_without_gil(bool idle_priority, Work&& work) {
  pybind11::gil_scoped_release nogil;
  const IdlePriority idle(idle_priority);  // destroyed before nogil: restored, then the GIL
  return std::forward<Work>(work)();
}

}  // namespace headrace::bindings
