// The .int8 model file: parsing and validation. The format is specified in csrc/quant/README.md;
// python/headrace/quant/ writes it.
//
// Parsing treats the bytes as untrusted: every length is checked against what remains before
// anything is read or allocated, the checksum is verified before the payload is interpreted, and
// any defect is a CoreError(kInvalidArgument) naming the file and the defect, never a crash.
//
// Ownership/threading: Int8ModelFile is a plain value (owns its vectors); parse() is reentrant.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "quant/epilogue.h"

namespace headrace::quant {

// What the v2 protocol's model metadata reports for an input or output.
struct TensorMetadata {
  std::string name;
  std::string datatype;             // "FP32"
  std::vector<std::int64_t> shape;  // [-1, d1, ...]: -1 is the variable batch dimension
};

enum class InputQuantization : std::uint32_t {
  kDynamicPerRow = 0,    // range = [min, max] of each row, per call
  kStaticPerTensor = 1,  // calibrated range stored in the file
};

struct LayerRecord {
  std::uint32_t k_size = 0;  // input features
  std::uint32_t n_size = 0;  // output features
  ActivationSpec activation;
  InputQuantization input_quantization = InputQuantization::kDynamicPerRow;
  float input_min = 0.0f;            // kStaticPerTensor: calibrated range, min <= 0 <= max
  float input_max = 0.0f;
  std::vector<float> weight_scales;  // 1 (per tensor) or n_size (per output channel)
  std::vector<float> bias;           // empty or n_size
  std::vector<std::int8_t> weights;  // row-major [k_size][n_size]
};

struct Int8ModelFile {
  static constexpr char kMagic[8] = {'H', 'R', 'Q', 'I', 'N', 'T', '8', '\n'};
  // Version 2 adds activation parameters (LeakyRelu, Clip), LogSoftmax, static input ranges and
  // inputs of rank > 2; version 1 files are still read.
  static constexpr std::uint32_t kFormatVersion = 2;
  static constexpr std::size_t kHeaderBytes = 24;
  static constexpr std::uint32_t kMaxLayers = 1024;

  TensorMetadata input;
  TensorMetadata output;
  std::vector<LayerRecord> layers;

  // `origin` names the source in error messages (a path, or "<bytes>").
  static Int8ModelFile parse(std::span<const std::uint8_t> bytes, std::string_view origin);
  static Int8ModelFile read(const std::string& path);

  // Features per row: the product of the input's non-batch dimensions (= layers[0].k_size).
  std::size_t input_features() const noexcept;
};

// CRC-32 (IEEE 802.3, the polynomial of zlib.crc32), as stored in the header.
std::uint32_t crc32_ieee(std::span<const std::uint8_t> bytes) noexcept;

}  // namespace headrace::quant
