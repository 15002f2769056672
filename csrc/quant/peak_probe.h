// Measured peak of the int8 dot-product step an ISA's kernel is built on, for the benchmark's
// "fraction of peak" column: a register-only loop of independent multiply-accumulate chains (no
// loads, no stores), so the number is the core's throughput for exactly the instructions the
// kernel's inner loop issues per step, at its current clock, not a datasheet figure.
//
//   avx2:       vpmaddubsw + vpmaddwd (ones) + vpaddd on ymm: 32 u8 x s8 products accumulated
//               into int32 = 64 ops (a multiply and an add each) per step
//   avx2 paired: 2 x vpmaddubsw + vpaddw + vpmaddwd (ones) + vpaddd: 64 products = 128 ops
//   avx512vnni: vpdpbusd on zmm: 64 products accumulated = 128 ops per instruction
//   scalar:     imul + add on int32: 2 ops per step
//   peak_gops = chains * iterations * ops_per_step / elapsed_ns
// A GEMM's GOPS is 2 * M * N * K / elapsed_ns, counted the same way.
//
// Ownership/threading: stateless; runs on the calling thread only.
#pragma once

#include <cstdint>

#include "quant/isa.h"

namespace headrace::quant {

// Throws CoreError(kFailedPrecondition) when this CPU cannot run `isa`. `paired` selects the
// paired avx2 step (ignored for the other ISAs).
double measure_peak_gops(Isa isa, std::uint64_t iterations, bool paired = false);

}  // namespace headrace::quant
