// Int8 weights of one layer, packed once at load into the layout its kernel streams.
//
// Input is the ONNX MatMul layout: row-major int8 W[k][n] (k = input feature, n = output channel).
//   kScalar:              W transposed, [n][k], so each output is one contiguous dot product.
//   kAvx2, kAvx512Vnni:   "quad panels": panels of 16 columns, [panel][k_quad][16 columns][4 k's].
//                         One k_quad of a panel is 64 bytes: one zmm for vpdpbusd, two ymm for
//                         vpmaddubsw + vpmaddwd. Both compute, per column, the sum of four
//                         activation x weight products for a broadcast quad of activations
//                         (a[4q], ..., a[4q+3]), so they share the layout.
// k is padded to a multiple of 4 (k_padded) and n to whole panels with zero weights, so padded
// terms add 0 whatever the activation bytes there hold.
//
// kAvx2 sums two quads in int16 before widening ("paired"), which needs every int16 lane of the
// sum to stay exact: lane 0 of column n over quads (2b, 2b+1) adds the products of
// k = 8b + {0, 1, 4, 5}, lane 1 those of 8b + {2, 3, 6, 7}; with 7-bit codes that is exact when the
// four |w| sum to at most kPairedLaneLimit (127 * 258 = 32766). W is packed as W' + D: W' meets
// the limit (the largest weights of a group that exceeds it are shrunk toward 0) and the few
// entries of D = W - W' are kept as corrections, which the kernel adds as code * delta after the
// tiles. A * W' + A * D = A * W exactly. A correction (a scattered multiply-add per row) costs
// about what pairing saves on 370 weights, so W is packed unchanged and unpaired when more than
// 1/kMaxCorrectionShare of the weights would need one: random-initialized layers pair, trained
// layers with heavier tails (mean |w| of 32-45 in int8 units) mostly do not.
//
// column_sums()[n] = sum_k W[k][n] for every ISA: activations are unsigned codes with a zero point
// (x ~= scale * (q - zero_point)), and the executor subtracts zero_point * column_sums[n] from the
// raw GEMM result to get sum_k (q - zero_point) * W, in exact int32.
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
  // |sum_k q * w| <= k * 255 * 128 < 2^31 for k <= kMaxK: every sum fits int32.
  static constexpr std::size_t kMaxK = 65536;
  static constexpr std::size_t kMaxN = 65536;
  static constexpr std::size_t kPanelColumns = 16;
  static constexpr std::size_t kQuadDepth = 4;
  // Bytes of one k_quad of one panel in the quad layout.
  static constexpr std::size_t kQuadBytes = kPanelColumns * kQuadDepth;
  static constexpr std::int32_t kPairedLaneLimit = 258;
  static constexpr std::size_t kMaxCorrectionShare = 512;

  // One entry of D (kAvx2, paired): the product code[k] * delta belongs to column n.
  struct Correction {
    std::uint32_t k;
    std::uint32_t n;
    std::int32_t delta;
  };
  // A correction as the kernel reads it (8 bytes, sorted by k then n).
  struct CorrectionEntry {
    std::uint32_t k;
    std::uint16_t n;     // kMaxN = 65536: every column index fits
    std::int16_t delta;  // |delta| <= 128
  };

  // w_kn: row-major [k_size][n_size]. Throws CoreError(kInvalidArgument) for sizes of 0 or over
  // the limits, CoreError(kFailedPrecondition) when this CPU cannot run `isa`.
  PackedWeights(Isa isa, const std::int8_t* w_kn, std::size_t k_size, std::size_t n_size);

  Isa isa() const noexcept { return isa_; }
  std::size_t k_size() const noexcept { return k_size_; }
  std::size_t n_size() const noexcept { return n_size_; }
  std::size_t panel_count() const noexcept { return panel_count_; }
  // k rounded up to a multiple of 4 (every ISA: it is the row stride the executor gives A).
  std::size_t k_padded() const noexcept { return k_padded_; }
  // Bytes between consecutive panels in the quad layout.
  std::size_t panel_stride() const noexcept { return k_padded_ * kPanelColumns; }

  // The packed weights, in the layout of isa().
  // 64-byte aligned, so no 32- or 64-byte load of a panel straddles two cache lines.
  const std::int8_t* bytes() const noexcept { return bytes_; }
  // sum_k W[k][n], n_size() entries.
  const std::int32_t* column_sums() const noexcept { return column_sums_.data(); }
  // kAvx2: whether the packed bytes are W' (quads summed in pairs) plus the corrections.
  bool paired() const noexcept { return paired_; }
  std::size_t correction_count() const noexcept { return corrections_.size(); }
  const std::vector<CorrectionEntry>& corrections() const noexcept { return corrections_; }

 private:
  Isa isa_;
  std::size_t k_size_;
  std::size_t n_size_;
  std::size_t panel_count_ = 0;
  std::size_t k_padded_ = 0;
  void store(const std::vector<std::int8_t>& packed);

  std::vector<std::int8_t> storage_;  // owns bytes_, with up to 63 bytes of slack in front
  const std::int8_t* bytes_ = nullptr;
  std::vector<std::int32_t> column_sums_;
  bool paired_ = false;
  std::vector<CorrectionEntry> corrections_;
};

// The quad-panel packing of W[k][n] (see above), zero-padded. PackedWeights uses it for kAvx2 and
// kAvx512Vnni; it has no CPU check so that gemm_quads_emulated (int8_gemm.h) can be tested on any
// CPU.
std::vector<std::int8_t> pack_quad_panels(const std::int8_t* w_kn, std::size_t k_size,
                                          std::size_t n_size);

// Splits W (row-major [k][n], modified in place into W') so that every paired lane group of W'
// meets kPairedLaneLimit; returns the corrections D = W - W', sorted by k. Only whole quad pairs
// are constrained (an odd last quad is not paired).
std::vector<PackedWeights::Correction> split_for_pairs(std::int8_t* w_kn, std::size_t k_size,
                                                       std::size_t n_size);

}  // namespace headrace::quant
