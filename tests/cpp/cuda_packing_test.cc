// csrc/cuda on the host, under sanitizers: the packings and the kernel emulations (their index
// math is the kernels' own, fragment_layout.h) against a plain int32 product on random, extreme
// and odd shapes; out-of-range fragment offsets show up as ASan reports here. Device discovery
// must answer, never crash, on a machine without a GPU; CudaMlp refuses with "no CUDA device"
// there. Built with or without CUDA (cuda_absent.cc).
#include "check.h"
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "cuda/cuda_device.h"
#include "cuda/cuda_mlp.h"
#include "cuda/fragment_layout.h"
#include "cuda/fragment_packing.h"
#include "quant/int8_model_file.h"
#include "common/status.h"

namespace {

using namespace headrace;
using namespace headrace::cuda;

using headrace::testing::expect;
using headrace::testing::failures;

std::vector<std::int8_t> operand(std::mt19937& rng, std::size_t count, int fill) {
  std::vector<std::int8_t> values(count);
  std::uniform_int_distribution<int> any(-128, 127);
  for (auto& v : values) {
    if (fill == 0) v = static_cast<std::int8_t>(any(rng));
    if (fill == 1) v = -128;
    if (fill == 2) v = 127;
    if (fill == 3) v = (rng() & 1) != 0 ? std::int8_t{-128} : std::int8_t{127};
  }
  return values;
}

std::vector<std::int32_t> reference(const std::vector<std::int8_t>& a,
                                    const std::vector<std::int8_t>& w, std::size_t m,
                                    std::size_t k, std::size_t n) {
  std::vector<std::int32_t> c(m * n, 0);
  for (std::size_t r = 0; r < m; ++r) {
    for (std::size_t j = 0; j < n; ++j) {
      std::int32_t sum = 0;
      for (std::size_t i = 0; i < k; ++i) sum += std::int32_t{a[r * k + i]} * w[i * n + j];
      c[r * n + j] = sum;
    }
  }
  return c;
}

std::string shape(std::size_t m, std::size_t k, std::size_t n) {
  return std::to_string(m) + "x" + std::to_string(k) + "x" + std::to_string(n);
}

void test_mlp_emulation(std::mt19937& rng) {
  const std::size_t shapes[][3] = {{1, 1, 1},   {64, 64, 32},  {17, 70, 45}, {33, 512, 16},
                                   {64, 130, 300}, {5, 1000, 9}, {48, 96, 257}};
  int fill = 0;
  for (const auto& s : shapes) {
    const std::size_t m = s[0], k = s[1], n = s[2];
    const auto a = operand(rng, m * k, fill % 4);
    const auto w = operand(rng, k * n, (fill + 1) % 4);
    ++fill;
    const auto packed = pack_mlp_weights(w.data(), k, n);
    expect(packed.size() == layout::mlp_packed_bytes(k, n), "packed size " + shape(m, k, n));
    const auto expected = reference(a, w, m, k, n);
    for (int cluster : {1, 2, 3, 8, 16}) {
      const auto got = emulate_mlp_layer(a.data(), m, k, packed, n, cluster);
      expect(got == expected, "mlp emulation " + shape(m, k, n) + " cluster " +
                                  std::to_string(cluster));
    }
  }
}

void test_tiled_emulation(std::mt19937& rng) {
  const std::size_t shapes[][3] = {{1, 1, 1}, {128, 128, 128}, {129, 257, 130}, {70, 33, 300}};
  int fill = 0;
  for (const auto& s : shapes) {
    const std::size_t m = s[0], k = s[1], n = s[2];
    const auto a = operand(rng, m * k, fill % 4);
    const auto w = operand(rng, k * n, (fill + 3) % 4);
    ++fill;
    const auto bt = pack_gemm_weights(w.data(), k, n);
    expect(bt.size() == n * gemm_k_pad(k), "B^T size " + shape(m, k, n));
    expect(emulate_tiled_gemm(a.data(), k, m, k, bt, n) == reference(a, w, m, k, n),
           "tiled emulation " + shape(m, k, n));
  }
}

void test_bad_arguments() {
  const std::vector<std::int8_t> w(4, 1);
  bool refused = false;
  try {
    static_cast<void>(pack_mlp_weights(w.data(), 0, 4));
  } catch (const CoreError& error) {
    refused = error.code() == StatusCode::kInvalidArgument;
  }
  expect(refused, "k = 0 refused");
  refused = false;
  try {
    static_cast<void>(emulate_mlp_layer(w.data(), 65, 1, pack_mlp_weights(w.data(), 1, 4), 4, 1));
  } catch (const CoreError& error) {
    refused = error.code() == StatusCode::kInvalidArgument;
  }
  expect(refused, "65 rows refused");
}

// On the machines that run this test there is no GPU: discovery must say so with a reason, and
// a model on the device must be refused as UNAVAILABLE "no CUDA device: ...".
void test_no_device() {
  const CudaDiscovery discovery = discover_cuda_devices();
  if (discovery.unavailable_reason.empty()) {
    std::fprintf(stderr, "note: a usable CUDA device is present; no-device checks skipped\n");
    return;
  }
  expect(!discovery.unavailable_reason.empty(), "a reason");
  quant::Int8ModelFile model;
  model.input = {"x", "FP32", {-1, 4}};
  model.output = {"y", "FP32", {-1, 2}};
  quant::LayerRecord layer;
  layer.k_size = 4;
  layer.n_size = 2;
  layer.weight_scales = {1.0f};
  layer.weights.assign(8, 1);
  model.layers.push_back(layer);
  bool refused = false;
  try {
    CudaMlp mlp(model, CudaMlpOptions{});
  } catch (const CoreError& error) {
    refused = error.code() == StatusCode::kUnavailable &&
              error.message().rfind("no CUDA device: ", 0) == 0;
  }
  expect(refused, "CudaMlp refused with UNAVAILABLE 'no CUDA device: ...'");
}

}  // namespace

int main() {
  std::mt19937 rng(20240515);
  test_mlp_emulation(rng);
  test_tiled_emulation(rng);
  test_bad_arguments();
  test_no_device();
  if (failures != 0) {
    std::fprintf(stderr, "%d failure(s)\n", failures.load());
    return 1;
  }
  std::printf("cuda_packing_test: ok\n");
  return 0;
}
