"""The served pair: an int8 model and its fp32 twin behind `headrace serve`, rows/s at c=32.

One `headrace serve` process (pinned to CPU 0) serves a model repository with two models made
from the same random MLP (default 640 -> 1280 -> 1280 -> 10, ReLU): `mlp_fp32` (model.onnx, ONNX
Runtime through the core's C API) and `mlp_int8` (model.int8 from headrace.quant, the core's
QuantizedMlp), both with dynamic batching (max_batch_size 64, queue delay chosen automatically).
bench/loadgen.py (pinned to CPU 1; grpc.aio closed loop, --rows rows per request) drives one model
at a time at the given concurrency; the models alternate, --runs times each, and the table
reports median rows/s, p50/p99 latency and the int8/fp32 ratio.

--cpu avx2 hides AVX-512 from CPUID in the server and the client (bench/cpu_mask.py), as on an
AVX2-only machine: ONNX Runtime then runs its AVX2 kernels and headrace its avx2 path.

Usage: python bench/bench_int8_serving.py [--cpu native|avx2] [--sizes 640,1280,1280,10]
       [--concurrency 32] [--rows 1] [--seconds 5] [--runs 3]
Never run as a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cpu_mask import avx512_hidden, reexec_with_avx512_hidden

BENCH = Path(__file__).resolve().parent
MODEL_TOML = 'max_batch_size = 64\n[batching]\nmax_queue_delay_us = "auto"\n'


def pinned(cpu: int) -> list[str]:
    return (
        ["taskset", "-c", str(cpu)] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []
    )


def start_server(repo: Path) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [*pinned(0), sys.executable, "-m", "headrace", "serve", "--model-repository", str(repo),
         "--grpc-port", "0", "--metrics-port", "-1", "--log-level", "WARNING"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        if line.startswith("headrace: serving gRPC on "):
            return process, line.split(" on ", 1)[1].split()[0].rstrip(";")
    process.kill()
    raise RuntimeError("headrace serve did not start")


def loadgen(address: str, model: str, features: int, args: argparse.Namespace) -> dict[str, float]:
    result = subprocess.run(
        [*pinned(1), sys.executable, str(BENCH / "loadgen.py"), "--target", address,
         "--model", model, "--in-features", str(features), "--rows", str(args.rows),
         "--concurrency", str(args.concurrency), "--duration-s", str(args.seconds),
         "--warmup-s", "1"],
        capture_output=True, text=True, check=True, timeout=args.seconds + 120,
    )  # fmt: skip
    summary: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", choices=["native", "avx2"], default="native")
    parser.add_argument("--sizes", default="640,1280,1280,10")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rows", type=int, default=1, help="rows per request")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if args.cpu == "avx2" and not avx512_hidden():
        reexec_with_avx512_hidden()

    from bench_common import cpu_model, save_mlp

    from headrace import _core
    from headrace import quant as hq

    sizes = [int(size) for size in args.sizes.split(",")]
    load_before = os.getloadavg()
    results: dict[str, list[dict[str, float]]] = {"mlp_fp32": [], "mlp_int8": []}
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "models"
        source = repo / "mlp_fp32" / "1" / "model.onnx"
        save_mlp(source, sizes, name="mlp")
        hq.quantize_onnx(source, repo / "mlp_int8" / "1")
        for model in results:
            (repo / model / "model.toml").write_text(MODEL_TOML)
        server, address = start_server(repo)
        try:
            for _ in range(args.runs):
                for model in results:
                    results[model].append(loadgen(address, model, sizes[0], args))
        finally:
            server.terminate()
            server.wait(60)
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} CPUs; server on CPU 0, load generator on CPU 1"
    )
    mode = "AVX-512 hidden from CPUID (as an AVX2-only CPU)" if avx512_hidden() else "native"
    print(
        f"CPU features: {mode}; headrace int8 ISA {_core.quant_default_isa()}; model MLP "
        f"{' -> '.join(map(str, sizes))}, {args.rows} row(s)/request, c={args.concurrency}, "
        f"{args.runs} runs x {args.seconds:g} s, medians"
    )
    print(f"{'model':<10} {'rows/s':>10} {'p50 us':>9} {'p99 us':>9}  runs (rows/s)")
    rates = {}
    for model, runs in results.items():
        rates[model] = statistics.median(run["rows_per_s"] for run in runs)
        p50 = statistics.median(run["p50_us"] for run in runs)
        p99 = statistics.median(run["p99_us"] for run in runs)
        errors = sum(int(run["errors"]) for run in runs)
        listed = ", ".join(f"{run['rows_per_s']:.0f}" for run in runs)
        print(
            f"{model:<10} {rates[model]:>10.0f} {p50:>9.0f} {p99:>9.0f}  {listed}"
            f"{f'  ({errors} errors)' if errors else ''}"
        )
    print(f"int8 / fp32 rows/s: {rates['mlp_int8'] / rates['mlp_fp32']:.2f}")
    load_after = os.getloadavg()
    print(f"load average (1 min) before/after: {load_before[0]:.2f} / {load_after[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
