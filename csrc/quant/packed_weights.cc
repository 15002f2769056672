#include "quant/packed_weights.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <utility>

#include "common/status.h"

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

std::vector<PackedWeights::Correction> split_for_pairs(std::int8_t* w_kn, std::size_t k_size,
                                                       std::size_t n_size) {
  std::vector<PackedWeights::Correction> corrections;
  const std::size_t k_quads = (k_size + PackedWeights::kQuadDepth - 1) / PackedWeights::kQuadDepth;
  const std::size_t blocks = k_quads / 2;  // whole quad pairs: 8 k's each
  for (std::size_t block = 0; block < blocks; ++block) {
    for (std::size_t lane = 0; lane < 2; ++lane) {
      const std::size_t base = block * 8 + lane * 2;
      const std::size_t ks[4] = {base, base + 1, base + 4, base + 5};
      for (std::size_t n = 0; n < n_size; ++n) {
        int total = 0;
        for (std::size_t k : ks) {
          if (k < k_size) total += std::abs(int{w_kn[k * n_size + n]});
        }
        while (total > PackedWeights::kPairedLaneLimit) {
          // Shrink the largest weight of the group toward 0 by what is over the limit (or all of
          // it); one step usually suffices.
          std::size_t largest = ks[0];
          for (std::size_t k : ks) {
            if (k < k_size && std::abs(int{w_kn[k * n_size + n]}) >
                                  std::abs(int{w_kn[largest * n_size + n]})) {
              largest = k;
            }
          }
          std::int8_t& weight = w_kn[largest * n_size + n];
          const int magnitude = std::abs(int{weight});
          const int shrink = std::min(total - PackedWeights::kPairedLaneLimit, magnitude);
          const int delta = weight < 0 ? -shrink : shrink;
          weight = static_cast<std::int8_t>(weight - delta);
          corrections.push_back({static_cast<std::uint32_t>(largest),
                                 static_cast<std::uint32_t>(n), delta});
          total -= shrink;
        }
      }
    }
  }
  std::sort(corrections.begin(), corrections.end(),
            [](const PackedWeights::Correction& left, const PackedWeights::Correction& right) {
              return left.k != right.k ? left.k < right.k : left.n < right.n;
            });
  return corrections;
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
    std::vector<std::int8_t> transposed(n_size * k_size);
    for (std::size_t k = 0; k < k_size; ++k) {
      for (std::size_t n = 0; n < n_size; ++n) transposed[n * k_size + k] = w_kn[k * n_size + n];
    }
    store(transposed);
    return;
  }
  if (isa == Isa::kAvx2) {
    std::vector<std::int8_t> split(w_kn, w_kn + k_size * n_size);
    const std::vector<Correction> corrections = split_for_pairs(split.data(), k_size, n_size);
    if (corrections.size() * kMaxCorrectionShare <= k_size * n_size) {
      paired_ = true;
      corrections_.reserve(corrections.size());
      for (const Correction& fix : corrections) {
        corrections_.push_back(
            {fix.k, static_cast<std::uint16_t>(fix.n), static_cast<std::int16_t>(fix.delta)});
      }
      store(pack_quad_panels(split.data(), k_size, n_size));
      return;
    }
  }
  store(pack_quad_panels(w_kn, k_size, n_size));
}

void PackedWeights::store(const std::vector<std::int8_t>& packed) {
  constexpr std::size_t kAlignment = 64;
  storage_.assign(packed.size() + kAlignment - 1, 0);
  const auto address = reinterpret_cast<std::uintptr_t>(storage_.data());
  const std::size_t offset = (kAlignment - address % kAlignment) % kAlignment;
  std::copy(packed.begin(), packed.end(), storage_.begin() + static_cast<std::ptrdiff_t>(offset));
  bytes_ = storage_.data() + offset;
}

}  // namespace headrace::quant
