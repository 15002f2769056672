"""Domain types shared by the engine, the server and the clients: tensor specs, requests,
results, metadata and statistics. Part of the base: imports nothing of headrace above it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy.typing as npt

# gRPC's default message limit is 4 MiB; models with large tensors need more, on both sides.
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output as the v2 protocol describes it (-1 marks a dynamic dim)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(slots=True)
class InferRequest:
    """One inference request in domain terms (what the server decodes and the engine runs).

    ``declared_datatypes`` holds the wire datatype of each input when it came over the wire
    (BF16 travels as uint16, so the numpy dtype alone cannot tell); ``timeout_us`` is Triton's
    ``timeout`` parameter and ``timeout_s`` the caller's remaining gRPC deadline."""

    model: str
    inputs: Mapping[str, npt.NDArray[Any]]
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
    expired_count: int = 0
    cancelled_count: int = 0
    rejected_count: int = 0
    batches: dict[int, BatchStatistics] = field(default_factory=dict)
