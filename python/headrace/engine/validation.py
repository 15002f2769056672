"""Checks of a model's declared tensors and of each request against them.

Everything here is a pure function of specs and arrays: no model, no thread, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

import numpy as np
import numpy.typing as npt

from headrace.config import ModelConfig, TensorConfig
from headrace.datatypes import DATATYPE_TO_NUMPY
from headrace.errors import ConfigError, InvalidArgumentError
from headrace.native import core as _core
from headrace.types import InputTensor, TensorSpec

# Without a model.toml, a model whose inputs all have a dynamic first dim is batched this wide.
DEFAULT_MAX_BATCH_SIZE = 64


def resolve_max_batch_size(config: ModelConfig, inputs: tuple[TensorSpec, ...]) -> int:
    batchable = bool(inputs) and all(len(s.shape) >= 1 and s.shape[0] == -1 for s in inputs)
    if config.max_batch_size is None:
        return DEFAULT_MAX_BATCH_SIZE if batchable else 0
    if config.max_batch_size > 0 and not batchable:
        raise ConfigError(
            f"{config.source}: 'max_batch_size' = {config.max_batch_size} but not every input of "
            f"model '{config.name}' has a dynamic first dimension to batch along"
        )
    return config.max_batch_size


def apply_declared(
    declared: tuple[TensorConfig, ...],
    actual: tuple[TensorSpec, ...],
    kind: str,
    config: ModelConfig,
) -> tuple[TensorSpec, ...]:
    """model.toml may restate inputs/outputs (e.g. to fix dynamic dims); they must agree."""
    if not declared:
        return actual
    by_name = {s.name: s for s in actual}
    result = []
    for tensor in declared:
        found = by_name.get(tensor.name)
        if found is None:
            raise ConfigError(
                f"{config.source}: {kind} '{tensor.name}' is not in the model "
                f"(it has: {', '.join(by_name)})"
            )
        if tensor.datatype != found.datatype:
            raise ConfigError(
                f"{config.source}: {kind} '{tensor.name}' is {found.datatype} in the model, "
                f"not {tensor.datatype}"
            )
        if len(tensor.shape) != len(found.shape) or any(
            m != -1 and d != m for d, m in zip(tensor.shape, found.shape, strict=True)
        ):
            raise ConfigError(
                f"{config.source}: {kind} '{tensor.name}' shape {list(tensor.shape)} does not "
                f"fit the model's {list(found.shape)}"
            )
        result.append(TensorSpec(tensor.name, tensor.datatype, tuple(tensor.shape)))
    return tuple(result)


def _not_utf8(name: str, index: int) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"input '{name}': BYTES element {index} is not valid UTF-8 "
        "(ONNX Runtime string tensors hold UTF-8 text)"
    )


def check_utf8(name: str, array: InputTensor) -> None:
    if not isinstance(array, np.ndarray):
        # Wire BYTES: the core walks them (layout, then UTF-8) without making objects.
        index = array.first_non_utf8_element()
        if index is not None:
            raise _not_utf8(name, index)
        return
    if array.dtype.kind != "O":
        return
    for index, value in enumerate(array.reshape(-1)):
        if isinstance(value, bytes):
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                raise _not_utf8(name, index) from None


def utf8_texts(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """BYTES elements as ``str`` (ONNX Runtime's Python API takes text for string tensors)."""
    texts = np.empty(array.shape, dtype=object)
    flat = texts.reshape(-1)
    for index, value in enumerate(array.reshape(-1)):
        flat[index] = value.decode("utf-8") if isinstance(value, bytes) else value
    return texts


class RequestValidator:
    """Checks requests against one version's inputs and outputs; immutable, thread-safe.

    ``owned`` inputs (a features model's entity and request inputs) are only checked to be
    there: the feature joiner checks their datatype and shape by its own rules."""

    def __init__(
        self,
        model: str,
        inputs: tuple[TensorSpec, ...],
        outputs: tuple[TensorSpec, ...],
        batched: bool,
        owned: frozenset[str] = frozenset(),
    ) -> None:
        self.model = model
        self.inputs = inputs
        self.batched = batched
        self.owned = owned
        self._input_by_name = {s.name: s for s in inputs}
        self.output_names = [s.name for s in outputs]
        # What check() compares for each input, worked out once: whether it is owned, its rank
        # and its fixed dimensions as (axis, size) -- a loop over those instead of a generator
        # over every dimension on each request.
        self._checks = tuple(
            (
                spec,
                spec.name in owned,
                len(spec.shape),
                tuple((axis, size) for axis, size in enumerate(spec.shape) if size != -1),
            )
            for spec in inputs
        )

    def check(
        self,
        inputs: Mapping[str, InputTensor],
        requested_outputs: Sequence[str] | None,
        declared_datatypes: Mapping[str, str] | None = None,
    ) -> list[str]:
        """Validate names, datatypes and shapes; returns the output names to compute. Wire
        BYTES (``WireBytes``) are checked by their shape and, for UTF-8, by the core: they stay
        unexpanded."""
        for name in inputs:
            if name not in self._input_by_name:
                raise InvalidArgumentError(
                    f"unknown input '{name}' for model '{self.model}' "
                    f"(expects: {', '.join(self._input_by_name)})"
                )
        rows: int | None = None
        for spec, owned, rank, fixed in self._checks:
            array = inputs.get(spec.name)
            if array is None:
                raise InvalidArgumentError(f"missing input '{spec.name}' for model '{self.model}'")
            if owned:
                continue
            declared = declared_datatypes.get(spec.name) if declared_datatypes else None
            # The wire's case, declared as the model expects, passes here; the rest is decided
            # by _check_datatype.
            if declared != spec.datatype or type(array) is not np.ndarray:
                self._check_datatype(spec, array, declared_datatypes)
            shape = array.shape
            if len(shape) != rank:
                self._shape_mismatch(spec, shape)
            for axis, size in fixed:
                if shape[axis] != size:
                    self._shape_mismatch(spec, shape)
            if spec.datatype == "BYTES":
                check_utf8(spec.name, array)
            if self.batched:
                if rows is None:
                    rows = shape[0]
                elif shape[0] != rows:
                    raise InvalidArgumentError(
                        f"input '{spec.name}': batch dimension {shape[0]} differs from the "
                        f"other inputs' {rows}"
                    )
        return self.check_outputs(requested_outputs)

    def _shape_mismatch(self, spec: TensorSpec, shape: tuple[int, ...]) -> NoReturn:
        raise InvalidArgumentError(
            f"input '{spec.name}': shape {list(shape)} does not match model "
            f"'{self.model}' shape {list(spec.shape)} (-1 is any size)"
        )

    def _check_datatype(
        self,
        spec: TensorSpec,
        array: InputTensor,
        declared_datatypes: Mapping[str, str] | None,
    ) -> None:
        declared = declared_datatypes.get(spec.name) if declared_datatypes else None
        if not isinstance(array, np.ndarray):
            declared = "BYTES"  # wire BYTES are BYTES, whoever passes them
        if declared is not None:
            if declared != spec.datatype:
                raise InvalidArgumentError(
                    f"input '{spec.name}': datatype {declared} but model '{self.model}' "
                    f"expects {spec.datatype}"
                )
            return
        assert isinstance(array, np.ndarray)  # narrowed above: only arrays reach here
        expected = DATATYPE_TO_NUMPY[spec.datatype]
        ok = array.dtype == expected or (
            spec.datatype == "BYTES" and array.dtype.kind in ("O", "U", "S")
        )
        if not ok:
            raise InvalidArgumentError(
                f"input '{spec.name}': numpy dtype {array.dtype} but model "
                f"'{self.model}' expects {spec.datatype}"
            )

    def check_outputs(self, requested_outputs: Sequence[str] | None) -> list[str]:
        if not requested_outputs:
            return list(self.output_names)
        seen: set[str] = set()
        for name in requested_outputs:
            if name not in self.output_names:
                raise InvalidArgumentError(
                    f"unknown requested output '{name}' for model '{self.model}' "
                    f"(has: {', '.join(self.output_names)})"
                )
            if name in seen:
                raise InvalidArgumentError(f"output '{name}' is requested twice")
            seen.add(name)
        return list(requested_outputs)


def zero_inputs(inputs: tuple[TensorSpec, ...]) -> dict[str, npt.NDArray[Any]]:
    """A warm-up request: zeros (empty strings) of each input's shape, dynamic dims as 1."""
    arrays: dict[str, npt.NDArray[Any]] = {}
    for spec in inputs:
        shape = tuple(1 if d == -1 else d for d in spec.shape)
        if spec.datatype == "BYTES":
            arrays[spec.name] = np.full(shape, b"", dtype=object)
        else:
            arrays[spec.name] = np.zeros(shape, dtype=DATATYPE_TO_NUMPY[spec.datatype])
    return arrays


def deadline_ns(timeout_us: int, timeout_s: float | None) -> int:
    """An absolute deadline on the core's steady clock; 0 means none."""
    if timeout_us < 0:
        raise InvalidArgumentError(f"timeout must be >= 0 microseconds, got {timeout_us}")
    budgets_ns = []
    if timeout_us > 0:
        budgets_ns.append(timeout_us * 1000)
    if timeout_s is not None:
        budgets_ns.append(max(0, int(timeout_s * 1e9)))
    if not budgets_ns:
        return 0
    return int(_core.monotonic_ns()) + max(1, min(budgets_ns))
