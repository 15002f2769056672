"""The batcher alone under overload: goodput of the core's policy, without gRPC or an event loop.

    python bench/overload_core.py [--duration-s 5] [--sizes 1024,4096,4096,16] [--max-batch 8]

The same load as bench_overload.py, but submitted straight to a ``_core.Batcher`` running the
MLP through ONNX Runtime's C API: its scheduler and worker threads on CPU 0, the submitting and
draining threads on CPU 1. Capacity is a closed loop of 4 x max_batch requests; then Poisson
arrivals at 2x and 4x capacity, each with a deadline of 3x the batch time. An answer counts as
goodput when it is OK and drained before its deadline. This isolates what the batching policy
does with deadlines (admission, dropping what cannot finish, batches of requests that can) from
the cost of taking requests in through Python, which bench_overload.py measures with it.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import select
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from bench_common import cpu_model, save_mlp

from headrace import _core
from headrace.backends.onnx import native_library
from headrace.errors import HeadraceError

SERVER_CPU = 0
CLIENT_CPU = 1
DEADLINE_BATCHES = 3.0
LOADS = (2.0, 4.0)


class Drainer(threading.Thread):
    """Takes completions off the queue on CPU 1, noting when each arrived."""

    def __init__(self, queue: _core.CompletionQueue) -> None:
        super().__init__(daemon=True)
        self.queue = queue
        self.done: dict[int, tuple[int, float]] = {}
        self.lock = threading.Lock()
        self.stopping = False

    def run(self) -> None:
        os.sched_setaffinity(0, {CLIENT_CPU})
        while not self.stopping:
            select.select([self.queue.fd], [], [], 0.05)
            now = time.perf_counter()
            completions = self.queue.drain()
            with self.lock:
                for ticket, code, _, _ in completions:
                    self.done[ticket] = (code, now)

    def count(self) -> int:
        with self.lock:
            return len(self.done)


def measure(args: argparse.Namespace) -> list[str]:
    library = native_library()
    if library is None:
        raise SystemExit("onnxruntime/capi/libonnxruntime.so* not found")
    folder = Path(tempfile.mkdtemp(prefix="headrace-overload-core-"))
    save_mlp(folder / "model.onnx", args.sizes)
    # Threads inherit the creating thread's affinity: the batcher's go to CPU 0.
    os.sched_setaffinity(0, {SERVER_CPU})
    model = _core.OrtModel(library, str(folder / "model.onnx"), 1, 1)
    queue = _core.CompletionQueue()
    config = _core.BatcherConfig(max_batch_size=args.max_batch, auto_delay=True)
    batcher = _core.Batcher("mlp", config, model.runner(["x"], ["y"]), queue)
    os.sched_setaffinity(0, {CLIENT_CPU})
    drainer = Drainer(queue)
    drainer.start()
    x = np.random.default_rng(0).random((1, args.sizes[0]), dtype=np.float32)
    lines = [
        f"batcher on CPU 0, submitter on CPU 1; {cpu_model()}; MLP {args.sizes}, max_batch_size "
        f"{args.max_batch}, auto delay; core: {_core.__file__}",
    ]
    try:
        # Capacity: a closed loop of 4 x max_batch requests in flight.
        callers = 4 * args.max_batch
        for _ in range(2):  # warm-up, then measured
            sent = 0
            before = batcher.stats()
            start = time.perf_counter()
            end = start + args.duration_s
            while time.perf_counter() < end:
                while sent - drainer.count() < callers:
                    batcher.submit([x])
                    sent += 1
                time.sleep(0.0005)
            while drainer.count() < sent:
                time.sleep(0.001)
            capacity = (drainer.count() - 0) / (time.perf_counter() - start)
            after = batcher.stats()
            with drainer.lock:
                drainer.done.clear()
        executions = after["execution_count"] - before["execution_count"]
        batch_s = (after["compute_ns"] - before["compute_ns"]) / max(executions, 1) / 1e9
        deadline_s = DEADLINE_BATCHES * batch_s
        lines.append(
            f"capacity {capacity:.0f} requests/s; batch time {batch_s * 1e3:.2f} ms; "
            f"deadline {deadline_s * 1e3:.2f} ms"
        )
        lines.append(f"{'load':6} {'offered/s':>9} {'good/s':>7} {'goodput':>7}  outcomes")
        for load in LOADS:
            good, outcomes = overload(batcher, drainer, x, load * capacity, deadline_s, args)
            lines.append(
                f"{load:<6g} {load * capacity:9.0f} {good:7.0f} {good / capacity:7.2f}  "
                + ", ".join(f"{name} {count}" for name, count in outcomes.most_common())
            )
    finally:
        drainer.stopping = True
        batcher.shutdown(drain=False)
    return lines


def overload(
    batcher: _core.Batcher,
    drainer: Drainer,
    x: np.ndarray,  # type: ignore[type-arg]
    rate: float,
    deadline_s: float,
    args: argparse.Namespace,
) -> tuple[float, collections.Counter[str]]:
    rng = random.Random(3)
    sent: dict[int, float] = {}
    outcomes: collections.Counter[str] = collections.Counter()
    start = time.perf_counter()
    next_at = start
    while True:
        next_at += rng.expovariate(rate)
        if next_at - start >= args.duration_s:
            break
        delay = next_at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        now = time.perf_counter()
        try:
            ticket = batcher.submit([x], deadline_ns=_core.monotonic_ns() + int(deadline_s * 1e9))
        except HeadraceError as error:
            outcomes[f"refused {error.code.name}"] += 1
            continue
        sent[ticket] = now
    time.sleep(deadline_s * 2)
    good = 0
    with drainer.lock:
        for ticket, at in sent.items():
            code, done_at = drainer.done.get(ticket, (-1, 0.0))
            if code == 0 and done_at - at <= deadline_s:
                good += 1
                outcomes["OK in time"] += 1
            elif code == 0:
                outcomes["OK late"] += 1
            else:
                outcomes[f"answered {code}"] += 1
        drainer.done.clear()
    return good / args.duration_s, outcomes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration-s", type=float, default=5.0)
    parser.add_argument("--sizes", default="1024,4096,4096,16")
    parser.add_argument("--max-batch", type=int, default=8)
    args = parser.parse_args()
    args.sizes = [int(size) for size in args.sizes.split(",")]
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    lines = measure(args)
    lines.append(f"load average before: {load}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
