// The KServe v2 ModelInfer messages on the protobuf wire, without the protobuf runtime.
//
// The server hands ModelInfer's raw request bytes here and gets raw response bytes back, so no
// Python protobuf object exists on the hot path. The parser reads only the fields the server uses
// and skips everything else (unknown fields of any wire type, per-tensor parameters, typed
// contents) after checking that it is well formed. Every length is checked against the bytes that
// remain before it is used, and nothing is allocated for what the message merely declares: raw
// contents stay where they are and are reported as (offset, size) into the message.
//
// Work is linear in the message size: repeated names and keys are found through hash sets, and the
// counts that each cost an entry (inputs, requested outputs, parameters, shape dims) are capped
// while reading, so a small message cannot make the parser build large tables either.
//
// Ownership/threading: free functions, no state, safe from any thread. A ParsedInferRequest holds
// string_views into the message bytes: the caller keeps those bytes alive (and unchanged) for as
// long as it uses the result. Serialization writes into caller memory or returns an owned string.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "tensors/tensor_codec.h"

namespace headrace::tensors {

// Caps on what one request may list. Each refusal is INVALID_ARGUMENT naming the cap. Generous
// for real models (Triton's own examples use a handful of each), small enough that a request
// at the cap is parsed in microseconds.
inline constexpr std::size_t kMaxInputs = 1024;             // inputs (and raw_input_contents)
inline constexpr std::size_t kMaxRequestedOutputs = 1024;   // outputs
inline constexpr std::size_t kMaxParameters = 256;          // request-level parameter entries

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
  // BYTES with raw contents: the layout (length prefixes) was walked and is valid. When the
  // parse was asked not to (validate_bytes = false), only element_count <= raw_size_bytes / 4
  // was checked, and whoever expands the elements validates them (validate_bytes_elements).
  bool bytes_validated = false;
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
  // Units of parsing work done (fields and values read, set lookups, BYTES elements walked):
  // tests check it stays linear in the message size.
  std::uint64_t work_steps = 0;
};

// Parses and validates a serialized ModelInferRequest. Throws CoreError(kInvalidArgument):
// "malformed ModelInferRequest: ..." for bytes that are not a valid message, and the same
// messages as the Python decode_infer_request for structural errors (raw count mismatch, raw and
// typed mixed, duplicate input, input without contents, and per raw input: datatype, shape,
// byte size, BYTES layout), plus the caps above. `max_elements` bounds every raw input's shape
// (checked_element_count). With validate_bytes = false the BYTES layout is left to whoever
// expands the elements, so a request is refused (model not found, wrong input) without walking
// a large BYTES payload first.
// `work_steps`, when given, receives ParsedInferRequest::work_steps also when the parse throws.
ParsedInferRequest parse_infer_request(std::span<const std::uint8_t> message,
                                       std::uint64_t max_elements, bool validate_bytes = true,
                                       std::uint64_t* work_steps = nullptr);

// What a ModelInferRequest asks for, before it is parsed. Views into the message.
struct InferTarget {
  std::string_view model_name;
  std::string_view model_version;
};

// The model and version a serialized ModelInferRequest names, read without parsing the rest:
// the top-level fields are walked (each length-delimited one skipped by its length, so the work
// is linear in the number of top-level fields, not in their size) and nothing is allocated. For
// the server to decide about a request (its model cannot meet the caller's deadline) before
// paying for the parse. nullopt for bytes that are not a well-formed message at the top level:
// parse_infer_request then says why. As for any proto3 string, the last occurrence wins.
std::optional<InferTarget> peek_infer_target(std::span<const std::uint8_t> message);

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
