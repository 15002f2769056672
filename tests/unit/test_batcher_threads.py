"""A real Batcher (csrc/batching) with Python numpy runners, real threads and real time.

Waiting is on the CompletionQueue's eventfd (select), the way the event loop waits for it.
"""

from __future__ import annotations

import asyncio
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from headrace import _core

OK = 0
CANCELLED = 1
INVALID_ARGUMENT = 3
DEADLINE_EXCEEDED = 4
INTERNAL = 13
UNAVAILABLE = 14

Arrays = list[npt.NDArray[Any]]
Completion = tuple[int, int, str, Arrays | None]


class Collector:
    """Drains a CompletionQueue, remembering every completion and when it arrived."""

    def __init__(self) -> None:
        self.queue = _core.CompletionQueue()
        self.done: dict[int, Completion] = {}
        self.arrived_ns: dict[int, int] = {}

    def wait(self, tickets: Sequence[int], timeout_s: float = 10.0) -> dict[int, Completion]:
        deadline = time.monotonic() + timeout_s
        while missing := set(tickets) - self.done.keys():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no completion for tickets {sorted(missing)}")
            select.select([self.queue.fd], [], [], remaining)
            now = _core.monotonic_ns()
            for completion in self.queue.drain():
                assert completion[0] not in self.done, "a ticket completed twice"
                self.done[completion[0]] = completion
                self.arrived_ns[completion[0]] = now
        return {ticket: self.done[ticket] for ticket in tickets}


class Gate:
    """Lets a runner block until the test opens it, and tells the test it has been entered."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()

    def pass_through(self) -> None:
        self.entered.set()
        assert self.opened.wait(10), "gate never opened"


Factory = Callable[..., tuple[_core.Batcher, Collector]]


@pytest.fixture
def make_batcher() -> Iterator[Factory]:
    made: list[_core.Batcher] = []

    def make(
        runner: Callable[[Arrays], Sequence[npt.NDArray[Any]]], **settings: Any
    ) -> tuple[_core.Batcher, Collector]:
        collector = Collector()
        batcher = _core.Batcher("m", _core.BatcherConfig(**settings), runner, collector.queue)
        made.append(batcher)
        return batcher, collector

    yield make
    for batcher in made:
        batcher.shutdown(drain=False)


def doubling(inputs: Arrays) -> Arrays:
    x, y = inputs
    return [x * 2, x.sum(axis=1), y + 1]


def request(seed: int, rows: int) -> Arrays:
    x = (np.arange(rows * 3, dtype=np.int64).reshape(rows, 3) + 1000 * seed).copy()
    y = np.full(rows, seed, dtype=np.float32)
    return [x, y]


def assert_own_rows(completion: Completion, inputs: Arrays) -> None:
    _, code, message, outputs = completion
    assert code == OK, message
    assert outputs is not None
    x, y = inputs
    np.testing.assert_array_equal(outputs[0], x * 2)
    np.testing.assert_array_equal(outputs[1], x.sum(axis=1))
    np.testing.assert_array_equal(outputs[2], y + 1)
    assert outputs[0].dtype == np.int64 and outputs[2].dtype == np.float32


def test_concurrent_submitters_each_get_exactly_their_own_rows(make_batcher: Factory) -> None:
    batcher, collector = make_batcher(
        doubling, max_batch_size=16, instances=2, max_queue_delay_us=500
    )
    start = threading.Barrier(64)
    sent: dict[int, Arrays] = {}
    lock = threading.Lock()

    def submitter(seed: int) -> None:
        inputs = request(seed, rows=1 + seed % 4)
        start.wait()
        ticket = batcher.submit(inputs)
        with lock:
            sent[ticket] = inputs

    threads = [threading.Thread(target=submitter, args=(seed,)) for seed in range(64)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(sent) == 64
    for ticket, completion in collector.wait(list(sent)).items():
        assert_own_rows(completion, sent[ticket])
    stats = batcher.stats()
    assert stats["request_success"] == 64
    assert stats["inference_count"] == sum(1 + seed % 4 for seed in range(64))
    assert max(stats["batch_sizes"]) <= 16


def test_slow_runner_makes_batches_grow(make_batcher: Factory) -> None:
    def slow(inputs: Arrays) -> Arrays:
        time.sleep(0.02)
        return doubling(inputs)

    batcher, collector = make_batcher(slow, max_batch_size=8, instances=1)
    sent = {batcher.submit(request(seed, 1)): request(seed, 1) for seed in range(24)}
    for ticket, completion in collector.wait(list(sent)).items():
        assert_own_rows(completion, sent[ticket])
    stats = batcher.stats()
    # Delay 0, yet while the one instance is busy the queue grows into bigger batches.
    assert stats["execution_count"] < 24
    assert max(stats["batch_sizes"]) > 1
    assert (
        sum(entry["count"] for entry in stats["batch_sizes"].values()) == stats["execution_count"]
    )
    assert stats["inference_count"] == 24
    assert stats["queue_count"] == 24 and stats["queue_ns"] > 0
    assert stats["compute_count"] == stats["execution_count"]
    assert stats["compute_ns"] >= stats["execution_count"] * 20_000_000
    assert stats["last_inference_ms"] > 1_600_000_000_000


def test_deadline_passing_while_queued_completes_at_the_deadline(make_batcher: Factory) -> None:
    gate = Gate()
    seen: list[int] = []

    def runner(inputs: Arrays) -> Arrays:
        seen.extend(int(v) for v in inputs[1])
        gate.pass_through()
        return doubling(inputs)

    batcher, collector = make_batcher(runner, max_batch_size=8, instances=1)
    first = batcher.submit(request(1, 1))
    assert gate.entered.wait(5)
    deadline_ns = _core.monotonic_ns() + 50_000_000
    late = batcher.submit(request(2, 1), deadline_ns=deadline_ns)
    try:
        (_, code, message, outputs) = collector.wait([late], timeout_s=5)[late]
    finally:
        gate.opened.set()
    assert code == DEADLINE_EXCEEDED, message
    assert outputs is None
    lateness_ms = (collector.arrived_ns[late] - deadline_ns) / 1e6
    assert 0 <= lateness_ms < 25, f"answered {lateness_ms:.1f} ms after its deadline"
    assert collector.wait([first])[first][1] == OK
    assert 2 not in seen
    assert batcher.stats()["expired_count"] == 1


def test_default_timeout_applies_when_the_request_gives_none(make_batcher: Factory) -> None:
    gate = Gate()

    def runner(inputs: Arrays) -> Arrays:
        gate.pass_through()
        return doubling(inputs)

    batcher, collector = make_batcher(runner, instances=1, default_timeout_us=30_000)
    first = batcher.submit(request(1, 1), deadline_ns=_core.monotonic_ns() + 10**10)
    assert gate.entered.wait(5)
    queued = batcher.submit(request(2, 1))
    try:
        assert collector.wait([queued])[queued][1] == DEADLINE_EXCEEDED
    finally:
        gate.opened.set()
    assert collector.wait([first])[first][1] == OK


def test_overflow_is_refused_at_once_while_admitted_requests_succeed(
    make_batcher: Factory,
) -> None:
    gate = Gate()

    def runner(inputs: Arrays) -> Arrays:
        gate.pass_through()
        return doubling(inputs)

    batcher, collector = make_batcher(runner, max_batch_size=8, instances=1, max_queue_size=4)
    sent = {batcher.submit(request(0, 1)): request(0, 1)}
    assert gate.entered.wait(5)
    for seed in range(1, 5):
        sent[batcher.submit(request(seed, 2))] = request(seed, 2)
    started = time.monotonic()
    with pytest.raises(_core.CoreError) as refused:
        batcher.submit(request(9, 1))
    assert time.monotonic() - started < 0.05
    assert (
        refused.value.code == UNAVAILABLE
        and refused.value.message == "queue full: 4 requests queued for model m"
    )
    gate.opened.set()
    for ticket, completion in collector.wait(list(sent)).items():
        assert_own_rows(completion, sent[ticket])
    assert batcher.stats()["rejected_count"] == 1


def test_runner_exception_fails_only_its_batch(make_batcher: Factory) -> None:
    gate = Gate()

    def runner(inputs: Arrays) -> Arrays:
        gate.pass_through()
        if (inputs[1] < 0).any():
            raise ValueError("poisoned row")
        return doubling(inputs)

    batcher, collector = make_batcher(runner, max_batch_size=8, instances=1)
    before = batcher.submit(request(1, 1))
    assert gate.entered.wait(5)
    # Both queue while the first batch runs, so they form the next batch together.
    poisoned = batcher.submit(request(-1, 1))
    neighbour = batcher.submit(request(2, 2))
    gate.opened.set()
    done = collector.wait([before, poisoned, neighbour])
    assert_own_rows(done[before], request(1, 1))
    for ticket in (poisoned, neighbour):
        _, code, message, outputs = done[ticket]
        assert code == INTERNAL
        assert "ValueError" in message and "poisoned row" in message
        assert outputs is None
    after = batcher.submit(request(3, 1))
    assert_own_rows(collector.wait([after])[after], request(3, 1))
    stats = batcher.stats()
    assert stats["request_failure"] == 2 and stats["request_success"] == 2


def test_wrong_row_count_from_the_runner_fails_the_batch(make_batcher: Factory) -> None:
    batcher, collector = make_batcher(lambda inputs: [inputs[0][:-1]], max_batch_size=8)
    ticket = batcher.submit(request(1, 3))
    _, code, message, outputs = collector.wait([ticket])[ticket]
    assert code == INTERNAL and outputs is None
    assert "2 rows" in message and "3 rows" in message


def test_runner_returning_no_list_fails_the_batch(make_batcher: Factory) -> None:
    batcher, collector = make_batcher(lambda inputs: inputs[0], max_batch_size=8)
    ticket = batcher.submit(request(1, 1))
    _, code, message, _ = collector.wait([ticket])[ticket]
    assert code == INTERNAL and "list" in message


def test_shutdown_with_drain_runs_the_queue(make_batcher: Factory) -> None:
    gate = Gate()

    def runner(inputs: Arrays) -> Arrays:
        gate.pass_through()
        return doubling(inputs)

    batcher, collector = make_batcher(
        runner, max_batch_size=4, instances=1, max_queue_delay_us=10**6
    )
    sent = {batcher.submit(request(0, 1)): request(0, 1)}
    assert gate.entered.wait(5)
    for seed in range(1, 10):
        sent[batcher.submit(request(seed, 1))] = request(seed, 1)
    stopper = threading.Thread(target=batcher.shutdown, kwargs={"drain": True})
    stopper.start()
    time.sleep(0.05)
    assert stopper.is_alive()  # still draining behind the gate
    gate.opened.set()
    stopper.join(10)
    assert not stopper.is_alive()
    # Everything queued ran (without waiting out the 1 s delay), and was answered before
    # shutdown returned.
    assert collector.queue.pending == len(sent)
    for ticket, completion in collector.wait(list(sent), timeout_s=0.5).items():
        assert_own_rows(completion, sent[ticket])
    with pytest.raises(_core.CoreError) as refused:
        batcher.submit(request(11, 1))
    assert refused.value.code == UNAVAILABLE


def test_shutdown_without_drain_answers_the_queue_unavailable(make_batcher: Factory) -> None:
    gate = Gate()

    def runner(inputs: Arrays) -> Arrays:
        gate.pass_through()
        return doubling(inputs)

    batcher, collector = make_batcher(runner, max_batch_size=4, instances=1)
    running = batcher.submit(request(0, 1))
    assert gate.entered.wait(5)
    queued = [batcher.submit(request(seed, 1)) for seed in range(1, 4)]
    stopper = threading.Thread(target=batcher.shutdown, kwargs={"drain": False})
    stopper.start()
    for ticket, (_, code, message, _) in collector.wait(queued).items():
        assert (code, message) == (UNAVAILABLE, "shutting down"), ticket
    gate.opened.set()
    stopper.join(10)
    assert_own_rows(collector.wait([running])[running], request(0, 1))


def test_cancel_removes_a_queued_request(make_batcher: Factory) -> None:
    gate = Gate()
    seen: list[int] = []

    def runner(inputs: Arrays) -> Arrays:
        seen.extend(int(v) for v in inputs[1])
        gate.pass_through()
        return doubling(inputs)

    batcher, collector = make_batcher(runner, max_batch_size=4, instances=1)
    running = batcher.submit(request(1, 1))
    assert gate.entered.wait(5)
    queued = batcher.submit(request(2, 1))
    kept = batcher.submit(request(3, 1))
    assert batcher.cancel(queued) is True
    assert batcher.cancel(queued) is False  # already answered
    assert batcher.cancel(running) is False  # a running batch is not interrupted
    assert batcher.cancel(10**12) is False
    _, code, _, outputs = collector.wait([queued])[queued]
    assert code == CANCELLED and outputs is None
    gate.opened.set()
    done = collector.wait([running, kept])
    assert_own_rows(done[running], request(1, 1))
    assert_own_rows(done[kept], request(3, 1))
    assert 2 not in seen
    assert batcher.stats()["cancelled_count"] == 1


@pytest.mark.parametrize(
    "dtype",
    ["?", "u1", "u2", "u4", "u8", "i1", "i2", "i4", "i8", "f2", "f4", "f8"],
)
def test_every_fixed_size_dtype_round_trips(make_batcher: Factory, dtype: str) -> None:
    batcher, collector = make_batcher(lambda inputs: list(inputs), max_batch_size=8)
    sent = {}
    for seed in range(3):
        array = (np.arange(seed + 1)[:, None] * 3 + np.arange(3)[None, :] + seed).astype(dtype)
        sent[batcher.submit([array])] = array
    for ticket, (_, code, message, outputs) in collector.wait(list(sent)).items():
        assert code == OK, message
        assert outputs is not None
        assert outputs[0].dtype == np.dtype(dtype)
        np.testing.assert_array_equal(outputs[0], sent[ticket])


def test_bfloat16_as_uint16_view_and_strided_inputs(make_batcher: Factory) -> None:
    batcher, collector = make_batcher(lambda inputs: list(inputs), max_batch_size=8)
    as_bf16 = (np.arange(8, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)
    strided = np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2]  # not C-contiguous
    one = batcher.submit([as_bf16.reshape(4, 2), strided])
    two = batcher.submit([as_bf16[:2].reshape(1, 2), strided[:1]])
    done = collector.wait([one, two])
    outputs = done[one][3]
    assert outputs is not None
    np.testing.assert_array_equal(outputs[0], as_bf16.reshape(4, 2))
    np.testing.assert_array_equal(outputs[1], strided)
    second = done[two][3]
    assert second is not None
    np.testing.assert_array_equal(second[1], strided[:1])


def test_bytes_inputs_and_outputs(make_batcher: Factory) -> None:
    def runner(inputs: Arrays) -> Arrays:
        (texts,) = inputs
        assert texts.dtype == object
        upper = np.array([t.upper() for t in texts.ravel()], dtype=object).reshape(texts.shape)
        return [upper]

    batcher, collector = make_batcher(runner, max_batch_size=8, max_queue_delay_us=2000)
    first = np.array([[b"ab", b""], ["c\u00e9", b"x\x00y"]], dtype=object)
    second = np.array([[b"q", b"rs"]], dtype=object)
    tickets = [batcher.submit([first]), batcher.submit([second])]
    done = collector.wait(tickets)
    out_first, out_second = (done[t][3] for t in tickets)
    assert out_first is not None and out_second is not None
    assert out_first[0].tolist() == [[b"AB", b""], ["c\u00e9".encode().upper(), b"X\x00Y"]]
    assert out_second[0].tolist() == [[b"Q", b"RS"]]


@pytest.mark.parametrize(
    ("inputs", "fragment"),
    [
        ([np.zeros((2, 3)), np.zeros((3,))], "rows"),
        ([np.float32(1.0)], "not a numpy array"),
        ([np.array(1.0)], "batch dimension"),
        ([np.zeros((0, 3))], "0 rows"),
        ([np.zeros((2,), dtype=np.complex64)], "unsupported numpy dtype"),
        ([np.zeros((2,), dtype=">f4")], "big-endian"),
        ([], "no inputs"),
        (np.zeros((2, 3)), "list of numpy arrays"),  # an array is not a list of inputs
    ],
)
def test_bad_inputs_are_refused(make_batcher: Factory, inputs: Arrays, fragment: str) -> None:
    batcher, _ = make_batcher(lambda inputs: list(inputs))
    with pytest.raises(_core.CoreError) as refused:
        batcher.submit(inputs)
    code, message = refused.value.code, refused.value.message
    assert code == INVALID_ARGUMENT
    assert fragment in message


def test_eventfd_is_readable_only_while_completions_wait(make_batcher: Factory) -> None:
    batcher, collector = make_batcher(doubling, max_batch_size=8)
    fd = collector.queue.fd
    assert select.select([fd], [], [], 0)[0] == []
    ticket = batcher.submit(request(1, 1))
    assert select.select([fd], [], [], 5)[0] == [fd]
    collector.wait([ticket])
    assert select.select([fd], [], [], 0)[0] == []
    assert collector.queue.drain() == []


def test_destroying_a_busy_batcher_is_safe() -> None:
    queue = _core.CompletionQueue()
    release = threading.Event()

    def runner(inputs: Arrays) -> Arrays:
        release.wait(0.2)
        return list(inputs)

    batcher = _core.Batcher("m", _core.BatcherConfig(instances=2), runner, queue)
    tickets = [batcher.submit([np.ones((1, 2))]) for _ in range(6)]
    del batcher  # joins its threads without deadlocking on the GIL
    codes = {completion[0]: completion[1] for completion in queue.drain()}
    assert set(codes) == set(tickets)
    assert set(codes.values()) <= {OK, UNAVAILABLE}


EXIT_WITH_LIVE_BATCHER = """
import sys, threading, time
import numpy as np
from headrace import _core

started = threading.Event()

def runner(inputs):
    started.set()
    time.sleep(0.5)
    # One write per line: print() writes text and newline separately, and two workers
    # finishing together could interleave them.
    sys.stdout.write("batch done\\n")
    sys.stdout.flush()
    return list(inputs)

queue = _core.CompletionQueue()
batcher = _core.Batcher("m", _core.BatcherConfig(instances=2), runner, queue)
for _ in range(20):
    batcher.submit([np.ones((1, 2))])
started.wait(5)
print("exiting", flush=True)
"""


def test_interpreter_exit_with_a_live_busy_batcher_finishes_running_batches() -> None:
    # Worker threads in a runner need the GIL; an atexit hook shuts live batchers down (without
    # draining) while the interpreter is whole, so running batches finish and the joins return
    # instead of the workers being cut off (or hanging) in finalization.
    result = subprocess.run(
        [sys.executable, "-c", EXIT_WITH_LIVE_BATCHER],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "exiting"
    assert lines[1:] and set(lines[1:]) == {"batch done"}


def test_onnxruntime_session_as_the_runner(make_batcher: Factory) -> None:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "two"], ["doubled"]),
            helper.make_node("ReduceSum", ["x", "axes"], ["sums"], keepdims=0),
        ],
        "doubling",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [
            helper.make_tensor_value_info("doubled", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("sums", TensorProto.FLOAT, ["batch"]),
        ],
        initializer=[
            helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
            helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert onnx.checker.check_model(model) is None

    def runner(inputs: Arrays) -> Arrays:
        return list(session.run(None, {"x": inputs[0]}))

    batcher, collector = make_batcher(runner, max_batch_size=32, instances=2)
    sent: dict[int, npt.NDArray[Any]] = {}
    lock = threading.Lock()

    def submitter(seed: int) -> None:
        x = np.arange(4 * (1 + seed % 3), dtype=np.float32).reshape(-1, 4) + seed
        ticket = batcher.submit([x])
        with lock:
            sent[ticket] = x

    threads = [threading.Thread(target=submitter, args=(seed,)) for seed in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for ticket, (_, code, message, outputs) in collector.wait(list(sent)).items():
        assert code == OK, message
        assert outputs is not None
        np.testing.assert_array_equal(outputs[0], sent[ticket] * 2)
        np.testing.assert_allclose(outputs[1], sent[ticket].sum(axis=1))


def test_asyncio_loop_wakes_on_the_eventfd(make_batcher: Factory) -> None:
    batcher, collector = make_batcher(doubling, max_batch_size=8, instances=2)

    async def main() -> dict[int, Completion]:
        loop = asyncio.get_running_loop()
        waiting: dict[int, asyncio.Future[Completion]] = {}
        wakeups = 0

        def on_readable() -> None:
            nonlocal wakeups
            wakeups += 1
            for completion in collector.queue.drain():
                waiting[completion[0]].set_result(completion)

        loop.add_reader(collector.queue.fd, on_readable)
        try:
            for seed in range(20):
                waiting[batcher.submit(request(seed, 2))] = loop.create_future()
            results = await asyncio.wait_for(asyncio.gather(*waiting.values()), 10)
        finally:
            loop.remove_reader(collector.queue.fd)
        assert 1 <= wakeups <= 20
        return {completion[0]: completion for completion in results}

    done = asyncio.run(main())
    assert len(done) == 20
    for seed, (_, completion) in enumerate(sorted(done.items())):
        assert_own_rows(completion, request(seed, 2))


def test_python_runners_never_run_in_the_submitting_thread(make_batcher: Factory) -> None:
    batcher, collector = make_batcher(doubling, max_batch_size=8)
    for seed in range(30):
        inputs = request(seed, 1)
        ticket, here = batcher.submit_or_run(inputs)
        assert not here
        assert_own_rows(collector.wait([ticket])[ticket], inputs)
