"""CUDA int8 benchmark (issue 15), one run on one GPU, every number with its reference beside it.

1. GEMM, square m = n = k in 2048, 4096, 8192: headrace's tiled tensor-core kernel (int8 in,
   int32 out, device-resident random operands, CUDA-event timed launches) vs torch._int_mm (cuBLAS
   int8) vs fp16 torch.matmul, in TOPS = 2 m n k / median time. The headrace result is checked
   bit-exact against torch._int_mm at 2048^3 first.
2. The wide MLP 512 -> 1024 -> 1024 -> 16 (ReLU, ReLU, linear; per-channel weight scales, dynamic
   per-row activation scales) at batch 1, 8, 32, 64:
     - headrace one-launch kernel, device time per launch (graph replay, and plain launches)
     - headrace CudaMlp.run end to end from Python (host rows in, host rows out)
     - per-layer torch: quantize rows, torch._int_mm, dequantize + bias + ReLU, ... (eager, and
       captured in a CUDA graph), device time per forward; inputs already on the device
     - ONNX Runtime fp32 with the CUDA execution provider, end to end, where the installed
       onnxruntime has it
   The headrace output is checked bit-exact against the CPU QuantizedMlp at each batch.

Prints a table and the issue's targets (GEMM 4096^3 >= 250 TOPS and >= 2x torch._int_mm; MLP
batch 32 faster than per-layer torch._int_mm), and writes the numbers as JSON (--out).

Usage: python bench/bench_cuda.py [--out DIR] [--quick]      Never run as a test.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from headrace import _core
from headrace import quant as hq

WIDTHS = [512, 1024, 1024, 16]
BATCHES = [1, 8, 32, 64]


def torch_device_time_ms(torch: Any, fn: Callable[[], object], iterations: int) -> float:
    """Median over 5 repeats of the mean CUDA-event time of `iterations` back-to-back calls."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    means = []
    for _ in range(5):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iterations):
            fn()
        stop.record()
        stop.synchronize()
        means.append(start.elapsed_time(stop) / iterations)
    return statistics.median(means)


def host_time_us(fn: Callable[[], object], iterations: int) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e6 * statistics.median(times)


def gemm_section(torch: Any, quick: bool) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    a = rng.integers(-128, 128, (2048, 2048), dtype=np.int8)
    b = rng.integers(-128, 128, (2048, 2048), dtype=np.int8)
    ours = _core.cuda_gemm_s32(a, b)
    cublas = torch._int_mm(torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda()).cpu().numpy()
    exact = bool(np.array_equal(ours, cublas))
    print(f"GEMM 2048^3 headrace == torch._int_mm: {exact}")
    rows = []
    for size in (2048, 4096) if quick else (2048, 4096, 8192):
        iterations = max(5, int(50 * (2048 / size) ** 3))
        ops = 2.0 * size**3
        mine = _core.cuda_time_gemm(size, size, size, iterations)
        a_t = torch.randint(-128, 128, (size, size), dtype=torch.int8, device="cuda")
        b_t = torch.randint(-128, 128, (size, size), dtype=torch.int8, device="cuda")
        int_mm_ms = torch_device_time_ms(
            torch, lambda a_t=a_t, b_t=b_t: torch._int_mm(a_t, b_t), iterations
        )
        h_a = torch.randn(size, size, dtype=torch.float16, device="cuda")
        h_b = torch.randn(size, size, dtype=torch.float16, device="cuda")
        fp16_ms = torch_device_time_ms(
            torch, lambda h_a=h_a, h_b=h_b: torch.matmul(h_a, h_b), iterations
        )
        rows.append(
            {
                "size": size,
                "headrace_tops": ops / (mine["median_ms"] * 1e9),
                "int_mm_tops": ops / (int_mm_ms * 1e9),
                "fp16_tflops": ops / (fp16_ms * 1e9),
                "headrace_ms": mine["median_ms"],
                "int_mm_ms": int_mm_ms,
                "fp16_ms": fp16_ms,
                "exact_2048": exact,
            }
        )
    return rows


def write_wide_mlp(path: Path) -> list[hq.QuantizedLayer]:
    rng = np.random.default_rng(1)
    layers = []
    for i, (k, n) in enumerate(itertools.pairwise(WIDTHS)):
        last = i == len(WIDTHS) - 2
        layers.append(
            hq.QuantizedLayer(
                weights=rng.integers(-127, 128, (k, n), dtype=np.int8),
                weight_scales=(rng.uniform(0.5, 2.0, n) / (np.sqrt(k) * 127)).astype(np.float32),
                bias=(rng.standard_normal(n) * 0.1).astype(np.float32),
                activation=hq.Activation.NONE if last else hq.Activation.RELU,
                input_range=None,
            )
        )
    path.write_bytes(
        hq.encode_int8_model(
            hq.TensorSpec("x", "FP32", (-1, WIDTHS[0])),
            hq.TensorSpec("y", "FP32", (-1, WIDTHS[-1])),
            layers,
        )
    )
    return layers


def torch_int8_forward(torch: Any, layers: list[hq.QuantizedLayer]) -> Callable[[Any], Any]:
    """Per-layer torch: dynamic per-row quantization, torch._int_mm, dequantize, bias, ReLU."""
    weights = [torch.from_numpy(layer.weights).cuda() for layer in layers]
    scales = [torch.from_numpy(layer.weight_scales).cuda() for layer in layers]
    biases = [torch.from_numpy(layer.bias).cuda() for layer in layers]  # type: ignore[arg-type]

    def forward(x: Any) -> Any:
        for i, (w, ws, b) in enumerate(zip(weights, scales, biases, strict=True)):
            row_scale = x.abs().amax(dim=1, keepdim=True).clamp_min(1e-30) / 127
            q = torch.round(x / row_scale).clamp_(-127, 127).to(torch.int8)
            x = torch._int_mm(q, w).float() * (row_scale * ws) + b
            if i + 1 < len(weights):
                x = torch.relu(x)
        return x

    return forward


def mlp_section(torch: Any, quick: bool) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.int8"
        layers = write_wide_mlp(path)
        gpu = _core.CudaMlp(str(path))
        cpu = _core.QuantizedMlp(str(path))
        print(
            f"whole-MLP kernel: cluster of {gpu.cluster_size} CTAs, "
            f"{gpu.shared_memory_bytes} bytes of shared memory each"
        )
        forward = torch_int8_forward(torch, layers)
        ort_session = ort_cuda_session(layers, Path(folder))
        rows_out = []
        rng = np.random.default_rng(2)
        iterations = 50 if quick else 200
        for batch in BATCHES:
            x = rng.standard_normal((batch, WIDTHS[0])).astype(np.float32)
            exact = bool(np.array_equal(gpu.run(x), cpu.run(x)))
            row: dict[str, Any] = {"batch": batch, "exact_vs_cpu": exact}
            row["kernel_graph_us"] = gpu.time_launch_us(batch, iterations, True)
            row["kernel_launch_us"] = gpu.time_launch_us(batch, iterations, False)
            row["run_end_to_end_us"] = host_time_us(lambda x=x: gpu.run(x), iterations)
            # torch._int_mm has needed more than 16 rows on some versions: pad when it refuses.
            rows_t = batch
            try:
                forward(torch.from_numpy(x).cuda())
            except RuntimeError:
                rows_t = 32
            x_t = torch.from_numpy(np.resize(x, (rows_t, WIDTHS[0]))).cuda()
            row["torch_rows"] = rows_t
            row["torch_eager_us"] = 1000 * torch_device_time_ms(
                torch, lambda x_t=x_t: forward(x_t), iterations
            )
            row["torch_graph_us"] = torch_graph_us(torch, forward, x_t, iterations)
            if ort_session is not None:
                row["ort_cuda_fp32_us"] = host_time_us(
                    lambda x=x: ort_session.run(["y"], {"x": x}), iterations
                )
            rows_out.append(row)
    return rows_out


def torch_graph_us(torch: Any, forward: Callable[[Any], Any], x: Any, iterations: int) -> float:
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            forward(x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        forward(x)
    return 1000 * torch_device_time_ms(torch, graph.replay, iterations)


def ort_cuda_session(layers: list[hq.QuantizedLayer], folder: Path) -> Any:
    try:
        import onnxruntime as ort
    except ImportError:
        print("ONNX Runtime: not installed")
        return None
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        print(f"ONNX Runtime {ort.__version__}: no CUDA execution provider here (CPU-only build)")
        return None
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, current = [], [], "x"
    for i, layer in enumerate(layers):
        w = layer.weights.astype(np.float32) * layer.weight_scales[None, :]
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(layer.bias, f"b{i}")]  # type: ignore[arg-type]
        last = i + 1 == len(layers)
        nodes.append(
            helper.make_node("Gemm", [current, f"w{i}", f"b{i}"], ["y" if last else f"g{i}"])
        )
        if not last:
            nodes.append(helper.make_node("Relu", [f"g{i}"], [f"h{i}"]))
            current = f"h{i}"
    graph = helper.make_graph(
        nodes,
        "wide_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTHS[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", WIDTHS[-1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    path = folder / "wide_fp32.onnx"
    onnx.save(model, str(path))
    return ort.InferenceSession(str(path), providers=["CUDAExecutionProvider"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--quick", action="store_true", help="fewer sizes and iterations")
    args = parser.parse_args()
    import torch

    device = _core.cuda_discover()["devices"][0]
    print(f"device: {device['name']}, {device['multiprocessors']} SMs; torch {torch.__version__}")
    gemm = gemm_section(torch, args.quick)
    mlp = mlp_section(torch, args.quick)

    print("\nGEMM (TOPS; fp16 in TFLOPS)      headrace   torch._int_mm   fp16 matmul")
    for r in gemm:
        print(
            f"  {r['size']}^3{'':24}{r['headrace_tops']:9.1f}{r['int_mm_tops']:16.1f}"
            f"{r['fp16_tflops']:14.1f}"
        )
    print(
        "\nwide MLP 512-1024-1024-16 (us)  kernel(graph) kernel  run(e2e)"
        "  torch eager  graph  ORT CUDA"
    )
    for r in mlp:
        ort_us = f"{r['ort_cuda_fp32_us']:9.1f}" if "ort_cuda_fp32_us" in r else "      n/a"
        print(
            f"  batch {r['batch']:3d} exact={r['exact_vs_cpu']!s:5}{r['kernel_graph_us']:9.1f}"
            f"{r['kernel_launch_us']:8.1f}{r['run_end_to_end_us']:9.1f}{r['torch_eager_us']:12.1f}"
            f"{r['torch_graph_us']:7.1f}{ort_us}"
        )
    by_size = {r["size"]: r for r in gemm}
    b32 = next(r for r in mlp if r["batch"] == 32)
    targets = {
        "gemm_4096_at_least_250_tops": by_size[4096]["headrace_tops"] >= 250,
        "gemm_4096_at_least_2x_int_mm": by_size[4096]["headrace_tops"]
        >= 2 * by_size[4096]["int_mm_tops"],
        "mlp_batch32_faster_than_per_layer_int_mm": b32["kernel_graph_us"] < b32["torch_eager_us"],
        "bit_exact": all(r["exact_vs_cpu"] for r in mlp) and all(r["exact_2048"] for r in gemm),
    }
    print("\ntargets: " + ", ".join(f"{k}={'PASS' if v else 'FAIL'}" for k, v in targets.items()))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_cuda.json").write_text(
        json.dumps({"device": device, "gemm": gemm, "mlp": mlp, "targets": targets}, indent=2)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
