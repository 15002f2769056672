// Sanitizer test of the int8 GEMM paths: every ISA this CPU runs, and the portable emulation of the
// VNNI algorithm, against the scalar reference on random odd shapes and on the extreme values
// (-128 and 127 everywhere), with row strides wider than k so out-of-row reads would show. Also
// feeds the .int8 parser random and damaged bytes. Built and run under ASan/UBSan.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "quant/int8_gemm.h"
#include "quant/int8_model_file.h"
#include "quant/isa.h"
#include "quant/packed_weights.h"
#include "common/status.h"

namespace {

using namespace headrace::quant;

int failures = 0;

void expect(bool condition, const std::string& what) {
  if (!condition) {
    std::fprintf(stderr, "FAILED: %s\n", what.c_str());
    ++failures;
  }
}

struct Case {
  std::size_t m, k, n, lda;
  std::vector<std::int8_t> a, w;
};

Case random_case(std::mt19937& rng, std::size_t m, std::size_t k, std::size_t n, int fill) {
  Case c{m, k, n, k + 3, {}, {}};
  c.a.resize(m * c.lda);
  c.w.resize(k * n);
  std::uniform_int_distribution<int> value(-128, 127);
  auto pick = [&]() -> std::int8_t {
    if (fill == 0) return static_cast<std::int8_t>(value(rng));
    return static_cast<std::int8_t>(fill);
  };
  for (auto& x : c.a) x = pick();
  for (auto& x : c.w) x = pick();
  return c;
}

std::string describe(const char* path, const Case& c) {
  return std::string(path) + " m=" + std::to_string(c.m) + " k=" + std::to_string(c.k) +
         " n=" + std::to_string(c.n);
}

void check_case(const Case& c) {
  const PackedWeights reference_weights(Isa::kScalar, c.w.data(), c.k, c.n);
  GemmScratch scratch;
  std::vector<std::int32_t> expected(c.m * c.n, 0);
  gemm_s8s8_s32(c.a.data(), c.lda, c.m, reference_weights, expected.data(), c.n, scratch);

  // Spot-check the reference itself against a plain triple loop.
  for (std::size_t i = 0; i < c.m; i += 7) {
    for (std::size_t j = 0; j < c.n; j += 5) {
      std::int64_t sum = 0;
      for (std::size_t kk = 0; kk < c.k; ++kk) sum += c.a[i * c.lda + kk] * c.w[kk * c.n + j];
      expect(sum == expected[i * c.n + j], describe("reference", c));
    }
  }

  for (Isa isa : supported_isas()) {
    const PackedWeights weights(isa, c.w.data(), c.k, c.n);
    // ldc wider than n, with a guard value, so a write past a row's n columns is caught.
    const std::size_t ldc = c.n + 5;
    std::vector<std::int32_t> got(c.m * ldc, 0x5A5A5A5A);
    gemm_s8s8_s32(c.a.data(), c.lda, c.m, weights, got.data(), ldc, scratch);
    bool same = true;
    bool guard_intact = true;
    for (std::size_t i = 0; i < c.m; ++i) {
      same = same && std::memcmp(&got[i * ldc], &expected[i * c.n], c.n * 4) == 0;
      for (std::size_t j = c.n; j < ldc; ++j) guard_intact = guard_intact && got[i * ldc + j] == 0x5A5A5A5A;
    }
    expect(same, describe(isa_name(isa), c));
    expect(guard_intact, describe(isa_name(isa), c) + " wrote past n");
  }

  std::vector<std::int8_t> quads;
  std::vector<std::int32_t> compensation;
  pack_vnni_layout(c.w.data(), c.k, c.n, quads, compensation);
  std::vector<std::int32_t> emulated(c.m * c.n, 0);
  gemm_vnni_emulated(c.a.data(), c.lda, c.m, quads.data(), compensation.data(), c.k, c.n,
                     emulated.data(), c.n);
  expect(emulated == expected, describe("vnni-emulated", c));
}

void check_parser_survives(std::mt19937& rng) {
  for (int trial = 0; trial < 500; ++trial) {
    std::vector<std::uint8_t> bytes(rng() % 200);
    for (auto& b : bytes) b = static_cast<std::uint8_t>(rng());
    if (trial % 2 == 0 && bytes.size() >= 24) {
      std::memcpy(bytes.data(), Int8ModelFile::kMagic, 8);
      const std::uint32_t version = 1;
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
  for (int trial = 0; trial < 60; ++trial) check_case(random_case(rng, dim(rng), dim(rng), dim(rng), 0));
  for (int fill : {-128, 127}) {
    check_case(random_case(rng, 67, 301, 33, fill));
    check_case(random_case(rng, 5, 1023, 17, fill));
  }
  check_case(random_case(rng, 1, 1, 1, 0));
  check_case(random_case(rng, 130, 2, 129, 0));
  try {
    const std::vector<std::int8_t> w(4, 1);
    PackedWeights too_wide(Isa::kScalar, w.data(), PackedWeights::kMaxK + 1, 1);
    expect(false, "k over the limit refused");
  } catch (const headrace::CoreError& error) {
    expect(error.code() == headrace::StatusCode::kInvalidArgument, "k limit code");
  }
  check_parser_survives(rng);
  std::printf("quant_gemm_test: ISAs tested:");
  for (Isa isa : supported_isas()) std::printf(" %s", isa_name(isa));
  std::printf(" + vnni-emulated; avx512vnni %s\n",
              isa_supported(Isa::kAvx512Vnni) ? "native" : "not on this CPU");
  if (failures == 0) std::puts("quant_gemm_test: ok");
  return failures == 0 ? 0 : 1;
}
