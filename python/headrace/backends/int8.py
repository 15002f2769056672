"""The int8 backend: models made by ``headrace quantize`` (``model.int8``), run by the core's
QuantizedMlp. Batched requests run on the batcher's worker threads entirely in C++: the batcher
takes the QuantizedMlp itself as its runner, so no Python and no GIL sit on that path."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy.typing as npt

from headrace.backends.base import TensorSpec
from headrace.errors import from_core_error
from headrace.native import core as _core

PLATFORM = "headrace_int8"


def _spec(metadata: Mapping[str, Any]) -> TensorSpec:
    return TensorSpec(
        str(metadata["name"]), str(metadata["datatype"]), tuple(int(d) for d in metadata["shape"])
    )


class Int8Backend:
    platform = PLATFORM

    def __init__(self, path: Path) -> None:
        try:
            self.native_runner = _core.QuantizedMlp(str(path))
        except _core.CoreError as error:
            raise from_core_error(error) from None
        self.path = path
        self.inputs: tuple[TensorSpec, ...] = (_spec(self.native_runner.input),)
        self.outputs: tuple[TensorSpec, ...] = (_spec(self.native_runner.output),)

    def run(
        self, inputs: Mapping[str, npt.NDArray[Any]], output_names: Sequence[str]
    ) -> list[npt.NDArray[Any]]:
        x = inputs[self.inputs[0].name]
        try:
            y = self.native_runner.run(x)
        except _core.CoreError as error:
            raise from_core_error(error) from None
        return [y for _ in output_names]

    def batch_runner(self, input_names: Sequence[str], output_names: Sequence[str]) -> Any:
        """The QuantizedMlp itself: the batcher runs it in C++ (one input, one output)."""
        return self.native_runner

    def close(self) -> None:
        """The QuantizedMlp is freed with the last batcher or backend holding it."""
