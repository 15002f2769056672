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

// Byte offset of the start of every row, plus the end: `rows + 1` entries. For fixed-size
// datatypes it is arithmetic; for BYTES it walks the length prefixes, validating them. Throws
// CoreError(kInvalidArgument) naming `what` when the bytes do not match the shape.
std::vector<std::size_t> row_byte_offsets(const Tensor& tensor, std::string_view what);

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
