#include "quant/isa.h"

#include <cstdlib>

#include "common/status.h"

namespace headrace::quant {
namespace {

// __builtin_cpu_supports consults cpuid and, for AVX/AVX-512 state, XGETBV: a feature the OS does
// not save on context switch reads as absent, which is what dispatch needs.
bool cpu_has(std::string_view feature) {
  __builtin_cpu_init();
  if (feature == "avx2") return __builtin_cpu_supports("avx2");
  if (feature == "fma") return __builtin_cpu_supports("fma");
  if (feature == "avx512f") return __builtin_cpu_supports("avx512f");
  if (feature == "avx512bw") return __builtin_cpu_supports("avx512bw");
  if (feature == "avx512vnni") return __builtin_cpu_supports("avx512vnni");
  return false;
}

std::vector<std::string_view> required_features(Isa isa) {
  switch (isa) {
    case Isa::kScalar:
      return {};
    case Isa::kAvx2:
      return {"avx2"};
    case Isa::kAvx512Vnni:
      return {"avx512f", "avx512bw", "avx512vnni"};
  }
  return {};
}

}  // namespace

std::uint32_t max_activation_code(Isa isa) noexcept { return isa == Isa::kAvx2 ? 127u : 255u; }

const char* isa_name(Isa isa) noexcept {
  switch (isa) {
    case Isa::kScalar:
      return "scalar";
    case Isa::kAvx2:
      return "avx2";
    case Isa::kAvx512Vnni:
      return "avx512vnni";
  }
  return "unknown";
}

Isa parse_isa(std::string_view name) {
  if (name == "scalar") return Isa::kScalar;
  if (name == "avx2") return Isa::kAvx2;
  if (name == "avx512vnni") return Isa::kAvx512Vnni;
  throw CoreError(StatusCode::kInvalidArgument,
                  "unknown int8 ISA '" + std::string(name) +
                      "': expected one of scalar, avx2, avx512vnni");
}

std::vector<std::string> missing_cpu_features(Isa isa) {
  std::vector<std::string> missing;
  for (std::string_view feature : required_features(isa)) {
    if (!cpu_has(feature)) missing.emplace_back(feature);
  }
  return missing;
}

bool isa_supported(Isa isa) { return missing_cpu_features(isa).empty(); }

std::vector<Isa> supported_isas() {
  std::vector<Isa> isas;
  for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512Vnni}) {
    if (isa_supported(isa)) isas.push_back(isa);
  }
  return isas;
}

void require_isa(Isa isa) {
  const std::vector<std::string> missing = missing_cpu_features(isa);
  if (missing.empty()) return;
  std::string names;
  for (const std::string& feature : missing) {
    if (!names.empty()) names += ", ";
    names += feature;
  }
  throw CoreError(StatusCode::kFailedPrecondition,
                  std::string("int8 ISA '") + isa_name(isa) +
                      "' cannot run on this CPU: missing " + names);
}

Isa default_isa() {
  const char* forced = std::getenv("HEADRACE_QUANT_ISA");
  if (forced != nullptr && *forced != '\0') {
    const Isa isa = parse_isa(forced);
    require_isa(isa);
    return isa;
  }
  return supported_isas().back();
}

}  // namespace headrace::quant
