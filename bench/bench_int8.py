"""int8 benchmark: headrace's int8 MLP vs ONNX Runtime fp32 and int8, and the int8 GEMM's share of
its instruction's peak, in one process with one thread each.

Per model (the wide MLP 512 -> 1024 -> 1024 -> 16 and the tabular MLP 32 -> 256 -> 256 -> 1; ReLU,
random He-initialised weights):
  - ONNX Runtime fp32, 1 intra-op thread, sequential
  - ONNX Runtime int8 from onnxruntime.quantization.quantize_dynamic with its default settings
  - headrace int8 (headrace.quant, then headrace._core.QuantizedMlp.run, 1 thread per call)
at batch 1, 8 and 32. The engines take turns in blocks of 10 calls (3 at batch 32), so load from
other processes hits all of them alike, each timed warm (the first call of a block is not
counted: another engine's weights just went through the caches); the table gives median latency,
rows/s and headrace's speed-up over each.

Then a 2048 x 2048 x 2048 int8 GEMM on each SIMD ISA headrace can run here, timed in C++ without
the packing (quant_gemm_timings), in GOPS = 2*M*N*K / time, against the measured peak of the
instruction sequence that ISA's kernel issues (csrc/quant/peak_probe.h: vpmaddubsw + vpmaddwd +
vpaddd for avx2, or its paired form when the weights pack paired; vpdpbusd for avx512vnni),
taken as the best of many short register-only runs. avx2 runs twice: uniform random weights
(packed unpaired) and narrow ones (paired, csrc/quant/README.md).

--cpu avx2 runs everything as on an AVX2-only CPU (Zen 2/3): AVX-512 is hidden from CPUID for the
whole process (bench/cpu_mask.py), so ONNX Runtime uses its AVX2 kernels and headrace its avx2
path. Without it each library takes its best path here; HEADRACE_QUANT_ISA forces headrace's alone.

Usage: python bench/bench_int8.py [--cpu native|avx2] [--rounds N] [--skip-gemm]
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
from typing import Any

import numpy as np
import numpy.typing as npt
from cpu_mask import avx512_hidden, reexec_with_avx512_hidden

MODELS = {"wide": [512, 1024, 1024, 16], "tabular": [32, 256, 256, 1]}
BATCHES = [1, 8, 32]
GEMM_SIZE = 2048
BLOCK = 10
Engine = Callable[[npt.NDArray[np.float32]], Any]


def ort_session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def build_engines(sizes: list[int], work: Path) -> tuple[dict[str, Engine], dict[str, int]]:
    from bench_common import save_mlp
    from onnxruntime.quantization import quantize_dynamic

    from headrace import _core
    from headrace import quant as hq

    fp32_path, ort_int8_path = work / "model.onnx", work / "model.ort_int8.onnx"
    save_mlp(fp32_path, sizes, name="mlp")
    quantize_dynamic(str(fp32_path), str(ort_int8_path))
    int8_path = hq.quantize_onnx(fp32_path, work / "1")
    fp32, ort_int8 = ort_session(fp32_path), ort_session(ort_int8_path)
    mlp = _core.QuantizedMlp(str(int8_path))
    engines: dict[str, Engine] = {
        "ORT fp32": lambda x: fp32.run(None, {"x": x})[0],
        "ORT int8": lambda x: ort_int8.run(None, {"x": x})[0],
        f"headrace int8 {mlp.isa}": mlp.run,
    }
    sizes_bytes = {
        "fp32": fp32_path.stat().st_size,
        "ORT int8": ort_int8_path.stat().st_size,
        "headrace": int8_path.stat().st_size,
    }
    return engines, sizes_bytes


def measure(
    engines: dict[str, Engine], x: npt.NDArray[np.float32], rounds: int, block: int
) -> dict[str, float]:
    """Median seconds per call. Engines take turns in blocks of `block` calls; the first call of
    a block (caches still holding the previous engine's weights) is not counted, so each engine
    is timed warm, as a served model is, while load from other processes hits all alike."""
    samples: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(max(rounds // block, 1)):
        for name, engine in engines.items():
            engine(x)
            for _ in range(block):
                start = time.perf_counter()
                engine(x)
                samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def bench_model(name: str, sizes: list[int], rounds: int) -> dict[int, dict[str, float]]:
    work = Path(tempfile.mkdtemp(prefix=f"bench_int8_{name}_"))
    engines, sizes_bytes = build_engines(sizes, work)
    print(
        f"\n{name} MLP {' -> '.join(map(str, sizes))}: files fp32 {sizes_bytes['fp32']} B, "
        f"ORT int8 {sizes_bytes['ORT int8']} B, headrace model.int8 {sizes_bytes['headrace']} B "
        f"({100 * sizes_bytes['headrace'] / sizes_bytes['fp32']:.1f}% of fp32)"
    )
    print(f"  {'batch':>5} " + "".join(f"{engine:>26}" for engine in engines) + "   speed-up")
    rng = np.random.default_rng(1)
    results: dict[int, dict[str, float]] = {}
    ours = next(engine for engine in engines if engine.startswith("headrace"))
    for batch in BATCHES:
        x = rng.standard_normal((batch, sizes[0])).astype(np.float32)
        # Short blocks at batch 32 (a call is ~1 ms): a burst of load then hits every engine.
        latency = measure(engines, x, rounds, BLOCK if batch < 32 else 3)
        results[batch] = latency
        reference = engines["ORT fp32"](x)
        error = float(np.abs(engines[ours](x) - reference).max() / np.abs(reference).max())
        cells = "".join(
            f"{latency[e] * 1e6:>10.1f} us {batch / latency[e]:>9.0f}/s" for e in engines
        )
        print(
            f"  {batch:>5} {cells}   x{latency['ORT int8'] / latency[ours]:.2f} vs ORT int8, "
            f"x{latency['ORT fp32'] / latency[ours]:.2f} vs fp32 (max |err| / max |y| {error:.3f})"
        )
    return results


def narrow_weights(rng: np.random.Generator, shape: tuple[int, int]) -> Any:
    """Mostly small int8 weights, 0.5 % at the extremes: they pack paired on avx2."""
    weights = np.clip(np.rint(rng.normal(0, 30, size=shape)), -127, 127)
    outliers = rng.random(size=shape) < 0.005
    weights[outliers] = rng.choice(np.array([-128, 127]), size=int(outliers.sum()))
    return weights.astype(np.int8)


def bench_gemm(repeats: int) -> None:
    from headrace import _core

    print(f"\nint8 GEMM {GEMM_SIZE}^3, kernel only (GOPS = 2*M*N*K / t; peak = measured)")
    rng = np.random.default_rng(2)
    uniform = rng.integers(-128, 128, size=(GEMM_SIZE, GEMM_SIZE), dtype=np.int8)
    narrow = narrow_weights(rng, (GEMM_SIZE, GEMM_SIZE))
    ops = 2.0 * GEMM_SIZE**3
    for isa in _core.quant_supported_isas():
        if isa == "scalar":
            continue
        top = _core.quant_max_activation_code(isa)
        a = rng.integers(0, top + 1, size=(GEMM_SIZE, GEMM_SIZE), dtype=np.uint8)
        for label, b in (("uniform weights", uniform), ("narrow weights", narrow)):
            paired = bool(_core.quant_packing(b, isa)["paired"])
            seconds = _core.quant_gemm_timings(a, b, isa, repeats)
            # Short probes: a long one on a shared machine measures the other processes too.
            peak = max(_core.quant_peak_gops(isa, 200_000, paired) for _ in range(60))
            step = "paired step" if paired else "step"
            median, best = statistics.median(seconds), min(seconds)
            print(
                f"  {isa:<11} {label:<21} median {median * 1e3:7.1f} ms = "
                f"{ops / median / 1e9:6.1f} GOPS ({100 * ops / median / 1e9 / peak:5.1f}% of the "
                f"{step} peak {peak:6.1f}); best {best * 1e3:7.1f} ms "
                f"({100 * ops / best / 1e9 / peak:5.1f}%)"
            )
            if isa != "avx2":
                break  # only avx2 packs the two kinds differently
    missing = _core.quant_missing_features("avx512vnni")
    if missing:
        print(f"  avx512vnni  not run: this CPU lacks {', '.join(missing)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", choices=["native", "avx2"], default="native")
    parser.add_argument("--rounds", type=int, default=300, help="rounds per batch (fewer at 32)")
    parser.add_argument("--gemm-repeats", type=int, default=7)
    parser.add_argument("--skip-gemm", action="store_true")
    args = parser.parse_args()
    if args.cpu == "avx2" and not avx512_hidden():
        reexec_with_avx512_hidden()

    import onnxruntime as ort
    from bench_common import cpu_model

    from headrace import _core

    load_before = os.getloadavg()
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs, Python "
        f"{platform.python_version()}, onnxruntime {ort.__version__}"
    )
    mode = "AVX-512 hidden from CPUID (as an AVX2-only CPU)" if avx512_hidden() else "native"
    print(f"CPU features: {mode}; 1 thread per engine, same process")
    forced = os.environ.get("HEADRACE_QUANT_ISA")
    print(
        f"headrace int8 ISA: {_core.quant_default_isa()}"
        f"{' (forced by HEADRACE_QUANT_ISA)' if forced else ''}; "
        f"supported: {', '.join(_core.quant_supported_isas())}"
    )
    for name, sizes in MODELS.items():
        bench_model(name, sizes, args.rounds)
    if not args.skip_gemm:
        bench_gemm(args.gemm_repeats)
    load_after = os.getloadavg()
    print(
        f"\nload average (1 min) before/after: {load_before[0]:.2f} / {load_after[0]:.2f} "
        f"on {os.cpu_count()} CPUs"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
