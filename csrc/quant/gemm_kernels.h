// Per-ISA GEMM kernels behind gemm_s8s8_s32 (int8_gemm.h). Internal to csrc/quant.
//
// gemm_avx2 and gemm_avx512vnni are compiled with __attribute__((target(...))) in their own files
// and must only be called when isa_supported() says so; gemm_s8s8_s32 guarantees it because a
// PackedWeights for an ISA can only be built on a CPU that runs it.
//
// Ownership/threading: the kernels only read the weights and A, write C, and keep their working
// memory in the caller's GemmScratch; concurrent calls with separate scratches are safe.
#pragma once

#include <cstddef>
#include <cstdint>

#include "quant/int8_gemm.h"
#include "quant/packed_weights.h"

namespace headrace::quant::kernels {

// Rows of A converted at a time; bounds the scratch and keeps a block of A in L2 while every
// panel of W streams past it.
constexpr std::size_t kRowBlock = 64;
// Rows per micro-tile: 4 rows x 16 columns of int32 accumulators stay in registers.
constexpr std::size_t kMicroRows = 4;

void gemm_scalar(const std::int8_t* a, std::size_t lda, std::size_t m, const PackedWeights& w,
                 std::int32_t* c, std::size_t ldc);
void gemm_avx2(const std::int8_t* a, std::size_t lda, std::size_t m, const PackedWeights& w,
               std::int32_t* c, std::size_t ldc, GemmScratch& scratch);
void gemm_avx512vnni(const std::int8_t* a, std::size_t lda, std::size_t m, const PackedWeights& w,
                     std::int32_t* c, std::size_t ldc, GemmScratch& scratch);

}  // namespace headrace::quant::kernels
