#include "quant/quantized_mlp.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>

#include "quant/int8_gemm.h"
#include "common/status.h"

namespace headrace::quant {
namespace {

std::uint32_t resolve_max_code(Isa isa, std::optional<std::uint32_t> activation_bits) {
  if (!activation_bits) return max_activation_code(isa);
  if (*activation_bits != 7 && *activation_bits != 8) {
    throw CoreError(StatusCode::kInvalidArgument,
                    "activation_bits must be 7 or 8, not " + std::to_string(*activation_bits));
  }
  const std::uint32_t max_code = *activation_bits == 7 ? 127u : 255u;
  if (max_code > max_activation_code(isa)) {
    throw CoreError(StatusCode::kInvalidArgument,
                    std::string("the ") + isa_name(isa) +
                        " kernel multiplies 7-bit activation codes exactly, not 8-bit ones");
  }
  return max_code;
}

// Working memory of one thread's run() calls.
struct Scratch {
  std::vector<std::uint8_t> codes;
  std::vector<std::uint8_t> next_codes;
  std::vector<RowQuantization> quantization;
  std::vector<RowQuantization> next_quantization;
  std::vector<std::int32_t> sums;
  std::vector<float> row;
};

template <typename T>
T* grown(std::vector<T>& buffer, std::size_t size) {
  if (buffer.size() < size) buffer.resize(size);
  return buffer.data();
}

[[noreturn]] void throw_non_finite_activation(std::size_t layer) {
  throw CoreError(StatusCode::kInvalidArgument,
                  "int8 model: layer " + std::to_string(layer) +
                      " produced a non-finite value (the input is outside the range the model "
                      "can represent)");
}

}  // namespace

DenseEpilogue QuantizedMlp::Layer::epilogue() const {
  DenseEpilogue result;
  result.weight_scales = weight_scales.data();
  result.per_tensor_weight_scale = weight_scales.size() == 1;
  result.column_sums = weights.column_sums();
  result.bias = bias.empty() ? nullptr : bias.data();
  result.activation = activation;
  return result;
}

QuantizedMlp::QuantizedMlp(const Int8ModelFile& model, Isa isa,
                           std::optional<std::uint32_t> activation_bits)
    : isa_(isa),
      max_code_(resolve_max_code(isa, activation_bits)),
      input_(model.input),
      output_(model.output) {
  layers_.reserve(model.layers.size());
  for (const LayerRecord& record : model.layers) {
    const bool is_static = record.input_quantization == InputQuantization::kStaticPerTensor;
    layers_.push_back(Layer{
        record.k_size, record.n_size,
        PackedWeights(isa, record.weights.data(), record.k_size, record.n_size),
        record.weight_scales, record.bias, record.activation, is_static,
        is_static ? quantization_for_range(record.input_min, record.input_max, max_code_)
                  : RowQuantization{}});
    max_k_padded_ = std::max(max_k_padded_, layers_.back().weights.k_padded());
    max_n_ = std::max(max_n_, std::size_t{record.n_size});
  }
}

QuantizedMlp QuantizedMlp::load(const std::string& path, Isa isa,
                                std::optional<std::uint32_t> activation_bits) {
  return QuantizedMlp(Int8ModelFile::read(path), isa, activation_bits);
}

QuantizedMlp QuantizedMlp::from_bytes(std::span<const std::uint8_t> bytes, Isa isa,
                                      std::optional<std::uint32_t> activation_bits) {
  return QuantizedMlp(Int8ModelFile::parse(bytes, "<bytes>"), isa, activation_bits);
}

RowQuantization QuantizedMlp::quantize_input_row(const RowKernels& kernels, const Layer& layer,
                                                 const float* x, std::uint8_t* codes) const {
  RowQuantization q = layer.static_quantization;
  if (layer.static_input) {
    // Infinities clamp to the calibrated range; NaN has no code.
    if (contains_nan(x, layer.k_size)) {
      throw CoreError(StatusCode::kInvalidArgument,
                      "int8 model input holds NaN, which int8 cannot represent");
    }
  } else {
    float lo = 0.0f;
    float hi = 0.0f;
    kernels.input_range(x, layer.k_size, &lo, &hi);
    q = quantization_for_range(lo, hi, max_code_);
  }
  kernels.quantize(x, layer.k_size, q, max_code_, codes);
  std::fill(codes + layer.k_size, codes + layer.weights.k_padded(), std::uint8_t{0});
  return q;
}

void QuantizedMlp::run(const float* x, std::size_t rows, float* y) const {
  thread_local Scratch scratch;
  const RowKernels& kernels = row_kernels(isa_);
  const std::size_t chunk = std::min(rows, kChunkRows);
  std::uint8_t* codes = grown(scratch.codes, chunk * max_k_padded_);
  std::uint8_t* next_codes = grown(scratch.next_codes, chunk * max_k_padded_);
  RowQuantization* quantization = grown(scratch.quantization, chunk);
  RowQuantization* next_quantization = grown(scratch.next_quantization, chunk);
  std::int32_t* sums = grown(scratch.sums, chunk * max_n_);
  float* row = grown(scratch.row, max_n_);

  const std::size_t in_width = input_size();
  const std::size_t out_width = output_size();
  for (std::size_t row0 = 0; row0 < rows; row0 += kChunkRows) {
    const std::size_t rows_here = std::min(kChunkRows, rows - row0);
    const Layer& first = layers_.front();
    for (std::size_t r = 0; r < rows_here; ++r) {
      quantization[r] = quantize_input_row(kernels, first, x + (row0 + r) * in_width,
                                           codes + r * first.weights.k_padded());
    }
    for (std::size_t li = 0; li < layers_.size(); ++li) {
      const Layer& layer = layers_[li];
      gemm_u8s8_s32(codes, layer.weights.k_padded(), rows_here, layer.weights, sums, layer.n_size);
      const DenseEpilogue epilogue = layer.epilogue();
      if (li + 1 == layers_.size()) {
        for (std::size_t r = 0; r < rows_here; ++r) {
          kernels.dequantize(epilogue, sums + r * layer.n_size, quantization[r], layer.n_size,
                             y + (row0 + r) * out_width, nullptr, nullptr);
        }
        break;
      }
      const Layer& next = layers_[li + 1];
      const std::size_t next_stride = next.weights.k_padded();
      for (std::size_t r = 0; r < rows_here; ++r) {
        std::uint8_t* next_row = next_codes + r * next_stride;
        if (next.static_input) {
          kernels.dequantize(epilogue, sums + r * layer.n_size, quantization[r], layer.n_size, row,
                             nullptr, nullptr);
          next_quantization[r] = next.static_quantization;
        } else {
          float lo = 0.0f;
          float hi = 0.0f;
          kernels.dequantize(epilogue, sums + r * layer.n_size, quantization[r], layer.n_size, row,
                             &lo, &hi);
          if (!std::isfinite(lo) || !std::isfinite(hi)) throw_non_finite_activation(li);
          next_quantization[r] = quantization_for_range(lo, hi, max_code_);
        }
        kernels.quantize(row, layer.n_size, next_quantization[r], max_code_, next_row);
        std::fill(next_row + layer.n_size, next_row + next_stride, std::uint8_t{0});
      }
      std::swap(codes, next_codes);
      std::swap(quantization, next_quantization);
    }
  }
}

}  // namespace headrace::quant
