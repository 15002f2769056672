"""End-to-end served throughput with features against the bare model (bench_features.py's last
section): ``headrace serve`` processes and redis-server on CPU 0, bench/loadgen.py on CPU 1
(taskset), concurrency 32, batch-1 requests.

Rows, interleaved in each repeat so that machine noise spreads over all of them:

* ``bare``: bench_serving's ``tabular`` MLP (32 -> 256 -> 256 -> 1); the client sends ``x``.
* ``embedded`` / ``redis``: the same model file with a ``[features]`` table that fills ``x`` from
  two views of 16 features each (bench_f, bench_i) keyed by ``user_id``; the client sends
  ``user_id`` only (1,024 distinct requests over ``--users`` users, sent in turn).
* ``redis + served log``: as ``redis``, on a second server started with ``--served-log``.

Every features request must be answered from the store: the servers' metrics are read after
the run, and a store error or a default served fails the benchmark. The redis rows also report
MGETs per request (INFO commandstats): how far concurrent lookups were merged. ``server CPU`` is
the CPU time the server process and redis-server spent per request (``/proc/PID/schedstat``): on
a busy machine it is steadier than throughput.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
import urllib.request
from contextlib import suppress
from pathlib import Path
from typing import Any

import bench_serving as serving  # type: ignore[import-not-found]

CONCURRENCY = 32
PER_VIEW = 16
ROWS = (
    ("tabular", "bare model (client sends x)"),
    ("feat_embedded", "features: embedded store"),
    ("feat_redis", "features: redis store"),
    ("feat_logged", "features: redis store + served log"),
)
FALLBACK_SERIES = ("headrace_feature_store_errors_total", "headrace_feature_defaults_total")
METRICS_RE = re.compile(r"metrics on http://127\.0\.0\.1:(\d+)/metrics")


def features_toml(store: str, redis_url: str) -> str:
    views = []
    for name, prefix in (("bench_f", "f"), ("bench_i", "i")):
        features = ", ".join(f'"{prefix}{j}"' for j in range(PER_VIEW))
        views.append(f'[[features.views]]\nname = "{name}"\nentity = "user_id"\n'
                     f'features = [{features}]\nsnapshot = "{name}.parquet"\n')  # fmt: skip
    where = f'redis_url = "{redis_url}"\n' if store == "redis" else ""
    # A generous timeout: this measures serving with features, not the fallback to defaults.
    return f'\n[features]\nstore = "{store}"\n{where}into = "x"\ntimeout_ms = 2000\n\n' + "\n".join(
        views
    )


def write_repository(work: Path, redis_url: str, snapshots: Path) -> Path:
    spec = serving.MODELS["tabular"]
    paths = serving.write_models([spec], work / "onnx")
    models = {name: paths["tabular"] for name, _ in ROWS}
    repo: Path = serving.headrace_repository(work / "repo", "auto", models)
    for name, _ in ROWS[1:]:
        store = "embedded" if name == "feat_embedded" else "redis"
        with (repo / name / "model.toml").open("a", encoding="utf-8") as toml:
            toml.write(features_toml(store, redis_url))
        for view in ("bench_f", "bench_i"):
            (repo / name / f"{view}.parquet").symlink_to(snapshots / f"{view}.parquet")
    return repo


def server(repo: Path, work: Path, name: str, models: list[str], served_log: Path | None) -> Any:
    argv = [sys.executable, "-m", "headrace", "serve", "--model-repository", str(repo),
            "--host", serving.HOST, "--grpc-port", "0", "--metrics-port", "0",
            "--log-level", "WARNING"]  # fmt: skip
    if served_log is not None:
        argv += ["--served-log", str(served_log)]
    return serving.ServerProcess(name, argv, work / f"{name}.log", serving.SERVER_CPUS, models)


def loadgen(target: str, model: str, users: int, duration_s: float) -> dict[str, Any]:
    argv = [sys.executable, str(serving.BENCH / "loadgen.py"), "--target", target, "--model",
            model, "--in-features", "32", "--concurrency", str(CONCURRENCY), "--duration-s",
            str(duration_s), "--warmup-s", str(min(1.0, duration_s / 4))]  # fmt: skip
    if model != "tabular":
        argv += ["--entity", "user_id", "--keys", str(users)]
    done = subprocess.run(
        serving.pinned_argv(argv, serving.CLIENT_CPUS),
        capture_output=True,
        text=True,
        timeout=duration_s + 120,
    )
    try:
        report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise RuntimeError(f"loadgen failed: {(done.stdout + done.stderr)[-800:]}") from None
    if report["errors"]:
        raise RuntimeError(f"loadgen: {report['errors']} errors, first: {report['first_error']}")
    return report


def cpu_ns(pids: list[int]) -> int:
    """CPU time the processes have run (scheduler waits excluded)."""
    total = 0
    for pid in pids:
        with suppress(OSError, ValueError, IndexError):
            total += int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
    return total


def fallbacks(process: Any) -> list[str]:
    """The non-zero store-error and defaults series of the server's Prometheus endpoint."""
    match = METRICS_RE.search(process.log_path.read_text(encoding="utf-8", errors="replace"))
    if match is None:
        raise RuntimeError(f"{process.name}: no metrics port in its log")
    url = f"http://127.0.0.1:{match.group(1)}/metrics"
    with urllib.request.urlopen(url, timeout=30) as response:
        text = response.read().decode()
    return [
        line
        for line in text.splitlines()
        if line.startswith(FALLBACK_SERIES) and float(line.rsplit(" ", 1)[1]) != 0
    ]


def served(
    work: Path, redis: Any, snapshots: Path, users: int, duration_s: float, repeats: int
) -> list[dict[str, Any]]:
    repo = write_repository(work, redis.url(), snapshots)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in ROWS}
    plain = server(repo, work, "headrace", [n for n, _ in ROWS[:3]], None)
    logged = server(repo, work, "headrace-served-log", ["feat_logged"], work / "served-log")
    with plain, logged:
        for repeat in range(repeats):
            for name, _ in ROWS:
                process = logged if name == "feat_logged" else plain
                pids = [process.process.pid, redis.process.pid]
                redis.reset_stats()
                cpu_start = cpu_ns(pids)
                report = loadgen(process.target, name, users, duration_s)
                report["cpu_ns"] = cpu_ns(pids) - cpu_start
                report["mgets"] = redis.command_calls("mget")
                runs[name].append(report)
                print(f"#   run {repeat + 1}: {name:<13} {report['requests_per_s']:>8.0f} req/s "
                      f"p99 {report['p99_us']:>7.0f} us", flush=True)  # fmt: skip
        wrong = {p.name: fallbacks(p) for p in (plain, logged) if fallbacks(p)}
    if wrong:
        raise RuntimeError(f"features fell back to defaults or failed: {wrong}")
    rows = []
    for name, what in ROWS:
        measured = runs[name]
        rows.append(
            {
                "model_name": name,
                "what": what,
                "requests_per_s": statistics.median(m["requests_per_s"] for m in measured),
                "p50_us": statistics.median(m["p50_us"] for m in measured),
                "p99_us": statistics.median(m["p99_us"] for m in measured),
                "mgets_per_request": statistics.median(m["mgets"] / m["sent"] for m in measured),
                "cpu_us": statistics.median(m["cpu_ns"] / m["sent"] / 1e3 for m in measured),
            }
        )
    return rows


def print_served(rows: list[dict[str, Any]]) -> None:
    bare = rows[0]
    print("\n| model | what | req/s | p50 us | p99 us | vs bare req/s | server CPU us / request "
          "| MGETs / request |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        mgets = f"{row['mgets_per_request']:.2f}" if "redis" in row["what"] else "-"
        print(f"| {row['model_name']} | {row['what']} | {row['requests_per_s']:,.0f} | "
              f"{row['p50_us']:,.0f} | {row['p99_us']:,.0f} | "
              f"{row['requests_per_s'] / bare['requests_per_s']:.2f} | {row['cpu_us']:,.0f} | "
              f"{mgets} |")  # fmt: skip
