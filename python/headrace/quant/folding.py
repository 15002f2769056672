"""Rewrites that fold exporter patterns into a dense layer: a bias vector, BatchNormalization,
and skl2onnx's binary classifier ending."""

from __future__ import annotations

from typing import Any

import numpy as np

from headrace.quant.constants import ConstantFolder, attributes, unsupported
from headrace.quant.model import Activation, DenseLayer, FloatArray


def bias_vector(value: FloatArray, width: int, node: Any, index: int) -> FloatArray:
    if value.size == 1:
        return np.full(width, value.reshape(()), dtype=np.float32)
    if value.size != width or value.ndim > 2 or (value.ndim == 2 and value.shape[0] != 1):
        raise unsupported(
            node, index, f"bias of shape {list(value.shape)} does not broadcast as [{width}]"
        )
    return value.reshape(width).astype(np.float32)


def fold_batch_norm(node: Any, index: int, folder: ConstantFolder, layer: DenseLayer) -> None:
    """BN(z) = (z - mean) / sqrt(var + eps) * gamma + beta, per output channel, into W and b."""
    attrs = attributes(node)
    if int(attrs.get("training_mode", 0)) != 0 or int(attrs.get("is_test", 1)) == 0:
        raise unsupported(node, index, "training-mode BatchNormalization cannot be folded")
    width = layer.weight.shape[1]
    names = ("scale", "B", "mean", "var")
    values = [folder.array(node.input[i + 1], node, index, names[i]) for i in range(4)]
    for what, value in zip(names, values, strict=True):
        if value.size != width:
            raise unsupported(node, index, f"{what} has {value.size} values; the layer has {width}")
    gamma, beta, mean, variance = (v.reshape(width).astype(np.float64) for v in values)
    factor = gamma / np.sqrt(variance + float(attrs.get("epsilon", 1e-5)))
    bias = np.zeros(width) if layer.bias is None else layer.bias.astype(np.float64)
    layer.weight = (layer.weight.astype(np.float64) * factor).astype(np.float32)
    layer.bias = ((bias - mean) * factor + beta).astype(np.float32)


def binary_probability_pair(
    current: str, users: list[int], nodes: list[Any], folder: ConstantFolder, layer: DenseLayer
) -> str | None:
    """skl2onnx's binary MLPClassifier: p = Sigmoid(z); Concat(Sub(1, p), p) on the last axis.

    Softmax over [0, z] is exactly [1 - sigmoid(z), sigmoid(z)], so the layer becomes a 2-column
    layer (a zero column first) with Softmax. Returns the Concat output, or None if the pattern
    does not match (then nothing is changed).
    """
    if layer.activation != Activation.SIGMOID or layer.weight.shape[1] != 1:
        return None
    by_op = {nodes[i].op_type: i for i in users}
    if set(by_op) != {"Sub", "Concat"}:
        return None
    sub, concat = nodes[by_op["Sub"]], nodes[by_op["Concat"]]
    if (
        len(sub.input) != 2
        or sub.input[1] != current
        or not folder.is_constant(sub.input[0])
        or not np.allclose(folder.evaluate(sub.input[0]), 1.0)  # type: ignore[arg-type]
        or list(concat.input) != [sub.output[0], current]
        or int(attributes(concat).get("axis", 0)) not in (-1, 1)
    ):
        return None
    layer.weight = np.concatenate([np.zeros_like(layer.weight), layer.weight], axis=1)
    bias = np.zeros(1, np.float32) if layer.bias is None else layer.bias
    layer.bias = np.concatenate([np.zeros(1, np.float32), bias]).astype(np.float32)
    layer.activation = Activation.SOFTMAX
    return str(concat.output[0])
