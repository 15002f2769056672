"""Serving benchmark: headrace against the protocol floor, the ONNX Runtime ceiling and MLServer.

    python bench/bench_serving.py [--duration-s 5] [--repeats 3] [--quick] [--skip-mlserver]

One command builds the models, starts every server, drives it, stops it and prints one table
(also bench/results/serving.{csv,md} and a throughput-vs-p99 plot, serving.png). Every number is
the median of --repeats runs. Rows, all with batch-1 requests unless the rows column says so:

- floor: bench/floor_server.py, a grpc.aio + uvloop server that answers with precomputed bytes.
  The best any server on this stack can do; "vs floor" is throughput / floor throughput.
- onnxruntime: the model run in this process, one thread, no server (the ceiling for one core).
- headrace: batching off / fixed 500 us / auto, unary, and auto over ModelStreamInfer.
- mlserver: MLServer 1.7 with adaptive batching (max_batch_size 64, max_batch_time 0.5 ms)
  running bench/mlserver_runtime.py, installed into bench/.venvs/mlserver on first use.
- "2 cores": 32-row requests to the wide model at concurrency 8, servers unpinned, against the
  ONNX Runtime batch-32 ceiling on two threads.

Servers run on CPU 0 and clients on CPU 1 (sched_setaffinity), so a server cannot steal the
client's core. Clients: perf_analyzer (Triton's, C++) where the server has the ModelConfig RPC it
needs, and bench/loadgen.py (Python, client-bound near 8k requests/s) everywhere, so MLServer is
compared like-for-like. Only 127.0.0.1 is ever contacted (apart from pip, for MLServer).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from bench_common import cpu_model, mlp_model

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
TOOLS = BENCH / ".tools"
MLSERVER_VENV = BENCH / ".venvs" / "mlserver"
MLSERVER_REQUIREMENT = "mlserver==1.7.*"
# MLServer 1.7's inference workers call asyncio.get_event_loop() with no loop running, which
# uvloop >= 0.22 turns into an error (the worker dies, MLServer shuts down): keep uvloop older.
MLSERVER_PACKAGES = (MLSERVER_REQUIREMENT, "uvloop<0.22", "onnxruntime", "numpy")
HOST = "127.0.0.1"
SERVER_CPUS = frozenset({0})
CLIENT_CPUS = frozenset({1})
CONCURRENCIES = (1, 8, 32, 64)
QUICK_CONCURRENCIES = (1, 8)
# Row 5: 32-row requests to the wide model at this concurrency, servers on both cores.
WIDE_ROWS = 32
WIDE_CONCURRENCY = 8
# perf_analyzer's stability rule: the last 3 windows' throughput and p99 within this many
# percent of each other, at most this many windows. The machine may be noisy; a cell that never
# settles is rerun once with the rule off (it then reports the last 3 windows).
PA_STABILITY_PERCENT = 50
PA_MAX_TRIALS = 6
# The rerun's rule: so wide that any 3 windows pass (perf_analyzer has no switch to turn it off).
PA_NO_STABILITY_PERCENT = 1_000_000
SERVER_START_TIMEOUT_S = 120.0
SERVER_STOP_TIMEOUT_S = 20.0
READY_RE = re.compile(r"serving gRPC on 127\.0\.0\.1:(\d+)")


# -- models ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    name: str
    sizes: tuple[int, ...]
    seed: int

    @property
    def in_features(self) -> int:
        return self.sizes[0]

    @property
    def out_features(self) -> int:
        return self.sizes[-1]


MODELS = {
    "tabular": ModelSpec("tabular", (32, 256, 256, 1), seed=0),
    "wide": ModelSpec("wide", (512, 1024, 1024, 16), seed=1),
}


def write_models(specs: Sequence[ModelSpec], folder: Path) -> dict[str, Path]:
    import onnx

    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for spec in specs:
        path = folder / f"{spec.name}.onnx"
        onnx.save(mlp_model(spec.sizes, spec.seed, spec.name), str(path))
        paths[spec.name] = path
    return paths


# -- results -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measurement:
    rows_per_s: float
    p50_us: float
    p99_us: float
    mean_batch: float = math.nan  # server-side rows per model execution (headrace only)
    note: str = ""


@dataclass
class Row:
    group: str  # "1 core" (server on CPU 0) or "2 cores"
    system: str
    model: str
    client: str
    concurrency: int
    rows: int  # rows per request
    runs: list[Measurement] = field(default_factory=list)
    error: str = ""
    vs_floor: float = math.nan
    vs_mlserver: float = math.nan
    vs_ort: float = math.nan

    def median(self, attribute: str) -> float:
        values = [getattr(m, attribute) for m in self.runs]
        values = [v for v in values if not math.isnan(v)]
        return statistics.median(values) if values else math.nan

    @property
    def throughput(self) -> float:
        return self.median("rows_per_s")


COLUMNS = (
    ("group", 7),
    ("system", 30),
    ("model", 7),
    ("client", 20),
    ("conc", 4),
    ("rows", 4),
    ("rows/s", 9),
    ("p50 us", 8),
    ("p99 us", 8),
    ("batch", 5),
    ("vs floor", 8),
    ("vs MLServer", 11),
    ("vs ORT", 6),
)


def _number(value: float, digits: int = 0) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:,.{digits}f}"


def row_cells(row: Row) -> list[str]:
    return [
        row.group,
        row.system,
        row.model,
        row.client,
        str(row.concurrency),
        str(row.rows),
        _number(row.throughput),
        _number(row.median("p50_us")),
        _number(row.median("p99_us")),
        _number(row.median("mean_batch"), 1),
        _number(row.vs_floor, 2),
        _number(row.vs_mlserver, 2),
        _number(row.vs_ort, 2),
    ]


TEXT_COLUMNS = 4  # group, system, model, client: left-aligned; numbers right-aligned


def _align(cells: Sequence[str]) -> str:
    return "  ".join(
        cell.ljust(width) if index < TEXT_COLUMNS else cell.rjust(width)
        for index, (cell, (_, width)) in enumerate(zip(cells, COLUMNS, strict=True))
    )


def format_table(rows: Sequence[Row]) -> str:
    lines = [_align([name for name, _ in COLUMNS])]
    for row in rows:
        line = _align(row_cells(row))
        lines.append(line + (f"  ! {row.error}" if row.error else ""))
    return "\n".join(lines)


def format_markdown(rows: Sequence[Row], header: Sequence[str]) -> str:
    out = [f"- {line}" for line in header] + [""]
    out.append("| " + " | ".join(name for name, _ in COLUMNS) + " | note |")
    out.append("|" + "---|" * (len(COLUMNS) + 1))
    for row in rows:
        out.append("| " + " | ".join(row_cells(row)) + f" | {row.error} |")
    return "\n".join(out) + "\n"


def write_csv(rows: Sequence[Row], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(
            [
                "group",
                "system",
                "model",
                "client",
                "concurrency",
                "rows_per_request",
                "throughput_rows_per_s",
                "p50_us",
                "p99_us",
                "mean_batch",
                "ratio_to_floor",
                "ratio_to_mlserver",
                "ratio_to_onnxruntime",
                "runs",
                "note",
            ]
        )
        for row in rows:
            writer.writerow(
                [
                    row.group,
                    row.system,
                    row.model,
                    row.client,
                    row.concurrency,
                    row.rows,
                    f"{row.throughput:.1f}",
                    f"{row.median('p50_us'):.1f}",
                    f"{row.median('p99_us'):.1f}",
                    f"{row.median('mean_batch'):.2f}",
                    f"{row.vs_floor:.3f}",
                    f"{row.vs_mlserver:.3f}",
                    f"{row.vs_ort:.3f}",
                    len(row.runs),
                    row.error,
                ]
            )


def add_ratios(rows: Sequence[Row]) -> None:
    """Each row against the floor, MLServer and ONNX Runtime measured the same way."""

    def key(row: Row, client: str | None = None) -> tuple[str, str, str, int, int]:
        return (row.group, row.model, client or row.client, row.concurrency, row.rows)

    floors = {key(r): r.throughput for r in rows if r.system.startswith("floor")}
    mlservers = {key(r): r.throughput for r in rows if r.system.startswith("mlserver")}
    # The ceiling is the best ONNX Runtime alone did for that model and request size.
    ceilings: dict[tuple[str, str, int], float] = {}
    for r in rows:
        if r.client == "in-process" and not math.isnan(r.throughput):
            ceiling_key = (r.group, r.model, r.rows)
            ceilings[ceiling_key] = max(ceilings.get(ceiling_key, 0.0), r.throughput)
    for row in rows:
        if row.client == "in-process":
            continue
        row.vs_floor = row.throughput / floors.get(key(row), math.nan)
        row.vs_mlserver = row.throughput / mlservers.get(key(row), math.nan)
        row.vs_ort = row.throughput / ceilings.get((row.group, row.model, row.rows), math.nan)


LINE_STYLES = {"perf_analyzer": "-", "perf_analyzer stream": "--", "loadgen": ":"}


def plot(rows: Sequence[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r.model for r in rows if r.client != "in-process"})
    figure, axes = plt.subplots(1, len(models), figsize=(7 * len(models), 5.5), squeeze=False)
    for axis, model in zip(axes[0], models, strict=True):
        series: dict[tuple[str, str], list[Row]] = {}
        for row in rows:
            served = row.model == model and row.client != "in-process"
            if served and not math.isnan(row.throughput):
                system = row.system if row.group == "1 core" else f"{row.system} [{row.group}]"
                if row.rows != 1:
                    system += f" {row.rows} rows/req"
                series.setdefault((system, row.client), []).append(row)
        # Colour says the system, line style the client.
        systems = sorted({system for system, _ in series})
        colours = {system: f"C{index % 10}" for index, system in enumerate(systems)}
        for (system, client), points in series.items():
            points.sort(key=lambda r: r.concurrency)
            xs = [p.throughput for p in points]
            ys = [p.median("p99_us") for p in points]
            axis.plot(
                xs,
                ys,
                marker="o",
                color=colours[system],
                linestyle=LINE_STYLES.get(client, "-"),
                label=f"{system} [{client}]",
            )
            for p, x, y in zip(points, xs, ys, strict=True):
                axis.annotate(f"c{p.concurrency}", (x, y), fontsize=7, alpha=0.7)
        for row in rows:
            if row.model == model and row.client == "in-process" and row.group == "1 core":
                axis.axvline(row.throughput, linestyle=":", color="grey")
                axis.annotate(
                    f"ORT {row.rows} rows",
                    (row.throughput, axis.get_ylim()[1]),
                    rotation=90,
                    fontsize=7,
                    va="top",
                )
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("throughput (rows/s)")
        axis.set_ylabel("p99 latency (us)")
        axis.set_title(f"{model}: throughput vs p99 (server CPU 0, client CPU 1)")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


# -- processes ---------------------------------------------------------------------------------


def pinned_argv(argv: list[str], cpus: frozenset[int] | None) -> list[str]:
    """``argv`` run on ``cpus`` via taskset. Not a preexec_fn: this process holds gRPC threads,
    and a Python fork hook after gRPC's fork handlers can deadlock; taskset keeps the vfork path."""
    if cpus is None:
        return argv
    return ["taskset", "-c", ",".join(str(c) for c in sorted(cpus)), *argv]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def model_ready(target: str, model: str, timeout_s: float = 2.0) -> bool:
    import grpc

    from headrace import wire
    from headrace.wire import inference as pb

    with grpc.insecure_channel(target) as channel:
        stub = wire.Stub(channel, wire.INFERENCE_SERVICE)
        try:
            response = stub.ModelReady(pb.ModelReadyRequest(name=model), timeout=timeout_s)
        except grpc.RpcError:
            return False
        return bool(response.ready)


def execution_counts(target: str, model: str) -> tuple[int, int] | None:
    """(rows inferred, model executions) from ModelStatistics, or None if unavailable."""
    import grpc

    from headrace import wire
    from headrace.wire import inference as pb

    with grpc.insecure_channel(target) as channel:
        stub = wire.Stub(channel, wire.INFERENCE_SERVICE)
        try:
            response = stub.ModelStatistics(pb.ModelStatisticsRequest(name=model), timeout=5)
        except grpc.RpcError:
            return None
    rows = sum(s.inference_count for s in response.model_stats)
    executions = sum(s.execution_count for s in response.model_stats)
    return rows, executions


class ServerProcess:
    """A server started in its own session (so its children go too), logging to a file."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_path: Path,
        cpus: frozenset[int] | None,
        models: Sequence[str],
        port: int | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.cpus = cpus
        self.models = list(models)
        self.port = port
        self.env = env
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"{HOST}:{self.port}"

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> ServerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                pinned_argv(self.argv, self.cpus),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=self.env,
                cwd=self.cwd,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            if self.port is None:
                match = READY_RE.search(self.log_path.read_text(encoding="utf-8", errors="replace"))
                if match:
                    self.port = int(match.group(1))
            if self.port is not None and all(model_ready(self.target, m) for m in self.models):
                return
            time.sleep(0.25)
        raise RuntimeError(f"{self.name} not ready after {SERVER_START_TIMEOUT_S:.0f} s")

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(SERVER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
        # Children that outlived their parent (MLServer's workers) share its process group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)


# -- clients -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    model: ModelSpec
    client: str  # "perf_analyzer", "perf_analyzer stream", "loadgen"
    concurrency: int
    rows: int = 1


class PerfAnalyzer:
    def __init__(self) -> None:
        self.binary = TOOLS / "perf_analyzer"
        self.env = dict(os.environ)
        self.error = ""
        try:
            setup = subprocess.run(
                ["bash", str(BENCH / "perf_analyzer_setup.sh")],
                capture_output=True,
                text=True,
                timeout=900,
                check=True,
                env={**os.environ, "PYTHON": sys.executable},
            )
        except (subprocess.SubprocessError, OSError) as error:
            stderr = getattr(error, "stderr", "") or ""
            self.error = f"perf_analyzer setup failed: {error} {stderr[-500:]}"
            return
        match = re.search(r"export LD_LIBRARY_PATH=([^:\s]+)", setup.stdout)
        if match:
            old = os.environ.get("LD_LIBRARY_PATH", "")
            self.env["LD_LIBRARY_PATH"] = match.group(1) + (f":{old}" if old else "")

    def measure(
        self, target: str, cell: Cell, duration_s: float, cpus: frozenset[int]
    ) -> Measurement:
        if self.error:
            raise RuntimeError(self.error)
        # Three windows make one stable measurement, so a cell lasts about --duration-s.
        window_ms = max(500, int(duration_s * 1000 / 3))
        argv = [
            str(self.binary),
            "-m",
            cell.model.name,
            "-x",
            "1",
            "-i",
            "grpc",
            "-u",
            target,
            "-b",
            str(cell.rows),
            "--concurrency-range",
            f"{cell.concurrency}:{cell.concurrency}",
            "--measurement-interval",
            str(window_ms),
            "--percentile=99",
            "-r",
            str(PA_MAX_TRIALS),
        ]
        if cell.client.endswith("stream"):
            argv.append("--streaming")
        timeout_s = 60 + 2 * PA_MAX_TRIALS * window_ms / 1000
        output = ""
        for stability in (PA_STABILITY_PERCENT, PA_NO_STABILITY_PERCENT):
            result = subprocess.run(
                pinned_argv([*argv, "-s", str(stability)], cpus),
                capture_output=True,
                text=True,
                timeout=timeout_s,
                env=self.env,
            )
            output = result.stdout + result.stderr
            parsed = self.parse(output)
            if result.returncode == 0 and parsed is not None:
                if stability != PA_STABILITY_PERCENT:
                    note = f"perf_analyzer windows differed by > {PA_STABILITY_PERCENT}%"
                    parsed = replace(parsed, note=note)
                return parsed
        raise RuntimeError("perf_analyzer: " + " | ".join(output.strip().splitlines()[-3:]))

    @staticmethod
    def parse(output: str) -> Measurement | None:
        client = output.split("Client:", 1)[-1]
        throughput = re.search(r"Throughput: ([\d.]+) infer/sec", client)
        p50 = re.search(r"p50 latency: (\d+) usec", client)
        p99 = re.search(r"p99 latency: (\d+) usec", client)
        if not (throughput and p50 and p99) or "Client:" not in output:
            return None
        # perf_analyzer counts a b-row request as b inferences: this is already rows/s.
        return Measurement(float(throughput.group(1)), float(p50.group(1)), float(p99.group(1)))


def run_loadgen(target: str, cell: Cell, duration_s: float, cpus: frozenset[int]) -> Measurement:
    argv = [
        sys.executable,
        str(BENCH / "loadgen.py"),
        "--target",
        target,
        "--model",
        cell.model.name,
        "--in-features",
        str(cell.model.in_features),
        "--rows",
        str(cell.rows),
        "--concurrency",
        str(cell.concurrency),
        "--duration-s",
        str(duration_s),
        "--warmup-s",
        str(min(1.0, duration_s / 4)),
    ]
    result = subprocess.run(
        pinned_argv(argv, cpus),
        capture_output=True,
        text=True,
        timeout=duration_s + 60,
    )
    lines = result.stdout.strip().splitlines()
    try:
        report = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = " | ".join((result.stdout + result.stderr).strip().splitlines()[-3:])
        raise RuntimeError(f"loadgen failed ({result.returncode}): {tail}") from None
    if report["errors"]:
        raise RuntimeError(f"loadgen: {report['errors']} errors, first: {report['first_error']}")
    return Measurement(report["rows_per_s"], report["p50_us"], report["p99_us"])


# -- ONNX Runtime in-process (the ceiling) -----------------------------------------------------


def onnxruntime_ceiling(
    path: Path,
    spec: ModelSpec,
    rows: int,
    threads: int,
    duration_s: float,
    runs: int,
    callers: int = 1,
) -> list[Measurement]:
    """Rows/s of back-to-back ``session.run`` calls in this process, one Measurement per run.

    ``threads`` is ONNX Runtime's intra-op pool; ``callers`` Python threads call one shared
    session at once (``run`` releases the GIL), as a server's model instances do.
    """
    import threading

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((rows, spec.in_features), dtype=np.float32)
    feeds = {"x": x}
    for _ in range(50):
        session.run(None, feeds)

    def call_until(end_ns: int, latencies: list[int]) -> None:
        now = time.perf_counter_ns()
        while now < end_ns:
            session.run(None, feeds)
            done = time.perf_counter_ns()
            latencies.append(done - now)
            now = done

    results = []
    for _ in range(runs):
        per_caller: list[list[int]] = [[] for _ in range(callers)]
        start = time.perf_counter_ns()
        end = start + int(duration_s * 1e9)
        workers = [
            threading.Thread(target=call_until, args=(end, latencies)) for latencies in per_caller
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        elapsed_s = (time.perf_counter_ns() - start) / 1e9
        latencies = [v for caller in per_caller for v in caller]
        lat_us = np.asarray(latencies, dtype=np.float64) / 1000
        results.append(
            Measurement(
                len(latencies) * rows / elapsed_s,
                float(np.percentile(lat_us, 50)),
                float(np.percentile(lat_us, 99)),
            )
        )
    return results


@contextlib.contextmanager
def pinned(cpus: frozenset[int]) -> Iterator[None]:
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, set(cpus))
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


# -- servers -----------------------------------------------------------------------------------

HEADRACE_VARIANTS = {
    # "off": one request per model call whatever the batcher does.
    "off": "max_batch_size = 1\n\n[batching]\nmax_queue_delay_us = 0\n",
    "fixed 500us": "max_batch_size = 64\n\n[batching]\nmax_queue_delay_us = 500\n",
    "auto": 'max_batch_size = 64\n\n[batching]\nmax_queue_delay_us = "auto"\n',
    # Row 5: two model executions may run at once, one ONNX Runtime thread each.
    "auto, 2 instances": (
        'max_batch_size = 64\ninstances = 2\n\n[batching]\nmax_queue_delay_us = "auto"\n'
    ),
}


def headrace_repository(folder: Path, variant: str, model_paths: dict[str, Path]) -> Path:
    for name, source in model_paths.items():
        version = folder / name / "1"
        version.mkdir(parents=True, exist_ok=True)
        target = version / "model.onnx"
        target.unlink(missing_ok=True)
        target.symlink_to(source)
        (folder / name / "model.toml").write_text(
            f"# bench_serving.py: batching {variant}\n"
            + HEADRACE_VARIANTS[variant]
            + "\n[onnxruntime]\nintra_op_threads = 1\n",
            encoding="utf-8",
        )
    return folder


def headrace_server(
    repository: Path, log: Path, cpus: frozenset[int] | None, models: Sequence[str]
) -> ServerProcess:
    argv = [
        sys.executable,
        "-m",
        "headrace",
        "serve",
        "--model-repository",
        str(repository),
        "--host",
        HOST,
        "--grpc-port",
        "0",
        "--metrics-port",
        "-1",
        "--log-level",
        "WARNING",
    ]
    return ServerProcess("headrace", argv, log, cpus, models)


def floor_server(
    specs: Sequence[ModelSpec], log: Path, cpus: frozenset[int] | None
) -> ServerProcess:
    argv = [sys.executable, str(BENCH / "floor_server.py"), "--host", HOST, "--port", "0"]
    for spec in specs:
        argv += ["--model", f"{spec.name}:{spec.in_features}:{spec.out_features}"]
    return ServerProcess("floor", argv, log, cpus, [s.name for s in specs])


def ensure_mlserver(log: Path) -> tuple[Path | None, str]:
    """MLServer's venv (created on first use): (its bin folder, version) or (None, why not)."""
    bin_dir = MLSERVER_VENV / "bin"
    probe = [
        str(bin_dir / "python"),
        "-c",
        "import mlserver, onnxruntime, uvloop; "
        "assert tuple(map(int, uvloop.__version__.split('.')[:2])) < (0, 22); "
        "print(mlserver.__version__)",
    ]

    def version() -> str | None:
        try:
            result = subprocess.run(probe, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.SubprocessError):
            return None
        return result.stdout.strip() if result.returncode == 0 else None

    found = version()
    if found:
        return bin_dir, found
    print(f"installing {' '.join(MLSERVER_PACKAGES)} into {MLSERVER_VENV} (log: {log})", flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        with log.open("w", encoding="utf-8") as out:
            base_python = getattr(sys, "_base_executable", sys.executable)
            if not (bin_dir / "python").exists():
                subprocess.run(
                    [base_python, "-m", "venv", str(MLSERVER_VENV)],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    check=True,
                    timeout=300,
                )
            subprocess.run(
                [
                    str(bin_dir / "python"),
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    *MLSERVER_PACKAGES,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                check=True,
                timeout=1800,
            )
    except (OSError, subprocess.SubprocessError) as error:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
        return None, f"install failed: {error}: {' | '.join(tail)}"
    found = version()
    return (bin_dir, found) if found else (None, "installed, but mlserver does not import")


def mlserver_server(
    bin_dir: Path, folder: Path, model_paths: dict[str, Path], log: Path, cpus: frozenset[int]
) -> ServerProcess:
    grpc_port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    settings = {
        "host": HOST,
        "http_port": free_port(),
        "grpc_port": grpc_port,
        "metrics_port": free_port(),
        "debug": False,
    }
    (folder / "settings.json").write_text(json.dumps(settings, indent=2), encoding="utf-8")
    for name, path in model_paths.items():
        model_dir = folder / name
        model_dir.mkdir(exist_ok=True)
        model_settings = {
            "name": name,
            "implementation": "mlserver_runtime.OnnxRuntime",
            # Adaptive batching: up to 64 requests or 0.5 ms, as headrace's fixed variant.
            "max_batch_size": 64,
            "max_batch_time": 0.0005,
            "parameters": {"uri": str(path)},
        }
        (model_dir / "model-settings.json").write_text(
            json.dumps(model_settings, indent=2), encoding="utf-8"
        )
    env = {**os.environ, "PYTHONPATH": str(BENCH)}
    env.pop("LD_LIBRARY_PATH", None)
    argv = [str(bin_dir / "mlserver"), "start", str(folder)]
    return ServerProcess(
        "mlserver", argv, log, cpus, list(model_paths), port=grpc_port, env=env, cwd=folder
    )


# -- the run -----------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    from importlib import metadata

    found = {"python": platform.python_version()}
    for package in ("headrace", "onnxruntime", "grpcio", "protobuf", "numpy", "uvloop"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "missing"
    found["perf_analyzer"] = "tritonclient 2.44.0 wheel"
    return found


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.rows: list[Row] = []
        self.perf_analyzer: PerfAnalyzer | None = None

    def log(self, message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    def measure(
        self,
        server: ServerProcess,
        group: str,
        system: str,
        cells: Sequence[Cell],
        client_cpus: frozenset[int] = CLIENT_CPUS,
        count_batches: bool = False,
    ) -> None:
        for cell in cells:
            row = Row(group, system, cell.model.name, cell.client, cell.concurrency, cell.rows)
            self.rows.append(row)
            if server.process is not None and server.process.poll() is not None:
                row.error = f"server exited earlier: {server.log_tail(2)}"
                continue
            failures: list[str] = []
            for _ in range(self.args.repeats):
                try:
                    before = (
                        execution_counts(server.target, cell.model.name) if count_batches else None
                    )
                    if cell.client.startswith("perf_analyzer"):
                        if self.perf_analyzer is None:
                            self.perf_analyzer = PerfAnalyzer()
                        result = self.perf_analyzer.measure(
                            server.target, cell, self.args.duration_s, client_cpus
                        )
                    else:
                        result = run_loadgen(server.target, cell, self.args.duration_s, client_cpus)
                    after = (
                        execution_counts(server.target, cell.model.name) if count_batches else None
                    )
                    if before and after and after[1] > before[1]:
                        batch = (after[0] - before[0]) / (after[1] - before[1])
                        result = replace(result, mean_batch=batch)
                    row.runs.append(result)
                    if result.note and not row.error:
                        row.error = result.note
                except (RuntimeError, subprocess.SubprocessError, OSError) as error:
                    failures.append(str(error).replace("\n", " ")[:300])
                    if server.process is not None and server.process.poll() is not None:
                        failures[-1] += f" (server exited: {server.log_tail(3)})"
                        break
            if failures:
                # A failed run is left out of the medians; say how many there were.
                row.error = f"{len(failures)}/{self.args.repeats} runs failed: {failures[0]}"
            self.log(
                f"{group:7} {system:30} {cell.model.name:7} {cell.client:20}"
                f" c={cell.concurrency:<3} rows={cell.rows:<3} {_number(row.throughput):>9} rows/s"
                f"  p99 {_number(row.median('p99_us'))} us{'  ! ' + row.error if row.error else ''}"
            )

    def server_rows(
        self,
        start: Callable[[], ServerProcess],
        group: str,
        system: str,
        cells: Sequence[Cell],
        count_batches: bool = False,
    ) -> None:
        try:
            with start() as server:
                self.measure(server, group, system, cells, count_batches=count_batches)
        except (RuntimeError, OSError, subprocess.SubprocessError) as error:
            self.log(f"{system}: could not run: {error}")
            for cell in cells:
                self.rows.append(
                    Row(
                        group,
                        system,
                        cell.model.name,
                        cell.client,
                        cell.concurrency,
                        cell.rows,
                        error=f"server did not start: {str(error).splitlines()[0][:200]}",
                    )
                )

    def run(self) -> list[str]:
        args = self.args
        specs = [MODELS["tabular"]] if args.quick else [MODELS["tabular"], MODELS["wide"]]
        concurrencies = args.concurrency or (QUICK_CONCURRENCIES if args.quick else CONCURRENCIES)
        paths = write_models(list(MODELS.values()), self.work / "onnx")
        logs = Path(args.out_dir) / "logs"
        notes: list[str] = []
        # A rough forecast, so whoever starts a full run knows what they are in for.
        client_cells = 11 * len(specs) * len(concurrencies) + (0 if args.quick else 4)
        forecast_s = client_cells * args.repeats * (args.duration_s + 2) + 60
        self.log(
            f"{client_cells} client cells x {args.repeats} runs: about {forecast_s / 60:.0f} min"
        )

        def cells(clients: Sequence[str]) -> list[Cell]:
            return [Cell(s, c, n) for s in specs for c in clients for n in concurrencies]

        # 2. The ceiling: ONNX Runtime in this process, one thread, on the server's core.
        ort_runs = max(args.repeats, 5)
        ort_duration = max(0.5, min(2.0, args.duration_s / 2))
        for spec in specs:
            for rows in (1, WIDE_ROWS):
                row = Row("1 core", "onnxruntime 1 thread", spec.name, "in-process", 1, rows)
                with pinned(SERVER_CPUS):
                    row.runs = onnxruntime_ceiling(
                        paths[spec.name], spec, rows, 1, ort_duration, ort_runs
                    )
                self.rows.append(row)
                self.log(f"onnxruntime {spec.name} rows={rows}: {_number(row.throughput)} rows/s")

        # 1. The protocol floor.
        self.server_rows(
            lambda: floor_server(specs, logs / "floor.log", SERVER_CPUS),
            "1 core",
            "floor (no-op grpc.aio)",
            cells(["perf_analyzer", "perf_analyzer stream", "loadgen"]),
        )

        # 3. headrace, three batching configurations (and the stream for auto).
        for variant, clients in (
            ("off", ["perf_analyzer", "loadgen"]),
            ("fixed 500us", ["perf_analyzer", "loadgen"]),
            ("auto", ["perf_analyzer", "perf_analyzer stream", "loadgen"]),
        ):
            slug = variant.split()[0]
            repository = headrace_repository(
                self.work / f"headrace-{slug}", variant, {s.name: paths[s.name] for s in specs}
            )
            self.server_rows(
                lambda repository=repository, slug=slug: headrace_server(
                    repository, logs / f"headrace-{slug}.log", SERVER_CPUS, [s.name for s in specs]
                ),
                "1 core",
                f"headrace batching {variant}",
                cells(clients),
                count_batches=True,
            )

        # 4. MLServer with adaptive batching, loadgen only (perf_analyzer needs ModelConfig).
        if args.skip_mlserver:
            notes.append("MLServer: skipped (--skip-mlserver)")
        else:
            bin_dir, detail = ensure_mlserver(logs / "mlserver-install.log")
            if bin_dir is None:
                notes.append(f"MLServer: not run, {detail}")
                self.log(f"MLServer not run: {detail}")
            else:
                notes.append(
                    f"MLServer {detail}: adaptive batching 64 / 0.5 ms, bench/mlserver_runtime.py, "
                    "default parallel_workers"
                )
                self.server_rows(
                    lambda: mlserver_server(
                        bin_dir,
                        self.work / "mlserver",
                        {s.name: paths[s.name] for s in specs},
                        logs / "mlserver.log",
                        SERVER_CPUS,
                    ),
                    "1 core",
                    f"mlserver {detail} adaptive",
                    cells(["loadgen"]),
                )

        # 5. 32-row requests to the wide model, servers free to use both cores.
        if not args.quick:
            self.rows_two_cores(paths, logs, ort_duration, ort_runs)
        return notes

    def rows_two_cores(
        self, paths: dict[str, Path], logs: Path, ort_duration: float, ort_runs: int
    ) -> None:
        wide = MODELS["wide"]
        group = "2 cores"
        # Two ways ONNX Runtime alone can use two cores: one call on a 2-thread pool, or two
        # 1-thread calls at once (what headrace's 2 instances do). The better is the ceiling.
        for system, threads, callers in (
            ("onnxruntime 2 threads", 2, 1),
            ("onnxruntime 2 callers x 1 thread", 1, 2),
        ):
            row = Row(group, system, wide.name, "in-process", callers, WIDE_ROWS)
            row.runs = onnxruntime_ceiling(
                paths[wide.name], wide, WIDE_ROWS, threads, ort_duration, ort_runs, callers
            )
            self.rows.append(row)
            self.log(f"{system} wide rows={WIDE_ROWS}: {_number(row.throughput)} rows/s")
        cells = [
            Cell(wide, client, WIDE_CONCURRENCY, WIDE_ROWS)
            for client in ("perf_analyzer", "loadgen")
        ]
        self.server_rows(
            lambda: floor_server([wide], logs / "floor-2cores.log", None),
            group,
            "floor (no-op grpc.aio)",
            cells,
        )
        repository = headrace_repository(
            self.work / "headrace-2cores", "auto, 2 instances", {wide.name: paths[wide.name]}
        )
        self.server_rows(
            lambda: headrace_server(repository, logs / "headrace-2cores.log", None, [wide.name]),
            group,
            "headrace auto, 2 instances",
            cells,
            count_batches=True,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration-s", type=float, default=None, help="seconds per cell (5)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per cell; medians reported")
    parser.add_argument(
        "--quick", action="store_true", help="tabular only, c=1,8, 2 s cells (a smoke run)"
    )
    parser.add_argument("--skip-mlserver", action="store_true", help="do not install/run MLServer")
    parser.add_argument(
        "--concurrency",
        type=lambda text: tuple(int(c) for c in text.split(",")),
        default=None,
        help="client concurrencies, e.g. 1,32 (default 1,8,32,64; --quick 1,8)",
    )
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help="bench/results")
    args = parser.parse_args(argv)
    if args.duration_s is None:
        args.duration_s = 2.0 if args.quick else 5.0
    if args.repeats < 1 or args.duration_s <= 0:
        parser.error("--repeats must be >= 1 and --duration-s > 0")
    if not {0, 1} <= os.sched_getaffinity(0):
        parser.error("needs CPUs 0 and 1 (server on 0, client on 1)")

    # SIGTERM should unwind like Ctrl-C so every server is stopped by its context manager.
    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)

    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    info = versions()
    header = [
        f"machine: {cpu_model()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}"
        f", load average {' '.join(f'{v:.2f}' for v in os.getloadavg())} at start",
        "versions: " + ", ".join(f"{k} {v}" for k, v in info.items()),
        f"cells: {args.duration_s:g} s each, median of {args.repeats} runs; "
        "server pinned to CPU 0, client to CPU 1 (2 cores rows: server unpinned)",
    ]
    for line in header:
        print(line, flush=True)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="headrace-bench-") as tmp:
        bench = Bench(args, Path(tmp))
        try:
            notes = bench.run()
        except KeyboardInterrupt:
            print("interrupted: reporting what was measured", file=sys.stderr)
            notes = ["interrupted"]
    rows = bench.rows
    add_ratios(rows)
    notes += [
        "rows/s = requests/s x rows per request; batch = server-side rows per model execution",
        "loadgen is Python, client-bound near 8k requests/s on this machine; perf_analyzer is not",
        "vs floor/MLServer/ORT: throughput over the same client, model, concurrency and rows",
    ]
    header += [f"note: {n}" for n in notes]
    print()
    for line in header:
        print(line)
    print(format_table(rows))
    write_csv(rows, out_dir / "serving.csv")
    (out_dir / "serving.md").write_text(format_markdown(rows, header), encoding="utf-8")
    try:
        plot(rows, out_dir / "serving.png")
    except Exception as error:  # a plot must never cost the numbers
        print(f"plot failed: {error}", file=sys.stderr)
    print(f"\nwrote {out_dir / 'serving.csv'}, serving.md, serving.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
