"""The quantizer's data model: the float MLP read from a graph, its int8 form, and the float32
reference forward pass (used for calibration and by the tests)."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]


class UnsupportedGraphError(ValueError):
    """The ONNX graph is not an MLP chain this quantizer handles; the message names the node."""


class Activation(enum.IntEnum):
    """On-disk activation codes of the .int8 format (csrc/quant/epilogue.h)."""

    NONE = 0
    RELU = 1
    SIGMOID = 2
    TANH = 3
    GELU_ERF = 4
    GELU_TANH = 5
    SOFTMAX = 6
    LEAKY_RELU = 7
    CLIP = 8
    LOG_SOFTMAX = 9


# Softmax and LogSoftmax work over the whole row and may only end the network.
ROW_ACTIVATIONS = frozenset({Activation.SOFTMAX, Activation.LOG_SOFTMAX})


@dataclass(frozen=True)
class TensorSpec:
    """Model metadata the v2 protocol reports: name, datatype and shape (-1 = any batch)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass
class DenseLayer:
    """One float layer of the graph: ``activation(x @ weight + bias)``; weight is [in, out].

    ``activation_params`` are (alpha, beta): the LeakyRelu slope, or the Clip bounds.
    """

    name: str
    weight: FloatArray
    bias: FloatArray | None
    activation: Activation
    activation_params: tuple[float, float] = (0.0, 0.0)


@dataclass(frozen=True)
class MlpGraph:
    """The chain read from a graph. ``dropped_outputs`` are graph outputs computed from the served
    output by post-processing (e.g. skl2onnx's label), which the int8 model leaves out."""

    input: TensorSpec
    output: TensorSpec
    layers: list[DenseLayer]
    dropped_outputs: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class QuantizedLayer:
    """One layer as stored in the .int8 file."""

    weights: npt.NDArray[np.int8]  # [in, out]
    weight_scales: FloatArray  # [out] (per channel) or [1] (per tensor)
    bias: FloatArray | None
    activation: Activation
    input_range: tuple[float, float] | None  # static (min, max), or None for dynamic per row
    activation_params: tuple[float, float] = (0.0, 0.0)


def _erf(x: FloatArray) -> FloatArray:
    # Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7): enough for calibration ranges, and numpy has
    # no erf of its own.
    sign = np.sign(x)
    t = 1.0 / (1.0 + 0.3275911 * np.abs(x))
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    result: FloatArray = (sign * (1.0 - poly * np.exp(-x * x))).astype(np.float32)
    return result


def apply_activation(
    activation: Activation, x: FloatArray, params: tuple[float, float] = (0.0, 0.0)
) -> FloatArray:
    """The activation in float32 NumPy, as ONNX defines it (rows are the last axis)."""
    alpha, beta = np.float32(params[0]), np.float32(params[1])
    result: FloatArray
    if activation == Activation.RELU:
        result = np.maximum(x, np.float32(0))
    elif activation == Activation.LEAKY_RELU:
        result = np.where(x > 0, x, alpha * x).astype(np.float32)
    elif activation == Activation.CLIP:
        result = np.minimum(np.maximum(x, alpha), beta).astype(np.float32)
    elif activation == Activation.SIGMOID:
        result = (1.0 / (1.0 + np.exp(-x))).astype(np.float32)
    elif activation == Activation.TANH:
        result = np.tanh(x)
    elif activation == Activation.GELU_ERF:
        result = (0.5 * x * (1.0 + _erf(x / np.float32(math.sqrt(2.0))))).astype(np.float32)
    elif activation == Activation.GELU_TANH:
        inner = np.float32(math.sqrt(2.0 / math.pi)) * (x + np.float32(0.044715) * x**3)
        result = (0.5 * x * (1.0 + np.tanh(inner))).astype(np.float32)
    elif activation in ROW_ACTIVATIONS:
        shifted = x - x.max(axis=1, keepdims=True)
        log_total = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        if activation == Activation.SOFTMAX:
            result = np.exp(shifted - log_total).astype(np.float32)
        else:
            result = (shifted - log_total).astype(np.float32)
    else:
        result = x
    return result


def forward_fp32(graph: MlpGraph, x: FloatArray) -> list[FloatArray]:
    """The float32 reference forward pass; returns every layer's input, then the final output.

    ``x`` is [rows, *input dims] or already flattened to [rows, features].
    """
    rows = np.asarray(x, dtype=np.float32)
    values = [rows.reshape(rows.shape[0], -1)]
    for layer in graph.layers:
        y = values[-1] @ layer.weight
        if layer.bias is not None:
            y = y + layer.bias
        values.append(
            apply_activation(layer.activation, y.astype(np.float32), layer.activation_params)
        )
    return values
