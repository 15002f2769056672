"""Domain types shared by the engine, the server and the clients: tensor specs, requests,
results, metadata and statistics. Part of the base: imports nothing of headrace above it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias

import numpy as np
import numpy.typing as npt

# gRPC's default message limit is 4 MiB; models with large tensors need more, on both sides.
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output as the v2 protocol describes it (-1 marks a dynamic dim)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


class WireBytes(Protocol):
    """A BYTES input still in its wire form inside the request message (the core's
    ``BytesTensor``, which the server's parser hands out): shape and sizes are known, and no
    Python object exists per element until ``to_numpy()``. The engine checks it against the
    model like an array and hands it to the batcher as it is; only code that needs Python
    objects expands it, so a request refused before that never pays for its elements."""

    @property
    def shape(self) -> tuple[int, ...]: ...
    @property
    def size(self) -> int: ...
    @property
    def nbytes(self) -> int: ...
    def to_numpy(self) -> npt.NDArray[Any]: ...
    def first_non_utf8_element(self) -> int | None: ...


# What a request's input may be: an array, or (from the wire) BYTES not yet expanded.
InputTensor: TypeAlias = npt.NDArray[Any] | WireBytes


def as_array(tensor: InputTensor) -> npt.NDArray[Any]:
    """The input as a numpy array: wire BYTES are expanded (their layout checked) here."""
    return tensor if isinstance(tensor, np.ndarray) else tensor.to_numpy()


@dataclass(slots=True)
class InferRequest:
    """One inference request in domain terms (what the server decodes and the engine runs).

    ``declared_datatypes`` holds the wire datatype of each input when it came over the wire
    (BF16 travels as uint16, so the numpy dtype alone cannot tell); ``timeout_us`` is Triton's
    ``timeout`` parameter and ``timeout_s`` the caller's remaining gRPC deadline. BYTES inputs
    from the wire are :class:`WireBytes` until something needs their elements."""

    model: str
    inputs: Mapping[str, InputTensor]
    version: str | int | None = None
    outputs: Sequence[str] | None = None
    request_id: str = ""
    declared_datatypes: Mapping[str, str] | None = None
    priority: int = 0
    timeout_us: int = 0
    timeout_s: float | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class InferResult:
    """One answer: the version that served it and the requested outputs by name."""

    model_name: str
    model_version: str
    outputs: dict[str, npt.NDArray[Any]]
    id: str = ""
    datatypes: dict[str, str] = field(default_factory=dict)  # v2 datatype of each output
    parameters: dict[str, Any] = field(default_factory=dict)  # response parameters


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True)
class ModelIndexEntry:
    """A RepositoryIndex row: state is READY, LOADING or UNAVAILABLE (with a reason)."""

    name: str
    version: str
    state: str
    reason: str = ""


@dataclass
class BatchStatistics:
    count: int = 0
    compute_ns: int = 0


@dataclass
class VersionStatistics:
    """Triton's ModelStatistics vocabulary for one model version."""

    name: str
    version: str
    last_inference_ms: int = 0
    inference_count: int = 0
    execution_count: int = 0
    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0
    queue_count: int = 0
    queue_ns: int = 0
    compute_count: int = 0
    compute_ns: int = 0
    pending_requests: int = 0
    shed_count: int = 0
    # expired_count includes doomed_count: queued requests answered DEADLINE_EXCEEDED without
    # running because no batch could end before their deadline.
    expired_count: int = 0
    doomed_count: int = 0
    cancelled_count: int = 0
    rejected_count: int = 0
    # Refused on arrival because their deadline had passed or could not be met behind the queue
    # (never queued, so not in fail_count).
    deadline_refused_count: int = 0
    batches: dict[int, BatchStatistics] = field(default_factory=dict)
