"""Helpers for the serving tests of the registry: an in-process server with any settings, 16
callers that record every answer, and the check that each answer came from a version that was
serving at some moment between the request's send and its answer."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from headrace.client import Client

CALLERS = 16
HANG_GUARD_S = 180.0  # a wait that takes this long is a hang, not a slow machine


@dataclass
class Serving:
    """A headrace grpc.aio server on its own uvloop thread (port 0)."""

    address: str
    server: Any
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread

    @property
    def engine(self) -> Any:
        return self.server.engine

    def run(self, coroutine: Coroutine[Any, Any, Any], timeout_s: float = HANG_GUARD_S) -> Any:
        """Run a coroutine on the server's loop (e.g. a poll, or waiting for idle)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout_s)

    def stop(self) -> None:
        self.run(self.server.stop(5.0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


def start_serving(**settings: Any) -> Serving:
    import uvloop

    from headrace.config import ServerSettings
    from headrace.engine import Engine
    from headrace.server import Server

    config = ServerSettings(grpc_port=0, metrics_port=-1, **settings)
    engine = Engine(config)
    engine.load_repository()
    server = Server(engine, config)
    loop = uvloop.new_event_loop()
    started = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(server.start())
        except BaseException as error:  # reported to the test below
            failure.append(error)
            started.set()
            return
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(HANG_GUARD_S), "server did not start"
    if failure:
        raise failure[0]
    return Serving(f"127.0.0.1:{server.grpc_port}", server, loop, thread)


@contextmanager
def serving(**settings: Any) -> Iterator[Serving]:
    running = start_serving(**settings)
    try:
        yield running
    finally:
        running.stop()


@dataclass(frozen=True)
class Answer:
    sent_s: float
    answered_s: float
    version: str
    value: float


@dataclass
class Callers:
    """``CALLERS`` threads calling ``model`` until stopped; every answer and failure kept."""

    address: str
    model: str
    inputs: dict[str, np.ndarray[Any, Any]]
    output: str
    version: str = ""  # what the requests name: empty (the default version), or an alias
    count: int = CALLERS
    answers: list[Answer] = field(default_factory=list)
    failures: list[BaseException] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _answered: threading.Condition = field(default_factory=threading.Condition)

    def _call(self) -> None:
        with Client(self.address) as client:
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    result = client.infer(self.model, self.inputs, version=self.version)
                except BaseException as error:  # every failure is a finding
                    self.failures.append(error)
                    return
                answer = Answer(
                    sent,
                    time.monotonic(),
                    result.model_version,
                    float(np.asarray(result.outputs[self.output]).flat[0]),
                )
                with self._answered:
                    self.answers.append(answer)
                    self._answered.notify_all()

    def start(self) -> Callers:
        self._threads = [threading.Thread(target=self._call) for _ in range(self.count)]
        for thread in self._threads:
            thread.start()
        return self

    def wait_for(self, predicate: Callable[[Answer], bool], after_s: float = 0.0) -> Answer:
        """The first answer sent at or after ``after_s`` that satisfies ``predicate``."""
        deadline = time.monotonic() + HANG_GUARD_S
        seen = 0
        with self._answered:
            while True:
                assert not self.failures, self.failures
                for answer in self.answers[seen:]:
                    if answer.sent_s >= after_s and predicate(answer):
                        return answer
                seen = len(self.answers)
                left = deadline - time.monotonic()
                assert left > 0, "no such answer: hang guard"
                self._answered.wait(left)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)


@dataclass(frozen=True)
class Move:
    """The source was told to serve ``version`` at ``moved_s``; an answer sent at
    ``confirmed_s`` came from it (so it served from then on, until the next move)."""

    version: str
    moved_s: float
    confirmed_s: float


def check_answers_against_moves(answers: list[Answer], moves: list[Move]) -> None:
    """Every answer came from a version that served at some moment between its send and its
    answer: not before that version's move, not sent after the next version was confirmed."""
    index = {move.version: k for k, move in enumerate(moves)}
    assert len(index) == len(moves), "versions must be distinct"
    for answer in answers:
        assert answer.version in index, f"answer from a version never moved to: {answer}"
        k = index[answer.version]
        assert answer.answered_s >= moves[k].moved_s, (answer, moves[k])
        if k + 1 < len(moves):
            assert answer.sent_s <= moves[k + 1].confirmed_s, (answer, moves[k + 1])


class ServeProcess:
    """``headrace serve`` as a real process; the address read from its "serving" line."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        import os
        import re
        import subprocess
        import sys

        self.process = subprocess.Popen(
            [sys.executable, "-m", "headrace", "serve", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )
        assert self.process.stdout is not None
        self.output: list[str] = []
        self.address = ""
        pattern = re.compile(r"serving gRPC on ([\d.]+):(\d+)")
        for line in self.process.stdout:  # ends when the process does
            self.output.append(line)
            match = pattern.search(line)
            if match:
                self.address = f"{match.group(1)}:{match.group(2)}"
                break
        if not self.address:
            self.process.kill()
            raise AssertionError("headrace serve did not start:\n" + "".join(self.output))
        # Keep reading, so that the server never blocks on a full pipe.
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        self.process.kill()
        self.process.wait(60)
        self._reader.join(60)
        assert self.process.stdout is not None
        self.process.stdout.close()
