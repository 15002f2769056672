"""End-to-end int8 path: ONNX MLP -> headrace quantize -> model.int8 -> QuantizedMlp.run, on every
ISA this CPU runs: accuracy, the executor's arithmetic restated in NumPy, bit-identical results
across ISAs at the same activation bits, threads, the GIL, bad input and the CLI."""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from headrace import _core
from headrace import quant as hq
from helpers.quant_models import build_mlp_onnx, ort_run

FloatArray = npt.NDArray[np.float32]


def supported_isas() -> list[str]:
    return _core.quant_supported_isas()


@dataclass
class Digits:
    onnx_path: Path
    x_train: FloatArray
    x_test: FloatArray
    y_test: npt.NDArray[np.int64]
    fp32_accuracy: float


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Digits:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier
    from threadpoolctl import threadpool_limits

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, data.target, test_size=0.3, random_state=0, stratify=data.target
    )
    # Wide enough that the weights, not the header and scales, dominate the file sizes.
    clf = MLPClassifier(hidden_layer_sizes=(256, 256), max_iter=300, random_state=0)
    # Small matrices: a multi-threaded BLAS only spins, badly so on a busy machine.
    with threadpool_limits(1):
        clf.fit(x_train, y_train)
    weights = [w.astype(np.float32) for w in clf.coefs_]
    biases = [b.astype(np.float32) for b in clf.intercepts_]
    model = build_mlp_onnx(
        weights, biases, ["Relu", "Relu", "Softmax"], input_name="pixels", output_name="probs"
    )
    path = tmp_path_factory.mktemp("digits") / "model.onnx"
    onnx.save(model, str(path))
    probabilities = ort_run(path, x_test)
    # The exported graph is the trained classifier.
    np.testing.assert_allclose(probabilities, clf.predict_proba(x_test), rtol=1e-4, atol=1e-5)
    accuracy = float((probabilities.argmax(axis=1) == y_test).mean())
    assert accuracy > 0.9
    return Digits(path, x_train, x_test, y_test.astype(np.int64), accuracy)


def int8_accuracy(path: Path, digits: Digits, isa: str) -> float:
    mlp = _core.QuantizedMlp(str(path), isa)
    probabilities = mlp.run(digits.x_test)
    return float((probabilities.argmax(axis=1) == digits.y_test).mean())


def test_digits_dynamic_per_channel_keeps_accuracy_and_shrinks_file(
    digits: Digits, tmp_path: Path
) -> None:
    out = tmp_path / "2"
    assert hq.main([str(digits.onnx_path), "--out", str(out)]) == 0
    int8_path = out / hq.MODEL_FILE_NAME
    assert int8_path.is_file()
    size_ratio = int8_path.stat().st_size / digits.onnx_path.stat().st_size
    assert size_ratio <= 0.30, size_ratio
    for isa in supported_isas():
        accuracy = int8_accuracy(int8_path, digits, isa)
        assert abs(accuracy - digits.fp32_accuracy) <= 0.01, (isa, accuracy, digits.fp32_accuracy)


def test_every_isa_matches_the_scalar_executor_bit_for_bit(digits: Digits, tmp_path: Path) -> None:
    """Exact GEMMs and twin epilogues: at the same activation bits every ISA gives the very same
    floats as the scalar reference (avx2 runs 7-bit codes, avx512vnni 8-bit ones)."""
    target = hq.quantize_onnx(digits.onnx_path, tmp_path / "1")
    x = digits.x_test
    for isa in supported_isas():
        mlp = _core.QuantizedMlp(str(target), isa)
        assert mlp.activation_bits == (7 if isa == "avx2" else 8)
        reference = _core.QuantizedMlp(str(target), "scalar", activation_bits=mlp.activation_bits)
        np.testing.assert_array_equal(mlp.run(x), reference.run(x))
        for rows in (1, 3, 33):
            np.testing.assert_array_equal(mlp.run(x[:rows]), reference.run(x[:rows]))
    with pytest.raises(_core.CoreError, match="7-bit"):
        _core.QuantizedMlp(str(target), "avx2", activation_bits=8)
    with pytest.raises(_core.CoreError, match="7 or 8"):
        _core.QuantizedMlp(str(target), "scalar", activation_bits=6)


def test_digits_static_calibrated_keeps_accuracy(digits: Digits, tmp_path: Path) -> None:
    calibration = tmp_path / "calibration.npy"
    np.save(calibration, digits.x_train[:500])
    out = tmp_path / "3"
    assert (
        hq.main([str(digits.onnx_path), "--out", str(out), "--calibration", str(calibration)]) == 0
    )
    for isa in supported_isas():
        accuracy = int8_accuracy(out / hq.MODEL_FILE_NAME, digits, isa)
        assert abs(accuracy - digits.fp32_accuracy) <= 0.01, (isa, accuracy)


def test_digits_per_tensor_keeps_accuracy(digits: Digits, tmp_path: Path) -> None:
    out = tmp_path / "4"
    assert hq.main([str(digits.onnx_path), "--out", str(out), "--per-tensor"]) == 0
    accuracy = int8_accuracy(out / hq.MODEL_FILE_NAME, digits, supported_isas()[-1])
    assert abs(accuracy - digits.fp32_accuracy) <= 0.01, accuracy


def quantize_rows(
    values: FloatArray, top: int, static: tuple[float, float] | None
) -> tuple[npt.NDArray[np.int64], FloatArray, npt.NDArray[np.int64]]:
    """Codes in [0, top] with a zero point per row (or per tensor when static), as epilogue.h."""
    if static is None:
        low = np.minimum(values.min(axis=1, keepdims=True), 0).astype(np.float64)
        high = np.maximum(values.max(axis=1, keepdims=True), 0).astype(np.float64)
    else:
        low, high = np.array([[static[0]]]), np.array([[static[1]]])
    span = np.where(high > low, high - low, 1.0)
    scale = np.where(high > low, span / top, 0.0).astype(np.float32)
    inverse = np.where(high > low, top / span, 0.0).astype(np.float32)
    zero_point = np.clip(np.rint(-low * top / span), 0, top).astype(np.int64)
    scaled = np.clip(values * inverse, -256, 256)
    codes = np.clip(np.rint(scaled) + zero_point, 0, top).astype(np.int64)
    return codes, scale, zero_point


def numpy_int8_forward(layers: list[hq.QuantizedLayer], x: FloatArray, bits: int) -> FloatArray:
    """The executor's arithmetic, restated in NumPy: codes with zero points, exact integer sums,
    float epilogue."""
    top = 127 if bits == 7 else 255
    values = x.astype(np.float32)
    for layer in layers:
        codes, scale, zero_point = quantize_rows(values, top, layer.input_range)
        weights = layer.weights.astype(np.int64)
        sums = codes @ weights - zero_point * weights.sum(axis=0)
        y = sums.astype(np.float32) * (scale * layer.weight_scales).astype(np.float32)
        if layer.bias is not None:
            y = y + layer.bias
        values = hq.apply_activation(
            layer.activation, y.astype(np.float32), layer.activation_params
        )
    return values


@pytest.mark.parametrize(
    ("activation", "opset"),
    [
        ("Relu", 17),
        ("LeakyRelu", 17),
        ("Clip", 17),
        ("Sigmoid", 17),
        ("Tanh", 17),
        ("Gelu", 20),
        ("GeluTanh", 20),
    ],
)
@pytest.mark.parametrize("static", [False, True])
def test_activations_match_numpy_int8_and_fp32(
    activation: str, opset: int, static: bool, tmp_path: Path
) -> None:
    rng = np.random.default_rng(3)
    sizes = [37, 83, 29, 11]
    weights = [
        (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
        for a, b in itertools.pairwise(sizes)
    ]
    biases = [rng.standard_normal(b).astype(np.float32) * 0.1 for b in sizes[1:]]
    model = build_mlp_onnx(
        weights, biases, [activation, activation, None], use_gemm=True, opset=opset
    )
    onnx_path = tmp_path / "model.onnx"
    onnx.save(model, str(onnx_path))
    x = rng.standard_normal((45, sizes[0])).astype(np.float32)
    calibration = None
    if static:
        calibration = tmp_path / "calibration.npy"
        np.save(calibration, rng.standard_normal((200, sizes[0])).astype(np.float32))
    target = hq.quantize_onnx(onnx_path, tmp_path / "1", calibration_path=calibration)
    graph = hq.extract_mlp(model)
    ranges = hq.calibrate_input_ranges(graph, np.load(calibration)) if calibration else None
    layers = hq.quantize_mlp(graph, input_ranges=ranges)
    fp32 = ort_run(onnx_path, x)
    for isa in supported_isas():
        mlp = _core.QuantizedMlp(str(target), isa)
        got = mlp.run(x)
        expected = numpy_int8_forward(layers, x, mlp.activation_bits)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
        # int8 stays close to the float model (outputs are O(1)); one static range per tensor
        # is coarser than one per row, the more so on avx2's 7-bit codes.
        assert np.abs(got - fp32).max() < (0.15 if static else 0.1), isa


def test_metadata_and_properties(digits: Digits, tmp_path: Path) -> None:
    target = hq.quantize_onnx(digits.onnx_path, tmp_path / "1")
    mlp = _core.QuantizedMlp(str(target))
    assert mlp.input == {"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}
    assert mlp.output == {"name": "probs", "datatype": "FP32", "shape": [-1, 10]}
    assert (mlp.input_size, mlp.output_size, mlp.layer_count) == (64, 10, 3)
    assert mlp.isa == _core.quant_default_isa()
    assert mlp.activation_bits == _core.QuantizedMlp(str(target), mlp.isa).activation_bits


def test_environment_variable_picks_the_executor_isa(
    digits: Digits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = hq.quantize_onnx(digits.onnx_path, tmp_path / "1")
    monkeypatch.setenv("HEADRACE_QUANT_ISA", "scalar")
    assert _core.QuantizedMlp(str(target)).isa == "scalar"


def test_concurrent_runs_match_serial_runs(digits: Digits, tmp_path: Path) -> None:
    target = hq.quantize_onnx(digits.onnx_path, tmp_path / "1")
    mlp = _core.QuantizedMlp(str(target))
    rng = np.random.default_rng(5)
    batches = [rng.random((int(rng.integers(1, 200)), 64), dtype=np.float32) for _ in range(16)]
    expected = [mlp.run(batch) for batch in batches]
    results: dict[int, FloatArray] = {}
    errors: list[BaseException] = []

    def worker(start: int) -> None:
        try:
            for repeat in range(5):
                index = (start + repeat) % len(batches)
                got = mlp.run(batches[index])
                if not np.array_equal(got, expected[index]):
                    raise AssertionError(f"thread {start} batch {index} differs")
                results[start * 100 + repeat] = got
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert len(results) == 40


def test_bad_inputs_are_errors(digits: Digits, tmp_path: Path) -> None:
    mlp = _core.QuantizedMlp(str(hq.quantize_onnx(digits.onnx_path, tmp_path / "1")))
    with pytest.raises(_core.CoreError) as info:
        mlp.run(np.zeros((3, 63), dtype=np.float32))
    assert info.value.code == 3
    x = np.zeros((3, 64), dtype=np.float32)
    x[1, 5] = np.nan
    with pytest.raises(_core.CoreError, match="NaN"):
        mlp.run(x)
    assert mlp.run(np.zeros((0, 64), dtype=np.float32)).shape == (0, 10)
    # An all-zero row has scale 0; the output is the biases pushed through the network.
    assert np.isfinite(mlp.run(np.zeros((2, 64), dtype=np.float32))).all()


def test_existing_model_is_never_overwritten(digits: Digits, tmp_path: Path) -> None:
    out = tmp_path / "1"
    assert hq.main([str(digits.onnx_path), "--out", str(out)]) == 0
    before = (out / hq.MODEL_FILE_NAME).read_bytes()
    assert hq.main([str(digits.onnx_path), "--out", str(out), "--per-tensor"]) == 1
    assert (out / hq.MODEL_FILE_NAME).read_bytes() == before


def test_large_models_show_progress(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(11)
    sizes = [512, 1024, 1024, 16]
    weights = [rng.standard_normal((a, b)).astype(np.float32) for a, b in itertools.pairwise(sizes)]
    biases = [np.zeros(b, dtype=np.float32) for b in sizes[1:]]
    onnx_path = tmp_path / "wide.onnx"
    onnx.save(build_mlp_onnx(weights, biases, ["Relu", "Relu", None]), str(onnx_path))
    assert hq.main([str(onnx_path), "--out", str(tmp_path / "1")]) == 0
    err = capsys.readouterr().err
    assert "quantizing layer 1/3 'fc0' [512 x 1024]" in err
    assert "quantizing layer 3/3 'fc2' [1024 x 16]" in err


def test_run_releases_the_gil(digits: Digits, tmp_path: Path) -> None:
    """While one thread is inside run(), another keeps executing Python code."""
    mlp = _core.QuantizedMlp(str(hq.quantize_onnx(digits.onnx_path, tmp_path / "1")))
    # Long enough (a few hundred ms) that a busy machine's scheduling gaps stay small next to it.
    x = np.random.default_rng(4).random((300_000, 64), dtype=np.float32)
    window: list[float] = []

    def worker() -> None:
        window.append(time.perf_counter())
        mlp.run(x)
        window.append(time.perf_counter())

    thread = threading.Thread(target=worker)
    ticks: list[float] = []
    thread.start()
    while thread.is_alive():
        ticks.append(time.perf_counter())
    thread.join()
    start, end = window
    inside = [start, *(t for t in ticks if start < t < end), end]
    assert end - start > 0.02, "the run was too short to tell"
    longest_gap = max(later - earlier for earlier, later in itertools.pairwise(inside))
    # Holding the GIL for the whole call would stall this loop for (nearly) the whole window; the
    # ticks that land inside it then all come from the GIL hand-overs just before and after run().
    assert longest_gap < 0.5 * (end - start), (longest_gap, end - start)


def test_gemm_alpha_beta_and_untransposed_weights(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    w0 = (rng.standard_normal((20, 30)) / 4).astype(np.float32)
    c0 = rng.standard_normal((1, 30)).astype(np.float32)
    w1 = (rng.standard_normal((6, 30)) / 4).astype(np.float32)  # transB=1: stored [n, k]
    c1 = rng.standard_normal(6).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "w0", "c0"], ["g0"], name="g0", alpha=0.5, beta=2.0),
            helper.make_node("Tanh", ["g0"], ["t0"], name="t0"),
            helper.make_node("Gemm", ["t0", "w1", "c1"], ["y"], name="g1", transB=1),
            helper.make_node("Softmax", ["y"], ["p"], name="sm", axis=-1),
        ],
        "gemm_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 20])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["n", 6])],
        [
            numpy_helper.from_array(a, name)
            for a, name in [(w0, "w0"), (c0, "c0"), (w1, "w1"), (c1, "c1")]
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx_path = tmp_path / "gemm.onnx"
    onnx.save(model, str(onnx_path))
    x = rng.standard_normal((33, 20)).astype(np.float32)
    expected = ort_run(onnx_path, x)
    np.testing.assert_allclose(hq.forward_fp32(hq.extract_mlp(model), x)[-1], expected, atol=1e-5)
    got = _core.QuantizedMlp(str(hq.quantize_onnx(onnx_path, tmp_path / "1"))).run(x)
    assert np.abs(got - expected).max() < 0.02
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-5)
