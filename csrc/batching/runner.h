// What runs a batch: the interface between the Batcher and a model backend.
//
// Implementations: native runners that never touch Python (csrc/runners: ONNX Runtime, the int8
// model, the drift-counting decorator; the C++ tests), bound to Python as one base class,
// _core.NativeRunner; and a Python callable (csrc/bindings/register_batching.cc; takes the GIL
// only to call it). The Batcher knows only this interface.
//
// Threading: run() is called from the Batcher's worker threads, up to `instances` at once, one
// batch per call; an implementation shared by several instances must be safe for that. A throw
// (CoreError or any std::exception) fails only that batch: its requests complete INTERNAL with
// the message.
#pragma once

#include <cstdint>
#include <vector>

#include "common/tensor.h"

namespace headrace::batching {

struct Batch {
  // One contiguous tensor per model input; dim 0 = `rows`. The runner may keep references to
  // them (they are shared owners), but must not write through them.
  std::vector<Tensor> inputs;
  std::int64_t rows = 0;
  std::size_t requests = 0;
};

class Runner {
 public:
  virtual ~Runner() = default;

  // Returns one tensor per model output, each with dim 0 == batch.rows.
  virtual std::vector<Tensor> run(const Batch& batch) = 0;

  // Whether run() may be called on the thread that submits the request (the Batcher's inline
  // path for cheap batches). False for a runner that takes a lock the submitter may hold: a
  // Python runner needs the GIL, which a Python caller holds while it submits.
  virtual bool runs_on_submitting_thread() const noexcept { return true; }
};

}  // namespace headrace::batching
