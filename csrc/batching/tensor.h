// A tensor as the batcher moves it: datatype, shape, and bytes kept alive by a shared owner.
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

#include "tensors/tensor_codec.h"

namespace headrace::batching {

using tensors::DataType;

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

// Human-readable datatype name as on the wire ("FP32", "BYTES").
std::string_view datatype_name(DataType dtype) noexcept;

// Where a tensor's rows start in its bytes, after checking that the bytes match the shape.
// Fixed-size datatypes (and BYTES rows without elements) need no table: a row's offset is
// arithmetic, so a tensor whose rows are empty costs nothing per declared row, however many it
// declares. BYTES rows with elements keep a table of rows + 1 offsets, which the length prefixes
// bound by the bytes actually present (rows <= bytes / 4).
class RowOffsets {
 public:
  // Throws CoreError(kInvalidArgument) naming `what` when the tensor has no dims, a negative dim,
  // a shape whose non-zero dims multiply past kMaxExtent, or bytes that do not match the shape
  // (for BYTES: the length prefixes).
  RowOffsets(const Tensor& tensor, std::string_view what);

  // Validates as the constructor does, keeping nothing (no table even for BYTES).
  static void validate(const Tensor& tensor, std::string_view what);

  // Start of `row` in bytes; row == rows is the end.
  std::size_t start(std::size_t row) const noexcept {
    return table_.empty() ? row * row_bytes_ : table_[row];
  }

  // Most index positions (the product of the non-zero dims) a tensor may declare: keeps every
  // byte count derived from a shape exact in 64 bits.
  static constexpr std::uint64_t kMaxExtent = std::uint64_t{1} << 60;

 private:
  std::size_t row_bytes_ = 0;
  std::vector<std::size_t> table_;
};

}  // namespace headrace::batching
