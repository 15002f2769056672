#include "quant/peak_probe.h"

#include <immintrin.h>

#include <chrono>
#include <cstring>

namespace headrace::quant {
namespace {

// Independent accumulator chains hide the instruction latency (5 cycles for vpmaddubsw, vpmaddwd
// and vpdpbusd on current cores) at up to two issues per cycle. The chains are separate locals (an
// array with an asm barrier per element would be spilled to the stack, putting a store and a load
// on every chain). Each chain multiplies its own weights, loaded from L1 as the kernels load theirs,
// so the compiler cannot share one product among chains; the "memory" barrier per iteration
// forces those loads to be repeated.
constexpr int kChains = 12;

alignas(64) std::int8_t probe_weights[kChains][64];

__attribute__((target("avx2"))) inline __m256i avx2_step(__m256i acc, __m256i codes, int chain,
                                                         __m256i ones) {
  const __m256i w = _mm256_load_si256(reinterpret_cast<const __m256i*>(probe_weights[chain]));
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(codes, w), ones));
}

__attribute__((target("avx2"))) std::int64_t avx2_loop(std::uint64_t iterations) {
  const __m256i codes = _mm256_set1_epi8(3);
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i c0 = _mm256_setzero_si256(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0,
          c7 = c0, c8 = c0, c9 = c0, c10 = c0, c11 = c0;
  for (std::uint64_t i = 0; i < iterations; ++i) {
    c0 = avx2_step(c0, codes, 0, ones);
    c1 = avx2_step(c1, codes, 1, ones);
    c2 = avx2_step(c2, codes, 2, ones);
    c3 = avx2_step(c3, codes, 3, ones);
    c4 = avx2_step(c4, codes, 4, ones);
    c5 = avx2_step(c5, codes, 5, ones);
    c6 = avx2_step(c6, codes, 6, ones);
    c7 = avx2_step(c7, codes, 7, ones);
    c8 = avx2_step(c8, codes, 8, ones);
    c9 = avx2_step(c9, codes, 9, ones);
    c10 = avx2_step(c10, codes, 10, ones);
    c11 = avx2_step(c11, codes, 11, ones);
    __asm__ volatile("" ::: "memory");
  }
  const __m256i total = _mm256_add_epi32(
      _mm256_add_epi32(_mm256_add_epi32(c0, c1), _mm256_add_epi32(c2, c3)),
      _mm256_add_epi32(_mm256_add_epi32(_mm256_add_epi32(c4, c5), _mm256_add_epi32(c6, c7)),
                       _mm256_add_epi32(_mm256_add_epi32(c8, c9), _mm256_add_epi32(c10, c11))));
  return _mm256_extract_epi32(total, 0);
}

__attribute__((target("avx2"))) inline __m256i paired_step(__m256i acc, __m256i codes, int chain,
                                                           __m256i ones) {
  const __m256i w = _mm256_load_si256(reinterpret_cast<const __m256i*>(probe_weights[chain]));
  const __m256i v =
      _mm256_load_si256(reinterpret_cast<const __m256i*>(probe_weights[chain] + 32));
  const __m256i pairs =
      _mm256_add_epi16(_mm256_maddubs_epi16(codes, w), _mm256_maddubs_epi16(codes, v));
  return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, ones));
}

__attribute__((target("avx2"))) std::int64_t avx2_paired_loop(std::uint64_t iterations) {
  const __m256i codes = _mm256_set1_epi8(3);
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i c0 = _mm256_setzero_si256(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0,
          c7 = c0, c8 = c0, c9 = c0, c10 = c0, c11 = c0;
  for (std::uint64_t i = 0; i < iterations; ++i) {
    c0 = paired_step(c0, codes, 0, ones);
    c1 = paired_step(c1, codes, 1, ones);
    c2 = paired_step(c2, codes, 2, ones);
    c3 = paired_step(c3, codes, 3, ones);
    c4 = paired_step(c4, codes, 4, ones);
    c5 = paired_step(c5, codes, 5, ones);
    c6 = paired_step(c6, codes, 6, ones);
    c7 = paired_step(c7, codes, 7, ones);
    c8 = paired_step(c8, codes, 8, ones);
    c9 = paired_step(c9, codes, 9, ones);
    c10 = paired_step(c10, codes, 10, ones);
    c11 = paired_step(c11, codes, 11, ones);
    __asm__ volatile("" ::: "memory");
  }
  const __m256i total = _mm256_add_epi32(
      _mm256_add_epi32(_mm256_add_epi32(c0, c1), _mm256_add_epi32(c2, c3)),
      _mm256_add_epi32(_mm256_add_epi32(_mm256_add_epi32(c4, c5), _mm256_add_epi32(c6, c7)),
                       _mm256_add_epi32(_mm256_add_epi32(c8, c9), _mm256_add_epi32(c10, c11))));
  return _mm256_extract_epi32(total, 0);
}

__attribute__((target("avx512f,avx512bw,avx512vnni"))) inline __m512i vnni_step(__m512i acc,
                                                                                __m512i codes,
                                                                                int chain) {
  return _mm512_dpbusd_epi32(acc, codes, _mm512_load_si512(probe_weights[chain]));
}

__attribute__((target("avx512f,avx512bw,avx512vnni"))) std::int64_t avx512vnni_loop(
    std::uint64_t iterations) {
  const __m512i codes = _mm512_set1_epi8(3);
  __m512i c0 = _mm512_setzero_si512(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0,
          c7 = c0, c8 = c0, c9 = c0, c10 = c0, c11 = c0;
  for (std::uint64_t i = 0; i < iterations; ++i) {
    c0 = vnni_step(c0, codes, 0);
    c1 = vnni_step(c1, codes, 1);
    c2 = vnni_step(c2, codes, 2);
    c3 = vnni_step(c3, codes, 3);
    c4 = vnni_step(c4, codes, 4);
    c5 = vnni_step(c5, codes, 5);
    c6 = vnni_step(c6, codes, 6);
    c7 = vnni_step(c7, codes, 7);
    c8 = vnni_step(c8, codes, 8);
    c9 = vnni_step(c9, codes, 9);
    c10 = vnni_step(c10, codes, 10);
    c11 = vnni_step(c11, codes, 11);
    __asm__ volatile("" ::: "memory");
  }
  const __m512i total = _mm512_add_epi32(
      _mm512_add_epi32(_mm512_add_epi32(c0, c1), _mm512_add_epi32(c2, c3)),
      _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(c4, c5), _mm512_add_epi32(c6, c7)),
                       _mm512_add_epi32(_mm512_add_epi32(c8, c9), _mm512_add_epi32(c10, c11))));
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

double measure_peak_gops(Isa isa, std::uint64_t iterations, bool paired) {
  require_isa(isa);
  // Runtime data, so the compiler cannot fold the products of a never-written array.
  std::memset(probe_weights, static_cast<int>(iterations & 0x3F) - 32, sizeof probe_weights);
  const auto start = std::chrono::steady_clock::now();
  std::int64_t sink = 0;
  double ops_per_instruction = 0.0;
  switch (isa) {
    case Isa::kScalar:
      sink = scalar_loop(iterations);
      ops_per_instruction = 2.0;
      break;
    case Isa::kAvx2:
      sink = paired ? avx2_paired_loop(iterations) : avx2_loop(iterations);
      ops_per_instruction = paired ? 128.0 : 64.0;
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
