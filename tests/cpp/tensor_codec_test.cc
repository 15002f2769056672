// Sanitizer test of the tensor codec on hostile input: truncated prefixes, lengths past the end,
// shapes whose products overflow. Built and run under AddressSanitizer/UBSan by `make test`.
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "tensors/tensor_codec.h"

namespace {

int failures = 0;

void expect(bool condition, const char* what) {
  if (!condition) {
    std::fprintf(stderr, "FAILED: %s\n", what);
    ++failures;
  }
}

template <typename Fn>
bool throws_invalid(Fn&& fn) {
  try {
    fn();
  } catch (const headrace::CoreError& error) {
    return error.code() == headrace::StatusCode::kInvalidArgument;
  }
  return false;
}

}  // namespace

int main() {
  using namespace headrace::tensors;
  const std::vector<std::string_view> elements{"", "abc", std::string_view("a\0b", 3), "\xc3\xa9"};
  const std::string blob = encode_bytes_elements(elements, "x");
  const std::span<const std::uint8_t> bytes(reinterpret_cast<const std::uint8_t*>(blob.data()),
                                            blob.size());
  const auto spans = bytes_element_spans(bytes, elements.size(), "x");
  for (std::size_t i = 0; i < elements.size(); ++i) {
    expect(std::string_view(blob.data() + spans[2 * i], spans[2 * i + 1]) == elements[i],
           "round trip");
  }
  // Every truncation of a valid blob is refused, never read past its end.
  for (std::size_t cut = 0; cut < blob.size(); ++cut) {
    expect(throws_invalid([&] { bytes_element_spans(bytes.first(cut), elements.size(), "x"); }),
           "truncated blob refused");
  }
  // Random garbage never crashes: it either parses or is refused.
  std::mt19937 rng(7);
  for (int trial = 0; trial < 20000; ++trial) {
    std::vector<std::uint8_t> garbage(rng() % 64);
    for (auto& byte : garbage) byte = static_cast<std::uint8_t>(rng());
    const auto count = static_cast<std::uint64_t>(rng() % 20);
    try {
      bytes_element_spans(garbage, count, "g");
    } catch (const headrace::CoreError&) {
    }
  }
  const std::vector<std::int64_t> huge{1LL << 40, 1LL << 40};
  expect(throws_invalid([&] { checked_element_count(huge, std::uint64_t{1} << 60, "h"); }),
         "overflowing shape refused");
  const std::vector<std::int64_t> negative{2, -3};
  expect(throws_invalid([&] { checked_element_count(negative, 100, "n"); }), "negative dim");
  expect(checked_element_count(std::vector<std::int64_t>{}, 1, "s") == 1, "scalar has one element");
  expect(throws_invalid([&] { validate_raw_tensor("FP32", std::vector<std::int64_t>{2}, 7, 100, "r"); }),
         "raw size mismatch refused");
  expect(throws_invalid([&] { parse_datatype("fp32", "c"); }), "datatypes are case-sensitive");
  if (failures == 0) std::puts("tensor_codec_test: ok");
  return failures == 0 ? 0 : 1;
}
