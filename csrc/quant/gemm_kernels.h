// Per-ISA GEMM kernels behind gemm_u8s8_s32 (int8_gemm.h). Internal to csrc/quant.
//
// gemm_avx2 and gemm_avx512vnni are compiled with __attribute__((target(...))) in their own files
// and must only be called when isa_supported() says so; gemm_u8s8_s32 guarantees it because a
// PackedWeights for an ISA can only be built on a CPU that runs it.
//
// Blocking (both SIMD kernels): rows in blocks of kRowBlock, so a block of A stays in L2 while
// every panel of W streams past it; within a block, panels (k_padded * 16 bytes each, in L1) meet
// register tiles of several rows: 4 rows x 1 panel on AVX2 (8 ymm accumulators of 16), 8 rows x 2
// panels on AVX-512 (16 zmm accumulators of 32). A single row (batch 1, a GEMV) instead takes
// several panels at once (4 on AVX2, 8 on AVX-512), so one broadcast of its activations feeds
// that many independent accumulators; that path is bound by the bandwidth of streaming W.
//
// Ownership/threading: the kernels only read the weights and A and write C; no state.
#pragma once

#include <cstddef>
#include <cstdint>

#include "quant/packed_weights.h"

namespace headrace::quant::kernels {

constexpr std::size_t kRowBlock = 64;

void gemm_scalar(const std::uint8_t* a, std::size_t lda, std::size_t m, const PackedWeights& w,
                 std::int32_t* c, std::size_t ldc);
void gemm_avx2(const std::uint8_t* a, std::size_t lda, std::size_t m, const PackedWeights& w,
               std::int32_t* c, std::size_t ldc);
void gemm_avx512vnni(const std::uint8_t* a, std::size_t lda, std::size_t m, const PackedWeights& w,
                     std::int32_t* c, std::size_t ldc);

}  // namespace headrace::quant::kernels
