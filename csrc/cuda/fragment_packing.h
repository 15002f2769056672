// Host side of the CUDA int8 kernels, runnable without a GPU: the weight packings the kernels
// read (fragment_layout.h describes them), and emulations of both kernels' data movement and of
// the mma.sync m16n8k32 s8 instruction, built on the same index functions the kernels use. Tests
// check the emulations against a plain int32 product, so the kernels' index math is checked on
// every machine; a GPU run then checks the hardware agrees.
//
// Ownership/threading: pure functions returning owned vectors; safe from any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace headrace::cuda {

// W[k][n] (row-major, the .int8 file layout) -> the whole-MLP kernel's slabs,
// mlp_packed_bytes(k, n) bytes, zero-padded. Throws CoreError(kInvalidArgument) for k or n of 0.
std::vector<std::int8_t> pack_mlp_weights(const std::int8_t* w_kn, std::size_t k, std::size_t n);

// W[k][n] -> B^T [n][k_pad] for the tiled GEMM, k_pad = k rounded up to 16 (zero-filled), so each
// row starts 16-byte aligned for cp.async.
std::vector<std::int8_t> pack_gemm_weights(const std::int8_t* w_kn, std::size_t k, std::size_t n);
std::size_t gemm_k_pad(std::size_t k) noexcept;

// One warp's mma.sync.m16n8k32.s32.s8.s8.s32: d = a * b + c, registers indexed [lane][reg].
void emulate_mma_m16n8k32(const std::uint32_t (&a)[32][4], const std::uint32_t (&b)[32][2],
                          const std::int32_t (&c)[32][4], std::int32_t (&d)[32][4]);

// The whole-MLP kernel's GEMM phase for one layer and one cluster: activations a [rows][k]
// (rows <= 64) staged as the kernel stages them, weights from pack_mlp_weights, every CTA of a
// cluster of `cluster_size`, every warp's work items, lane loads at the kernel's offsets.
// Returns int32 [rows][n].
std::vector<std::int32_t> emulate_mlp_layer(const std::int8_t* a, std::size_t rows, std::size_t k,
                                            const std::vector<std::int8_t>& packed,
                                            std::size_t n, int cluster_size);

// The tiled GEMM kernel: every CTA tile, swizzled shared-memory stages filled as its cp.async
// loop fills them, ldmatrix at the kernel's addresses, int32 [m][n] out. a: [m][k] with row stride
// lda (>= k); bt from pack_gemm_weights.
std::vector<std::int32_t> emulate_tiled_gemm(const std::int8_t* a, std::size_t lda, std::size_t m,
                                             std::size_t k, const std::vector<std::int8_t>& bt,
                                             std::size_t n);

}  // namespace headrace::cuda
