"""Reading the MLP chain out of an ONNX graph as exporters write it.

The walk starts at the one graph input and follows the data, one node at a time, to the served
output. On the way it accepts:

- dense layers: ``MatMul`` with a constant weight (an initializer, or a ``Transpose`` /
  ``Identity`` / ``Cast`` of one) or ``Gemm`` (``transB``, ``alpha``, ``beta``, a constant ``C``),
  each followed by an optional bias ``Add``, an optional ``BatchNormalization`` (folded into the
  weights and bias) and one activation: ``Relu``, ``LeakyRelu``, ``Clip`` (ReLU6 and friends),
  ``Sigmoid``, ``Tanh``, ``Gelu``, and ``Softmax`` / ``LogSoftmax`` at the end;
- nodes that do not change the values: ``Identity``, ``Dropout`` in inference mode, ``Cast`` to
  float, ``Flatten`` and ``Reshape`` to ``[batch, features]`` (shape inputs are evaluated, see
  constants.py);
- skl2onnx's binary classifier ending ``Sigmoid -> Sub(1, p) -> Concat(1 - p, p)``, rewritten as a
  2-column softmax (``softmax([0, z]) = [1 - sigmoid(z), sigmoid(z)]`` exactly).

Graph outputs computed from the served output (skl2onnx's ``label``) are left out and reported.
Anything else is refused with an error naming the node and its op.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from headrace.quant.constants import (
    CONSTANT_OPS,
    ConstantFolder,
    Shape,
    attributes,
    node_label,
    unsupported,
)
from headrace.quant.folding import bias_vector, binary_probability_pair, fold_batch_norm
from headrace.quant.model import (
    ROW_ACTIVATIONS,
    Activation,
    DenseLayer,
    FloatArray,
    MlpGraph,
    TensorSpec,
    UnsupportedGraphError,
)

SUPPORTED_OPS_TEXT = (
    "MatMul, Gemm, Add (bias), BatchNormalization (after a dense layer), Relu, LeakyRelu, Clip, "
    "Sigmoid, Tanh, Gelu, Softmax/LogSoftmax (at the end), Identity, Dropout (inference), Cast "
    "(to float), Flatten and Reshape (to [batch, features])"
)
_SUPPORTED_DOMAINS = frozenset({"", "ai.onnx"})
_PASS_THROUGH = frozenset({"Identity", "Dropout", "Cast", "Flatten", "Reshape"})
_SIMPLE_ACTIVATIONS = {
    "Relu": Activation.RELU,
    "Sigmoid": Activation.SIGMOID,
    "Tanh": Activation.TANH,
    "Softmax": Activation.SOFTMAX,
    "LogSoftmax": Activation.LOG_SOFTMAX,
}
_ACTIVATION_OPS = frozenset({*_SIMPLE_ACTIVATIONS, "LeakyRelu", "Clip", "Gelu"})
_LAYER_OPS = frozenset({"MatMul", "Gemm", "Add", "BatchNormalization"})
_FLOAT = 1  # TensorProto.FLOAT


@dataclass
class _Walk:
    """What the walk has read so far."""

    layers: list[DenseLayer] = field(default_factory=list)
    # The last layer can still take a bias or BatchNormalization (nothing but pass-through nodes
    # since its dense node).
    open_for_affine: bool = False
    shapes: dict[str, Shape] = field(default_factory=dict)
    visited: set[int] = field(default_factory=set)
    # The Softmax / LogSoftmax node, once one is read: only pass-through nodes may follow it.
    row_activation: tuple[Any, int] | None = None


def _elem_type_and_dims(value_info: Any) -> tuple[int, list[int | None]]:
    tensor_type = value_info.type.tensor_type
    dims = [int(d.dim_value) if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
    return int(tensor_type.elem_type), dims


def _default_opset(model: Any) -> int:
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            return int(opset.version)
    return 1


def extract_mlp(model: Any, output_name: str | None = None) -> MlpGraph:
    """Read the chain of dense layers out of an ONNX ``ModelProto``.

    ``output_name`` picks the served output when the graph has several; by default the one
    float32 ``[batch, n]`` output. Raises :class:`UnsupportedGraphError` naming the first node
    (and its op) that does not fit.
    """
    from onnx import numpy_helper

    graph = model.graph
    initializers = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    nodes = list(graph.node)
    producers: dict[str, tuple[int, Any]] = {}
    consumers: dict[str, list[int]] = {}
    for index, node in enumerate(nodes):
        for name in node.output:
            if name:
                producers[name] = (index, node)
        for name in node.input:
            if name:
                consumers.setdefault(name, []).append(index)
    inputs = [value for value in graph.input if value.name not in initializers]
    if len(inputs) != 1:
        raise UnsupportedGraphError(
            f"the graph has {len(inputs)} inputs and {len(graph.output)} outputs; "
            "an MLP has exactly one input"
        )
    input_spec = _input_spec(inputs[0])
    output = _served_output(graph, output_name)

    walk = _Walk()
    walk.shapes[input_spec.name] = [None, *input_spec.shape[1:]]
    folder = ConstantFolder(initializers, producers, _default_opset(model), walk.shapes.get)
    current = input_spec.name
    while current != output.name:
        users = [
            i
            for i in consumers.get(current, [])
            if nodes[i].op_type != "Shape" or i in walk.visited
        ]
        if len(users) == 2 and walk.layers:
            pair_end = binary_probability_pair(current, users, nodes, folder, walk.layers[-1])
            if pair_end is not None:
                walk.visited.update(users)
                walk.shapes[pair_end] = [None, 2]
                current = pair_end
                continue
        if len(users) != 1:
            raise UnsupportedGraphError(
                f"tensor '{current}' feeds {len(users)} nodes before the output '{output.name}'; "
                "an MLP is a single chain"
            )
        index = users[0]
        current = _step(nodes[index], index, current, folder, walk)
    if not walk.layers:
        raise UnsupportedGraphError("the graph has no MatMul or Gemm layer")
    graph_outputs = {value.name for value in graph.output}
    dropped = _check_every_node_used(nodes, consumers, output.name, graph_outputs, walk, folder)
    _check_chain(walk.layers, input_spec)
    features_out = walk.layers[-1].weight.shape[1]
    if output.shape and output.shape[-1] not in (-1, features_out):
        raise UnsupportedGraphError(
            f"output '{output.name}' declares {output.shape[-1]} features; the last layer "
            f"produces {features_out}"
        )
    dropped_outputs = tuple(
        value.name for value in graph.output if value.name != output.name and value.name in dropped
    )
    return MlpGraph(
        input_spec,
        TensorSpec(output.name, "FP32", (-1, features_out)),
        walk.layers,
        dropped_outputs,
    )


def _input_spec(value_info: Any) -> TensorSpec:
    elem_type, dims = _elem_type_and_dims(value_info)
    if elem_type != _FLOAT:
        raise UnsupportedGraphError(
            f"graph input '{value_info.name}' is not float32; the int8 model takes float32"
        )
    if len(dims) < 2 or len(dims) > 8:
        raise UnsupportedGraphError(
            f"input '{value_info.name}' has rank {len(dims)}; expected [batch, features] or "
            "[batch, d1, ...] of rank <= 8"
        )
    if any(d is None or d < 1 for d in dims[1:]):
        raise UnsupportedGraphError(
            f"input '{value_info.name}' has shape {dims}; every dimension but the batch must be "
            "fixed"
        )
    return TensorSpec(value_info.name, "FP32", (-1, *(int(d) for d in dims[1:] if d is not None)))


def _served_output(graph: Any, output_name: str | None) -> TensorSpec:
    outputs = {value.name: value for value in graph.output}
    if output_name is not None:
        if output_name not in outputs:
            raise UnsupportedGraphError(
                f"the graph has no output '{output_name}' (outputs: {', '.join(outputs)})"
            )
        chosen = outputs[output_name]
    else:
        candidates = [
            value
            for value in graph.output
            if _elem_type_and_dims(value)[0] == _FLOAT and len(_elem_type_and_dims(value)[1]) == 2
        ]
        if len(graph.output) == 1:
            candidates = list(graph.output)
        if len(candidates) != 1:
            raise UnsupportedGraphError(
                f"the graph has outputs {', '.join(outputs)}; choose the one to serve (--output)"
            )
        chosen = candidates[0]
    elem_type, dims = _elem_type_and_dims(chosen)
    if elem_type != _FLOAT:
        raise UnsupportedGraphError(f"graph output '{chosen.name}' is not float32")
    return TensorSpec(chosen.name, "FP32", tuple(-1 if d is None else d for d in dims))


def _step(node: Any, index: int, current: str, folder: ConstantFolder, walk: _Walk) -> str:
    """Apply one node of the chain; returns the tensor the chain continues from."""
    op = node.op_type
    known = op in _PASS_THROUGH or op in _ACTIVATION_OPS or op in _LAYER_OPS
    if node.domain not in _SUPPORTED_DOMAINS or not known:
        raise unsupported(
            node, index, f"not supported by headrace quantize, which handles {SUPPORTED_OPS_TEXT}"
        )
    if op != "Add" and node.input[0] != current:
        raise unsupported(node, index, "the activations must be the first input")
    if walk.row_activation is not None and op not in _PASS_THROUGH:
        ended, ended_index = walk.row_activation
        raise unsupported(
            ended, ended_index, f"{ended.op_type} is supported only at the end of the graph"
        )
    walk.visited.add(index)
    shape = walk.shapes[current]
    layers = walk.layers
    if op in _PASS_THROUGH:
        shape = _pass_through(node, index, shape, folder)
    elif op in ("MatMul", "Gemm"):
        if len(shape) != 2:
            raise unsupported(
                node, index, f"takes a rank-{len(shape)} tensor; flatten to [batch, features] first"
            )
        layers.append(_dense_layer(node, index, folder))
        walk.open_for_affine = True
    elif op == "Add":
        if not layers or not walk.open_for_affine:
            raise unsupported(node, index, "Add is supported only as the bias of a dense layer")
        others = [name for name in node.input if name != current]
        if len(others) != 1 or len(node.input) != 2:
            raise unsupported(node, index, "the bias must be a constant")
        value = folder.array(others[0], node, index, "bias").astype(np.float32)
        bias = bias_vector(value, layers[-1].weight.shape[1], node, index)
        layers[-1].bias = bias if layers[-1].bias is None else layers[-1].bias + bias
    elif op == "BatchNormalization":
        if not layers or not walk.open_for_affine:
            raise unsupported(
                node, index, "BatchNormalization is folded only directly after a dense layer"
            )
        fold_batch_norm(node, index, folder, layers[-1])
    else:
        if not layers or layers[-1].activation != Activation.NONE:
            raise unsupported(node, index, "an activation must follow a dense layer (+ bias)")
        layers[-1].activation, layers[-1].activation_params = _activation(node, index, folder)
        walk.open_for_affine = False
        if layers[-1].activation in ROW_ACTIVATIONS:
            walk.row_activation = (node, index)
    if op not in _PASS_THROUGH:
        shape = [None, layers[-1].weight.shape[1]]
    extra = [name for name in node.output[1:] if name]
    if extra and op not in ("Dropout", "BatchNormalization"):
        raise unsupported(node, index, "nodes with several outputs are not supported")
    following = str(node.output[0])
    walk.shapes[following] = shape
    return following


def _dense_layer(node: Any, index: int, folder: ConstantFolder) -> DenseLayer:
    attrs = attributes(node)
    name = node.name or f"#{index}"
    if len(node.input) < 2:
        raise unsupported(node, index, "a dense layer needs a weight input")
    weight = folder.array(node.input[1], node, index, "weight").astype(np.float32)
    if weight.ndim != 2:
        raise unsupported(node, index, f"weight has rank {weight.ndim}; expected 2")
    bias: FloatArray | None = None
    if node.op_type == "Gemm":
        if int(attrs.get("transA", 0)) != 0:
            raise unsupported(node, index, "transA=1 is not supported")
        if int(attrs.get("transB", 0)) != 0:
            weight = weight.T
        weight = weight * np.float32(attrs.get("alpha", 1.0))
        if len(node.input) > 2 and node.input[2]:
            c = folder.array(node.input[2], node, index, "bias C").astype(np.float32)
            bias = bias_vector(c * np.float32(attrs.get("beta", 1.0)), weight.shape[1], node, index)
    elif len(node.input) != 2:
        raise unsupported(node, index, "MatMul takes exactly two inputs")
    return DenseLayer(name, np.ascontiguousarray(weight, dtype=np.float32), bias, Activation.NONE)


def _activation(
    node: Any, index: int, folder: ConstantFolder
) -> tuple[Activation, tuple[float, float]]:
    attrs = attributes(node)
    op = node.op_type
    if op == "Gelu":
        approximate = attrs.get("approximate", b"none")
        approximate = approximate.decode() if isinstance(approximate, bytes) else approximate
        if approximate not in ("none", "tanh"):
            raise unsupported(node, index, f"Gelu approximate='{approximate}' is not supported")
        return (Activation.GELU_TANH if approximate == "tanh" else Activation.GELU_ERF), (0.0, 0.0)
    if op == "LeakyRelu":
        return Activation.LEAKY_RELU, (float(attrs.get("alpha", 0.01)), 0.0)
    if op == "Clip":
        low, high = float(attrs.get("min", -math.inf)), float(attrs.get("max", math.inf))
        for position, what in ((1, "min"), (2, "max")):
            if len(node.input) > position and node.input[position]:
                value = float(folder.array(node.input[position], node, index, what).reshape(()))
                low, high = (value, high) if position == 1 else (low, value)
        if math.isnan(low) or math.isnan(high) or low > high:
            raise unsupported(node, index, f"Clip bounds [{low}, {high}] are not min <= max")
        return Activation.CLIP, (low, high)
    if op in ("Softmax", "LogSoftmax") and int(attrs.get("axis", -1)) not in (-1, 1):
        raise unsupported(node, index, f"{op} is supported over the last axis only")
    return _SIMPLE_ACTIVATIONS[op], (0.0, 0.0)


def _pass_through(node: Any, index: int, shape: Shape, folder: ConstantFolder) -> Shape:
    """Nodes that keep the values; returns the new shape (None = batch)."""
    attrs = attributes(node)
    op = node.op_type
    if op == "Dropout":
        if len(node.input) > 2 and node.input[2]:
            training = folder.array(node.input[2], node, index, "training_mode")
            if bool(training.reshape(())):
                raise unsupported(
                    node, index, "training_mode is true: export the model in eval mode"
                )
        if int(attrs.get("is_test", 1)) == 0:
            raise unsupported(node, index, "is_test=0 is a training graph")
        return shape
    if op == "Cast":
        if int(attrs["to"]) != _FLOAT:
            raise unsupported(node, index, "only Cast to float32 keeps the values")
        return shape
    if op == "Flatten":
        axis = int(attrs.get("axis", 1))
        axis = axis + len(shape) if axis < 0 else axis
        if axis != 1:
            raise unsupported(node, index, f"Flatten at axis {axis} does not keep the batch")
        return [None, math.prod(d for d in shape[1:] if d is not None)]
    if op == "Reshape":
        return _reshape_target(node, index, shape, folder, int(attrs.get("allowzero", 0)))
    return shape  # Identity


def _reshape_target(
    node: Any, index: int, shape: Shape, folder: ConstantFolder, allow_zero: int
) -> Shape:
    if not folder.is_constant(node.input[1]):
        raise unsupported(node, index, "the target shape is not a constant")
    value = folder.evaluate(node.input[1])
    target: list[int | None] = (
        list(value) if isinstance(value, list) else [int(v) for v in value.reshape(-1)]
    )
    features = math.prod(d for d in shape[1:] if d is not None)
    resolved: list[int | None] = []
    for position, dim in enumerate(target):
        if dim == 0 and not allow_zero and position < len(shape):
            dim = shape[position]
        resolved.append(dim)
    batch_kept = resolved[:1] == [None] or (resolved[:1] == [-1] and len(resolved) == 2)
    if len(resolved) != 2 or not batch_kept or resolved[1] not in (-1, features):
        raise unsupported(
            node,
            index,
            f"Reshape to {['batch' if d is None else d for d in target]} does not give "
            f"[batch, {features}]",
        )
    return [None, features]


def _check_every_node_used(
    nodes: list[Any],
    consumers: dict[str, list[int]],
    output: str,
    graph_outputs: set[str],
    walk: _Walk,
    folder: ConstantFolder,
) -> set[str]:
    """Every node is on the chain, computes a constant it uses, or post-processes the served
    output into another graph output (left out). Returns the tensors so left out."""
    downstream: set[int] = set()
    frontier = [output]
    dropped: set[str] = set()
    while frontier:
        tensor = frontier.pop()
        for index in consumers.get(tensor, []):
            if index in walk.visited or index in downstream:
                continue
            downstream.add(index)
            for name in nodes[index].output:
                dropped.add(name)
                frontier.append(name)
    for index, node in enumerate(nodes):
        if index in walk.visited or index in downstream or index in folder.used_nodes:
            continue
        # Constants only the left-out post-processing reads.
        if node.op_type in CONSTANT_OPS and all(
            c in downstream for name in node.output for c in consumers.get(name, [])
        ):
            continue
        raise unsupported(node, index, "not on the chain from the input to the output")
    for index in walk.visited:
        node = nodes[index]
        for name in node.output[1:]:
            if name and (consumers.get(name) or name in graph_outputs):
                raise unsupported(
                    node, index, f"its output '{name}' is used; only the first may be"
                )
    return dropped


def _check_chain(layers: list[DenseLayer], input_spec: TensorSpec) -> None:
    for position, (previous, layer) in enumerate(itertools.pairwise(layers)):
        if previous.weight.shape[1] != layer.weight.shape[0]:
            raise UnsupportedGraphError(
                f"layer {position + 1} '{layer.name}' takes {layer.weight.shape[0]} features but "
                f"the layer before produces {previous.weight.shape[1]}"
            )
    features = math.prod(input_spec.shape[1:])
    if features != layers[0].weight.shape[0]:
        raise UnsupportedGraphError(
            f"input '{input_spec.name}' has {features} features per row; the first layer takes "
            f"{layers[0].weight.shape[0]}"
        )


__all__ = ["SUPPORTED_OPS_TEXT", "extract_mlp", "node_label"]
