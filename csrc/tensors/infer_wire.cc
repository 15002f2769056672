#include "tensors/infer_wire.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <string>
#include <utility>

#include "common/status.h"

namespace headrace::tensors {
namespace {

enum WireType : std::uint32_t {
  kVarint = 0,
  kFixed64 = 1,
  kLengthDelimited = 2,
  kStartGroup = 3,
  kEndGroup = 4,
  kFixed32 = 5,
};

// Unknown groups may nest; the protobuf runtime stops at 100 levels, so do we.
constexpr int kMaxGroupDepth = 100;

[[noreturn]] void malformed(const std::string& why) {
  throw CoreError(StatusCode::kInvalidArgument, "malformed ModelInferRequest: " + why);
}

// proto3 requires string fields to be valid UTF-8 (the protobuf runtime refuses others, and
// Python could not make a str of them): strict check, no overlongs, surrogates or > U+10FFFF.
bool valid_utf8(std::span<const std::uint8_t> text) {
  std::size_t i = 0;
  const std::size_t n = text.size();
  while (i < n) {
    const std::uint8_t lead = text[i];
    if (lead < 0x80) {
      ++i;
      continue;
    }
    std::size_t extra = 0;
    std::uint8_t low = 0x80;
    std::uint8_t high = 0xBF;
    if (lead >= 0xC2 && lead <= 0xDF) {
      extra = 1;
    } else if (lead >= 0xE0 && lead <= 0xEF) {
      extra = 2;
      if (lead == 0xE0) low = 0xA0;
      if (lead == 0xED) high = 0x9F;
    } else if (lead >= 0xF0 && lead <= 0xF4) {
      extra = 3;
      if (lead == 0xF0) low = 0x90;
      if (lead == 0xF4) high = 0x8F;
    } else {
      return false;
    }
    if (n - i - 1 < extra) return false;
    if (text[i + 1] < low || text[i + 1] > high) return false;
    for (std::size_t k = 2; k <= extra; ++k) {
      if (text[i + k] < 0x80 || text[i + k] > 0xBF) return false;
    }
    i += extra + 1;
  }
  return true;
}

std::string_view as_string(std::span<const std::uint8_t> bytes, const char* field) {
  if (!valid_utf8(bytes)) malformed(std::string("string field ") + field + " is not valid UTF-8");
  return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

// A cursor over one message's bytes. Every read checks the bytes that remain first.
class WireReader {
 public:
  explicit WireReader(std::span<const std::uint8_t> bytes) : bytes_(bytes) {}

  bool done() const noexcept { return pos_ == bytes_.size(); }

  std::uint64_t read_varint() {
    std::uint64_t value = 0;
    for (unsigned shift = 0; shift < 70; shift += 7) {
      if (pos_ == bytes_.size()) malformed("truncated varint");
      const std::uint8_t byte = bytes_[pos_++];
      // The 10th byte carries only bit 63; higher bits are dropped, as the runtime does.
      value |= static_cast<std::uint64_t>(byte & 0x7F) << shift;
      if ((byte & 0x80) == 0) return value;
    }
    malformed("varint longer than 10 bytes");
  }

  // (field number, wire type) of the next field.
  std::pair<std::uint32_t, std::uint32_t> read_tag() {
    const std::uint64_t tag = read_varint();
    if (tag > 0xFFFFFFFFu) malformed("field tag out of range");
    const auto field = static_cast<std::uint32_t>(tag >> 3);
    const auto wire = static_cast<std::uint32_t>(tag & 7);
    if (field == 0) malformed("field number 0");
    return {field, wire};
  }

  std::uint64_t read_fixed64() {
    if (bytes_.size() - pos_ < 8) malformed("truncated fixed64 field");
    std::uint64_t value = 0;
    std::memcpy(&value, bytes_.data() + pos_, 8);  // little-endian host (tensor_codec.cc)
    pos_ += 8;
    return value;
  }

  std::span<const std::uint8_t> read_length_delimited() {
    const std::uint64_t length = read_varint();
    const std::size_t remaining = bytes_.size() - pos_;
    if (length > remaining) {
      malformed("length-delimited field of " + std::to_string(length) + " bytes but only " +
                std::to_string(remaining) + " remain");
    }
    const auto size = static_cast<std::size_t>(length);
    const auto out = bytes_.subspan(pos_, size);
    pos_ += size;
    return out;
  }

  // Skips one field whose tag has just been read; groups are walked to their matching end.
  void skip(std::uint32_t field, std::uint32_t wire, int depth = 0) {
    switch (wire) {
      case kVarint:
        read_varint();
        return;
      case kFixed64:
        read_fixed64();
        return;
      case kLengthDelimited:
        read_length_delimited();
        return;
      case kFixed32:
        if (bytes_.size() - pos_ < 4) malformed("truncated fixed32 field");
        pos_ += 4;
        return;
      case kStartGroup: {
        if (depth >= kMaxGroupDepth) malformed("groups nested too deeply");
        while (true) {
          if (done()) malformed("unterminated group");
          const auto [inner_field, inner_wire] = read_tag();
          if (inner_wire == kEndGroup) {
            if (inner_field != field) malformed("mismatched end of group");
            return;
          }
          skip(inner_field, inner_wire, depth + 1);
        }
      }
      case kEndGroup:
        malformed("end of group outside a group");
      default:
        malformed("invalid wire type " + std::to_string(wire));
    }
  }

 private:
  std::span<const std::uint8_t> bytes_;
  std::size_t pos_ = 0;
};

// InferParameter: a oneof, so the last choice seen wins; a value message that appears twice
// merges, which for a oneof means the same thing.
void parse_parameter_value(std::span<const std::uint8_t> bytes, InferParameterValue& value) {
  WireReader reader(bytes);
  while (!reader.done()) {
    const auto [field, wire] = reader.read_tag();
    if (field == 1 && wire == kVarint) {
      value = reader.read_varint() != 0;
    } else if (field == 2 && wire == kVarint) {
      value = static_cast<std::int64_t>(reader.read_varint());
    } else if (field == 3 && wire == kLengthDelimited) {
      value = as_string(reader.read_length_delimited(), "InferParameter.string_param");
    } else if (field == 4 && wire == kFixed64) {
      value = std::bit_cast<double>(reader.read_fixed64());
    } else if (field == 5 && wire == kVarint) {
      value = reader.read_varint();
    } else {
      reader.skip(field, wire);
    }
  }
}

// A map<string, InferParameter> entry: {1 key, 2 value}; absent parts take their defaults.
void parse_parameter_entry(std::span<const std::uint8_t> bytes,
                           std::vector<std::pair<std::string_view, InferParameterValue>>& into) {
  WireReader reader(bytes);
  std::string_view key;
  InferParameterValue value;
  bool has_unknown_fields = false;
  while (!reader.done()) {
    const auto [field, wire] = reader.read_tag();
    if (field == 1 && wire == kLengthDelimited) {
      key = as_string(reader.read_length_delimited(), "parameters key");
    } else if (field == 2 && wire == kLengthDelimited) {
      parse_parameter_value(reader.read_length_delimited(), value);
    } else {
      reader.skip(field, wire);
      has_unknown_fields = true;
    }
  }
  // The Python runtime (upb) moves an entry that carries unknown fields into the parent's
  // unknown fields instead of the map; do the same, so both paths see the same parameters.
  if (has_unknown_fields) return;
  for (auto& entry : into) {
    if (entry.first == key) {
      entry.second = value;
      return;
    }
  }
  into.emplace_back(key, value);
}

// Per-input parameters are not used by the server, but they are still checked for being well
// formed, as the protobuf runtime would.
void check_parameter_entry(std::span<const std::uint8_t> bytes) {
  std::vector<std::pair<std::string_view, InferParameterValue>> ignored;
  parse_parameter_entry(bytes, ignored);
}

void parse_shape(WireReader& reader, std::uint32_t wire, std::vector<std::int64_t>& shape) {
  if (wire == kVarint) {
    shape.push_back(static_cast<std::int64_t>(reader.read_varint()));
  } else {
    // Packed: a run of varints. The count is not known up front; each one has at least one byte,
    // so growth is bounded by the bytes actually present.
    WireReader packed(reader.read_length_delimited());
    while (!packed.done()) shape.push_back(static_cast<std::int64_t>(packed.read_varint()));
  }
}

ParsedInferInput parse_input(std::span<const std::uint8_t> bytes) {
  ParsedInferInput input;
  WireReader reader(bytes);
  while (!reader.done()) {
    const auto [field, wire] = reader.read_tag();
    if (field == 1 && wire == kLengthDelimited) {
      input.name = as_string(reader.read_length_delimited(), "InferInputTensor.name");
    } else if (field == 2 && wire == kLengthDelimited) {
      input.datatype = as_string(reader.read_length_delimited(), "InferInputTensor.datatype");
    } else if (field == 3 && (wire == kVarint || wire == kLengthDelimited)) {
      parse_shape(reader, wire, input.shape);
    } else if (field == 4 && wire == kLengthDelimited) {
      check_parameter_entry(reader.read_length_delimited());
    } else if (field == 5 && wire == kLengthDelimited) {
      // Typed contents are decoded by the protobuf runtime on the fallback path.
      reader.read_length_delimited();
      input.has_typed_contents = true;
    } else {
      reader.skip(field, wire);
    }
  }
  return input;
}

std::string_view parse_requested_output(std::span<const std::uint8_t> bytes) {
  std::string_view name;
  WireReader reader(bytes);
  while (!reader.done()) {
    const auto [field, wire] = reader.read_tag();
    if (field == 1 && wire == kLengthDelimited) {
      name = as_string(reader.read_length_delimited(), "InferRequestedOutputTensor.name");
    } else if (field == 2 && wire == kLengthDelimited) {
      check_parameter_entry(reader.read_length_delimited());
    } else {
      reader.skip(field, wire);
    }
  }
  return name;
}

// ---- serialization ----

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

ParsedInferRequest parse_infer_request(std::span<const std::uint8_t> message,
                                       std::uint64_t max_elements) {
  ParsedInferRequest request;
  std::vector<std::span<const std::uint8_t>> raw_contents;
  WireReader reader(message);
  while (!reader.done()) {
    const auto [field, wire] = reader.read_tag();
    if (wire != kLengthDelimited) {
      reader.skip(field, wire);
      continue;
    }
    const auto payload = reader.read_length_delimited();
    switch (field) {
      case 1:
        request.model_name = as_string(payload, "model_name");
        break;
      case 2:
        request.model_version = as_string(payload, "model_version");
        break;
      case 3:
        request.id = as_string(payload, "id");
        break;
      case 4:
        parse_parameter_entry(payload, request.parameters);
        break;
      case 5:
        request.inputs.push_back(parse_input(payload));
        break;
      case 6:
        request.output_names.push_back(parse_requested_output(payload));
        break;
      case 7:
        raw_contents.push_back(payload);
        break;
      default:
        break;  // an unknown length-delimited field: already skipped
    }
  }

  // The same checks, in the same order and with the same messages, as decode_infer_request in
  // python/headrace/server/convert.py.
  auto& inputs = request.inputs;
  if (!raw_contents.empty()) {
    if (raw_contents.size() != inputs.size()) {
      throw_invalid_argument("request has " + std::to_string(inputs.size()) + " inputs but " +
              std::to_string(raw_contents.size()) +
              " raw_input_contents entries; there must be exactly one per input");
    }
    for (const auto& input : inputs) {
      if (input.has_typed_contents) {
        throw_invalid_argument("input " + quoted(input.name) +
                ": typed contents and raw_input_contents are mixed in one request");
      }
    }
  }
  for (std::size_t index = 0; index < inputs.size(); ++index) {
    ParsedInferInput& input = inputs[index];
    // A handful of inputs per request: a linear scan beats building a set.
    for (std::size_t earlier = 0; earlier < index; ++earlier) {
      if (inputs[earlier].name == input.name) {
        throw_invalid_argument("input " + quoted(input.name) + " appears more than once");
      }
    }
    if (!raw_contents.empty()) {
      const auto raw = raw_contents[index];
      input.has_raw_contents = true;
      input.raw_offset_bytes = static_cast<std::size_t>(raw.data() - message.data());
      input.raw_size_bytes = raw.size();
      input.element_count =
          validate_raw_tensor(input.datatype, input.shape, raw.size(), max_elements, input.name);
      if (element_size(parse_datatype(input.datatype, input.name)) == 0) {
        input.bytes_spans = bytes_element_spans(raw, input.element_count, input.name);
      }
    } else if (input.has_typed_contents) {
      // From here on the Python path decodes typed contents, whose errors come first there.
      request.has_typed_contents = true;
      break;
    } else {
      throw_invalid_argument("input " + quoted(input.name) + " has no contents (typed or raw)");
    }
  }
  return request;
}

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
