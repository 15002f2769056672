// AVX2 kernel: int8 widened to int16 (activations once per row block, weights with vpmovsxbw as
// they stream in), then vpmaddwd (int16 x int16, adjacent pairs summed into
// int32) and vpaddd. vpmaddubsw would be twice as dense but sums two u8 x s8 products into a
// SATURATING int16 (255 * 127 * 2 > 32767), which breaks bit-exactness; vpmaddwd's pair sum is at
// most 2 * 128 * 128 = 32768, exact in int32. Signed int16 needs no +128 shift either.
//
// Compiled for AVX2 with a target attribute on each function, not a per-file -mavx2, so no inline
// function from a shared header can be emitted with AVX2 encodings and picked by the linker for
// non-AVX2 callers.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "quant/gemm_kernels.h"

namespace headrace::quant::kernels {
namespace {

constexpr std::size_t kPanel = PackedWeights::kPanelColumns;

__attribute__((target("avx2"))) inline __m256i broadcast_pair(const std::int16_t* pair) {
  std::int32_t bits;
  std::memcpy(&bits, pair, sizeof bits);
  return _mm256_set1_epi32(bits);
}

// tile[r][0..15] = sum over k_pairs of rows[r] x panel, for kRows (1..4) rows: a separate
// instantiation per row count so a 1-row GEMV does not pay for 4.
template <std::size_t kRows>
__attribute__((target("avx2"))) void micro_tile(const std::int16_t* const rows[kMicroRows],
                                                const std::int8_t* panel, std::size_t k_pairs,
                                                std::int32_t* tile /* [kRows][16] */) {
  __m256i acc[kRows][2];
  for (std::size_t r = 0; r < kRows; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
  for (std::size_t pair = 0; pair < k_pairs; ++pair) {
    const std::int8_t* b = panel + pair * kPanel * 2;
    const __m256i b0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b)));
    const __m256i b1 =
        _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 16)));
    for (std::size_t r = 0; r < kRows; ++r) {
      const __m256i a = broadcast_pair(rows[r] + pair * 2);
      acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(a, b0));
      acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(a, b1));
    }
  }
  for (std::size_t r = 0; r < kRows; ++r) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(tile + r * kPanel), acc[r][0]);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(tile + r * kPanel + 8), acc[r][1]);
  }
}

__attribute__((target("avx2"))) void micro_tile_rows(std::size_t rows_in_tile,
                                                     const std::int16_t* const rows[kMicroRows],
                                                     const std::int8_t* panel, std::size_t k_pairs,
                                                     std::int32_t* tile) {
  switch (rows_in_tile) {
    case 1:
      return micro_tile<1>(rows, panel, k_pairs, tile);
    case 2:
      return micro_tile<2>(rows, panel, k_pairs, tile);
    case 3:
      return micro_tile<3>(rows, panel, k_pairs, tile);
    default:
      return micro_tile<4>(rows, panel, k_pairs, tile);
  }
}

}  // namespace

void gemm_avx2(const std::int8_t* a, std::size_t lda, std::size_t m, const PackedWeights& w,
               std::int32_t* c, std::size_t ldc, GemmScratch& scratch) {
  const std::size_t k_size = w.k_size();
  const std::size_t n_size = w.n_size();
  const std::size_t k_padded = w.k_padded();
  const std::size_t k_pairs = k_padded / 2;
  const std::size_t block_rows = std::min(m, kRowBlock);
  scratch.a_words.resize(block_rows * k_padded);
  std::int32_t tile[kMicroRows * kPanel];
  for (std::size_t row0 = 0; row0 < m; row0 += kRowBlock) {
    const std::size_t rows_here = std::min(kRowBlock, m - row0);
    // Widen this block of A once; every panel reuses it.
    for (std::size_t r = 0; r < rows_here; ++r) {
      const std::int8_t* src = a + (row0 + r) * lda;
      std::int16_t* dst = scratch.a_words.data() + r * k_padded;
      for (std::size_t k = 0; k < k_size; ++k) dst[k] = src[k];
      for (std::size_t k = k_size; k < k_padded; ++k) dst[k] = 0;
    }
    for (std::size_t panel = 0; panel < w.panel_count(); ++panel) {
      const std::int8_t* panel_bytes = w.bytes() + panel * k_pairs * kPanel * 2;
      const std::size_t n0 = panel * kPanel;
      const std::size_t columns = std::min(kPanel, n_size - n0);
      for (std::size_t r0 = 0; r0 < rows_here; r0 += kMicroRows) {
        const std::size_t tile_rows = std::min(kMicroRows, rows_here - r0);
        const std::int16_t* rows[kMicroRows];
        for (std::size_t r = 0; r < kMicroRows; ++r) {
          rows[r] = scratch.a_words.data() + (r0 + std::min(r, tile_rows - 1)) * k_padded;
        }
        micro_tile_rows(tile_rows, rows, panel_bytes, k_pairs, tile);
        for (std::size_t r = 0; r < tile_rows; ++r) {
          std::memcpy(c + (row0 + r0 + r) * ldc + n0, tile + r * kPanel,
                      columns * sizeof(std::int32_t));
        }
      }
    }
  }
}

}  // namespace headrace::quant::kernels
