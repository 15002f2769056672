"""End-to-end int8 path: ONNX MLP -> headrace quantize -> model.int8 -> QuantizedMlp.run."""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from headrace import _core
from headrace import quantize as hq

FloatArray = npt.NDArray[np.float32]


def supported_isas() -> list[str]:
    return _core.quant_supported_isas()


def build_mlp_onnx(
    weights: list[FloatArray],
    biases: list[FloatArray],
    activations: list[str | None],
    *,
    use_gemm: bool = False,
    opset: int = 17,
    input_name: str = "x",
    output_name: str = "y",
) -> onnx.ModelProto:
    """A chain of MatMul+Add (or Gemm with transB=1) and activations, built with onnx.helper."""
    nodes = []
    initializers = []
    current = input_name
    for i, (weight, bias, activation) in enumerate(zip(weights, biases, activations, strict=True)):
        last = i == len(weights) - 1
        dense_out = f"dense{i}" if (activation or not last) else output_name
        if use_gemm:
            initializers.append(numpy_helper.from_array(weight.T.copy(), f"w{i}"))
            initializers.append(numpy_helper.from_array(bias, f"b{i}"))
            nodes.append(
                helper.make_node(
                    "Gemm", [current, f"w{i}", f"b{i}"], [dense_out], name=f"fc{i}", transB=1
                )
            )
        else:
            initializers.append(numpy_helper.from_array(weight, f"w{i}"))
            initializers.append(numpy_helper.from_array(bias, f"b{i}"))
            nodes.append(helper.make_node("MatMul", [current, f"w{i}"], [f"mm{i}"], name=f"fc{i}"))
            nodes.append(helper.make_node("Add", [f"mm{i}", f"b{i}"], [dense_out], name=f"bias{i}"))
        current = dense_out
        if activation is not None:
            act_out = output_name if last else f"act{i}"
            attrs = {}
            op = activation
            if activation == "GeluTanh":
                op, attrs = "Gelu", {"approximate": "tanh"}
            nodes.append(
                helper.make_node(op, [current], [act_out], name=f"{op.lower()}{i}", **attrs)
            )
            current = act_out
    graph = helper.make_graph(
        nodes,
        "mlp",
        [
            helper.make_tensor_value_info(
                input_name, TensorProto.FLOAT, ["batch", weights[0].shape[0]]
            )
        ],
        [
            helper.make_tensor_value_info(
                output_name, TensorProto.FLOAT, ["batch", weights[-1].shape[1]]
            )
        ],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def ort_run(model_path: Path, x: FloatArray) -> FloatArray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    result: FloatArray = session.run(None, {name: x})[0]
    return result


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

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, data.target, test_size=0.3, random_state=0, stratify=data.target
    )
    # Wide enough that the weights, not the header and scales, dominate the file sizes.
    clf = MLPClassifier(hidden_layer_sizes=(256, 256), max_iter=300, random_state=0)
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
    outputs = []
    for isa in supported_isas():
        accuracy = int8_accuracy(int8_path, digits, isa)
        assert abs(accuracy - digits.fp32_accuracy) <= 0.01, (isa, accuracy, digits.fp32_accuracy)
        outputs.append(_core.QuantizedMlp(str(int8_path), isa).run(digits.x_test))
    # Bit-exact GEMMs and one shared epilogue: every ISA gives the very same floats.
    for other in outputs[1:]:
        np.testing.assert_array_equal(other, outputs[0])


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


def numpy_int8_forward(layers: list[hq.QuantizedLayer], x: FloatArray) -> FloatArray:
    """The executor's arithmetic, restated in NumPy: per-row int8, int32 GEMM, float epilogue."""
    values = x.astype(np.float32)
    for layer in layers:
        max_abs = np.abs(values).max(axis=1, keepdims=True)
        inverse = np.float32(127.0) / np.where(max_abs > 0, max_abs, np.float32(1.0))
        q = np.clip(np.rint(values * inverse), -127, 127).astype(np.int64)
        row_scales = np.where(max_abs > 0, max_abs / np.float32(127.0), np.float32(0.0))
        acc = (q @ layer.weights.astype(np.int64)).astype(np.float32)
        y = acc * (row_scales * layer.weight_scales).astype(np.float32)
        if layer.bias is not None:
            y = y + layer.bias
        values = hq._apply_activation(layer.activation, y.astype(np.float32))
    return values


@pytest.mark.parametrize(
    ("activation", "opset"),
    [("Relu", 17), ("Sigmoid", 17), ("Tanh", 17), ("Gelu", 20), ("GeluTanh", 20)],
)
def test_activations_match_numpy_int8_and_fp32(activation: str, opset: int, tmp_path: Path) -> None:
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
    target = hq.quantize_onnx(onnx_path, tmp_path / "1")
    x = rng.standard_normal((45, sizes[0])).astype(np.float32)
    graph = hq.extract_mlp(model)
    expected = numpy_int8_forward(hq.quantize_mlp(graph), x)
    fp32 = ort_run(onnx_path, x)
    for isa in supported_isas():
        got = _core.QuantizedMlp(str(target), isa).run(x)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
        # int8 stays close to the float model (outputs are O(1)).
        assert np.abs(got - fp32).max() < 0.1


def test_metadata_and_properties(digits: Digits, tmp_path: Path) -> None:
    target = hq.quantize_onnx(digits.onnx_path, tmp_path / "1")
    mlp = _core.QuantizedMlp(str(target))
    assert mlp.input == {"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}
    assert mlp.output == {"name": "probs", "datatype": "FP32", "shape": [-1, 10]}
    assert (mlp.input_size, mlp.output_size, mlp.layer_count) == (64, 10, 3)
    assert mlp.isa == _core.quant_default_isa()


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


def conv_model() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones((4, 1, 3, 3), dtype=np.float32), "conv_w")
    nodes = [
        helper.make_node("Conv", ["x", "conv_w"], ["c"], name="conv0"),
        helper.make_node("Relu", ["c"], ["y"], name="relu0"),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])],
        [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_cli_names_the_unsupported_node_and_op(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "cnn.onnx"
    onnx.save(conv_model(), str(path))
    assert hq.main([str(path), "--out", str(tmp_path / "1")]) == 2
    err = capsys.readouterr().err
    assert "node 'conv0' (op Conv)" in err
    assert not (tmp_path / "1" / hq.MODEL_FILE_NAME).exists()


def test_cli_subprocess_reports_unsupported_graph(tmp_path: Path) -> None:
    path = tmp_path / "cnn.onnx"
    onnx.save(conv_model(), str(path))
    result = subprocess.run(
        [sys.executable, "-m", "headrace.quantize", str(path), "--out", str(tmp_path / "1")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert "node 'conv0' (op Conv)" in result.stderr
    assert "Traceback" not in result.stderr


def test_unsupported_structures_name_the_node(tmp_path: Path) -> None:
    weight = np.ones((4, 3), dtype=np.float32)
    # The weight is a graph input, not a constant.
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm_dynamic")],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4]),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 3]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 3])],
    )
    with pytest.raises(hq.UnsupportedGraphError, match="graph has 2 inputs"):
        hq.extract_mlp(helper.make_model(graph))
    # Softmax in the middle of the chain.
    biases = [np.zeros(3, np.float32), np.zeros(4, np.float32)]
    model = build_mlp_onnx([weight, weight.T.copy()], biases, ["Softmax", None])
    with pytest.raises(hq.UnsupportedGraphError, match=r"node 'softmax0' \(op Softmax\)"):
        hq.extract_mlp(model)
    # An activation with no dense layer before it.
    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["r"], name="early_relu"),
            helper.make_node("MatMul", ["r", "w"], ["y"], name="mm"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 3])],
        [numpy_helper.from_array(weight, "w")],
    )
    with pytest.raises(hq.UnsupportedGraphError, match=r"node 'early_relu' \(op Relu\)"):
        hq.extract_mlp(helper.make_model(graph))


def test_run_releases_the_gil(digits: Digits, tmp_path: Path) -> None:
    """While one thread is inside run(), another keeps executing Python code."""
    mlp = _core.QuantizedMlp(str(hq.quantize_onnx(digits.onnx_path, tmp_path / "1")))
    x = np.random.default_rng(4).random((30_000, 64), dtype=np.float32)
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
