"""Deadline admission on a real Batcher (threads, a Python runner held by a gate): a request is
refused at submit when its deadline has passed or the queue ahead of it makes it late, and one
admitted but overtaken by time leaves the queue without running. Outcomes are decided by state
(gates, completions, counters), never by a sleep or a latency bound."""

from __future__ import annotations

import select
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from headrace import _core
from headrace.errors import DeadlineExceededError, UnavailableError

OK = 0
DEADLINE_EXCEEDED = 4
UNAVAILABLE = 14
MS = 1_000_000
# The calibration batches sleep this long, so the fitted cost of a batch is at least this.
CALIBRATION_NS = 10 * MS

Arrays = list[npt.NDArray[Any]]


class GatedRunner:
    """Echoes its inputs; calibration batches sleep CALIBRATION_NS, then every batch waits at
    the gate while it is closed. Remembers the first value of every row it ran."""

    def __init__(self) -> None:
        self.calibrating = True
        self.entered = threading.Event()
        self.opened = threading.Event()
        self.opened.set()
        self.seen: list[int] = []

    def __call__(self, inputs: Arrays) -> Arrays:
        self.seen.extend(int(v) for v in inputs[0][:, 0])
        if self.calibrating:
            time.sleep(CALIBRATION_NS / 1e9)
        self.entered.set()
        assert self.opened.wait(30), "gate never opened"
        return list(inputs)


class Harness:
    def __init__(self, **settings: Any) -> None:
        self.runner = GatedRunner()
        self.queue = _core.CompletionQueue()
        self.batcher = _core.Batcher("m", _core.BatcherConfig(**settings), self.runner, self.queue)
        self.done: dict[int, tuple[int, int, str, Any]] = {}

    def wait(self, ticket: int) -> tuple[int, str]:
        deadline = time.monotonic() + 30
        while ticket not in self.done:
            assert select.select([self.queue.fd], [], [], deadline - time.monotonic())[0]
            for completion in self.queue.drain():
                self.done[completion[0]] = completion
        _, code, message, _ = self.done[ticket]
        return code, message

    def calibrate(self) -> None:
        """Enough batches for the cost model to predict (each costs >= CALIBRATION_NS)."""
        for value in range(-8, 0):
            ticket = self.batcher.submit([row(value)])
            assert self.wait(ticket)[0] == OK
        assert self.batcher.stats()["cost_samples"] >= 4
        self.runner.calibrating = False

    def hold(self) -> int:
        """Occupy the one instance with a batch that waits at the closed gate."""
        self.runner.entered.clear()
        self.runner.opened.clear()
        ticket = self.batcher.submit([row(0)])
        assert self.runner.entered.wait(30)
        return ticket


def row(value: int) -> npt.NDArray[np.int64]:
    return np.full((1, 2), value, dtype=np.int64)


Make = Callable[..., Harness]


@pytest.fixture
def harness() -> Iterator[Make]:
    made: list[Harness] = []

    def make(**settings: Any) -> Harness:
        made.append(Harness(**settings))
        return made[-1]

    yield make
    for each in made:
        each.runner.opened.set()
        each.batcher.shutdown(drain=False)


def test_an_expired_deadline_is_refused_at_submit(harness: Make) -> None:
    h = harness(max_batch_size=4)
    with pytest.raises(DeadlineExceededError) as refused:
        h.batcher.submit([row(7)], deadline_ns=_core.monotonic_ns() - 1)
    assert (refused.value.code, refused.value.message) == (
        DEADLINE_EXCEEDED,
        "deadline already passed when the request reached model m",
    )
    stats = h.batcher.stats()
    assert stats["deadline_refused_count"] == 1
    assert stats["request_failure"] == 0 and stats["pending_requests"] == 0
    assert h.runner.seen == []


def test_a_request_the_queue_makes_late_is_refused_at_once(harness: Make) -> None:
    h = harness(max_batch_size=2, instances=1)
    h.calibrate()
    held = h.hold()
    queued = [h.batcher.submit([row(value)]) for value in range(1, 7)]  # 3 batches of 2 ahead
    # Predicted wait >= 3 batches x 10 ms, plus its own run: 15 ms cannot be enough.
    with pytest.raises(UnavailableError) as refused:
        h.batcher.submit([row(99)], deadline_ns=_core.monotonic_ns() + 15 * MS)
    code, message = refused.value.code, refused.value.message
    assert code == UNAVAILABLE
    assert message.startswith("model m cannot answer before the request's deadline: ")
    assert "queued behind earlier requests" in message
    # A deadline that leaves room is admitted behind the same queue.
    roomy = h.batcher.submit([row(100)], deadline_ns=_core.monotonic_ns() + 60 * 10**9)
    h.runner.opened.set()
    for ticket in [held, *queued, roomy]:
        assert h.wait(ticket)[0] == OK
    stats = h.batcher.stats()
    assert stats["deadline_refused_count"] == 1
    assert stats["request_failure"] == 0
    assert 99 not in h.runner.seen and 100 in h.runner.seen


def test_an_admitted_request_that_can_no_longer_finish_leaves_without_running(
    harness: Make,
) -> None:
    h = harness(max_batch_size=2, instances=1)
    h.calibrate()
    held = h.hold()
    # Nothing queued ahead: admitted (the running batch counts as ending now), then overtaken
    # by time while the gate holds the instance.
    late = h.batcher.submit([row(42)], deadline_ns=_core.monotonic_ns() + 100 * MS)
    code, message = h.wait(late)
    assert code == DEADLINE_EXCEEDED and "deadline exceeded" in message
    stats = h.batcher.stats()
    assert stats["expired_count"] == 1  # doomed or expired: both are answered from the queue
    assert stats["doomed_count"] <= 1
    assert stats["pending_requests"] == 0
    h.runner.opened.set()
    assert h.wait(held)[0] == OK
    assert 42 not in h.runner.seen


def test_before_parsing_a_deadline_out_of_reach_behind_the_work_in_flight_is_refused(
    harness: Make,
) -> None:
    h = harness(max_batch_size=2, instances=1)
    h.calibrate()
    # Nothing queued, nothing in flight: one row fits a 1 s deadline, not an expired one.
    h.batcher.check_deadline(_core.monotonic_ns() + 10**9)
    with pytest.raises(DeadlineExceededError):
        h.batcher.check_deadline(_core.monotonic_ns() - 1)
    # Six requests in flight to the model (being parsed, routed, run) count as at least six
    # rows ahead: three batches of >= 10 ms before one of its own cannot fit 15 ms.
    with pytest.raises(UnavailableError, match="cannot answer before the request's deadline"):
        h.batcher.check_deadline(_core.monotonic_ns() + 15 * MS, in_flight=6)
    h.batcher.check_deadline(_core.monotonic_ns() + 60 * 10**9, in_flight=6)
    h.batcher.check_deadline(0, in_flight=6)  # no deadline: nothing to judge
    stats = h.batcher.stats()
    assert stats["deadline_refused_count"] == 2
    assert stats["pending_requests"] == 0 and stats["request_failure"] == 0
