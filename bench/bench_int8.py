"""int8 benchmark: headrace's int8 MLP vs ONNX Runtime fp32 and int8, plus a large int8 GEMM.

In one run, on the wide MLP 512 -> 1024 -> 1024 -> 16 (Relu, Relu, linear; random weights):
  - ONNX Runtime fp32, 1 intra-op thread (the float ceiling)
  - ONNX Runtime int8 via onnxruntime.quantization.quantize_dynamic (QInt8 weights), 1 thread
  - headrace int8 (`headrace quantize` + headrace._core.QuantizedMlp, 1 thread per call)
at batch 1, 8, 32, 256: median latency over several runs, and rows/s = batch / median latency.

Then a 2048 x 2048 x 2048 int8 GEMM on each supported headrace ISA, in GOPS = 2·M·N·K / time
(multiply and add counted as one op each), against the measured peak of the ISA's int8 dot-product
instruction: a register-only loop of independent chains (csrc/quant/peak_probe.h), with
  peak_GOPS = chains · iterations · ops_per_instruction / time
  ops_per_instruction: vpmaddwd+vpaddd (avx2) 32, vpdpbusd zmm (avx512vnni) 128.
The scalar kernel gets no peak column: the compiler vectorizes its int32 dot product with SSE2, so
no single scalar instruction bounds it.
The GEMM time includes packing B for the kernel (the binding packs per call).

Usage: python bench/bench_int8.py [--out bench/results]   (needs matplotlib for the PNG)
Never run as a test.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from bench_common import cpu_model, save_mlp
from onnxruntime.quantization import QuantType, quantize_dynamic

from headrace import _core
from headrace import quantize as hq

SIZES = [512, 1024, 1024, 16]
BATCHES = [1, 8, 32, 256]
GEMM_SIZE = 2048


def ort_session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def median_seconds(fn: Callable[[], object], runs: int) -> float:
    fn()  # warm-up
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    isa = _core.quant_default_isa()
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs, "
        f"Python {platform.python_version()}, onnxruntime {ort.__version__}"
    )
    print(f"headrace int8 ISA: {isa} (supported: {', '.join(_core.quant_supported_isas())})")

    work = Path(tempfile.mkdtemp(prefix="bench_int8_"))
    fp32_path = work / "model.onnx"
    ort_int8_path = work / "model.ort_int8.onnx"
    save_mlp(fp32_path, SIZES, name="wide_mlp")
    quantize_dynamic(str(fp32_path), str(ort_int8_path), weight_type=QuantType.QInt8)
    int8_path = hq.quantize_onnx(fp32_path, work / "1")
    print(
        f"files: fp32 onnx {fp32_path.stat().st_size} B, "
        f"ORT int8 {ort_int8_path.stat().st_size} B, "
        f"headrace model.int8 {int8_path.stat().st_size} B"
    )

    fp32 = ort_session(fp32_path)
    ort_int8 = ort_session(ort_int8_path)
    mlp = _core.QuantizedMlp(str(int8_path))
    rng = np.random.default_rng(1)
    engines: dict[str, Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]]] = {
        "ORT fp32": lambda x: fp32.run(None, {"x": x})[0],
        "ORT int8 (quantize_dynamic)": lambda x: ort_int8.run(None, {"x": x})[0],
        f"headrace int8 ({isa})": mlp.run,
    }
    latency: dict[str, list[float]] = {name: [] for name in engines}
    print()
    print(f"wide MLP {' -> '.join(map(str, SIZES))}, 1 thread each, median latency")
    header = f"{'engine':<30}" + "".join(f"{'batch ' + str(b):>22}" for b in BATCHES)
    print(header)
    errors: dict[str, list[float]] = {}
    for batch in BATCHES:
        x = rng.standard_normal((batch, SIZES[0])).astype(np.float32)
        reference = engines["ORT fp32"](x)
        runs = 200 if batch <= 8 else (60 if batch <= 32 else 20)
        # Engines take turns within each round, so load from other processes on this shared
        # machine hits all of them alike instead of whichever happened to run at the time.
        samples: dict[str, list[float]] = {name: [] for name in engines}
        for engine in engines.values():
            engine(x)
        for _ in range(runs):
            for name, engine in engines.items():
                start = time.perf_counter()
                engine(x)
                samples[name].append(time.perf_counter() - start)
        for name, engine in engines.items():
            latency[name].append(statistics.median(samples[name]))
            errors.setdefault(name, []).append(float(np.abs(engine(x) - reference).max()))
    for name in engines:
        cells = "".join(
            f"{latency[name][i] * 1e6:>10.1f} us {BATCHES[i] / latency[name][i]:>8.0f}/s"
            for i in range(len(BATCHES))
        )
        print(f"{name:<30}{cells}")
    print("max |output - fp32 output| (outputs are O(1)):")
    for name, values in errors.items():
        print(f"  {name:<30}{max(values):.4f}")

    print()
    print(f"int8 GEMM {GEMM_SIZE}^3 (GOPS = 2*M*N*K / t; peak = measured register-only loop)")
    a = rng.integers(-128, 128, size=(GEMM_SIZE, GEMM_SIZE), dtype=np.int8)
    b = rng.integers(-128, 128, size=(GEMM_SIZE, GEMM_SIZE), dtype=np.int8)
    ops = 2.0 * GEMM_SIZE**3
    gemm_rows = []
    for gemm_isa in _core.quant_supported_isas():
        runs = 1 if gemm_isa == "scalar" else 3
        seconds = median_seconds(
            lambda gemm_isa=gemm_isa: _core.quant_gemm_s32(a, b, gemm_isa), runs
        )
        gops = ops / seconds / 1e9
        if gemm_isa == "scalar":
            print(f"  {gemm_isa:<12} {seconds * 1e3:9.1f} ms {gops:8.1f} GOPS   (reference path)")
            continue
        peak = max(_core.quant_peak_gops(gemm_isa, 50_000_000) for _ in range(3))
        gemm_rows.append((gemm_isa, seconds, gops, peak))
        print(
            f"  {gemm_isa:<12} {seconds * 1e3:9.1f} ms {gops:8.1f} GOPS   peak {peak:7.1f} GOPS   "
            f"{100 * gops / peak:5.1f}% of peak"
        )
    for missing_isa in ("avx512vnni",):
        missing = _core.quant_missing_features(missing_isa)
        if missing:
            print(f"  {missing_isa:<12} not run: this CPU lacks {', '.join(missing)}")

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no PNG written")
        return 0
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name in engines:
        left.plot(
            BATCHES,
            [BATCHES[i] / latency[name][i] for i in range(len(BATCHES))],
            marker="o",
            label=name,
        )
    left.set_xscale("log", base=2)
    left.set_yscale("log")
    left.set_xlabel("batch rows")
    left.set_ylabel("rows / s (1 thread)")
    left.set_title(f"wide MLP {'-'.join(map(str, SIZES))}")
    left.legend()
    names = [row[0] for row in gemm_rows]
    right.bar([n + " GEMM" for n in names], [row[2] for row in gemm_rows], label="GEMM 2048³")
    right.bar([n + " peak" for n in names], [row[3] for row in gemm_rows], label="measured peak")
    right.set_ylabel("GOPS")
    right.set_title("int8 GEMM vs instruction peak")
    right.legend()
    figure.suptitle(cpu_model(), fontsize=9)
    figure.tight_layout()
    png = args.out / "bench_int8.png"
    figure.savefig(png, dpi=110)
    print(f"\nwrote {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
