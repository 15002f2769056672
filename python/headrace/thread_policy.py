"""Which thread the CPU goes to first when a core is shared: the event loop.

Every request passes through the one asyncio event-loop thread (parse, route, answer), so on a
server with fewer cores than busy threads that thread is the bottleneck. Under Linux's default
policy (SCHED_OTHER) a thread that wakes up preempts the running one when it has used less CPU,
and the helper threads -- gRPC's event-engine and poller threads, the batcher's scheduler and
workers, the metrics server -- wake several times per request: the loop was preempted about 7
times per request at 32 concurrent callers on one core, ~16 context switches per request in all.

``SCHED_BATCH`` keeps a thread's CPU share (the same weight as nice 0) but a wake-up of it does
not preempt the running thread: it runs when the loop blocks, or at the next tick. The helpers
then do their work in runs instead of interleaving with the loop per request (measured in
bench/README.md: ~16 -> ~4.3 context switches per request, more requests per second). With a
core to spare nothing changes: a woken helper takes the idle core.

``headrace serve`` sets the policy (``set_helper_policy``) before it loads anything, and once the
server has started puts every thread of the process but the loop's under it
(``prefer_event_loop``). Threads started later inherit their creator's policy; those that the
loop's thread itself starts (executor threads: model loads, models without a batch dimension,
shadow copies) set it when they start (``start_helper_thread``, their executors' initializer).
Shadow copies' compute runs in SCHED_IDLE on top of it (``run_at_idle_priority``; from the
core, ``OrtModel.run(idle_priority=True)``, which lowers the thread only while it does not hold
the GIL: common/idle_priority.h). An Engine used
in-process, without the server, leaves every thread as it is. Linux only; elsewhere, or where
the kernel refuses, it is a no-op (logged).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from typing import Literal, TypeVar

log = logging.getLogger(__name__)
_T = TypeVar("_T")

HelperThreadPolicy = Literal["batch", "normal"]

# Set by the server for the whole process; None: nobody asked (in-process use), touch nothing.
_helper_policy: HelperThreadPolicy | None = None


def _policy_number(policy: HelperThreadPolicy) -> int | None:
    number: int | None = getattr(os, "SCHED_BATCH" if policy == "batch" else "SCHED_OTHER", None)
    return number


def _set_thread(tid: int, number: int) -> None:
    # Linux applies a policy per thread: a thread id here is one thread, 0 the calling one.
    os.sched_setscheduler(tid, number, os.sched_param(0))


def calling_thread_policy() -> int | None:
    """The calling thread's scheduling policy (None where it cannot be read)."""
    try:
        return os.sched_getscheduler(0)
    except (AttributeError, OSError):
        return None


def set_helper_policy(policy: HelperThreadPolicy | None) -> None:
    """The policy helper threads started from now on take (``start_helper_thread``)."""
    global _helper_policy
    _helper_policy = policy


def start_helper_thread() -> None:
    """Put the calling thread under the helper policy, if one is set: the initializer of every
    executor whose threads serve the event loop."""
    policy = _helper_policy
    if policy is None:
        return
    number = _policy_number(policy)
    if number is None:
        return
    try:
        _set_thread(0, number)
    except OSError as error:
        log.debug("helper thread policy %r not applied to a new thread: %s", policy, error)


def prefer_event_loop(policy: HelperThreadPolicy) -> int:
    """Set the helper policy, put every thread of this process except the calling one (the
    event loop's) under it and the calling thread under SCHED_OTHER; returns how many threads
    changed. Threads in SCHED_IDLE (shadow compute) or a real-time policy keep theirs."""
    set_helper_policy(policy)
    number = _policy_number(policy)
    normal = _policy_number("normal")
    if number is None or normal is None or not os.path.isdir("/proc/self/task"):
        log.info("helper thread policy %r: not available on this platform", policy)
        return 0
    loop_tid = threading.get_native_id()
    changed = 0
    try:
        _set_thread(0, normal)
        for entry in os.listdir("/proc/self/task"):
            tid = int(entry)
            if tid == loop_tid:
                continue
            try:
                current = os.sched_getscheduler(tid)
                # Only between the two fair policies: SCHED_IDLE and real-time threads keep theirs.
                if current in (normal, number) and current != number:
                    _set_thread(tid, number)
                    changed += 1
            except ProcessLookupError:  # the thread ended meanwhile
                continue
    except OSError as error:
        log.warning("helper thread policy %r not applied: %s", policy, error)
        return changed
    log.info("helper threads: %s (%d set now); the event loop keeps SCHED_OTHER", policy, changed)
    return changed


def lower_thread_priority() -> str:
    """Make the calling thread run only when the CPU is otherwise idle; returns what was set:
    "idle" (SCHED_IDLE), "nice" (nice 19 for this thread) or "" (neither was allowed)."""
    try:
        # pid 0 is the calling thread on Linux: the policy is per thread, not per process
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return "idle"
    except (AttributeError, OSError):
        pass
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        return "nice"
    except (AttributeError, OSError):
        return ""


def restore_thread_priority(lowered: str, policy: int | None = None) -> None:
    """Undo :func:`lower_thread_priority` on the calling thread: back to ``policy`` (what
    :func:`calling_thread_policy` read before; SCHED_OTHER when unknown) after SCHED_IDLE."""
    try:
        if lowered == "idle":
            restored = os.SCHED_OTHER if policy is None else policy
            os.sched_setscheduler(0, restored, os.sched_param(0))
        elif lowered == "nice":
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 0)
    except OSError:  # raising a nice value back needs privileges: stay low
        pass


@contextlib.contextmanager
def idle_priority() -> Iterator[str]:
    """Run the block at idle CPU priority, for a block that spends its time in a native call
    that releases the GIL. The Python around that call still runs at idle priority holding the
    GIL, which the event loop may then wait for behind every busy thread (priority inversion):
    prefer a native call that lowers itself while the GIL is released (``run_at_idle_priority``)."""
    # A helper thread of the server is SCHED_BATCH: it returns to that.
    policy = calling_thread_policy()
    lowered = lower_thread_priority()
    try:
        yield lowered
    finally:
        restore_thread_priority(lowered, policy)


def run_at_idle_priority(
    run: Callable[..., _T], native_idle: Callable[..., _T] | None, *args: object
) -> _T:
    """``native_idle(*args)`` when given: a native call that lowers the calling thread to idle
    priority itself, only while it holds no GIL. Otherwise ``run(*args)`` inside
    :func:`idle_priority`."""
    if native_idle is not None:
        return native_idle(*args)
    with idle_priority():
        return run(*args)
