"""Graphs as real exporters write them, quantized and run on every ISA this CPU has.

skl2onnx runs for real here (its MLPClassifier with zipmap=False). PyTorch's exports come from
helpers/torch_exports.py, which rebuilds exactly what torch.onnx.export 2.13 writes (checked
against PyTorch by helpers/verify_torch_exports.py; PyTorch itself is no test dependency).
Each supported op appears in at least one of these graphs:

  Identity          skl2onnx (before the probabilities), torch with an untrained BatchNorm
  Dropout           torch, training-mode export at opset 11 (inference in ONNX)
  Flatten           torch classifier (TorchScript exporter)
  Reshape           torch classifier (dynamo: constant shape), torch view (Shape/Gather/Concat)
  Cast to float     skl2onnx (first node), torch ``x.float()``
  Gemm transB       every torch graph
  MatMul            skl2onnx; torch's bias-free Linear (a transposed initializer)
  BatchNormalization  torch classifier and BnSigmoid (TorchScript exporter), folded
  LeakyRelu, Clip   torch classifier (Clip with Constant bounds, or initializers with dynamo)
  Softmax / LogSoftmax / Sigmoid at the end: skl2onnx, torch view / classifier / BnSigmoid
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from headrace import _core
from headrace import quant as hq
from helpers import torch_exports as te
from helpers.digits_classifier import train_digits_classifier

FloatArray = npt.NDArray[np.float32]


def ort_outputs(model: onnx.ModelProto, x: FloatArray, name: str = "y") -> FloatArray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    result: FloatArray = session.run([name], {session.get_inputs()[0].name: x})[0]
    return result


def quantize_and_check(
    model: onnx.ModelProto, x: FloatArray, tmp_path: Path, *, output: str = "y", tolerance: float
) -> Path:
    """The graph reads exactly (float reference == ONNX Runtime) and every ISA's int8 answer is
    within ``tolerance`` of ONNX Runtime's fp32 answer."""
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    expected = ort_outputs(model, x, output)
    graph = hq.extract_mlp(model)
    np.testing.assert_allclose(hq.forward_fp32(graph, x)[-1], expected, rtol=1e-5, atol=1e-5)
    target = hq.quantize_onnx(path, tmp_path / "1")
    for isa in _core.quant_supported_isas():
        got = _core.QuantizedMlp(str(target), isa).run(x)
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= tolerance, (isa, np.abs(got - expected).max())
    return target


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12)


@pytest.mark.parametrize("fresh_bn", [False, True])
def test_torch_classifier_torchscript_export(
    fresh_bn: bool, rng: np.random.Generator, tmp_path: Path
) -> None:
    """Flatten, Gemm transB, BatchNormalization, LeakyRelu, Clip (Constant bounds), MatMul with a
    transposed initializer, LogSoftmax; an untrained BatchNorm adds Identity nodes."""
    l1, l2 = te.random_linear(rng, 8, 16), te.random_linear(rng, 16, 16)
    l3, bn = te.random_linear(rng, 16, 4, bias=False), te.random_batch_norm(rng, 16, fresh=fresh_bn)
    model = te.classifier_legacy(l1, bn, l2, l3)
    ops = [node.op_type for node in model.graph.node]
    assert ("Identity" in ops) == fresh_bn
    x = rng.standard_normal((40, 2, 4)).astype(np.float32)
    target = quantize_and_check(model, x, tmp_path, tolerance=0.05)
    mlp = _core.QuantizedMlp(str(target))
    assert mlp.input == {"name": "x", "datatype": "FP32", "shape": [-1, 2, 4]}
    assert mlp.layer_count == 3


def test_torch_classifier_dynamo_export(rng: np.random.Generator, tmp_path: Path) -> None:
    """Reshape to a constant [-1, 8] (allowzero=1), BatchNorm folded by the exporter, Clip bounds
    as initializers, a bias-free Gemm, LogSoftmax."""
    l1, l2 = te.random_linear(rng, 8, 16), te.random_linear(rng, 16, 16)
    l3, bn = te.random_linear(rng, 16, 4, bias=False), te.random_batch_norm(rng, 16)
    x = rng.standard_normal((40, 2, 4)).astype(np.float32)
    quantize_and_check(te.classifier_dynamo(l1, bn, l2, l3), x, tmp_path, tolerance=0.05)


def test_torch_view_computes_its_reshape(rng: np.random.Generator, tmp_path: Path) -> None:
    """``x.reshape(x.shape[0], -1)``: Shape -> Gather -> Unsqueeze -> Concat -> Reshape, then
    Softmax at the end."""
    model = te.view_softmax_legacy(te.random_linear(rng, 8, 16), te.random_linear(rng, 16, 3))
    x = rng.standard_normal((33, 2, 4)).astype(np.float32)
    quantize_and_check(model, x, tmp_path, tolerance=0.02)


def test_torch_batch_norm_then_sigmoid(rng: np.random.Generator, tmp_path: Path) -> None:
    l1, bn, l2 = (
        te.random_linear(rng, 8, 16),
        te.random_batch_norm(rng, 16),
        te.random_linear(rng, 16, 3),
    )
    x = rng.standard_normal((33, 8)).astype(np.float32)
    quantize_and_check(te.bn_sigmoid_legacy(l1, bn, l2), x, tmp_path, tolerance=0.02)


def test_torch_cast_to_float(rng: np.random.Generator, tmp_path: Path) -> None:
    model = te.cast_mlp_legacy(te.random_linear(rng, 8, 16), te.random_linear(rng, 16, 3))
    x = rng.standard_normal((33, 8)).astype(np.float32)
    quantize_and_check(model, x, tmp_path, tolerance=0.05)


def test_torch_dropout_in_an_inference_graph(rng: np.random.Generator, tmp_path: Path) -> None:
    """Opset 11's Dropout (ratio, unused mask output) is the identity at inference."""
    l1, l2 = te.random_linear(rng, 8, 16), te.random_linear(rng, 16, 3)
    model = te.dropout_training_export(l1, l2, opset=11)
    x = rng.standard_normal((33, 8)).astype(np.float32)
    quantize_and_check(model, x, tmp_path, tolerance=0.05)


def test_torch_dropout_in_a_training_graph_is_refused(rng: np.random.Generator) -> None:
    model = te.dropout_training_export(
        te.random_linear(rng, 8, 16), te.random_linear(rng, 16, 3), opset=13
    )
    with pytest.raises(hq.UnsupportedGraphError, match=r"node '/2/Dropout' \(op Dropout\)"):
        hq.extract_mlp(model)


def test_torch_classifier_accuracy_within_one_point(tmp_path: Path) -> None:
    """A trained classifier exported both ways keeps its digits accuracy within 1 point."""
    trained = train_digits_classifier()
    for name, model in [
        (
            "torchscript",
            te.classifier_legacy(
                trained.l1, trained.bn, trained.l2, trained.l3, feature_dims=(8, 8)
            ),
        ),
        (
            "dynamo",
            te.classifier_dynamo(
                trained.l1, trained.bn, trained.l2, trained.l3, feature_dims=(8, 8)
            ),
        ),
    ]:
        fp32 = ort_outputs(model, trained.x_test)
        fp32_accuracy = float((fp32.argmax(axis=1) == trained.y_test).mean())
        assert fp32_accuracy > 0.93, (name, fp32_accuracy)
        path = tmp_path / f"{name}.onnx"
        onnx.save(model, str(path))
        target = hq.quantize_onnx(path, tmp_path / name)
        assert target.stat().st_size <= 0.3 * path.stat().st_size
        for isa in _core.quant_supported_isas():
            log_probabilities = _core.QuantizedMlp(str(target), isa).run(trained.x_test)
            accuracy = float((log_probabilities.argmax(axis=1) == trained.y_test).mean())
            assert abs(accuracy - fp32_accuracy) <= 0.01, (name, isa, accuracy, fp32_accuracy)


def skl2onnx_digits(
    activation: str, hidden: tuple[int, ...], *, binary: bool = False
) -> tuple[onnx.ModelProto, FloatArray, npt.NDArray[np.int64]]:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier
    from threadpoolctl import threadpool_limits

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = (data.target > 4).astype(np.int64) if binary else data.target
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=0)
    classifier = MLPClassifier(hidden, activation=activation, max_iter=400, random_state=0)
    with threadpool_limits(1):  # small matrices: more BLAS threads only spin
        classifier.fit(x_train, y_train)
    model = convert_sklearn(
        classifier,
        initial_types=[("input", FloatTensorType([None, 64]))],
        options={id(classifier): {"zipmap": False}},
    )
    return model, x_test, y_test.astype(np.int64)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("activation", ["relu", "tanh", "logistic", "identity"])
def test_skl2onnx_mlp_classifier(activation: str, tmp_path: Path) -> None:
    """Cast, MatMul + Add, the activation, Softmax, Identity; the label output is left out."""
    model, x_test, y_test = skl2onnx_digits(activation, (64, 32))
    target = quantize_and_check(model, x_test, tmp_path, output="probabilities", tolerance=0.1)
    assert hq.extract_mlp(model).dropped_outputs == ("label",)
    fp32 = ort_outputs(model, x_test, "probabilities")
    fp32_accuracy = float((fp32.argmax(axis=1) == y_test).mean())
    for isa in _core.quant_supported_isas():
        probabilities = _core.QuantizedMlp(str(target), isa).run(x_test)
        accuracy = float((probabilities.argmax(axis=1) == y_test).mean())
        assert abs(accuracy - fp32_accuracy) <= 0.01, (activation, isa, accuracy, fp32_accuracy)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_skl2onnx_binary_classifier(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Sigmoid -> Sub(1, p) -> Concat(1 - p, p) becomes a 2-column Softmax."""
    model, x_test, _ = skl2onnx_digits("relu", (16,), binary=True)
    path = tmp_path / "binary.onnx"
    onnx.save(model, str(path))
    assert hq.main([str(path), "--out", str(tmp_path / "1")]) == 0
    assert "leaving out 'label'" in capsys.readouterr().err
    (tmp_path / "again").mkdir()
    quantize_and_check(model, x_test, tmp_path / "again", output="probabilities", tolerance=0.03)


def chain_model(
    nodes: list[onnx.NodeProto], initializers: list[onnx.TensorProto]
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize(
    ("nodes", "initializers", "message"),
    [
        (
            [
                helper.make_node("Flatten", ["x"], ["f"], name="flat"),
                helper.make_node("MatMul", ["f", "w"], ["m"], name="mm"),
                helper.make_node("Mul", ["m", "two"], ["y"], name="double"),
            ],
            ["w", "two"],
            r"node 'double' \(op Mul\): not supported",
        ),
        (
            [
                helper.make_node("Flatten", ["x"], ["f"], name="flat2", axis=2),
                helper.make_node("MatMul", ["f", "w"], ["y"], name="mm"),
            ],
            ["w"],
            r"node 'flat2' \(op Flatten\): Flatten at axis 2 does not keep the batch",
        ),
        (
            [
                helper.make_node("Reshape", ["x", "flat_all"], ["f"], name="merge", allowzero=0),
                helper.make_node("MatMul", ["f", "w"], ["y"], name="mm"),
            ],
            ["w", "flat_all"],
            r"node 'merge' \(op Reshape\): Reshape to \[1, -1\] does not give \[batch, 6\]",
        ),
        (
            [
                helper.make_node("Flatten", ["x"], ["f"], name="flat"),
                helper.make_node("Cast", ["f"], ["c"], name="to_int", to=TensorProto.INT32),
                helper.make_node("MatMul", ["c", "w"], ["y"], name="mm"),
            ],
            ["w"],
            r"node 'to_int' \(op Cast\): only Cast to float32",
        ),
        (
            [
                helper.make_node("MatMul", ["x", "w"], ["y"], name="mm3d"),
            ],
            ["w"],
            r"node 'mm3d' \(op MatMul\): takes a rank-3 tensor",
        ),
        (
            [
                helper.make_node("Flatten", ["x"], ["f"], name="flat"),
                helper.make_node("MatMul", ["f", "w"], ["m"], name="mm"),
                helper.make_node("Softmax", ["m"], ["y"], name="sm0", axis=0),
            ],
            ["w"],
            r"node 'sm0' \(op Softmax\): Softmax is supported over the last axis only",
        ),
    ],
)
def test_anything_else_is_refused_naming_node_and_op(
    nodes: list[onnx.NodeProto], initializers: list[str], message: str
) -> None:
    values = {
        "w": numpy_helper.from_array(np.ones((6, 4), np.float32), "w"),
        "two": numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        "flat_all": numpy_helper.from_array(np.array([1, -1], np.int64), "flat_all"),
    }
    model = chain_model(nodes, [values[name] for name in initializers])
    with pytest.raises(hq.UnsupportedGraphError, match=message):
        hq.extract_mlp(model)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_output_choice(tmp_path: Path) -> None:
    model, _, _ = skl2onnx_digits("relu", (8,))
    with pytest.raises(hq.UnsupportedGraphError, match="not float32"):
        hq.extract_mlp(model, "label")
    with pytest.raises(hq.UnsupportedGraphError, match="no output 'nope'"):
        hq.extract_mlp(model, "nope")
    # Two float outputs: the user must choose.
    second = helper.make_tensor_value_info("add_result", TensorProto.FLOAT, [None, 8])
    model.graph.output.append(second)
    with pytest.raises(hq.UnsupportedGraphError, match="choose the one to serve"):
        hq.extract_mlp(model)
    assert hq.extract_mlp(model, "probabilities").output.name == "probabilities"


def test_a_flattening_model_is_served_through_the_batcher(
    rng: np.random.Generator, tmp_path: Path
) -> None:
    """A torch classifier keeps its [-1, 2, 4] input: batches of such rows reach the int8
    runner with rank 3 and must run, not fail (the runner reads each row's trailing dims)."""
    from headrace import Engine

    l1, l2 = te.random_linear(rng, 8, 16), te.random_linear(rng, 16, 16)
    l3, bn = te.random_linear(rng, 16, 4, bias=False), te.random_batch_norm(rng, 16)
    model = te.classifier_legacy(l1, bn, l2, l3)
    source = tmp_path / "source.onnx"
    onnx.save(model, str(source))
    version = tmp_path / "models" / "clf" / "1"
    assert hq.main([str(source), "--out", str(version)]) == 0
    engine = Engine.from_repository(tmp_path / "models")
    try:
        assert engine.get_version("clf").max_batch_size > 0  # batched: the native runner
        x = rng.standard_normal((5, 2, 4)).astype(np.float32)
        served = engine.infer("clf", {"x": x}).outputs
        direct = _core.QuantizedMlp(str(version / "model.int8")).run(x.reshape(5, 8))
        (name,) = served
        assert np.array_equal(served[name], direct)
    finally:
        engine.close()
