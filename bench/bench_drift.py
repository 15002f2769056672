"""Cost per counted value of the drift accumulator, for 16, 64 and 256 features.

Each row of the table is the median of several runs (--repeats) of counting the same data:

* ``headrace f64`` / ``headrace f32``: DriftAccumulator.observe on a float64/float32 batch of
  --rows rows (one call; the GIL is released inside);
* ``headrace f32, 64-row batches``: the same rows in serving-sized calls, so per-call overhead
  (shard claim, row counter, pybind11) is included;
* ``headrace f64, scalar search``: the branch-free binary search that runs where there is no
  AVX2 (or more than 63 edges), for comparison with the AVX2 kernel;
* ``numpy searchsorted+bincount``: the NumPy baseline of the same binning, for reference.

Bins are the reference quantiles (default 50 bins, so 49 edges padded to 64: 6 search steps).
Writes a PNG next to the printed table. Not a test: run it by hand.

    python bench/bench_drift.py [--rows 200000] [--repeats 7] [--out bench/results/drift.png]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from bench_common import cpu_model

from headrace import _core


def _machine() -> str:
    probe = _core.BinLayout()
    probe.add_numerical(np.arange(49, dtype=np.float64))
    kernel = "AVX2 kernel" if probe.simd else "scalar search (no AVX2)"
    return (
        f"{cpu_model()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}, "
        f"{kernel}"
    )


def _median_ns_per_value(run: Callable[[], None], values: int, repeats: int) -> float:
    run()  # warm caches and the shard
    times = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        run()
        times.append(time.perf_counter_ns() - start)
    return statistics.median(times) / values


def bench(features: int, rows: int, bins: int, repeats: int) -> dict[str, float]:
    rng = np.random.default_rng(features)
    reference = rng.normal(size=(20_000, features))
    layout = _core.BinLayout()
    edges = []
    for j in range(features):
        e = np.unique(np.quantile(reference[:, j], np.arange(1, bins) / bins))
        edges.append(e)
        layout.add_numerical(e)
    accumulator = _core.DriftAccumulator(layout, window_rows=0, window_s=0.0)
    x64 = rng.normal(size=(rows, features))
    x64[rng.random(size=x64.shape) < 0.001] = np.nan
    x32 = x64.astype(np.float32)
    values = rows * features
    small_batches = [x32[i : i + 64] for i in range(0, rows, 64)]

    def small() -> None:
        for batch in small_batches:
            accumulator.observe(batch)

    numpy_rows = min(rows, 50_000)  # the baseline is slow; fewer rows, same per-value cost
    x64_small = x64[:numpy_rows]

    def numpy_small() -> None:
        for j in range(features):
            column = x64_small[:, j]
            b = np.searchsorted(edges[j], column, side="left")
            b[np.isnan(column)] = len(edges[j]) + 1
            np.bincount(b, minlength=len(edges[j]) + 2)

    scalar_layout = _core.BinLayout()
    for e in edges:
        scalar_layout.add_numerical(e)
    scalar_layout.set_simd(False)
    scalar = _core.DriftAccumulator(scalar_layout, window_rows=0, window_s=0.0)
    return {
        "headrace f64": _median_ns_per_value(lambda: accumulator.observe(x64), values, repeats),
        "headrace f32": _median_ns_per_value(lambda: accumulator.observe(x32), values, repeats),
        "headrace f32, 64-row batches": _median_ns_per_value(small, values, repeats),
        "headrace f64, scalar search": _median_ns_per_value(
            lambda: scalar.observe(x64), values, repeats
        ),
        "numpy searchsorted+bincount": _median_ns_per_value(
            numpy_small, numpy_rows * features, max(3, repeats // 2)
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--bins", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("bench/results/drift.png"))
    args = parser.parse_args()

    feature_counts = [16, 64, 256]
    results = {f: bench(f, args.rows, args.bins, args.repeats) for f in feature_counts}
    methods = list(results[feature_counts[0]])
    print(
        f"drift accumulator, ns per value (median of {args.repeats} runs, {args.rows} rows, "
        f"{args.bins} bins)"
    )
    print(f"machine: {_machine()}")
    header = f"{'method':32s}" + "".join(f"{f:>10d} f" for f in feature_counts)
    print(header)
    print("-" * len(header))
    for method in methods:
        print(f"{method:32s}" + "".join(f"{results[f][method]:12.2f}" for f in feature_counts))

    try:
        import matplotlib
    except ImportError:
        print("matplotlib not installed (pip install '.[bench]'): no PNG written")
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.16
    positions = np.arange(len(feature_counts))
    for i, method in enumerate(methods):
        ax.bar(
            positions + (i - (len(methods) - 1) / 2) * width,
            [results[f][method] for f in feature_counts],
            width,
            label=method,
        )
    ax.axhline(10.0, color="grey", linestyle="--", linewidth=1, label="10 ns target")
    ax.set_xticks(positions, [f"{f} features" for f in feature_counts])
    ax.set_ylabel("ns per value (median)")
    ax.set_yscale("log")
    ax.set_title(f"drift counting cost, {args.bins} bins\n{_machine()}", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"plot: {args.out}")


if __name__ == "__main__":
    main()
