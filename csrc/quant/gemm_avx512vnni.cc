// AVX-512 VNNI kernel: vpdpbusd multiplies four unsigned 8-bit activation codes by four signed
// 8-bit weights and adds the exact int32 sum to each lane (the non-saturating form; vpdpbusds
// would saturate). |sum| <= k * 255 * 128 < 2^31, so 8-bit codes are exact here.
//
// Same quad-panel layout and blocking as the AVX2 kernel (gemm_kernels.h); one zmm holds one
// k_quad of a 16-column panel. Target attributes, not per-file flags: see gemm_avx2.cc. Only runs
// where cpuid reports avx512f + avx512bw + avx512vnni (enforced when the weights are packed).
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "quant/gemm_kernels.h"

namespace headrace::quant::kernels {
namespace {

constexpr std::size_t kPanel = PackedWeights::kPanelColumns;
constexpr std::size_t kDepth = PackedWeights::kQuadDepth;
constexpr std::size_t kQuadBytes = PackedWeights::kQuadBytes;
// 8 rows x 2 panels = 16 zmm accumulators, 8 broadcasts and 2 weight registers of the 32: each
// weight load feeds 8 vpdpbusd and each broadcast 2, enough to keep both VNNI ports busy.
constexpr std::size_t kVnniRows = 8;
constexpr std::size_t kVnniPanels = 2;
// A single row streams 8 panels at once: 8 independent accumulators per broadcast.
constexpr std::size_t kVnniGemvPanels = 8;

#define HEADRACE_VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vnni")))

HEADRACE_VNNI_TARGET inline __m512i broadcast_quad(const std::uint8_t* quad) {
  std::int32_t bits;
  std::memcpy(&bits, quad, sizeof bits);
  return _mm512_set1_epi32(bits);
}

template <std::size_t kRows, std::size_t kPanels>
HEADRACE_VNNI_TARGET void micro_tile(const std::uint8_t* a, std::size_t lda,
                                     const std::int8_t* panels, std::size_t panel_stride,
                                     std::size_t k_quads, std::int32_t* c, std::size_t ldc,
                                     std::size_t columns) {
  __m512i acc[kRows][kPanels];
  for (std::size_t r = 0; r < kRows; ++r) {
    for (std::size_t p = 0; p < kPanels; ++p) acc[r][p] = _mm512_setzero_si512();
  }
  for (std::size_t quad = 0; quad < k_quads; ++quad) {
    __m512i codes[kRows];
    for (std::size_t r = 0; r < kRows; ++r) codes[r] = broadcast_quad(a + r * lda + quad * kDepth);
    for (std::size_t p = 0; p < kPanels; ++p) {
      const __m512i w = _mm512_loadu_si512(panels + p * panel_stride + quad * kQuadBytes);
      for (std::size_t r = 0; r < kRows; ++r) acc[r][p] = _mm512_dpbusd_epi32(acc[r][p], codes[r], w);
    }
  }
  if (columns == kPanels * kPanel) {
    for (std::size_t r = 0; r < kRows; ++r) {
      for (std::size_t p = 0; p < kPanels; ++p) _mm512_storeu_si512(c + r * ldc + p * kPanel, acc[r][p]);
    }
    return;
  }
  std::int32_t tile[kPanels * kPanel];
  for (std::size_t r = 0; r < kRows; ++r) {
    for (std::size_t p = 0; p < kPanels; ++p) _mm512_storeu_si512(tile + p * kPanel, acc[r][p]);
    std::memcpy(c + r * ldc, tile, columns * sizeof(std::int32_t));
  }
}

// `rows` (1 .. kRows) rows x panel_count (1 or 2) panels: the largest instantiation that fits.
template <std::size_t kRows>
HEADRACE_VNNI_TARGET void row_tile(std::size_t rows, std::size_t panel_count,
                                   const std::uint8_t* a, std::size_t lda,
                                   const std::int8_t* panels, std::size_t panel_stride,
                                   std::size_t k_quads, std::int32_t* c, std::size_t ldc,
                                   std::size_t columns) {
  if constexpr (kRows > 1) {
    if (rows < kRows) {
      return row_tile<kRows - 1>(rows, panel_count, a, lda, panels, panel_stride, k_quads, c, ldc,
                                 columns);
    }
  }
  if (panel_count == 2) {
    return micro_tile<kRows, 2>(a, lda, panels, panel_stride, k_quads, c, ldc, columns);
  }
  micro_tile<kRows, 1>(a, lda, panels, panel_stride, k_quads, c, ldc, columns);
}

}  // namespace

void gemm_avx512vnni(const std::uint8_t* a, std::size_t lda, std::size_t m, const PackedWeights& w,
                     std::int32_t* c, std::size_t ldc) {
  const std::size_t n_size = w.n_size();
  const std::size_t k_quads = w.k_padded() / kDepth;
  const std::size_t stride = w.panel_stride();
  const std::size_t panels = w.panel_count();
  for (std::size_t row0 = 0; row0 < m; row0 += kRowBlock) {
    const std::size_t rows_here = std::min(kRowBlock, m - row0);
    const std::uint8_t* a_block = a + row0 * lda;
    std::int32_t* c_block = c + row0 * ldc;
    if (rows_here == 1) {
      std::size_t panel = 0;
      for (; panel + kVnniGemvPanels <= panels; panel += kVnniGemvPanels) {
        const std::size_t columns = std::min(kVnniGemvPanels * kPanel, n_size - panel * kPanel);
        micro_tile<1, kVnniGemvPanels>(a_block, lda, w.bytes() + panel * stride, stride, k_quads,
                                       c_block + panel * kPanel, ldc, columns);
      }
      for (; panel < panels; ++panel) {
        const std::size_t columns = std::min(kPanel, n_size - panel * kPanel);
        micro_tile<1, 1>(a_block, lda, w.bytes() + panel * stride, stride, k_quads,
                         c_block + panel * kPanel, ldc, columns);
      }
      continue;
    }
    for (std::size_t panel = 0; panel < panels; panel += kVnniPanels) {
      const std::size_t panel_count = std::min(kVnniPanels, panels - panel);
      const std::size_t columns = std::min(panel_count * kPanel, n_size - panel * kPanel);
      for (std::size_t r0 = 0; r0 < rows_here; r0 += kVnniRows) {
        row_tile<kVnniRows>(std::min(kVnniRows, rows_here - r0), panel_count, a_block + r0 * lda, lda,
                 w.bytes() + panel * stride, stride, k_quads, c_block + r0 * ldc + panel * kPanel,
                 ldc, columns);
      }
    }
  }
}

#undef HEADRACE_VNNI_TARGET

}  // namespace headrace::quant::kernels
