"""Goodput under overload: does the server keep serving what can still make its deadline?

    python bench/bench_overload.py [--duration-s 5] [--sizes 1024,4096,4096,16] [--max-batch 8]

Builds an MLP model repository, starts `headrace serve` on CPU 0 (taskset) and drives it from
this process on CPU 1 (grpc.aio on uvloop):

1. capacity: closed loop, 4 x max_batch callers (at most --max-inflight-rpcs), no deadlines:
   OK answers/s, and the batch time (the model's compute per batch, from ModelStatistics);
2. offered load at 2x and 4x capacity, open loop (Poisson arrivals), every request with a gRPC
   deadline of 3x the batch time.

Prints one table: per phase the offered rate, OK answers/s, goodput / capacity (OK answers,
which all arrived inside their deadline, per second over capacity), p99 latency of the OK
answers, the status mix, and the server's own account of the refusals (its Prometheus counters:
refused on arrival for the deadline, doomed in the queue, expired); then the server's RSS
before and after, and the time to the first answer of a request sent the moment each overload
phase ends (no deadline), plus the machine's load average (the numbers mean little on a busy
machine).

3. the protocol floor (bench/floor_server.py: grpc.aio on uvloop answering at once, no model) on
   the same CPU under the same open-loop offered loads: the share of the core that gRPC, protobuf
   and the event loop alone take to receive and answer those requests. What is left of the core
   bounds goodput whatever the admission and batching policy, even one whose every refusal costs
   no more than the floor's answer and whose served requests cost what they cost at capacity
   (full batches): bound = (1 - floor share at that load) / (the share of the core one request/s
   costs headrace at capacity beyond the floor's own) / capacity. A target above the bound needs
   a cheaper intake than grpc.aio's or a cheaper served request (--no-floor skips this).

Targets (issue #10): goodput >= 0.8 at 2x and >= 0.7 at 4x; no status but OK /
UNAVAILABLE / RESOURCE_EXHAUSTED / DEADLINE_EXCEEDED; RSS growth <= 100 MB; first answer after
the load <= 50 ms.

A script, not a test: it needs CPUs 0 and 1 and takes about a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import random
import re
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import uvloop
from bench_common import cpu_model, save_mlp
from bench_serving import HOST, ModelSpec, ServerProcess, floor_server

from headrace import wire
from headrace.wire import inference as pb

SERVER_CPUS = frozenset({0})
CLIENT_CPU = 1
INFER = "/inference.GRPCInferenceService/ModelInfer"
MODEL = "mlp"
DEADLINE_BATCHES = 3.0  # deadline = this many batch times
LOADS = (2.0, 4.0)  # offered load, x capacity
EXPECTED = {"OK", "UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"}
TARGETS = {2.0: 0.8, 4.0: 0.7}
RSS_GROWTH_LIMIT_MB = 100
FIRST_ANSWER_LIMIT_MS = 50


def _identity(data: bytes) -> bytes:
    return data


@dataclass
class Phase:
    name: str
    offered_per_s: float
    duration_s: float
    latencies_ms: list[float] = field(default_factory=list)  # OK answers
    statuses: collections.Counter[str] = field(default_factory=collections.Counter)
    first_answer_ms: float = float("nan")
    sent: int = 0
    batches: int = 0  # model executions during the phase (server side)
    rows: int = 0  # rows those executions ran
    counters: dict[str, float] = field(default_factory=dict)  # server counters, phase delta
    server_cpu_s: float = float("nan")  # CPU time the server process used during the phase

    @property
    def ok_per_s(self) -> float:
        return self.statuses["OK"] / self.duration_s

    def p99_ms(self) -> float:
        return float(np.percentile(self.latencies_ms, 99)) if self.latencies_ms else float("nan")


def write_repository(root: Path, sizes: list[int], max_batch: int) -> Path:
    repository = root / "models"
    save_mlp(repository / MODEL / "1" / "model.onnx", sizes, name=MODEL)
    (repository / MODEL / "model.toml").write_text(
        f'max_batch_size = {max_batch}\n[batching]\nmax_queue_delay_us = "auto"\n'
        "[onnxruntime]\nintra_op_threads = 1\n",
        encoding="utf-8",
    )
    return repository


def server_process(repository: Path, log: Path, max_inflight_rpcs: int) -> ServerProcess:
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
        "0",
        "--log-level",
        "WARNING",
    ]
    if max_inflight_rpcs > 0:
        argv += ["--max-inflight-rpcs", str(max_inflight_rpcs)]
    return ServerProcess("headrace", argv, log, SERVER_CPUS, [MODEL])


# The server's counters of what it refused and dropped, by their Prometheus names.
COUNTERS = {
    "headrace_inference_deadline_refused_requests": "refused",
    "headrace_inference_doomed_requests": "doomed",
    "headrace_inference_expired_requests": "expired",
    "headrace_inference_rejected_requests": "queue full",
}
METRICS_RE = re.compile(r"metrics on (http://\S+/metrics)")


def metrics_url(log: Path) -> str:
    found = METRICS_RE.search(log.read_text(encoding="utf-8", errors="replace"))
    if found is None:
        raise RuntimeError(f"the server log names no metrics endpoint: {log}")
    return found.group(1)


def server_counters(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    counts = dict.fromkeys(COUNTERS.values(), 0.0)
    for line in text.splitlines():
        name, _, rest = line.partition("{")
        if name.endswith("_total"):
            name = name[: -len("_total")]
        if name in COUNTERS and f'model="{MODEL}"' in rest:
            counts[COUNTERS[name]] += float(rest.rsplit(" ", 1)[1])
    return counts


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text(encoding="utf-8").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def model_stats(target: str) -> tuple[int, int, int]:
    """(model compute ns, executions, rows) so far, from ModelStatistics."""
    with grpc.insecure_channel(target) as channel:
        stub = wire.Stub(channel, wire.INFERENCE_SERVICE)
        response = stub.ModelStatistics(pb.ModelStatisticsRequest(name=MODEL), timeout=10)
    stats = response.model_stats
    compute_ns = sum(s.inference_stats.compute_infer.ns for s in stats)
    executions = sum(s.execution_count for s in stats)
    return compute_ns, executions, sum(s.inference_count for s in stats)


async def measured(target: str, url: str, pid: int, phase: Phase, run: Any) -> None:
    """Runs `run` and records the server's executions, rows, counters and CPU time during it."""
    before = await asyncio.to_thread(model_stats, target)
    counted = await asyncio.to_thread(server_counters, url)
    cpu_before = cpu_seconds(pid)
    await run
    phase.server_cpu_s = cpu_seconds(pid) - cpu_before
    after = await asyncio.to_thread(model_stats, target)
    now = await asyncio.to_thread(server_counters, url)
    phase.batches = after[1] - before[1]
    phase.rows = after[2] - before[2]
    phase.counters = {name: now[name] - counted[name] for name in now}


def request_bytes(in_features: int) -> bytes:
    x = np.random.default_rng(0).random((1, in_features), dtype=np.float32)
    request = pb.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="x", datatype="FP32", shape=[1, in_features])
    request.raw_input_contents.append(x.tobytes())
    return request.SerializeToString()


async def call(infer: Any, payload: bytes, timeout_s: float | None, phase: Phase) -> None:
    phase.sent += 1
    start = time.perf_counter()
    try:
        await infer(payload, timeout=timeout_s)
    except grpc.aio.AioRpcError as error:
        phase.statuses[error.code().name] += 1
        return
    phase.statuses["OK"] += 1
    phase.latencies_ms.append((time.perf_counter() - start) * 1000)


async def closed_loop(infer: Any, payload: bytes, callers: int, phase: Phase) -> None:
    end = time.perf_counter() + phase.duration_s

    async def caller() -> None:
        while time.perf_counter() < end:
            await call(infer, payload, None, phase)

    await asyncio.gather(*(caller() for _ in range(callers)))


async def open_loop(infer: Any, payload: bytes, deadline_s: float, phase: Phase) -> None:
    """Poisson arrivals at phase.offered_per_s for phase.duration_s; then a probe sent the
    moment the load ends, without a deadline."""
    rng = random.Random(7)
    tasks: set[asyncio.Task[None]] = set()
    start = time.perf_counter()
    next_at = start
    while True:
        next_at += rng.expovariate(phase.offered_per_s)
        if next_at - start >= phase.duration_s:
            break
        delay = next_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(call(infer, payload, deadline_s, phase))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    probe = Phase("probe", 0.0, 1.0)
    await call(infer, payload, 30.0, probe)
    phase.first_answer_ms = probe.latencies_ms[0] if probe.latencies_ms else float("nan")
    if tasks:
        await asyncio.gather(*tasks)


async def drive(args: argparse.Namespace, target: str, url: str, server_pid: int) -> dict[str, Any]:
    payload = request_bytes(args.sizes[0])
    options = [("grpc.max_receive_message_length", 64 << 20)]
    out: dict[str, Any] = {}
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=10)
        infer = channel.unary_unary(
            INFER, request_serializer=_identity, response_deserializer=_identity
        )
        # With a cap on RPCs in flight, more closed-loop callers than the cap would only spin
        # on RESOURCE_EXHAUSTED and understate capacity.
        callers = 4 * args.max_batch
        if args.max_inflight_rpcs > 0:
            callers = min(callers, args.max_inflight_rpcs)
        await closed_loop(infer, payload, callers, Phase("warm-up", 0, 2.0))
        out["rss_before_mb"] = rss_mb(server_pid)
        compute_before = model_stats(target)
        capacity = Phase("capacity (closed loop)", 0.0, args.duration_s)
        cpu_before = cpu_seconds(server_pid)
        await closed_loop(infer, payload, callers, capacity)
        capacity.server_cpu_s = cpu_seconds(server_pid) - cpu_before
        compute_after = model_stats(target)
        capacity.batches = compute_after[1] - compute_before[1]
        capacity.rows = compute_after[2] - compute_before[2]
        batch_ms = (compute_after[0] - compute_before[0]) / max(capacity.batches, 1) / 1e6
        out["batch_ms"] = batch_ms
        out["capacity"] = capacity
        deadline_s = DEADLINE_BATCHES * batch_ms / 1000
        out["deadline_ms"] = deadline_s * 1000
        phases = []
        for load in LOADS:
            phase = Phase(f"{load:g}x capacity", load * capacity.ok_per_s, args.duration_s)
            await measured(
                target, url, server_pid, phase, open_loop(infer, payload, deadline_s, phase)
            )
            phases.append(phase)
            await asyncio.sleep(1.0)  # let the server settle between phases
        out["phases"] = phases
        out["rss_after_mb"] = rss_mb(server_pid)
    return out


async def drive_floor(
    args: argparse.Namespace, target: str, pid: int, capacity_per_s: float, deadline_s: float
) -> dict[float, float]:
    """The floor's CPU share of its core (0..1) under open-loop offered load at 1x and each of
    LOADS x headrace's capacity, with the same requests and deadlines."""
    payload = request_bytes(args.sizes[0])
    shares: dict[float, float] = {}
    async with grpc.aio.insecure_channel(target) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=10)
        infer = channel.unary_unary(
            INFER, request_serializer=_identity, response_deserializer=_identity
        )
        await closed_loop(infer, payload, 4 * args.max_batch, Phase("warm-up", 0, 1.0))
        for load in (1.0, *LOADS):
            phase = Phase(f"floor {load:g}x", load * capacity_per_s, args.duration_s)
            before = cpu_seconds(pid)
            started = time.perf_counter()
            await open_loop(infer, payload, deadline_s, phase)
            shares[load] = (cpu_seconds(pid) - before) / (time.perf_counter() - started)
    return shares


def floor_lines(result: dict[str, Any], floor: dict[float, float]) -> list[str]:
    """What the protocol floor leaves of the core at each load, and the goodput bound that sets."""
    capacity: Phase = result["capacity"]
    capacity_share = capacity.server_cpu_s / capacity.duration_s
    # The core's share one request/s costs headrace at capacity beyond what the floor's intake
    # of it costs (the model's compute and headrace's own path).
    beyond_floor = (capacity_share - floor[1.0]) / capacity.ok_per_s
    lines = [
        f"protocol floor on the same core (no model, same requests): CPU {floor[1.0]:.0%} at 1x; "
        f"headrace at capacity {capacity_share:.0%}, i.e. {beyond_floor * 1e6:.0f} us of CPU per "
        "request beyond the floor"
    ]
    for load in LOADS:
        bound = min(1.0, (1.0 - floor[load]) / beyond_floor / capacity.ok_per_s)
        lines.append(
            f"  {load:g}x: the floor alone takes {floor[load]:.0%} of the core; goodput bound "
            f"whatever the policy {bound:.2f} (target {TARGETS[load]})"
        )
    return lines


def report(args: argparse.Namespace, result: dict[str, Any], load_before: str) -> list[str]:
    capacity: Phase = result["capacity"]
    header = (
        f"{'phase':24} {'offered/s':>9} {'sent/s':>7} {'OK/s':>7} {'goodput':>7} "
        f"{'p99 OK ms':>9} {'rows/batch':>10}  statuses"
    )
    lines = [
        f"server CPU 0, client CPU 1; {cpu_model()}; model MLP {args.sizes}, max_batch_size "
        f"{args.max_batch}, auto delay, max in-flight RPCs "
        f"{args.max_inflight_rpcs or 'default'}",
        f"batch time {result['batch_ms']:.2f} ms at capacity; deadline "
        f"{result['deadline_ms']:.2f} ms (x{DEADLINE_BATCHES:g})",
        header,
    ]
    failures = []
    for phase in [capacity, *result["phases"]]:
        goodput = phase.ok_per_s / capacity.ok_per_s
        offered = f"{phase.offered_per_s:9.0f}" if phase.offered_per_s else f"{'closed':>9}"
        mix = ", ".join(f"{name} {count}" for name, count in phase.statuses.most_common())
        per_batch = phase.rows / phase.batches if phase.batches else float("nan")
        lines.append(
            f"{phase.name:24} {offered} {phase.sent / phase.duration_s:7.0f} "
            f"{phase.ok_per_s:7.0f} {goodput:7.2f} {phase.p99_ms():9.2f} {per_batch:10.1f}  {mix}"
        )
        unexpected = set(phase.statuses) - EXPECTED
        if unexpected:
            failures.append(f"{phase.name}: unexpected statuses {sorted(unexpected)}")
        counted = "".join(f", {name} {count:.0f}" for name, count in phase.counters.items())
        lines.append(
            f"{'':24} server: CPU {phase.server_cpu_s / phase.duration_s:.0%}, rows run "
            f"{phase.rows}{counted}"
        )
    for load, phase in zip(LOADS, result["phases"], strict=True):
        goodput = phase.ok_per_s / capacity.ok_per_s
        if goodput < TARGETS[load]:
            failures.append(f"{phase.name}: goodput {goodput:.2f} < {TARGETS[load]}")
        lines.append(f"first answer after {phase.name}: {phase.first_answer_ms:.1f} ms")
        if not phase.first_answer_ms <= FIRST_ANSWER_LIMIT_MS:
            failures.append(f"{phase.name}: first answer after the load took > 50 ms")
    if "floor" in result:
        lines.extend(floor_lines(result, result["floor"]))
    growth = result["rss_after_mb"] - result["rss_before_mb"]
    lines.append(
        f"server RSS {result['rss_before_mb']:.0f} MB before, {result['rss_after_mb']:.0f} MB "
        f"after ({growth:+.0f} MB)"
    )
    if growth > RSS_GROWTH_LIMIT_MB:
        failures.append(f"RSS grew by {growth:.0f} MB")
    lines.append(f"load average before: {load_before}; after: {load_average()}")
    lines.append("targets met" if not failures else "targets missed: " + "; ".join(failures))
    return lines


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration-s", type=float, default=5.0)
    parser.add_argument("--sizes", default="1024,4096,4096,16", help="MLP layer sizes")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument(
        "--max-inflight-rpcs",
        type=int,
        default=0,
        help="the server's cap on RPCs in flight (0: its default, sized from memory)",
    )
    parser.add_argument("--no-floor", action="store_true", help="skip the protocol floor's run")
    args = parser.parse_args()
    args.sizes = [int(size) for size in args.sizes.split(",")]
    os.sched_setaffinity(0, {CLIENT_CPU})  # before gRPC starts its threads
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="headrace-overload-") as folder:
        repository = write_repository(Path(folder), args.sizes, args.max_batch)
        log = Path(folder) / "server.log"
        with server_process(repository, log, args.max_inflight_rpcs) as server:
            assert server.process is not None
            url = metrics_url(log)
            result = uvloop.run(drive(args, server.target, url, server.process.pid))
        if not args.no_floor:
            spec = ModelSpec(MODEL, tuple(args.sizes), seed=0)
            with floor_server([spec], Path(folder) / "floor.log", SERVER_CPUS) as floor:
                assert floor.process is not None
                result["floor"] = uvloop.run(
                    drive_floor(
                        args,
                        floor.target,
                        floor.process.pid,
                        result["capacity"].ok_per_s,
                        result["deadline_ms"] / 1000,
                    )
                )
    print("\n".join(report(args, result, load_before)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
