// AVX2 kernel: exact u7 x s8 products at the full rate of vpmaddubsw.
//
// Per quad of k's, a broadcast of four activation codes meets 16 columns x 4 weights (two ymm):
// vpmaddubsw multiplies u8 x s8 and sums adjacent pairs into int16 (saturating), vpmaddwd with
// ones sums those pairs into int32, vpaddd accumulates. The int16 step is exact because the codes
// are 7-bit: |a0*w0 + a1*w1| <= 2 * 127 * 128 = 32512 <= 32767 (with 8-bit codes, 2 * 255 * 128
// would saturate). The int32 sums are exact too: |sum| <= k * 127 * 128 < 2^31.
//
// Paired (PackedWeights::paired()): the vpmaddubsw results of two quads are added in int16
// (vpaddw, which runs on a port the multiplies do not use) before one vpmaddwd: three
// multiply-port instructions per 64 products instead of four. Exact because the packed W' keeps
// every such lane within 127 * 258; the few weights shrunk for that are added back afterwards as
// corrections (code * delta), so the result is still A * W exactly.
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
constexpr std::size_t kDepth = PackedWeights::kQuadDepth;
constexpr std::size_t kQuadBytes = PackedWeights::kQuadBytes;
// 4 rows x 1 panel: 8 ymm accumulators, 4 broadcasts, the ones and temporaries fit the 16
// registers; 1 row x 4 panels for a GEMV.
constexpr std::size_t kMicroRows = 4;
constexpr std::size_t kGemvPanels = 4;

__attribute__((target("avx2"))) inline __m256i broadcast_quad(const std::uint8_t* quad) {
  std::int32_t bits;
  std::memcpy(&bits, quad, sizeof bits);
  return _mm256_set1_epi32(bits);
}

__attribute__((target("avx2"))) inline __m256i dot_quad(__m256i acc, __m256i codes, __m256i w,
                                                        __m256i ones) {
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(codes, w), ones));
}

// c[r][0 .. columns) for r < kRows = sum over the k_quads of rows r x kPanels consecutive panels.
// A separate instantiation per shape keeps every accumulator in a register.
template <std::size_t kRows, std::size_t kPanels, bool kPaired>
__attribute__((target("avx2"))) void micro_tile(const std::uint8_t* a, std::size_t lda,
                                                const std::int8_t* panels,
                                                std::size_t panel_stride, std::size_t k_quads,
                                                std::int32_t* c, std::size_t ldc,
                                                std::size_t columns) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i acc[kRows][2 * kPanels];
  for (std::size_t r = 0; r < kRows; ++r) {
    for (std::size_t j = 0; j < 2 * kPanels; ++j) acc[r][j] = _mm256_setzero_si256();
  }
  std::size_t quad = 0;
  if constexpr (kPaired) {
    for (; quad + 2 <= k_quads; quad += 2) {
      __m256i first[kRows];
      __m256i second[kRows];
      for (std::size_t r = 0; r < kRows; ++r) {
        first[r] = broadcast_quad(a + r * lda + quad * kDepth);
        second[r] = broadcast_quad(a + r * lda + (quad + 1) * kDepth);
      }
      for (std::size_t p = 0; p < kPanels; ++p) {
        const std::int8_t* b = panels + p * panel_stride + quad * kQuadBytes;
        const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b));
        const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 32));
        const __m256i v0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 64));
        const __m256i v1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 96));
        for (std::size_t r = 0; r < kRows; ++r) {
          const __m256i low = _mm256_add_epi16(_mm256_maddubs_epi16(first[r], w0),
                                               _mm256_maddubs_epi16(second[r], v0));
          const __m256i high = _mm256_add_epi16(_mm256_maddubs_epi16(first[r], w1),
                                                _mm256_maddubs_epi16(second[r], v1));
          acc[r][2 * p] = _mm256_add_epi32(acc[r][2 * p], _mm256_madd_epi16(low, ones));
          acc[r][2 * p + 1] = _mm256_add_epi32(acc[r][2 * p + 1], _mm256_madd_epi16(high, ones));
        }
      }
    }
  }
  for (; quad < k_quads; ++quad) {
    __m256i codes[kRows];
    for (std::size_t r = 0; r < kRows; ++r) codes[r] = broadcast_quad(a + r * lda + quad * kDepth);
    for (std::size_t p = 0; p < kPanels; ++p) {
      const std::int8_t* b = panels + p * panel_stride + quad * kQuadBytes;
      const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b));
      const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 32));
      for (std::size_t r = 0; r < kRows; ++r) {
        acc[r][2 * p] = dot_quad(acc[r][2 * p], codes[r], w0, ones);
        acc[r][2 * p + 1] = dot_quad(acc[r][2 * p + 1], codes[r], w1, ones);
      }
    }
  }
  if (columns == kPanels * kPanel) {
    for (std::size_t r = 0; r < kRows; ++r) {
      for (std::size_t j = 0; j < 2 * kPanels; ++j) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + r * ldc + j * 8), acc[r][j]);
      }
    }
    return;
  }
  std::int32_t tile[kPanels * kPanel];
  for (std::size_t r = 0; r < kRows; ++r) {
    for (std::size_t j = 0; j < 2 * kPanels; ++j) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(tile + j * 8), acc[r][j]);
    }
    std::memcpy(c + r * ldc, tile, columns * sizeof(std::int32_t));
  }
}

template <bool kPaired>
__attribute__((target("avx2"))) void row_tile(std::size_t rows, const std::uint8_t* a,
                                              std::size_t lda, const std::int8_t* panel,
                                              std::size_t panel_stride, std::size_t k_quads,
                                              std::int32_t* c, std::size_t ldc,
                                              std::size_t columns) {
  switch (rows) {
    case 1:
      return micro_tile<1, 1, kPaired>(a, lda, panel, panel_stride, k_quads, c, ldc, columns);
    case 2:
      return micro_tile<2, 1, kPaired>(a, lda, panel, panel_stride, k_quads, c, ldc, columns);
    case 3:
      return micro_tile<3, 1, kPaired>(a, lda, panel, panel_stride, k_quads, c, ldc, columns);
    default:
      return micro_tile<4, 1, kPaired>(a, lda, panel, panel_stride, k_quads, c, ldc, columns);
  }
}

template <bool kPaired>
__attribute__((target("avx2"))) void gemm_blocks(const std::uint8_t* a, std::size_t lda,
                                                 std::size_t m, const PackedWeights& w,
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
      // A GEMV streams W once and is bound by that, not by the multiply ports: the unpaired
      // tile (which reads W' just as well) measured faster there.
      std::size_t panel = 0;
      for (; panel + kGemvPanels <= panels; panel += kGemvPanels) {
        const std::size_t columns = std::min(kGemvPanels * kPanel, n_size - panel * kPanel);
        micro_tile<1, kGemvPanels, false>(a_block, lda, w.bytes() + panel * stride, stride,
                                          k_quads, c_block + panel * kPanel, ldc, columns);
      }
      for (; panel < panels; ++panel) {
        const std::size_t columns = std::min(kPanel, n_size - panel * kPanel);
        micro_tile<1, 1, false>(a_block, lda, w.bytes() + panel * stride, stride, k_quads,
                                c_block + panel * kPanel, ldc, columns);
      }
    } else {
      for (std::size_t panel = 0; panel < panels; ++panel) {
        const std::int8_t* panel_bytes = w.bytes() + panel * stride;
        const std::size_t columns = std::min(kPanel, n_size - panel * kPanel);
        for (std::size_t r0 = 0; r0 < rows_here; r0 += kMicroRows) {
          row_tile<kPaired>(std::min(kMicroRows, rows_here - r0), a_block + r0 * lda, lda,
                            panel_bytes, stride, k_quads, c_block + r0 * ldc + panel * kPanel,
                            ldc, columns);
        }
      }
    }
    // A * W = A * W' + A * D: the shrunk weights' remainders, exact in int32 (every partial
    // sum is bounded by sum_k |a| * |w|). Row by row: the corrections are sorted by k, so the
    // row of codes is read in order and the row of sums stays in L1; no branch per entry (a
    // data-dependent one, such as skipping zero codes, measured slower).
    for (std::size_t r = 0; r < rows_here; ++r) {
      const std::uint8_t* codes = a_block + r * lda;
      std::int32_t* sums = c_block + r * ldc;
      for (const PackedWeights::CorrectionEntry& fix : w.corrections()) {
        sums[fix.n] += std::int32_t{codes[fix.k]} * fix.delta;
      }
    }
  }
}

}  // namespace

void gemm_avx2(const std::uint8_t* a, std::size_t lda, std::size_t m, const PackedWeights& w,
               std::int32_t* c, std::size_t ldc) {
  if (w.paired()) {
    gemm_blocks<true>(a, lda, m, w, c, ldc);
  } else {
    gemm_blocks<false>(a, lda, m, w, c, ldc);
  }
}

}  // namespace headrace::quant::kernels
