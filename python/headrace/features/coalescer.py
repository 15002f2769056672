"""Concurrent requests' lookups merged into one store round trip per batch.

The decision is a pure function, :func:`requests_to_take`, over a snapshot (the key counts of
the waiting lookups, the round trips in flight) — like the batcher's policy, tested without a
store or a clock. :class:`LookupCoalescer` applies it on the event loop: a lookup that arrives
while the store is busy waits for the round trip in flight to end and then goes out with every
lookup that arrived meanwhile, keys deduplicated per entity input. There is no timer: an idle
store is asked at once (after the current loop iteration, so that lookups arriving together go
together), a busy one as soon as it answers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from headrace.errors import InternalError
from headrace.features.breaker import Breaker
from headrace.features.keys import Keys, MergedKeys, merge_keys
from headrace.features.store import FeatureStore, StoreError, ViewRows


@dataclass(frozen=True)
class CoalescePolicy:
    # Keys one round trip may carry (a bound on one reply's size and on the head-of-line wait
    # of the lookups behind it); one lookup larger than this still goes, alone.
    max_keys_per_round_trip: int = 4096
    # Round trips in flight at once. One gives the most merging; more cut the wait of a lookup
    # that arrives just after a round trip left, at the price of more round trips.
    max_round_trips_in_flight: int = 1


def requests_to_take(policy: CoalescePolicy, waiting_keys: Sequence[int], in_flight: int) -> int:
    """How many waiting lookups (oldest first; ``waiting_keys[i]`` keys each) the next round
    trip takes now; 0 means wait for a round trip in flight to end."""
    if not waiting_keys or in_flight >= policy.max_round_trips_in_flight:
        return 0
    taken = 0
    keys = 0
    for count in waiting_keys:
        if taken and keys + count > policy.max_keys_per_round_trip:
            break
        taken += 1
        keys += count
    return taken


class BreakerOpenError(StoreError):
    """The breaker is open: the store was not asked."""


class StoreTimeoutError(StoreError):
    """The round trip took longer than its timeout."""


@dataclass(frozen=True)
class RoundTrip:
    """What one round trip did, for metrics and tests."""

    lookups: int
    keys: int
    duration_s: float
    ok: bool


@dataclass(eq=False)
class _Waiting:
    keys: Mapping[str, Keys]
    size: int
    future: asyncio.Future[list[ViewRows]]


class LookupCoalescer:
    """Merges concurrent :meth:`lookup` calls into store round trips. Event-loop only.

    ``view_entities[i]`` is the entity input of view i (config order). The breaker is consulted
    once per lookup; every round trip reports success or failure to it. ``timeout_s`` bounds a
    round trip, so a hung store never holds the lookups behind it for longer.

    Round trips go out from *sender* tasks, at most ``max_round_trips_in_flight`` of them: a
    lookup that finds a free slot starts one (it runs on the next loop iteration and takes
    every lookup waiting by then); a sender whose round trip ends takes what arrived meanwhile
    at once, in the same iteration, without a new task. So an idle store costs a lookup one
    loop iteration, and a busy one merges everything that arrives during one round trip."""

    def __init__(
        self,
        store: FeatureStore,
        view_entities: Sequence[str],
        *,
        timeout_s: float,
        breaker: Breaker,
        policy: CoalescePolicy | None = None,
        on_round_trip: Callable[[RoundTrip], None] | None = None,
    ) -> None:
        self._store = store
        self._view_entities = list(view_entities)
        self._entities = list(dict.fromkeys(view_entities))
        self._timeout_s = timeout_s
        self.breaker = breaker
        self.policy = policy or CoalescePolicy()
        self._on_round_trip = on_round_trip
        self._waiting: list[_Waiting] = []
        self._in_flight = 0  # round trips out
        self._senders = 0  # sender tasks alive
        self._starting = 0  # of them, not run yet: they will take what waits
        self._tasks: set[asyncio.Task[None]] = set()
        self._lookups_in_flight = 0
        self.round_trips = 0
        self.lookups = 0  # lookups that went (or go) to the store

    @property
    def pending_lookups(self) -> int:
        """Lookups not answered yet: waiting for a round trip, or on one in flight (read on
        the loop, or as a snapshot from elsewhere)."""
        return len(self._waiting) + self._lookups_in_flight

    @property
    def round_trips_in_flight(self) -> int:
        return self._in_flight

    async def lookup(
        self, keys: Mapping[str, Keys], timeout_s: float | None = None
    ) -> list[ViewRows]:
        """Every view's rows for ``keys`` (one normalised key array per entity input). Raises
        StoreError (BreakerOpenError when the store was not asked, StoreTimeoutError when no
        answer came within ``timeout_s``, waiting for a round trip included). Cancelling the
        caller leaves the round trip to the others."""
        if not self.breaker.admit(time.monotonic()):
            raise BreakerOpenError(f"feature store '{self._store.kind}' is failing; not asked")
        loop = asyncio.get_running_loop()
        size = 0
        for entity in self._entities:
            size += len(keys[entity])
        waiting = _Waiting(keys, size, loop.create_future())
        self._waiting.append(waiting)
        if not self._starting and self._senders < self.policy.max_round_trips_in_flight:
            self._senders += 1
            self._starting += 1
            task = loop.create_task(self._send())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if timeout_s is None:
            return await waiting.future
        # One timer on the lookup's own future (cheaper than a timeout scope around it).
        expiry = loop.call_later(timeout_s, self._expire, waiting.future, timeout_s)
        try:
            return await waiting.future
        finally:
            expiry.cancel()

    def _expire(self, future: asyncio.Future[list[ViewRows]], timeout_s: float) -> None:
        if not future.done():
            future.set_exception(
                StoreTimeoutError(
                    f"feature store '{self._store.kind}': no answer within {timeout_s * 1e3:g} ms"
                )
            )

    async def _send(self) -> None:
        """One sender: round trips one after another while the policy gives it lookups."""
        self._starting -= 1
        try:
            while True:
                if any(w.future.done() for w in self._waiting):  # callers that left
                    self._waiting = [w for w in self._waiting if not w.future.done()]
                sizes = [w.size for w in self._waiting]
                take = requests_to_take(self.policy, sizes, self._in_flight)
                if take == 0:
                    return
                batch, self._waiting = self._waiting[:take], self._waiting[take:]
                await self._round_trip(batch)
        finally:
            self._senders -= 1

    def _merge(self, batch: list[_Waiting]) -> dict[str, MergedKeys] | None:
        """The batch's distinct keys per entity input; None when the batch is one lookup
        whose keys are distinct already (it is sent as is, and gets the rows as read)."""
        if len(batch) == 1:
            own = batch[0].keys
            if all(_distinct(own[e]) for e in self._entities):
                return None
        return {e: merge_keys([w.keys[e] for w in batch]) for e in self._entities}

    async def _round_trip(self, batch: list[_Waiting]) -> None:
        start = time.monotonic()
        self._in_flight += 1
        self._lookups_in_flight += len(batch)
        self.lookups += len(batch)
        keys = 0
        ok = True
        try:
            merged = self._merge(batch)
            if merged is None:
                sent = {e: batch[0].keys[e] for e in self._entities}
            else:
                sent = {e: m.unique for e, m in merged.items()}
            keys = sum(len(k) for k in sent.values())
            try:
                async with asyncio.timeout(self._timeout_s):
                    rows = await self._store.read(sent)
            except TimeoutError:
                raise StoreTimeoutError(
                    f"feature store '{self._store.kind}' took over {self._timeout_s * 1e3:g} ms"
                ) from None
            if len(rows) != len(self._view_entities):
                raise InternalError(
                    f"feature store '{self._store.kind}' answered {len(rows)} views, "
                    f"expected {len(self._view_entities)}"
                )
            if merged is None:
                results = [rows]
            else:
                results = [self._share(rows, merged, index) for index in range(len(batch))]
        except StoreError as error:
            ok = False
            self.breaker.failure(time.monotonic())
            for w in batch:
                if not w.future.done():
                    w.future.set_exception(type(error)(str(error)))
        except Exception as error:
            # Not the store's fault (unreadable data): the callers get it, the breaker does not.
            for w in batch:
                if not w.future.done():
                    w.future.set_exception(error)
        except asyncio.CancelledError:
            for w in batch:
                w.future.cancel()
            raise
        else:
            self.breaker.success(time.monotonic())
            for w, result in zip(batch, results, strict=True):
                if not w.future.done():
                    w.future.set_result(result)
        finally:
            self.round_trips += 1
            self._in_flight -= 1
            self._lookups_in_flight -= len(batch)
            if self._on_round_trip is not None:
                self._on_round_trip(RoundTrip(len(batch), keys, time.monotonic() - start, ok))

    def _share(
        self, rows: list[ViewRows], merged: dict[str, MergedKeys], index: int
    ) -> list[ViewRows]:
        """Lookup ``index``'s rows out of a round trip's (which has each key once)."""
        mine = []
        for view, entity in zip(rows, self._view_entities, strict=True):
            at = merged[entity].positions[index]
            times = None if view.event_time_s is None else view.event_time_s[at]
            mine.append(ViewRows(view.values[at], view.present[at], view.found[at], times))
        return mine


def _distinct(keys: Keys) -> bool:
    return len(keys) <= 1 or len(set(keys.tolist())) == len(keys)
