"""In-process routing overhead per strategy: nanoseconds per request, medians of several runs.

    python bench/bench_routing.py                 # 7 runs of 100,000 requests per row
    python bench/bench_routing.py --quick         # 3 runs of 20,000

For each strategy it times what the engine adds to a request: ``resolve`` (choose the variant)
and ``resolve + complete`` (also count the outcome and remember the request id for feedback, as
a served request does), plus ``feedback`` (a reward by request id) and ``offer`` (queue a shadow
copy). The first row is an empty loop calling a bound method, the floor of any per-request call
in CPython. Wall time and process CPU time are both shown: on a shared machine CPU time is the
steadier of the two. Served numbers (c=32 throughput and p99 with a split endpoint and with a
shadow) need the engine wiring and are not measured here.
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

from headrace.routing import Endpoints, RequestIds, ShadowMirror, parse_endpoints

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


def make_routing() -> Endpoints:
    routing = Endpoints(parse_endpoints({"endpoint": ENDPOINTS}, "bench"), seed="bench")
    routing.add_model("plain")
    return routing


def cases(routing: Endpoints) -> list[tuple[str, str, Callable[[int], None]]]:
    outputs = {"y": np.zeros((1, 2), dtype=np.float32)}
    ids = RequestIds()
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
                complete(route, ok=True, latency_ns=1_000_000, request_id=ids.next(),
                         outputs=outputs)  # fmt: skip

        return run

    def with_feedback(name: str) -> Callable[[int], None]:
        def run(n: int) -> None:
            for i in range(n):
                request_id = ids.next()
                complete(resolve(name), ok=True, latency_ns=1_000_000, request_id=request_id)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("bench/results/routing.json"))
    args = parser.parse_args()
    requests, runs = (20_000, 3) if args.quick else (args.requests, args.runs)
    print(f"# routing overhead: {cpu_model()}, Python {sys.version.split()[0]}")
    print(f"# {runs} runs x {requests} requests per row; medians; ns per request")
    print(f"{'strategy':<16} {'what':<27} {'wall ns':>9} {'cpu ns':>9}")
    results = []
    for strategy, what, function in cases(make_routing()):
        wall, cpu = timed(function, requests, runs)
        results.append({"strategy": strategy, "what": what, "wall_ns": wall, "cpu_ns": cpu})
        print(f"{strategy:<16} {what:<27} {wall:>9.0f} {cpu:>9.0f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cpu": cpu_model(), "results": results}, indent=1))


if __name__ == "__main__":
    main()
