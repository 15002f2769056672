// Sanitizer test of the ModelInfer wire codec on hostile input: every truncation of a valid
// request, random byte flips, random garbage, lengths past the end, deep groups. Built and run
// under AddressSanitizer/UBSan; a read past the message is a sanitizer failure, not a pass.
#include "check.h"
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "tensors/infer_wire.h"
#include "common/status.h"

namespace {

using headrace::tensors::InferOutputView;
using headrace::tensors::parse_infer_request;

using headrace::testing::expect;
using headrace::testing::failures;

template <typename Fn>
std::string invalid_message(Fn&& fn) {
  try {
    fn();
  } catch (const headrace::CoreError& error) {
    if (error.code() == headrace::StatusCode::kInvalidArgument) return error.message();
    return "wrong code: " + error.message();
  }
  return "";
}

// A minimal protobuf writer for hand-built messages.
struct Message {
  std::string bytes;
  void varint(std::uint64_t value) {
    while (value >= 0x80) {
      bytes += static_cast<char>((value & 0x7F) | 0x80);
      value >>= 7;
    }
    bytes += static_cast<char>(value);
  }
  void tag(std::uint32_t field, std::uint32_t wire) { varint((field << 3) | wire); }
  Message& str(std::uint32_t field, std::string_view text) {
    tag(field, 2);
    varint(text.size());
    bytes += text;
    return *this;
  }
  Message& integer(std::uint32_t field, std::int64_t value) {
    tag(field, 0);
    varint(static_cast<std::uint64_t>(value));
    return *this;
  }
  Message& fixed64(std::uint32_t field, std::uint64_t value) {
    tag(field, 1);
    char raw[8];
    std::memcpy(raw, &value, 8);
    bytes.append(raw, 8);
    return *this;
  }
  Message& sub(std::uint32_t field, const Message& inner) { return str(field, inner.bytes); }
  std::span<const std::uint8_t> span() const {
    return {reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size()};
  }
};

Message valid_request() {
  Message param_value;
  param_value.integer(2, -5);
  Message param;
  param.str(1, "priority").sub(2, param_value);
  Message shape_packed;
  shape_packed.varint(2);
  shape_packed.varint(3);
  Message input_a;
  input_a.str(1, "a").str(2, "FP32").str(3, shape_packed.bytes);  // packed shape [2, 3]
  Message input_b;
  input_b.str(1, "b").str(2, "BYTES").integer(3, 2);  // unpacked shape [2]
  std::string bytes_blob;
  for (std::string_view element : {std::string_view("xy"), std::string_view("")}) {
    const auto length = static_cast<std::uint32_t>(element.size());
    bytes_blob.append(reinterpret_cast<const char*>(&length), 4);
    bytes_blob += element;
  }
  Message output;
  output.str(1, "out");
  Message request;
  request.str(1, "model").str(2, "1").str(3, "req-7").sub(4, param).sub(5, input_a).sub(5, input_b);
  request.sub(6, output).str(7, std::string(24, '\x01')).str(7, bytes_blob);
  request.fixed64(99, 42).integer(100, -1);  // unknown fields
  return request;
}

}  // namespace

int main() {
  const Message request = valid_request();
  const auto parsed = parse_infer_request(request.span(), 1000);
  expect(parsed.model_name == "model" && parsed.model_version == "1" && parsed.id == "req-7",
         "strings parsed");
  expect(parsed.parameters.size() == 1 && parsed.parameters[0].first == "priority" &&
             std::get<std::int64_t>(parsed.parameters[0].second) == -5,
         "negative int64 parameter");
  expect(parsed.inputs.size() == 2, "two inputs");
  expect(parsed.inputs[0].shape == std::vector<std::int64_t>{2, 3}, "packed shape");
  expect(parsed.inputs[1].shape == std::vector<std::int64_t>{2}, "unpacked shape");
  expect(parsed.inputs[0].raw_size_bytes == 24 &&
             request.bytes[parsed.inputs[0].raw_offset_bytes] == '\x01',
         "raw offset points into the message");
  expect(parsed.inputs[1].element_count == 2 && parsed.inputs[1].bytes_validated,
         "BYTES layout validated");
  expect(parsed.output_names.size() == 1 && parsed.output_names[0] == "out", "outputs");
  expect(!parsed.has_typed_contents, "no typed contents");

  // Every strict prefix is either a valid message with fewer fields or refused; never a crash.
  for (std::size_t cut = 0; cut < request.bytes.size(); ++cut) {
    try {
      parse_infer_request(request.span().first(cut), 1000);
    } catch (const headrace::CoreError& error) {
      expect(error.code() == headrace::StatusCode::kInvalidArgument, "truncation: invalid arg");
    }
  }

  // Random byte flips of the valid request, and pure garbage.
  std::mt19937 rng(11);
  for (int trial = 0; trial < 50000; ++trial) {
    std::string mutated = request.bytes;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int f = 0; f < flips; ++f) {
      mutated[rng() % mutated.size()] = static_cast<char>(rng());
    }
    if (trial % 2 == 1) {
      mutated.resize(rng() % 96);
      for (auto& byte : mutated) byte = static_cast<char>(rng());
    }
    // Copy into an exactly sized heap buffer so ASan sees any read past the end.
    std::vector<std::uint8_t> buffer(mutated.begin(), mutated.end());
    try {
      const auto result = parse_infer_request(buffer, 1u << 20);
      for (const auto& input : result.inputs) {
        if (input.has_raw_contents) {
          expect(input.raw_offset_bytes + input.raw_size_bytes <= buffer.size(),
                 "raw span inside the message");
        }
      }
    } catch (const headrace::CoreError& error) {
      expect(error.code() == headrace::StatusCode::kInvalidArgument, "garbage: invalid arg");
    }
  }

  // A length far past the end, and a 10-byte negative length varint, are refused.
  Message huge;
  huge.tag(7, 2);
  huge.varint(std::uint64_t{1} << 62);
  expect(invalid_message([&] { parse_infer_request(huge.span(), 10); })
                 .starts_with("malformed ModelInferRequest: length-delimited field"),
         "huge length refused");
  Message negative_length;
  negative_length.tag(7, 2);
  negative_length.varint(static_cast<std::uint64_t>(-1));
  expect(!invalid_message([&] { parse_infer_request(negative_length.span(), 10); }).empty(),
         "negative length refused");

  // Groups: balanced ones are skipped, unbalanced and over-deep ones refused.
  Message group;
  group.tag(50, 3);
  group.integer(1, 5);
  group.tag(51, 3);
  group.tag(51, 4);
  group.tag(50, 4);
  group.str(1, "m");
  expect(parse_infer_request(group.span(), 10).model_name == "m", "group skipped");
  Message open_group;
  open_group.tag(50, 3);
  open_group.integer(1, 5);
  expect(invalid_message([&] { parse_infer_request(open_group.span(), 10); })
                 .find("unterminated group") != std::string::npos,
         "unterminated group refused");
  Message deep;
  for (int i = 0; i < 5000; ++i) deep.tag(9, 3);
  expect(invalid_message([&] { parse_infer_request(deep.span(), 10); })
                 .find("nested too deeply") != std::string::npos,
         "deep groups refused without exhausting the stack");
  Message bad_wire;
  bad_wire.tag(3, 7);
  expect(invalid_message([&] { parse_infer_request(bad_wire.span(), 10); })
                 .find("invalid wire type 7") != std::string::npos,
         "wire type 7 refused");
  Message bad_utf8;
  bad_utf8.str(1, "\xc3\x28");
  expect(invalid_message([&] { parse_infer_request(bad_utf8.span(), 10); })
                 .find("not valid UTF-8") != std::string::npos,
         "invalid UTF-8 refused");

  // A shape declaring 2^40 elements is refused before anything of that size exists.
  Message big_input;
  big_input.str(1, "x").str(2, "FP32").integer(3, std::int64_t{1} << 40);
  Message big_request;
  big_request.sub(5, big_input).str(7, "");
  expect(invalid_message([&] { parse_infer_request(big_request.span(), 1u << 20); })
                 .find("the request limit") != std::string::npos,
         "over-limit shape refused");

  // A zero dim does not exempt the others: [2^31, 0] is refused like [2^31, 1].
  Message empty_input;
  Message empty_shape;
  empty_shape.varint(std::uint64_t{1} << 31);
  empty_shape.varint(0);
  empty_input.str(1, "x").str(2, "FP32").str(3, empty_shape.bytes);
  Message empty_request;
  empty_request.sub(5, empty_input).str(7, "");
  expect(invalid_message([&] { parse_infer_request(empty_request.span(), 1u << 20); })
                 .find("shape is empty (a zero dimension)") != std::string::npos,
         "zero dim does not exempt the others");

  // Caps: counted while reading, refused at the first entry past them; work stays linear.
  Message one;
  one.integer(2, 1);
  Message param;
  param.str(1, "k").sub(2, one);
  Message many_params;
  many_params.str(1, "m");
  for (int i = 0; i < 5000; ++i) many_params.sub(4, param);
  std::uint64_t steps = 0;
  expect(invalid_message([&] {
           parse_infer_request(many_params.span(), 10, true, &steps);
         }).find("more than 256 parameters") != std::string::npos,
         "parameter cap");
  expect(steps < 257 * 8, "refused at the cap, not after reading every entry");
  Message many_inputs;
  for (int i = 0; i < 2000; ++i) {
    Message input;
    input.str(1, "x" + std::to_string(i)).str(2, "FP32").integer(3, 1);
    many_inputs.sub(5, input);
  }
  expect(invalid_message([&] { parse_infer_request(many_inputs.span(), 10); })
                 .find("more than 1024 inputs") != std::string::npos,
         "input cap");
  Message wide_inputs;
  for (std::size_t i = 0; i < headrace::tensors::kMaxInputs; ++i) {
    Message input;
    input.str(1, "x" + std::to_string(i)).str(2, "FP32").integer(3, 1);
    wide_inputs.sub(5, input);
  }
  for (std::size_t i = 0; i < headrace::tensors::kMaxInputs; ++i) wide_inputs.str(7, "abcd");
  const auto wide = parse_infer_request(wide_inputs.span(), 10);
  expect(wide.inputs.size() == headrace::tensors::kMaxInputs, "inputs at the cap parse");
  expect(wide.work_steps <= wide_inputs.bytes.size(), "parse work linear in the message");
  Message deep_shape;
  Message ones;
  for (int i = 0; i < 100000; ++i) ones.varint(1);
  deep_shape.str(1, "x").str(2, "FP32").str(3, ones.bytes);
  Message deep_request;
  deep_request.sub(5, deep_shape).str(7, "abcd");
  expect(invalid_message([&] { parse_infer_request(deep_request.span(), 10); })
                 .find("100000 dimensions; at most 32") != std::string::npos,
         "rank cap");

  // BYTES: without validate_bytes only the count is checked against the bytes.
  Message lazy_input;
  lazy_input.str(1, "s").str(2, "BYTES").integer(3, 2);
  Message lazy_request;
  lazy_request.sub(5, lazy_input).str(7, std::string("\x05\0\0\0abcd", 8));
  const auto lazy = parse_infer_request(lazy_request.span(), 10, false);
  expect(!lazy.inputs[0].bytes_validated && lazy.inputs[0].element_count == 2,
         "BYTES layout left to the expansion");
  expect(!invalid_message([&] { parse_infer_request(lazy_request.span(), 10, true); }).empty(),
         "the same layout refused when validated");

  // Response: the writer's size is exact, and a too-small buffer is refused, not overrun.
  const std::vector<std::int64_t> shape{1, 300};
  const std::string raw(1200, 'z');
  const std::vector<InferOutputView> outputs{
      {"y", "FP32", shape, {reinterpret_cast<const std::uint8_t*>(raw.data()), raw.size()}}};
  const std::string response =
      headrace::tensors::serialize_infer_response("model", "", "id", outputs);
  expect(response.size() ==
             headrace::tensors::infer_response_size_bytes("model", "", "id", outputs),
         "response size exact");
  std::vector<std::uint8_t> small(response.size() - 1);
  bool refused = false;
  try {
    headrace::tensors::write_infer_response("model", "", "id", outputs, small);
  } catch (const headrace::CoreError& error) {
    refused = error.code() == headrace::StatusCode::kInternal;
  }
  expect(refused, "too-small response buffer refused");

  // String response parameters: exact size, and a buffer one byte short is refused.
  const std::string variant(200, 'v');  // a 2-byte length varint inside the entry
  const std::vector<headrace::tensors::StringParameterView> parameters{
      {"headrace_variant", variant}, {"", ""}};
  const std::string with_parameters = headrace::tensors::serialize_infer_response(
      "model", "", "id", outputs, parameters);
  expect(with_parameters.size() == headrace::tensors::infer_response_size_bytes(
                                       "model", "", "id", outputs, parameters),
         "response with parameters: size exact");
  expect(with_parameters.find(variant) != std::string::npos, "parameter value written");
  std::vector<std::uint8_t> short_by_one(with_parameters.size() - 1);
  refused = false;
  try {
    headrace::tensors::write_infer_response("model", "", "id", outputs, short_by_one, parameters);
  } catch (const headrace::CoreError& error) {
    refused = error.code() == headrace::StatusCode::kInternal;
  }
  expect(refused, "too-small buffer for parameters refused");

  // The target is read without parsing: a request the parse refuses still names its model.
  {
    Message hostile;
    Message zero_dim;
    zero_dim.str(1, "x").str(2, "FP32").integer(3, std::int64_t{1} << 31).integer(3, 0);
    hostile.str(1, "m").sub(5, zero_dim).str(7, "").str(2, "4").str(1, "n");
    const auto target = headrace::tensors::peek_infer_target(hostile.span());
    expect(target.has_value() && target->model_name == "n" && target->model_version == "4",
           "peek: the last model_name wins, other fields skipped");
    bool parse_refused = false;
    try {
      parse_infer_request(hostile.span(), 1000);
    } catch (const headrace::CoreError&) {
      parse_refused = true;
    }
    expect(parse_refused, "peek: the same request is refused by the parse");
    const std::string& bytes = hostile.bytes;
    for (std::size_t cut = 1; cut < bytes.size(); ++cut) {
      // Truncated anywhere: either a whole prefix of fields (read) or malformed (nullopt);
      // never a read past the end (ASan).
      (void)headrace::tensors::peek_infer_target(
          {reinterpret_cast<const std::uint8_t*>(bytes.data()), cut});
    }
    Message not_utf8;
    not_utf8.str(1, "\xff");
    expect(!headrace::tensors::peek_infer_target(not_utf8.span()).has_value(),
           "peek: a model_name that is not UTF-8 is malformed");
  }

  if (failures != 0) {
    std::fprintf(stderr, "%d failures\n", failures.load());
    return 1;
  }
  std::puts("infer_wire_test: ok");
  return 0;
}
