#include "batching/request_queue.h"

#include <algorithm>
#include <utility>

namespace headrace::batching {

RequestQueue::RequestQueue(std::size_t levels)
    : levels_(levels == 0 ? 1 : levels), level_rows_(levels_.size(), 0) {}

std::int64_t RequestQueue::rows_at_or_above(std::size_t level) const noexcept {
  std::int64_t rows = 0;
  for (std::size_t l = 0; l <= level && l < level_rows_.size(); ++l) rows += level_rows_[l];
  return rows;
}

void RequestQueue::count_out(const Request& request) noexcept {
  level_rows_[request.level] -= request.rows;
  --size_;
}

std::string RequestQueue::signature_of(const Request& request) {
  // Inputs, dtypes and every non-batch dim: requests that differ in any of them cannot share a
  // contiguous batch buffer.
  std::string signature;
  signature.reserve(8 + request.inputs.size() * 24);
  const auto append = [&signature](std::int64_t value) {
    signature.append(reinterpret_cast<const char*>(&value), sizeof(value));
  };
  append(static_cast<std::int64_t>(request.inputs.size()));
  for (const Tensor& input : request.inputs) {
    append(static_cast<std::int64_t>(input.dtype));
    append(static_cast<std::int64_t>(input.shape.size()));
    for (std::size_t d = 1; d < input.shape.size(); ++d) append(input.shape[d]);
  }
  return signature;
}

void RequestQueue::push(std::unique_ptr<Request> request) {
  std::string signature = signature_of(*request);
  auto found = signatures_.find(signature);
  if (found == signatures_.end()) {
    const std::uint64_t key = next_key_++;
    signature_by_key_.emplace(key, signature);
    found = signatures_.emplace(std::move(signature), Signature{key, 0}).first;
  }
  ++found->second.queued;
  request->shape_key = found->second.key;
  level_rows_.at(request->level) += request->rows;
  levels_.at(request->level).push_back(std::move(request));
  ++size_;
}

void RequestQueue::forget_signature(const Request& request) {
  const auto by_key = signature_by_key_.find(request.shape_key);
  if (by_key == signature_by_key_.end()) return;
  const auto found = signatures_.find(by_key->second);
  if (found != signatures_.end() && --found->second.queued == 0) {
    // Keys of shapes no longer queued are dropped, so a stream of distinct shapes cannot grow
    // the map without bound.
    signatures_.erase(found);
    signature_by_key_.erase(by_key);
  }
}

void RequestQueue::snapshot(std::vector<QueuedRequest>& view) const {
  view.clear();
  view.reserve(size_);
  for (const auto& level : levels_) {
    for (const auto& request : level) {
      view.push_back(QueuedRequest{request->ticket, request->rows, request->level,
                                   request->enqueue_ns, request->deadline_ns,
                                   request->shape_key});
    }
  }
}

std::vector<std::unique_ptr<Request>> RequestQueue::take(std::span<const std::size_t> indices) {
  std::vector<std::size_t> starts(levels_.size() + 1, 0);
  for (std::size_t l = 0; l < levels_.size(); ++l) starts[l + 1] = starts[l] + levels_[l].size();
  std::vector<std::unique_ptr<Request>> taken;
  taken.reserve(indices.size());
  for (const std::size_t index : indices) {
    const auto level = static_cast<std::size_t>(
        std::upper_bound(starts.begin(), starts.end(), index) - starts.begin() - 1);
    std::unique_ptr<Request>& slot = levels_.at(level).at(index - starts[level]);
    if (!slot) continue;  // the same index twice: take it once
    forget_signature(*slot);
    count_out(*slot);
    taken.push_back(std::move(slot));
  }
  for (auto& level : levels_) {
    level.erase(std::remove(level.begin(), level.end(), nullptr), level.end());
  }
  return taken;
}

std::unique_ptr<Request> RequestQueue::remove(std::uint64_t ticket) {
  for (auto& level : levels_) {
    const auto found = std::find_if(level.begin(), level.end(),
                                    [ticket](const auto& request) { return request->ticket == ticket; });
    if (found == level.end()) continue;
    std::unique_ptr<Request> request = std::move(*found);
    level.erase(found);
    forget_signature(*request);
    count_out(*request);
    return request;
  }
  return nullptr;
}

std::vector<std::unique_ptr<Request>> RequestQueue::take_all() {
  std::vector<std::unique_ptr<Request>> taken;
  taken.reserve(size_);
  for (auto& level : levels_) {
    for (auto& request : level) taken.push_back(std::move(request));
    level.clear();
  }
  signatures_.clear();
  signature_by_key_.clear();
  std::fill(level_rows_.begin(), level_rows_.end(), 0);
  size_ = 0;
  return taken;
}

}  // namespace headrace::batching
