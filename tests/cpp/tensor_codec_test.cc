// Sanitizer test of the tensor codec on hostile input: truncated prefixes, lengths past the end,
// shapes whose products overflow. Built and run under AddressSanitizer/UBSan by `make test`.
#include "check.h"
#include <cstdint>
#include <cstdio>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "tensors/tensor_codec.h"

namespace {

using headrace::testing::expect;
using headrace::testing::failures;

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
  // A zero dim empties a tensor but does not exempt its other dims from the limit.
  expect(throws_invalid([&] {
           checked_element_count(std::vector<std::int64_t>{std::int64_t{1} << 31, 0}, 1000, "z");
         }),
         "[2^31, 0] refused");
  expect(checked_element_count(std::vector<std::int64_t>{1000, 0}, 1000, "z") == 0,
         "[1000, 0] within the limit is empty");
  expect(throws_invalid([&] {
           checked_element_count(std::vector<std::int64_t>(kMaxDims + 1, 1), 1000, "r");
         }),
         "rank cap");
  // Validation without spans refuses what bytes_element_spans refuses.
  for (std::size_t cut = 0; cut < blob.size(); ++cut) {
    expect(throws_invalid([&] { validate_bytes_elements(bytes.first(cut), elements.size(), "x"); }),
           "truncated blob refused without spans");
  }
  validate_bytes_elements(bytes, elements.size(), "x");
  // UTF-8: well-formed sequences of every length; overlong forms, surrogates, code points past
  // U+10FFFF, truncated sequences and lone continuation bytes refused.
  const auto utf8 = [](std::string_view text) {
    return is_utf8({reinterpret_cast<const std::uint8_t*>(text.data()), text.size()});
  };
  expect(utf8("") && utf8("abc") && utf8("\xc3\xa9") && utf8("\xe2\x82\xac") &&
             utf8("\xf0\x9f\x98\x80") && utf8("\xf4\x8f\xbf\xbf") &&
             utf8(std::string_view("a\0b", 3)),
         "well-formed UTF-8 accepted");
  for (const std::string_view bad : {"\xc0\xaf", "\xc1\xbf", "\xe0\x80\xaf", "\xed\xa0\x80",
                                     "\xf0\x80\x80\xaf", "\xf4\x90\x80\x80", "\xf5\x80\x80\x80",
                                     "\xe2\x82", "\x80", "\xff"}) {
    expect(!utf8(bad), "ill-formed UTF-8 refused");
  }
  expect(!first_non_utf8_element(bytes, elements.size(), "x").has_value(),
         "every element UTF-8");
  const std::vector<std::string_view> with_bad{"ok", "\xed\xa0\x80", "\xff"};
  const std::string bad_blob = encode_bytes_elements(with_bad, "x");
  const std::span<const std::uint8_t> bad_bytes(
      reinterpret_cast<const std::uint8_t*>(bad_blob.data()), bad_blob.size());
  expect(first_non_utf8_element(bad_bytes, with_bad.size(), "x") == std::optional<std::uint64_t>(1),
         "first ill-formed element found");
  expect(throws_invalid([&] { first_non_utf8_element(bad_bytes.first(5), 3, "x"); }),
         "layout checked before UTF-8");
  if (failures == 0) std::puts("tensor_codec_test: ok");
  return failures == 0 ? 0 : 1;
}
