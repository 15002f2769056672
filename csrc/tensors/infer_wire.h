// The KServe v2 ModelInfer messages on the protobuf wire, without the protobuf runtime.
//
// The server hands ModelInfer's raw request bytes here and gets raw response bytes back, so no
// Python protobuf object exists on the hot path. The parser reads only the fields the server uses
// and skips everything else (unknown fields of any wire type, per-tensor parameters, typed
// contents) after checking that it is well formed. Every length is checked against the bytes that
// remain before it is used, and nothing is allocated for what the message merely declares: raw
// contents stay where they are and are reported as (offset, size) into the message.
//
// Ownership/threading: free functions, no state, safe from any thread. A ParsedInferRequest holds
// string_views into the message bytes: the caller keeps those bytes alive (and unchanged) for as
// long as it uses the result. Serialization writes into caller memory or returns an owned string.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "tensors/tensor_codec.h"

namespace headrace::tensors {

// An InferParameter's oneof: bool_param (1), int64_param (2), string_param (3), double_param (4),
// uint64_param (5); monostate when none is set (Python's WhichOneof() is None).
using InferParameterValue =
    std::variant<std::monostate, bool, std::int64_t, std::string_view, double, std::uint64_t>;

// One InferInputTensor. Raw fields are filled only when the request carries raw_input_contents.
struct ParsedInferInput {
  std::string_view name;
  std::string_view datatype;
  std::vector<std::int64_t> shape;
  bool has_typed_contents = false;  // InferTensorContents (field 5) present
  // The matching raw_input_contents entry: message[raw_offset_bytes, + raw_size_bytes).
  bool has_raw_contents = false;
  std::size_t raw_offset_bytes = 0;
  std::size_t raw_size_bytes = 0;
  std::uint64_t element_count = 0;  // valid when has_raw_contents
  // BYTES only: element i's payload is raw[bytes_spans[2*i], + bytes_spans[2*i+1]), offsets
  // relative to the start of the raw entry (as bytes_element_spans returns them).
  std::vector<std::uint64_t> bytes_spans;
};

struct ParsedInferRequest {
  std::string_view model_name;
  std::string_view model_version;
  std::string_view id;
  // Map entries in first-seen key order; a repeated key keeps the last value (protobuf map rule).
  std::vector<std::pair<std::string_view, InferParameterValue>> parameters;
  std::vector<ParsedInferInput> inputs;
  std::vector<std::string_view> output_names;
  // True when the request has no raw contents and an input carries typed contents: the inputs
  // were validated only up to the first such input, and the caller must decode the request
  // with the protobuf runtime (typed contents are the compatible, slow path).
  bool has_typed_contents = false;
};

// Parses and validates a serialized ModelInferRequest. Throws CoreError(kInvalidArgument):
// "malformed ModelInferRequest: ..." for bytes that are not a valid message, and the same
// messages as the Python decode_infer_request for structural errors (raw count mismatch, raw and
// typed mixed, duplicate input, input without contents, and per raw input: datatype, shape,
// byte size, BYTES layout). `max_elements` bounds every raw input's element count.
ParsedInferRequest parse_infer_request(std::span<const std::uint8_t> message,
                                       std::uint64_t max_elements);

// One output tensor: its raw bytes are caller memory (BYTES already length-prefixed).
struct InferOutputView {
  std::string_view name;
  std::string_view datatype;
  std::span<const std::int64_t> shape;
  std::span<const std::uint8_t> raw;
};

// One response parameter holding a string (InferParameter.string_param), such as the variant
// that answered a request routed through an endpoint. Views into caller memory.
struct StringParameterView {
  std::string_view key;
  std::string_view value;
};

// Exact size in bytes of the serialized ModelInferResponse.
std::size_t infer_response_size_bytes(std::string_view model_name, std::string_view model_version,
                                      std::string_view id,
                                      std::span<const InferOutputView> outputs,
                                      std::span<const StringParameterView> parameters = {});

// Writes the ModelInferResponse into `out`, whose size must be infer_response_size_bytes(...) of
// the same arguments. Fields in field-number order, empty strings omitted, shapes packed, map
// entries in the order given (each with its key and value, as the runtime writes them): the bytes
// equal the protobuf runtime's own serialization of the same message (with more than one
// parameter, its deterministic serialization when `parameters` are sorted by key).
void write_infer_response(std::string_view model_name, std::string_view model_version,
                          std::string_view id, std::span<const InferOutputView> outputs,
                          std::span<std::uint8_t> out,
                          std::span<const StringParameterView> parameters = {});

// The same as one owned string (one allocation of the exact size).
std::string serialize_infer_response(std::string_view model_name, std::string_view model_version,
                                     std::string_view id,
                                     std::span<const InferOutputView> outputs,
                                     std::span<const StringParameterView> parameters = {});

}  // namespace headrace::tensors
