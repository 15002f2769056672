"""Feature lookups: headrace's stores against Feast's own feature server, on the same Redis and
the same data.

    make bench-features            # or: python bench/bench_features.py [--quick]

Data: ``--users`` users, two feature views (``bench_f``: 50 float32 features, ``bench_i``: 50
int64 features), written three ways: Parquet snapshots (the embedded store), headrace's Redis
layout (``headrace features push``'s writer) and Feast's (a real ``feast apply`` +
``feast materialize`` into the same redis-server). A lookup of N entities x F features reads F/2
features of each view for N random users, at concurrency 1:

* ``embedded`` / ``redis`` / ``feast``: headrace's store, one ``read`` (one round trip), and
  ``FeatureJoiner.assemble`` (coalescer, breaker, defaults: the whole serving path);
* ``feast serve``: Feast's HTTP feature server (1 worker), ``POST /get-online-features`` over a
  keep-alive ``http.client`` connection (lean: no ``requests``);
* ``feast SDK``: ``FeatureStore.get_online_features`` in-process (Feast's venv).

redis-server and Feast's server run on CPU 0, the measuring process on CPU 1 (with --pin).

Then, served end to end (``features_served.py``): ``headrace serve`` and redis-server on CPU 0,
loadgen on CPU 1 (taskset), c=32: the bare model against the same model fed by the embedded
store, the redis store, and the redis store with ``--served-log``. ``--served-only`` runs just
that part (no Feast); ``--no-served`` skips it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import features_served  # noqa: E402
from bench_common import cpu_model  # noqa: E402
from bench_machine import machine_line  # noqa: E402

from headrace.backends.base import TensorSpec  # noqa: E402
from headrace.features import (  # noqa: E402
    FeatureJoiner,
    FeatureMetrics,
    FeatureStore,
    RedisFeatureWriter,
    load_features_config,
    make_store,
)
from integration.features.feast_repo import PROJECT, FeastRepo, FeastView  # noqa: E402
from integration.features.redis_server import RedisServer, free_port  # noqa: E402

HALF = 50
ENTITIES = (1, 32, 256)
FEATURES = (10, 100)
SERVER_CPU = 0
CLIENT_CPU = 1


PINNING = False  # --pin: only on a quiet machine (pinned, a shared core's other load stalls us)


def pin(pid: int, cpu: int) -> None:
    if PINNING and (os.cpu_count() or 1) > cpu:
        os.sched_setaffinity(pid, {cpu})


def cpu_ns(pids: list[int]) -> int:
    """CPU time the processes have run (``/proc/PID/schedstat``; scheduler waits excluded)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
    return total


Cell = tuple[float, float, float]  # p50 ms, p99 ms, CPU µs per lookup (client + servers)


def make_data(users: int) -> tuple[list[FeastView], dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    ids = np.arange(1, users + 1, dtype=np.int64)
    floats = np.round(rng.normal(size=(users, HALF)), 3).astype(np.float32)
    ints = rng.integers(0, 10_000, size=(users, HALF))
    now = datetime.now(UTC) - timedelta(minutes=5)
    stamps = [now] * users
    views = [
        FeastView(
            name="bench_f",
            join_key="user_id",
            key_type="INT64",
            features={f"f{j}": "float32" for j in range(HALF)},
            rows={"user_id": ids.tolist(), "event_timestamp": stamps,
                  **{f"f{j}": floats[:, j].tolist() for j in range(HALF)}},
        ),
        FeastView(
            name="bench_i",
            join_key="user_id",
            key_type="INT64",
            features={f"i{j}": "int64" for j in range(HALF)},
            rows={"user_id": ids.tolist(), "event_timestamp": stamps,
                  **{f"i{j}": ints[:, j].tolist() for j in range(HALF)}},
        ),
    ]  # fmt: skip
    return views, {"ids": ids, "floats": floats, "ints": ints.astype(np.float32)}


def view_configs(features: int) -> list[dict[str, Any]]:
    per_view = features // 2
    return [
        {"name": "bench_f", "entity": "user_id", "snapshot": "bench_f.parquet",
         "features": [f"f{j}" for j in range(per_view)]},
        {"name": "bench_i", "entity": "user_id", "snapshot": "bench_i.parquet",
         "features": [f"i{j}" for j in range(per_view)]},
    ]  # fmt: skip


def percentiles(samples_ns: list[int], cpu_total_ns: int) -> Cell:
    ms = np.array(samples_ns) / 1e6
    per_lookup_us = cpu_total_ns / len(samples_ns) / 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), per_lookup_us


async def timed(call: Callable[[], Awaitable[Any]], iterations: int, servers: list[int]) -> Cell:
    for _ in range(min(50, iterations)):
        await call()
    samples = []
    cpu_start = time.process_time_ns() + cpu_ns(servers)
    for _ in range(iterations):
        start = time.perf_counter_ns()
        await call()
        samples.append(time.perf_counter_ns() - start)
    return percentiles(samples, time.process_time_ns() + cpu_ns(servers) - cpu_start)


async def measure_ours(
    kind: str, url: str, folder: Path, ids: np.ndarray, iterations: int, servers: list[int]
) -> dict[tuple[int, int], tuple[Cell, Cell]]:
    rng = np.random.default_rng(1)
    out = {}
    for features in FEATURES:
        # A generous timeout: this measures lookups, not the fallback to defaults.
        table = {"store": kind, "into": "x", "views": view_configs(features), "timeout_ms": 5000}
        if kind != "embedded":
            table["redis_url"] = url
        if kind == "feast":
            table["feast_project"] = PROJECT
        config = load_features_config(table)
        store = make_store(config, folder)
        registry = CollectorRegistry()
        joiner = FeatureJoiner(
            config,
            folder,
            [TensorSpec("x", "FP32", (-1, features))],
            model="bench",
            version="1",
            metrics=FeatureMetrics(registry),
        )
        for entities in ENTITIES:
            read_keys = {"user_id": ids[:entities]}

            async def read(
                keys: dict[str, np.ndarray] = read_keys, store: FeatureStore = store
            ) -> None:
                keys["user_id"] = ids[rng.integers(0, len(ids), len(keys["user_id"]))]
                await store.read(keys)

            async def assemble(
                keys: dict[str, np.ndarray] = read_keys, joiner: FeatureJoiner = joiner
            ) -> None:
                keys["user_id"] = ids[rng.integers(0, len(ids), len(keys["user_id"]))]
                await joiner.assemble(keys)

            count = iterations if entities < 256 else max(100, iterations // 4)
            out[(entities, features)] = (
                await timed(read, count, servers),
                await timed(assemble, count, servers),
            )
        await store.close()
        await joiner.close()
        # Every assemble read the store: none fell back to defaults.
        errors = sum(
            s.value
            for metric in registry.collect()
            if metric.name == "headrace_feature_store_errors"
            for s in metric.samples
            if s.name.endswith("_total")
        )
        defaults = sum(
            s.value
            for metric in registry.collect()
            if metric.name == "headrace_feature_defaults"
            for s in metric.samples
            if s.name.endswith("_total")
        )
        assert errors == 0 and defaults == 0, (kind, errors, defaults)
    return out


def check_same_rows(url: str, folder: Path, data: dict[str, np.ndarray]) -> None:
    """Every store returns the data as generated (a benchmark of wrong answers is worthless)."""

    async def main() -> None:
        keys = {"user_id": data["ids"][[0, 7, len(data["ids"]) - 1]]}
        expected = np.concatenate([data["floats"][[0, 7, -1]], data["ints"][[0, 7, -1]]], axis=1)
        for kind in ("embedded", "redis", "feast"):
            table = {"store": kind, "into": "x", "views": view_configs(100), "redis_url": url,
                     "feast_project": PROJECT}  # fmt: skip
            store = make_store(load_features_config(table), folder)
            rows = await store.read(keys)
            got = np.concatenate([r.values for r in rows], axis=1)
            assert all(r.present.all() for r in rows), kind
            assert np.array_equal(got, expected), kind
            await store.close()

    asyncio.run(main())


class FeastServer:
    """``feast serve`` (HTTP, one worker) on CPU 0."""

    def __init__(self, repo: FeastRepo) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [str(repo.python.parent / "feast"), "serve", "-p", str(self.port), "-w", "1",
             "--no-access-log", "--max-requests", "1000000"],
            cwd=repo.path, env=repo.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        pin(self.process.pid, SERVER_CPU)
        deadline = time.monotonic() + 120
        while True:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                connection.request("GET", "/health")
                if connection.getresponse().status == 200:
                    connection.close()
                    break
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("feast serve did not start")
            time.sleep(0.2)
        # Gunicorn forks its worker after the arbiter: pin the whole process group's children.
        for child in Path(f"/proc/{self.process.pid}/task").iterdir():
            pin(int(child.name), SERVER_CPU)
        children = subprocess.run(
            ["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True
        ).stdout.split()
        for child_pid in children:
            pin(int(child_pid), SERVER_CPU)

    def pids(self) -> list[int]:
        children = subprocess.run(
            ["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True
        ).stdout.split()
        return [self.process.pid, *(int(c) for c in children)]

    def measure(
        self, ids: np.ndarray, iterations: int, redis_pid: int
    ) -> dict[tuple[int, int], Cell]:
        rng = np.random.default_rng(2)
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        out = {}
        for features in FEATURES:
            names = [f"{v['name']}:{f}" for v in view_configs(features) for f in v["features"]]
            for entities in ENTITIES:
                count = iterations if entities < 256 else max(20, iterations // 10)
                samples = []
                servers = [*self.pids(), redis_pid]
                cpu_start = 0
                for i in range(count + 10):
                    if i == 10:
                        cpu_start = time.process_time_ns() + cpu_ns(servers)
                    body = json.dumps({"features": names, "entities": {
                        "user_id": ids[rng.integers(0, len(ids), entities)].tolist()}})  # fmt: skip
                    start = time.perf_counter_ns()
                    connection.request("POST", "/get-online-features", body,
                                       {"Content-Type": "application/json"})  # fmt: skip
                    response = connection.getresponse()
                    payload = response.read()
                    elapsed = time.perf_counter_ns() - start
                    if response.status != 200:
                        raise RuntimeError(f"feast serve: {response.status} {payload[:300]!r}")
                    if i >= 10:
                        samples.append(elapsed)
                cpu = time.process_time_ns() + cpu_ns(servers) - cpu_start
                out[(entities, features)] = percentiles(samples, cpu)
        connection.close()
        return out

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def feast_sdk(repo: FeastRepo, users: int, iterations: int) -> dict[tuple[int, int], Cell]:
    script = textwrap.dedent(f"""
        import json, os, sys, time
        import numpy as np
        if {PINNING}:
            os.sched_setaffinity(0, {{{CLIENT_CPU}}})
        from feast import FeatureStore
        store = FeatureStore(repo_path=".")
        rng = np.random.default_rng(3)
        out = {{}}
        for features in {list(FEATURES)}:
            per = features // 2
            names = [f"bench_f:f{{j}}" for j in range(per)]
            names += [f"bench_i:i{{j}}" for j in range(per)]
            for entities in {list(ENTITIES)}:
                count = {iterations} if entities < 256 else max(20, {iterations} // 10)
                samples = []
                cpu = 0
                for i in range(count + 10):
                    rows = [{{"user_id": int(u)}} for u in rng.integers(1, {users} + 1, entities)]
                    start = time.perf_counter_ns()
                    cpu_start = time.process_time_ns()
                    store.get_online_features(features=names, entity_rows=rows).to_dict()
                    if i >= 10:
                        samples.append(time.perf_counter_ns() - start)
                        cpu += time.process_time_ns() - cpu_start
                ms = np.array(samples) / 1e6
                out[f"{{entities}},{{features}}"] = [float(np.percentile(ms, 50)),
                                                     float(np.percentile(ms, 99)),
                                                     cpu / len(samples) / 1e3]
        json.dump(out, sys.stdout)
    """)
    done = subprocess.run(
        [str(repo.python), "-c", script], cwd=repo.path, env=repo.env,
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    raw = json.loads(done.stdout)
    return {tuple(int(x) for x in key.split(",")): tuple(v) for key, v in raw.items()}


def write_snapshots(folder: Path, data: dict[str, np.ndarray]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    for name, block, prefix in (("bench_f", data["floats"], "f"), ("bench_i", data["ints"], "i")):
        columns = {"user_id": pa.array(data["ids"])}
        columns.update({f"{prefix}{j}": pa.array(block[:, j]) for j in range(HALF)})
        pq.write_table(pa.table(columns), folder / f"{name}.parquet")


async def push_redis(url: str, data: dict[str, np.ndarray]) -> None:
    writer = RedisFeatureWriter(url)
    await writer.write("bench_f", "user_id", [f"f{j}" for j in range(HALF)], data["ids"],
                       data["floats"])  # fmt: skip
    await writer.write("bench_i", "user_id", [f"i{j}" for j in range(HALF)], data["ids"],
                       data["ints"])  # fmt: skip
    await writer.close()


def cell(value: Cell | None) -> str:
    if value is None:
        return "-"
    return f"{value[0]:.3f} / {value[1]:.3f} ({value[2]:,.0f})"


def print_tables(
    ours: dict[str, dict[tuple[int, int], tuple[Cell, Cell]]],
    theirs: dict[tuple[int, int], Cell],
    sdk: dict[tuple[int, int], Cell] | None,
) -> None:
    print()
    print("| entities x features | embedded read | redis read | feast-layout read | "
          "redis assemble | feast-layout assemble | feast serve | feast SDK |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for features in FEATURES:
        for entities in ENTITIES:
            key = (entities, features)
            print(
                f"| {entities} x {features} | {cell(ours['embedded'][key][0])} | "
                f"{cell(ours['redis'][key][0])} | {cell(ours['feast'][key][0])} | "
                f"{cell(ours['redis'][key][1])} | {cell(ours['feast'][key][1])} | "
                f"{cell(theirs[key])} | {cell(sdk[key] if sdk else None)} |"
            )
    print("\nms p50 / p99 (CPU µs per lookup: the measuring process + redis-server + Feast's "
          "server; the SDK column counts its own process only), concurrency 1. read = one "
          "store round trip; assemble = FeatureJoiner.assemble (coalescer, breaker, "
          "defaults).")  # fmt: skip
    print("\n| entities x features | feast serve / redis assemble: p50, p99, CPU | "
          "feast serve / feast-layout assemble: p50, p99, CPU |")  # fmt: skip
    print("|---|---|---|")
    for features in FEATURES:
        for entities in ENTITIES:
            key = (entities, features)
            ratios = []
            for kind in ("redis", "feast"):
                mine = ours[kind][key][1]
                ratios.append(", ".join(f"{theirs[key][i] / mine[i]:.1f}x" for i in range(3)))
            print(f"| {entities} x {features} | {ratios[0]} | {ratios[1]} |")


def measure_lookups(
    args: argparse.Namespace,
    folder: Path,
    redis: RedisServer,
    views: list[FeastView],
    data: dict[str, np.ndarray],
) -> tuple[dict[str, Any], dict[tuple[int, int], Cell], dict[tuple[int, int], Cell] | None]:
    """The lookup tables: ours from each store, Feast's server and SDK on the same Redis."""
    import uvloop

    assert redis.process is not None
    redis_pid = redis.process.pid
    started = time.monotonic()
    repo = FeastRepo(folder / "feast", redis.port, 0, views)
    repo.apply_and_materialize()
    print(f"# feast apply + materialize: {time.monotonic() - started:.0f} s", flush=True)
    check_same_rows(redis.url(), folder, data)
    ours = {
        kind: uvloop.run(
            measure_ours(kind, redis.url(), folder, data["ids"], args.iterations, [redis_pid])
        )
        for kind in ("embedded", "redis", "feast")
    }
    feast_server = FeastServer(repo)
    try:
        theirs = feast_server.measure(data["ids"], args.feast_iterations, redis_pid)
    finally:
        feast_server.stop()
    sdk = None if args.skip_feast_sdk else feast_sdk(repo, args.users, args.feast_iterations)
    return ours, theirs, sdk


def main(argv: list[str] | None = None) -> int:
    global PINNING
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--iterations", type=int, default=2000, help="lookups per cell (ours)")
    parser.add_argument("--feast-iterations", type=int, default=300, help="per cell (Feast)")
    parser.add_argument("--quick", action="store_true", help="2,000 users, few iterations")
    parser.add_argument("--skip-feast-sdk", action="store_true")
    parser.add_argument("--pin", action="store_true", help="servers on CPU 0, client on CPU 1")
    parser.add_argument("--served-only", action="store_true", help="only the served c=32 rows")
    parser.add_argument("--no-served", action="store_true", help="skip the served rows")
    parser.add_argument("--duration-s", type=float, default=5.0, help="per served run")
    parser.add_argument("--repeats", type=int, default=3, help="served runs per row")
    args = parser.parse_args(argv)
    PINNING = args.pin
    if args.quick:
        args.users, args.iterations, args.feast_iterations = 2000, 200, 30
    pin(0, CLIENT_CPU)
    import uvloop

    with tempfile.TemporaryDirectory(prefix="bench-features-") as tmp:
        folder = Path(tmp)
        redis = RedisServer(folder / "redis").start()
        assert redis.process is not None
        pin(redis.process.pid, SERVER_CPU)
        lookups = served_rows = None
        try:
            print(f"# {cpu_model()}, {os.cpu_count()} CPUs; {args.users} users; load "
                  f"{os.getloadavg()[0]:.1f}; pinned: {PINNING}", flush=True)  # fmt: skip
            print(f"# {machine_line()}", flush=True)
            views, data = make_data(args.users)
            write_snapshots(folder, data)
            uvloop.run(push_redis(redis.url(), data))
            if not args.served_only:
                lookups = measure_lookups(args, folder, redis, views, data)
            if not args.no_served:
                duration, repeats = (2.0, 1) if args.quick else (args.duration_s, args.repeats)
                os.sched_setaffinity(redis.process.pid, {SERVER_CPU})  # beside its server
                print(f"# served: c={features_served.CONCURRENCY}, headrace + redis on CPU "
                      f"{SERVER_CPU}, loadgen on CPU {CLIENT_CPU}, {repeats} x {duration:g} s per "
                      f"row, medians; load {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
                served_rows = features_served.served(
                    folder / "served", redis, folder, args.users, duration, repeats
                )
        finally:
            redis.kill()
    if lookups is not None:
        print_tables(*lookups)
    if served_rows is not None:
        features_served.print_served(served_rows)
    one, five, fifteen = os.getloadavg()
    print(f"\n# load at the end {one:.1f} {five:.1f} {fifteen:.1f} (1, 5, 15 min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
