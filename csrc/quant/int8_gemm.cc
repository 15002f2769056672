#include "quant/int8_gemm.h"

#include <cstring>

#include "quant/gemm_kernels.h"

namespace headrace::quant {

void gemm_s8s8_s32(const std::int8_t* a, std::size_t lda, std::size_t m,
                   const PackedWeights& weights, std::int32_t* c, std::size_t ldc,
                   GemmScratch& scratch) {
  if (m == 0) return;
  switch (weights.isa()) {
    case Isa::kScalar:
      kernels::gemm_scalar(a, lda, m, weights, c, ldc);
      return;
    case Isa::kAvx2:
      kernels::gemm_avx2(a, lda, m, weights, c, ldc, scratch);
      return;
    case Isa::kAvx512Vnni:
      kernels::gemm_avx512vnni(a, lda, m, weights, c, ldc, scratch);
      return;
  }
}

void pack_vnni_layout(const std::int8_t* w_kn, std::size_t k_size, std::size_t n_size,
                               std::vector<std::int8_t>& packed_quads,
                               std::vector<std::int32_t>& compensation) {
  constexpr std::size_t kPanel = PackedWeights::kPanelColumns;
  const std::size_t panels = (n_size + kPanel - 1) / kPanel;
  const std::size_t k_quads = (k_size + 3) / 4;
  packed_quads.assign(panels * k_quads * kPanel * 4, 0);
  compensation.assign(panels * kPanel, 0);
  for (std::size_t panel = 0; panel < panels; ++panel) {
    for (std::size_t quad = 0; quad < k_quads; ++quad) {
      for (std::size_t column = 0; column < kPanel; ++column) {
        for (std::size_t j = 0; j < 4; ++j) {
          const std::size_t n = panel * kPanel + column;
          const std::size_t k = quad * 4 + j;
          if (n < n_size && k < k_size) {
            packed_quads[((panel * k_quads + quad) * kPanel + column) * 4 + j] =
                w_kn[k * n_size + n];
          }
        }
      }
    }
  }
  for (std::size_t n = 0; n < n_size; ++n) {
    std::int32_t column_sum = 0;
    for (std::size_t k = 0; k < k_size; ++k) column_sum += w_kn[k * n_size + n];
    compensation[n] = 128 * column_sum;
  }
}

void gemm_vnni_emulated(const std::int8_t* a, std::size_t lda, std::size_t m,
                        const std::int8_t* packed_quads, const std::int32_t* compensation,
                        std::size_t k_size, std::size_t n_size, std::int32_t* c, std::size_t ldc) {
  constexpr std::size_t kPanel = PackedWeights::kPanelColumns;
  const std::size_t panels = (n_size + kPanel - 1) / kPanel;
  const std::size_t k_quads = (k_size + 3) / 4;
  for (std::size_t row = 0; row < m; ++row) {
    for (std::size_t panel = 0; panel < panels; ++panel) {
      // Wrap-around int32 lanes, as in the zmm accumulators (unsigned avoids signed-overflow UB).
      std::uint32_t lanes[kPanel] = {};
      for (std::size_t quad = 0; quad < k_quads; ++quad) {
        const std::int8_t* b = packed_quads + (panel * k_quads + quad) * kPanel * 4;
        for (std::size_t column = 0; column < kPanel; ++column) {
          std::int32_t dot = 0;  // vpdpbusd: four u8 x s8 products, summed exactly
          for (std::size_t j = 0; j < 4; ++j) {
            const std::size_t k = quad * 4 + j;
            const std::uint8_t shifted =
                k < k_size ? static_cast<std::uint8_t>(a[row * lda + k] + 128) : 128;
            dot += static_cast<std::int32_t>(shifted) * b[column * 4 + j];
          }
          lanes[column] += static_cast<std::uint32_t>(dot);
        }
      }
      for (std::size_t column = 0; column < kPanel; ++column) {
        const std::size_t n = panel * kPanel + column;
        if (n >= n_size) break;
        const std::uint32_t value = lanes[column] - static_cast<std::uint32_t>(compensation[n]);
        std::int32_t exact;
        std::memcpy(&exact, &value, sizeof exact);
        c[row * ldc + n] = exact;
      }
    }
  }
}

}  // namespace headrace::quant
