"""Post-training int8 quantization of MLP-family ONNX graphs (``headrace quantize``).

Supported graphs are chains from one float32 ``[batch, features]`` input to one output:
``MatMul`` (+ bias ``Add``) or ``Gemm``, each optionally followed by one element-wise activation
(``Relu``, ``Sigmoid``, ``Tanh``, ``Gelu``), with an optional ``Softmax`` at the very end. Anything
else is refused with an error naming the node and its op.

Weights become symmetric int8 (per output channel by default, ``--per-tensor`` for one scale per
matrix). Activations are quantized per row at run time (dynamic), or with static per-tensor scales
measured on calibration data (``--calibration FILE.npy``). The result is ``DIR/model.int8`` in the
format documented in ``csrc/quant/README.md``, which ``headrace._core.QuantizedMlp`` loads.
"""

from __future__ import annotations

import argparse
import enum
import itertools
import math
import os
import struct
import sys
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "MODEL_FILE_NAME",
    "Activation",
    "DenseLayer",
    "MlpGraph",
    "QuantizedLayer",
    "TensorSpec",
    "UnsupportedGraphError",
    "calibrate_input_scales",
    "encode_int8_model",
    "extract_mlp",
    "forward_fp32",
    "main",
    "quantize_mlp",
    "quantize_onnx",
    "quantize_weights",
]

MODEL_FILE_NAME = "model.int8"
MAGIC = b"HRQINT8\n"
FORMAT_VERSION = 1
# Models with at least this many weights print per-layer progress to stderr.
PROGRESS_MIN_WEIGHTS = 1_000_000

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


@dataclass(frozen=True)
class TensorSpec:
    """Model metadata the v2 protocol reports: name, datatype and shape (-1 = any batch)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass
class DenseLayer:
    """One float layer of the graph: ``activation(x @ weight + bias)``; weight is [in, out]."""

    name: str
    weight: FloatArray
    bias: FloatArray | None
    activation: Activation


@dataclass(frozen=True)
class MlpGraph:
    input: TensorSpec
    output: TensorSpec
    layers: list[DenseLayer]


@dataclass(frozen=True)
class QuantizedLayer:
    """One layer as stored in the .int8 file."""

    weights: npt.NDArray[np.int8]  # [in, out]
    weight_scales: FloatArray  # [out] (per channel) or [1] (per tensor)
    bias: FloatArray | None
    activation: Activation
    input_scale: float | None  # static per-tensor scale, or None for dynamic per-row


_ACTIVATION_OPS = {
    "Relu": Activation.RELU,
    "Sigmoid": Activation.SIGMOID,
    "Tanh": Activation.TANH,
    "Gelu": Activation.GELU_ERF,
    "Softmax": Activation.SOFTMAX,
}
_SUPPORTED_OPS = frozenset({"MatMul", "Gemm", "Add", *_ACTIVATION_OPS})
_SUPPORTED_DOMAINS = frozenset({"", "ai.onnx", "com.microsoft"})


def _node_label(node: Any, index: int) -> str:
    name = node.name if node.name else f"#{index} (unnamed)"
    return f"node '{name}' (op {node.op_type})"


def _unsupported(node: Any, index: int, why: str) -> UnsupportedGraphError:
    return UnsupportedGraphError(f"{_node_label(node, index)}: {why}")


def _attributes(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {attr.name: helper.get_attribute_value(attr) for attr in node.attribute}


def _tensor_spec(value_info: Any) -> TensorSpec:
    from onnx import TensorProto

    tensor_type = value_info.type.tensor_type
    if tensor_type.elem_type != TensorProto.FLOAT:
        raise UnsupportedGraphError(
            f"graph tensor '{value_info.name}' is not float32; only float32 MLPs are supported"
        )
    dims = tuple(
        int(dim.dim_value) if dim.HasField("dim_value") else -1 for dim in tensor_type.shape.dim
    )
    return TensorSpec(value_info.name, "FP32", dims)


def extract_mlp(model: Any) -> MlpGraph:
    """Read the chain of dense layers out of an ONNX ``ModelProto``.

    Raises :class:`UnsupportedGraphError` naming the first node (and its op) that does not fit.
    """
    from onnx import numpy_helper

    graph = model.graph
    initializers: dict[str, FloatArray] = {
        init.name: numpy_helper.to_array(init).astype(np.float32) for init in graph.initializer
    }
    nodes = list(graph.node)
    for index, node in enumerate(nodes):
        if node.op_type not in _SUPPORTED_OPS or node.domain not in _SUPPORTED_DOMAINS:
            raise _unsupported(
                node,
                index,
                "not supported by headrace quantize, which handles MatMul, Gemm, Add (bias), "
                "Relu, Sigmoid, Tanh, Gelu and a final Softmax",
            )
    inputs = [value for value in graph.input if value.name not in initializers]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise UnsupportedGraphError(
            f"the graph has {len(inputs)} inputs and {len(graph.output)} outputs; "
            "an MLP has exactly one of each"
        )
    input_spec = _tensor_spec(inputs[0])
    output_spec = _tensor_spec(graph.output[0])
    if len(input_spec.shape) != 2:
        raise UnsupportedGraphError(
            f"input '{input_spec.name}' has rank {len(input_spec.shape)}; "
            "expected [batch, features]"
        )

    consumers: dict[str, list[int]] = {}
    for index, node in enumerate(nodes):
        for name in node.input:
            consumers.setdefault(name, []).append(index)

    layers: list[DenseLayer] = []
    current = input_spec.name
    visited: set[int] = set()
    while current != output_spec.name:
        users = consumers.get(current, [])
        if len(users) != 1:
            raise UnsupportedGraphError(
                f"tensor '{current}' feeds {len(users)} nodes; an MLP is a single chain"
            )
        index = users[0]
        node = nodes[index]
        visited.add(index)
        others = [name for name in node.input if name != current]
        op = node.op_type
        if op in ("MatMul", "Gemm"):
            layers.append(_dense_layer(node, index, current, initializers))
        elif op == "Add":
            if (
                not layers
                or layers[-1].bias is not None
                or layers[-1].activation != Activation.NONE
            ):
                raise _unsupported(node, index, "Add is supported only as the bias of a MatMul")
            if len(others) != 1 or others[0] not in initializers:
                raise _unsupported(node, index, "the bias must be a constant initializer")
            layers[-1].bias = _bias_vector(
                initializers[others[0]], layers[-1].weight.shape[1], node, index
            )
        else:
            if not layers or layers[-1].activation != Activation.NONE or others:
                raise _unsupported(
                    node, index, "an activation must directly follow a MatMul/Gemm (+ bias)"
                )
            layers[-1].activation = _activation(node, index)
        if len(node.output) != 1:
            raise _unsupported(node, index, "nodes with several outputs are not supported")
        current = node.output[0]
        if layers and layers[-1].activation == Activation.SOFTMAX and current != output_spec.name:
            raise _unsupported(node, index, "Softmax is supported only at the end of the graph")
    if not layers:
        raise UnsupportedGraphError("the graph has no MatMul or Gemm layer")
    for index, node in enumerate(nodes):
        if index not in visited:
            raise _unsupported(node, index, "not on the chain from the input to the output")
    for previous, layer in itertools.pairwise(layers):
        if previous.weight.shape[1] != layer.weight.shape[0]:
            raise UnsupportedGraphError(
                f"layer '{layer.name}' takes {layer.weight.shape[0]} features but the layer "
                f"before produces {previous.weight.shape[1]}"
            )
    features_in = layers[0].weight.shape[0]
    features_out = layers[-1].weight.shape[1]
    if input_spec.shape[1] not in (-1, features_in):
        raise UnsupportedGraphError(
            f"input '{input_spec.name}' has {input_spec.shape[1]} features; the first layer "
            f"takes {features_in}"
        )
    return MlpGraph(
        TensorSpec(input_spec.name, "FP32", (-1, features_in)),
        TensorSpec(output_spec.name, "FP32", (-1, features_out)),
        layers,
    )


def _dense_layer(
    node: Any, index: int, current: str, initializers: dict[str, FloatArray]
) -> DenseLayer:
    attrs = _attributes(node)
    name = node.name or f"#{index}"
    if not node.input or node.input[0] != current or len(node.input) < 2:
        raise _unsupported(node, index, "the activations must be the first input")
    if node.input[1] not in initializers:
        raise _unsupported(node, index, f"weight '{node.input[1]}' is not a constant initializer")
    weight = initializers[node.input[1]]
    if weight.ndim != 2:
        raise _unsupported(node, index, f"weight has rank {weight.ndim}; expected 2")
    bias: FloatArray | None = None
    if node.op_type == "Gemm":
        if int(attrs.get("transA", 0)) != 0:
            raise _unsupported(node, index, "transA=1 is not supported")
        if int(attrs.get("transB", 0)) != 0:
            weight = weight.T
        weight = (weight * np.float32(attrs.get("alpha", 1.0))).astype(np.float32)
        if len(node.input) > 2 and node.input[2]:
            if node.input[2] not in initializers:
                raise _unsupported(node, index, "the bias C must be a constant initializer")
            bias = _bias_vector(
                initializers[node.input[2]] * np.float32(attrs.get("beta", 1.0)),
                weight.shape[1],
                node,
                index,
            )
    elif len(node.input) != 2:
        raise _unsupported(node, index, "MatMul takes exactly two inputs")
    return DenseLayer(name, np.ascontiguousarray(weight, dtype=np.float32), bias, Activation.NONE)


def _bias_vector(value: FloatArray, width: int, node: Any, index: int) -> FloatArray:
    if value.size == 1:
        return np.full(width, value.reshape(()), dtype=np.float32)
    if value.size != width or (value.ndim == 2 and value.shape[0] != 1) or value.ndim > 2:
        raise _unsupported(
            node, index, f"bias of shape {list(value.shape)} does not broadcast as [{width}]"
        )
    return value.reshape(width).astype(np.float32)


def _activation(node: Any, index: int) -> Activation:
    attrs = _attributes(node)
    if node.op_type == "Gelu":
        approximate = attrs.get("approximate", b"none")
        approximate = approximate.decode() if isinstance(approximate, bytes) else approximate
        if approximate == "tanh":
            return Activation.GELU_TANH
        if approximate != "none":
            raise _unsupported(node, index, f"Gelu approximate='{approximate}' is not supported")
        return Activation.GELU_ERF
    if node.op_type == "Softmax" and int(attrs.get("axis", -1)) not in (-1, 1):
        raise _unsupported(node, index, "Softmax is supported over the last axis only")
    return _ACTIVATION_OPS[node.op_type]


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


def _apply_activation(activation: Activation, x: FloatArray) -> FloatArray:
    if activation == Activation.RELU:
        return np.maximum(x, np.float32(0))
    if activation == Activation.SIGMOID:
        return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)
    if activation == Activation.TANH:
        return np.tanh(x)
    if activation == Activation.GELU_ERF:
        return (0.5 * x * (1.0 + _erf(x / np.float32(math.sqrt(2.0))))).astype(np.float32)
    if activation == Activation.GELU_TANH:
        inner = np.float32(math.sqrt(2.0 / math.pi)) * (x + np.float32(0.044715) * x**3)
        return (0.5 * x * (1.0 + np.tanh(inner))).astype(np.float32)
    if activation == Activation.SOFTMAX:
        shifted = np.exp(x - x.max(axis=1, keepdims=True))
        probabilities: FloatArray = (shifted / shifted.sum(axis=1, keepdims=True)).astype(
            np.float32
        )
        return probabilities
    return x


def forward_fp32(graph: MlpGraph, x: FloatArray) -> list[FloatArray]:
    """The float32 reference forward pass; returns every layer's input, then the final output."""
    values = [np.asarray(x, dtype=np.float32)]
    for layer in graph.layers:
        y = values[-1] @ layer.weight
        if layer.bias is not None:
            y = y + layer.bias
        values.append(_apply_activation(layer.activation, y.astype(np.float32)))
    return values


def quantize_weights(
    weight: FloatArray, *, per_tensor: bool = False
) -> tuple[npt.NDArray[np.int8], FloatArray]:
    """Symmetric int8: scale = max|w| / 127 per output column (or per matrix), q in [-127, 127].

    A column of zeros gets scale 0 and q = 0.
    """
    if per_tensor:
        max_abs = np.array([np.abs(weight).max()], dtype=np.float32)
    else:
        max_abs = np.abs(weight).max(axis=0).astype(np.float32)
    scales = (max_abs / np.float32(127.0)).astype(np.float32)
    safe = np.where(scales > 0, scales, np.float32(1.0))
    quantized = np.clip(np.rint(weight / safe), -127, 127).astype(np.int8)
    return quantized, scales


def calibrate_input_scales(graph: MlpGraph, data: FloatArray) -> list[float]:
    """Static per-tensor input scales (max |x| / 127 over the calibration rows), one per layer."""
    if data.ndim != 2 or data.shape[1] != graph.layers[0].weight.shape[0]:
        raise ValueError(
            f"calibration data has shape {list(data.shape)}; expected "
            f"[rows, {graph.layers[0].weight.shape[0]}]"
        )
    if data.shape[0] == 0 or not np.isfinite(data).all():
        raise ValueError("calibration data must have at least one row and only finite values")
    values = forward_fp32(graph, data)
    scales = []
    for layer_input in values[:-1]:
        max_abs = float(np.abs(layer_input).max())
        # An all-zero calibration range still needs a positive scale; 1/127 maps 1.0 to 127.
        scales.append(max_abs / 127.0 if max_abs > 0 else 1.0 / 127.0)
    return scales


def quantize_mlp(
    graph: MlpGraph,
    *,
    per_tensor: bool = False,
    input_scales: Sequence[float] | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[QuantizedLayer]:
    """Quantize every layer's weights; ``input_scales`` (from calibration) makes inputs static."""
    if input_scales is not None and len(input_scales) != len(graph.layers):
        raise ValueError("one input scale per layer is needed")
    layers = []
    for position, layer in enumerate(graph.layers):
        if progress is not None:
            rows, columns = layer.weight.shape
            progress(
                f"quantizing layer {position + 1}/{len(graph.layers)} '{layer.name}' "
                f"[{rows} x {columns}]"
            )
        weights, scales = quantize_weights(layer.weight, per_tensor=per_tensor)
        layers.append(
            QuantizedLayer(
                weights=weights,
                weight_scales=scales,
                bias=layer.bias,
                activation=layer.activation,
                input_scale=None if input_scales is None else float(input_scales[position]),
            )
        )
    return layers


def _pack_string(text: str) -> bytes:
    encoded = text.encode("utf-8")
    return struct.pack("<I", len(encoded)) + encoded


def _pack_tensor_spec(spec: TensorSpec) -> bytes:
    return (
        _pack_string(spec.name)
        + _pack_string(spec.datatype)
        + struct.pack(f"<I{len(spec.shape)}q", len(spec.shape), *spec.shape)
    )


def encode_int8_model(
    input_spec: TensorSpec, output_spec: TensorSpec, layers: Sequence[QuantizedLayer]
) -> bytes:
    """Serialize to the .int8 format (csrc/quant/README.md): header, metadata, layers."""
    parts = [_pack_tensor_spec(input_spec), _pack_tensor_spec(output_spec)]
    parts.append(struct.pack("<I", len(layers)))
    for layer in layers:
        k_size, n_size = layer.weights.shape
        static = layer.input_scale is not None
        parts.append(
            struct.pack(
                "<IIIIfI",
                k_size,
                n_size,
                int(layer.activation),
                1 if static else 0,
                layer.input_scale if layer.input_scale is not None else 0.0,
                layer.weight_scales.size,
            )
        )
        parts.append(layer.weight_scales.astype("<f4").tobytes())
        if layer.bias is None:
            parts.append(struct.pack("<I", 0))
        else:
            parts.append(struct.pack("<I", 1) + layer.bias.astype("<f4").tobytes())
        parts.append(np.ascontiguousarray(layer.weights, dtype=np.int8).tobytes())
    payload = b"".join(parts)
    header = MAGIC + struct.pack("<IIQ", FORMAT_VERSION, zlib.crc32(payload), len(payload))
    return header + payload


def quantize_onnx(
    model_path: Path,
    out_dir: Path,
    *,
    calibration_path: Path | None = None,
    per_tensor: bool = False,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Quantize ``model_path`` into ``out_dir/model.int8`` and return that path.

    ``out_dir`` is the new version directory; it is created if needed, and an existing
    ``model.int8`` in it is never overwritten.
    """
    import onnx

    model = onnx.load(str(model_path))
    graph = extract_mlp(model)
    weight_count = sum(layer.weight.size for layer in graph.layers)
    report = progress if weight_count >= PROGRESS_MIN_WEIGHTS else None
    input_scales = None
    if calibration_path is not None:
        if report is not None:
            report(f"calibrating on {calibration_path}")
        data = np.load(calibration_path, allow_pickle=False).astype(np.float32)
        input_scales = calibrate_input_scales(graph, data)
    layers = quantize_mlp(graph, per_tensor=per_tensor, input_scales=input_scales, progress=report)
    blob = encode_int8_model(graph.input, graph.output, layers)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / MODEL_FILE_NAME
    if target.exists():
        raise FileExistsError(f"{target} already exists; quantize into a new version directory")
    partial = out_dir / f".{MODEL_FILE_NAME}.partial"
    partial.write_bytes(blob)
    # The model repository must never see a half-written file.
    os.replace(partial, target)
    if report is not None:
        report(f"wrote {target} ({len(blob)} bytes)")
    return target


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="headrace quantize",
        description="Post-training int8 quantization of an MLP ONNX model into DIR/model.int8.",
    )
    parser.add_argument("model", type=Path, help="the float32 ONNX model (MatMul/Gemm MLP)")
    parser.add_argument(
        "--out", type=Path, required=True, help="the new version directory to write"
    )
    parser.add_argument(
        "--calibration",
        type=Path,
        default=None,
        help="float32 .npy [rows, features]: use static activation scales measured on it",
    )
    parser.add_argument(
        "--per-tensor",
        action="store_true",
        help="one weight scale per matrix instead of one per output channel",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``headrace quantize``; returns the process exit status."""
    args = _build_parser().parse_args(argv)

    def progress(message: str) -> None:
        print(f"headrace quantize: {message}", file=sys.stderr, flush=True)

    try:
        target = quantize_onnx(
            args.model,
            args.out,
            calibration_path=args.calibration,
            per_tensor=args.per_tensor,
            progress=progress,
        )
    except UnsupportedGraphError as error:
        print(f"headrace quantize: unsupported graph: {error}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as error:
        print(f"headrace quantize: error: {error}", file=sys.stderr)
        return 1
    except Exception as error:
        # onnx raises its own types for unreadable or invalid protobufs.
        if type(error).__module__.startswith(("onnx", "google.protobuf")):
            print(f"headrace quantize: cannot read {args.model}: {error}", file=sys.stderr)
            return 1
        raise
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
