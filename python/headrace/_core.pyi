# Hand-written stubs for the private native module headrace._core (csrc/bindings/).
# Each area keeps its section; keep them in the order of csrc/bindings/module.cc.
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

class CoreError(RuntimeError):
    """args == (code, message); code is a gRPC canonical status code."""

# --- tensors (csrc/tensors) ---
def validate_raw_tensor(
    datatype: str, shape: Sequence[int], raw_byte_size: int, max_elements: int, name: str
) -> int: ...
def checked_element_count(shape: Sequence[int], max_elements: int, name: str) -> int: ...
def decode_bytes(blob: bytes | memoryview, count: int, name: str) -> npt.NDArray[np.object_]: ...
def encode_bytes(elements: npt.NDArray[np.object_], name: str) -> bytes: ...

# --- batching (csrc/batching) ---
def monotonic_ns() -> int:
    """The steady clock (ns) that Batcher deadlines (deadline_ns) are measured on."""

class BatcherConfig:
    """Settings of one Batcher. Keyword-only constructor; fields are plain and writable."""

    max_batch_size: int
    instances: int
    max_queue_delay_us: int
    auto_delay: bool
    preferred_batch_sizes: list[int]
    max_queue_size: int
    priority_levels: int
    default_priority_level: int
    default_timeout_us: int
    latency_target_us: int
    def __init__(
        self,
        *,
        max_batch_size: int = 8,
        instances: int = 1,
        max_queue_delay_us: int = 0,
        auto_delay: bool = False,
        preferred_batch_sizes: Sequence[int] = ...,
        max_queue_size: int = 0,
        priority_levels: int = 0,
        default_priority_level: int = 0,
        default_timeout_us: int = 0,
        latency_target_us: int = 0,
    ) -> None: ...
    def validate(self) -> None: ...

class CompletionQueue:
    """Finished requests of every Batcher sharing it; one eventfd wake-up per batch."""

    def __init__(self) -> None: ...
    @property
    def fd(self) -> int: ...
    @property
    def pending(self) -> int: ...
    def drain(self) -> list[tuple[int, int, str, list[npt.NDArray[Any]] | None]]:
        """(ticket, status_code, message, outputs); outputs is None unless status_code == 0."""

class Batcher:
    """Dynamic batcher of one model version: queue, scheduler thread, `instances` workers."""

    def __init__(
        self,
        name: str,
        config: BatcherConfig,
        runner: Callable[[list[npt.NDArray[Any]]], Sequence[npt.NDArray[Any]]],
        completions: CompletionQueue,
    ) -> None: ...
    @property
    def name(self) -> str: ...
    def submit(
        self, inputs: Sequence[npt.NDArray[Any]], priority: int = 0, deadline_ns: int = 0
    ) -> int: ...
    def cancel(self, ticket: int) -> bool: ...
    def stats(self) -> dict[str, Any]:
        """request_success, request_failure, inference_count (rows run), execution_count
        (batches), queue_ns, queue_count, compute_ns, compute_count, batch_sizes ({rows:
        {"count", "compute_ns"}}), pending_requests, busy_instances, shed_count, expired_count,
        cancelled_count, rejected_count, last_inference_ms, cost_a_ns_per_row, cost_b_ns,
        arrival_interval_ns."""
    def shutdown(self, drain: bool = True) -> None: ...

class PolicyHarness:
    """The pure batching policy over a hand-built queue and a fake clock."""

    def __init__(self, config: BatcherConfig) -> None: ...
    def add(
        self,
        ticket: int,
        rows: int,
        *,
        priority: int = 0,
        enqueue_ns: int,
        deadline_ns: int = 0,
        shape_key: int = 0,
    ) -> None: ...
    def remove(self, tickets: Sequence[int]) -> None: ...
    def set_instances(self, free: int, busy: int) -> None: ...
    def observe_batch(self, rows: int, compute_ns: int) -> None: ...
    def observe_arrival(self, arrival_ns: int) -> None: ...
    def decide(self, now_ns: int, flush: bool = False) -> dict[str, Any]:
        """{"action": "run"|"wait"|"idle", "run": [tickets], "expired": [tickets],
        "shed": [tickets], "wait_until_ns": int | None}"""
    def cost(self) -> dict[str, float]: ...
    @property
    def queued(self) -> list[int]: ...

# --- quant (csrc/quant) ---
def quant_supported_isas() -> list[str]: ...
def quant_missing_features(isa: str) -> list[str]: ...
def quant_default_isa() -> str: ...
def quant_gemm_s32(
    a: npt.NDArray[np.int8], b: npt.NDArray[np.int8], isa: str | None = None
) -> npt.NDArray[np.int32]: ...
def quant_gemm_vnni_emulated(
    a: npt.NDArray[np.int8], b: npt.NDArray[np.int8]
) -> npt.NDArray[np.int32]: ...
def quant_peak_gops(isa: str, iterations: int) -> float: ...

class QuantizedMlp:
    """An int8 MLP loaded from a .int8 file; run() is thread-safe and releases the GIL."""

    def __init__(self, path: str, isa: str | None = None) -> None: ...
    @staticmethod
    def from_bytes(data: bytes, isa: str | None = None) -> QuantizedMlp: ...
    def run(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]: ...
    @property
    def isa(self) -> str: ...
    @property
    def input_size(self) -> int: ...
    @property
    def output_size(self) -> int: ...
    @property
    def layer_count(self) -> int: ...
    @property
    def input(self) -> dict[str, str | list[int]]: ...
    @property
    def output(self) -> dict[str, str | list[int]]: ...
