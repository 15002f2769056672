// Validation and codecs for tensors as they arrive on the wire (KServe v2 / Triton).
//
// Everything here runs on untrusted request bytes before anything is allocated for them: a shape
// is checked for negative dims and for a product that overflows or exceeds the request limit
// before any buffer of that size exists, and a BYTES blob is walked for its length prefixes
// without copying it.
//
// Ownership/threading: free functions over caller-owned memory; no state, safe from any thread.
// The caller keeps the input bytes alive for the duration of each call; returned vectors own
// their data.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/tensor.h"

namespace headrace::tensors {

// `name` in single quotes, as error messages name tensors.
std::string quoted(std::string_view name);

// Parses a v2 datatype name ("FP32", "BYTES", ...). Names are case-sensitive, as in the spec.
// Throws CoreError(kInvalidArgument) naming `tensor_name` for an unknown datatype.
DataType parse_datatype(std::string_view name, std::string_view tensor_name);

// Product of `shape` after checking every dim is >= 0 and the product fits in
// `max_elements`. Throws CoreError(kInvalidArgument) naming the tensor otherwise. Never
// overflows: the product is checked before each multiplication.
std::uint64_t checked_element_count(std::span<const std::int64_t> shape,
                                    std::uint64_t max_elements, std::string_view tensor_name);

// Validates a raw (fixed-size) tensor: datatype known, shape valid, and
// raw_byte_size == elements * element_size. Returns the element count.
std::uint64_t validate_raw_tensor(std::string_view datatype, std::span<const std::int64_t> shape,
                                  std::size_t raw_byte_size, std::uint64_t max_elements,
                                  std::string_view tensor_name);

// Byte offsets of each BYTES element's payload in a serialized blob: element i's payload is
// blob[offsets[2*i], offsets[2*i] + offsets[2*i+1]). Validates that every 4-byte little-endian
// length prefix and payload lies inside the blob and that the blob holds exactly
// `expected_count` elements with nothing left over.
std::vector<std::uint64_t> bytes_element_spans(std::span<const std::uint8_t> blob,
                                               std::uint64_t expected_count,
                                               std::string_view tensor_name);

// Serializes elements (each a view of caller memory) as 4-byte LE length + payload.
// Throws CoreError(kInvalidArgument), prefixed by `what` ("output 'y'"), for an element of 2^32
// bytes or more.
std::string encode_bytes_elements(std::span<const std::string_view> elements,
                                  std::string_view what);

}  // namespace headrace::tensors
