// A whole quantized MLP: float32 [rows, input_size] -> float32 [rows, output_size], every layer an
// int8 GEMM (int32 accumulation) with its epilogue, activations requantized to int8 between layers.
// No Python anywhere: this is what the batcher's native runner calls.
//
// Ownership/threading: owns its packed weights, scales and biases; immutable after load. run() is
// const and keeps all working memory in a per-call scratch, so any number of threads may call run()
// on one QuantizedMlp at the same time without locking.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "quant/epilogue.h"
#include "quant/int8_model_file.h"
#include "quant/isa.h"
#include "quant/packed_weights.h"

namespace headrace::quant {

class QuantizedMlp {
 public:
  // Rows pushed through all layers together: bounds per-call scratch (int32 block
  // kChunkRows x widest layer) and keeps it in L2 between GEMM and epilogue.
  static constexpr std::size_t kChunkRows = 32;

  // Packs the file's weights for `isa` (CoreError(kFailedPrecondition) if this CPU can't run it).
  QuantizedMlp(const Int8ModelFile& model, Isa isa);

  static QuantizedMlp load(const std::string& path, Isa isa);
  static QuantizedMlp from_bytes(std::span<const std::uint8_t> bytes, Isa isa);

  // x: rows x input_size() floats (row-major), y: rows x output_size(). Throws
  // CoreError(kInvalidArgument) when x holds NaN or infinity under dynamic quantization.
  void run(const float* x, std::size_t rows, float* y) const;

  Isa isa() const noexcept { return isa_; }
  std::size_t input_size() const noexcept { return layers_.front().k_size; }
  std::size_t output_size() const noexcept { return layers_.back().n_size; }
  std::size_t layer_count() const noexcept { return layers_.size(); }
  const TensorMetadata& input() const noexcept { return input_; }
  const TensorMetadata& output() const noexcept { return output_; }

 private:
  struct Layer {
    std::size_t k_size;
    std::size_t n_size;
    PackedWeights weights;
    std::vector<float> weight_scales;
    std::vector<float> bias;
    Activation activation;
    InputQuantization input_quantization;
    float input_scale;
    Epilogue epilogue() const;
  };

  // Quantizes rows of floats into `q` (row stride = width) for `layer`, writing per-row scales.
  static void quantize_rows(const Layer& layer, const float* x, std::size_t rows, std::int8_t* q,
                            float* row_scales);

  Isa isa_;
  TensorMetadata input_;
  TensorMetadata output_;
  std::vector<Layer> layers_;
  std::size_t max_width_ = 0;
};

}  // namespace headrace::quant
