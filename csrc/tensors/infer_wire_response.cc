// ModelInferResponse serialization: sized first (infer_response_size_bytes), then written into
// a buffer of exactly that size (write_infer_response). The request side is infer_wire.cc.
#include <cstring>
#include <string>

#include "common/status.h"
#include "tensors/infer_wire.h"
#include "tensors/wire_format.h"

namespace headrace::tensors {
namespace {

constexpr std::size_t varint_size(std::uint64_t value) noexcept {
  std::size_t size = 1;
  while (value >= 0x80) {
    value >>= 7;
    ++size;
  }
  return size;
}

// A length-delimited field with a one-byte tag (all field numbers here are < 16).
constexpr std::size_t field_size(std::size_t payload_bytes) noexcept {
  return 1 + varint_size(payload_bytes) + payload_bytes;
}

std::size_t packed_shape_payload_bytes(std::span<const std::int64_t> shape) noexcept {
  std::size_t size = 0;
  for (const std::int64_t dim : shape) size += varint_size(static_cast<std::uint64_t>(dim));
  return size;
}

// A parameters map entry's payload: the key, and the InferParameter holding the string.
std::size_t parameter_entry_bytes(const StringParameterView& parameter) noexcept {
  return field_size(parameter.key.size()) + field_size(field_size(parameter.value.size()));
}

std::size_t output_tensor_payload_bytes(const InferOutputView& output) noexcept {
  std::size_t size = 0;
  if (!output.name.empty()) size += field_size(output.name.size());
  if (!output.datatype.empty()) size += field_size(output.datatype.size());
  if (!output.shape.empty()) size += field_size(packed_shape_payload_bytes(output.shape));
  return size;
}

class WireWriter {
 public:
  explicit WireWriter(std::span<std::uint8_t> out) : out_(out) {}

  // Bounds are checked although the size was computed exactly: a mismatch is a bug here, and it
  // must never write past the caller's buffer.
  void varint(std::uint64_t value) {
    reserve(varint_size(value));
    while (value >= 0x80) {
      out_[pos_++] = static_cast<std::uint8_t>(value | 0x80);
      value >>= 7;
    }
    out_[pos_++] = static_cast<std::uint8_t>(value);
  }

  void tag(std::uint32_t field, std::uint32_t wire) { varint((field << 3) | wire); }

  void bytes_field(std::uint32_t field, const void* data, std::size_t size) {
    tag(field, kLengthDelimited);
    varint(size);
    reserve(size);
    if (size != 0) std::memcpy(out_.data() + pos_, data, size);
    pos_ += size;
  }

  void string_field_if_set(std::uint32_t field, std::string_view text) {
    if (!text.empty()) bytes_field(field, text.data(), text.size());
  }

  std::size_t position() const noexcept { return pos_; }

 private:
  void reserve(std::size_t bytes) const {
    if (out_.size() - pos_ < bytes) {
      throw CoreError(StatusCode::kInternal, "ModelInferResponse buffer too small");
    }
  }

  std::span<std::uint8_t> out_;
  std::size_t pos_ = 0;
};

}  // namespace

std::size_t infer_response_size_bytes(std::string_view model_name, std::string_view model_version,
                                      std::string_view id,
                                      std::span<const InferOutputView> outputs,
                                      std::span<const StringParameterView> parameters) {
  std::size_t size = 0;
  if (!model_name.empty()) size += field_size(model_name.size());
  if (!model_version.empty()) size += field_size(model_version.size());
  if (!id.empty()) size += field_size(id.size());
  for (const auto& parameter : parameters) size += field_size(parameter_entry_bytes(parameter));
  for (const auto& output : outputs) {
    size += field_size(output_tensor_payload_bytes(output)) + field_size(output.raw.size());
  }
  return size;
}

void write_infer_response(std::string_view model_name, std::string_view model_version,
                          std::string_view id, std::span<const InferOutputView> outputs,
                          std::span<std::uint8_t> out,
                          std::span<const StringParameterView> parameters) {
  WireWriter writer(out);
  writer.string_field_if_set(1, model_name);
  writer.string_field_if_set(2, model_version);
  writer.string_field_if_set(3, id);
  for (const auto& parameter : parameters) {
    // map<string, InferParameter> parameters = 4: an entry {key = 1, value = 2}, the value an
    // InferParameter whose oneof holds string_param = 3 (written even when empty: a set oneof).
    writer.tag(4, kLengthDelimited);
    writer.varint(parameter_entry_bytes(parameter));
    writer.bytes_field(1, parameter.key.data(), parameter.key.size());
    writer.tag(2, kLengthDelimited);
    writer.varint(field_size(parameter.value.size()));
    writer.bytes_field(3, parameter.value.data(), parameter.value.size());
  }
  for (const auto& output : outputs) {
    writer.tag(5, kLengthDelimited);
    writer.varint(output_tensor_payload_bytes(output));
    writer.string_field_if_set(1, output.name);
    writer.string_field_if_set(2, output.datatype);
    if (!output.shape.empty()) {
      writer.tag(3, kLengthDelimited);
      writer.varint(packed_shape_payload_bytes(output.shape));
      for (const std::int64_t dim : output.shape) writer.varint(static_cast<std::uint64_t>(dim));
    }
  }
  for (const auto& output : outputs) writer.bytes_field(6, output.raw.data(), output.raw.size());
  if (writer.position() != out.size()) {
    throw CoreError(StatusCode::kInternal,
                    "ModelInferResponse size mismatch: wrote " +
                        std::to_string(writer.position()) + " of " + std::to_string(out.size()));
  }
}

std::string serialize_infer_response(std::string_view model_name, std::string_view model_version,
                                     std::string_view id,
                                     std::span<const InferOutputView> outputs,
                                     std::span<const StringParameterView> parameters) {
  std::string out;
  out.resize(infer_response_size_bytes(model_name, model_version, id, outputs, parameters));
  write_infer_response(model_name, model_version, id, outputs,
                       {reinterpret_cast<std::uint8_t*>(out.data()), out.size()}, parameters);
  return out;
}

}  // namespace headrace::tensors
