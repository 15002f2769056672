"""Pieces every bench script uses: the machine's name and the MLPs they measure.

Imported as ``bench_common`` (the scripts run as ``python bench/<script>.py``, so ``bench/`` is
first on ``sys.path``).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def cpu_model() -> str:
    """The CPU's name, with family/model (a VM often hides the name: 23/49 is Zen 2)."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or platform.processor() or "unknown CPU"
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


def mlp_model(sizes: Sequence[int], seed: int = 0, name: str = "mlp") -> Any:
    """A ReLU MLP, FP32 ``x [N, sizes[0]] -> y [N, sizes[-1]]``, He-initialised from ``seed``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, initializers = [], []
    current = "x"
    layers = list(itertools.pairwise(sizes))
    for index, (fan_in, fan_out) in enumerate(layers):
        weight = rng.normal(0, math.sqrt(2 / fan_in), (fan_in, fan_out)).astype(np.float32)
        bias = rng.normal(0, 0.01, fan_out).astype(np.float32)
        initializers += [
            numpy_helper.from_array(weight, f"w{index}"),
            numpy_helper.from_array(bias, f"b{index}"),
        ]
        last = index == len(layers) - 1
        nodes.append(helper.make_node("MatMul", [current, f"w{index}"], [f"mm{index}"]))
        added = "y" if last else f"a{index}"
        nodes.append(helper.make_node("Add", [f"mm{index}", f"b{index}"], [added]))
        if not last:
            nodes.append(helper.make_node("Relu", [added], [f"h{index}"]))
        current = added if last else f"h{index}"
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


def save_mlp(path: Path, sizes: Sequence[int], seed: int = 0, name: str = "mlp") -> None:
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(mlp_model(sizes, seed, name), str(path))
