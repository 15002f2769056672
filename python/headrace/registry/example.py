"""A version's warm-up sample: MLflow's ``input_example.json`` (also read from a repository folder).

MLflow writes an example in one of these shapes (``saved_input_example_info.type`` in ``MLmodel``):
``[[...]]`` (one unnamed tensor), ``{"x": [[...]], ...}`` (tensors by input name), or a pandas
frame in split orient ``{"columns": [...], "data": [[...]]}`` (one 2-D input). The manager turns
it into arrays with the dtypes the loaded model declares, then runs it through the serving runner.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from headrace.errors import InvalidArgumentError

UNNAMED = ""


@dataclass(frozen=True)
class InputExample:
    """Nested lists by input name (``UNNAMED`` when the example names no input)."""

    tensors: Mapping[str, Any]
    source: Path

    def arrays(self, inputs: Mapping[str, npt.DTypeLike]) -> dict[str, npt.NDArray[Any]]:
        """Arrays for the model's inputs (name -> numpy dtype); InvalidArgumentError when the
        example does not name every input or cannot be cast."""
        if set(self.tensors) == {UNNAMED}:
            if len(inputs) != 1:
                raise InvalidArgumentError(
                    f"{self.source}: an unnamed example fits a model of one input, this one "
                    f"has {sorted(inputs)}"
                )
            named = {next(iter(inputs)): self.tensors[UNNAMED]}
        else:
            named = dict(self.tensors)
        missing = sorted(set(inputs) - set(named))
        if missing:
            raise InvalidArgumentError(f"{self.source}: the example has no input {missing}")
        result: dict[str, npt.NDArray[Any]] = {}
        for name, dtype in inputs.items():
            try:
                result[name] = np.asarray(named[name], dtype=dtype)
            except (TypeError, ValueError) as error:
                raise InvalidArgumentError(
                    f"{self.source}: input '{name}' cannot be read as {np.dtype(dtype)}: {error}"
                ) from None
        return result


def read_input_example(path: Path) -> InputExample:
    """Parse an ``input_example.json``; InvalidArgumentError for a shape MLflow does not write."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidArgumentError(f"{path}: not a readable JSON input example: {error}") from None
    if isinstance(raw, list):
        return InputExample({UNNAMED: raw}, path)
    if isinstance(raw, dict):
        if "columns" in raw and "data" in raw:  # pandas split orient
            return InputExample({UNNAMED: raw["data"]}, path)
        if raw and all(isinstance(key, str) and key for key in raw):
            return InputExample(raw, path)
    raise InvalidArgumentError(
        f"{path}: expected a list, an object of tensors by input name, or a split-orient frame"
    )
