"""Drift-monitoring overhead on the serving path: served throughput with drift on and off.

In one run, on a tabular MLP 32 -> 256 -> 256 -> 1 (ReLU; random weights; ONNX Runtime, dynamic
batching with the default policy):
  - off: the model version without a reference profile (nothing counted)
  - on:  the same model with `<version>/reference.json` (50 bins; 33 features: 32 inputs and the
         output), so every executed batch's inputs and outputs are counted
Each config is a `headrace serve` process on a loopback port. A grpc.aio load generator (one
process, `--concurrency` requests in flight, `--rows` rows per request) runs `--seconds` against
one server at a time; configs alternate, `--runs` times each, and the table reports the median
requests/s and rows/s of each, the on/off ratio, and the rows the drift monitor counted (read
back over GetDriftReport, so the "on" numbers are known to include counting).

Note: the load generator shares the machine with the server, so on a small machine it is part of
what is measured; the on/off comparison is what this bench is for, not the absolute numbers.

Usage: python bench/bench_drift_serving.py [--seconds 5] [--runs 3] [--concurrency 32]
Never run as a test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
from bench_common import cpu_model, save_mlp

from headrace import wire
from headrace.client import AsyncClient
from headrace.monitoring.drift.model_profile import profile_model
from headrace.wire import admin as admin_pb2

SIZES = [32, 256, 256, 1]
MODEL = "tabular"


def start_serve(repo: Path) -> tuple[subprocess.Popen[str], str]:
    # Server on CPU 0, this process (the load generator) on CPU 1: the on/off difference is
    # then the server's own, not the two fighting over cores.
    pin = ["taskset", "-c", "0"] if shutil.which("taskset") and os.cpu_count() != 1 else []
    process = subprocess.Popen(
        [*pin, sys.executable, "-m", "headrace", "serve", "--model-repository", str(repo),
         "--grpc-port", "0", "--metrics-port", "-1", "--log-level", "WARNING"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        if line.startswith("headrace: serving gRPC on "):
            address = line.split(" on ", 1)[1].split()[0].rstrip(";")
            return process, address
    process.kill()
    raise RuntimeError(f"headrace serve on {repo} did not start")


async def load(address: str, seconds: float, concurrency: int, rows: int) -> int:
    """Requests completed in ``seconds`` with ``concurrency`` in flight."""
    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal((rows, SIZES[0])).astype(np.float32) for _ in range(64)]
    done = 0
    async with AsyncClient(address) as client:
        await asyncio.gather(*(client.infer(MODEL, {"x": x}) for x in inputs[:concurrency]))
        stop = time.perf_counter() + seconds

        async def worker(k: int) -> None:
            nonlocal done
            i = k
            while time.perf_counter() < stop:
                await client.infer(MODEL, {"x": inputs[i % len(inputs)]})
                done += 1
                i += concurrency

        await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return done


def counted_rows(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        stub = wire.Stub(channel, wire.ADMIN_SERVICE)
        windows = admin_pb2.GetDriftReportRequest(model=MODEL, windows=1_000_000)
        open_window = admin_pb2.GetDriftReportRequest(model=MODEL, windows=0)
        closed = stub.GetDriftReport(windows, timeout=30).rows
        return int(closed + stub.GetDriftReport(open_window, timeout=30).rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rows", type=int, default=1, help="rows per request")
    args = parser.parse_args()
    if (os.cpu_count() or 1) > 1 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {1})
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        repos = {"off": root / "off", "on": root / "on"}
        for repo in repos.values():
            save_mlp(repo / MODEL / "1" / "model.onnx", SIZES, name=MODEL)
        data = np.random.default_rng(0).standard_normal((20_000, SIZES[0])).astype(np.float32)
        profile_model(repos["on"], MODEL, "1", data)
        servers = {name: start_serve(repo) for name, repo in repos.items()}
        try:
            results: dict[str, list[int]] = {"off": [], "on": []}
            for _ in range(args.runs):
                for name in ("off", "on"):
                    address = servers[name][1]
                    count = asyncio.run(load(address, args.seconds, args.concurrency, args.rows))
                    results[name].append(count)
            rows_counted = counted_rows(servers["on"][1])
        finally:
            for process, _ in servers.values():
                process.terminate()
                process.wait(60)
    rate = {name: statistics.median(r) / args.seconds for name, r in results.items()}
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs; load generator on the same machine")
    print(
        f"model: MLP {'->'.join(map(str, SIZES))}, {args.rows} row(s)/request, concurrency "
        f"{args.concurrency}, {args.runs} runs x {args.seconds:g} s each, medians"
    )
    print(f"{'drift':<6} {'requests/s':>12} {'rows/s':>12}  runs (requests)")
    for name in ("off", "on"):
        print(f"{name:<6} {rate[name]:>12.0f} {rate[name] * args.rows:>12.0f}  {results[name]}")
    print(f"on/off throughput: {rate['on'] / rate['off']:.3f}")
    served_on = sum(results["on"]) * args.rows
    print(f"rows counted by the drift monitor (on): {rows_counted} of >= {served_on} served")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
