"""Instructions per served request, counted by callgrind: a speed comparison that noise cannot move.

    python bench/instructions_per_request.py [--baseline ROOT] [--concurrency 1,32]
        [--requests 3000]

Starts `headrace serve` on examples/models under `valgrind --tool=callgrind` (CPU 0), warms it
with 300 requests, zeroes the counters (`callgrind_control -z`), sends --requests ModelInfer
requests for `tabular` (one FP32 row of 32, the bench_serving request) from --concurrency
closed-loop callers over one channel (this process, CPU 1), dumps the counters and prints the
user-space instructions the whole server process (every thread) executed per request.

With --baseline ROOT (another checkout with its own `.venv`, e.g. a `git worktree` of an
earlier commit built with `make install-dev`), its server runs the same way and the table gives
the ratio. Wall-clock benchmarks on a shared 2-core VM drift by 10-30 % between runs; these
counts repeat to within ~1 %. They leave out the kernel (system calls, context switches) and the
cost of cache misses, so they back a wall-clock comparison rather than replace it.

A script, not a test: it needs valgrind and CPUs 0 and 1, and takes about a minute and a half
per row.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
from bench_common import cpu_model

from headrace.wire import inference as pb

ROOT = Path(__file__).resolve().parent.parent
INFER = "/inference.GRPCInferenceService/ModelInfer"
WARM_UP_REQUESTS = 300
READY_RE = re.compile(r"serving gRPC on ([\d.]+:\d+)")
START_TIMEOUT_S = 300.0  # Python and ONNX Runtime start slowly under valgrind
TOTAL_RE = re.compile(r"^(?:summary|totals): (\d+)", re.MULTILINE)


def request_bytes() -> bytes:
    request = pb.ModelInferRequest(model_name="tabular")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 32])
    x = np.random.default_rng(0).random((1, 32), dtype=np.float32)
    request.raw_input_contents.append(x.tobytes())
    return request.SerializeToString()


async def send(target: str, payload: bytes, count: int, concurrency: int) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        infer = channel.unary_unary(INFER)
        left = count

        async def caller() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await infer(payload, timeout=600)

        await asyncio.gather(*(caller() for _ in range(concurrency)))


def wait_ready(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT_S
    for line in process.stdout:
        match = READY_RE.search(line)
        if match:
            return match.group(1)
        if time.monotonic() > deadline:
            break
    raise RuntimeError(f"server did not start (exit code {process.poll()})")


def count(python: Path, root: Path, concurrency: int, requests: int, folder: Path) -> float:
    """Instructions per request of the server that `python` runs from checkout `root`."""
    out = folder / f"callgrind-{len(list(folder.iterdir()))}"
    argv = [
        "taskset",
        "-c",
        "0",
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}.%p",
        str(python),
        "-m",
        "headrace",
        "serve",
        "--model-repository",
        str(root / "examples" / "models"),
        "--grpc-port",
        "0",
        "--metrics-port",
        "-1",
    ]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        target = wait_ready(process)
        payload = request_bytes()
        asyncio.run(send(target, payload, WARM_UP_REQUESTS, concurrency))
        subprocess.run(
            ["callgrind_control", "-z", str(process.pid)], check=True, capture_output=True
        )
        asyncio.run(send(target, payload, requests, concurrency))
        subprocess.run(
            ["callgrind_control", "-d", "measured", str(process.pid)],
            check=True,
            capture_output=True,
        )
    finally:
        process.terminate()
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
    for dump in sorted(folder.glob(f"{out.name}.*")):
        text = dump.read_text(errors="replace")
        if "measured" in text[:4000]:
            match = TOTAL_RE.search(text)
            if match:
                return int(match.group(1)) / requests
    raise RuntimeError(f"no callgrind dump named 'measured' in {folder}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, help="another checkout, with its own .venv")
    parser.add_argument(
        "--concurrency",
        type=lambda text: tuple(int(c) for c in text.split(",")),
        default=(1, 32),
    )
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    os.sched_setaffinity(0, {1})
    systems = [("this checkout", Path(sys.executable), ROOT)]
    if args.baseline is not None:
        base = args.baseline.resolve()
        systems.append((f"baseline {base}", base / ".venv" / "bin" / "python", base))
    print(f"# instructions per ModelInfer (tabular, 1 row), server process; {cpu_model()}")
    print(f"{'server':48} {'conc':>4} {'Ir/request':>12} {'vs baseline':>11}")
    with tempfile.TemporaryDirectory(prefix="headrace-callgrind-") as folder:
        for concurrency in args.concurrency:
            counts = {
                name: count(python, root, concurrency, args.requests, Path(folder))
                for name, python, root in systems
            }
            baseline = counts.get(systems[-1][0]) if len(systems) > 1 else None
            for name, value in counts.items():
                ratio = f"{value / baseline:11.3f}" if baseline else f"{'-':>11}"
                print(f"{name[:48]:48} {concurrency:4} {value:12,.0f} {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
