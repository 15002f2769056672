// Measured peak of the int8 dot-product instruction an ISA's kernel is built on, for the
// benchmark's "fraction of peak" column: a register-only loop of independent multiply-accumulate
// chains (no loads, no stores), so the number is the core's instruction throughput at its current
// clock, not a datasheet figure.
//
//   avx2:       vpmaddwd + vpaddd on ymm: 16 int16 multiplies + 16 adds = 32 int ops per pair
//   avx512vnni: vpdpbusd on zmm: 64 u8 x s8 multiplies + 64 adds = 128 int ops per instruction
//   scalar:     imul + add on int32: 2 int ops per pair
//   peak_gops = chains * iterations * ops_per_instruction / elapsed_ns
// A GEMM's GOPS is 2 * M * N * K / elapsed_ns, counted the same way (multiply and add each one op).
//
// Ownership/threading: stateless; runs on the calling thread only.
#pragma once

#include <cstdint>

#include "quant/isa.h"

namespace headrace::quant {

// Throws CoreError(kFailedPrecondition) when this CPU cannot run `isa`.
double measure_peak_gops(Isa isa, std::uint64_t iterations);

}  // namespace headrace::quant
