"""Redis killed under gRPC load (tritonclient callers): every answer follows the model's
``on_store_error`` (the features' defaults, or UNAVAILABLE), no request hangs, and answers come
from the store again within 1 s of it being back. The store is a redis-server of the module's
own, SIGKILLed and restarted on the same port with its data (a dump written before the kill,
loaded before it answers), so that the store is whole from the moment it is back."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from conftest import RunningServer, start_server, stop_server
from headrace.engine import Engine
from integration.features import served_repo
from integration.features.redis_server import RedisServer
from integration.features.triton import infer, wait_for

TIMEOUT_MS = 100
CALLERS = 8
MODELS = {"killed_default": ("default", TIMEOUT_MS), "killed_503": ("unavailable", TIMEOUT_MS)}
# Known users and items only: the store's answer and the defaults' differ on every row.
INPUTS = {
    "user_id": served_repo.USERS["user_id"][[0, 5, 9]].astype(np.int64),
    "item_id": served_repo.ITEMS["item_id"][[1, 2, 3]],
    "amount": np.array([10.0, 20.0, 30.0], np.float32),
}


@pytest.fixture(scope="module")
def faulty(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RunningServer, RedisServer, Path]]:
    redis = RedisServer(tmp_path_factory.mktemp("redis-served-faults")).start()
    root = tmp_path_factory.mktemp("served-faults")
    repo = served_repo.write_repository(root, redis.url(), MODELS)
    served_repo.push(repo / "scored_embedded", redis.url())
    client = redis.client()
    client.save()  # dump.rdb in its folder: a restart loads it before answering
    client.close()
    running, thread = start_server(repo)
    yield running, redis, repo
    stop_server(running, thread)
    redis.kill()


def breaker_state(running: RunningServer, model: str) -> float | None:
    engine: Engine = running.server.engine  # type: ignore[attr-defined]
    labels = {"model": model, "version": "1", "store": "redis"}
    return engine.metrics.registry.get_sample_value("headrace_feature_breaker_state", labels)


class Load:
    """Callers in a closed loop, each answer recorded as (when, "store" | "default" |
    "unavailable" | anything else: a failure of the test)."""

    def __init__(self, address: str, model: str, answers: dict[str, Any]) -> None:
        self.outcomes: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._answers = answers
        self._threads = [
            threading.Thread(target=self._call, args=(address, model)) for _ in range(CALLERS)
        ]
        for thread in self._threads:
            thread.start()

    def _call(self, address: str, model: str) -> None:
        client = grpcclient.InferenceServerClient(address)
        while not self._stop.is_set():
            try:
                y, _ = infer(client, model, INPUTS)
                outcome = next((k for k, v in self._answers.items() if np.array_equal(y, v)), "")
                outcome = outcome or f"unexpected answer {y.tolist()}"
            except InferenceServerException as error:
                status = error.status()
                outcome = "unavailable" if status == "StatusCode.UNAVAILABLE" else str(error)
            with self._lock:
                self.outcomes.append((time.monotonic(), outcome))
        client.close()

    def first(self, outcome: str, after: float) -> float | None:
        with self._lock:
            return next((at for at, seen in self.outcomes if at > after and seen == outcome), None)

    def wait_for(self, outcome: str, after: float) -> float:
        wait_for(lambda: self.first(outcome, after) is not None, f"a '{outcome}' answer")
        found = self.first(outcome, after)
        assert found is not None
        return found

    def finish(self) -> list[str]:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        return [seen for _, seen in self.outcomes]


@pytest.mark.parametrize("model", sorted(MODELS))
def test_redis_killed_under_load_then_back(
    faulty: tuple[RunningServer, RedisServer, Path], model: str
) -> None:
    running, redis, _ = faulty
    if redis.process is None:
        redis.start()
    bare = grpcclient.InferenceServerClient(running.address)
    defaults = {**INPUTS, "user_id": np.full(3, 7, np.int64)}
    defaults["item_id"] = np.array([b"no-such-item"] * 3, object)
    answers = {"store": infer(bare, "bare", {"x": served_repo.expected_x(INPUTS)})[0]}
    if MODELS[model][0] == "default":
        answers["default"] = infer(bare, "bare", {"x": served_repo.expected_x(defaults)})[0]
        assert not np.array_equal(answers["store"], answers["default"])
    bare.close()
    failed = "default" if MODELS[model][0] == "default" else "unavailable"

    load = Load(running.address, model, answers)
    try:
        load.wait_for("store", 0.0)
        killed_at = time.monotonic()
        redis.kill()
        load.wait_for(failed, killed_at)
        # The breaker opens: the dead store then sees only probes.
        wait_for(lambda: breaker_state(running, model) == 2, "the breaker to open")
        redis.start()  # returns once it answers PING, its data loaded
        back_at = time.monotonic()
        recovered_at = load.wait_for("store", back_at)
    finally:
        outcomes = load.finish()
    print(f"{model}: {len(outcomes)} answers; from the store again "
          f"{(recovered_at - back_at) * 1e3:.0f} ms after it was back")  # fmt: skip
    # Every answer is the store's or what on_store_error says; none hung (a client timeout
    # would show here as DEADLINE_EXCEEDED).
    assert set(outcomes) <= {"store", failed}, sorted(set(outcomes) - {"store", failed})[:3]
    assert recovered_at - back_at <= 1.0
    assert breaker_state(running, model) == 0
