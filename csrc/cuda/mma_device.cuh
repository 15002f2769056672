// The PTX instructions both int8 kernels are built on, as inline functions: cp.async (global ->
// shared, 16 bytes, zero-fill), ldmatrix.x4, and mma.sync.m16n8k32.row.col.s32.s8.s8.s32.
// fragment_layout.h documents the register layouts these produce and consume.
//
// All need sm_80 or newer; the build refuses older architectures (CMakeLists.txt).
//
// Threading: warp-collective where the instruction is (ldmatrix, mma: all 32 lanes, converged).
#pragma once

#include <cstdint>

namespace headrace::cuda::device {

__device__ __forceinline__ std::uint32_t shared_address(const void* pointer) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(pointer));
}

// 16 bytes global -> shared, bypassing L1 (.cg). With valid == false, writes 16 zero bytes and
// reads nothing (src-size 0), so out-of-range tile chunks need no branch around the copy.
__device__ __forceinline__ void cp_async_16(void* shared, const void* global, bool valid) {
  const int source_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_address(shared)),
               "l"(global), "r"(source_bytes)
               : "memory");
}

__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}

// Waits until at most `kPending` of this thread's committed groups are still in flight; the
// completed copies are then visible to this thread (other threads need a barrier as well).
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

__device__ __forceinline__ void ldmatrix_x4(std::uint32_t (&regs)[4], std::uint32_t address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(regs[0]), "=r"(regs[1]), "=r"(regs[2]), "=r"(regs[3])
               : "r"(address)
               : "memory");
}

// acc += a (16x32 s8) * b (32x8 s8), int32, wrap-around (never reached: |sum| <= 2^30).
__device__ __forceinline__ void mma_s8(std::int32_t (&acc)[4], const std::uint32_t (&a)[4],
                                       std::uint32_t b0, std::uint32_t b1) {
  // Not volatile: a pure function of its registers, so the compiler may schedule it freely.
  asm(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+r"(acc[0]), "+r"(acc[1]), "+r"(acc[2]), "+r"(acc[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

}  // namespace headrace::cuda::device
