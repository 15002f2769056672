#include "quant/packed_weights.h"

#include <string>

#include "tensors/status.h"

namespace headrace::quant {
namespace {

std::size_t round_up(std::size_t value, std::size_t step) { return (value + step - 1) / step * step; }

}  // namespace

std::vector<std::int8_t> pack_quad_panels(const std::int8_t* w_kn, std::size_t k_size,
                                          std::size_t n_size) {
  constexpr std::size_t kPanel = PackedWeights::kPanelColumns;
  constexpr std::size_t kDepth = PackedWeights::kQuadDepth;
  const std::size_t panels = (n_size + kPanel - 1) / kPanel;
  const std::size_t k_quads = (k_size + kDepth - 1) / kDepth;
  std::vector<std::int8_t> packed(panels * k_quads * PackedWeights::kQuadBytes, 0);
  for (std::size_t panel = 0; panel < panels; ++panel) {
    for (std::size_t quad = 0; quad < k_quads; ++quad) {
      std::int8_t* dst = &packed[(panel * k_quads + quad) * PackedWeights::kQuadBytes];
      for (std::size_t column = 0; column < kPanel; ++column) {
        const std::size_t n = panel * kPanel + column;
        if (n >= n_size) break;
        for (std::size_t j = 0; j < kDepth; ++j) {
          const std::size_t k = quad * kDepth + j;
          if (k < k_size) dst[column * kDepth + j] = w_kn[k * n_size + n];
        }
      }
    }
  }
  return packed;
}

PackedWeights::PackedWeights(Isa isa, const std::int8_t* w_kn, std::size_t k_size,
                             std::size_t n_size)
    : isa_(isa), k_size_(k_size), n_size_(n_size) {
  if (k_size == 0 || n_size == 0 || k_size > kMaxK || n_size > kMaxN) {
    throw CoreError(StatusCode::kInvalidArgument,
                    "int8 weights of shape [" + std::to_string(k_size) + ", " +
                        std::to_string(n_size) + "]: each dimension must be in [1, 65536]");
  }
  require_isa(isa);
  panel_count_ = (n_size + kPanelColumns - 1) / kPanelColumns;
  k_padded_ = round_up(k_size, kQuadDepth);
  column_sums_.assign(n_size, 0);
  for (std::size_t k = 0; k < k_size; ++k) {
    for (std::size_t n = 0; n < n_size; ++n) column_sums_[n] += w_kn[k * n_size + n];
  }
  if (isa == Isa::kScalar) {
    bytes_.resize(n_size * k_size);
    for (std::size_t k = 0; k < k_size; ++k) {
      for (std::size_t n = 0; n < n_size; ++n) bytes_[n * k_size + k] = w_kn[k * n_size + n];
    }
    return;
  }
  bytes_ = pack_quad_panels(w_kn, k_size, n_size);
}

}  // namespace headrace::quant
