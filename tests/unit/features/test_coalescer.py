"""Lookup coalescing: the pure policy, and the coalescer in front of a real embedded store made
to behave like a remote one (its reads counted, and held or failed on demand)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from headrace.errors import InternalError
from headrace.features import (
    Breaker,
    BreakerPolicy,
    BreakerState,
    CoalescePolicy,
    EmbeddedStore,
    LookupCoalescer,
    StoreError,
    ViewConfig,
    requests_to_take,
)
from headrace.features.keys import Keys
from headrace.features.store import ViewRows
from unit.features import snapshots

# -- the policy ------------------------------------------------------------------------------


def test_nothing_waiting_takes_nothing() -> None:
    assert requests_to_take(CoalescePolicy(), [], 0) == 0


def test_an_idle_store_takes_everything_waiting() -> None:
    assert requests_to_take(CoalescePolicy(), [32] * 63, 0) == 63


def test_a_busy_store_takes_nothing_until_it_answers() -> None:
    policy = CoalescePolicy(max_round_trips_in_flight=1)
    assert requests_to_take(policy, [1, 2, 3], 1) == 0
    assert requests_to_take(CoalescePolicy(max_round_trips_in_flight=2), [1, 2, 3], 1) == 3


def test_keys_per_round_trip_are_capped_but_one_big_lookup_still_goes() -> None:
    policy = CoalescePolicy(max_keys_per_round_trip=100)
    assert requests_to_take(policy, [40, 40, 40], 0) == 2
    assert requests_to_take(policy, [500, 1], 0) == 1
    assert requests_to_take(policy, [100], 0) == 1


# -- the coalescer ---------------------------------------------------------------------------


class GatedStore:
    """The embedded store, remote as far as the coalescer knows: every read is counted and
    waits for ``gate``; ``fail`` makes reads raise StoreError."""

    kind = "gated"
    remote = True

    def __init__(self, inner: EmbeddedStore) -> None:
        self.inner = inner
        self.reads: list[dict[str, list[object]]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail = False
        self.garbled = False

    async def read(self, keys: Mapping[str, Keys]) -> list[ViewRows]:
        self.reads.append({k: v.tolist() for k, v in keys.items()})
        await self.gate.wait()
        if self.fail:
            raise StoreError("store down")
        rows = await self.inner.read(keys)
        return rows * 2 if self.garbled else rows

    async def ping(self) -> None:
        return None

    def entity_datatype(self, entity: str) -> str | None:
        return None

    async def close(self) -> None:
        return None


@pytest.fixture
def inner(tmp_path: Path) -> EmbeddedStore:
    table = snapshots.user_table(rows=100)
    snapshots.write(tmp_path / "users.parquet", table)
    view = ViewConfig(
        name="users", entity="user_id", features=("age", "clicks"), snapshot="users.parquet"
    )
    return EmbeddedStore([view], tmp_path)


def make(store: GatedStore, timeout_s: float = 5.0) -> LookupCoalescer:
    policy = BreakerPolicy(failures_to_open=2, probe_interval_s=3600.0)
    return LookupCoalescer(store, ["user_id"], timeout_s=timeout_s, breaker=Breaker(policy))


def keys(*ids: int) -> dict[str, Keys]:
    return {"user_id": np.array(ids, np.int64)}


def test_concurrent_lookups_share_round_trips_and_get_their_own_rows(inner: EmbeddedStore) -> None:
    async def main() -> None:
        store = GatedStore(inner)
        coalescer = make(store)
        store.gate.clear()
        ids = [(1000 + 3 * (i % 10), 1000 + 3 * ((i * 7) % 100), 5) for i in range(64)]
        tasks = [asyncio.create_task(coalescer.lookup(keys(*k))) for k in ids]
        while not store.reads:  # the first round trip is out, held at the gate
            await asyncio.sleep(0)
        store.gate.set()
        results = await asyncio.gather(*tasks)
        assert coalescer.round_trips == len(store.reads) <= 2
        # Duplicates are read once per round trip.
        for read in store.reads:
            assert len(read["user_id"]) == len(set(read["user_id"]))
        for k, (rows,) in zip(ids, results, strict=True):
            (expected,) = inner.lookup(keys(*k))
            assert rows.found.tolist() == expected.found.tolist() == [True, True, False]
            assert np.array_equal(rows.values[:2], expected.values[:2])

    asyncio.run(main())


def test_lookups_arriving_during_a_round_trip_wait_and_then_go_together(
    inner: EmbeddedStore,
) -> None:
    async def main() -> None:
        store = GatedStore(inner)
        coalescer = make(store)
        store.gate.clear()
        first = asyncio.create_task(coalescer.lookup(keys(1000)))
        while not store.reads:
            await asyncio.sleep(0)
        later = [asyncio.create_task(coalescer.lookup(keys(1003, i))) for i in range(10)]
        for _ in range(5):
            await asyncio.sleep(0)
        assert len(store.reads) == 1  # held: the store is busy
        store.gate.set()
        await asyncio.gather(first, *later)
        assert len(store.reads) == 2
        assert sorted(store.reads[1]["user_id"]) == sorted({1003, *range(10)})

    asyncio.run(main())


def test_a_failed_round_trip_fails_its_lookups_and_feeds_the_breaker(inner: EmbeddedStore) -> None:
    async def main() -> None:
        store = GatedStore(inner)
        coalescer = make(store)
        store.fail = True
        for _ in range(2):
            with pytest.raises(StoreError, match="store down"):
                await coalescer.lookup(keys(1000))
        assert coalescer.breaker.state == BreakerState.OPEN
        reads = len(store.reads)
        with pytest.raises(StoreError, match="not asked"):
            await coalescer.lookup(keys(1000))
        assert len(store.reads) == reads

    asyncio.run(main())


def test_a_hung_store_times_out_the_round_trip(inner: EmbeddedStore) -> None:
    async def main() -> None:
        store = GatedStore(inner)
        coalescer = make(store, timeout_s=0.05)
        store.gate.clear()
        with pytest.raises(StoreError, match="took over 50 ms"):
            await coalescer.lookup(keys(1000))
        # The slot is free again: the next round trip goes out.
        store.gate.set()
        (rows,) = await coalescer.lookup(keys(1000))
        assert rows.found.tolist() == [True]

    asyncio.run(main())


def test_a_cancelled_caller_leaves_the_round_trip_to_the_others(inner: EmbeddedStore) -> None:
    async def main() -> None:
        store = GatedStore(inner)
        coalescer = make(store)
        store.gate.clear()
        leaving = asyncio.create_task(coalescer.lookup(keys(1000)))
        staying = asyncio.create_task(coalescer.lookup(keys(1003)))
        while not store.reads:
            await asyncio.sleep(0)
        leaving.cancel()
        store.gate.set()
        (rows,) = await staying
        assert rows.found.tolist() == [True]
        assert leaving.cancelled()

    asyncio.run(main())


def test_an_answer_that_cannot_be_shared_fails_its_lookups_not_the_coalescer(
    inner: EmbeddedStore,
) -> None:
    async def main() -> None:
        store = GatedStore(inner)
        coalescer = make(store)
        store.garbled = True  # one view configured, two answered
        with pytest.raises(InternalError, match="answered 2 views"):
            await coalescer.lookup(keys(1000))
        assert coalescer.breaker.state == BreakerState.CLOSED  # not the store's fault
        store.garbled = False
        (rows,) = await coalescer.lookup(keys(1000))
        assert rows.found.tolist() == [True]

    asyncio.run(main())


def test_a_lookup_deadline_covers_its_wait_and_leaves_the_round_trip_to_the_others(
    inner: EmbeddedStore,
) -> None:
    async def main() -> None:
        store = GatedStore(inner)
        coalescer = make(store, timeout_s=3600.0)  # the round trip itself is not bounded here
        store.gate.clear()
        staying = asyncio.create_task(coalescer.lookup(keys(1003)))
        with pytest.raises(StoreError, match="no answer within 50 ms"):
            await coalescer.lookup(keys(1000), timeout_s=0.05)
        assert coalescer.round_trips_in_flight == 1  # still out, for the caller that stayed
        store.gate.set()
        (rows,) = await staying
        assert rows.found.tolist() == [True]
        assert coalescer.breaker.state == BreakerState.CLOSED  # a caller's deadline, not a failure

    asyncio.run(main())


def test_one_sender_carries_round_trip_after_round_trip_and_counts_them(
    inner: EmbeddedStore,
) -> None:
    async def main() -> None:
        store = GatedStore(inner)
        coalescer = make(store)
        store.gate.clear()
        first = asyncio.create_task(coalescer.lookup(keys(1000)))
        while not store.reads:
            await asyncio.sleep(0)
        second = [asyncio.create_task(coalescer.lookup(keys(1003 + 3 * i))) for i in range(5)]
        while coalescer.pending_lookups < 6:
            await asyncio.sleep(0)
        store.gate.set()
        await asyncio.gather(first, *second)
        assert [len(r["user_id"]) for r in store.reads] == [1, 5]
        assert (coalescer.round_trips, coalescer.lookups) == (2, 6)
        # Two slots: a lookup arriving while one round trip is held goes out on the second.
        wide = LookupCoalescer(
            store,
            ["user_id"],
            timeout_s=5.0,
            breaker=Breaker(BreakerPolicy()),
            policy=CoalescePolicy(max_round_trips_in_flight=2),
        )
        store.reads.clear()
        store.gate.clear()
        held = asyncio.create_task(wide.lookup(keys(1000)))
        while wide.round_trips_in_flight < 1:
            await asyncio.sleep(0)
        other = asyncio.create_task(wide.lookup(keys(1003)))
        while wide.round_trips_in_flight < 2:
            await asyncio.sleep(0)
        store.gate.set()
        await asyncio.gather(held, other)
        assert [r["user_id"] for r in store.reads] == [[1000], [1003]]

    asyncio.run(main())
