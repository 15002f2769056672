// The queued requests of one Batcher: one FIFO per priority level, plus the interning of shape
// signatures into the small keys the policy compares.
//
// Threading: not synchronized; the Batcher calls every method under its mutex. Removal hands the
// requests back (unique_ptr) so that the caller can drop them -- and their input owners, which
// may take the GIL -- after releasing that mutex.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "batching/batching_policy.h"
#include "batching/request.h"

namespace headrace::batching {

class RequestQueue {
 public:
  explicit RequestQueue(std::size_t levels);

  std::size_t size() const noexcept { return size_; }
  bool empty() const noexcept { return size_ == 0; }
  // Rows queued at `level` or a higher priority (a lower index): what runs before a new request
  // of that level. O(levels).
  std::int64_t rows_at_or_above(std::size_t level) const noexcept;

  // Takes ownership. The request's level must be < levels; its shape_key is assigned here.
  void push(std::unique_ptr<Request> request);

  // Every queued request in priority order (level, then arrival), written over `view`.
  void snapshot(std::vector<QueuedRequest>& view) const;

  // Removes the requests at `indices` of the latest snapshot (no push or removal since), returned
  // in the order of `indices`.
  std::vector<std::unique_ptr<Request>> take(std::span<const std::size_t> indices);

  // Removes one request by ticket; nullptr when it is not queued.
  std::unique_ptr<Request> remove(std::uint64_t ticket);

  // Removes everything, in priority order.
  std::vector<std::unique_ptr<Request>> take_all();

  // Distinct shape signatures currently queued (for tests of the interning).
  std::size_t signature_count() const noexcept { return signatures_.size(); }

 private:
  struct Signature {
    std::uint64_t key;
    std::size_t queued;
  };
  static std::string signature_of(const Request& request);
  void forget_signature(const Request& request);

  void count_out(const Request& request) noexcept;

  std::vector<std::deque<std::unique_ptr<Request>>> levels_;
  std::vector<std::int64_t> level_rows_;  // rows queued per level
  std::unordered_map<std::string, Signature> signatures_;
  std::unordered_map<std::uint64_t, std::string> signature_by_key_;
  std::uint64_t next_key_ = 1;
  std::size_t size_ = 0;
};

}  // namespace headrace::batching
