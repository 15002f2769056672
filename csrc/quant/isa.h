// Which int8 dot-product instruction set a kernel uses, and which of them this CPU can run.
//
// The choice is made once, when weights are packed (a PackedWeights is tied to one Isa because the
// packed layout differs per kernel). HEADRACE_QUANT_ISA=scalar|avx2|avx512vnni overrides the
// automatic choice so tests and benchmarks can force each path.
//
// Ownership/threading: free functions over immutable CPU facts; safe from any thread. The
// environment variable is read on every default_isa() call (load time only, never per batch).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace headrace::quant {

enum class Isa : int {
  kScalar = 0,      // portable reference: int32 multiply-accumulate, one element at a time
  kAvx2 = 1,        // vpmaddubsw on 7-bit activations (u7 x s8: exact) + vpmaddwd to int32
  kAvx512Vnni = 2,  // vpdpbusd u8 x s8, exact at 8 bits
};

// The largest activation code an ISA's kernel multiplies exactly: activations are unsigned codes
// in [0, max_activation_code]. avx2 takes 7-bit codes (127), because vpmaddubsw sums two u8 x s8
// products into a saturating int16 and 2 * 127 * 128 = 32512 < 2^15 while 2 * 255 * 128 is not;
// the others take 8-bit codes (255).
std::uint32_t max_activation_code(Isa isa) noexcept;

// "scalar", "avx2" or "avx512vnni": the names used by HEADRACE_QUANT_ISA and the Python API.
const char* isa_name(Isa isa) noexcept;

// Throws CoreError(kInvalidArgument) for an unknown name.
Isa parse_isa(std::string_view name);

// CPU features the ISA needs that this CPU (and OS) lacks, e.g. {"avx512f", "avx512vnni"}.
// Empty when the ISA can run here.
std::vector<std::string> missing_cpu_features(Isa isa);

bool isa_supported(Isa isa);

// Every ISA this CPU can run, fastest last.
std::vector<Isa> supported_isas();

// The fastest supported ISA, unless HEADRACE_QUANT_ISA names one: then that one, or
// CoreError(kFailedPrecondition) naming the missing features when this CPU cannot run it.
Isa default_isa();

// Throws CoreError(kFailedPrecondition) naming the missing features when `isa` cannot run here.
void require_isa(Isa isa);

}  // namespace headrace::quant
