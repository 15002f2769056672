"""The served-feature log: every served row, as the model saw it, in Parquet files.

Serving only appends a reference to the request's arrays to a bounded queue (:meth:`ServedLog.
append` never blocks; rows that do not fit are dropped and counted). One background thread turns
queued requests into Arrow tables, in batches of ``write_rows`` or every ``write_delay_s``, and
writes them to ``DIR/<model>/<time>-<seq>.parquet``, a file
per model, rotated when it reaches ``max_file_bytes`` or has been open ``max_file_age_s``. A file
is written as ``.<name>.tmp`` and renamed when closed, so a reader only sees whole files.

Columns: ``request_id``, ``endpoint``, ``variant``, ``model``, ``version``, ``time`` (UTC,
µs), ``row`` (index in the request), one column per entity input (int64 or binary), one float32
column per feature (``<view>.<feature>``) and per request input, holding the values in ``into``,
and ``output.<name>`` per model output (a scalar, or a fixed-size list for wider outputs).
:func:`read_served_log` returns every closed file as one Arrow table.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

log = logging.getLogger(__name__)

# Rows that may wait for the writer: the memory bound of a burst, and what a stalled disk drops.
DEFAULT_MAX_QUEUED_ROWS = 100_000
DEFAULT_MAX_FILE_BYTES = 64 << 20
DEFAULT_MAX_FILE_AGE_S = 300.0
# Rows the writer gathers before it writes (one Parquet row group), unless the oldest has waited
# DEFAULT_WRITE_DELAY_S. A Parquet write has a fixed cost far above a served request's (a write
# per request took more of the server's CPU than serving it), so writes are batched, against how
# late a row reaches its file and the memory the queue holds meanwhile.
DEFAULT_WRITE_ROWS = 8192
DEFAULT_WRITE_DELAY_S = 1.0


@dataclass(frozen=True, slots=True)
class ServedRows:
    """One request's served rows (arrays are referenced, not copied: never mutate them)."""

    model: str
    version: str
    time_ns: int
    request_id: str
    endpoint: str | None
    variant: str | None
    entities: Mapping[str, npt.NDArray[Any]]  # entity input -> normalised keys, [rows]
    columns: tuple[str, ...]  # names of ``values``' columns
    values: npt.NDArray[np.float32]  # [rows, columns]: features then request inputs
    outputs: Mapping[str, npt.NDArray[Any]]  # output name -> [rows, ...]

    @property
    def rows(self) -> int:
        return int(self.values.shape[0])


def _to_table(batches: Sequence[ServedRows]) -> Any:
    import pyarrow as pa

    first = batches[0]
    rows = [b.rows for b in batches]
    total = sum(rows)

    def repeat(values: list[str | None]) -> Any:
        pairs = zip(values, rows, strict=True)
        repeated = itertools.chain.from_iterable(itertools.repeat(v, n) for v, n in pairs)
        return pa.array(list(repeated), pa.string())

    times = np.repeat(np.array([b.time_ns // 1000 for b in batches], np.int64), rows)
    columns: dict[str, Any] = {
        "request_id": repeat([b.request_id for b in batches]),
        "endpoint": repeat([b.endpoint for b in batches]),
        "variant": repeat([b.variant for b in batches]),
        "model": repeat([b.model for b in batches]),
        "version": repeat([b.version for b in batches]),
        "time": pa.array(times, pa.timestamp("us", tz="UTC")),
        "row": pa.array(np.concatenate([np.arange(n, dtype=np.int32) for n in rows])),
    }
    for entity in first.entities:
        merged = np.concatenate([b.entities[entity] for b in batches])
        if merged.dtype == np.int64:
            columns[entity] = pa.array(merged, pa.int64())
        else:
            columns[entity] = pa.array(merged.tolist(), pa.binary())
    values = np.concatenate([b.values for b in batches])
    for j, name in enumerate(first.columns):
        columns[name] = pa.array(np.ascontiguousarray(values[:, j]), pa.float32())
    for name in first.outputs:
        merged = np.concatenate([np.asarray(b.outputs[name]) for b in batches])
        column = f"output.{name}"
        if merged.dtype.kind == "O":
            flat = merged.reshape(len(merged), -1)
            if flat.shape[1] == 1:
                columns[column] = pa.array([bytes(v) for v in flat[:, 0].tolist()], pa.binary())
            else:
                columns[column] = pa.array([[bytes(v) for v in r] for r in flat.tolist()])
        elif merged.ndim == 1:
            columns[column] = pa.array(merged)
        else:
            flat = np.ascontiguousarray(merged.reshape(len(merged), -1))
            columns[column] = pa.FixedSizeListArray.from_arrays(
                pa.array(flat.reshape(-1)), flat.shape[1]
            )
    assert all(len(c) == total for c in columns.values())
    return pa.table(columns)


def _shape_of(batch: ServedRows) -> tuple[Any, ...]:
    """What must match for two batches to share a file (the Arrow schema)."""
    return (
        batch.model,
        tuple((k, v.dtype.kind) for k, v in batch.entities.items()),
        batch.columns,
        tuple((k, v.dtype.str, v.shape[1:]) for k, v in batch.outputs.items()),
    )


class _OpenFile:
    def __init__(self, directory: Path, shape: tuple[Any, ...], schema: Any, seq: int) -> None:
        import pyarrow.parquet as pq

        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        self.final = directory / f"{stamp}-{os.getpid()}-{seq:06d}.parquet"
        self.partial = directory / f".{self.final.name}.tmp"
        self.shape = shape
        self.writer = pq.ParquetWriter(self.partial, schema)
        self.opened_at = time.monotonic()

    def write(self, table: Any) -> None:
        self.writer.write_table(table)

    def size(self) -> int:
        try:
            return self.partial.stat().st_size
        except OSError:
            return 0

    def close(self) -> None:
        self.writer.close()
        os.replace(self.partial, self.final)


class ServedLog:
    """The background writer (module docstring). ``append`` from any thread; ``flush`` and
    ``close`` block until what was appended before them is in closed files."""

    def __init__(
        self,
        directory: Path | str,
        *,
        max_queued_rows: int = DEFAULT_MAX_QUEUED_ROWS,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        max_file_age_s: float = DEFAULT_MAX_FILE_AGE_S,
        write_rows: int = DEFAULT_WRITE_ROWS,
        write_delay_s: float = DEFAULT_WRITE_DELAY_S,
        registry: CollectorRegistry | None = None,
    ) -> None:
        import pyarrow  # noqa: F401  (fail at start, not in the writer thread)

        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_queued_rows = max_queued_rows
        self.max_file_bytes = max_file_bytes
        self.max_file_age_s = max_file_age_s
        # Never more than half the queue: a batch must not fill it before it is written.
        self.write_rows = max(1, min(write_rows, max_queued_rows // 2))
        self.write_delay_s = write_delay_s
        self._queue: deque[ServedRows] = deque()
        self._queued_rows = 0
        self._oldest_at = 0.0  # when the oldest queued request was appended (monotonic)
        self._cond = threading.Condition()
        self._closing = False
        self._flush_requested = 0
        self._flush_done = 0
        self.dropped_rows = 0
        self.written_rows = 0
        self.files_written = 0
        self.write_errors = 0
        self._files: dict[str, _OpenFile] = {}
        self._seq = 0
        self._thread = threading.Thread(target=self._run, name="served-log", daemon=True)
        self._thread.start()
        if registry is not None:
            registry.register(_ServedLogCollector(self))

    def append(self, rows: ServedRows) -> bool:
        """Queue one request's rows; False (and counted as dropped) when the queue is full or
        the log is closed. Never blocks on I/O."""
        with self._cond:
            if self._closing or self._queued_rows + rows.rows > self.max_queued_rows:
                self.dropped_rows += rows.rows
                return False
            was_empty = not self._queue
            self._queue.append(rows)
            before = self._queued_rows
            self._queued_rows += rows.rows
            if was_empty:
                self._oldest_at = time.monotonic()
            # Wake the writer to start its delay, and when a batch is full; not per request.
            if was_empty or before < self.write_rows <= self._queued_rows:
                self._cond.notify()
        return True

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    def flush(self, timeout_s: float | None = None) -> bool:
        """Write what is queued and close the open files; True when done within the time."""
        with self._cond:
            self._flush_requested += 1
            ticket = self._flush_requested
            self._cond.notify()
            return self._cond.wait_for(lambda: self._flush_done >= ticket, timeout_s)

    def close(self) -> None:
        """Flush and stop the writer; later appends are dropped."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()

    # -- the writer thread ---------------------------------------------------------------

    def _next_deadline(self) -> float | None:
        """Seconds until a file reaches its age or the queue its write delay; None: neither."""
        due = [f.opened_at + self.max_file_age_s for f in self._files.values()]
        if self._queue:
            due.append(self._oldest_at + self.write_delay_s)
        if not due:
            return None
        return max(0.0, min(due) - time.monotonic())

    def _batch_ready(self) -> bool:
        return bool(self._queue) and (
            self._queued_rows >= self.write_rows
            or time.monotonic() - self._oldest_at >= self.write_delay_s
        )

    def _run(self) -> None:
        while True:
            with self._cond:
                while (
                    not self._batch_ready()
                    and not self._closing
                    and self._flush_done >= self._flush_requested
                ):
                    if not self._cond.wait(self._next_deadline()):
                        break  # a file reached its age, or the queue its write delay
                batch = list(self._queue)
                self._queue.clear()
                self._queued_rows = 0
                flush_to = self._flush_requested
                closing = self._closing
            if batch:
                self._write(batch)
            self._rotate(everything=closing or flush_to > self._flush_done)
            with self._cond:
                self._flush_done = flush_to
                self._cond.notify_all()
                if closing and not self._queue:
                    return

    def _write(self, batch: list[ServedRows]) -> None:
        groups: dict[tuple[Any, ...], list[ServedRows]] = {}
        for item in batch:
            groups.setdefault(_shape_of(item), []).append(item)
        for shape, items in groups.items():
            model = items[0].model
            try:
                table = _to_table(items)
                current = self._files.get(model)
                if current is not None and current.shape != shape:
                    self._close(model)
                    current = None
                if current is None:
                    folder = self.directory / (model or "_")
                    folder.mkdir(parents=True, exist_ok=True)
                    self._seq += 1
                    current = _OpenFile(folder, shape, table.schema, self._seq)
                    self._files[model] = current
                current.write(table)
                self.written_rows += table.num_rows
            except Exception:
                self.write_errors += 1
                self.dropped_rows += sum(i.rows for i in items)
                log.exception(
                    "served log: could not write %d rows of model '%s'", len(items), model
                )

    def _rotate(self, everything: bool) -> None:
        now = time.monotonic()
        for model, current in list(self._files.items()):
            if (
                everything
                or current.size() >= self.max_file_bytes
                or now - current.opened_at >= self.max_file_age_s
            ):
                self._close(model)

    def _close(self, model: str) -> None:
        current = self._files.pop(model)
        try:
            current.close()
            self.files_written += 1
        except Exception:
            self.write_errors += 1
            log.exception("served log: could not close %s", current.partial)


class _ServedLogCollector:
    def __init__(self, served_log: ServedLog) -> None:
        self._log = served_log

    def collect(self) -> Iterator[Metric]:
        served = self._log
        for name, doc, value in (
            ("headrace_served_log_dropped_rows", "Served rows not logged", served.dropped_rows),
            ("headrace_served_log_rows", "Served rows written to the log", served.written_rows),
            ("headrace_served_log_files", "Served-log files closed", served.files_written),
        ):
            family = CounterMetricFamily(name, doc)
            family.add_metric([], value)
            yield family
        queued = GaugeMetricFamily("headrace_served_log_queued_rows", "Rows waiting to be written")
        queued.add_metric([], served.queued_rows)
        yield queued


def read_served_log(directory: Path | str, model: str | None = None) -> Any:
    """Every closed log file under ``directory`` (one model's with ``model``) as one Arrow
    table, in file order; files of different columns are merged with nulls where absent."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(directory)
    if model is not None:
        root = root / model
    files = sorted(p for p in root.rglob("*.parquet") if not p.name.startswith("."))
    if not files:
        return pa.table({})
    tables = [pq.read_table(p) for p in files]
    return pa.concat_tables(tables, promote_options="default")
