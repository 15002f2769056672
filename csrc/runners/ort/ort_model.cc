#include "runners/ort/ort_model.h"

#include <dlfcn.h>

#include <map>
#include <mutex>
#include <utility>

#include "common/status.h"

namespace headrace::runners::ort {
namespace {


// ONNX Runtime's element types that map to a v2 datatype (fixed-size ones only).
bool to_datatype(int element_type, DataType* out) noexcept {
  switch (element_type) {
    case kElementFloat: *out = DataType::kFp32; return true;
    case kElementUint8: *out = DataType::kUint8; return true;
    case kElementInt8: *out = DataType::kInt8; return true;
    case kElementUint16: *out = DataType::kUint16; return true;
    case kElementInt16: *out = DataType::kInt16; return true;
    case kElementInt32: *out = DataType::kInt32; return true;
    case kElementInt64: *out = DataType::kInt64; return true;
    case kElementBool: *out = DataType::kBool; return true;
    case kElementFloat16: *out = DataType::kFp16; return true;
    case kElementDouble: *out = DataType::kFp64; return true;
    case kElementUint32: *out = DataType::kUint32; return true;
    case kElementUint64: *out = DataType::kUint64; return true;
    case kElementBfloat16: *out = DataType::kBf16; return true;
    default: return false;
  }
}

// ORT_ENABLE_ALL, as the Python API's default.
constexpr int kGraphOptimizationAll = 99;
// Errors reach the caller as CoreErrors; ONNX Runtime's own logging would only repeat them.
constexpr int kSessionLogSeverityFatal = 4;

}  // namespace

std::shared_ptr<const OrtLibrary> OrtLibrary::open(const std::string& path) {
  static std::mutex mutex;
  static std::map<std::string, std::shared_ptr<const OrtLibrary>> loaded;
  std::lock_guard<std::mutex> lock(mutex);
  auto found = loaded.find(path);
  if (found != loaded.end()) return found->second;

  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* error = dlerror();
    throw CoreError(StatusCode::kUnavailable, "cannot load ONNX Runtime from " + path + ": " +
                                                  (error != nullptr ? error : "unknown error"));
  }
  auto get_base = reinterpret_cast<GetApiBaseFn>(dlsym(handle, "OrtGetApiBase"));
  const OrtApiBase* base = get_base != nullptr ? get_base() : nullptr;
  if (base == nullptr) {
    throw CoreError(StatusCode::kUnavailable, path + " is not an ONNX Runtime library");
  }
  const char* release = base->GetVersionString != nullptr ? base->GetVersionString() : nullptr;
  const std::string version = release != nullptr ? release : "of unknown version";
  const void* table = base->GetApi(kApiVersion);
  if (table == nullptr) {
    throw CoreError(StatusCode::kUnavailable,
                    "ONNX Runtime " + version + " (" + path + ") does not provide C API version " +
                        std::to_string(kApiVersion) +
                        ", which headrace's native runner is written against: install "
                        "onnxruntime >= " + kOldestSupportedRelease +
                        " (the oldest release headrace supports)");
  }
  std::shared_ptr<OrtLibrary> library(new OrtLibrary());
  library->table_ = static_cast<const void* const*>(table);
  library->version_ = version;
  library->check(
      library->fn<Fn::CreateEnv, kCreateEnv>()(kLoggingError, "headrace", &library->env_),
      "creating the ONNX Runtime environment");
  library->check(library->fn<Fn::CreateCpuMemoryInfo, kCreateCpuMemoryInfo>()(
                     kDeviceAllocator, kMemTypeDefault, &library->cpu_memory_),
                 "creating ONNX Runtime CPU memory info");
  // Kept (and the library mapped) until exit: see the header.
  loaded.emplace(path, library);
  return library;
}

void OrtLibrary::check(OrtStatus* status, std::string_view what) const {
  if (status == nullptr) return;
  std::string message = fn<Fn::GetErrorMessage, kGetErrorMessage>()(status);
  fn<Fn::Release<OrtStatus>, kReleaseStatus>()(status);
  throw CoreError(StatusCode::kInternal, std::string(what) + ": " + message);
}

namespace {

// Name, element type and shape of input or output `index`.
OrtTensorInfo describe(const OrtLibrary& lib, const OrtSession* session, std::size_t index,
                       bool input, const std::string& model_path) {
  OrtAllocator* allocator = nullptr;
  const auto get_allocator =
      lib.fn<Fn::GetAllocatorWithDefaultOptions, kGetAllocatorWithDefaultOptions>();
  lib.check(get_allocator(&allocator), "getting ONNX Runtime's allocator");
  char* raw_name = nullptr;
  const auto get_name = input ? lib.fn<Fn::SessionGetName, kSessionGetInputName>()
                              : lib.fn<Fn::SessionGetName, kSessionGetOutputName>();
  lib.check(get_name(session, index, allocator, &raw_name), "reading a tensor name");
  OrtTensorInfo info;
  info.name = raw_name;
  lib.check(lib.fn<Fn::AllocatorFree, kAllocatorFree>()(allocator, raw_name), "freeing a name");

  OrtTypeInfo* type_info = nullptr;
  const auto get_type = input ? lib.fn<Fn::SessionGetTypeInfo, kSessionGetInputTypeInfo>()
                              : lib.fn<Fn::SessionGetTypeInfo, kSessionGetOutputTypeInfo>();
  lib.check(get_type(session, index, &type_info), "reading the type of '" + info.name + "'");
  const auto release_type = lib.fn<Fn::Release<OrtTypeInfo>, kReleaseTypeInfo>();
  try {
    int onnx_type = 0;
    const auto get_onnx_type = lib.fn<Fn::GetOnnxTypeFromTypeInfo, kGetOnnxTypeFromTypeInfo>();
    lib.check(get_onnx_type(type_info, &onnx_type), "reading the type of '" + info.name + "'");
    const OrtTensorTypeAndShapeInfo* tensor = nullptr;
    if (onnx_type == kOnnxTypeTensor) {
      const auto as_tensor = lib.fn<Fn::CastTypeInfoToTensorInfo, kCastTypeInfoToTensorInfo>();
      lib.check(as_tensor(type_info, &tensor), "reading the type of '" + info.name + "'");
    }
    if (tensor == nullptr) {
      throw CoreError(StatusCode::kInvalidArgument,
                      model_path + ": '" + info.name + "' is not a tensor");
    }
    lib.check(lib.fn<Fn::GetTensorElementType, kGetTensorElementType>()(tensor, &info.element_type),
              "reading the element type of '" + info.name + "'");
    if (!to_datatype(info.element_type, &info.dtype)) {
      throw CoreError(StatusCode::kInvalidArgument,
                      model_path + ": '" + info.name + "' has element type " +
                          std::to_string(info.element_type) +
                          ", which the native runner does not take");
    }
    std::size_t rank = 0;
    lib.check(lib.fn<Fn::GetDimensionsCount, kGetDimensionsCount>()(tensor, &rank),
              "reading the shape of '" + info.name + "'");
    info.shape.assign(rank, 0);
    lib.check(lib.fn<Fn::GetDimensions, kGetDimensions>()(tensor, info.shape.data(), rank),
              "reading the shape of '" + info.name + "'");
    for (std::int64_t& dim : info.shape) {
      if (dim < 0) dim = -1;  // symbolic or unknown
    }
  } catch (...) {
    release_type(type_info);
    throw;
  }
  release_type(type_info);
  return info;
}

}  // namespace

OrtModel::OrtModel(std::shared_ptr<const OrtLibrary> library, const std::string& model_path,
                   int intra_op_threads, int inter_op_threads)
    : library_(std::move(library)) {
  const OrtLibrary& lib = *library_;
  OrtSessionOptions* options = nullptr;
  lib.check(lib.fn<Fn::CreateSessionOptions, kCreateSessionOptions>()(&options),
            "creating session options");
  const auto release_options = lib.fn<Fn::Release<OrtSessionOptions>, kReleaseSessionOptions>();
  try {
    lib.check(lib.fn<Fn::SetIntOption, kSetIntraOpNumThreads>()(options, intra_op_threads),
              "setting intra-op threads");
    lib.check(lib.fn<Fn::SetIntOption, kSetInterOpNumThreads>()(options, inter_op_threads),
              "setting inter-op threads");
    lib.check(lib.fn<Fn::SetIntOption, kSetSessionGraphOptimizationLevel>()(options,
                                                                          kGraphOptimizationAll),
              "setting the optimization level");
    lib.check(lib.fn<Fn::SetIntOption, kSetSessionLogSeverityLevel>()(options,
                                                                    kSessionLogSeverityFatal),
              "setting the log level");
    lib.check(lib.fn<Fn::CreateSession, kCreateSession>()(lib.env(), model_path.c_str(), options,
                                                        &session_),
              "loading " + model_path);
  } catch (...) {
    release_options(options);
    throw;
  }
  release_options(options);
  try {
    std::size_t count = 0;
    lib.check(lib.fn<Fn::SessionGetCount, kSessionGetInputCount>()(session_, &count),
              "counting inputs");
    for (std::size_t i = 0; i < count; ++i) {
      inputs_.push_back(describe(lib, session_, i, true, model_path));
    }
    lib.check(lib.fn<Fn::SessionGetCount, kSessionGetOutputCount>()(session_, &count),
              "counting outputs");
    for (std::size_t i = 0; i < count; ++i) {
      outputs_.push_back(describe(lib, session_, i, false, model_path));
    }
  } catch (...) {
    lib.fn<Fn::Release<OrtSession>, kReleaseSession>()(session_);
    throw;
  }
}

OrtModel::~OrtModel() {
  if (session_ != nullptr) library_->fn<Fn::Release<OrtSession>, kReleaseSession>()(session_);
}

std::size_t OrtModel::input_index(std::string_view name) const {
  for (std::size_t i = 0; i < inputs_.size(); ++i) {
    if (inputs_[i].name == name) return i;
  }
  throw CoreError(StatusCode::kInvalidArgument, "the model has no input '" + std::string(name) + "'");
}

std::size_t OrtModel::output_index(std::string_view name) const {
  for (std::size_t i = 0; i < outputs_.size(); ++i) {
    if (outputs_[i].name == name) return i;
  }
  throw CoreError(StatusCode::kInvalidArgument,
                  "the model has no output '" + std::string(name) + "'");
}

std::vector<Tensor> OrtModel::run(const std::vector<Tensor>& inputs,
                                            const std::vector<std::size_t>& input_indices,
                                            const std::vector<std::size_t>& output_indices) const {
  const OrtLibrary& lib = *library_;
  if (inputs.size() != input_indices.size()) {
    throw CoreError(StatusCode::kInternal, "ONNX Runtime runner: " +
                                               std::to_string(inputs.size()) + " inputs for " +
                                               std::to_string(input_indices.size()) + " names");
  }
  const auto release_value = lib.fn<Fn::Release<OrtValue>, kReleaseValue>();
  // Input values wrap the caller's buffers (no copy); released when this frame ends.
  std::vector<OrtValue*> values(inputs.size(), nullptr);
  struct ValuesGuard {
    std::vector<OrtValue*>& values;
    Fn::Release<OrtValue> release;
    ~ValuesGuard() {
      for (OrtValue* value : values) {
        if (value != nullptr) release(value);
      }
    }
  } values_guard{values, release_value};
  std::vector<const char*> input_names(inputs.size());
  for (std::size_t k = 0; k < inputs.size(); ++k) {
    const OrtTensorInfo& info = inputs_.at(input_indices[k]);
    const Tensor& tensor = inputs[k];
    // Same element width is what matters: BF16 arrives as uint16 bit patterns.
    if (tensor.dtype == DataType::kBytes ||
        element_size(tensor.dtype) != element_size(info.dtype)) {
      throw CoreError(StatusCode::kInvalidArgument,
                      "input '" + info.name + "': " +
                          std::string(datatype_name(tensor.dtype)) +
                          " data for a " + std::string(datatype_name(info.dtype)) +
                          " input");
    }
    input_names[k] = info.name.c_str();
    // ONNX Runtime takes a non-const pointer but only reads inputs.
    void* data = const_cast<std::uint8_t*>(tensor.data.get());
    lib.check(lib.fn<Fn::CreateTensorWithDataAsOrtValue, kCreateTensorWithDataAsOrtValue>()(
                  lib.cpu_memory(), data, tensor.byte_size, tensor.shape.data(),
                  tensor.shape.size(), info.element_type, &values[k]),
              "input '" + info.name + "'");
  }
  std::vector<const char*> output_names(output_indices.size());
  for (std::size_t k = 0; k < output_indices.size(); ++k) {
    output_names[k] = outputs_.at(output_indices[k]).name.c_str();
  }
  std::vector<OrtValue*> results(output_indices.size(), nullptr);
  OrtStatus* status = lib.fn<Fn::Run, kRun>()(session_, nullptr, input_names.data(),
                                            values.data(), values.size(), output_names.data(),
                                            output_names.size(), results.data());
  // Each result is owned from here on, also when a later one fails to convert.
  std::vector<std::shared_ptr<OrtValue>> owned;
  owned.reserve(results.size());
  auto library = library_;
  for (OrtValue* result : results) {
    owned.emplace_back(result, [library, release_value](OrtValue* value) {
      if (value != nullptr) release_value(value);
    });
  }
  lib.check(status, "model runtime error");

  std::vector<Tensor> outputs;
  outputs.reserve(owned.size());
  for (std::size_t k = 0; k < owned.size(); ++k) {
    OrtValue* value = owned[k].get();
    const std::string& name = outputs_[output_indices[k]].name;
    if (value == nullptr) {
      throw CoreError(StatusCode::kInternal, "ONNX Runtime returned no value for '" + name + "'");
    }
    OrtTensorTypeAndShapeInfo* shape_info = nullptr;
    lib.check(lib.fn<Fn::GetTensorTypeAndShape, kGetTensorTypeAndShape>()(value, &shape_info),
              "output '" + name + "'");
    Tensor tensor;
    int element_type = 0;
    std::size_t rank = 0;
    OrtStatus* failed =
        lib.fn<Fn::GetTensorElementType, kGetTensorElementType>()(shape_info, &element_type);
    if (failed == nullptr) {
      failed = lib.fn<Fn::GetDimensionsCount, kGetDimensionsCount>()(shape_info, &rank);
    }
    if (failed == nullptr) {
      tensor.shape.assign(rank, 0);
      failed = lib.fn<Fn::GetDimensions, kGetDimensions>()(shape_info, tensor.shape.data(), rank);
    }
    lib.fn<Fn::Release<OrtTensorTypeAndShapeInfo>, kReleaseTensorTypeAndShapeInfo>()(shape_info);
    lib.check(failed, "output '" + name + "'");
    if (!to_datatype(element_type, &tensor.dtype)) {
      throw CoreError(StatusCode::kInternal, "output '" + name + "' has element type " +
                                                 std::to_string(element_type) +
                                                 ", which the native runner does not take");
    }
    std::uint64_t count = 1;
    for (const std::int64_t dim : tensor.shape) count *= static_cast<std::uint64_t>(dim);
    tensor.byte_size = static_cast<std::size_t>(count) * element_size(tensor.dtype);
    void* data = nullptr;
    if (count > 0) {
      lib.check(lib.fn<Fn::GetTensorMutableData, kGetTensorMutableData>()(value, &data),
                "output '" + name + "'");
    }
    static const std::uint8_t kEmpty = 0;
    tensor.data = std::shared_ptr<const std::uint8_t>(
        owned[k], data != nullptr ? static_cast<const std::uint8_t*>(data) : &kEmpty);
    outputs.push_back(std::move(tensor));
  }
  return outputs;
}

OrtRunner::OrtRunner(std::shared_ptr<const OrtModel> model,
                     const std::vector<std::string>& input_names,
                     const std::vector<std::string>& output_names)
    : model_(std::move(model)) {
  for (const std::string& name : input_names) input_indices_.push_back(model_->input_index(name));
  for (const std::string& name : output_names) {
    output_indices_.push_back(model_->output_index(name));
  }
  if (input_indices_.size() != model_->inputs().size()) {
    throw CoreError(StatusCode::kInvalidArgument,
                    "the ONNX Runtime runner needs every model input, in some order");
  }
}

std::vector<Tensor> OrtRunner::run(const batching::Batch& batch) {
  return model_->run(batch.inputs, input_indices_, output_indices_);
}

}  // namespace headrace::runners::ort
