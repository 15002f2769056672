"""Shadow mirroring: after the primary has answered, copies of sampled requests go to the
endpoint's shadows, and what they answer is compared with what the primary answered.

Shadow copies are best-effort and yield to client requests. :meth:`ShadowMirror.offer` never
waits: a copy is dropped and counted by reason (``dropped_by``) when the injected ``admit`` says
the primary has no spare capacity (``primary_busy``: the engine's rule, in ``engine/routed.py``),
when shadow calls have used up their share of the time (``over_budget``: a token bucket that
refills at ``budget_share`` of the process's CPU time and is charged each call's duration), or
when the
bounded queue is full (``queue_full``: the shadow fell behind). Worker tasks take
copies off the queue and call the injected ``call(model, version, inputs)`` (the engine's own
inference); copies queued together for the same shadow are coalesced into one call (their rows
concatenated, up to ``max_rows(model, version)`` rows), so a burst of answers costs the event
loop and the shadow's model one call, not one per copy. A slow or failing shadow costs the
primary path one ``put_nowait`` per copy and nothing else.

Comparison per shadow (see :class:`~headrace.routing.stats.ShadowStats`): a classifier's answers
agree when their argmax agree on every row; other answers agree when every element's |Δ| is
within the shadow's ``tolerance``. The largest |Δ| of each request goes to a histogram. The
share of sampled requests the shadow answered (``mirrored``) is reported beside the agreement.
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

# A shadow call: (model, version, inputs) -> outputs. An answer with an int ``cost_ns``
# attribute is charged that (the CPU time it used) against the budget, not its wall duration.
ShadowCall = Callable[[str, str, Mapping[str, Any]], Awaitable[Mapping[str, Any]]]
# The reason to drop a copy of an answered request rather than queue it, or None to admit it.
Admit = Callable[[Route], str | None]
# The most rows one shadow call may take (the shadow model's batch size); 0: no bound.
MaxRows = Callable[[str, str], int]

PRIMARY_BUSY = "primary_busy"
QUEUE_FULL = "queue_full"
OVER_BUDGET = "over_budget"
# What a caller passes as ``refused`` when it has already admitted the copies (no drop reason):
# the mirror then does not ask again, later, on its own thread.
ADMITTED = ""

# Copies waiting for a shadow: beyond this, new copies are dropped (and counted) rather than
# holding more requests' inputs in memory while a shadow falls behind.
DEFAULT_QUEUE_SIZE = 1024
DEFAULT_WORKERS = 4
# Copies a worker takes off the queue at once, to coalesce: more means fewer, larger shadow
# calls, and longer before the last copy of a burst is compared.
MAX_COALESCED_COPIES = 64
# The shadow-time budget's bucket holds at most this much (ns of shadow calls): a burst of copies
# after a quiet spell, against how far shadows may run ahead of their share.
BUDGET_BURST_NS = 20_000_000
# The bucket is refilled at most this often (ns of the monotonic clock): a refill reads the
# process CPU clock. A millisecond is 5 % of the burst, so the bucket lags its share by little.
BUDGET_REFRESH_NS = 1_000_000

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
        admit: Admit | None = None,
        max_rows: MaxRows | None = None,
        budget_share: float = 1.0,
        budget_clock_ns: Callable[[], int] = time.process_time_ns,
    ) -> None:
        if queue_size < 1 or workers < 1:
            raise ValueError("a shadow mirror needs queue_size >= 1 and workers >= 1")
        if not 0 < budget_share <= 1:
            raise ValueError("a shadow mirror's budget_share is in (0, 1]")
        self._budget_share = budget_share
        self._budget_ns = float(BUDGET_BURST_NS)  # the bucket, full; may go below 0
        # The bucket refills with the process's CPU time, not the wall clock: a server starved
        # of CPU by its neighbours gives its shadows less, not more (calls are charged their
        # wall duration, which starvation only lengthens).
        self._budget_clock_ns = budget_clock_ns
        self._budget_at_ns = budget_clock_ns()
        self._budget_checked_ns = -BUDGET_REFRESH_NS  # when the bucket was last refilled
        self._call = call
        self._admit = admit
        self._max_rows = max_rows
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=queue_size)
        self._workers_wanted = workers
        self._workers: list[asyncio.Task[None]] = []
        self._random = random.Random(seed).random
        self._clock_ns = clock_ns
        self.in_flight = 0  # copies in shadow calls started and not finished
        self.calls = 0  # shadow calls made (fewer than copies when coalesced)

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

    def offer(
        self,
        route: Route,
        inputs: Mapping[str, Any],
        outputs: Mapping[str, Any],
        refused: str | None = None,
    ) -> int:
        """Queue copies of an answered request for its endpoint's shadows; returns how many.

        Call it after the primary's answer is on its way. Never blocks or awaits. ``refused``:
        what the caller already decided when it answered (a caller on another thread decides
        there, when its state is current): a reason to drop the copies, or ADMITTED; None lets
        ``admit`` decide, for a sampled copy only.
        """
        shadows = route.shadows
        if not shadows:
            return 0
        queued = 0
        quality = route.runtime.config.quality
        asked = False
        for target in shadows:
            if target.sample < 1.0 and self._random() >= target.sample:
                continue
            stats = target.stats
            stats.offered += 1
            if not asked:  # once per request, and only for one that is sampled
                asked = True
                if refused is None and self._admit is not None:
                    refused = self._admit(route)
                if not refused and not self._within_budget():
                    refused = OVER_BUDGET
            if refused:
                stats.drop(refused)
                continue
            try:
                self._queue.put_nowait((target, quality, inputs, outputs))
            except asyncio.QueueFull:
                stats.drop(QUEUE_FULL)
            else:
                queued += 1
        return queued

    def _within_budget(self) -> bool:
        """Whether shadow calls are within their share; the bucket is refilled to now at most
        once per BUDGET_REFRESH_NS of the (cheap) clock: the process CPU clock is a syscall
        that sums every thread, ~2 us, too dear to read for every sampled copy."""
        if self._budget_share >= 1.0:
            return True
        checked_ns = self._clock_ns()
        if checked_ns - self._budget_checked_ns >= BUDGET_REFRESH_NS:
            self._budget_checked_ns = checked_ns
            now_ns = self._budget_clock_ns()
            refill = (now_ns - self._budget_at_ns) * self._budget_share
            self._budget_at_ns = now_ns
            self._budget_ns = min(float(BUDGET_BURST_NS), self._budget_ns + refill)
        return self._budget_ns > 0

    def _take(self, first: _Item) -> list[list[_Item]]:
        """``first`` and the copies queued behind it (up to MAX_COALESCED_COPIES), grouped into
        calls: copies of one shadow whose inputs concatenate, within its row bound."""
        queue = self._queue
        items = [first]
        while len(items) < MAX_COALESCED_COPIES and not queue.empty():
            items.append(queue.get_nowait())
        groups: dict[Any, list[_Item]] = {}
        calls: list[list[_Item]] = []
        for item in items:
            key = _concat_key(item)
            if key is None:
                calls.append([item])
                continue
            group = groups.get(key)
            rows = _rows(item[2])
            if group is not None:
                limit = self._max_rows(item[0].model, item[0].version) if self._max_rows else 0
                if not limit or sum(_rows(i[2]) for i in group) + rows <= limit:
                    group.append(item)
                    continue
            groups[key] = group = [item]
            calls.append(group)
        return calls

    async def _work(self) -> None:
        queue = self._queue
        while True:
            calls = self._take(await queue.get())
            taken = pending = sum(len(c) for c in calls)
            self.in_flight += taken
            try:
                for items in calls:
                    try:
                        await self._run(items)
                    finally:
                        self.in_flight -= len(items)
                        pending -= len(items)
            finally:
                self.in_flight -= pending  # cancelled before their call
                for _ in range(taken):
                    queue.task_done()

    async def _run(self, items: list[_Item]) -> None:
        """One shadow call for ``items`` (one copy, or copies coalesced), then the comparisons."""
        target = items[0][0]
        stats = target.stats
        started_ns = self._clock_ns()
        self.calls += 1
        inputs = items[0][2] if len(items) == 1 else _concatenate([i[2] for i in items])
        try:
            answer = await self._call(target.model, target.version, inputs)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            self._budget_ns -= self._clock_ns() - started_ns
            stats.errors += len(items)
            log.debug("shadow %s (%s) failed: %s", target.name, target.model, error)
            return
        compared_ns = self._clock_ns()
        latency_ns = compared_ns - started_ns
        # Charged: what the call says it cost (CPU time, when it ran on a thread of its own:
        # a thread that runs only on idle CPU waits, and waiting costs the clients nothing),
        # else its wall duration; and below, the comparisons' time on this loop.
        cost_ns = getattr(answer, "cost_ns", None)
        self._budget_ns -= cost_ns if isinstance(cost_ns, int) else latency_ns
        answers: list[Mapping[str, Any] | None] = (
            [answer] if len(items) == 1 else _split(answer, [_rows(i[2]) for i in items])
        )
        try:
            self._compare_all(items, answers, latency_ns)
        finally:
            self._budget_ns -= self._clock_ns() - compared_ns

    def _compare_all(
        self, items: list[_Item], answers: list[Mapping[str, Any] | None], latency_ns: int
    ) -> None:
        target = items[0][0]
        stats = target.stats
        for (_, quality, _, primary), mine in zip(items, answers, strict=True):
            stats.latency_ns.add(latency_ns)
            stats.completed += 1
            compared = None if mine is None else compare(quality, target.tolerance, primary, mine)
            if compared is None:
                stats.mismatched += 1
                continue
            agreed, largest = compared
            stats.compared += 1
            stats.agreed += int(agreed)
            stats.abs_delta.add(largest)


def _rows(inputs: Mapping[str, Any]) -> int:
    return int(next(iter(inputs.values())).shape[0])


def _concat_key(item: _Item) -> Any:
    """What copies must share to run as one call (None: this copy runs alone): the shadow, and
    per input its name, dtype and shape after the first axis; every input numpy with the same
    rows (wire BYTES and other tensors run alone)."""
    inputs = item[2]
    if not inputs:
        return None
    key: list[Any] = [id(item[0])]
    rows = -1
    for name, value in inputs.items():
        if not isinstance(value, np.ndarray) or value.ndim == 0 or value.dtype.kind == "O":
            return None
        if rows < 0:
            rows = value.shape[0]
        elif value.shape[0] != rows:
            return None
        key.append((name, value.dtype.str, value.shape[1:]))
    return tuple(key)


def _concatenate(inputs: list[Mapping[str, Any]]) -> dict[str, Any]:
    return {name: np.concatenate([i[name] for i in inputs]) for name in inputs[0]}


def _split(answer: Mapping[str, Any], rows: list[int]) -> list[Mapping[str, Any] | None]:
    """Each copy's rows of a coalesced answer; None for every copy when an output does not have
    one row per input row (it cannot be told apart)."""
    total = sum(rows)
    arrays = {name: np.asarray(value) for name, value in answer.items()}
    if any(a.ndim == 0 or a.shape[0] != total for a in arrays.values()):
        return [None] * len(rows)
    parts: list[Mapping[str, Any] | None] = []
    start = 0
    for count in rows:
        parts.append({name: a[start : start + count] for name, a in arrays.items()})
        start += count
    return parts
