"""How a validated request runs: one interface over batched and direct execution.

``BatchedExecution`` hands requests to the native batcher (queue, deadlines, priorities, one
copy into the batch buffer; finished requests come back through the engine's completion queue).
``DirectExecution`` runs each request on its own call through a pool of ``instances`` threads,
for models without a batch dimension. Either way the event loop only awaits. Wire BYTES inputs
(``WireBytes``) go to the batcher as they are; direct execution expands them on its thread.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import numpy.typing as npt

from headrace.engine.completions import CompletionRouter, Outputs
from headrace.errors import DeadlineExceededError, runner_failure
from headrace.native import core as _core
from headrace.thread_policy import start_helper_thread
from headrace.types import BatchStatistics, InputTensor, VersionStatistics, as_array

Arrays = dict[str, npt.NDArray[Any]]
Inputs = Mapping[str, InputTensor]


class Execution(Protocol):
    """Runs validated requests of one model version; callable from any thread."""

    def infer(
        self,
        inputs: Inputs,
        output_names: Sequence[str],
        priority: int,
        deadline_ns: int,
    ) -> Arrays:
        """Run one request, blocking the calling thread until it is answered."""
        ...

    async def infer_async(
        self,
        inputs: Inputs,
        output_names: Sequence[str],
        priority: int,
        deadline_ns: int,
        inline: bool = True,
    ) -> Arrays:
        """Run one request; the event loop only awaits. ``inline=False``: a batch is never run
        on the caller's thread, however cheap (shadow copies: never on the event loop)."""
        ...

    def check_deadline(self, deadline_ns: int, in_flight: int = 0) -> None:
        """Before a request is parsed: raise DeadlineExceededError / UnavailableError when even
        the least demanding request (one row) could not be answered before ``deadline_ns``,
        behind ``in_flight`` requests of the model admitted and not yet answered."""
        ...

    def fill_statistics(self, stats: VersionStatistics) -> None:
        """Write the execution-side numbers (counts, queue and compute time, batch sizes)."""
        ...

    def close(self) -> None:
        """Finish what was accepted, then stop; no call follows."""
        ...


class BatchedExecution:
    """Requests through the native batcher of one version."""

    def __init__(
        self,
        label: str,
        config: Any,  # _core.BatcherConfig
        runner: Any,  # a native runner, or a Python callable list[array] -> list[array]
        completions: CompletionRouter,
        input_names: Sequence[str],
        output_names: Sequence[str],
        drift: Any = None,  # native drift counts, applied by the batcher after each run
    ) -> None:
        self._batcher = _core.Batcher(label, config, runner, completions.queue, drift=drift)
        self._completions = completions
        self._input_names = list(input_names)
        self._output_names = list(output_names)

    def _submit(
        self, inputs: Inputs, priority: int, deadline_ns: int, inline: bool = True
    ) -> tuple[int, Outputs | None]:
        """Queue a request: (ticket, None), or (ticket, outputs) when its batch was cheap enough
        to run right here (its completion is then taken at once: no wake-up, no future) and
        ``inline`` allows that."""
        # Arrays, and wire BYTES: the core's own BytesTensor, which the batcher takes as it is.
        # map() rather than a comprehension: no function call of its own on Python 3.11.
        arrays: list[Any] = list(map(inputs.__getitem__, self._input_names))
        if not inline:
            return self._batcher.submit(arrays, priority, deadline_ns), None
        ticket, ran_here = self._batcher.submit_or_run(arrays, priority, deadline_ns)
        if ran_here:
            return ticket, self._completions.take_now(ticket)
        return ticket, None

    def _pick(self, outputs: Outputs, output_names: Sequence[str]) -> Arrays:
        by_name = dict(zip(self._output_names, outputs, strict=True))
        if output_names == self._output_names:  # all of them, in the model's order
            return by_name
        return {name: by_name[name] for name in output_names}

    def infer(
        self,
        inputs: Inputs,
        output_names: Sequence[str],
        priority: int,
        deadline_ns: int,
    ) -> Arrays:
        ticket, done = self._submit(inputs, priority, deadline_ns)
        if done is None:
            done = self._completions.wait(ticket)
        return self._pick(done, output_names)

    async def infer_async(
        self,
        inputs: Inputs,
        output_names: Sequence[str],
        priority: int,
        deadline_ns: int,
        inline: bool = True,
    ) -> Arrays:
        # A cancelled caller's request leaves the batcher's queue.
        ticket, done = self._submit(inputs, priority, deadline_ns, inline)
        if done is None:
            future = self._completions.future_for(ticket)
            try:
                done = await future
            except asyncio.CancelledError:
                self._batcher.cancel(ticket)
                self._completions.abandon(ticket)
                raise
        return self._pick(done, output_names)

    def check_deadline(self, deadline_ns: int, in_flight: int = 0) -> None:
        self._batcher.check_deadline(deadline_ns, in_flight)

    def fill_statistics(self, stats: VersionStatistics) -> None:
        # Execution-side numbers are kept by the scheduler itself.
        core = self._batcher.stats()
        stats.inference_count = int(core["inference_count"])
        stats.execution_count = int(core["execution_count"])
        stats.queue_count = int(core["queue_count"])
        stats.queue_ns = int(core["queue_ns"])
        stats.compute_count = int(core["compute_count"])
        stats.compute_ns = int(core["compute_ns"])
        stats.last_inference_ms = int(core["last_inference_ms"])
        stats.pending_requests = int(core["pending_requests"])
        stats.shed_count = int(core["shed_count"])
        stats.expired_count = int(core["expired_count"])
        stats.doomed_count = int(core["doomed_count"])
        stats.cancelled_count = int(core["cancelled_count"])
        stats.rejected_count = int(core["rejected_count"])
        stats.deadline_refused_count = int(core["deadline_refused_count"])
        stats.batches = {
            int(rows): BatchStatistics(int(entry["count"]), int(entry["compute_ns"]))
            for rows, entry in core["batch_sizes"].items()
        }

    def close(self) -> None:
        self._batcher.shutdown(drain=True)


class DirectExecution:
    """One run per request on ``instances`` threads (models without a batch dimension)."""

    def __init__(
        self,
        name: str,
        instances: int,
        run: Callable[[Mapping[str, npt.NDArray[Any]], Sequence[str]], list[npt.NDArray[Any]]],
        rows: Callable[[Mapping[str, npt.NDArray[Any]]], int],
    ) -> None:
        self._name = name
        self._run = run
        self._rows = rows
        self._executor = ThreadPoolExecutor(
            max_workers=max(1, instances),
            thread_name_prefix=f"headrace-{name}",
            initializer=start_helper_thread,
        )
        self._lock = threading.Lock()
        self._stats = VersionStatistics(name, "")

    def _execute(self, inputs: Inputs, output_names: Sequence[str], enqueue_ns: int) -> Arrays:
        start_ns = time.perf_counter_ns()
        # Wire BYTES are expanded here, on the instance's thread, where the runner needs them.
        expanded = {name: as_array(tensor) for name, tensor in inputs.items()}
        try:
            arrays = self._run(expanded, output_names)
        except Exception as error:  # one rule for how a runner's failure reads (errors.py)
            raise runner_failure(error) from error
        end_ns = time.perf_counter_ns()
        self._record(self._rows(expanded), start_ns - enqueue_ns, end_ns - start_ns)
        return dict(zip(output_names, arrays, strict=True))

    def _record(self, rows: int, queue_ns: int, compute_ns: int) -> None:
        with self._lock:
            s = self._stats
            s.inference_count += rows
            s.execution_count += 1
            s.queue_count += 1
            s.queue_ns += queue_ns
            s.compute_count += 1
            s.compute_ns += compute_ns
            s.last_inference_ms = int(time.time() * 1000)
            batch = s.batches.setdefault(rows, BatchStatistics())
            batch.count += 1
            batch.compute_ns += compute_ns

    def infer(
        self,
        inputs: Inputs,
        output_names: Sequence[str],
        priority: int,
        deadline_ns: int,
    ) -> Arrays:
        return self._execute(inputs, output_names, time.perf_counter_ns())

    async def infer_async(
        self,
        inputs: Inputs,
        output_names: Sequence[str],
        priority: int,
        deadline_ns: int,
        inline: bool = True,  # never inline here: every run is on an instance thread
    ) -> Arrays:
        start_ns = time.perf_counter_ns()
        self.check_deadline(deadline_ns)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, self._execute, inputs, output_names, start_ns
        )

    def check_deadline(self, deadline_ns: int, in_flight: int = 0) -> None:
        # No cost model here: only a deadline already passed is certain.
        if deadline_ns and _core.monotonic_ns() >= deadline_ns:
            raise DeadlineExceededError(f"model '{self._name}': deadline passed")

    def fill_statistics(self, stats: VersionStatistics) -> None:
        with self._lock:
            s = self._stats
            stats.inference_count = s.inference_count
            stats.execution_count = s.execution_count
            stats.queue_count = s.queue_count
            stats.queue_ns = s.queue_ns
            stats.compute_count = s.compute_count
            stats.compute_ns = s.compute_ns
            stats.last_inference_ms = s.last_inference_ms
            stats.batches = {
                k: BatchStatistics(v.count, v.compute_ns) for k, v in s.batches.items()
            }

    def close(self) -> None:
        self._executor.shutdown(wait=True)
