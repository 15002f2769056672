// C[m][n] = sum_k A[m][k] * W[k][n] in exact int32, for int8 A and W, on the ISA W was packed for.
//
// Every ISA gives bit-identical results (the scalar path is the reference); see packed_weights.h
// for how each kernel keeps that exact (no int16 saturation, u8 shift compensated).
//
// Ownership/threading: the caller owns A, C and the GemmScratch. A GemmScratch belongs to one call
// at a time; give each thread (or each call) its own. PackedWeights is only read.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "quant/packed_weights.h"

namespace headrace::quant {

// Per-call working memory: the current block of A converted to what the kernel reads (int16 for
// AVX2, u8 = a + 128 for VNNI). Reused across calls to avoid reallocating.
struct GemmScratch {
  std::vector<std::int16_t> a_words;
  std::vector<std::uint8_t> a_bytes;
  std::vector<std::int32_t> tile;
};

// a: m rows of weights.k_size() int8, row stride lda (>= k_size). c: m rows, stride ldc
// (>= n_size). m may be 0.
void gemm_s8s8_s32(const std::int8_t* a, std::size_t lda, std::size_t m,
                   const PackedWeights& weights, std::int32_t* c, std::size_t ldc,
                   GemmScratch& scratch);

// The VNNI algorithm (u8 shift, packed quads, compensation) with vpdpbusd emulated in portable
// code, so the layout and compensation can be checked on CPUs without AVX-512. Takes the output of
// pack_vnni_layout (a PackedWeights for kAvx512Vnni can only be built on a CPU that has it).
void gemm_vnni_emulated(const std::int8_t* a, std::size_t lda, std::size_t m,
                        const std::int8_t* packed_quads, const std::int32_t* compensation,
                        std::size_t k_size, std::size_t n_size, std::int32_t* c, std::size_t ldc);

// The kAvx512Vnni packing of W[k][n]: [panel][k_quad][16 columns][4 k's] int8 quads, zero-padded,
// and compensation[n] = 128 * sum_k W[k][n]. PackedWeights uses it; it has no CPU check so that
// gemm_vnni_emulated can be tested anywhere.
void pack_vnni_layout(const std::int8_t* w_kn, std::size_t k_size, std::size_t n_size,
                               std::vector<std::int8_t>& packed_quads,
                               std::vector<std::int32_t>& compensation);

}  // namespace headrace::quant
