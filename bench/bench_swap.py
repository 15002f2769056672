"""Hot swaps under load: latency during MLflow alias moves against steady state, errors, and the
time from an alias move to the new version answering.

    python bench/bench_swap.py [--swaps 10] [--callers 16] [--steady-s 10] [--poll-s 1]

One command starts a local MLflow server (SQLite, proxied artifacts, a temporary folder), logs two
ONNX MLPs with mlflow.onnx.log_model (an input example, model.toml), registers --swaps + 1
versions of `bench-swap` alternating between them, starts `headrace serve --model
bench-swap@champion`, and drives it with --callers threads (headrace.client, batch-1 requests):

- steady: --steady-s seconds with nothing moving;
- swaps: --swaps moves of @champion to the next version, each waited for (the first answer from
  the new version) and followed by --gap-s seconds of traffic. "During swaps" counts the answers
  sent from each move until --tail-s after the new version's first answer (the download, load,
  warm-up, switch and drain all fall inside).

Prints one table (also bench/results/swap.md): p50/p99 client latency in each phase, their
ratio (target: p99 during swaps <= 2x steady), failed requests (target 0), and the median (and
max) time from the alias move to the new version answering, which includes the wait for the next
poll (uniform over --poll-s). Only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from bench_common import cpu_model, mlp_model

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
MODEL = "bench-swap"
SIZES = (32, 256, 256, 1)  # the serving benchmark's tabular MLP
HANG_GUARD_S = 300.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_mlflow(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    log = (root / "mlflow.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
        start_new_session=True,
    )
    log.close()
    deadline = time.monotonic() + HANG_GUARD_S
    while True:
        if process.poll() is not None:
            raise SystemExit(f"mlflow server exited: see {root / 'mlflow.log'}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
                if answer.status == 200:
                    return process, uri
        except OSError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise SystemExit("mlflow server not healthy")
        time.sleep(0.2)


def log_versions(uri: str, root: Path, versions: int) -> list[int]:
    """Two MLPs logged once; ``versions`` registry versions alternating between them."""
    import mlflow
    import mlflow.onnx
    from mlflow import MlflowClient
    from mlflow.models import infer_signature

    mlflow.set_tracking_uri(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    toml = root / "model.toml"
    toml.write_text('max_batch_size = 64\n[batching]\nmax_queue_delay_us = "auto"\n')
    example = {"x": np.random.default_rng(0).normal(size=(4, SIZES[0])).astype(np.float32)}
    logged = []
    for seed in (1, 2):
        model = mlp_model(SIZES, seed=seed, name="tabular")
        with warnings.catch_warnings(), mlflow.start_run() as run:
            warnings.simplefilter("ignore")
            info = mlflow.onnx.log_model(
                model,
                name="model",
                input_example=example,
                signature=infer_signature(example),
                pip_requirements=["onnxruntime"],
                extra_files=[str(toml)],
            )
        logged.append((str(info.model_uri), run.info.run_id))
    client.create_registered_model(MODEL)
    numbers = []
    for k in range(versions):
        source, run_id = logged[k % 2]
        created = client.create_model_version(
            MODEL, source, run_id=run_id, model_id=source.removeprefix("models:/")
        )
        numbers.append(int(created.version))
    return numbers


@dataclass(frozen=True)
class Answer:
    sent_s: float
    latency_s: float
    version: str


@dataclass
class Load:
    address: str
    callers: int
    answers: list[Answer] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def run(self) -> list[threading.Thread]:
        threads = [threading.Thread(target=self._call, daemon=True) for _ in range(self.callers)]
        for thread in threads:
            thread.start()
        return threads

    def _call(self) -> None:
        from headrace.client import Client

        x = {"x": np.ones((1, SIZES[0]), np.float32)}
        with Client(self.address) as client:
            while not self.stop.is_set():
                sent = time.monotonic()
                try:
                    version = client.infer(MODEL, x).model_version
                except Exception as error:  # counted, and the caller goes on
                    self.errors.append(f"{type(error).__name__}: {error}")
                    continue
                answer = Answer(sent, time.monotonic() - sent, version)
                with self.changed:
                    self.answers.append(answer)
                    self.changed.notify_all()

    def first_answer(self, version: str, after_s: float) -> Answer:
        deadline = time.monotonic() + HANG_GUARD_S
        seen = 0
        with self.changed:
            while True:
                for answer in self.answers[seen:]:
                    if answer.version == version and answer.sent_s >= after_s:
                        return answer
                seen = len(self.answers)
                if time.monotonic() > deadline:
                    raise SystemExit(f"version {version} never answered")
                self.changed.wait(1.0)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def start_headrace(uri: str, root: Path, poll_s: float) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "headrace",
            "serve",
            "--mlflow-uri",
            uri,
            "--model",
            f"{MODEL}@champion",
            "--registry-poll-s",
            str(poll_s),
            "--model-cache",
            str(root / "cache"),
            "--audit-log",
            str(root / "audit.jsonl"),
            "--grpc-port",
            "0",
            "--metrics-port",
            "-1",
            "--log-level",
            "WARNING",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    for line in process.stdout:
        match = re.search(r"serving gRPC on ([\d.]+):(\d+)", line)
        if match:
            return process, f"{match.group(1)}:{match.group(2)}"
    raise SystemExit("headrace serve did not start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--swaps", type=int, default=10)
    parser.add_argument("--callers", type=int, default=16)
    parser.add_argument("--steady-s", type=float, default=10.0)
    parser.add_argument("--poll-s", type=float, default=1.0)
    parser.add_argument("--gap-s", type=float, default=2.0, help="traffic between swaps")
    parser.add_argument("--tail-s", type=float, default=1.0, help="a swap's window after it")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-swap-") as scratch:
        root = Path(scratch)
        mlflow_process, uri = start_mlflow(root)
        try:
            versions = log_versions(uri, root, args.swaps + 1)
            from mlflow import MlflowClient

            registry = MlflowClient(tracking_uri=uri, registry_uri=uri)
            registry.set_registered_model_alias(MODEL, "champion", str(versions[0]))
            server, address = start_headrace(uri, root, args.poll_s)
            try:
                load = Load(address, args.callers)
                threads = load.run()
                load.first_answer(str(versions[0]), 0.0)
                steady_start = time.monotonic()
                time.sleep(args.steady_s)
                steady_end = time.monotonic()
                windows: list[tuple[float, float]] = []
                to_answer_s: list[float] = []
                for version in versions[1:]:
                    moved = time.monotonic()
                    registry.set_registered_model_alias(MODEL, "champion", str(version))
                    first = load.first_answer(str(version), moved)
                    to_answer_s.append(first.sent_s + first.latency_s - moved)
                    windows.append((moved, first.sent_s + first.latency_s + args.tail_s))
                    time.sleep(args.gap_s)
                load.stop.set()
                for thread in threads:
                    thread.join(60)
            finally:
                server.terminate()
                server.wait(60)
                if server.stdout is not None:
                    server.stdout.close()
        finally:
            mlflow_process.kill()
            mlflow_process.wait(60)
    load_after = os.getloadavg()

    steady = [a.latency_s * 1e3 for a in load.answers if steady_start <= a.sent_s < steady_end]
    during = [
        a.latency_s * 1e3 for a in load.answers if any(lo <= a.sent_s < hi for lo, hi in windows)
    ]
    p50_s, p99_s = percentile(steady, 50), percentile(steady, 99)
    p50_w, p99_w = percentile(during, 50), percentile(during, 99)
    lines = [
        f"bench_swap: {args.swaps} alias moves of {MODEL}@champion (MLP {SIZES}), "
        f"{args.callers} callers, poll {args.poll_s:g} s",
        f"machine: {cpu_model()}, {os.cpu_count()} CPUs, load average "
        f"{load_before[0]:.1f} before / {load_after[0]:.1f} after",
        "",
        "| phase | requests | p50 ms | p99 ms | failed |",
        "|---|---:|---:|---:|---:|",
        f"| steady ({args.steady_s:g} s) | {len(steady)} | {p50_s:.2f} | {p99_s:.2f} | - |",
        f"| during swaps | {len(during)} | {p50_w:.2f} | {p99_w:.2f} | - |",
        f"| all | {len(load.answers)} | - | - | {len(load.errors)} |",
        "",
        f"p99 during swaps / steady: {p99_w / p99_s:.2f} (target <= 2)",
        f"alias move -> new version answering: median {statistics.median(to_answer_s):.2f} s, "
        f"max {max(to_answer_s):.2f} s (poll {args.poll_s:g} s included)",
    ]
    if load.errors:
        lines.append(f"first errors: {load.errors[:3]}")
    text = "\n".join(lines)
    print(text)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "swap.md").write_text(text + "\n")
    return 0 if not load.errors else 1


if __name__ == "__main__":
    sys.exit(main())
