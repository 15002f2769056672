#include "quant/packed_weights.h"

#include <string>

#include "quant/int8_gemm.h"
#include "common/status.h"

namespace headrace::quant {
namespace {

std::size_t round_up(std::size_t value, std::size_t step) { return (value + step - 1) / step * step; }

}  // namespace

PackedWeights::PackedWeights(Isa isa, const std::int8_t* w_kn, std::size_t k_size,
                             std::size_t n_size)
    : isa_(isa), k_size_(k_size), n_size_(n_size) {
  if (k_size == 0 || n_size == 0 || k_size > kMaxK || n_size > kMaxN) {
    throw CoreError(StatusCode::kInvalidArgument,
                    "int8 weights of shape [" + std::to_string(k_size) + ", " +
                        std::to_string(n_size) + "]: each dimension must be in [1, 65536]");
  }
  require_isa(isa);
  constexpr std::size_t kPanel = kPanelColumns;
  panel_count_ = (n_size + kPanel - 1) / kPanel;
  switch (isa) {
    case Isa::kScalar: {
      k_padded_ = k_size;
      bytes_.resize(n_size * k_size);
      for (std::size_t k = 0; k < k_size; ++k) {
        for (std::size_t n = 0; n < n_size; ++n) bytes_[n * k_size + k] = w_kn[k * n_size + n];
      }
      break;
    }
    case Isa::kAvx2: {
      k_padded_ = round_up(k_size, 2);
      const std::size_t k_pairs = k_padded_ / 2;
      bytes_.assign(panel_count_ * k_pairs * kPanel * 2, 0);
      for (std::size_t panel = 0; panel < panel_count_; ++panel) {
        for (std::size_t pair = 0; pair < k_pairs; ++pair) {
          std::int8_t* dst = &bytes_[(panel * k_pairs + pair) * kPanel * 2];
          for (std::size_t column = 0; column < kPanel; ++column) {
            const std::size_t n = panel * kPanel + column;
            for (std::size_t j = 0; j < 2; ++j) {
              const std::size_t k = pair * 2 + j;
              if (n < n_size && k < k_size) dst[column * 2 + j] = w_kn[k * n_size + n];
            }
          }
        }
      }
      break;
    }
    case Isa::kAvx512Vnni: {
      // Shared with the portable emulation (int8_gemm.h), so the tests of that emulation on any
      // CPU check this exact packing and compensation.
      k_padded_ = round_up(k_size, 4);
      pack_vnni_layout(w_kn, k_size, n_size, bytes_, compensation_);
      break;
    }
  }
}

}  // namespace headrace::quant
