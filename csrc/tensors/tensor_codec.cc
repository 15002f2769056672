#include "tensors/tensor_codec.h"

#include <array>
#include <bit>
#include <cstring>
#include <limits>
#include <utility>

#include "common/status.h"

namespace headrace::tensors {

std::string quoted(std::string_view name) {
  std::string out;
  out.reserve(name.size() + 2);
  out += '\'';
  out += name;
  out += '\'';
  return out;
}

DataType parse_datatype(std::string_view name, std::string_view tensor_name) {
  // The names are datatype_name()'s: one table for both directions.
  for (int value = 0; value <= static_cast<int>(DataType::kBytes); ++value) {
    const auto dtype = static_cast<DataType>(value);
    if (datatype_name(dtype) == name) return dtype;
  }
  throw_invalid_argument("input " + quoted(tensor_name) + ": unknown datatype " + quoted(name));
}

std::uint64_t checked_element_count(std::span<const std::int64_t> shape,
                                    std::uint64_t max_elements, std::string_view tensor_name) {
  bool has_zero = false;
  for (std::size_t axis = 0; axis < shape.size(); ++axis) {
    if (shape[axis] < 0) {
      throw_invalid_argument("input " + quoted(tensor_name) + ": dimension " + std::to_string(axis) +
              " is negative (" + std::to_string(shape[axis]) + ")");
    }
    has_zero = has_zero || shape[axis] == 0;
  }
  // An empty tensor is empty whatever its other dims say; only a non-empty product can
  // exceed the limit.
  if (has_zero) return 0;
  std::uint64_t count = 1;
  for (const std::int64_t dim : shape) {
    const auto udim = static_cast<std::uint64_t>(dim);
    // Checked before multiplying, so a hostile shape never wraps around to a small number.
    if (count > max_elements / udim) {
      throw_invalid_argument("input " + quoted(tensor_name) + ": shape has more than " +
              std::to_string(max_elements) + " elements, the request limit");
    }
    count *= udim;
  }
  return count;
}

std::uint64_t validate_raw_tensor(std::string_view datatype, std::span<const std::int64_t> shape,
                                  std::size_t raw_byte_size, std::uint64_t max_elements,
                                  std::string_view tensor_name) {
  const DataType dtype = parse_datatype(datatype, tensor_name);
  const std::uint64_t count = checked_element_count(shape, max_elements, tensor_name);
  const std::size_t item = element_size(dtype);
  if (item == 0) return count;  // BYTES: validated by bytes_element_spans.
  // count <= max_elements and item <= 8, and max_elements is bounded by the bindings to 2^60.
  const std::uint64_t expected = count * item;
  if (expected != raw_byte_size) {
    throw_invalid_argument("input " + quoted(tensor_name) + ": raw content has " + std::to_string(raw_byte_size) +
            " bytes but shape and datatype " + std::string(datatype) + " need " +
            std::to_string(expected));
  }
  return count;
}

std::vector<std::uint64_t> bytes_element_spans(std::span<const std::uint8_t> blob,
                                               std::uint64_t expected_count,
                                               std::string_view tensor_name) {
  // Each element takes at least its 4-byte prefix, so a blob of n bytes holds at most n/4
  // elements: checking this first bounds the allocation below by the request's real size.
  if (expected_count > blob.size() / 4) {
    throw_invalid_argument("input " + quoted(tensor_name) + ": BYTES content of " + std::to_string(blob.size()) +
            " bytes cannot hold " + std::to_string(expected_count) + " elements");
  }
  std::vector<std::uint64_t> spans;
  spans.reserve(static_cast<std::size_t>(expected_count) * 2);
  std::size_t pos = 0;
  for (std::uint64_t i = 0; i < expected_count; ++i) {
    if (blob.size() - pos < 4) {
      throw_invalid_argument("input " + quoted(tensor_name) + ": BYTES element " + std::to_string(i) +
              " has a truncated length prefix");
    }
    std::uint32_t length = 0;
    // The wire is little-endian; so is every platform we build for (static_assert below).
    std::memcpy(&length, blob.data() + pos, 4);
    pos += 4;
    if (length > blob.size() - pos) {
      throw_invalid_argument("input " + quoted(tensor_name) + ": BYTES element " + std::to_string(i) +
              " declares " + std::to_string(length) + " bytes but only " +
              std::to_string(blob.size() - pos) + " remain");
    }
    spans.push_back(pos);
    spans.push_back(length);
    pos += length;
  }
  if (pos != blob.size()) {
    throw_invalid_argument("input " + quoted(tensor_name) + ": BYTES content has " +
            std::to_string(blob.size() - pos) + " bytes after the " +
            std::to_string(expected_count) + " elements the shape declares");
  }
  return spans;
}

std::string encode_bytes_elements(std::span<const std::string_view> elements,
                                  std::string_view what) {
  std::size_t total = 0;
  for (const auto& element : elements) {
    if (element.size() > std::numeric_limits<std::uint32_t>::max()) {
      throw_invalid_argument(std::string(what) + ": a BYTES element of " +
              std::to_string(element.size()) + " bytes exceeds the 4 GiB element limit");
    }
    total += 4 + element.size();
  }
  std::string out;
  out.resize(total);
  char* cursor = out.data();
  for (const auto& element : elements) {
    const auto length = static_cast<std::uint32_t>(element.size());
    std::memcpy(cursor, &length, 4);
    cursor += 4;
    if (length != 0) std::memcpy(cursor, element.data(), length);
    cursor += length;
  }
  return out;
}

static_assert(std::endian::native == std::endian::little,
              "the v2 wire format is little-endian; big-endian hosts need byte swaps here");

}  // namespace headrace::tensors
