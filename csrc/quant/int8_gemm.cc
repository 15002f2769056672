#include "quant/int8_gemm.h"

#include "quant/gemm_kernels.h"

namespace headrace::quant {

void gemm_u8s8_s32(const std::uint8_t* a, std::size_t lda, std::size_t m,
                   const PackedWeights& weights, std::int32_t* c, std::size_t ldc) {
  if (m == 0) return;
  switch (weights.isa()) {
    case Isa::kScalar:
      kernels::gemm_scalar(a, lda, m, weights, c, ldc);
      return;
    case Isa::kAvx2:
      kernels::gemm_avx2(a, lda, m, weights, c, ldc);
      return;
    case Isa::kAvx512Vnni:
      kernels::gemm_avx512vnni(a, lda, m, weights, c, ldc);
      return;
  }
}

void gemm_quads_emulated(const std::uint8_t* a, std::size_t lda, std::size_t m,
                         const std::int8_t* packed, std::size_t k_size, std::size_t n_size,
                         std::int32_t* c, std::size_t ldc) {
  constexpr std::size_t kPanel = PackedWeights::kPanelColumns;
  constexpr std::size_t kDepth = PackedWeights::kQuadDepth;
  const std::size_t panels = (n_size + kPanel - 1) / kPanel;
  const std::size_t k_quads = (k_size + kDepth - 1) / kDepth;
  for (std::size_t row = 0; row < m; ++row) {
    for (std::size_t panel = 0; panel < panels; ++panel) {
      std::int32_t lanes[kPanel] = {};
      for (std::size_t quad = 0; quad < k_quads; ++quad) {
        const std::int8_t* b = packed + (panel * k_quads + quad) * PackedWeights::kQuadBytes;
        const std::uint8_t* codes = a + row * lda + quad * kDepth;
        for (std::size_t column = 0; column < kPanel; ++column) {
          std::int32_t dot = 0;  // one lane of vpdpbusd: four u8 x s8 products, summed exactly
          for (std::size_t j = 0; j < kDepth; ++j) dot += codes[j] * b[column * kDepth + j];
          lanes[column] += dot;
        }
      }
      for (std::size_t column = 0; column < kPanel; ++column) {
        const std::size_t n = panel * kPanel + column;
        if (n >= n_size) break;
        c[row * ldc + n] = lanes[column];
      }
    }
  }
}

}  // namespace headrace::quant
