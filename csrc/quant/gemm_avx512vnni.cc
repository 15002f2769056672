// AVX-512 VNNI kernel: vpdpbusd multiplies four unsigned 8-bit activations by four signed 8-bit
// weights and adds the exact int32 sum to each lane (the non-saturating form; vpdpbusds would
// saturate). Activations are int8, so each is shifted a_u8 = a + 128 (computed as a ^ 0x80); the
// extra 128 * sum_k W[k][n] per column is subtracted at the end from
// PackedWeights::column_compensation(), precomputed at pack time. Lanes wrap modulo 2^32 and the
// true result fits int32 (k <= kMaxK), so the corrected lanes are exact.
//
// Target attributes, not per-file flags: see gemm_avx2.cc. Only runs where cpuid reports
// avx512f + avx512bw + avx512vnni (enforced when the weights are packed).
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "quant/gemm_kernels.h"

namespace headrace::quant::kernels {
namespace {

constexpr std::size_t kPanel = PackedWeights::kPanelColumns;

__attribute__((target("avx512f,avx512bw,avx512vnni"))) inline __m512i broadcast_quad(
    const std::uint8_t* quad) {
  std::int32_t bits;
  std::memcpy(&bits, quad, sizeof bits);
  return _mm512_set1_epi32(bits);
}

// tile[r][0..15] = sum over k_quads of rows[r] x panel - compensation, for kRows (1..4) rows.
template <std::size_t kRows>
__attribute__((target("avx512f,avx512bw,avx512vnni"))) void micro_tile(
    const std::uint8_t* const rows[kMicroRows], const std::int8_t* panel, std::size_t k_quads,
    const std::int32_t* compensation, std::int32_t* tile /* [kRows][16] */) {
  __m512i acc[kRows];
  for (std::size_t r = 0; r < kRows; ++r) acc[r] = _mm512_setzero_si512();
  for (std::size_t quad = 0; quad < k_quads; ++quad) {
    const __m512i b = _mm512_loadu_si512(panel + quad * kPanel * 4);
    for (std::size_t r = 0; r < kRows; ++r) {
      acc[r] = _mm512_dpbusd_epi32(acc[r], broadcast_quad(rows[r] + quad * 4), b);
    }
  }
  const __m512i comp = _mm512_loadu_si512(compensation);
  for (std::size_t r = 0; r < kRows; ++r) {
    _mm512_storeu_si512(tile + r * kPanel, _mm512_sub_epi32(acc[r], comp));
  }
}

__attribute__((target("avx512f,avx512bw,avx512vnni"))) void micro_tile_rows(
    std::size_t rows_in_tile, const std::uint8_t* const rows[kMicroRows], const std::int8_t* panel,
    std::size_t k_quads, const std::int32_t* compensation, std::int32_t* tile) {
  switch (rows_in_tile) {
    case 1:
      return micro_tile<1>(rows, panel, k_quads, compensation, tile);
    case 2:
      return micro_tile<2>(rows, panel, k_quads, compensation, tile);
    case 3:
      return micro_tile<3>(rows, panel, k_quads, compensation, tile);
    default:
      return micro_tile<4>(rows, panel, k_quads, compensation, tile);
  }
}

}  // namespace

void gemm_avx512vnni(const std::int8_t* a, std::size_t lda, std::size_t m, const PackedWeights& w,
                     std::int32_t* c, std::size_t ldc, GemmScratch& scratch) {
  const std::size_t k_size = w.k_size();
  const std::size_t n_size = w.n_size();
  const std::size_t k_padded = w.k_padded();
  const std::size_t k_quads = k_padded / 4;
  const std::size_t block_rows = std::min(m, kRowBlock);
  scratch.a_bytes.resize(block_rows * k_padded);
  std::int32_t tile[kMicroRows * kPanel];
  for (std::size_t row0 = 0; row0 < m; row0 += kRowBlock) {
    const std::size_t rows_here = std::min(kRowBlock, m - row0);
    for (std::size_t r = 0; r < rows_here; ++r) {
      const std::int8_t* src = a + (row0 + r) * lda;
      std::uint8_t* dst = scratch.a_bytes.data() + r * k_padded;
      // a + 128 == a ^ 0x80 for every int8 a; padding is the shifted zero and meets zero weights.
      for (std::size_t k = 0; k < k_size; ++k) dst[k] = static_cast<std::uint8_t>(src[k] ^ 0x80);
      for (std::size_t k = k_size; k < k_padded; ++k) dst[k] = 0x80;
    }
    for (std::size_t panel = 0; panel < w.panel_count(); ++panel) {
      const std::int8_t* panel_bytes = w.bytes() + panel * k_quads * kPanel * 4;
      const std::size_t n0 = panel * kPanel;
      const std::size_t columns = std::min(kPanel, n_size - n0);
      for (std::size_t r0 = 0; r0 < rows_here; r0 += kMicroRows) {
        const std::size_t tile_rows = std::min(kMicroRows, rows_here - r0);
        const std::uint8_t* rows[kMicroRows];
        for (std::size_t r = 0; r < kMicroRows; ++r) {
          rows[r] = scratch.a_bytes.data() + (r0 + std::min(r, tile_rows - 1)) * k_padded;
        }
        micro_tile_rows(tile_rows, rows, panel_bytes, k_quads, w.column_compensation() + n0, tile);
        for (std::size_t r = 0; r < tile_rows; ++r) {
          std::memcpy(c + (row0 + r0 + r) * ldc + n0, tile + r * kPanel,
                      columns * sizeof(std::int32_t));
        }
      }
    }
  }
}

}  // namespace headrace::quant::kernels
