// Names the calling thread, so that `top -H`, `ps -L` and profilers tell the core's threads from
// the rest of the process (all "python" otherwise). Linux allows 15 characters; elsewhere a no-op.
//
// Threading: affects only the calling thread.
#pragma once

#if defined(__linux__)
#include <pthread.h>
#endif

namespace headrace {

inline void name_this_thread(const char* name) noexcept {
#if defined(__linux__)
  pthread_setname_np(pthread_self(), name);
#else
  (void)name;
#endif
}

}  // namespace headrace
