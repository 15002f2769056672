"""The backend interface: what a loaded model version offers the engine."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy.typing as npt

from headrace.types import TensorSpec

if TYPE_CHECKING:
    from headrace._core import NativeRunner

__all__ = ["Backend", "TensorSpec"]


class Backend(Protocol):
    """A loaded model version. ``run`` may be called from several threads at once."""

    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def run(
        self, inputs: Mapping[str, npt.NDArray[Any]], output_names: Sequence[str]
    ) -> list[npt.NDArray[Any]]:
        """Run one batch; returns the arrays of ``output_names`` in that order."""
        ...

    def batch_runner(
        self, input_names: Sequence[str], output_names: Sequence[str]
    ) -> NativeRunner | None:
        """A native runner for the core's batcher (batches then run without the GIL), taking
        inputs and giving outputs in the orders named; None to run batches through ``run``."""
        ...

    def close(self) -> None:
        """Release the model's resources; no ``run`` follows."""
        ...
