// A tensor as the core moves it between areas (the batcher, the runners, the bindings): datatype,
// shape, and bytes kept alive by a shared owner; and the v2 protocol's datatypes it is made of.
//
// Fixed-size datatypes hold their elements in C order. BYTES holds the v2 wire serialization
// (4-byte little-endian length + payload per element), which concatenates row-wise without
// re-encoding, so batch assembly and scatter treat it as bytes too and stay free of Python.
//
// Ownership: `data` is a shared_ptr whose control block owns the memory (a buffer allocated here,
// or a foreign owner such as a numpy array, through the aliasing constructor). Views of rows share
// that owner, so scattering outputs copies nothing. Whoever drops the last reference frees the
// memory on their thread; foreign owners that need a lock to be freed (the GIL) take it in their
// deleter. A Tensor is a value: safe to move between threads, not to mutate from two at once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace headrace {

// The v2 protocol's datatypes. kBytes has no fixed element size.
enum class DataType : int {
  kBool,
  kUint8,
  kUint16,
  kUint32,
  kUint64,
  kInt8,
  kInt16,
  kInt32,
  kInt64,
  kFp16,
  kFp32,
  kFp64,
  kBf16,
  kBytes,
};

// Bytes per element; 0 for BYTES.
std::size_t element_size(DataType dtype) noexcept;

// Human-readable datatype name as on the wire ("FP32", "BYTES").
std::string_view datatype_name(DataType dtype) noexcept;

struct Tensor {
  DataType dtype = DataType::kFp32;
  std::vector<std::int64_t> shape;
  std::shared_ptr<const std::uint8_t> data;
  std::size_t byte_size = 0;

  // A fresh, uninitialized buffer of `byte_size` bytes. `out` receives the writable pointer; it
  // stays valid for as long as the returned tensor (or any view of it) lives.
  static Tensor allocate(DataType dtype, std::vector<std::int64_t> shape, std::size_t byte_size,
                         std::uint8_t** out);

  // dim 0, or 0 for a scalar.
  std::int64_t rows() const noexcept { return shape.empty() ? 0 : shape.front(); }
  // Elements in one row: the product of shape[1:].
  std::uint64_t elements_per_row() const noexcept;
};

}  // namespace headrace
