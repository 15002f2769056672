// The part of ONNX Runtime's C API that headrace calls, declared from its published ABI.
//
// Why not the vendor header: the onnxruntime wheel ships libonnxruntime.so but no headers, and
// builds here reach only PyPI and Debian. The C ABI is stable by contract: OrtGetApiBase() is the
// one exported symbol, and GetApi(version) returns a table of function pointers in which each
// API version's block is frozen once released (later versions only append). So the table is
// declared as slots, each function we call named by its fixed slot number, and we ask GetApi for
// the version whose block holds the newest slot we call (kApiVersion, checked at compile time
// below): a library that cannot provide it answers null and is refused with a clear error.
// Element-type and enum values are those of the C API (the element types are ONNX's
// TensorProto.DataType numbers).
//
// Threading: the table is immutable; the functions are as thread-safe as ONNX Runtime documents
// (Run on one session may be called from several threads at once).
#pragma once

#include <cstddef>
#include <cstdint>

namespace headrace::runners::ort {

// Opaque ONNX Runtime objects.
struct OrtEnv;
struct OrtStatus;
struct OrtSessionOptions;
struct OrtSession;
struct OrtRunOptions;
struct OrtValue;
struct OrtMemoryInfo;
struct OrtTypeInfo;
struct OrtTensorTypeAndShapeInfo;
struct OrtAllocator;

// ONNXTensorElementDataType.
enum ElementType : int {
  kElementUndefined = 0,
  kElementFloat = 1,
  kElementUint8 = 2,
  kElementInt8 = 3,
  kElementUint16 = 4,
  kElementInt16 = 5,
  kElementInt32 = 6,
  kElementInt64 = 7,
  kElementString = 8,
  kElementBool = 9,
  kElementFloat16 = 10,
  kElementDouble = 11,
  kElementUint32 = 12,
  kElementUint64 = 13,
  kElementBfloat16 = 16,
};

// ONNXType.
enum OnnxType : int { kOnnxTypeTensor = 1 };
// OrtLoggingLevel.
enum LoggingLevel : int { kLoggingWarning = 2, kLoggingError = 3, kLoggingFatal = 4 };
// OrtAllocatorType and OrtMemType.
enum AllocatorType : int { kDeviceAllocator = 0, kArenaAllocator = 1 };
enum MemType : int { kMemTypeDefault = 0 };

// The C API version headrace asks GetApi for (ORT_API_VERSION in onnxruntime_c_api.h): the
// version whose block holds the newest slot in `Slot` below. Every slot we call is in the
// version-1 block, slots 0..101 (ONNX Runtime pins that block's end with a
// static_assert on offsetof(OrtApi, ReleaseCustomOpDomain) in onnxruntime_c_api.cc). Calling a
// newer slot means raising kApiVersion to the version that added it and kLastSlotOfApiVersion to
// that version's last slot; OrtLibrary::fn refuses (at compile time) a slot beyond it.
inline constexpr std::uint32_t kApiVersion = 1;
inline constexpr std::size_t kLastSlotOfApiVersion = 101;  // ReleaseCustomOpDomain
// The oldest onnxruntime release headrace supports (pyproject.toml: onnxruntime>=1.18), named in
// the error for a library that does not provide kApiVersion.
inline constexpr const char* kOldestSupportedRelease = "1.18";

struct OrtApiBase {
  const void* (*GetApi)(std::uint32_t version);
  const char* (*GetVersionString)();
};
using GetApiBaseFn = const OrtApiBase* (*)();

// Slot numbers in the OrtApi table, checked against onnxruntime_c_api.h's struct OrtApi.
enum Slot : std::size_t {
  kGetErrorCode = 1,
  kGetErrorMessage = 2,
  kCreateEnv = 3,
  kCreateSession = 7,
  kRun = 9,
  kCreateSessionOptions = 10,
  kSetSessionLogSeverityLevel = 22,
  kSetSessionGraphOptimizationLevel = 23,
  kSetIntraOpNumThreads = 24,
  kSetInterOpNumThreads = 25,
  kSessionGetInputCount = 30,
  kSessionGetOutputCount = 31,
  kSessionGetInputTypeInfo = 33,
  kSessionGetOutputTypeInfo = 34,
  kSessionGetInputName = 36,
  kSessionGetOutputName = 37,
  kCreateTensorWithDataAsOrtValue = 49,
  kGetTensorMutableData = 51,
  kCastTypeInfoToTensorInfo = 55,
  kGetOnnxTypeFromTypeInfo = 56,
  kGetTensorElementType = 60,
  kGetDimensionsCount = 61,
  kGetDimensions = 62,
  kGetTensorTypeAndShape = 65,
  kCreateCpuMemoryInfo = 69,
  kAllocatorFree = 76,
  kGetAllocatorWithDefaultOptions = 78,
  kReleaseEnv = 92,
  kReleaseStatus = 93,
  kReleaseMemoryInfo = 94,
  kReleaseSession = 95,
  kReleaseValue = 96,
  kReleaseTypeInfo = 98,
  kReleaseTensorTypeAndShapeInfo = 99,
  kReleaseSessionOptions = 100,
};

// Signatures of the slots used (cdecl on every platform headrace builds for).
struct Fn {
  using GetErrorCode = int (*)(const OrtStatus*);
  using GetErrorMessage = const char* (*)(const OrtStatus*);
  using CreateEnv = OrtStatus* (*)(int logging_level, const char* logid, OrtEnv** out);
  using CreateSession = OrtStatus* (*)(const OrtEnv*, const char* model_path,
                                       const OrtSessionOptions*, OrtSession** out);
  using Run = OrtStatus* (*)(OrtSession*, const OrtRunOptions*, const char* const* input_names,
                             const OrtValue* const* inputs, std::size_t input_count,
                             const char* const* output_names, std::size_t output_count,
                             OrtValue** outputs);
  using CreateSessionOptions = OrtStatus* (*)(OrtSessionOptions** out);
  using SetIntOption = OrtStatus* (*)(OrtSessionOptions*, int value);
  using SessionGetCount = OrtStatus* (*)(const OrtSession*, std::size_t* out);
  using SessionGetTypeInfo = OrtStatus* (*)(const OrtSession*, std::size_t index,
                                            OrtTypeInfo** out);
  using SessionGetName = OrtStatus* (*)(const OrtSession*, std::size_t index, OrtAllocator*,
                                        char** out);
  using CreateTensorWithDataAsOrtValue =
      OrtStatus* (*)(const OrtMemoryInfo*, void* data, std::size_t data_bytes,
                     const std::int64_t* shape, std::size_t shape_len, int element_type,
                     OrtValue** out);
  using GetTensorMutableData = OrtStatus* (*)(OrtValue*, void** out);
  using CastTypeInfoToTensorInfo = OrtStatus* (*)(const OrtTypeInfo*,
                                                  const OrtTensorTypeAndShapeInfo** out);
  using GetOnnxTypeFromTypeInfo = OrtStatus* (*)(const OrtTypeInfo*, int* out);
  using GetTensorElementType = OrtStatus* (*)(const OrtTensorTypeAndShapeInfo*, int* out);
  using GetDimensionsCount = OrtStatus* (*)(const OrtTensorTypeAndShapeInfo*, std::size_t* out);
  using GetDimensions = OrtStatus* (*)(const OrtTensorTypeAndShapeInfo*, std::int64_t* dims,
                                       std::size_t count);
  using GetTensorTypeAndShape = OrtStatus* (*)(const OrtValue*, OrtTensorTypeAndShapeInfo** out);
  using CreateCpuMemoryInfo = OrtStatus* (*)(int allocator_type, int mem_type,
                                             OrtMemoryInfo** out);
  using AllocatorFree = OrtStatus* (*)(OrtAllocator*, void* pointer);
  using GetAllocatorWithDefaultOptions = OrtStatus* (*)(OrtAllocator** out);
  template <typename T>
  using Release = void (*)(T*);
};

}  // namespace headrace::runners::ort
