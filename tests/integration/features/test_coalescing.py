"""Coalescing against a real redis-server, decided by state: while one MGET is held in flight
(redis-server stopped with SIGSTOP, so its reply cannot come), every lookup that arrives joins the
next round trip, which goes out as ONE MGET the moment the held one is answered. Redis's own
INFO commandstats and headrace's round-trip metrics both count it."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from headrace.backends.base import TensorSpec
from headrace.features import CoalescePolicy, FeatureJoiner, FeatureMetrics
from integration.features.redis_server import RedisServer
from integration.features.test_redis_store import (
    joiner_config,
    push,
    requests,
    write_model_dir,
)

ARRIVING = 48
# Only a broken test waits this long for a state (a guard, not a latency bound).
STATE_TIMEOUT_S = 60.0


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return write_model_dir(tmp_path)


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + STATE_TIMEOUT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)  # let the loop run; the outcome is decided by state


def sample(registry: CollectorRegistry, name: str) -> float:
    value = registry.get_sample_value(name, {"model": "ranker", "version": "1", "store": "redis"})
    return value or 0.0


@pytest.mark.parametrize("in_flight", [1, 2])
def test_lookups_arriving_while_a_round_trip_is_held_become_one_next_round_trip(
    model_dir: Path, redis_server: RedisServer, redis_db: int, in_flight: int
) -> None:
    url = redis_server.url(redis_db)
    push(model_dir, url)
    batch = requests(ARRIVING + in_flight)
    registry = CollectorRegistry()
    assert redis_server.process is not None
    pid = redis_server.process.pid

    async def main() -> list[dict[str, np.ndarray]]:
        joiner = FeatureJoiner(
            joiner_config(url).model_copy(update={"timeout_ms": 120_000}),
            model_dir,
            [TensorSpec("x", "FP32", (-1, 6))],
            model="ranker",
            version="1",
            metrics=FeatureMetrics(registry),
            coalesce=CoalescePolicy(max_round_trips_in_flight=in_flight),
        )
        coalescer = joiner.coalescer
        try:
            await joiner.assemble(batch[0])  # connected before counting
            redis_server.reset_stats()
            trips, lookups = coalescer.round_trips, coalescer.lookups
            os.kill(pid, signal.SIGSTOP)
            try:
                # Every slot busy with a round trip of one lookup, held by the stopped server.
                held = []
                for index in range(in_flight):
                    held.append(asyncio.create_task(joiner.assemble(batch[index])))
                    await until(
                        lambda n=index + 1: coalescer.round_trips_in_flight == n,
                        f"round trip {index + 1} out",
                    )
                arriving = [asyncio.create_task(joiner.assemble(r)) for r in batch[in_flight:]]
                await until(lambda: coalescer.pending_lookups == len(batch), "every lookup waiting")
                assert coalescer.round_trips_in_flight == in_flight
            finally:
                os.kill(pid, signal.SIGCONT)
            assembled = await asyncio.gather(*held, *arriving)
            assert coalescer.round_trips - trips == in_flight + 1
            assert coalescer.lookups - lookups == len(batch)
            return assembled
        finally:
            await joiner.close()

    assembled = asyncio.run(main())
    # The held round trips, then ONE for everything that arrived meanwhile.
    assert redis_server.command_calls("mget") == in_flight + 1
    assert sample(registry, "headrace_feature_store_round_trips_total") == in_flight + 2
    assert sample(registry, "headrace_feature_store_lookups_total") == len(batch) + 1
    embedded = FeatureJoiner(
        joiner_config(url).model_copy(update={"store": "embedded"}),
        model_dir,
        [TensorSpec("x", "FP32", (-1, 6))],
    )
    for request, model_inputs in zip(batch, assembled, strict=True):
        expected = asyncio.run(embedded.assemble(request))["x"]
        assert np.array_equal(model_inputs["x"], expected)
