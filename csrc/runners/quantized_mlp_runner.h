// The int8 backend's batch runner: runs a QuantizedMlp on the batcher's worker threads without
// Python or the GIL.
//
// Ownership/threading: shares the (immutable after load) QuantizedMlp with whoever else holds
// it; run() is called by up to `instances` workers at once, which QuantizedMlp::run allows (it
// keeps per-call scratch only). The output buffer is allocated per batch and owned by the
// returned tensor.
#pragma once

#include <memory>
#include <vector>

#include "batching/runner.h"
#include "quant/quantized_mlp.h"

namespace headrace::runners {

class QuantizedMlpRunner final : public batching::Runner {
 public:
  explicit QuantizedMlpRunner(std::shared_ptr<const quant::QuantizedMlp> mlp) : mlp_(std::move(mlp)) {}

  // One FP32 input [rows, input_size] in; one FP32 output [rows, output_size] out.
  std::vector<Tensor> run(const batching::Batch& batch) override;

 private:
  std::shared_ptr<const quant::QuantizedMlp> mlp_;
};

}  // namespace headrace::runners
