"""The int8 backend on a CUDA GPU, and the choice between it and the CPU one.

A ``model.int8`` runs on the GPU through the core's ``CudaMlp``: every layer of a batch of up to
64 rows in one kernel launch (tensor-core int8 GEMMs with int32 accumulation, the CPU path's
epilogue, activations kept in shared memory), larger batches as several such clusters in the same
launch. Like the CPU backend, ``batch_runner`` hands the batcher a NativeRunner
(``CudaMlpRunner``), so batches run on its worker threads in C++ without Python or the GIL, each
on its own CUDA stream.

``[int8] device`` in ``model.toml`` picks the executor (:func:`load_int8_backend`):
``"cpu"`` (the default), ``"cuda"`` / ``"cuda:N"`` (that GPU, or UnavailableError
"no CUDA device: ..." where none is usable) or ``"auto"`` (the GPU when one is usable, else the
CPU).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy.typing as npt

from headrace.backends.base import TensorSpec
from headrace.backends.int8 import PLATFORM, Int8Backend
from headrace.config.model import parse_int8_device
from headrace.errors import ConfigError
from headrace.native import core as _core


def cuda_unavailable_reason() -> str | None:
    """None when a CUDA device can run the int8 kernels; otherwise why not (never raises)."""
    reason = str(_core.cuda_discover()["reason"])
    return reason or None


def _spec(metadata: Mapping[str, Any]) -> TensorSpec:
    return TensorSpec(
        str(metadata["name"]), str(metadata["datatype"]), tuple(int(d) for d in metadata["shape"])
    )


class CudaInt8Backend:
    """A ``model.int8`` resident on one CUDA device. ``run`` is thread-safe."""

    platform = PLATFORM

    def __init__(self, path: Path, *, device_index: int = 0) -> None:
        # Core errors arrive typed: UnavailableError "no CUDA device: ...", NotFoundError, ...
        self.model = _core.CudaMlp(str(path), device_index)
        self.path = path
        self.device = f"cuda:{device_index}"
        self.inputs: tuple[TensorSpec, ...] = (_spec(self.model.input),)
        self.outputs: tuple[TensorSpec, ...] = (_spec(self.model.output),)

    def run(
        self, inputs: Mapping[str, npt.NDArray[Any]], output_names: Sequence[str]
    ) -> list[npt.NDArray[Any]]:
        y = self.model.run(inputs[self.inputs[0].name])
        return [y for _ in output_names]

    def batch_runner(
        self, input_names: Sequence[str], output_names: Sequence[str]
    ) -> _core.NativeRunner:
        """A CudaMlpRunner: the batcher runs it in C++ (one input, one output)."""
        return _core.CudaMlpRunner(self.model)

    def close(self) -> None:
        """The device memory is freed with the last batcher or backend holding the CudaMlp."""


def load_int8_backend(path: Path, device: str = "cpu") -> Int8Backend | CudaInt8Backend:
    """The int8 backend that ``[int8] device`` asks for (see the module docstring)."""
    try:
        kind, index = parse_int8_device(device)
    except ValueError as error:
        raise ConfigError(f"'int8.device' {error}") from None
    if kind == "cpu":
        return Int8Backend(path)
    if kind == "auto":
        return Int8Backend(path) if cuda_unavailable_reason() is not None else CudaInt8Backend(path)
    return CudaInt8Backend(path, device_index=index)
