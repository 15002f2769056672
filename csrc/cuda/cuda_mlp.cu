// CudaMlp: weights to the device once, then per batch one graph launch (cuda_mlp.h).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "cuda/cuda_check.h"
#include "cuda/cuda_device.h"
#include "cuda/cuda_mlp.h"
#include "cuda/fragment_layout.h"
#include "cuda/fragment_packing.h"
#include "cuda/mlp_kernel.h"

namespace headrace::cuda {
namespace {

using namespace layout;

// Distinct batch row counts recorded as graphs per execution context; rarer sizes beyond this
// launch directly (a graph per size costs device memory and an instantiation).
constexpr std::size_t kMaxGraphsPerContext = 128;
constexpr int kMaxClusterSize = 16;
// Device allocations of the model start on this boundary (cp.async needs 16; 256 keeps each
// array on its own cache lines).
constexpr std::size_t kBlobAlignment = 256;

class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  explicit PinnedBuffer(std::size_t bytes) {
    if (bytes > 0) check_cuda(cudaMallocHost(&data_, bytes), "cudaMallocHost");
  }
  ~PinnedBuffer() {
    if (data_ != nullptr) static_cast<void>(cudaFreeHost(data_));
  }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(PinnedBuffer&& other) noexcept {
    std::swap(data_, other.data_);
    return *this;
  }
  template <typename T>
  T* as() const noexcept {
    return static_cast<T*>(data_);
  }

 private:
  void* data_ = nullptr;
};

}  // namespace

struct CudaMlp::Impl {
  // One stream with its buffers and recorded graphs; used by one run() at a time.
  struct Context {
    Stream stream;
    std::size_t capacity_rows = 0;
    DeviceBuffer x;
    DeviceBuffer y;
    DeviceBuffer flag;
    PinnedBuffer host_x;
    PinnedBuffer host_y;
    PinnedBuffer host_flag;
    std::map<std::size_t, cudaGraphExec_t> graphs;

    Context() = default;
    Context(const Context&) = delete;
    Context& operator=(const Context&) = delete;
    ~Context() { drop_graphs(); }
    void drop_graphs() {
      for (auto& entry : graphs) static_cast<void>(cudaGraphExecDestroy(entry.second));
      graphs.clear();
    }
  };

  int device = 0;
  int cluster_size = 1;
  bool use_graphs = true;
  quant::TensorMetadata input;
  quant::TensorMetadata output;
  std::size_t input_size = 0;
  std::size_t output_size = 0;
  std::size_t layer_count = 0;
  std::size_t activation_stride = 0;
  int accumulator_stride = 0;
  std::size_t shared_bytes = 0;
  DeviceBuffer blob;
  DeviceBuffer layer_params;

  mutable std::mutex mutex;  // guards idle
  mutable std::vector<std::unique_ptr<Context>> idle;

  MlpParams params(const Context& context, std::size_t rows) const {
    MlpParams p{};
    p.layers = layer_params.as<const MlpLayerParams>();
    p.layer_count = static_cast<int>(layer_count);
    p.x = context.x.as<const float>();
    p.y = context.y.as<float>();
    p.rows = static_cast<int>(rows);
    p.error_flag = context.flag.as<int>();
    p.activation_stride = static_cast<int>(activation_stride);
    p.accumulator_stride = accumulator_stride;
    p.cluster_size = cluster_size;
    return p;
  }

  std::unique_ptr<Context> acquire() const {
    {
      const std::lock_guard<std::mutex> lock(mutex);
      if (!idle.empty()) {
        std::unique_ptr<Context> context = std::move(idle.back());
        idle.pop_back();
        return context;
      }
    }
    return std::make_unique<Context>();
  }

  void release(std::unique_ptr<Context> context) const {
    const std::lock_guard<std::mutex> lock(mutex);
    idle.push_back(std::move(context));
  }

  void ensure_capacity(Context& context, std::size_t rows) const {
    if (rows <= context.capacity_rows) return;
    // Grow to the next power of two (at least one cluster's rows) so a server's growing batch
    // sizes settle after a few reallocations; recorded graphs point at the old buffers.
    std::size_t capacity = kMlpMaxRows;
    while (capacity < rows) capacity *= 2;
    context.drop_graphs();
    context.x = DeviceBuffer(capacity * input_size * sizeof(float));
    context.y = DeviceBuffer(capacity * output_size * sizeof(float));
    context.flag = DeviceBuffer(sizeof(int));
    context.host_x = PinnedBuffer(capacity * input_size * sizeof(float));
    context.host_y = PinnedBuffer(capacity * output_size * sizeof(float));
    context.host_flag = PinnedBuffer(sizeof(int));
    context.capacity_rows = capacity;
  }

  // The whole batch: clear the error flag, rows in, kernel, rows and flag out.
  void enqueue(const Context& context, std::size_t rows) const {
    const cudaStream_t stream = context.stream.get();
    check_cuda(cudaMemsetAsync(context.flag.as<void>(), 0, sizeof(int), stream), "cudaMemsetAsync");
    check_cuda(cudaMemcpyAsync(context.x.as<void>(), context.host_x.as<void>(),
                               rows * input_size * sizeof(float), cudaMemcpyHostToDevice, stream),
               "cudaMemcpyAsync(x)");
    launch_mlp_kernel(params(context, rows), shared_bytes, stream);
    check_cuda(cudaMemcpyAsync(context.host_y.as<void>(), context.y.as<void>(),
                               rows * output_size * sizeof(float), cudaMemcpyDeviceToHost, stream),
               "cudaMemcpyAsync(y)");
    check_cuda(cudaMemcpyAsync(context.host_flag.as<void>(), context.flag.as<void>(), sizeof(int),
                               cudaMemcpyDeviceToHost, stream),
               "cudaMemcpyAsync(flag)");
  }

  template <typename Enqueue>
  static cudaGraphExec_t record(const Context& context, Enqueue&& enqueue_work) {
    const cudaStream_t stream = context.stream.get();
    check_cuda(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal),
               "cudaStreamBeginCapture");
    cudaGraph_t graph = nullptr;
    try {
      enqueue_work();
    } catch (...) {
      if (cudaStreamEndCapture(stream, &graph) == cudaSuccess && graph != nullptr) {
        static_cast<void>(cudaGraphDestroy(graph));
      }
      throw;
    }
    check_cuda(cudaStreamEndCapture(stream, &graph), "cudaStreamEndCapture");
    cudaGraphExec_t exec = nullptr;
    const cudaError_t status = cudaGraphInstantiate(&exec, graph, 0);
    static_cast<void>(cudaGraphDestroy(graph));
    check_cuda(status, "cudaGraphInstantiate");
    return exec;
  }

  void submit(Context& context, std::size_t rows) const {
    if (!use_graphs) {
      enqueue(context, rows);
      return;
    }
    auto found = context.graphs.find(rows);
    if (found == context.graphs.end()) {
      if (context.graphs.size() >= kMaxGraphsPerContext) {
        enqueue(context, rows);
        return;
      }
      const cudaGraphExec_t exec = record(context, [&] { enqueue(context, rows); });
      found = context.graphs.emplace(rows, exec).first;
    }
    check_cuda(cudaGraphLaunch(found->second, context.stream.get()), "cudaGraphLaunch");
  }
};

namespace {

struct BlobLayout {
  std::vector<std::uint8_t> bytes;
  std::size_t append(const void* data, std::size_t size) {
    const std::size_t offset = round_up(bytes.size(), kBlobAlignment);
    bytes.resize(offset + size);
    std::memcpy(bytes.data() + offset, data, size);
    return offset;
  }
};

struct Choice {
  int cluster_size;
  int accumulator_stride;
  std::size_t shared_bytes;
};

}  // namespace

CudaMlp::CudaMlp(const quant::Int8ModelFile& model, CudaMlpOptions options)
    : impl_(std::make_unique<Impl>()) {
  if (model.layers.empty()) throw_invalid_argument("int8 model has no layers");
  if (options.cluster_size < 0 || options.cluster_size > kMaxClusterSize) {
    throw_invalid_argument("cluster_size must be 0 (automatic) or 1.." +
                           std::to_string(kMaxClusterSize));
  }
  const CudaDeviceInfo info = require_cuda_device(options.device);
  check_cuda(cudaSetDevice(options.device), "cudaSetDevice");
  Impl& impl = *impl_;
  impl.device = options.device;
  impl.use_graphs = options.use_graphs;
  impl.input = model.input;
  impl.output = model.output;
  impl.input_size = model.layers.front().k_size;
  impl.output_size = model.layers.back().n_size;
  impl.layer_count = model.layers.size();

  std::size_t widest_k_pad = 0;
  for (std::size_t i = 0; i < model.layers.size(); ++i) {
    const quant::LayerRecord& layer = model.layers[i];
    widest_k_pad = std::max(widest_k_pad, mlp_k_pad(layer.k_size));
    // The GPU epilogue (epilogue_device.cuh) knows the version-1 activations only.
    const quant::Activation kind = layer.activation.kind;
    if (kind == quant::Activation::kLeakyRelu || kind == quant::Activation::kClip ||
        kind == quant::Activation::kLogSoftmax) {
      throw_invalid_argument("int8 model layer " + std::to_string(i) +
                             ": the CUDA kernels do not implement activation code " +
                             std::to_string(static_cast<std::uint32_t>(kind)) +
                             " (LeakyRelu, Clip, LogSoftmax); serve it on the CPU");
    }
  }
  impl.activation_stride = mlp_activation_stride(widest_k_pad);

  std::vector<int> candidates;
  if (options.cluster_size > 0) {
    if (options.cluster_size > 1 && !info.cluster_launch) {
      throw CoreError(StatusCode::kFailedPrecondition,
                      "cluster_size " + std::to_string(options.cluster_size) + " needs thread-block "
                      "clusters (compute capability 9.0); device " + std::to_string(options.device) +
                      " is " + std::to_string(info.compute_major) + "." +
                      std::to_string(info.compute_minor));
    }
    candidates.push_back(options.cluster_size);
  } else if (info.cluster_launch) {
    candidates = {8, 16, 4, 2, 1};
  } else {
    candidates = {1};
  }
  std::string refusals;
  bool chosen = false;
  Choice choice{};
  for (const int cluster : candidates) {
    int max_groups = 0;
    for (const quant::LayerRecord& layer : model.layers) {
      const int groups = static_cast<int>(mlp_n_pad(layer.n_size) / kMlpGroupColumns);
      max_groups = std::max(max_groups, mlp_max_owned_groups(groups, cluster));
    }
    const int accumulator_stride = mlp_accumulator_stride(max_groups);
    const std::size_t shared = mlp_shared_layout(impl.activation_stride, accumulator_stride).total;
    if (shared > info.shared_memory_per_block_bytes) {
      refusals += " cluster " + std::to_string(cluster) + ": " + std::to_string(shared) + " bytes;";
      continue;
    }
    // The limit is the device's maximum, not this model's need: the attribute belongs to the
    // kernel, shared by every model in the process, and must never shrink under a wider one.
    configure_mlp_kernel(info.shared_memory_per_block_bytes, cluster);
    if (mlp_max_active_clusters(shared, cluster) < 1) {
      refusals += " cluster " + std::to_string(cluster) + ": not launchable;";
      continue;
    }
    choice = Choice{cluster, accumulator_stride, shared};
    chosen = true;
    break;
  }
  if (!chosen) {
    throw CoreError(StatusCode::kFailedPrecondition,
                    "int8 model too wide for the one-launch CUDA kernel on device " +
                        std::to_string(options.device) + " (" + info.name + ", " +
                        std::to_string(info.shared_memory_per_block_bytes) +
                        " bytes of shared memory per block):" + refusals +
                        " serve it on the CPU");
  }
  impl.cluster_size = choice.cluster_size;
  impl.accumulator_stride = choice.accumulator_stride;
  impl.shared_bytes = choice.shared_bytes;

  // Every layer's packed weights, scales and bias in one device allocation.
  BlobLayout blob;
  struct Offsets {
    std::size_t weights, scales, bias;
  };
  std::vector<Offsets> offsets;
  for (const quant::LayerRecord& layer : model.layers) {
    const std::vector<std::int8_t> packed =
        pack_mlp_weights(layer.weights.data(), layer.k_size, layer.n_size);
    Offsets o{};
    o.weights = blob.append(packed.data(), packed.size());
    o.scales = blob.append(layer.weight_scales.data(), layer.weight_scales.size() * sizeof(float));
    o.bias = layer.bias.empty() ? 0 : blob.append(layer.bias.data(), layer.bias.size() * sizeof(float));
    offsets.push_back(o);
  }
  impl.blob = DeviceBuffer(blob.bytes.size());
  check_cuda(cudaMemcpy(impl.blob.as<void>(), blob.bytes.data(), blob.bytes.size(),
                        cudaMemcpyHostToDevice),
             "cudaMemcpy(weights)");
  const auto* base = impl.blob.as<const std::uint8_t>();
  std::vector<MlpLayerParams> layer_params;
  for (std::size_t i = 0; i < model.layers.size(); ++i) {
    const quant::LayerRecord& layer = model.layers[i];
    MlpLayerParams p{};
    p.weights = reinterpret_cast<const std::int8_t*>(base + offsets[i].weights);
    p.weight_scales = reinterpret_cast<const float*>(base + offsets[i].scales);
    p.bias = layer.bias.empty() ? nullptr : reinterpret_cast<const float*>(base + offsets[i].bias);
    p.k = static_cast<int>(layer.k_size);
    p.n = static_cast<int>(layer.n_size);
    p.k_steps = static_cast<int>(mlp_k_pad(layer.k_size) / kMlpKStep);
    p.groups = static_cast<int>(mlp_n_pad(layer.n_size) / kMlpGroupColumns);
    p.per_tensor_scale = layer.weight_scales.size() == 1 ? 1 : 0;
    p.activation = layer.activation.kind;
    p.input_static = layer.input_quantization == quant::InputQuantization::kStaticPerTensor ? 1 : 0;
    // These kernels quantize symmetrically (scale = max|x| / 127): a static range maps to the
    // scale that covers it (for a version-1 file, its own scale).
    p.input_scale = std::max(-layer.input_min, layer.input_max) / 127.0f;
    layer_params.push_back(p);
  }
  impl.layer_params = DeviceBuffer(layer_params.size() * sizeof(MlpLayerParams));
  check_cuda(cudaMemcpy(impl.layer_params.as<void>(), layer_params.data(),
                        layer_params.size() * sizeof(MlpLayerParams), cudaMemcpyHostToDevice),
             "cudaMemcpy(layers)");
}

CudaMlp::~CudaMlp() {
  // Contexts and buffers free device memory of this device.
  static_cast<void>(cudaSetDevice(impl_->device));
  impl_->idle.clear();
}

void CudaMlp::run(const float* x, std::size_t rows, float* y) const {
  if (rows == 0) return;
  constexpr std::size_t kMaxRows = std::size_t{1} << 24;  // grid.y and int row indices stay small
  if (rows > kMaxRows) throw_invalid_argument("int8 CUDA model: batch of more than 2^24 rows");
  const Impl& impl = *impl_;
  check_cuda(cudaSetDevice(impl.device), "cudaSetDevice");
  // A context whose run failed is dropped, not returned: its stream may hold a broken capture.
  std::unique_ptr<Impl::Context> context = impl.acquire();
  impl.ensure_capacity(*context, rows);
  std::memcpy(context->host_x.as<void>(), x, rows * impl.input_size * sizeof(float));
  impl.submit(*context, rows);
  check_cuda(cudaStreamSynchronize(context->stream.get()), "cudaStreamSynchronize");
  const bool non_finite = *context->host_flag.as<int>() != 0;
  if (!non_finite) std::memcpy(y, context->host_y.as<void>(), rows * impl.output_size * sizeof(float));
  impl.release(std::move(context));
  if (non_finite) {
    throw CoreError(StatusCode::kInvalidArgument,
                    "int8 model input holds NaN or infinity, which int8 cannot represent");
  }
}

double CudaMlp::time_launch_us(std::size_t rows, int iterations, bool graph) const {
  if (rows == 0 || iterations < 1) throw_invalid_argument("time_launch_us: rows and iterations >= 1");
  const Impl& impl = *impl_;
  check_cuda(cudaSetDevice(impl.device), "cudaSetDevice");
  std::unique_ptr<Impl::Context> context = impl.acquire();
  impl.ensure_capacity(*context, rows);
  float* host_x = context->host_x.as<float>();
  for (std::size_t i = 0; i < rows * impl.input_size; ++i) {
    host_x[i] = std::sin(0.37f * static_cast<float>(i % 9973));  // deterministic, signed, finite
  }
  const cudaStream_t stream = context->stream.get();
  check_cuda(cudaMemcpyAsync(context->x.as<void>(), host_x, rows * impl.input_size * sizeof(float),
                             cudaMemcpyHostToDevice, stream),
             "cudaMemcpyAsync(x)");
  check_cuda(cudaMemsetAsync(context->flag.as<void>(), 0, sizeof(int), stream), "cudaMemsetAsync");
  const MlpParams params = impl.params(*context, rows);
  cudaGraphExec_t exec = nullptr;
  if (graph) {
    exec = Impl::record(*context, [&] { launch_mlp_kernel(params, impl.shared_bytes, stream); });
  }
  auto launch = [&] {
    if (exec != nullptr) {
      check_cuda(cudaGraphLaunch(exec, stream), "cudaGraphLaunch");
    } else {
      launch_mlp_kernel(params, impl.shared_bytes, stream);
    }
  };
  cudaEvent_t start = nullptr;
  cudaEvent_t stop = nullptr;
  check_cuda(cudaEventCreate(&start), "cudaEventCreate");
  check_cuda(cudaEventCreate(&stop), "cudaEventCreate");
  std::vector<double> per_launch_us;
  try {
    for (int i = 0; i < 3; ++i) launch();  // warm-up: module load, first-touch of the weights
    constexpr int kRepeats = 5;
    for (int repeat = 0; repeat < kRepeats; ++repeat) {
      check_cuda(cudaEventRecord(start, stream), "cudaEventRecord");
      for (int i = 0; i < iterations; ++i) launch();
      check_cuda(cudaEventRecord(stop, stream), "cudaEventRecord");
      check_cuda(cudaEventSynchronize(stop), "cudaEventSynchronize");
      float elapsed_ms = 0.0f;
      check_cuda(cudaEventElapsedTime(&elapsed_ms, start, stop), "cudaEventElapsedTime");
      per_launch_us.push_back(1000.0 * static_cast<double>(elapsed_ms) / iterations);
    }
  } catch (...) {
    static_cast<void>(cudaEventDestroy(start));
    static_cast<void>(cudaEventDestroy(stop));
    if (exec != nullptr) static_cast<void>(cudaGraphExecDestroy(exec));
    throw;
  }
  static_cast<void>(cudaEventDestroy(start));
  static_cast<void>(cudaEventDestroy(stop));
  if (exec != nullptr) static_cast<void>(cudaGraphExecDestroy(exec));
  impl.release(std::move(context));
  std::sort(per_launch_us.begin(), per_launch_us.end());
  return per_launch_us[per_launch_us.size() / 2];
}

std::shared_ptr<CudaMlp> CudaMlp::load(const std::string& path, CudaMlpOptions options) {
  return std::make_shared<CudaMlp>(quant::Int8ModelFile::read(path), options);
}

std::size_t CudaMlp::input_size() const noexcept { return impl_->input_size; }
std::size_t CudaMlp::output_size() const noexcept { return impl_->output_size; }
std::size_t CudaMlp::layer_count() const noexcept { return impl_->layer_count; }
const quant::TensorMetadata& CudaMlp::input() const noexcept { return impl_->input; }
const quant::TensorMetadata& CudaMlp::output() const noexcept { return impl_->output; }
int CudaMlp::device() const noexcept { return impl_->device; }
int CudaMlp::cluster_size() const noexcept { return impl_->cluster_size; }
std::size_t CudaMlp::shared_memory_bytes() const noexcept { return impl_->shared_bytes; }

}  // namespace headrace::cuda
