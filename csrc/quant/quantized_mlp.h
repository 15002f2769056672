// A whole quantized MLP: float32 [rows, input features] -> float32 [rows, output_size], every
// layer an int8 GEMM (int32 accumulation) with its epilogue, activations requantized between
// layers. No Python anywhere: this is what the batcher's native runner calls.
//
// Per chunk of rows, per layer: gemm_u8s8_s32 over the chunk, then per row the fused epilogue
// (dequantize, bias, activation, and the range of the result) and, for every layer but the last,
// the quantization of that row into the next layer's activation codes while it is in L1.
// Activation codes are 7-bit on avx2 (exact vpmaddubsw) and 8-bit elsewhere unless the caller
// asks for 7 (which makes every ISA give the avx2 results bit for bit).
//
// Ownership/threading: owns its packed weights, scales and biases; immutable after load. run() is
// const and keeps its working memory in thread-local scratch (grown to the largest chunk it has
// seen, kept for the thread's life), so any number of threads may call run() on one QuantizedMlp
// at the same time without locking.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
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
  // Rows pushed through all layers together: bounds the scratch (int32 block kChunkRows x widest
  // layer) and keeps it in L2 between the GEMM and the epilogue.
  static constexpr std::size_t kChunkRows = 32;

  // Packs the file's weights for `isa` (CoreError(kFailedPrecondition) if this CPU can't run it).
  // activation_bits: 7 or 8, default the ISA's best (avx2: 7; scalar, avx512vnni: 8);
  // CoreError(kInvalidArgument) for other values or 8 on avx2.
  QuantizedMlp(const Int8ModelFile& model, Isa isa,
               std::optional<std::uint32_t> activation_bits = std::nullopt);

  static QuantizedMlp load(const std::string& path, Isa isa,
                           std::optional<std::uint32_t> activation_bits = std::nullopt);
  static QuantizedMlp from_bytes(std::span<const std::uint8_t> bytes, Isa isa,
                                 std::optional<std::uint32_t> activation_bits = std::nullopt);

  // x: rows x input_size() floats (row-major), y: rows x output_size(). Throws
  // CoreError(kInvalidArgument) when x holds NaN (or infinity, under dynamic quantization).
  void run(const float* x, std::size_t rows, float* y) const;

  Isa isa() const noexcept { return isa_; }
  std::uint32_t activation_bits() const noexcept { return max_code_ == 127u ? 7u : 8u; }
  // Features per input row: the product of the input's non-batch dimensions.
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
    ActivationSpec activation;
    bool static_input;
    RowQuantization static_quantization;  // when static_input
    DenseEpilogue epilogue() const;
  };

  // Quantizes one row of `layer`'s input into codes[0 .. k_padded) (zero past k_size).
  RowQuantization quantize_input_row(const RowKernels& kernels, const Layer& layer, const float* x,
                                     std::uint8_t* codes) const;

  Isa isa_;
  std::uint32_t max_code_;
  TensorMetadata input_;
  TensorMetadata output_;
  std::vector<Layer> layers_;
  std::size_t max_k_padded_ = 0;
  std::size_t max_n_ = 0;
};

}  // namespace headrace::quant
