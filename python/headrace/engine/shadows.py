"""Shadow copies on the engine: what the routing package's mirror calls (``ShadowHooks``).

Shadows yield to clients, and the strongest form of yielding is the operating system's: a shadow
copy's model runs on a thread of its own that the kernel schedules only when no other thread of
the machine wants the CPU (Linux ``SCHED_IDLE``; nice 19 where that is refused). A shadow
therefore takes idle CPU only: it never delays a client's batch, however slow the shadow model,
while the mirror's own rules (``primary_busy``, the time budget, the bounded queue) decide how
many copies are tried at all. Before this, shadow batches went through the model's batcher at its
lowest priority, which orders the queue but not the CPU: a shadow batch already running on a
worker thread competed with the next client batch for the core (seen as the primary's p99
rising with a full shadow at c=32).

The copy runs the shadow version's model directly (``ModelVersion.run_copy``: no batcher queue;
the mirror has already coalesced copies into one call). A features model, whose inputs are
assembled on its own loop, keeps the batcher path. The lease on the shadow version is released
by the thread that ran it, after the run, so a version is never closed under a copy still
running, even when the awaiting task was cancelled.

Threads: ``call`` runs on the mirror's event loop; runs happen on the idle threads; ``busy`` and
``rows`` are read-only lookups.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy.typing as npt

from headrace.engine.lookup import lease_version, served_version
from headrace.engine.routed import ShadowHooks
from headrace.errors import NotFoundError
from headrace.registry.manager import ModelManager, ServedVersion
from headrace.routing import Route
from headrace.thread_policy import start_helper_thread
from headrace.types import InputTensor

log = logging.getLogger(__name__)
_T = TypeVar("_T")

# Idle threads for shadow runs: one per CPU up to this many (ONNX Runtime runs a call on the
# calling thread with the default intra_op_threads=1, so a thread is a core's worth of work).
MAX_IDLE_THREADS = 4


class IdleThreads:
    """A thread pool for shadow runs, which run their compute at idle priority
    (``ModelVersion.run_copy``, ``thread_policy.run_at_idle_priority``)."""

    def __init__(self, threads: int | None = None, name: str = "headrace-shadow") -> None:
        count = threads if threads is not None else min(MAX_IDLE_THREADS, os.cpu_count() or 1)
        self._executor = ThreadPoolExecutor(
            max_workers=max(1, count), thread_name_prefix=name, initializer=start_helper_thread
        )

    def submit(self, function: Callable[..., _T], *args: Any) -> asyncio.Future[_T]:
        """Run ``function(*args)`` on an idle thread; a future of the running loop."""
        return asyncio.wrap_future(self._executor.submit(function, *args))

    def close(self) -> None:
        """Start nothing more; runs under way finish on their own (their leases keep their
        versions open until then)."""
        self._executor.shutdown(wait=False, cancel_futures=True)


class EngineShadows:
    """The engine's side of shadow mirroring: run a copy, say whether the primary is busy,
    bound a coalesced call's rows."""

    def __init__(self, models: ModelManager, threads: int | None = None) -> None:
        self._models = models
        self._threads_wanted = threads
        self._idle: IdleThreads | None = None
        self._idle_lock = threading.Lock()

    def hooks(self) -> ShadowHooks:
        return ShadowHooks(self.call, self.busy, self.rows)

    @property
    def idle(self) -> IdleThreads:
        """The idle threads, started on the first shadow copy (most engines have no shadow)."""
        idle = self._idle
        if idle is None:
            with self._idle_lock:
                idle = self._idle
                if idle is None:
                    idle = self._idle = IdleThreads(self._threads_wanted)
        return idle

    async def call(
        self, model: str, version: str, inputs: Mapping[str, InputTensor]
    ) -> Mapping[str, npt.NDArray[Any]]:
        """A shadow copy: the model itself, unrouted and uncounted as a client request, on an
        idle-priority thread, answered with the CPU time it took (a features model: through
        its batcher at the lowest priority, never inline on the event loop)."""
        leased: ServedVersion | None = lease_version(self._models, model, version or None, False)
        assert leased is not None
        try:
            served = leased.version
            names = served.validator.check(inputs, None)
            if served.features is None:
                future = self.idle.submit(_run_leased, leased, inputs, names)
                leased = None  # the idle thread releases it once the run is over
                return await future
            priority = served.config.batching.priority_levels
            return await served.infer_async(inputs, names, priority, inline=False)
        finally:
            if leased is not None:
                leased.lease.release(client=False)

    def busy(self, route: Route) -> bool:
        """Shadows yield to clients: a copy goes out only while the version that answered has
        an idle instance (fewer client requests in flight than instances)."""
        try:
            served = served_version(self._models, route.model, route.version or None)
        except NotFoundError:
            return False
        return served.lease.clients >= max(1, served.version.config.instances)

    def rows(self, model: str, version: str) -> int:
        """The most rows one (coalesced) shadow call may take: the shadow's batch size."""
        try:
            return max(
                1, served_version(self._models, model, version or None).version.max_batch_size
            )
        except NotFoundError:
            return 1

    def close(self) -> None:
        if self._idle is not None:
            self._idle.close()


class CopyAnswer(dict[str, Any]):
    """A shadow copy's outputs and the CPU time its run took on its idle thread (``cost_ns``:
    what the mirror charges against the shadows' share, rather than the wall time an idle
    thread spends waiting for a free CPU)."""

    cost_ns: int = 0


def _run_leased(
    leased: ServedVersion, inputs: Mapping[str, InputTensor], names: list[str]
) -> CopyAnswer:
    try:
        started_ns = time.thread_time_ns()
        answer = CopyAnswer(leased.version.run_copy(inputs, names, idle=True))
        answer.cost_ns = time.thread_time_ns() - started_ns
        return answer
    finally:
        leased.lease.release(client=False)
