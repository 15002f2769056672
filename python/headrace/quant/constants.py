"""Constant values of an ONNX graph, evaluated on demand: initializers, ``Constant`` nodes, and the
small subgraphs exporters write around them (``Identity`` of an initializer, a ``Transpose`` of a
weight, ``Cast``), including the shape arithmetic that feeds a ``Reshape``
(``Shape -> Gather -> Unsqueeze -> Concat``, as ``torch.onnx.export`` writes ``x.view(n, -1)``).

Shape values are lists of ``int | None`` where ``None`` is the batch dimension, which is unknown
until run time; everything else is a NumPy array.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from headrace.quant.model import UnsupportedGraphError

Shape = list[int | None]
Value = npt.NDArray[Any] | Shape

# ONNX TensorProto element types the evaluator casts to.
_NUMPY_TYPES: dict[int, type[np.generic]] = {
    1: np.float32,
    2: np.uint8,
    3: np.int8,
    5: np.int16,
    6: np.int32,
    7: np.int64,
    9: np.bool_,
    10: np.float16,
    11: np.float64,
}

# Ops the evaluator runs on constants; they are never part of the data path.
CONSTANT_OPS = frozenset(
    {
        "Constant",
        "Identity",
        "Cast",
        "Shape",
        "Gather",
        "Unsqueeze",
        "Squeeze",
        "Concat",
        "Slice",
        "Transpose",
        "Reshape",
    }
)


def node_label(node: Any, index: int) -> str:
    name = node.name if node.name else f"#{index} (unnamed)"
    return f"node '{name}' (op {node.op_type})"


def unsupported(node: Any, index: int, why: str) -> UnsupportedGraphError:
    return UnsupportedGraphError(f"{node_label(node, index)}: {why}")


def attributes(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {attr.name: helper.get_attribute_value(attr) for attr in node.attribute}


class ConstantFolder:
    """Evaluates graph tensors that do not depend on the model input's values.

    ``chain_shape`` answers the shape of a tensor on the data path (``Shape`` of it is a constant
    apart from the batch dimension), or None when it is not known.
    """

    def __init__(
        self,
        initializers: Mapping[str, npt.NDArray[Any]],
        producers: Mapping[str, tuple[int, Any]],
        opset: int,
        chain_shape: Callable[[str], Shape | None],
    ) -> None:
        self._initializers = initializers
        self._producers = producers
        self._opset = opset
        self._chain_shape = chain_shape
        self._cache: dict[str, Value] = {}
        self.used_nodes: set[int] = set()

    def is_constant(self, name: str) -> bool:
        """True when ``name`` is an initializer or made by constant ops from initializers only."""
        if name in self._initializers or name in self._cache:
            return True
        produced = self._producers.get(name)
        if produced is None:
            return False
        _, node = produced
        if node.op_type not in CONSTANT_OPS:
            return False
        if node.op_type == "Shape":
            return self._chain_shape(node.input[0]) is not None or self.is_constant(node.input[0])
        return all(self.is_constant(source) for source in node.input if source)

    def array(self, name: str, node: Any, index: int, what: str) -> npt.NDArray[Any]:
        """``name`` as a NumPy array, or an error naming ``node`` when it is not a constant."""
        if not self.is_constant(name):
            raise unsupported(node, index, f"{what} '{name}' is not a constant")
        value = self.evaluate(name)
        if isinstance(value, list):
            if any(item is None for item in value):
                raise unsupported(node, index, f"{what} '{name}' depends on the batch size")
            return np.array(value, dtype=np.int64)
        return value

    def evaluate(self, name: str) -> Value:
        if name in self._cache:
            return self._cache[name]
        if name in self._initializers:
            return self._initializers[name]
        index, node = self._producers[name]
        self.used_nodes.add(index)
        outputs = self._run(node, index)
        self._cache[name] = outputs
        return outputs

    def _input(self, node: Any, position: int) -> Value | None:
        if position >= len(node.input) or not node.input[position]:
            return None
        return self.evaluate(node.input[position])

    def _run(self, node: Any, index: int) -> Value:
        op = node.op_type
        attrs = attributes(node)
        if op == "Constant":
            return _constant_value(node, index, attrs)
        if op == "Identity":
            return self.evaluate(node.input[0])
        if op == "Shape":
            return self._shape(node, index, attrs)
        source = self.evaluate(node.input[0])
        if op == "Cast":
            numpy_type = _NUMPY_TYPES.get(int(attrs["to"]))
            if numpy_type is None:
                raise unsupported(node, index, f"Cast to element type {attrs['to']}")
            if isinstance(source, list):
                return source
            return source.astype(numpy_type)
        if op == "Transpose":
            array = _as_array(source, node, index)
            perm = attrs.get("perm")
            return np.transpose(array, perm) if perm is not None else array.T
        if op == "Reshape":
            shape = _as_array(self.evaluate(node.input[1]), node, index)
            return _as_array(source, node, index).reshape(shape.astype(np.int64))
        if op in ("Unsqueeze", "Squeeze"):
            axes = attrs.get("axes")
            given = self._input(node, 1)
            if given is not None:
                axes = _as_array(given, node, index).tolist()
            return _unsqueeze(source, axes, node, index, squeeze=op == "Squeeze")
        if op == "Gather":
            indices = _as_array(self.evaluate(node.input[1]), node, index)
            if int(attrs.get("axis", 0)) != 0:
                raise unsupported(node, index, "only Gather on axis 0 is evaluated")
            if isinstance(source, list):
                picked = [source[int(i)] for i in indices.reshape(-1)]
                return picked if indices.ndim == 1 else [picked[0]]
            return np.take(source, indices, axis=0)
        if op == "Concat":
            parts = [self.evaluate(name) for name in node.input]
            if any(isinstance(part, list) for part in parts):
                vector: Shape = []
                for part in parts:
                    vector.extend(_as_vector(part, node, index))
                return vector
            arrays = [_as_array(part, node, index) for part in parts]
            return np.concatenate(arrays, axis=int(attrs.get("axis", 0)))
        if op == "Slice":
            return self._slice(node, index, attrs, source)
        raise unsupported(node, index, "cannot be evaluated as a constant")

    def _shape(self, node: Any, index: int, attrs: dict[str, Any]) -> Shape:
        shape = self._chain_shape(node.input[0])
        if shape is None:
            shape = list(_as_array(self.evaluate(node.input[0]), node, index).shape)
        start = int(attrs.get("start", 0))
        end = attrs.get("end")
        return list(shape[start : None if end is None else int(end)])

    def _slice(self, node: Any, index: int, attrs: dict[str, Any], source: Value) -> Value:
        if self._opset < 10:
            starts, ends = attrs["starts"], attrs["ends"]
            axes, steps = attrs.get("axes"), None
        else:
            starts = _as_array(self.evaluate(node.input[1]), node, index).tolist()
            ends = _as_array(self.evaluate(node.input[2]), node, index).tolist()
            given_axes = self._input(node, 3)
            given_steps = self._input(node, 4)
            axes = None if given_axes is None else _as_array(given_axes, node, index).tolist()
            steps = None if given_steps is None else _as_array(given_steps, node, index).tolist()
        if isinstance(source, list):
            if (axes not in (None, [0])) or len(starts) != 1:
                raise unsupported(node, index, "only 1-D slices of a shape are evaluated")
            step = 1 if steps is None else int(steps[0])
            return source[slice(int(starts[0]), int(ends[0]), step)]
        array = source
        slices = [slice(None)] * array.ndim
        for position, axis in enumerate(range(len(starts)) if axes is None else axes):
            step = 1 if steps is None else int(steps[position])
            slices[int(axis)] = slice(int(starts[position]), int(ends[position]), step)
        return array[tuple(slices)]


def _constant_value(node: Any, index: int, attrs: dict[str, Any]) -> npt.NDArray[Any]:
    from onnx import numpy_helper

    if "value" in attrs:
        value: npt.NDArray[Any] = numpy_helper.to_array(attrs["value"])
        return value
    if "value_float" in attrs:
        return np.array(attrs["value_float"], dtype=np.float32)
    if "value_floats" in attrs:
        return np.array(attrs["value_floats"], dtype=np.float32)
    if "value_int" in attrs:
        return np.array(attrs["value_int"], dtype=np.int64)
    if "value_ints" in attrs:
        return np.array(attrs["value_ints"], dtype=np.int64)
    raise unsupported(node, index, "Constant without a numeric value")


def _as_array(value: Value, node: Any, index: int) -> npt.NDArray[Any]:
    if isinstance(value, list):
        if any(item is None for item in value):
            raise unsupported(node, index, "needs a shape value that depends on the batch size")
        return np.array(value, dtype=np.int64)
    return value


def _as_vector(value: Value, node: Any, index: int) -> Shape:
    if isinstance(value, list):
        return list(value)
    if value.ndim > 1:
        raise unsupported(node, index, "concatenates shape values of rank > 1")
    return [int(item) for item in value.reshape(-1)]


def _unsqueeze(value: Value, axes: Any, node: Any, index: int, *, squeeze: bool) -> Value:
    if isinstance(value, list):
        # Shape values are 0-D (a single dimension picked by Gather) or 1-D; (un)squeezing axis 0
        # of them changes nothing in their list form.
        if axes not in (None, [0]):
            raise unsupported(node, index, "only axis 0 of a shape value is (un)squeezed")
        return value
    if squeeze:
        return np.squeeze(value, axis=None if axes is None else tuple(axes))
    result = value
    for axis in sorted(int(a) for a in axes):
        result = np.expand_dims(result, axis)
    return result
