// Sanitizer test of the int8 GEMM paths: every ISA this CPU runs, and the portable emulation of the
// quad-panel algorithm, against a plain int64 triple loop on random odd shapes, whole panels and
// row blocks, and the saturation extremes (the largest code times -128 everywhere), with A buffers
// exactly as long as the kernels may read, so out-of-row reads show. Also feeds the .int8 parser
// random and damaged bytes. Built and run under ASan/UBSan.
#include "check.h"
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "quant/epilogue.h"
#include "quant/int8_gemm.h"
#include "quant/int8_model_file.h"
#include "quant/isa.h"
#include "quant/packed_weights.h"
#include "common/status.h"

namespace {

using namespace headrace::quant;

using headrace::testing::expect;
using headrace::testing::failures;

struct Case {
  std::size_t m, k, n, lda;
  std::vector<std::uint8_t> a;  // m rows of lda bytes: exactly what the kernels may read
  std::vector<std::int8_t> w;
};

// code_fill / weight_fill < 0: random in the full range; else that value everywhere. Codes go up
// to 255; check_case clamps them to each ISA's range.
Case random_case(std::mt19937& rng, std::size_t m, std::size_t k, std::size_t n, int code_fill,
                 int weight_fill) {
  const std::size_t k_padded = (k + 3) / 4 * 4;
  Case c{m, k, n, k_padded + 4 * (rng() % 2), {}, {}};
  c.a.resize(m * c.lda);
  c.w.resize(k * n);
  std::uniform_int_distribution<int> code(0, 255);
  std::uniform_int_distribution<int> weight(-128, 127);
  // Padding bytes past k hold garbage on purpose: they meet zero weights.
  for (auto& x : c.a) x = static_cast<std::uint8_t>(code_fill < 0 ? code(rng) : code_fill);
  std::normal_distribution<float> narrow(0.0f, 30.0f);
  for (auto& x : c.w) {
    if (weight_fill == -200) {
      // Mostly small weights, 0.5% at the extremes: on avx2 these pack paired with corrections.
      const float value = rng() % 200 == 0 ? (rng() % 2 ? 127.0f : -128.0f) : narrow(rng);
      x = static_cast<std::int8_t>(std::clamp(std::nearbyint(value), -128.0f, 127.0f));
    } else {
      x = static_cast<std::int8_t>(weight_fill < -128 ? weight(rng) : weight_fill);
    }
  }
  return c;
}

std::string describe(const char* path, const Case& c) {
  return std::string(path) + " m=" + std::to_string(c.m) + " k=" + std::to_string(c.k) +
         " n=" + std::to_string(c.n);
}

std::vector<std::int32_t> reference(const std::vector<std::uint8_t>& a, const Case& c) {
  std::vector<std::int32_t> expected(c.m * c.n, 0);
  for (std::size_t i = 0; i < c.m; ++i) {
    for (std::size_t j = 0; j < c.n; ++j) {
      std::int64_t sum = 0;
      for (std::size_t kk = 0; kk < c.k; ++kk) sum += a[i * c.lda + kk] * c.w[kk * c.n + j];
      expected[i * c.n + j] = static_cast<std::int32_t>(sum);
    }
  }
  return expected;
}

void check_case(const Case& c) {
  for (Isa isa : supported_isas()) {
    std::vector<std::uint8_t> a = c.a;
    const std::uint32_t max_code = max_activation_code(isa);
    for (auto& code : a) code = static_cast<std::uint8_t>(std::min<std::uint32_t>(code, max_code));
    const std::vector<std::int32_t> expected = reference(a, c);
    const PackedWeights weights(isa, c.w.data(), c.k, c.n);
    // ldc wider than n, with a guard value, so a write past a row's n columns is caught.
    const std::size_t ldc = c.n + 5;
    std::vector<std::int32_t> got(c.m * ldc, 0x5A5A5A5A);
    gemm_u8s8_s32(a.data(), c.lda, c.m, weights, got.data(), ldc);
    bool same = true;
    bool guard_intact = true;
    for (std::size_t i = 0; i < c.m; ++i) {
      same = same && std::memcmp(&got[i * ldc], &expected[i * c.n], c.n * 4) == 0;
      for (std::size_t j = c.n; j < ldc; ++j) guard_intact = guard_intact && got[i * ldc + j] == 0x5A5A5A5A;
    }
    expect(same, describe(isa_name(isa), c));
    expect(guard_intact, describe(isa_name(isa), c) + " wrote past n");
  }
  const std::vector<std::int8_t> packed = pack_quad_panels(c.w.data(), c.k, c.n);
  std::vector<std::int32_t> emulated(c.m * c.n, 0);
  gemm_quads_emulated(c.a.data(), c.lda, c.m, packed.data(), c.k, c.n, emulated.data(), c.n);
  expect(emulated == reference(c.a, c), describe("quads-emulated", c));
}

void check_row_quantization() {
  // A non-negative range uses every code from 0; a mixed one puts 0 on an exact code.
  const RowQuantization relu = quantization_for_range(0.0f, 2.54f, 127);
  expect(relu.zero_point == 0, "non-negative range has zero point 0");
  const RowQuantization mixed = quantization_for_range(-1.0f, 3.0f, 255);
  expect(mixed.zero_point == 64, "zero point of [-1, 3] on 255 codes");
  const RowQuantization zero = quantization_for_range(0.0f, 0.0f, 255);
  expect(zero.scale == 0.0f && zero.inverse_scale == 0.0f, "all-zero range");
  const RowQuantization huge = quantization_for_range(-3.0e38f, 3.0e38f, 255);
  expect(std::isfinite(huge.scale) && huge.scale > 0.0f, "range wider than float stays finite");
}

void check_parser_survives(std::mt19937& rng) {
  for (int trial = 0; trial < 500; ++trial) {
    std::vector<std::uint8_t> bytes(rng() % 200);
    for (auto& b : bytes) b = static_cast<std::uint8_t>(rng());
    if (trial % 2 == 0 && bytes.size() >= 24) {
      std::memcpy(bytes.data(), Int8ModelFile::kMagic, 8);
      const std::uint32_t version = 1 + static_cast<std::uint32_t>(trial % 4 == 0);
      std::memcpy(bytes.data() + 8, &version, 4);
      const std::uint64_t payload = bytes.size() - 24;
      std::memcpy(bytes.data() + 16, &payload, 8);
      // A correct checksum over garbage pushes the parser into the payload checks.
      const std::uint32_t crc = crc32_ieee({bytes.data() + 24, bytes.size() - 24});
      std::memcpy(bytes.data() + 12, &crc, 4);
    }
    try {
      Int8ModelFile::parse(bytes, "<random>");
    } catch (const headrace::CoreError& error) {
      expect(error.code() == headrace::StatusCode::kInvalidArgument, "parser error code");
    }
  }
  const std::uint8_t check[] = {'1', '2', '3', '4', '5', '6', '7', '8', '9'};
  expect(crc32_ieee(check) == 0xCBF43926u, "crc32 check value");
}

}  // namespace

int main() {
  std::mt19937 rng(20261126);
  std::uniform_int_distribution<std::size_t> dim(1, 150);
  for (int trial = 0; trial < 60; ++trial) {
    check_case(random_case(rng, dim(rng), dim(rng), dim(rng), -1, -129));
  }
  // Whole panels and whole row blocks: n a multiple of 16, m of 64, k of 4 and 16.
  for (std::size_t m : {64u, 128u}) check_case(random_case(rng, m, 64, 48, -1, -129));
  check_case(random_case(rng, 1, 256, 64, -1, -129));  // batch 1: the multi-panel GEMV tile
  check_case(random_case(rng, 1, 100, 80, -1, -129));
  check_case(random_case(rng, 70, 1100, 50, -1, -129));
  // Narrow weights: avx2 packs them paired, with corrections.
  for (std::size_t m : {1u, 9u, 70u}) {
    const Case narrow = random_case(rng, m, 1003, 45, -1, -200);
    check_case(narrow);
    if (isa_supported(Isa::kAvx2)) {
      const PackedWeights packed(Isa::kAvx2, narrow.w.data(), narrow.k, narrow.n);
      expect(packed.paired() && packed.correction_count() > 0, "narrow weights pack paired");
    }
  }
  // The saturation extremes: the largest code times -128 everywhere, at a long k.
  for (int weight : {-128, 127}) {
    check_case(random_case(rng, 67, 301, 33, 255, weight));
    check_case(random_case(rng, 5, 1023, 17, 255, weight));
  }
  check_case(random_case(rng, 1, 1, 1, -1, -129));
  check_case(random_case(rng, 130, 2, 129, -1, -129));
  try {
    const std::vector<std::int8_t> w(4, 1);
    PackedWeights too_wide(Isa::kScalar, w.data(), PackedWeights::kMaxK + 1, 1);
    expect(false, "k over the limit refused");
  } catch (const headrace::CoreError& error) {
    expect(error.code() == headrace::StatusCode::kInvalidArgument, "k limit code");
  }
  check_row_quantization();
  check_parser_survives(rng);
  std::printf("quant_gemm_test: ISAs tested:");
  for (Isa isa : supported_isas()) std::printf(" %s", isa_name(isa));
  std::printf(" + quads-emulated; avx512vnni %s\n",
              isa_supported(Isa::kAvx512Vnni) ? "native" : "not on this CPU");
  if (failures == 0) std::puts("quant_gemm_test: ok");
  return failures == 0 ? 0 : 1;
}
