// One inference request as the batcher holds it between submit and completion.
//
// Ownership: the RequestQueue owns a queued request (unique_ptr); a worker owns the requests of
// the batch it runs. The input tensors' owners are dropped by the worker right after their bytes
// are copied into the batch buffer (through Runner::release, which may need a lock such as the
// GIL), or with the request when it is answered without running.
#pragma once

#include <cstdint>
#include <vector>

#include "common/clock.h"
#include "common/tensor.h"

namespace headrace::batching {

struct Request {
  // Filled by the caller of Batcher::submit.
  std::vector<Tensor> inputs;  // one per model input, in a fixed order; all share dim 0
  std::int64_t priority = 0;   // 0 = the config's default level
  TimeNs deadline_ns = 0;      // absolute, on monotonic_ns(); 0 = none (default_timeout_us)

  // Filled by Batcher::submit.
  std::uint64_t ticket = 0;
  std::int64_t rows = 0;
  std::size_t level = 0;
  TimeNs enqueue_ns = 0;
  std::uint64_t shape_key = 0;
};

}  // namespace headrace::batching
