// A BYTES input left in its wire form: the length-prefixed elements inside the request message,
// with the message object as their owner. The wire parser hands these out instead of object
// arrays, so a BYTES input costs nothing more than its message until someone asks for its
// elements: the engine expands it (to_numpy) only after the model is found and the request is
// checked against it, or hands it to a Batcher as it is (the batcher batches BYTES in wire form).
//
// Threading: a plain value; every method that touches Python objects needs the GIL. The layout
// (length prefixes) is validated by whoever reads the elements (to_numpy, Batcher::submit), not
// by the parser, unless the parse already did (validated).
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/tensor.h"

namespace headrace::bindings {

struct WireBytesTensor {
  pybind11::bytes message;          // owns the bytes below
  std::size_t offset_bytes = 0;     // the raw_input_contents entry: message[offset, + size)
  std::size_t size_bytes = 0;
  std::vector<std::int64_t> shape;  // validated by checked_element_count
  std::uint64_t count = 0;          // elements; count <= size_bytes / 4
  std::string name;
  bool validated = false;           // the layout was walked by the parse

  std::span<const std::uint8_t> blob() const;
  // The elements as a numpy object array of bytes shaped `shape`, after checking the layout
  // (CoreError(kInvalidArgument) naming the input). Allocates per element: call it late.
  pybind11::array to_numpy() const;
  // Checks the layout as to_numpy does, then returns the index of the first element that is not
  // well-formed UTF-8, or nullopt: the check a model of string tensors needs, without making an
  // object per element.
  std::optional<std::uint64_t> first_non_utf8_element() const;
  // The elements as a batcher tensor viewing the message (no copy); its owner takes the GIL
  // when dropped, so the tensor may be freed on any thread.
  Tensor tensor() const;
};

}  // namespace headrace::bindings
