// Int8 weights of one layer, packed once at load into the layout its kernel streams.
//
// Input is the ONNX MatMul layout: row-major int8 W[k][n] (k = input feature, n = output channel).
//   kScalar:     W transposed, [n][k], so each output is one contiguous dot product.
//   kAvx2:       int8 panels of 16 columns: [panel][k_pair][16 columns][2 k's]. One k_pair of a
//                panel is 32 bytes; the kernel sign-extends each 16-byte half to int16 (vpmovsxbw)
//                and vpmaddwd multiplies it by a broadcast pair of activations (a[2p], a[2p+1]).
//                Working in int16 is what lets the kernel avoid vpmaddubsw and its int16
//                saturation; keeping the packed weights int8 halves the bytes streamed per row.
//   kAvx512Vnni: int8 panels of 16 columns: [panel][k_quad][16 columns][4 k's]. One k_quad of a
//                panel is one zmm register for vpdpbusd.
// Padding (k up to the kernel's step, n up to the panel width) is zero, so padded terms add 0.
//
// VNNI's vpdpbusd multiplies UNSIGNED 8-bit by signed 8-bit. Activations are int8 in [-128, 127];
// the kernel adds 128 (a_u8 = a + 128, done as a ^ 0x80) so they fit u8, which adds
// 128 * sum_k W[k][n] to every output of column n. column_compensation()[n] holds exactly that
// term, computed here, and the kernel subtracts it. All of it is int32 wrap-around arithmetic, so
// the result equals the true sum whenever the true sum fits int32 (guaranteed: k <= kMaxK).
//
// Ownership/threading: owns its buffers; immutable after construction, so any number of threads
// may read one PackedWeights at once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "quant/isa.h"

namespace headrace::quant {

class PackedWeights {
 public:
  // |sum_k a*w| <= k * 128 * 128 and the VNNI intermediate <= k * 255 * 128 stay inside int32.
  static constexpr std::size_t kMaxK = 65536;
  static constexpr std::size_t kMaxN = 65536;
  static constexpr std::size_t kPanelColumns = 16;

  // w_kn: row-major [k_size][n_size]. Throws CoreError(kInvalidArgument) for sizes of 0 or over
  // the limits, CoreError(kFailedPrecondition) when this CPU cannot run `isa`.
  PackedWeights(Isa isa, const std::int8_t* w_kn, std::size_t k_size, std::size_t n_size);

  Isa isa() const noexcept { return isa_; }
  std::size_t k_size() const noexcept { return k_size_; }
  std::size_t n_size() const noexcept { return n_size_; }
  std::size_t panel_count() const noexcept { return panel_count_; }
  // k padded to the kernel's step: k for scalar, a multiple of 2 (AVX2) or 4 (VNNI).
  std::size_t k_padded() const noexcept { return k_padded_; }

  // The packed weights, in the layout of isa().
  const std::int8_t* bytes() const noexcept { return bytes_.data(); }
  // kAvx512Vnni: 128 * sum_k W[k][n], padded to panel_count() * 16 entries.
  const std::int32_t* column_compensation() const noexcept { return compensation_.data(); }

 private:
  Isa isa_;
  std::size_t k_size_;
  std::size_t n_size_;
  std::size_t panel_count_ = 0;
  std::size_t k_padded_ = 0;
  std::vector<std::int8_t> bytes_;
  std::vector<std::int32_t> compensation_;
};

}  // namespace headrace::quant
