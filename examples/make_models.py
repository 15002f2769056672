"""Builds the example repository's model with the onnx helper API (deterministic weights).

    python examples/make_models.py            # writes examples/models/tabular/1/model.onnx

The committed model.onnx was made by this script; it is kept in the repository so that
`make serve` needs no onnx package at run time.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def mlp(sizes: list[int], seed: int = 0, name: str = "mlp") -> onnx.ModelProto:
    """A ReLU MLP ``x [N, sizes[0]] -> y [N, sizes[-1]]`` with He-initialised weights."""
    rng = np.random.default_rng(seed)
    nodes, initializers = [], []
    current = "x"
    for layer, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        weight = rng.normal(0, np.sqrt(2 / fan_in), (fan_in, fan_out)).astype(np.float32)
        bias = rng.normal(0, 0.01, fan_out).astype(np.float32)
        initializers += [
            numpy_helper.from_array(weight, f"w{layer}"),
            numpy_helper.from_array(bias, f"b{layer}"),
        ]
        last = layer == len(sizes) - 2
        nodes.append(helper.make_node("MatMul", [current, f"w{layer}"], [f"mm{layer}"]))
        out = "y" if last else f"h{layer}"
        nodes.append(
            helper.make_node("Add", [f"mm{layer}", f"b{layer}"], [out if last else f"a{layer}"])
        )
        if not last:
            nodes.append(helper.make_node("Relu", [f"a{layer}"], [out]))
        current = out
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", sizes[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", sizes[-1]])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def main() -> int:
    root = Path(__file__).resolve().parent / "models"
    target = root / "tabular" / "1" / "model.onnx"
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(mlp([32, 256, 256, 1], seed=0, name="tabular"), str(target))
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
