#include "quant/quantized_mlp.h"

#include <algorithm>
#include <utility>

#include "quant/int8_gemm.h"

namespace headrace::quant {

Epilogue QuantizedMlp::Layer::epilogue() const {
  Epilogue result;
  result.weight_scales = weight_scales.data();
  result.per_tensor_weight_scale = weight_scales.size() == 1;
  result.bias = bias.empty() ? nullptr : bias.data();
  result.activation = activation;
  return result;
}

QuantizedMlp::QuantizedMlp(const Int8ModelFile& model, Isa isa)
    : isa_(isa), input_(model.input), output_(model.output) {
  layers_.reserve(model.layers.size());
  for (const LayerRecord& record : model.layers) {
    layers_.push_back(Layer{record.k_size, record.n_size,
                            PackedWeights(isa, record.weights.data(), record.k_size, record.n_size),
                            record.weight_scales, record.bias, record.activation,
                            record.input_quantization, record.input_scale});
    max_width_ = std::max({max_width_, std::size_t{record.k_size}, std::size_t{record.n_size}});
  }
}

QuantizedMlp QuantizedMlp::load(const std::string& path, Isa isa) {
  return QuantizedMlp(Int8ModelFile::read(path), isa);
}

QuantizedMlp QuantizedMlp::from_bytes(std::span<const std::uint8_t> bytes, Isa isa) {
  return QuantizedMlp(Int8ModelFile::parse(bytes, "<bytes>"), isa);
}

void QuantizedMlp::quantize_rows(const Layer& layer, const float* x, std::size_t rows,
                                 std::int8_t* q, float* row_scales) {
  const std::size_t width = layer.k_size;
  for (std::size_t r = 0; r < rows; ++r) {
    if (layer.input_quantization == InputQuantization::kStaticPerTensor) {
      quantize_row_static(x + r * width, width, layer.input_scale, q + r * width);
      row_scales[r] = layer.input_scale;
    } else {
      row_scales[r] = quantize_row_dynamic(x + r * width, width, q + r * width);
    }
  }
}

void QuantizedMlp::run(const float* x, std::size_t rows, float* y) const {
  // Per-call scratch: nothing here is shared between calls, which is what makes run() reentrant.
  const std::size_t chunk = std::min(rows, kChunkRows);
  std::vector<std::int8_t> activations(chunk * max_width_);
  std::vector<std::int8_t> next_activations(chunk * max_width_);
  std::vector<float> row_scales(chunk);
  std::vector<float> next_row_scales(chunk);
  std::vector<std::int32_t> accumulators(chunk * max_width_);
  std::vector<float> layer_output(chunk * max_width_);
  GemmScratch gemm_scratch;

  const std::size_t in_width = input_size();
  const std::size_t out_width = output_size();
  for (std::size_t row0 = 0; row0 < rows; row0 += kChunkRows) {
    const std::size_t rows_here = std::min(kChunkRows, rows - row0);
    quantize_rows(layers_.front(), x + row0 * in_width, rows_here, activations.data(),
                  row_scales.data());
    for (std::size_t li = 0; li < layers_.size(); ++li) {
      const Layer& layer = layers_[li];
      const bool last = li + 1 == layers_.size();
      gemm_s8s8_s32(activations.data(), layer.k_size, rows_here, layer.weights,
                    accumulators.data(), layer.n_size, gemm_scratch);
      const Epilogue epilogue = layer.epilogue();
      float* destination = last ? y + row0 * out_width : layer_output.data();
      for (std::size_t r = 0; r < rows_here; ++r) {
        apply_epilogue_row(epilogue, accumulators.data() + r * layer.n_size, row_scales[r],
                           layer.n_size, destination + r * layer.n_size);
      }
      if (!last) {
        quantize_rows(layers_[li + 1], layer_output.data(), rows_here, next_activations.data(),
                      next_row_scales.data());
        std::swap(activations, next_activations);
        std::swap(row_scales, next_row_scales);
      }
    }
  }
}

}  // namespace headrace::quant
