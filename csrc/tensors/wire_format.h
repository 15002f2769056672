// The protobuf wire format's field types: what the ModelInfer codec (infer_wire.cc parses
// requests, infer_wire_response.cc writes responses) reads and writes. No state, no threads.
#pragma once

#include <cstdint>

namespace headrace::tensors {

enum WireType : std::uint32_t {
  kVarint = 0,
  kFixed64 = 1,
  kLengthDelimited = 2,
  kStartGroup = 3,
  kEndGroup = 4,
  kFixed32 = 5,
};

}  // namespace headrace::tensors
