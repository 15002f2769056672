// Status codes that cross the C++/Python boundary. The values are gRPC's canonical codes, so
// headrace.errors can map them to exceptions and the server to a gRPC status without a table.
//
// Ownership/threading: plain values, safe to copy between threads.
#pragma once

#include <string>
#include <utility>

namespace headrace {

enum class StatusCode : int {
  kOk = 0,
  kCancelled = 1,
  kUnknown = 2,
  kInvalidArgument = 3,
  kDeadlineExceeded = 4,
  kNotFound = 5,
  kAlreadyExists = 6,
  kResourceExhausted = 8,
  kFailedPrecondition = 9,
  kUnimplemented = 12,
  kInternal = 13,
  kUnavailable = 14,
};

// Thrown by core functions that validate untrusted input. The bindings translate it into
// headrace._core.CoreError(code, message), which headrace.errors turns into a typed exception.
class CoreError : public std::exception {
 public:
  CoreError(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}
  StatusCode code() const noexcept { return code_; }
  const char* what() const noexcept override { return message_.c_str(); }
  const std::string& message() const noexcept { return message_; }

 private:
  StatusCode code_;
  std::string message_;
};

// The one way core and bindings refuse bad input: CoreError(kInvalidArgument, message).
[[noreturn]] inline void throw_invalid_argument(std::string message) {
  throw CoreError(StatusCode::kInvalidArgument, std::move(message));
}

}  // namespace headrace
