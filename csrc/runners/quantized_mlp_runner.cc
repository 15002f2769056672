#include "runners/quantized_mlp_runner.h"

#include <cstdint>
#include <string>

#include "common/status.h"

namespace headrace::runners {

std::vector<Tensor> QuantizedMlpRunner::run(const batching::Batch& batch) {
  if (batch.inputs.size() != 1) {
    throw CoreError(StatusCode::kInternal,
                    "int8 model takes one input, the batch has " +
                        std::to_string(batch.inputs.size()));
  }
  const Tensor& input = batch.inputs.front();
  const auto in_features = static_cast<std::int64_t>(mlp_->input_size());
  // Graphs that Flatten or Reshape their input first ([rows, 2, 4] -> [rows, 8]) keep a rank
  // above 2: the batch buffer is row-major and contiguous, so each row's trailing dims are
  // already the flat feature vector the first layer reads.
  std::int64_t row_features = input.shape.size() >= 2 ? 1 : -1;
  for (std::size_t d = 1; d < input.shape.size(); ++d) row_features *= input.shape[d];
  if (input.dtype != DataType::kFp32 || input.shape.size() < 2 || row_features != in_features) {
    throw CoreError(StatusCode::kInternal,
                    "int8 model expects an FP32 batch of rows of " +
                        std::to_string(in_features) + " features");
  }
  const auto rows = static_cast<std::size_t>(input.shape[0]);
  const std::size_t out_features = mlp_->output_size();
  std::uint8_t* out = nullptr;
  Tensor output = Tensor::allocate(
      DataType::kFp32,
      {input.shape[0], static_cast<std::int64_t>(out_features)},
      rows * out_features * sizeof(float), &out);
  // Batch buffers and Tensor::allocate hand out storage aligned for any scalar type.
  mlp_->run(reinterpret_cast<const float*>(input.data.get()), rows,
            reinterpret_cast<float*>(out));
  std::vector<Tensor> outputs;
  outputs.push_back(std::move(output));
  return outputs;
}

}  // namespace headrace::runners
