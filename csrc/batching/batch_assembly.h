// Gather and scatter: the one copy of request data into the batch, and the split of the outputs
// back into each request's rows.
//
// Threading: free functions over the caller's data, run on a worker thread without any lock (and
// without the GIL). Inputs and outputs are read through their shared owners, which the caller
// keeps alive for the call.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "batching/request.h"
#include "batching/runner.h"

namespace headrace::batching {

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

// One contiguous buffer per input, the requests' rows in order. The requests must share a shape
// signature (the policy guarantees it). Fixed-size and BYTES (serialized) tensors are both
// memcpy'd; nothing is allocated beyond the sum of the bytes the requests actually hold.
Batch assemble_batch(std::span<const std::unique_ptr<Request>> requests);

// Splits each output into per-request views: result[r][k] is request r's rows of output k, sharing
// the output's owner (no copy). `rows[r]` is request r's row count. Throws CoreError(kInternal)
// when an output's dim 0 is not the batch's row count or its bytes do not match its shape.
std::vector<std::vector<Tensor>> scatter_outputs(const std::vector<Tensor>& outputs,
                                                 std::span<const std::int64_t> rows);

}  // namespace headrace::batching
