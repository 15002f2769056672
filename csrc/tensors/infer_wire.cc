#include "tensors/infer_wire.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "common/status.h"
#include "tensors/wire_format.h"

namespace headrace::tensors {
namespace {

// Unknown groups may nest; the protobuf runtime stops at 100 levels, so do we.
constexpr int kMaxGroupDepth = 100;

[[noreturn]] void malformed(const std::string& why) {
  throw CoreError(StatusCode::kInvalidArgument, "malformed ModelInferRequest: " + why);
}

// proto3 requires string fields to be valid UTF-8 (the protobuf runtime refuses others, and
// Python could not make a str of them).
std::string_view as_string(std::span<const std::uint8_t> bytes, const char* field) {
  if (!is_utf8(bytes)) malformed(std::string("string field ") + field + " is not valid UTF-8");
  return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

// A cursor over one message's bytes. Every read checks the bytes that remain first. Each field
// read counts one step of `work` (ParsedInferRequest::work_steps).
class WireReader {
 public:
  WireReader(std::span<const std::uint8_t> bytes, std::uint64_t& work) : bytes_(bytes), work_(work) {}

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
    ++work_;
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

  std::uint64_t& work() noexcept { return work_; }

 private:
  std::span<const std::uint8_t> bytes_;
  std::size_t pos_ = 0;
  std::uint64_t& work_;
};

// InferParameter: a oneof, so the last choice seen wins; a value message that appears twice
// merges, which for a oneof means the same thing.
void parse_parameter_value(std::span<const std::uint8_t> bytes, InferParameterValue& value,
                           std::uint64_t& work) {
  WireReader reader(bytes, work);
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
// Returns false for an entry that carries unknown fields: the Python runtime (upb) moves such an
// entry into the parent's unknown fields instead of the map, and so do we.
bool parse_parameter_entry(std::span<const std::uint8_t> bytes, std::string_view& key,
                           InferParameterValue& value, std::uint64_t& work) {
  WireReader reader(bytes, work);
  bool has_unknown_fields = false;
  while (!reader.done()) {
    const auto [field, wire] = reader.read_tag();
    if (field == 1 && wire == kLengthDelimited) {
      key = as_string(reader.read_length_delimited(), "parameters key");
    } else if (field == 2 && wire == kLengthDelimited) {
      parse_parameter_value(reader.read_length_delimited(), value, work);
    } else {
      reader.skip(field, wire);
      has_unknown_fields = true;
    }
  }
  return !has_unknown_fields;
}

// The request's parameter map, kept in first-seen key order with the last value per key (the
// protobuf map rule); the index makes each entry one hash lookup, not a scan of the earlier keys.
class ParameterMap {
 public:
  explicit ParameterMap(std::vector<std::pair<std::string_view, InferParameterValue>>& into)
      : into_(into) {}

  void add(std::span<const std::uint8_t> entry, std::uint64_t& work) {
    // Every entry counts, kept or not: the cap bounds the work, not just the map's size.
    if (++entries_ > kMaxParameters) {
      throw_invalid_argument("request has more than " + std::to_string(kMaxParameters) +
                             " parameters, the limit per request");
    }
    std::string_view key;
    InferParameterValue value;
    if (!parse_parameter_entry(entry, key, value, work)) return;
    ++work;
    const auto [found, inserted] = index_.try_emplace(key, into_.size());
    if (inserted) {
      into_.emplace_back(key, value);
    } else {
      into_[found->second].second = value;
    }
  }

 private:
  std::vector<std::pair<std::string_view, InferParameterValue>>& into_;
  std::unordered_map<std::string_view, std::size_t> index_;
  std::size_t entries_ = 0;
};

// Per-input parameters are not used by the server, but they are still checked for being well
// formed, as the protobuf runtime would.
void check_parameter_entry(std::span<const std::uint8_t> bytes, std::uint64_t& work) {
  std::string_view key;
  InferParameterValue value;
  parse_parameter_entry(bytes, key, value, work);
}

// Dims beyond kMaxDims are counted but not kept: the shape is refused when validated (with the
// message checked_element_count gives), and a message cannot make it grow past the cap.
void parse_shape(WireReader& reader, std::uint32_t wire, ParsedInferInput& input,
                 std::size_t& declared_dims) {
  const auto add = [&](std::uint64_t dim) {
    if (++declared_dims <= kMaxDims) input.shape.push_back(static_cast<std::int64_t>(dim));
  };
  if (wire == kVarint) {
    add(reader.read_varint());
  } else {
    // Packed: a run of varints, each at least one byte.
    WireReader packed(reader.read_length_delimited(), reader.work());
    while (!packed.done()) {
      ++reader.work();
      add(packed.read_varint());
    }
  }
}

struct InputEntry {
  ParsedInferInput input;
  std::size_t declared_dims = 0;
};

InputEntry parse_input(std::span<const std::uint8_t> bytes, std::uint64_t& work) {
  InputEntry entry;
  ParsedInferInput& input = entry.input;
  WireReader reader(bytes, work);
  while (!reader.done()) {
    const auto [field, wire] = reader.read_tag();
    if (field == 1 && wire == kLengthDelimited) {
      input.name = as_string(reader.read_length_delimited(), "InferInputTensor.name");
    } else if (field == 2 && wire == kLengthDelimited) {
      input.datatype = as_string(reader.read_length_delimited(), "InferInputTensor.datatype");
    } else if (field == 3 && (wire == kVarint || wire == kLengthDelimited)) {
      parse_shape(reader, wire, input, entry.declared_dims);
    } else if (field == 4 && wire == kLengthDelimited) {
      check_parameter_entry(reader.read_length_delimited(), work);
    } else if (field == 5 && wire == kLengthDelimited) {
      // Typed contents are decoded by the protobuf runtime on the fallback path.
      reader.read_length_delimited();
      input.has_typed_contents = true;
    } else {
      reader.skip(field, wire);
    }
  }
  return entry;
}

std::string_view parse_requested_output(std::span<const std::uint8_t> bytes, std::uint64_t& work) {
  std::string_view name;
  WireReader reader(bytes, work);
  while (!reader.done()) {
    const auto [field, wire] = reader.read_tag();
    if (field == 1 && wire == kLengthDelimited) {
      name = as_string(reader.read_length_delimited(), "InferRequestedOutputTensor.name");
    } else if (field == 2 && wire == kLengthDelimited) {
      check_parameter_entry(reader.read_length_delimited(), work);
    } else {
      reader.skip(field, wire);
    }
  }
  return name;
}

// The refusal of a shape with more than kMaxDims dims (whose excess dims were not kept), with
// checked_element_count's message and after the datatype check, as validate_raw_tensor orders
// them on the Python path.
void check_declared_dims(const ParsedInferInput& input, std::size_t declared_dims) {
  if (declared_dims <= kMaxDims) return;
  parse_datatype(input.datatype, input.name);
  throw_invalid_argument("input " + quoted(input.name) + ": shape has " +
                         std::to_string(declared_dims) + " dimensions; at most " +
                         std::to_string(kMaxDims) + " are supported");
}

}  // namespace

std::optional<InferTarget> peek_infer_target(std::span<const std::uint8_t> message) {
  try {
    InferTarget target;
    std::uint64_t work = 0;
    WireReader reader(message, work);
    while (!reader.done()) {
      const auto [field, wire] = reader.read_tag();
      if (wire != kLengthDelimited || (field != 1 && field != 2)) {
        reader.skip(field, wire);
        continue;
      }
      const auto payload = reader.read_length_delimited();
      if (field == 1) {
        target.model_name = as_string(payload, "model_name");
      } else {
        target.model_version = as_string(payload, "model_version");
      }
    }
    return target;
  } catch (const CoreError&) {
    return std::nullopt;  // the full parse says what is wrong
  }
}

ParsedInferRequest parse_infer_request(std::span<const std::uint8_t> message,
                                       std::uint64_t max_elements, bool validate_bytes,
                                       std::uint64_t* work_steps) {
  ParsedInferRequest request;
  std::uint64_t local_work = 0;
  std::uint64_t& work = work_steps != nullptr ? *work_steps : local_work;
  work = 0;
  std::vector<std::span<const std::uint8_t>> raw_contents;
  std::vector<std::size_t> declared_dims;
  ParameterMap parameters(request.parameters);
  WireReader reader(message, work);
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
        parameters.add(payload, work);
        break;
      case 5: {
        if (request.inputs.size() == kMaxInputs) {
          throw_invalid_argument("request has more than " + std::to_string(kMaxInputs) +
                                 " inputs, the limit per request");
        }
        InputEntry entry = parse_input(payload, work);
        declared_dims.push_back(entry.declared_dims);
        request.inputs.push_back(std::move(entry.input));
        break;
      }
      case 6:
        if (request.output_names.size() == kMaxRequestedOutputs) {
          throw_invalid_argument("request asks for more than " +
                                 std::to_string(kMaxRequestedOutputs) +
                                 " outputs, the limit per request");
        }
        request.output_names.push_back(parse_requested_output(payload, work));
        break;
      case 7:
        if (raw_contents.size() == kMaxInputs) {
          throw_invalid_argument("request has more than " + std::to_string(kMaxInputs) +
                                 " raw_input_contents entries, the limit per request");
        }
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
  std::unordered_set<std::string_view> names;
  names.reserve(inputs.size());
  for (std::size_t index = 0; index < inputs.size(); ++index) {
    ParsedInferInput& input = inputs[index];
    ++work;
    if (!names.insert(input.name).second) {
      throw_invalid_argument("input " + quoted(input.name) + " appears more than once");
    }
    if (!raw_contents.empty()) {
      const auto raw = raw_contents[index];
      input.has_raw_contents = true;
      input.raw_offset_bytes = static_cast<std::size_t>(raw.data() - message.data());
      input.raw_size_bytes = raw.size();
      check_declared_dims(input, declared_dims[index]);
      input.element_count =
          validate_raw_tensor(input.datatype, input.shape, raw.size(), max_elements, input.name);
      if (element_size(parse_datatype(input.datatype, input.name)) == 0) {
        if (validate_bytes) {
          work += input.element_count;
          validate_bytes_elements(raw, input.element_count, input.name);
          input.bytes_validated = true;
        } else if (input.element_count > raw.size() / 4) {
          // The walk's first refusal, checked without walking: the count cannot then force work
          // or allocation beyond the request's real size on whoever expands it.
          throw_invalid_argument("input " + quoted(input.name) + ": BYTES content of " +
                                 std::to_string(raw.size()) + " bytes cannot hold " +
                                 std::to_string(input.element_count) + " elements");
        }
      }
    } else if (input.has_typed_contents) {
      // From here on the Python path decodes typed contents, whose errors come first there.
      request.has_typed_contents = true;
      break;
    } else {
      throw_invalid_argument("input " + quoted(input.name) + " has no contents (typed or raw)");
    }
  }
  request.work_steps = work;
  return request;
}

}  // namespace headrace::tensors
