// QuantizedMlp under sanitizers: many threads call run() on one model at once and must get the
// serial results bit for bit (run ThreadSanitizer with -DHEADRACE_SANITIZE=thread); every ISA this
// CPU runs gives the scalar executor's outputs bit for bit at the same activation bits (7 for
// avx2, 8 for avx512vnni); NaN input is an error, not UB.
#include "check.h"
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "quant/int8_model_file.h"
#include "quant/isa.h"
#include "quant/quantized_mlp.h"
#include "common/status.h"

namespace {

using namespace headrace::quant;

using headrace::testing::expect;
using headrace::testing::failures;

Int8ModelFile random_model(std::mt19937& rng) {
  const std::vector<std::uint32_t> sizes{37, 70, 45, 9};
  const std::vector<ActivationSpec> activations{{Activation::kLeakyRelu, 0.1f, 0.0f},
                                                {Activation::kGeluErf, 0.0f, 0.0f},
                                                {Activation::kSoftmax, 0.0f, 0.0f}};
  std::uniform_int_distribution<int> weight(-127, 127);
  std::uniform_real_distribution<float> unit(0.001f, 0.02f);
  Int8ModelFile model;
  model.input = {"x", "FP32", {-1, sizes.front()}};
  model.output = {"y", "FP32", {-1, sizes.back()}};
  for (std::size_t i = 0; i + 1 < sizes.size(); ++i) {
    LayerRecord layer;
    layer.k_size = sizes[i];
    layer.n_size = sizes[i + 1];
    layer.activation = activations[i];
    if (i == 1) {  // one statically quantized layer, the rest dynamic
      layer.input_quantization = InputQuantization::kStaticPerTensor;
      layer.input_min = -1.5f;
      layer.input_max = 2.0f;
    }
    layer.weight_scales.resize(i == 2 ? 1 : layer.n_size);
    for (float& scale : layer.weight_scales) scale = unit(rng);
    layer.bias.resize(layer.n_size);
    for (float& bias : layer.bias) bias = unit(rng) * 10.0f - 0.1f;
    layer.weights.resize(std::size_t{layer.k_size} * layer.n_size);
    for (auto& w : layer.weights) w = static_cast<std::int8_t>(weight(rng));
    model.layers.push_back(std::move(layer));
  }
  return model;
}

}  // namespace

int main() {
  std::mt19937 rng(7);
  const Int8ModelFile model = random_model(rng);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::vector<std::vector<float>> batches;
  for (std::size_t rows : {1u, 3u, 32u, 33u, 100u}) {
    std::vector<float> x(rows * 37);
    for (float& v : x) v = normal(rng);
    batches.push_back(std::move(x));
  }

  for (Isa isa : supported_isas()) {
    const QuantizedMlp mlp(model, isa);
    // The scalar executor at the same activation bits is the reference for every ISA.
    const QuantizedMlp reference(model, Isa::kScalar, mlp.activation_bits());
    expect(mlp.activation_bits() == (isa == Isa::kAvx2 ? 7u : 8u),
           std::string(isa_name(isa)) + " default activation bits");
    std::vector<std::vector<float>> serial;
    for (const auto& x : batches) {
      std::vector<float> y(x.size() / 37 * 9);
      std::vector<float> expected(y.size());
      mlp.run(x.data(), x.size() / 37, y.data());
      reference.run(x.data(), x.size() / 37, expected.data());
      expect(y == expected, std::string(isa_name(isa)) + " matches the scalar executor bit for bit");
      serial.push_back(std::move(y));
    }
    for (const auto& y : serial) {
      for (std::size_t row = 0; row < y.size() / 9; ++row) {
        float total = 0.0f;
        for (std::size_t j = 0; j < 9; ++j) total += y[row * 9 + j];
        expect(std::fabs(total - 1.0f) < 1e-4f, std::string(isa_name(isa)) + " softmax rows sum to 1");
      }
    }

    std::vector<std::thread> threads;
    std::vector<int> thread_ok(8, 1);
    for (std::size_t t = 0; t < thread_ok.size(); ++t) {
      threads.emplace_back([&, t] {
        for (std::size_t repeat = 0; repeat < 20; ++repeat) {
          const std::size_t b = (t + repeat) % batches.size();
          std::vector<float> y(serial[b].size());
          mlp.run(batches[b].data(), batches[b].size() / 37, y.data());
          if (y != serial[b]) thread_ok[t] = 0;
        }
      });
    }
    for (auto& thread : threads) thread.join();
    for (int ok : thread_ok) expect(ok == 1, std::string(isa_name(isa)) + " concurrent == serial");

    std::vector<float> bad(2 * 37, 0.5f);
    bad[40] = std::nanf("");
    std::vector<float> y(2 * 9);
    try {
      mlp.run(bad.data(), 2, y.data());
      expect(false, "NaN input refused");
    } catch (const headrace::CoreError& error) {
      expect(error.code() == headrace::StatusCode::kInvalidArgument, "NaN error code");
    }
  }
  try {
    const QuantizedMlp eight_bit_avx2(model, Isa::kAvx2, 8);
    expect(!isa_supported(Isa::kAvx2), "8-bit codes refused on avx2");
  } catch (const headrace::CoreError& error) {
    expect(error.code() == (isa_supported(Isa::kAvx2) ? headrace::StatusCode::kInvalidArgument
                                                      : headrace::StatusCode::kFailedPrecondition),
           "8-bit avx2 error code");
  }
  if (failures == 0) std::puts("quant_mlp_test: ok");
  return failures == 0 ? 0 : 1;
}
