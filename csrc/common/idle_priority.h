// Runs a stretch of native work at idle CPU priority: while an IdlePriority lives, the calling
// thread is under Linux's SCHED_IDLE (scheduled only when no other thread of the machine wants
// the CPU); its destructor puts back the policy it found. Shadow copies (engine/shadows.py) run
// their model this way, so that a shadow takes idle CPU only.
//
// Why in native code: the thread must not hold the GIL while it is at idle priority. A thread
// that takes the GIL back at idle priority (as Python code lowering itself around a GIL-free
// call does, when that call returns) is kept off a busy CPU while the event loop waits for the
// GIL it holds -- a priority inversion of up to the interpreter's switch interval and more. So
// construct it after releasing the GIL and destroy it before taking the GIL back.
//
// Where SCHED_IDLE is refused (not Linux, or a seccomp profile), it does nothing.
//
// Threading: affects only the calling thread; construct and destroy on the same thread.
#pragma once

#if defined(__linux__)
#include <sched.h>
#endif

namespace headrace {

class IdlePriority {
 public:
  explicit IdlePriority(bool enabled) noexcept {
#if defined(__linux__)
    if (!enabled) return;
    const int policy = sched_getscheduler(0);
    if (policy < 0 || policy == SCHED_IDLE) return;
    sched_param param{};
    if (sched_setscheduler(0, SCHED_IDLE, &param) == 0) previous_policy_ = policy;
#else
    (void)enabled;
#endif
  }
  ~IdlePriority() {
#if defined(__linux__)
    if (previous_policy_ < 0) return;
    sched_param param{};
    // Going back from SCHED_IDLE to SCHED_OTHER or SCHED_BATCH needs no privilege (Linux >=
    // 2.6.39, within RLIMIT_NICE); should it fail, the thread stays low: slower, never wrong.
    sched_setscheduler(0, previous_policy_, &param);
#endif
  }
  IdlePriority(const IdlePriority&) = delete;
  IdlePriority& operator=(const IdlePriority&) = delete;

  // Whether the thread is at idle priority because of this object.
  bool lowered() const noexcept { return previous_policy_ >= 0; }

 private:
  int previous_policy_ = -1;
};

}  // namespace headrace
