"""The dynamic batcher through the wire: batches form under load and scatter correctly, queue
deadlines, overflow, a failing batch, priorities, cancellation and draining."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import RunningServer, start_server, stop_server
from headrace import Engine
from headrace.client import AsyncClient, Client
from headrace.errors import (
    DeadlineExceededError,
    InternalError,
    InvalidArgumentError,
    UnavailableError,
)
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
            # One ONNX Runtime thread: the other core stays free for the server's statistics
            # answers, which the priority test polls while the model runs.
            "[onnxruntime]\nintra_op_threads = 1\n"
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


def scheduler(server: RunningServer, model: str) -> dict[str, float]:
    """The scheduler's own counters for a model, from the metrics endpoint: pending (queued now),
    expired, cancelled, shed, rejected."""
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    names = {
        "headrace_inference_pending_request_count": "pending",
        "headrace_inference_expired_requests": "expired",
        "headrace_inference_cancelled_requests": "cancelled",
        "headrace_inference_shed_requests": "shed",
        "headrace_inference_rejected_requests": "rejected",
    }
    counts = dict.fromkeys(names.values(), 0.0)
    for family in text_string_to_metric_families(text):
        if family.name not in names:
            continue
        for sample in family.samples:
            if sample.labels.get("model") == model and not sample.name.endswith("_created"):
                counts[names[family.name]] += sample.value
    return counts


def wait_for(what: str, condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    """Until `condition` holds: the outcome is decided by state, polled, never by a sleep."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.002)


def _hold_the_instance(
    address: str, model: str, rows: int = BLOCKER_ROWS
) -> concurrent.futures.Future[object]:
    pool = concurrent.futures.ThreadPoolExecutor(1)

    def call() -> object:
        with Client(address) as client:
            return client.infer(model, {"x": np.ones((rows, SIZE), np.float32)})

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
        counted = scheduler(batching_server, "batched")
        blocker = _hold_the_instance(batching_server.address, "batched")
        _wait_until_running(client, "batched", before)
        # Admitted (nothing is queued ahead of it), then answered from the queue by the
        # scheduler when the 24,000-row batch ahead of it left it no time to run.
        with pytest.raises(DeadlineExceededError, match="deadline exceeded"):
            client.infer(
                "batched", {"x": np.ones((1, SIZE), np.float32)}, parameters={"timeout": 30_000}
            )
        assert scheduler(batching_server, "batched")["expired"] == counted["expired"] + 1
        assert blocker.result(30) is not None
        after = stats(client, "batched")
    ran_rows = after.inference_count - before.inference_count
    assert ran_rows == BLOCKER_ROWS  # the expired request never reached the model
    assert after.inference_stats.fail.count == before.inference_stats.fail.count + 1


def test_grpc_deadline_evicts_the_queued_request(batching_server: RunningServer) -> None:
    # The scheduler answers a request once no batch can end before its deadline (less the time
    # an answer takes to leave): for a request of 300 rows, a few ms before gRPC's own deadline
    # would cancel the call. Batches of a few sizes first, so that the cost model can predict.
    x = np.ones((300, SIZE), np.float32)
    with Client(batching_server.address) as client:
        for rows in (1, 16, 300, 1000, 64):
            client.infer("batched", {"x": np.ones((rows, SIZE), np.float32)})
        before = stats(client, "batched")
        counted = scheduler(batching_server, "batched")
        blocker = _hold_the_instance(batching_server.address, "batched")
        _wait_until_running(client, "batched", before)
        with pytest.raises(DeadlineExceededError):
            client.infer("batched", {"x": x}, timeout_s=0.03)
        # The client gives up at its deadline either way; what matters is that the scheduler,
        # which got the gRPC deadline with the request, evicted it from the queue by itself.
        wait_for(
            "the scheduler has answered the request",
            lambda: scheduler(batching_server, "batched")["pending"] == 0,
        )
        now = scheduler(batching_server, "batched")
        assert now["expired"] == counted["expired"] + 1, now
        assert now["cancelled"] == counted["cancelled"], now
        blocker.result(30)
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


def _dispatched_since(client: Client, model: str, running) -> bool:  # type: ignore[no-untyped-def]
    """Whether a request has left the queue for the instance since `running` was taken (the
    blocker was dispatched by then)."""
    return bool(
        stats(client, model).inference_stats.queue.count > running.inference_stats.queue.count
    )


# Tells the high-priority request's batch apart in the batch statistics. Few rows: it runs
# quickly, and the long low-priority batch after it leaves a wide window in which the statistics
# show it alone done.
HIGH_ROWS = 3


def _low_rows(blocker_rows: int) -> int:
    """A low-priority request's rows: more than max_batch_size (each runs alone), about half a
    blocker (tens of ms at least, so a poll of the statistics lands while one runs), and never a
    blocker's size (the blocker's own batch must not count as a low one)."""
    return blocker_rows // 2 + 1


def _priority_attempt(
    server: RunningServer, client: Client, blocker_rows: int, attempts: list[str]
) -> str | None:
    """Three priority-2 requests and then one priority-1 request behind a blocker: which ran
    first after the blocker ("high" or "low"), read from one snapshot of the server's batch
    statistics in which exactly one of the two kinds has a finished batch; None when the attempt
    proves nothing (the blocker ended before all four were seen queued together, or no snapshot
    caught one kind done alone). What the attempt saw is appended to ``attempts`` (the message if
    no attempt can tell)."""
    low_rows = _low_rows(blocker_rows)
    before = stats(client, "prioritised")
    blocker = _hold_the_instance(server.address, "prioritised", blocker_rows)
    _wait_until_running(client, "prioritised", before)
    running = stats(client, "prioritised")
    high_before, low_before = _batches_of(running, HIGH_ROWS), _batches_of(running, low_rows)
    seen: dict[str, str] = {}

    def call(rows: int, priority: int) -> None:
        x = np.ones((rows, SIZE), np.float32)
        client.infer("prioritised", {"x": x}, parameters={"priority": priority})

    def queued(count: int) -> bool:
        pending = scheduler(server, "prioritised")["pending"]
        seen["pending"] = f"{pending:g} of {count}"  # the last count seen, for the failure message
        if pending == count:
            seen["together"] = "yes"
            return True
        return False

    def blocker_ended() -> bool:
        return _dispatched_since(client, "prioritised", running)

    def first_run_known() -> bool:
        now = stats(client, "prioritised")  # one snapshot: the batch counts agree
        high = _batches_of(now, HIGH_ROWS) - high_before
        low = _batches_of(now, low_rows) - low_before
        if high and not low:
            seen["first"] = "high"
        elif low and not high:
            seen["first"] = "low"
        return bool(high or low)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        calls = [pool.submit(call, low_rows, 2) for _ in range(3)]
        wait_for("the low-priority requests are queued", lambda: queued(3) or blocker_ended())
        seen.pop("together", None)
        calls.append(pool.submit(call, HIGH_ROWS, 1))
        wait_for("all four are queued", lambda: queued(4) or blocker_ended())
        if "together" in seen:
            wait_for("the first request after the blocker has run", first_run_known)
        for future in calls:
            future.result(30)
    blocker.result(30)
    attempts.append(
        f"blocker {blocker_rows} rows: pending {seen.get('pending')}, "
        f"together {'together' in seen}, first {seen.get('first')}"
    )
    return seen.get("first") if "together" in seen else None


def _batches_of(model_stats, rows: int) -> int:  # type: ignore[no-untyped-def]
    return sum(b.compute_infer.count for b in model_stats.batch_stats if b.batch_size == rows)


def test_priority_one_runs_before_queued_priority_two(batching_server: RunningServer) -> None:
    # Decided by state: once all four requests are seen queued at one instant behind the
    # blocker, the scheduler must run the priority-1 one first, whatever the timing; the server's
    # own batch statistics say which ran first (not the order answers reached client threads).
    # An attempt that cannot tell is repeated, with a blocker twice as long (up to 4x): on a busy
    # machine the four requests may take longer to queue than the first blocker holds.
    attempts: list[str] = []
    with Client(batching_server.address) as client:
        for attempt in range(8):
            rows = BLOCKER_ROWS * min(2**attempt, 4)
            first = _priority_attempt(batching_server, client, rows, attempts)
            if first is not None:
                assert first == "high"
                break
        else:
            raise AssertionError("no attempt could tell which ran first: " + "; ".join(attempts))
        with pytest.raises(InvalidArgumentError, match="priority 3 is outside"):
            client.infer(
                "prioritised", {"x": np.ones((1, SIZE), np.float32)}, parameters={"priority": 3}
            )


def _cancel_attempt(server: RunningServer, client: Client) -> bool:
    """Queue a request behind a blocker, cancel it once the server has queued it; False when
    the blocker ended before it was seen queued (the attempt proves nothing)."""
    from headrace import wire
    from headrace.client import build_infer_request

    request = build_infer_request("batched", {"x": np.ones((1, SIZE), np.float32)})
    before = stats(client, "batched")
    counted = scheduler(server, "batched")
    blocker = _hold_the_instance(server.address, "batched")
    _wait_until_running(client, "batched", before)
    running = stats(client, "batched")

    def blocker_ended() -> bool:
        return _dispatched_since(client, "batched", running)

    with grpc.insecure_channel(server.address) as channel:
        stub = wire.Stub(channel, wire.INFERENCE_SERVICE)
        call = stub.ModelInfer.future(request)
        # Cancelled only once the server has queued it: a cancel that never reached the
        # scheduler would prove nothing.
        wait_for(
            "the request is queued",
            lambda: scheduler(server, "batched")["pending"] == 1 or blocker_ended(),
        )
        if blocker_ended():
            blocker.result(30)
            return False
        assert call.cancel()
        wait_for(
            "the scheduler has removed it",
            lambda: scheduler(server, "batched")["cancelled"] == counted["cancelled"] + 1,
        )
    blocker.result(30)
    after = stats(client, "batched")
    assert after.inference_count - before.inference_count == BLOCKER_ROWS
    assert scheduler(server, "batched")["pending"] == 0
    return True


def test_cancelled_call_leaves_the_queue(batching_server: RunningServer) -> None:
    with Client(batching_server.address) as client:
        for _attempt in range(3):
            if _cancel_attempt(batching_server, client):
                break
        else:
            raise AssertionError("the blocker never outlasted queueing a request")


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
