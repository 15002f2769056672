// ONNX Runtime models run from C++: a batch goes from the batcher's buffers into ONNX Runtime and
// back without Python or the GIL.
//
// OrtLibrary loads libonnxruntime (the copy inside the onnxruntime wheel; its path comes from
// Python) once per process and holds the C API table, one OrtEnv and the CPU memory info.
// OrtModel is one inference session; OrtRunner adapts it to the batcher's Runner interface with
// the input/output order the engine uses.
//
// Ownership: the library and its env live until the process exits (never unloaded: sessions,
// thread pools and static destructors of ONNX Runtime must not outlive the code they run).
// OrtModel owns its session and is shared (shared_ptr) by the runner and the Python object.
// Output tensors own their OrtValue: the tensor's shared owner releases it, so outputs reach the
// callers without a copy.
//
// Threading: every method is const after construction and safe from any thread; ONNX Runtime
// allows concurrent Run calls on one session. Errors are CoreError (INTERNAL for what ONNX
// Runtime reports, INVALID_ARGUMENT for a mismatched input).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "batching/runner.h"
#include "common/tensor.h"
#include "runners/ort/ort_api.h"

namespace headrace::runners::ort {

class OrtLibrary {
 public:
  // The process-wide instance for `path` (loaded on first use). Throws CoreError(kUnavailable)
  // when the file cannot be loaded, is not ONNX Runtime, or does not provide C API version
  // kApiVersion (the message then names kOldestSupportedRelease).
  static std::shared_ptr<const OrtLibrary> open(const std::string& path);

  // The function in slot S of the table, as type F. A slot beyond the block of the C API
  // version requested does not compile (see kApiVersion).
  template <typename F, Slot S>
  F fn() const noexcept {
    static_assert(S <= kLastSlotOfApiVersion,
                  "slot outside the requested ONNX Runtime C API version: raise kApiVersion");
    return reinterpret_cast<F>(const_cast<void*>(table_[S]));
  }
  // Throws CoreError(kInternal) "<what>: <ONNX Runtime's message>" when `status` is an error,
  // releasing it either way.
  void check(OrtStatus* status, std::string_view what) const;

  // The loaded library's release, as its GetVersionString() says ("1.20.1").
  const std::string& version() const noexcept { return version_; }
  OrtEnv* env() const noexcept { return env_; }
  const OrtMemoryInfo* cpu_memory() const noexcept { return cpu_memory_; }

 private:
  OrtLibrary() = default;

  const void* const* table_ = nullptr;
  std::string version_;
  OrtEnv* env_ = nullptr;
  OrtMemoryInfo* cpu_memory_ = nullptr;
};

struct OrtTensorInfo {
  std::string name;
  DataType dtype = DataType::kFp32;
  int element_type = kElementUndefined;
  std::vector<std::int64_t> shape;  // -1 for a dynamic or symbolic dim
};

class OrtModel {
 public:
  // Loads `model_path`. Threads as in onnxruntime.SessionOptions (0 = ONNX Runtime's default).
  // Throws CoreError(kInvalidArgument) for a model with an input or output that is not a tensor
  // of a fixed-size element type (string tensors stay on the Python path).
  OrtModel(std::shared_ptr<const OrtLibrary> library, const std::string& model_path,
           int intra_op_threads, int inter_op_threads);
  ~OrtModel();
  OrtModel(const OrtModel&) = delete;
  OrtModel& operator=(const OrtModel&) = delete;

  const std::vector<OrtTensorInfo>& inputs() const noexcept { return inputs_; }
  const std::vector<OrtTensorInfo>& outputs() const noexcept { return outputs_; }
  const OrtLibrary& library() const noexcept { return *library_; }

  // Index of a named input / output; throws CoreError(kInvalidArgument) naming it when absent.
  std::size_t input_index(std::string_view name) const;
  std::size_t output_index(std::string_view name) const;

  // Runs the session: `inputs[k]` feeds input `input_indices[k]` (its bytes are read, never
  // written, and must outlive the call); returns outputs `output_indices` in that order.
  std::vector<Tensor> run(const std::vector<Tensor>& inputs,
                                    const std::vector<std::size_t>& input_indices,
                                    const std::vector<std::size_t>& output_indices) const;

 private:
  std::shared_ptr<const OrtLibrary> library_;
  OrtSession* session_ = nullptr;
  std::vector<OrtTensorInfo> inputs_;
  std::vector<OrtTensorInfo> outputs_;
};

// The batcher's runner for an OrtModel: batch inputs arrive in the engine's input order and the
// outputs leave in the engine's output order (which model.toml may set), mapped to session
// indices once here.
class OrtRunner final : public batching::Runner {
 public:
  OrtRunner(std::shared_ptr<const OrtModel> model, const std::vector<std::string>& input_names,
            const std::vector<std::string>& output_names);

  std::vector<Tensor> run(const batching::Batch& batch) override;

 private:
  std::shared_ptr<const OrtModel> model_;
  std::vector<std::size_t> input_indices_;
  std::vector<std::size_t> output_indices_;
};

}  // namespace headrace::runners::ort
