// The int8 backend's batch runner on a CUDA device: runs a cuda::CudaMlp on the batcher's worker
// threads without Python or the GIL, exactly where QuantizedMlpRunner runs the CPU kernels. Built
// with or without CUDA: in a build without it no CudaMlp can be constructed (cuda_absent.cc), so
// no such runner ever runs.
//
// Ownership/threading: shares the CudaMlp (immutable weights; run() is safe from many threads,
// each call on its own stream); run() is called by up to `instances` workers at once. The output
// buffer is allocated per batch and owned by the returned tensor.
#pragma once

#include <memory>
#include <vector>

#include "batching/runner.h"
#include "cuda/cuda_mlp.h"

namespace headrace::runners {

class CudaMlpRunner final : public batching::Runner {
 public:
  explicit CudaMlpRunner(std::shared_ptr<const cuda::CudaMlp> mlp) : mlp_(std::move(mlp)) {}

  // One FP32 input [rows, input_size] in; one FP32 output [rows, output_size] out.
  std::vector<Tensor> run(const batching::Batch& batch) override;

 private:
  std::shared_ptr<const cuda::CudaMlp> mlp_;
};

}  // namespace headrace::runners
