// C[m][n] = sum_k A[m][k] * W[k][n] in exact int32, for unsigned 8-bit activation codes A and
// int8 weights W, on the ISA W was packed for.
//
// Activations are codes in [0, max_activation_code(isa)] (isa.h): 7-bit for avx2, whose
// vpmaddubsw pair sums then stay inside int16 (2 * 127 * 128 = 32512 < 32767), 8-bit elsewhere.
// Within that range every ISA gives the exact int32 sums (the scalar path is the reference); the
// zero point of the activations is not applied here (see PackedWeights::column_sums()).
//
// Ownership/threading: the caller owns A and C; PackedWeights is only read; no state is kept, so
// any number of threads may call at once.
#pragma once

#include <cstddef>
#include <cstdint>

#include "quant/packed_weights.h"

namespace headrace::quant {

// a: m rows with row stride lda >= weights.k_padded(); all k_padded() bytes of every row must be
// readable (the bytes past k_size meet zero weights, so their values do not matter). c: m rows,
// stride ldc >= n_size. m may be 0. Activation codes above max_activation_code(weights.isa())
// give undefined (saturated) sums: callers guarantee the range.
void gemm_u8s8_s32(const std::uint8_t* a, std::size_t lda, std::size_t m,
                   const PackedWeights& weights, std::int32_t* c, std::size_t ldc);

// The quad-panel algorithm (what vpdpbusd and vpmaddubsw + vpmaddwd compute per 4 k's) in
// portable code over the output of pack_quad_panels, so the packing can be checked on CPUs
// without AVX2 or AVX-512. Same contract for a as gemm_u8s8_s32, codes in [0, 255].
void gemm_quads_emulated(const std::uint8_t* a, std::size_t lda, std::size_t m,
                         const std::int8_t* packed, std::size_t k_size, std::size_t n_size,
                         std::int32_t* c, std::size_t ldc);

}  // namespace headrace::quant
