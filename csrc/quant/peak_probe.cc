#include "quant/peak_probe.h"

#include <immintrin.h>

#include <chrono>
#include <cstring>

namespace headrace::quant {
namespace {

// Ten independent accumulator chains hide the instruction latency (5 cycles for vpmaddwd/vpdpbusd
// on current cores) at up to two issues per cycle.
constexpr int kChains = 10;

__attribute__((target("avx2"))) std::int64_t avx2_loop(std::uint64_t iterations) {
  __m256i a = _mm256_set1_epi16(3);
  __m256i b = _mm256_set1_epi16(-5);
  __m256i acc[kChains];
  for (auto& chain : acc) chain = _mm256_setzero_si256();
  for (std::uint64_t i = 0; i < iterations; ++i) {
    for (auto& chain : acc) {
      chain = _mm256_add_epi32(chain, _mm256_madd_epi16(a, b));
      // An empty asm that "may modify" the register stops the compiler from hoisting the madd.
      __asm__ volatile("" : "+x"(chain));
    }
    __asm__ volatile("" : "+x"(a), "+x"(b));
  }
  __m256i total = acc[0];
  for (int c = 1; c < kChains; ++c) total = _mm256_add_epi32(total, acc[c]);
  return _mm256_extract_epi32(total, 0);
}

__attribute__((target("avx512f,avx512bw,avx512vnni"))) std::int64_t avx512vnni_loop(
    std::uint64_t iterations) {
  __m512i a = _mm512_set1_epi8(3);
  __m512i b = _mm512_set1_epi8(-5);
  __m512i acc[kChains];
  for (auto& chain : acc) chain = _mm512_setzero_si512();
  for (std::uint64_t i = 0; i < iterations; ++i) {
    for (auto& chain : acc) {
      chain = _mm512_dpbusd_epi32(chain, a, b);
      __asm__ volatile("" : "+v"(chain));
    }
    __asm__ volatile("" : "+v"(a), "+v"(b));
  }
  __m512i total = acc[0];
  for (int c = 1; c < kChains; ++c) total = _mm512_add_epi32(total, acc[c]);
  // Not _mm512_reduce_add_epi32: GCC 12's version trips -Wuninitialized inside its own header.
  std::int32_t lanes[16];
  _mm512_storeu_si512(lanes, total);
  std::int64_t sum = 0;
  for (std::int32_t lane : lanes) sum += lane;
  return sum;
}

std::int64_t scalar_loop(std::uint64_t iterations) {
  // Unsigned: same imul/add instructions, but wrap-around is defined.
  std::uint32_t a = 3;
  std::uint32_t b = 5;
  std::uint32_t acc[kChains] = {};
  for (std::uint64_t i = 0; i < iterations; ++i) {
    for (auto& chain : acc) {
      chain += a * b;
      __asm__ volatile("" : "+r"(chain));
    }
    __asm__ volatile("" : "+r"(a), "+r"(b));
  }
  std::int64_t total = 0;
  for (std::uint32_t chain : acc) total += chain;
  return total;
}

}  // namespace

double measure_peak_gops(Isa isa, std::uint64_t iterations) {
  require_isa(isa);
  const auto start = std::chrono::steady_clock::now();
  std::int64_t sink = 0;
  double ops_per_instruction = 0.0;
  switch (isa) {
    case Isa::kScalar:
      sink = scalar_loop(iterations);
      ops_per_instruction = 2.0;
      break;
    case Isa::kAvx2:
      sink = avx2_loop(iterations);
      ops_per_instruction = 32.0;
      break;
    case Isa::kAvx512Vnni:
      sink = avx512vnni_loop(iterations);
      ops_per_instruction = 128.0;
      break;
  }
  const auto elapsed = std::chrono::steady_clock::now() - start;
  __asm__ volatile("" : : "r"(sink));
  const double elapsed_ns =
      static_cast<double>(std::chrono::duration_cast<std::chrono::nanoseconds>(elapsed).count());
  const double ops = static_cast<double>(iterations) * kChains * ops_per_instruction;
  return elapsed_ns > 0.0 ? ops / elapsed_ns : 0.0;
}

}  // namespace headrace::quant
