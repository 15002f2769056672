"""ONNX models built in the tests with the onnx helper API, and repository writers."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ONNX_TYPES = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BF16": TensorProto.BFLOAT16,
    "BYTES": TensorProto.STRING,
}


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def identity(datatype: str, shape: list[int | str] | None = None) -> onnx.ModelProto:
    """y = x for one datatype; shape defaults to ["batch", 3]."""
    dims = shape if shape is not None else ["batch", 3]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        f"identity_{datatype.lower()}",
        [helper.make_tensor_value_info("x", ONNX_TYPES[datatype], dims)],
        [helper.make_tensor_value_info("y", ONNX_TYPES[datatype], dims)],
    )
    return _model(graph)


def two_in_two_out() -> onnx.ModelProto:
    """sum = a + b, product = a * b over FP32 [batch, 4]."""
    dims: list[int | str] = ["batch", 4]
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["a", "b"], ["sum"]),
            helper.make_node("Mul", ["a", "b"], ["product"]),
        ],
        "two_in_two_out",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, dims) for n in ("a", "b")],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, dims) for n in ("sum", "product")],
    )
    return _model(graph)


def reshaper() -> onnx.ModelProto:
    """Reshape(x, shape): a bad ``shape`` value makes ONNX Runtime itself fail at run time."""
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "reshaper",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [6]),
            helper.make_tensor_value_info("shape", TensorProto.INT64, [2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["r", "c"])],
    )
    return _model(graph)


def slow_matmul(size: int = 384, repeats: int = 12) -> onnx.ModelProto:
    """y = x @ W @ W ... (``repeats`` times): a model that takes a while, for shutdown tests."""
    rng = np.random.default_rng(1)
    weight = (rng.standard_normal((size, size)) / np.sqrt(size)).astype(np.float32)
    nodes = []
    current = "x"
    for i in range(repeats):
        out = "y" if i == repeats - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [current, "w"], [out]))
        current = out
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", size])],
        [numpy_helper.from_array(weight, "w")],
    )
    return _model(graph)


def mlp(sizes: list[int], seed: int = 0) -> onnx.ModelProto:
    """A ReLU MLP over FP32 ``x [batch, sizes[0]] -> y [batch, sizes[-1]]``."""
    rng = np.random.default_rng(seed)
    nodes, initializers = [], []
    current = "x"
    for layer, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        w = rng.normal(0, np.sqrt(2 / fan_in), (fan_in, fan_out)).astype(np.float32)
        b = rng.normal(0, 0.01, fan_out).astype(np.float32)
        initializers += [
            numpy_helper.from_array(w, f"w{layer}"),
            numpy_helper.from_array(b, f"b{layer}"),
        ]
        last = layer == len(sizes) - 2
        nodes.append(helper.make_node("MatMul", [current, f"w{layer}"], [f"m{layer}"]))
        added = "y" if last else f"a{layer}"
        nodes.append(helper.make_node("Add", [f"m{layer}", f"b{layer}"], [added]))
        if not last:
            nodes.append(helper.make_node("Relu", [added], [f"h{layer}"]))
            current = f"h{layer}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", sizes[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", sizes[-1]])],
        initializers,
    )
    return _model(graph)


def write_model(
    repo: Path,
    name: str,
    model: onnx.ModelProto,
    version: int = 1,
    toml: str | None = None,
    warmup: dict[str, np.ndarray] | None = None,
) -> Path:
    target = repo / name / str(version) / "model.onnx"
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(target))
    if warmup is not None:  # the version's warm-up request (zeros do not fit every model)
        np.savez(target.parent / "warmup.npz", **warmup)
    if toml is not None:
        (repo / name / "model.toml").write_text(toml)
    return target


def gather_lookup(table_size: int = 10) -> onnx.ModelProto:
    """y[b] = table[index[b]] over INT64 index [batch, 1]: an index outside the table makes ONNX
    Runtime itself fail at run time, failing the whole batch it is in."""
    table = np.arange(table_size, dtype=np.float32) * 10
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "index"], ["y"], axis=0)],
        "gather_lookup",
        [helper.make_tensor_value_info("index", TensorProto.INT64, ["batch", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
        [numpy_helper.from_array(table, "table")],
    )
    return _model(graph)
