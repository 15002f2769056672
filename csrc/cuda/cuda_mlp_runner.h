// The int8 backend's batch runner on a CUDA device: runs a CudaMlp on the batcher's worker
// threads without Python or the GIL, exactly where QuantizedMlpRunner runs the CPU kernels.
//
// Ownership/threading: shares the CudaMlp (immutable weights; run() is safe from many threads,
// each call on its own stream); run() is called by up to `instances` workers at once. The output
// buffer is allocated per batch and owned by the returned tensor.
#pragma once

#include <memory>
#include <vector>

#include "batching/runner.h"
#include "cuda/cuda_mlp.h"

namespace headrace::cuda {

class CudaMlpRunner final : public batching::Runner {
 public:
  explicit CudaMlpRunner(std::shared_ptr<const CudaMlp> mlp) : mlp_(std::move(mlp)) {}

  // One FP32 input [rows, input_size] in; one FP32 output [rows, output_size] out.
  std::vector<batching::Tensor> run(const batching::Batch& batch) override;

 private:
  std::shared_ptr<const CudaMlp> mlp_;
};

}  // namespace headrace::cuda
