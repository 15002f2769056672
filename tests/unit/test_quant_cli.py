"""``headrace quantize`` on the command line, and graphs it refuses: the error names the node and
its op, exit status 2, nothing written, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from headrace import quant as hq
from helpers.quant_models import build_mlp_onnx


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
        [sys.executable, "-m", "headrace.quant", str(path), "--out", str(tmp_path / "1")],
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
