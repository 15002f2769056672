// A quantized MLP (.int8 file) on a CUDA device: every layer of a batch of up to 64 rows in one
// kernel launch (mlp_kernel.cu), weights resident on the device, activations in shared memory,
// with the CPU's arithmetic (QuantizedMlp): int32 accumulators bit-identical, the epilogue
// identical wherever IEEE arithmetic allows (epilogue_device.cuh says where it does not).
// Larger batches run as several 64-row clusters in the same launch.
//
// Each run() copies the rows to the device, launches, copies the result back and waits: the
// sequence is recorded once per row count as a CUDA graph and replayed, so a batch costs one
// graph launch instead of five API calls.
//
// Ownership/threading: owns its device memory, streams and graphs; immutable weights after
// construction. run() may be called from any number of threads at once: each call checks out an
// execution context (stream, device and pinned buffers, graphs) from a pool, creating one when
// all are busy, so concurrent batches run on separate streams. Destroy only when no run() is in
// flight (the runner holding it keeps it alive).
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "quant/int8_model_file.h"

namespace headrace::cuda {

struct CudaMlpOptions {
  int device = 0;
  // CTAs per cluster sharing one 64-row chunk (1..16; 0 picks the largest that fits this device).
  // Tests force each size to cover the distributed-shared-memory exchange.
  int cluster_size = 0;
  bool use_graphs = true;
};

class CudaMlp {
 public:
  // Throws CoreError(kUnavailable, "no CUDA device: ...") without a usable device,
  // CoreError(kFailedPrecondition) when the model's widest layer needs more shared memory than the
  // device has, CoreError(kInternal) for failed CUDA calls.
  CudaMlp(const quant::Int8ModelFile& model, CudaMlpOptions options);
  ~CudaMlp();
  CudaMlp(const CudaMlp&) = delete;
  CudaMlp& operator=(const CudaMlp&) = delete;

  static std::shared_ptr<CudaMlp> load(const std::string& path, CudaMlpOptions options);

  // x: rows x input_size() floats, y: rows x output_size(), both host memory. Throws
  // CoreError(kInvalidArgument) when x (or a hidden layer) holds NaN or infinity under dynamic
  // quantization, as QuantizedMlp does.
  void run(const float* x, std::size_t rows, float* y) const;

  // Mean device time of one launch of the kernel alone (inputs already on the device), over
  // `iterations` back-to-back launches, median of 5 such runs; `graph` replays a captured launch.
  double time_launch_us(std::size_t rows, int iterations, bool graph) const;

  std::size_t input_size() const noexcept;
  std::size_t output_size() const noexcept;
  std::size_t layer_count() const noexcept;
  const quant::TensorMetadata& input() const noexcept;
  const quant::TensorMetadata& output() const noexcept;
  int device() const noexcept;
  int cluster_size() const noexcept;
  std::size_t shared_memory_bytes() const noexcept;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace headrace::cuda
