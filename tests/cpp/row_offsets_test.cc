// Sanitizer test of batching's RowOffsets and scatter on tensors whose rows are empty or whose
// shapes are hostile: nothing is allocated per declared row (a 2^40-row empty tensor is split in
// O(requests)), BYTES row tables stay bounded by the bytes present, and shapes past the extent
// limit are refused. Built and run under AddressSanitizer/UBSan by `make test`.
#include "check.h"
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "batching/batch_assembly.h"
#include "common/tensor.h"
#include "common/status.h"

namespace {

using namespace headrace::batching;
using headrace::DataType;
using headrace::Tensor;

using headrace::testing::expect;
using headrace::testing::failures;

template <typename Fn>
bool throws_code(headrace::StatusCode code, Fn&& fn) {
  try {
    fn();
  } catch (const headrace::CoreError& error) {
    return error.code() == code;
  }
  return false;
}

Tensor bytes_tensor(std::vector<std::int64_t> shape, const std::vector<std::string>& elements) {
  std::string blob;
  for (const auto& element : elements) {
    const auto length = static_cast<std::uint32_t>(element.size());
    blob.append(reinterpret_cast<const char*>(&length), 4);
    blob += element;
  }
  std::uint8_t* out = nullptr;
  Tensor tensor = Tensor::allocate(DataType::kBytes, std::move(shape), blob.size(), &out);
  if (!blob.empty()) std::memcpy(out, blob.data(), blob.size());
  return tensor;
}

}  // namespace

int main() {
  using headrace::StatusCode;
  std::uint8_t* out = nullptr;
  // 2^40 empty rows: validated and split without a table (ASan would report a 8 TiB allocation).
  const std::int64_t huge_rows = std::int64_t{1} << 40;
  const Tensor empty = Tensor::allocate(DataType::kFp32, {huge_rows, 0}, 0, &out);
  RowOffsets::validate(empty, "empty");
  const RowOffsets empty_offsets(empty, "empty");
  expect(empty_offsets.start(static_cast<std::size_t>(huge_rows)) == 0, "empty rows start at 0");
  const std::vector<std::int64_t> halves{huge_rows / 2, huge_rows / 2};
  const auto split = scatter_outputs({empty}, halves);
  expect(split.size() == 2 && split[1][0].shape[0] == huge_rows / 2 && split[1][0].byte_size == 0,
         "empty output split per request");

  // Fixed-size rows: arithmetic offsets, bytes checked against the shape.
  const Tensor floats = Tensor::allocate(DataType::kFp32, {3, 2}, 24, &out);
  const RowOffsets float_offsets(floats, "floats");
  expect(float_offsets.start(2) == 16 && float_offsets.start(3) == 24, "fixed-size offsets");
  const Tensor short_floats = Tensor::allocate(DataType::kFp32, {3, 2}, 20, &out);
  expect(throws_code(StatusCode::kInvalidArgument,
                     [&] { RowOffsets::validate(short_floats, "short"); }),
         "bytes not matching the shape refused");

  // Extent past 2^60 refused, whatever the zero dims say.
  const Tensor past = Tensor::allocate(DataType::kUint8, {std::int64_t{1} << 31,
                                                          std::int64_t{1} << 31, 0}, 0, &out);
  expect(throws_code(StatusCode::kInvalidArgument, [&] { RowOffsets::validate(past, "past"); }),
         "extent past 2^60 refused");

  // BYTES: a row table bounded by the elements present; rows of no elements need none.
  const Tensor words = bytes_tensor({2, 2}, {"a", "", "bcd", "e"});
  const RowOffsets word_offsets(words, "words");
  expect(word_offsets.start(0) == 0 && word_offsets.start(1) == 9 && word_offsets.start(2) == 21,
         "BYTES row offsets");
  const Tensor no_words = bytes_tensor({huge_rows, 0}, {});
  RowOffsets::validate(no_words, "no words");
  expect(RowOffsets(no_words, "no words").start(5) == 0, "empty BYTES rows");
  const Tensor lying = bytes_tensor({huge_rows, 1}, {"x"});
  expect(throws_code(StatusCode::kInvalidArgument, [&] { RowOffsets::validate(lying, "lying"); }),
         "BYTES rows the bytes cannot hold refused before any table");

  if (failures == 0) std::puts("row_offsets_test: ok");
  return failures == 0 ? 0 : 1;
}
