#include "quant/int8_model_file.h"

#include <array>
#include <cmath>
#include <cstring>
#include <fstream>
#include <bit>
#include <filesystem>

#include "quant/packed_weights.h"
#include "common/status.h"

namespace headrace::quant {
namespace {

// The format is little-endian and fields are copied straight into host integers.
static_assert(std::endian::native == std::endian::little, "the .int8 reader assumes little-endian");

constexpr std::size_t kMaxStringBytes = 4096;
constexpr std::uint32_t kMaxRank = 8;

// Strict UTF-8 (no overlongs, surrogates or code points past U+10FFFF): names end up in Python
// strings and in error messages, both of which must be valid text.
bool valid_utf8(std::string_view text) {
  std::size_t i = 0;
  while (i < text.size()) {
    const auto lead = static_cast<unsigned char>(text[i]);
    std::size_t extra = 0;
    std::uint32_t code = 0;
    if (lead < 0x80) {
      ++i;
      continue;
    } else if ((lead & 0xE0) == 0xC0) {
      extra = 1, code = lead & 0x1Fu;
    } else if ((lead & 0xF0) == 0xE0) {
      extra = 2, code = lead & 0x0Fu;
    } else if ((lead & 0xF8) == 0xF0) {
      extra = 3, code = lead & 0x07u;
    } else {
      return false;
    }
    if (i + extra >= text.size()) return false;
    for (std::size_t j = 1; j <= extra; ++j) {
      const auto next = static_cast<unsigned char>(text[i + j]);
      if ((next & 0xC0) != 0x80) return false;
      code = (code << 6) | (next & 0x3Fu);
    }
    const std::uint32_t smallest[] = {0, 0x80, 0x800, 0x10000};
    if (code < smallest[extra] || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) {
      return false;
    }
    i += extra + 1;
  }
  return true;
}

[[noreturn]] void fail(std::string_view origin, const std::string& what) {
  throw CoreError(StatusCode::kInvalidArgument,
                  "int8 model " + std::string(origin) + ": " + what);
}

// Little-endian reader over untrusted bytes; every read is bounds-checked first.
class ByteReader {
 public:
  ByteReader(std::span<const std::uint8_t> bytes, std::string_view origin)
      : bytes_(bytes), origin_(origin) {}

  std::size_t remaining() const noexcept { return bytes_.size() - offset_; }

  void need(std::size_t count, const char* what) const {
    if (count > remaining()) {
      fail(origin_, std::string("truncated payload while reading ") + what + " (needs " +
                        std::to_string(count) + " bytes, " + std::to_string(remaining()) +
                        " left)");
    }
  }

  template <typename T>
  T scalar(const char* what) {
    need(sizeof(T), what);
    T value;
    std::memcpy(&value, bytes_.data() + offset_, sizeof(T));
    offset_ += sizeof(T);
    return value;
  }

  std::string string(const char* what) {
    const auto length = scalar<std::uint32_t>(what);
    if (length > kMaxStringBytes) fail(origin_, std::string(what) + " is longer than 4096 bytes");
    need(length, what);
    std::string value(reinterpret_cast<const char*>(bytes_.data() + offset_), length);
    offset_ += length;
    if (!valid_utf8(value)) fail(origin_, std::string(what) + " is not valid UTF-8");
    return value;
  }

  template <typename T>
  std::vector<T> array(std::size_t count, const char* what) {
    if (count > remaining() / sizeof(T)) need(count * sizeof(T), what);
    std::vector<T> values(count);
    if (count > 0) std::memcpy(values.data(), bytes_.data() + offset_, count * sizeof(T));
    offset_ += count * sizeof(T);
    return values;
  }

 private:
  std::span<const std::uint8_t> bytes_;
  std::string_view origin_;
  std::size_t offset_ = 0;
};

TensorMetadata read_tensor_metadata(ByteReader& reader, std::string_view origin, const char* role,
                                    std::uint32_t max_rank) {
  TensorMetadata meta;
  meta.name = reader.string(role);
  meta.datatype = reader.string(role);
  const auto rank = reader.scalar<std::uint32_t>(role);
  if (rank > kMaxRank) fail(origin, std::string(role) + " rank " + std::to_string(rank));
  meta.shape = reader.array<std::int64_t>(rank, role);
  if (meta.name.empty()) fail(origin, std::string(role) + " has an empty name");
  if (meta.datatype != "FP32") {
    fail(origin, std::string(role) + " datatype '" + meta.datatype + "' (only FP32 is supported)");
  }
  if (meta.shape.size() < 2 || meta.shape.size() > max_rank) {
    fail(origin, std::string(role) + " must have rank " +
                     (max_rank == 2 ? std::string("2 [batch, features]")
                                    : "2 to " + std::to_string(max_rank) + " [batch, ...]"));
  }
  if (meta.shape[0] != -1) fail(origin, std::string(role) + " batch dimension must be -1");
  for (std::size_t i = 1; i < meta.shape.size(); ++i) {
    if (meta.shape[i] < 1 || meta.shape[i] > static_cast<std::int64_t>(PackedWeights::kMaxK)) {
      fail(origin, std::string(role) + " dimension " + std::to_string(i) + " is " +
                       std::to_string(meta.shape[i]) + "; expected 1 .. 65536");
    }
  }
  return meta;
}

bool finite_non_negative(float value) { return std::isfinite(value) && value >= 0.0f; }

void read_activation(ByteReader& reader, std::string_view origin, const std::string& where,
                     std::uint32_t version, LayerRecord& layer) {
  const auto code = reader.scalar<std::uint32_t>("activation");
  // Version 1 knew codes 0 .. 6.
  const std::uint32_t max_code = version == 1 ? 6u : kMaxActivationCode;
  if (code > max_code) fail(origin, where + " has unknown activation code " + std::to_string(code));
  layer.activation.kind = static_cast<Activation>(code);
  if (version == 1) return;
  layer.activation.alpha = reader.scalar<float>("activation parameters");
  layer.activation.beta = reader.scalar<float>("activation parameters");
  const float alpha = layer.activation.alpha;
  const float beta = layer.activation.beta;
  switch (layer.activation.kind) {
    case Activation::kLeakyRelu:
      if (!std::isfinite(alpha) || beta != 0.0f) {
        fail(origin, where + ": LeakyRelu needs a finite slope and a zero second parameter");
      }
      return;
    case Activation::kClip:
      // Either bound may be infinite (Clip with one bound), never NaN, and min <= max.
      if (std::isnan(alpha) || std::isnan(beta) || !(alpha <= beta)) {
        fail(origin, where + ": Clip bounds must satisfy min <= max");
      }
      return;
    default:
      if (alpha != 0.0f || beta != 0.0f) {
        fail(origin, where + ": activation parameters must be 0 for this activation");
      }
  }
}

void read_input_quantization(ByteReader& reader, std::string_view origin, const std::string& where,
                             std::uint32_t version, LayerRecord& layer) {
  const auto quantization = reader.scalar<std::uint32_t>("input quantization");
  if (quantization > 1) {
    fail(origin, where + " has unknown input quantization " + std::to_string(quantization));
  }
  layer.input_quantization = static_cast<InputQuantization>(quantization);
  const bool is_static = layer.input_quantization == InputQuantization::kStaticPerTensor;
  if (version == 1) {
    // Version 1 stored a symmetric scale: the range [-127 s, 127 s].
    const float scale = reader.scalar<float>("input scale");
    if (is_static && !(std::isfinite(scale) && scale > 0.0f)) {
      fail(origin, where + " has a static input scale that is not a positive finite number");
    }
    if (is_static) {
      layer.input_min = -127.0f * scale;
      layer.input_max = 127.0f * scale;
    }
    return;
  }
  layer.input_min = reader.scalar<float>("input range");
  layer.input_max = reader.scalar<float>("input range");
  if (is_static) {
    if (!std::isfinite(layer.input_min) || !std::isfinite(layer.input_max) ||
        layer.input_min > 0.0f || layer.input_max < 0.0f ||
        !(layer.input_max > layer.input_min)) {
      fail(origin, where + " has a static input range that is not finite with min <= 0 <= max, "
                           "min < max");
    }
  } else if (layer.input_min != 0.0f || layer.input_max != 0.0f) {
    fail(origin, where + " has an input range but dynamic input quantization");
  }
}

LayerRecord read_layer(ByteReader& reader, std::string_view origin, std::size_t index,
                       std::uint32_t version) {
  const std::string where = "layer " + std::to_string(index);
  LayerRecord layer;
  layer.k_size = reader.scalar<std::uint32_t>("layer shape");
  layer.n_size = reader.scalar<std::uint32_t>("layer shape");
  if (layer.k_size == 0 || layer.n_size == 0 || layer.k_size > PackedWeights::kMaxK ||
      layer.n_size > PackedWeights::kMaxN) {
    fail(origin, where + " has shape [" + std::to_string(layer.k_size) + ", " +
                     std::to_string(layer.n_size) + "]; each dimension must be in [1, 65536]");
  }
  read_activation(reader, origin, where, version, layer);
  read_input_quantization(reader, origin, where, version, layer);
  const auto scale_count = reader.scalar<std::uint32_t>("weight scale count");
  if (scale_count != 1 && scale_count != layer.n_size) {
    fail(origin, where + " has " + std::to_string(scale_count) +
                     " weight scales; expected 1 or " + std::to_string(layer.n_size));
  }
  layer.weight_scales = reader.array<float>(scale_count, "weight scales");
  for (float scale : layer.weight_scales) {
    if (!finite_non_negative(scale)) fail(origin, where + " has a negative or non-finite weight scale");
  }
  const auto has_bias = reader.scalar<std::uint32_t>("bias flag");
  if (has_bias > 1) fail(origin, where + " has bias flag " + std::to_string(has_bias));
  if (has_bias == 1) {
    layer.bias = reader.array<float>(layer.n_size, "bias");
    for (float value : layer.bias) {
      if (!std::isfinite(value)) fail(origin, where + " has a non-finite bias");
    }
  }
  layer.weights = reader.array<std::int8_t>(std::size_t{layer.k_size} * layer.n_size, "weights");
  return layer;
}

}  // namespace

std::uint32_t crc32_ieee(std::span<const std::uint8_t> bytes) noexcept {
  static const std::array<std::uint32_t, 256> table = [] {
    std::array<std::uint32_t, 256> entries{};
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t value = i;
      for (int bit = 0; bit < 8; ++bit) value = (value & 1u) ? 0xEDB88320u ^ (value >> 1) : value >> 1;
      entries[i] = value;
    }
    return entries;
  }();
  std::uint32_t crc = 0xFFFFFFFFu;
  for (std::uint8_t byte : bytes) crc = table[(crc ^ byte) & 0xFFu] ^ (crc >> 8);
  return crc ^ 0xFFFFFFFFu;
}

Int8ModelFile Int8ModelFile::parse(std::span<const std::uint8_t> bytes, std::string_view origin) {
  if (bytes.size() < kHeaderBytes) {
    fail(origin, "truncated: " + std::to_string(bytes.size()) +
                     " bytes is shorter than the 24-byte header");
  }
  if (std::memcmp(bytes.data(), kMagic, sizeof kMagic) != 0) {
    fail(origin, "bad magic: not a headrace int8 model file");
  }
  std::uint32_t version;
  std::uint32_t stored_crc;
  std::uint64_t payload_bytes;
  std::memcpy(&version, bytes.data() + 8, 4);
  std::memcpy(&stored_crc, bytes.data() + 12, 4);
  std::memcpy(&payload_bytes, bytes.data() + 16, 8);
  if (version != 1 && version != kFormatVersion) {
    fail(origin, "format version " + std::to_string(version) +
                     " is not supported (this build reads versions 1 and 2)");
  }
  const std::size_t available = bytes.size() - kHeaderBytes;
  if (payload_bytes != available) {
    fail(origin, std::string(payload_bytes > available ? "truncated" : "trailing bytes") +
                     ": header declares " + std::to_string(payload_bytes) +
                     " payload bytes, file has " + std::to_string(available));
  }
  const std::span<const std::uint8_t> payload = bytes.subspan(kHeaderBytes);
  if (crc32_ieee(payload) != stored_crc) fail(origin, "checksum mismatch: the file is corrupt");

  ByteReader reader(payload, origin);
  Int8ModelFile model;
  model.input = read_tensor_metadata(reader, origin, "input metadata", version == 1 ? 2 : kMaxRank);
  model.output = read_tensor_metadata(reader, origin, "output metadata", 2);
  const auto layer_count = reader.scalar<std::uint32_t>("layer count");
  if (layer_count == 0 || layer_count > kMaxLayers) {
    fail(origin, "layer count " + std::to_string(layer_count) + " is outside [1, 1024]");
  }
  model.layers.reserve(layer_count);
  for (std::size_t i = 0; i < layer_count; ++i) {
    model.layers.push_back(read_layer(reader, origin, i, version));
    if (i > 0 && model.layers[i].k_size != model.layers[i - 1].n_size) {
      fail(origin, "layer " + std::to_string(i) + " takes " +
                       std::to_string(model.layers[i].k_size) + " inputs but layer " +
                       std::to_string(i - 1) + " produces " +
                       std::to_string(model.layers[i - 1].n_size));
    }
    if (is_row_activation(model.layers[i].activation.kind) && i + 1 != layer_count) {
      fail(origin, "layer " + std::to_string(i) +
                       ": Softmax and LogSoftmax are only supported on the last layer");
    }
  }
  if (reader.remaining() != 0) {
    fail(origin, std::to_string(reader.remaining()) + " unread bytes after the last layer");
  }
  if (model.input_features() != model.layers.front().k_size ||
      model.output.shape[1] != model.layers.back().n_size) {
    fail(origin, "input/output shapes disagree with the first/last layer");
  }
  return model;
}

std::size_t Int8ModelFile::input_features() const noexcept {
  // Each dimension is at most 65536 and the rank at most 8, but the product is capped while
  // multiplying so no size_t overflow can make a wrong shape look right.
  std::size_t features = 1;
  for (std::size_t i = 1; i < input.shape.size(); ++i) {
    features *= static_cast<std::size_t>(input.shape[i]);
    if (features > PackedWeights::kMaxK) return PackedWeights::kMaxK + 1;
  }
  return features;
}

Int8ModelFile Int8ModelFile::read(const std::string& path) {
  // A directory opens as a stream on Linux and reports a nonsense size: check the kind first.
  std::error_code error;
  const auto status = std::filesystem::status(path, error);
  if (error || !std::filesystem::exists(status)) {
    throw CoreError(StatusCode::kNotFound, "int8 model " + path + ": no such file");
  }
  if (!std::filesystem::is_regular_file(status)) {
    throw CoreError(StatusCode::kInvalidArgument, "int8 model " + path + ": not a regular file");
  }
  const std::uintmax_t size = std::filesystem::file_size(path, error);
  std::ifstream stream(path, std::ios::binary);
  if (error || !stream) {
    throw CoreError(StatusCode::kNotFound, "int8 model " + path + ": cannot open");
  }
  std::vector<std::uint8_t> bytes(static_cast<std::size_t>(size));
  stream.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(size));
  if (!stream) throw CoreError(StatusCode::kInternal, "int8 model " + path + ": read failed");
  return parse(bytes, path);
}

}  // namespace headrace::quant
