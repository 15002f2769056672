// Per-model statistics kept by the Batcher's own threads (as Triton's scheduler keeps them), read
// as one consistent copy by Batcher::stats().
#pragma once

#include <cstdint>
#include <map>

#include "batching/cost_model.h"

namespace headrace::batching {

struct BatchSizeStats {
  std::uint64_t count = 0;
  std::int64_t compute_ns = 0;
};

struct BatcherStats {
  std::uint64_t request_success = 0;
  // Every request answered with an error: runner failures, expired, shed, cancelled, shut down.
  std::uint64_t request_failure = 0;
  std::uint64_t inference_count = 0;  // rows run through the runner
  std::uint64_t execution_count = 0;  // batches run
  // Enqueue -> taken into a batch, summed over requests that were run.
  std::int64_t queue_ns = 0;
  std::uint64_t queue_count = 0;
  // Runner time (assembly and scatter excluded), summed over batches.
  std::int64_t compute_ns = 0;
  std::uint64_t compute_count = 0;
  std::map<std::int64_t, BatchSizeStats> batch_sizes;  // rows in the batch -> stats
  std::uint64_t pending_requests = 0;  // queued now
  std::int64_t busy_instances = 0;     // batches handed to instances and not yet finished
  std::uint64_t shed_count = 0;
  // Answered DEADLINE_EXCEEDED from the queue without running: the deadline passed while queued,
  // or (doomed_count, included here) it was still ahead but no batch could end before it.
  std::uint64_t expired_count = 0;
  std::uint64_t doomed_count = 0;
  std::uint64_t cancelled_count = 0;
  std::uint64_t rejected_count = 0;  // refused at submit: queue full
  // Refused at submit for its deadline: already past (DEADLINE_EXCEEDED), or the queue ahead
  // makes it late (UNAVAILABLE). Not counted in request_failure: it never entered the queue,
  // like rejected_count.
  std::uint64_t deadline_refused_count = 0;
  std::int64_t last_inference_ms = 0;  // ms since the Unix epoch; 0 = never
  CostEstimate cost;
};

}  // namespace headrace::batching
