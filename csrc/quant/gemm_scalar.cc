// The reference kernel: one int32 dot product per output, no tricks. Every other path must match
// it bit for bit.
#include "quant/gemm_kernels.h"

namespace headrace::quant::kernels {

void gemm_scalar(const std::uint8_t* a, std::size_t lda, std::size_t m, const PackedWeights& w,
                 std::int32_t* c, std::size_t ldc) {
  const std::size_t k_size = w.k_size();
  const std::size_t n_size = w.n_size();
  const std::int8_t* w_nk = w.bytes();
  for (std::size_t row = 0; row < m; ++row) {
    const std::uint8_t* a_row = a + row * lda;
    for (std::size_t n = 0; n < n_size; ++n) {
      const std::int8_t* w_col = w_nk + n * k_size;
      std::int32_t sum = 0;  // |sum| <= kMaxK * 255 * 128 < 2^31: no overflow
      for (std::size_t k = 0; k < k_size; ++k) sum += std::int32_t{a_row[k]} * w_col[k];
      c[row * ldc + n] = sum;
    }
  }
}

}  // namespace headrace::quant::kernels
