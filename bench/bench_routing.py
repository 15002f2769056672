"""Routing overhead: in-process per strategy and through the engine, and served at c=32.

    python bench/bench_routing.py                 # everything (served rows: a few minutes)
    python bench/bench_routing.py --quick         # fewer, shorter runs
    python bench/bench_routing.py --no-served     # in-process only

1. The routing package alone, per strategy: ``resolve`` (choose the variant) and ``resolve +
   complete`` (also count the outcome and remember the request id for feedback, as a served
   request does), ``feedback`` (a reward by request id) and ``offer`` (queue a shadow copy). The
   first row is an empty loop calling a bound method, the floor of any per-request call.
2. Through the engine (``Engine.routing``, an MLP loaded from a repository): what the engine does
   per request beyond running the model, with routing (resolve, request id, answered: counters,
   request series, feedback memory, the result's ``headrace_variant``) against what it did before
   routing (the latency histogram and the result), for a plain model and an endpoint of each
   strategy (split, sticky split, canary, blue-green, the three bandits). The difference is what
   routing adds; the target (issue #12) is <= 2 us per request. Then whole ``Engine.infer``
   calls, plain model vs a split endpoint, for scale.
3. Served (``headrace serve`` as a process on CPU 0, bench/loadgen.py on CPU 1, taskset): c=32
   throughput and p99 of the bare model, a split endpoint of two such models, a one-variant
   endpoint, and the same endpoint with one shadow (sample 1.0, then 0.1). Medians of
   --repeats runs, rows interleaved so that machine noise spreads over all of them. Shadows
   yield (routing/shadow.py): copies are dropped while the primary is busy or past the shadow
   time budget (--shadow-budget-share, default 0.05; set HEADRACE_SHADOW_BUDGET_SHARE for the
   server), so each shadowed row prints the share of its requests the shadow answered
   ("mirrored") next to the p99 ratio, and the drops by reason.

Wall time and process CPU time are both shown in-process: on a shared machine CPU time is the
steadier of the two. Writes bench/results/routing.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from bench_common import cpu_model  # type: ignore[import-not-found]

from headrace.routing import Endpoints, ShadowMirror, parse_endpoints

TWO = [{"name": "a", "model": "model_a"}, {"name": "b", "model": "model_b"}]
ENDPOINTS: list[dict[str, Any]] = [
    {"name": "split", "variants": [{**TWO[0], "weight": 70}, {**TWO[1], "weight": 30}]},
    {
        "name": "split_sticky",
        "sticky_key": "user_id",
        "variants": [{**TWO[0], "weight": 70}, {**TWO[1], "weight": 30}],
    },
    {"name": "canary", "strategy": "canary", "variants": TWO, "canary": {"step_s": 1e9}},
    {"name": "blue_green", "strategy": "blue_green", "variants": TWO},
    {"name": "thompson", "strategy": "bandit", "variants": TWO},
    {"name": "epsilon_greedy", "strategy": "bandit", "variants": TWO,
     "bandit": {"algorithm": "epsilon_greedy"}},
    {"name": "ucb1", "strategy": "bandit", "variants": TWO, "bandit": {"algorithm": "ucb1"}},
    {"name": "shadowed", "variants": TWO[:1], "shadows": [{"name": "s", "model": "model_s"}]},
]  # fmt: skip


def timed(function: Callable[[int], None], requests: int, runs: int) -> tuple[float, float]:
    """(median wall ns, median CPU ns) per request over ``runs`` runs of ``requests``."""
    walls, cpus = [], []
    function(min(requests, 2_000))  # warm up
    for _ in range(runs):
        cpu0, wall0 = time.process_time_ns(), time.perf_counter_ns()
        function(requests)
        wall1, cpu1 = time.perf_counter_ns(), time.process_time_ns()
        walls.append((wall1 - wall0) / requests)
        cpus.append((cpu1 - cpu0) / requests)
    return statistics.median(walls), statistics.median(cpus)


def interleaved(
    rows: list[tuple[str, str, Callable[[int], None]]],
    requests: int,
    runs: int,
    results: list[dict[str, Any]],
) -> list[float]:
    """Run ``rows`` in turns (row 0 is the floor); print and record each row's medians;
    return, per later row, the median over turns of its CPU ns minus the floor's."""
    for _, _, function in rows:
        function(min(requests, 2_000))  # warm up
    walls: list[list[float]] = [[] for _ in rows]
    cpus: list[list[float]] = [[] for _ in rows]
    for _ in range(runs):
        for index, (_, _, function) in enumerate(rows):
            cpu0, wall0 = time.process_time_ns(), time.perf_counter_ns()
            function(requests)
            wall1, cpu1 = time.perf_counter_ns(), time.process_time_ns()
            walls[index].append((wall1 - wall0) / requests)
            cpus[index].append((cpu1 - cpu0) / requests)
    for index, (strategy, what, _) in enumerate(rows):
        wall, cpu = statistics.median(walls[index]), statistics.median(cpus[index])
        results.append({"strategy": strategy, "what": what, "wall_ns": wall, "cpu_ns": cpu})
        print(f"{strategy:<16} {what:<27} {wall:>9.0f} {cpu:>9.0f}", flush=True)
    return [
        statistics.median(c - f for c, f in zip(cpus[index], cpus[0], strict=True))
        for index in range(1, len(rows))
    ]


def make_routing() -> Endpoints:
    routing = Endpoints(parse_endpoints({"endpoint": ENDPOINTS}, "bench"), seed="bench")
    routing.add_model("plain")
    return routing


def cases(routing: Endpoints) -> list[tuple[str, str, Callable[[int], None]]]:
    outputs = {"y": np.zeros((1, 2), dtype=np.float32)}
    numbered = routing.feedback_store.ids.numbered  # ids as the engine assigns them
    users = [{"user_id": f"user-{i}"} for i in range(1024)]
    resolve, complete, feedback = routing.resolve, routing.complete, routing.feedback

    def floor(n: int) -> None:
        get = {"plain": 1}.get
        for _ in range(n):
            get("plain")

    def resolve_only(name: str, sticky: bool) -> Callable[[int], None]:
        def run(n: int) -> None:
            if sticky:
                for i in range(n):
                    resolve(name, "", users[i & 1023])
            else:
                for _ in range(n):
                    resolve(name)

        return run

    def resolve_complete(name: str, sticky: bool) -> Callable[[int], None]:
        def run(n: int) -> None:
            for i in range(n):
                route = resolve(name, "", users[i & 1023] if sticky else None)
                seq, request_id = numbered()
                complete(route, True, 1_000_000, request_id, outputs, seq)

        return run

    def with_feedback(name: str) -> Callable[[int], None]:
        def run(n: int) -> None:
            for i in range(n):
                seq, request_id = numbered()
                complete(resolve(name), True, 1_000_000, request_id, None, seq)
                feedback(request_id, reward=float(i % 16 == 0))

        return run

    def offer(n: int) -> None:
        async def main() -> None:
            async def never(model: str, version: str, inputs: Any) -> Any:
                raise AssertionError("workers are not started")

            mirror = ShadowMirror(never, queue_size=n + 1)
            route, inputs = routing.resolve("shadowed"), {"x": outputs["y"]}
            for _ in range(n):
                mirror.offer(route, inputs, outputs)

        asyncio.run(main())

    rows: list[tuple[str, str, Callable[[int], None]]] = [("floor", "empty call", floor)]
    for name, sticky in [
        ("plain", False),
        ("split", False),
        ("split_sticky", True),
        ("canary", False),
        ("blue_green", False),
        ("thompson", False),
        ("epsilon_greedy", False),
        ("ucb1", False),
    ]:
        rows.append((name, "resolve", resolve_only(name, sticky)))
        rows.append((name, "resolve+complete", resolve_complete(name, sticky)))
    for name in ("thompson", "epsilon_greedy"):
        rows.append((name, "resolve+complete+feedback", with_feedback(name)))
    rows.append(("shadowed", "offer (1 shadow)", offer))
    return rows


# -- 2. through the engine ------------------------------------------------------------------

ENGINE_VARIANTS = '[{ name = "a", model = "tabular" }, { name = "b", model = "tabular_b" }]'
ENGINE_ENDPOINTS = f"""
[[endpoint]]
name = "split"
variants = [{{ name = "a", model = "tabular", weight = 50 }}, {{ name = "b", model = "tabular_b" }}]

[[endpoint]]
name = "split_sticky"
sticky_key = "user_id"
variants = [{{ name = "a", model = "tabular", weight = 50 }}, {{ name = "b", model = "tabular_b" }}]

[[endpoint]]
name = "canary"
strategy = "canary"
variants = {ENGINE_VARIANTS}
canary = {{ step_s = 1e9, max_p99_ratio = 1000 }}  # ramps throughout: gates read, none fails

[[endpoint]]
name = "blue_green"
strategy = "blue_green"
variants = {ENGINE_VARIANTS}

[[endpoint]]
name = "thompson"
strategy = "bandit"
variants = {ENGINE_VARIANTS}

[[endpoint]]
name = "epsilon_greedy"
strategy = "bandit"
variants = {ENGINE_VARIANTS}
bandit = {{ algorithm = "epsilon_greedy" }}

[[endpoint]]
name = "ucb1"
strategy = "bandit"
variants = {ENGINE_VARIANTS}
bandit = {{ algorithm = "ucb1" }}
"""
# The engine rows after the floor: (row name, endpoint, request parameters).
ENGINE_ROUTED = (
    ("plain model", "tabular", None),
    ("split", "split", None),
    ("split, sticky", "split_sticky", {"user_id": "customer-1234"}),
    ("canary", "canary", None),
    ("blue_green", "blue_green", None),
    ("thompson", "thompson", None),
    ("epsilon_greedy", "epsilon_greedy", None),
    ("ucb1", "ucb1", None),
)


def engine_repository(folder: Path) -> Path:
    from bench_common import save_mlp  # type: ignore[import-not-found]

    repo = folder / "models"
    for name, seed in (("tabular", 0), ("tabular_b", 7)):
        (repo / name / "1").mkdir(parents=True, exist_ok=True)
        save_mlp(repo / name / "1" / "model.onnx", (32, 256, 256, 1), seed, name)
    (repo / "_endpoints.toml").write_text(ENGINE_ENDPOINTS)
    return repo


def engine_cases(engine: Any) -> list[tuple[str, str, Callable[[int], None]]]:
    """What the engine does per request besides running the model, with and without routing."""
    from headrace.routing import PIN_PARAMETER
    from headrace.types import InferResult

    routing = engine.routing
    served = engine.get_version("tabular")
    x = {"x": np.ones((1, 32), np.float32)}
    outputs = engine.infer("tabular", x).outputs
    # The engine's own latency histogram before endpoints: a Prometheus Histogram per request.
    from prometheus_client import CollectorRegistry, Histogram

    from headrace.monitoring.metrics import LATENCY_BUCKETS_S

    histogram = Histogram(
        "bench_latency", "", buckets=LATENCY_BUCKETS_S, registry=CollectorRegistry()
    )

    def before_routing(n: int) -> None:
        # The per-request work the engine did before endpoints: the latency histogram (then in
        # ModelVersion) and the result.
        for _ in range(n):
            start = time.perf_counter_ns()
            histogram.observe((time.perf_counter_ns() - start) / 1e9)
            InferResult("tabular", served.version_str, outputs, "", served.output_datatypes)

    def with_routing(name: str, parameters: dict[str, str] | None) -> Callable[[int], None]:
        def run(n: int) -> None:
            resolve, answered = routing.resolve, routing.answered
            numbered = routing.endpoints.feedback_store.ids.numbered  # as the engine assigns ids
            for _ in range(n):
                route = resolve(name, "", parameters, x)
                seq, request_id = numbered()
                start = time.perf_counter_ns()
                answered(route, "1", request_id, x, outputs, time.perf_counter_ns() - start, seq)
                InferResult(route.endpoint, "1", outputs, request_id, served.output_datatypes,
                            {PIN_PARAMETER: route.variant})  # fmt: skip

        return run

    def whole(name: str) -> Callable[[int], None]:
        def run(n: int) -> None:
            for _ in range(n):
                engine.infer(name, x)

        return run

    return [
        ("engine", "before routing (floor)", before_routing),
        *(
            ("engine", f"{row}, routed", with_routing(name, parameters))
            for row, name, parameters in ENGINE_ROUTED
        ),
        ("engine", "Engine.infer plain", whole("tabular")),
        ("engine", "Engine.infer split", whole("split")),
    ]


# -- 3. served ---------------------------------------------------------------------------------

SERVED_ENDPOINTS = """
[[endpoint]]
name = "split"
variants = [{ name = "a", model = "tabular", weight = 50 }, { name = "b", model = "tabular_b" }]

[[endpoint]]
name = "single"
variants = [{ name = "a", model = "tabular" }]

[[endpoint]]
name = "shadowed"
variants = [{ name = "a", model = "tabular" }]
shadows = [{ name = "s", model = "tabular_b", sample = 1.0 }]

[[endpoint]]
name = "sampled"
variants = [{ name = "a", model = "tabular" }]
shadows = [{ name = "s", model = "tabular_b", sample = 0.1 }]
"""
SERVED_ROWS = (
    ("tabular", "bare model"),
    ("split", "split endpoint (2 variants, 50/50)"),
    ("single", "endpoint, 1 variant, no shadow"),
    ("shadowed", "endpoint, 1 variant + 1 shadow"),
    ("sampled", "endpoint, 1 variant + 1 shadow at 10 %"),
)
CONCURRENCY = 32
SHADOW_ROWS = ("single", "shadowed", "sampled")


def shadow_counts(target: str, endpoint: str) -> tuple[int, int, dict[str, int]]:
    """(primary requests, shadow copies answered, copies dropped by reason) of an endpoint, from
    the server's experiment report."""
    from headrace.client import Client
    from headrace.wire import admin as pb

    with Client(target) as client:
        report = client.admin(
            "GetExperimentReport", pb.GetExperimentReportRequest(endpoint=endpoint)
        )
    requests = sum(v.requests for v in report.variants)
    if not report.shadows:
        return requests, 0, {}
    shadow = report.shadows[0]
    by_reason = dict(shadow.dropped_by) if hasattr(shadow, "dropped_by") else {}
    return requests, shadow.completed + shadow.errors, by_reason or {"any": shadow.dropped}


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (/proc/PID/stat)."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def served(
    work: Path,
    duration_s: float,
    repeats: int,
    shadow_only: bool = False,
    concurrency: int = CONCURRENCY,
) -> list[dict[str, Any]]:
    import bench_serving as serving  # type: ignore[import-not-found]

    spec = serving.MODELS["tabular"]
    other = serving.ModelSpec("tabular_b", spec.sizes, seed=7)
    paths = serving.write_models([spec, other], work / "onnx")
    repo = serving.headrace_repository(work / "repo", "auto", paths)
    (repo / "_endpoints.toml").write_text(SERVED_ENDPOINTS)
    served_rows = [r for r in SERVED_ROWS if not shadow_only or r[0] in SHADOW_ROWS]
    runs: dict[str, list[Any]] = {name: [] for name, _ in served_rows}
    mirrored: dict[str, list[float]] = {name: [] for name, _ in served_rows}
    dropped: dict[str, dict[str, int]] = {name: {} for name, _ in served_rows}
    busy: dict[str, list[float]] = {name: [] for name, _ in served_rows}
    server = serving.headrace_server(
        repo, work / "headrace.log", serving.SERVER_CPUS, [name for name, _ in served_rows]
    )
    with server:
        for repeat in range(repeats):
            for name, _ in served_rows:
                cell = serving.Cell(serving.ModelSpec(name, spec.sizes, 0), "loadgen", concurrency)
                shadowed = name in SHADOW_ROWS and name != "single"
                before = shadow_counts(server.target, name) if shadowed else None
                assert server.process is not None
                cpu_s, wall_s = process_cpu_s(server.process.pid), time.perf_counter()
                measured = serving.run_loadgen(server.target, cell, duration_s, serving.CLIENT_CPUS)
                # the server's share of its one CPU over the loadgen run (warm-up included)
                busy[name].append(
                    (process_cpu_s(server.process.pid) - cpu_s) / (time.perf_counter() - wall_s)
                )
                runs[name].append(measured)
                share = ""
                if before is not None:
                    after = shadow_counts(server.target, name)
                    fraction = (after[1] - before[1]) / max(1, after[0] - before[0])
                    mirrored[name].append(fraction)
                    for reason, count in after[2].items():
                        drops = count - before[2].get(reason, 0)
                        dropped[name][reason] = dropped[name].get(reason, 0) + drops
                    share = f" mirrored {fraction:.1%}"
                print(f"#   run {repeat + 1}: {name:<9} {measured.rows_per_s:>8.0f} req/s "
                      f"p99 {measured.p99_us:>7.0f} us server busy {busy[name][-1]:.0%}{share}",
                      flush=True)  # fmt: skip
    rows = []
    for name, what in served_rows:
        rows.append(
            {
                "model_name": name,
                "what": what,
                "requests_per_s": statistics.median(m.rows_per_s for m in runs[name]),
                "p50_us": statistics.median(m.p50_us for m in runs[name]),
                "p99_us": statistics.median(m.p99_us for m in runs[name]),
                "mirrored": statistics.median(mirrored[name]) if mirrored[name] else None,
                "server_busy": statistics.median(busy[name]),
                "dropped_by": dropped[name],
            }
        )
    return rows


def print_served(rows: list[dict[str, Any]]) -> None:
    """The table; a shadowed row's p99 ratio is against the same endpoint without a shadow, and
    beside it the share of primary requests whose copy the shadow answered (a dropped copy is
    no agreement: read the two together)."""
    by_name = {row["model_name"]: row for row in rows}
    bare, single = by_name.get("tabular"), by_name["single"]
    print(f"{'model_name':<10} {'what':<36} {'req/s':>8} {'p50 us':>8} {'p99 us':>8} {'vs':>14} "
          f"{'busy':>5} {'mirrored':>9}  dropped")  # fmt: skip
    for row in rows:
        reference = single if row["model_name"] in ("shadowed", "sampled") else bare
        versus = (
            f"p99 x{row['p99_us'] / reference['p99_us']:.2f}"
            if reference is not None and row is not reference and row is not bare
            else ""
        )
        share = "" if row.get("mirrored") is None else f"{row['mirrored']:.1%}"
        drops = " ".join(f"{k}={v}" for k, v in sorted(row.get("dropped_by", {}).items()) if v)
        print(
            f"{row['model_name']:<10} {row['what']:<36} {row['requests_per_s']:>8.0f} "
            f"{row['p50_us']:>8.0f} {row['p99_us']:>8.0f} {versus:>14} "
            f"{row['server_busy']:>5.0%} {share:>9}  {drops}"
        )


def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--no-served", action="store_true", help="skip the served rows")
    parser.add_argument(
        "--shadow-only", action="store_true", help="only the served shadow rows (no in-process)"
    )
    parser.add_argument("--duration-s", type=float, default=5.0, help="per served run")
    parser.add_argument("--repeats", type=int, default=3, help="served runs per row")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=CONCURRENCY,
        help="served callers (32 saturates one server core; 2 leaves it idle time)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/routing.json"))
    args = parser.parse_args()
    requests, runs = (20_000, 3) if args.quick else (args.requests, args.runs)
    print(f"# routing overhead: {cpu_model()}, Python {sys.version.split()[0]}")
    print(f"# {runs} runs x {requests} requests per row; medians; ns per request")
    print(f"{'strategy':<16} {'what':<27} {'wall ns':>9} {'cpu ns':>9}")
    results = []

    def measure(rows: list[tuple[str, str, Callable[[int], None]]], count: int) -> None:
        for strategy, what, function in rows:
            wall, cpu = timed(function, count, runs)
            results.append({"strategy": strategy, "what": what, "wall_ns": wall, "cpu_ns": cpu})
            print(f"{strategy:<16} {what:<27} {wall:>9.0f} {cpu:>9.0f}", flush=True)

    report: dict[str, Any] = {"cpu": cpu_model(), "results": results}
    if not args.shadow_only:
        measure(cases(make_routing()), requests)
    from headrace.engine import Engine

    with tempfile.TemporaryDirectory() as folder:
        if not args.shadow_only:
            engine = Engine.from_repository(engine_repository(Path(folder)), metrics_port=-1)
            try:
                rows = engine_cases(engine)
                # The floor and the routed rows take turns, run by run, and each run's
                # difference to the floor of the same turn is kept: this machine's speed
                # drifts by tens of percent over a minute, more than what is measured here.
                routed = 1 + len(ENGINE_ROUTED)
                added = interleaved(rows[:routed], requests, runs, results)
                measure(rows[routed:], max(1_000, requests // 20))  # each runs the model
            finally:
                engine.close()
            print("# routing adds, ns CPU per request (medians of per-turn differences to the "
                  "floor; target <= 2000):")  # fmt: skip
            for (row, _, _), ns in zip(ENGINE_ROUTED, added, strict=True):
                print(f"#   {row:<16} {ns:>6.0f}")
            report["routing_adds_ns"] = dict(zip((r[0] for r in ENGINE_ROUTED), added, strict=True))
        if not args.no_served:
            duration, repeats = (2.0, 1) if args.quick else (args.duration_s, args.repeats)
            print(f"# served: c={args.concurrency}, server on CPU 0, loadgen on CPU 1, "
                  f"{repeats} x {duration:g} s per row, medians")  # fmt: skip
            report["served"] = served(
                Path(folder), duration, repeats, args.shadow_only, args.concurrency
            )
            print_served(report["served"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
