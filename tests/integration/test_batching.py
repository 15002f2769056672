"""The dynamic batcher through the wire: batches form under load and scatter correctly, queue
deadlines, overflow, a failing batch, priorities, cancellation and draining."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from conftest import RunningServer, start_server, stop_server
from headrace import Engine
from headrace.client import AsyncClient, Client
from headrace.errors import DeadlineExceededError, InternalError, UnavailableError
from helpers import onnx_models

SIZE = 256
# About 0.35 µs a row here: a request of BLOCKER_ROWS rows holds the single instance ~50-300 ms.
BLOCKER_ROWS = 24_000


@pytest.fixture(scope="module")
def batching_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("batching") / "models"
    onnx_models.write_model(
        repo,
        "batched",
        onnx_models.slow_matmul(SIZE, 8),
        toml="max_batch_size = 64\n[batching]\nmax_queue_delay_us = 20000\n",
    )
    onnx_models.write_model(
        repo,
        "bounded",
        onnx_models.slow_matmul(SIZE, 8),
        toml="max_batch_size = 8\n[batching]\nmax_queue_delay_us = 0\nmax_queue_size = 2\n",
    )
    onnx_models.write_model(
        repo,
        "lookup",
        onnx_models.gather_lookup(),
        toml="max_batch_size = 16\n[batching]\nmax_queue_delay_us = 50000\n",
    )
    onnx_models.write_model(
        repo,
        "prioritised",
        onnx_models.slow_matmul(SIZE, 8),
        toml=(
            "max_batch_size = 4\n[batching]\nmax_queue_delay_us = 0\npriority_levels = 2\n"
            "default_priority_level = 2\npreferred_batch_sizes = [4]\n"
        ),
    )
    running, thread = start_server(repo)
    yield running
    stop_server(running, thread)


def expected(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    y = x
    for _ in range(8):
        y = y @ weight
    return y


def stats(client: Client, model: str):  # type: ignore[no-untyped-def]
    return client.model_statistics(model).model_stats[0]


def test_concurrent_requests_are_batched_and_each_gets_its_own_rows(
    batching_server: RunningServer,
) -> None:
    rng = np.random.default_rng(3)
    inputs = [rng.standard_normal((1 + i % 4, SIZE)).astype(np.float32) for i in range(48)]

    async def main() -> list[np.ndarray]:
        async with AsyncClient(batching_server.address) as client:
            calls = [
                client.infer("batched", {"x": x}, request_id=str(i)) for i, x in enumerate(inputs)
            ]
            results = await asyncio.gather(*calls)
        for i, result in enumerate(results):
            assert result.id == str(i)
        return [r.outputs["y"] for r in results]

    outputs = asyncio.run(main())
    with Client(batching_server.address) as client:
        reference = client.infer("batched", {"x": np.eye(SIZE, dtype=np.float32)}).outputs["y"]
        model_stats = stats(client, "batched")
    # reference = eye @ W^8, so each request's answer is its own rows times that matrix.
    for x, y in zip(inputs, outputs, strict=True):
        assert y.shape == x.shape
        np.testing.assert_allclose(y, x @ reference, rtol=2e-3, atol=2e-3)
    sizes = {b.batch_size: b.compute_infer.count for b in model_stats.batch_stats}
    assert max(sizes) > 4, f"no batch formed of several requests: {sizes}"
    assert all(size <= 64 for size in sizes if size != SIZE)
    # Rows, not requests, are counted.
    assert model_stats.inference_count == sum(x.shape[0] for x in inputs) + SIZE


def _hold_the_instance(address: str, model: str) -> concurrent.futures.Future[object]:
    pool = concurrent.futures.ThreadPoolExecutor(1)

    def call() -> object:
        with Client(address) as client:
            return client.infer(model, {"x": np.ones((BLOCKER_ROWS, SIZE), np.float32)})

    future = pool.submit(call)
    pool.shutdown(wait=False)
    return future


def _wait_until_running(client: Client, model: str, before) -> None:  # type: ignore[no-untyped-def]
    """Until the blocker has left the queue for the instance (the scheduler counts a request's
    queue time when it dispatches it, and the execution when the batch ends)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        s = stats(client, model)
        if s.inference_stats.queue.count > before.inference_stats.queue.count:
            return
        time.sleep(0.002)
    raise AssertionError("the blocking request never started")


def test_queued_request_expires_at_its_deadline_without_running(
    batching_server: RunningServer,
) -> None:
    with Client(batching_server.address) as client:
        before = stats(client, "batched")
        blocker = _hold_the_instance(batching_server.address, "batched")
        _wait_until_running(client, "batched", before)
        started = time.monotonic()
        with pytest.raises(DeadlineExceededError):
            client.infer(
                "batched", {"x": np.ones((1, SIZE), np.float32)}, parameters={"timeout": 30_000}
            )
        waited_ms = (time.monotonic() - started) * 1000
        assert blocker.result(30) is not None
        after = stats(client, "batched")
    # Answered at its 30 ms deadline, not when the 24,000-row batch ahead of it finished.
    assert 25 <= waited_ms <= 30 + 25, waited_ms
    ran_rows = after.inference_count - before.inference_count
    assert ran_rows == BLOCKER_ROWS  # the expired request never reached the model
    assert after.inference_stats.fail.count == before.inference_stats.fail.count + 1


def test_grpc_deadline_evicts_the_queued_request(batching_server: RunningServer) -> None:
    with Client(batching_server.address) as client:
        before = stats(client, "batched")
        blocker = _hold_the_instance(batching_server.address, "batched")
        _wait_until_running(client, "batched", before)
        with pytest.raises(DeadlineExceededError):
            client.infer("batched", {"x": np.ones((1, SIZE), np.float32)}, timeout_s=0.03)
        blocker.result(30)
        time.sleep(0.05)
        after = stats(client, "batched")
    assert after.inference_count - before.inference_count == BLOCKER_ROWS


def test_overflow_is_unavailable_at_once_while_admitted_requests_succeed(
    batching_server: RunningServer,
) -> None:
    with Client(batching_server.address) as client:
        before = stats(client, "bounded")
        blocker = _hold_the_instance(batching_server.address, "bounded")
        _wait_until_running(client, "bounded", before)
        x = np.ones((1, SIZE), np.float32)
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(client.infer, "bounded", {"x": x}) for _ in range(6)]
            outcomes = []
            for future in futures:
                try:
                    outcomes.append(future.result(30))
                except UnavailableError as error:
                    assert "queue full" in error.message
                    outcomes.append(error)
        blocker.result(30)
    refused = [o for o in outcomes if isinstance(o, UnavailableError)]
    served = [o for o in outcomes if not isinstance(o, UnavailableError)]
    assert len(refused) == 4 and len(served) == 2


def test_a_failing_batch_fails_only_itself(batching_server: RunningServer) -> None:
    async def main() -> list[object]:
        async with AsyncClient(batching_server.address) as client:
            calls = [
                client.infer("lookup", {"index": np.array([[i]], np.int64)}) for i in (1, 99, 2)
            ]
            return await asyncio.gather(*calls, return_exceptions=True)

    first = asyncio.run(main())  # one batch (50 ms window): index 99 makes ONNX Runtime fail
    assert all(isinstance(o, InternalError) for o in first), first
    assert "out of bounds" in str(first[1]) or "indices" in str(first[1]).lower()
    with Client(batching_server.address) as client:
        ok = client.infer("lookup", {"index": np.array([[3], [4]], np.int64)})
    assert ok.outputs["y"].ravel().tolist() == [30.0, 40.0]


def test_priority_one_runs_before_queued_priority_two(batching_server: RunningServer) -> None:
    order: list[str] = []
    lock = threading.Lock()
    with Client(batching_server.address) as client:
        before = stats(client, "prioritised")
        blocker = _hold_the_instance(batching_server.address, "prioritised")
        _wait_until_running(client, "prioritised", before)

        def call(tag: str, priority: int) -> None:
            # Each request runs alone (rows > max_batch_size) for ~10 ms, so the order in which
            # answers come back is the order the scheduler ran them in.
            client.infer(
                "prioritised",
                {"x": np.ones((3000, SIZE), np.float32)},
                parameters={"priority": priority},
            )
            with lock:
                order.append(tag)

        low = [threading.Thread(target=call, args=(f"low{i}", 2)) for i in range(3)]
        for thread in low:
            thread.start()
        time.sleep(0.02)  # the low-priority requests are queued first
        high = threading.Thread(target=call, args=("high", 1))
        high.start()
        for thread in [*low, high]:
            thread.join(30)
        blocker.result(30)
        with pytest.raises(Exception, match="priority 3 is outside"):
            client.infer(
                "prioritised", {"x": np.ones((1, SIZE), np.float32)}, parameters={"priority": 3}
            )
    assert order[0] == "high", order


def test_cancelled_call_leaves_the_queue(batching_server: RunningServer) -> None:
    with Client(batching_server.address) as client:
        before = stats(client, "batched")
        blocker = _hold_the_instance(batching_server.address, "batched")
        _wait_until_running(client, "batched", before)
        with grpc.insecure_channel(batching_server.address) as channel:
            from headrace import wire
            from headrace.client import build_infer_request

            stub = wire.Stub(channel, wire.INFERENCE_SERVICE)
            call = stub.ModelInfer.future(
                build_infer_request("batched", {"x": np.ones((1, SIZE), np.float32)})
            )
            time.sleep(0.01)
            call.cancel()
        blocker.result(30)
        time.sleep(0.05)
        after = stats(client, "batched")
    assert after.inference_count - before.inference_count == BLOCKER_ROWS


def test_engine_close_drains_the_queue(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    onnx_models.write_model(
        repo, "m", onnx_models.slow_matmul(SIZE, 8), toml="max_batch_size = 8\n"
    )
    engine = Engine.from_repository(repo)
    x = np.ones((8, SIZE), np.float32)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(engine.infer, "m", {"x": x}) for _ in range(16)]
        time.sleep(0.01)
        engine.close()
        results = [f.result(30) for f in futures]
    assert all(r.outputs["y"].shape == (8, SIZE) for r in results)
