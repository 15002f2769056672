"""Small MLP graphs for the int8 tests, built with onnx.helper, and an ONNX Runtime runner."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

FloatArray = npt.NDArray[np.float32]


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
            attrs: dict[str, object] = {}
            op, inputs = activation, [current]
            if activation == "GeluTanh":
                op, attrs = "Gelu", {"approximate": "tanh"}
            if activation == "LeakyRelu":
                attrs = {"alpha": 0.05}
            if activation == "Clip":
                initializers.append(numpy_helper.from_array(np.array(-0.5, np.float32), f"lo{i}"))
                initializers.append(numpy_helper.from_array(np.array(1.5, np.float32), f"hi{i}"))
                inputs = [current, f"lo{i}", f"hi{i}"]
            nodes.append(helper.make_node(op, inputs, [act_out], name=f"{op.lower()}{i}", **attrs))
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
