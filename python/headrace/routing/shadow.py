"""Shadow mirroring: after the primary has answered, copies of sampled requests go to the
endpoint's shadows, and what they answer is compared with what the primary answered.

:meth:`ShadowMirror.offer` never waits: it puts the copy on a bounded asyncio queue, and when the
queue is full the copy is dropped and counted. Worker tasks take copies off the queue and call the
injected ``call(model, version, inputs)`` (the engine's own inference), so a slow or failing
shadow costs the primary path one ``put_nowait`` per copy and nothing else.

Comparison per shadow (see :class:`~headrace.routing.stats.ShadowStats`): a classifier's answers
agree when their argmax agree on every row; other answers agree when every element's |Δ| is
within the shadow's ``tolerance``. The largest |Δ| of each request goes to a histogram.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import numpy as np

from headrace.routing.config import QualityConfig
from headrace.routing.runtime import Route, ShadowTarget

log = logging.getLogger(__name__)

ShadowCall = Callable[[str, str, Mapping[str, Any]], Awaitable[Mapping[str, Any]]]

# Copies waiting for a shadow: beyond this, new copies are dropped (and counted) rather than
# holding more requests' inputs in memory while a shadow falls behind.
DEFAULT_QUEUE_SIZE = 1024
DEFAULT_WORKERS = 4

_Item = tuple[ShadowTarget, QualityConfig, Mapping[str, Any], Mapping[str, Any]]


def compare(
    quality: QualityConfig,
    tolerance: float,
    primary: Mapping[str, Any],
    shadow: Mapping[str, Any],
) -> tuple[bool, float] | None:
    """(agreed, largest |Δ|) over the compared outputs; None when they cannot be compared
    (an output missing from the shadow's answer or shaped differently)."""
    names = [quality.output] if quality.output else list(primary)
    agreed, largest = True, 0.0
    for name in names:
        if name not in primary or name not in shadow:
            return None
        mine, theirs = np.asarray(primary[name]), np.asarray(shadow[name])
        if mine.shape != theirs.shape:
            return None
        if mine.size == 0:
            continue
        if mine.dtype.kind in "biuf" and theirs.dtype.kind in "biuf":
            delta = float(np.max(np.abs(mine.astype(np.float64) - theirs.astype(np.float64))))
            if delta != delta:  # a NaN on either side: as far apart as can be
                delta = float("inf")
        else:  # BYTES and other objects: equal or not
            delta = 0.0 if np.array_equal(mine, theirs) else float("inf")
        largest = max(largest, delta)
        classifier = quality.kind == "classifier" or (
            quality.kind == "auto" and mine.ndim >= 2 and mine.shape[-1] > 1
        )
        if classifier and mine.dtype.kind in "biuf":
            # a NaN or inf score is no answer, whatever argmax makes of it
            same = math.isfinite(delta) and bool(
                np.array_equal(mine.argmax(axis=-1), theirs.argmax(axis=-1))
            )
        else:
            same = delta <= tolerance
        agreed = agreed and same
    return agreed, largest


class ShadowMirror:
    """Sends sampled copies to shadows off the primary path; create and use on one event loop."""

    def __init__(
        self,
        call: ShadowCall,
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        workers: int = DEFAULT_WORKERS,
        seed: int | str | None = None,
        clock_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        if queue_size < 1 or workers < 1:
            raise ValueError("a shadow mirror needs queue_size >= 1 and workers >= 1")
        self._call = call
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=queue_size)
        self._workers_wanted = workers
        self._workers: list[asyncio.Task[None]] = []
        self._random = random.Random(seed).random
        self._clock_ns = clock_ns
        self.in_flight = 0  # shadow calls started and not finished

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        """Start the worker tasks on the running loop."""
        if not self._workers:
            self._workers = [
                asyncio.get_running_loop().create_task(self._work(), name=f"shadow-{i}")
                for i in range(self._workers_wanted)
            ]

    async def stop(self) -> None:
        """Cancel the workers; copies still queued are dropped (a shadow's answer is optional)."""
        workers, self._workers = self._workers, []
        for task in workers:
            task.cancel()
        for task in workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def offer(self, route: Route, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> int:
        """Queue copies of an answered request for its endpoint's shadows; returns how many.

        Call it after the primary's answer is on its way. Never blocks or awaits.
        """
        shadows = route.shadows
        if not shadows:
            return 0
        queued = 0
        quality = route.runtime.config.quality
        for target in shadows:
            if target.sample < 1.0 and self._random() >= target.sample:
                continue
            stats = target.stats
            stats.offered += 1
            try:
                self._queue.put_nowait((target, quality, inputs, outputs))
            except asyncio.QueueFull:
                stats.dropped += 1
            else:
                queued += 1
        return queued

    async def _work(self) -> None:
        queue = self._queue
        while True:
            target, quality, inputs, primary = await queue.get()
            stats = target.stats
            started_ns = self._clock_ns()
            self.in_flight += 1
            try:
                answer = await self._call(target.model, target.version, inputs)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                stats.errors += 1
                log.debug("shadow %s (%s) failed: %s", target.name, target.model, error)
                continue
            finally:
                self.in_flight -= 1
                queue.task_done()
            stats.latency_ns.add(self._clock_ns() - started_ns)
            stats.completed += 1
            compared = compare(quality, target.tolerance, primary, answer)
            if compared is None:
                stats.mismatched += 1
                continue
            agreed, largest = compared
            stats.compared += 1
            stats.agreed += int(agreed)
            stats.abs_delta.add(largest)
