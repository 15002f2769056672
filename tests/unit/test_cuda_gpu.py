"""The CUDA int8 kernels on a GPU: bit-exact against the CPU int32 reference on random, extreme
and odd-shaped inputs; the whole-MLP kernel against the CPU QuantizedMlp (bit for bit where the
epilogue is exact IEEE arithmetic: none/ReLU); a served model answering from the GPU over gRPC.

Every test here needs a device and skips with "no CUDA device: <why>" where there is none."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import start_server, stop_server
from headrace import _core
from headrace import quant as hq
from headrace.backends.int8_cuda import CudaInt8Backend, cuda_unavailable_reason
from headrace.client import Client
from headrace.errors import HeadraceError, InvalidArgumentError, StatusCode, UnavailableError

REASON = cuda_unavailable_reason()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(REASON is not None, reason=f"no CUDA device: {REASON}"),
]
DEVICES = _core.cuda_discover()["devices"]
CLUSTERS = [0, 1] + ([2, 3, 8] if DEVICES and DEVICES[0]["cluster_launch"] else [])
A = hq.Activation
fills = st.sampled_from(["random", "min", "max", "extremes"])


def operand(rng: np.random.Generator, shape: tuple[int, int], fill: str) -> npt.NDArray[np.int8]:
    if fill == "min":
        return np.full(shape, -128, dtype=np.int8)
    if fill == "max":
        return np.full(shape, 127, dtype=np.int8)
    if fill == "extremes":
        return rng.choice(np.array([-128, 127], dtype=np.int8), size=shape)
    return rng.integers(-128, 128, size=shape, dtype=np.int8)


def reference(a: npt.NDArray[np.int8], w: npt.NDArray[np.int8]) -> npt.NDArray[np.int32]:
    return (a.astype(np.int64) @ w.astype(np.int64)).astype(np.int32)


# ---- the tiled GEMM ----


@settings(max_examples=40, deadline=None)
@given(
    m=st.integers(1, 300),
    k=st.integers(1, 300),
    n=st.integers(1, 300),
    fill_a=fills,
    fill_w=fills,
    seed=st.integers(0, 2**32 - 1),
)
def test_gemm_is_bit_exact_on_odd_shapes(
    m: int, k: int, n: int, fill_a: str, fill_w: str, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    a = operand(rng, (m, k), fill_a)
    w = operand(rng, (k, n), fill_w)
    np.testing.assert_array_equal(_core.cuda_gemm_s32(a, w), reference(a, w))


@pytest.mark.parametrize(
    ("m", "k", "n"), [(1, 4096, 1024), (64, 512, 1024), (777, 1000, 513), (2048, 2048, 2048)]
)
def test_gemm_is_bit_exact_on_large_shapes(m: int, k: int, n: int) -> None:
    rng = np.random.default_rng(m + k + n)
    a = operand(rng, (m, k), "random")
    w = operand(rng, (k, n), "random")
    np.testing.assert_array_equal(_core.cuda_gemm_s32(a, w), reference(a, w))
    extremes = operand(rng, (m, k), "min")
    np.testing.assert_array_equal(
        _core.cuda_gemm_s32(extremes, operand(rng, (k, n), "min")),
        reference(extremes, operand(rng, (k, n), "min")),
    )


@pytest.mark.parametrize("activation", [A.NONE, A.RELU, A.SIGMOID, A.TANH, A.GELU_ERF, A.GELU_TANH])
@pytest.mark.parametrize("per_tensor", [False, True])
def test_gemm_fused_epilogue_matches_the_cpu_arithmetic(activation: A, per_tensor: bool) -> None:
    rng = np.random.default_rng(int(activation) + 10 * per_tensor)
    m, k, n = 70, 333, 130
    a = operand(rng, (m, k), "random")
    w = operand(rng, (k, n), "random")
    row_scales = rng.uniform(1e-4, 1e-2, m).astype(np.float32)
    weight_scales = rng.uniform(1e-3, 1e-2, 1 if per_tensor else n).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    got = _core.cuda_gemm_epilogue(a, w, row_scales, weight_scales, bias, int(activation))
    # The CPU epilogue's operations in float32, each rounded on its own (numpy float32 does).
    acc = reference(a, w).astype(np.float32)
    combined = row_scales[:, None] * np.broadcast_to(weight_scales, (n,))[None, :]
    y = acc * combined.astype(np.float32) + bias[None, :]
    if activation == A.NONE:
        np.testing.assert_array_equal(got, y)
    elif activation == A.RELU:
        np.testing.assert_array_equal(got, np.where(y > 0, y, np.float32(0)))
    else:
        expected = hq.apply_activation(activation, y.astype(np.float64))
        np.testing.assert_allclose(got, expected, rtol=2e-6, atol=2e-6)
    with pytest.raises(InvalidArgumentError):
        _core.cuda_gemm_epilogue(a, w, row_scales, weight_scales, bias, int(A.SOFTMAX))


def test_gemm_timing_reports_a_rate() -> None:
    timing = _core.cuda_time_gemm(1024, 1024, 1024, 5)
    assert timing["median_ms"] > 0 and timing["tops"] > 0


# ---- the whole-MLP kernel against the CPU QuantizedMlp ----


def write_mlp(
    path: Path,
    widths: list[int],
    activations: list[A],
    *,
    seed: int,
    per_tensor: bool = False,
    static_layers: tuple[int, ...] = (),
    bias: bool = True,
) -> Path:
    rng = np.random.default_rng(seed)
    layers = []
    for i, activation in enumerate(activations):
        k, n = widths[i], widths[i + 1]
        layers.append(
            hq.QuantizedLayer(
                weights=rng.integers(-127, 128, size=(k, n), dtype=np.int8),
                weight_scales=rng.uniform(0.5, 2.0, 1 if per_tensor else n).astype(np.float32)
                / np.float32(np.sqrt(k) * 127),
                bias=rng.standard_normal(n).astype(np.float32) * 0.1 if bias else None,
                activation=activation,
                input_range=(-2.54, 2.54) if i in static_layers else None,
            )
        )
    spec_in = hq.TensorSpec("x", "FP32", (-1, widths[0]))
    spec_out = hq.TensorSpec("y", "FP32", (-1, widths[-1]))
    path.write_bytes(hq.encode_int8_model(spec_in, spec_out, layers))
    return path


EXACT_MODELS = {
    "odd_relu": ([37, 70, 45, 9], [A.RELU, A.RELU, A.NONE], {}),
    "wide_relu": ([512, 1024, 1024, 16], [A.RELU, A.RELU, A.NONE], {}),
    "per_tensor_static": (
        [300, 257, 64, 3],
        [A.RELU, A.NONE, A.RELU],
        {"per_tensor": True, "static_layers": (1,)},
    ),
    "no_bias_one_layer": ([1, 1], [A.NONE], {"bias": False}),
    "static_input": ([64, 96, 10], [A.RELU, A.NONE], {"static_layers": (0, 1)}),
}


@pytest.mark.parametrize("model", sorted(EXACT_MODELS))
@pytest.mark.parametrize("cluster", CLUSTERS)
def test_mlp_is_bit_exact_with_the_cpu(model: str, cluster: int, tmp_path: Path) -> None:
    widths, activations, options = EXACT_MODELS[model]
    path = write_mlp(tmp_path / "m.int8", widths, activations, seed=len(model), **options)
    cpu = _core.QuantizedMlp(str(path), "scalar")
    gpu = _core.CudaMlp(str(path), cluster_size=cluster)
    assert cluster == 0 or gpu.cluster_size == cluster
    rng = np.random.default_rng(cluster)
    for rows in (1, 7, 16, 63, 64, 65, 200):
        x = rng.standard_normal((rows, widths[0])).astype(np.float32) * 3
        np.testing.assert_array_equal(gpu.run(x), cpu.run(x), err_msg=f"{rows} rows")


@pytest.mark.parametrize("last", [A.SIGMOID, A.TANH, A.GELU_ERF, A.GELU_TANH, A.SOFTMAX])
@pytest.mark.parametrize("cluster", CLUSTERS)
def test_mlp_transcendental_epilogues_match_closely(last: A, cluster: int, tmp_path: Path) -> None:
    # CUDA's expf/tanhf/erff are within 2 ulp of glibc's; a last-bit difference can flip one
    # requantized int8 of a hidden layer, so the comparison is to a tolerance.
    widths = [48, 130, 70, 33]
    path = write_mlp(tmp_path / "m.int8", widths, [A.GELU_ERF, A.TANH, last], seed=int(last))
    cpu = _core.QuantizedMlp(str(path), "scalar")
    gpu = _core.CudaMlp(str(path), cluster_size=cluster)
    x = np.random.default_rng(1).standard_normal((100, widths[0])).astype(np.float32)
    want = cpu.run(x)
    got = gpu.run(x)
    assert np.abs(got - want).max() <= 0.02 * np.abs(want).max() + 1e-5
    if last == A.SOFTMAX:
        np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-5)


def outcome(run: object, x: npt.NDArray[np.float32]) -> object:
    try:
        return run(x)  # type: ignore[operator]
    except HeadraceError as error:
        return type(error)


def test_mlp_extreme_inputs_match_the_cpu(tmp_path: Path) -> None:
    path = write_mlp(tmp_path / "m.int8", [40, 64, 5], [A.RELU, A.NONE], seed=9)
    cpu = _core.QuantizedMlp(str(path), "scalar")
    gpu = _core.CudaMlp(str(path))
    rng = np.random.default_rng(2)
    rows = {
        "zeros": np.zeros((3, 40), np.float32),
        "huge": rng.standard_normal((3, 40)).astype(np.float32) * np.float32(1e30),
        "tiny": rng.standard_normal((3, 40)).astype(np.float32) * np.float32(1e-30),
        "one_hot": np.eye(3, 40, dtype=np.float32) * 5,
        "max_float": np.full((2, 40), np.finfo(np.float32).max, np.float32),
        "nan": np.full((2, 40), np.nan, np.float32),
        "inf": np.full((2, 40), np.inf, np.float32),
    }
    for name, x in rows.items():
        want, got = outcome(cpu.run, x), outcome(gpu.run, x)
        if isinstance(want, np.ndarray):
            assert isinstance(got, np.ndarray), name
            np.testing.assert_array_equal(got, want, err_msg=name)
        else:
            assert got == want == InvalidArgumentError, name
    mixed = np.concatenate([rows["zeros"], rows["huge"], rows["one_hot"]])
    np.testing.assert_array_equal(gpu.run(mixed), cpu.run(mixed))


def test_mlp_concurrent_runs_match_serial_runs(tmp_path: Path) -> None:
    path = write_mlp(tmp_path / "m.int8", [128, 256, 10], [A.RELU, A.NONE], seed=4)
    gpu = _core.CudaMlp(str(path))
    rng = np.random.default_rng(5)
    inputs = [rng.standard_normal((1 + i % 70, 128)).astype(np.float32) for i in range(64)]
    serial = [gpu.run(x) for x in inputs]
    results: list[npt.NDArray[np.float32] | None] = [None] * len(inputs)

    def worker(start: int) -> None:
        for i in range(start, len(inputs), 8):
            results[i] = gpu.run(inputs[i])

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for got, want in zip(results, serial, strict=True):
        np.testing.assert_array_equal(got, want)


def test_mlp_without_graphs_and_launch_timing(tmp_path: Path) -> None:
    path = write_mlp(tmp_path / "m.int8", [512, 1024, 1024, 16], [A.RELU, A.RELU, A.NONE], seed=6)
    plain = _core.CudaMlp(str(path), use_graphs=False)
    graphs = _core.CudaMlp(str(path))
    x = np.random.default_rng(6).standard_normal((32, 512)).astype(np.float32)
    np.testing.assert_array_equal(plain.run(x), graphs.run(x))
    assert plain.time_launch_us(32, 20, False) > 0
    assert graphs.time_launch_us(32, 20, True) > 0


def test_a_model_too_wide_for_shared_memory_is_refused(tmp_path: Path) -> None:
    path = write_mlp(tmp_path / "m.int8", [60000, 4], [A.NONE], seed=1)
    with pytest.raises(HeadraceError, match="too wide") as raised:
        _core.CudaMlp(str(path))
    assert raised.value.code == StatusCode.FAILED_PRECONDITION
    with pytest.raises(UnavailableError, match="no CUDA device: there is no device"):
        _core.CudaMlp(str(path), device=len(DEVICES))


# ---- served from the GPU over gRPC ----


def test_int8_model_served_over_grpc_from_the_gpu(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    version = repo / "mlp_gpu" / "1"
    version.mkdir(parents=True)
    path = write_mlp(version / "model.int8", [64, 128, 128, 10], [A.RELU, A.RELU, A.NONE], seed=8)
    (repo / "mlp_gpu" / "model.toml").write_text(
        'max_batch_size = 64\n[batching]\nmax_queue_delay_us = 2000\n[int8]\ndevice = "cuda"\n'
    )
    cpu = _core.QuantizedMlp(str(path), "scalar")
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((1 + i % 5, 64)).astype(np.float32) for i in range(30)]
    running, thread = start_server(repo)
    try:
        # Served from the GPU: the version's backend is the CUDA one, its batches run through a
        # CudaMlpRunner on the batcher's workers.
        version = running.server.engine.get_version("mlp_gpu")  # type: ignore[attr-defined]
        assert isinstance(version.backend, CudaInt8Backend)
        assert isinstance(version.backend.batch_runner(["x"], ["y"]), _core.CudaMlpRunner)
        with Client(running.address) as client:
            assert client.model_metadata("mlp_gpu").platform == "headrace_int8"
            for x in inputs:
                got = client.infer("mlp_gpu", {"x": x}).outputs["y"]
                np.testing.assert_array_equal(got, cpu.run(x))
    finally:
        stop_server(running, thread)
