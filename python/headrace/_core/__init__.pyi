# Hand-written stubs for the private native module headrace._core (csrc/bindings/).
# Each area keeps its section; keep them in the order of csrc/bindings/module.cc. The test-only
# submodule _core.testing has its own stub (testing.pyi beside this file).
from collections.abc import Callable, Sequence
from typing import Any, Literal, overload

import numpy as np
import numpy.typing as npt

from headrace._core import testing as testing
from headrace.errors import HeadraceError

# --- errors (register_errors.cc) ---
# Core errors arrive as headrace.errors' typed exceptions (InvalidArgumentError, NotFoundError,
# ...; .code and .message set). CoreError is an alias of their base, kept for compatibility.
CoreError = HeadraceError

# --- tensors (csrc/tensors) ---
def validate_raw_tensor(
    datatype: str, shape: Sequence[int], raw_byte_size: int, max_elements: int, name: str
) -> int: ...
def checked_element_count(shape: Sequence[int], max_elements: int, name: str) -> int: ...
def decode_bytes(blob: bytes | memoryview, count: int, name: str) -> npt.NDArray[np.object_]: ...
def encode_bytes(elements: npt.NDArray[np.object_], name: str) -> bytes: ...

class BytesTensor:
    """A BYTES input still in wire form inside its request message (nothing expanded)."""

    @property
    def name(self) -> str: ...
    @property
    def datatype(self) -> str: ...
    @property
    def shape(self) -> tuple[int, ...]: ...
    @property
    def ndim(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def nbytes(self) -> int: ...
    def to_numpy(self) -> npt.NDArray[np.object_]:
        """Check the length prefixes (InvalidArgumentError) and expand the elements."""
    def first_non_utf8_element(self) -> int | None:
        """Check the length prefixes (InvalidArgumentError); the index of the first element
        that is not well-formed UTF-8, or None. No object is made per element."""

@overload
def parse_infer_request(
    message: bytes, max_elements: int, expand_bytes: Literal[True] = True
) -> tuple[
    str,
    str,
    str,
    dict[str, bool | int | float | str | None],
    list[tuple[str, str, npt.NDArray[Any] | None]],
    list[str],
    bool,
]: ...
@overload
def parse_infer_request(
    message: bytes, max_elements: int, expand_bytes: Literal[False]
) -> tuple[
    str,
    str,
    str,
    dict[str, bool | int | float | str | None],
    list[tuple[str, str, npt.NDArray[Any] | BytesTensor | None]],
    list[str],
    bool,
]:
    """Parse and validate a serialized ModelInferRequest.

    Returns (model_name, model_version, id, parameters, inputs, output_names,
    has_typed_contents); each input is (name, datatype, array), the array a read-only view of
    ``message`` (BYTES: an object array of bytes, or with ``expand_bytes=False`` a BytesTensor
    whose layout is checked only when expanded), or None when the request carries typed
    contents, which the caller decodes with the protobuf runtime.
    """

def peek_infer_target(message: bytes) -> tuple[str, str] | None:
    """(model_name, model_version) of a serialized ModelInferRequest, read without parsing the
    rest; None when its top level is malformed (parse_infer_request says why)."""

def serialize_infer_response(
    model_name: str,
    model_version: str,
    id: str,
    outputs: list[tuple[str, str, npt.NDArray[Any]]],
    parameters: list[tuple[str, str]] | None = None,
) -> bytes:
    """A serialized ModelInferResponse with one raw_output_contents entry per output and one
    string response parameter (InferParameter.string_param) per (key, value), in that order."""

# --- batching (csrc/batching) ---
def monotonic_ns() -> int:
    """The steady clock (ns) that Batcher deadlines (deadline_ns) are measured on."""

class NativeRunner:
    """A C++ runner (OrtRunner, QuantizedMlpRunner, CudaMlpRunner): a Batcher runs its batches
    without the GIL and may run a cheap batch inline in submit_or_run."""

class BatcherConfig:
    """Settings of one Batcher, each documented once in csrc/batching/batcher_config.h.
    Keyword-only constructor; a field not given keeps the core's default; fields are writable."""

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
    inline_max_batch_us: int
    inline_min_cost_samples: int
    saturated_enter_busy_fraction: float
    saturated_leave_busy_fraction: float
    saturated_batch_requests: float
    saturated_max_wait_us: int
    lull_arrival_intervals: float
    deadline_min_cost_samples: int
    deadline_delivery_margin_us: int
    keep_waiting_yield: float
    probe_every_arrivals: int
    yield_gain_weight: float
    yield_loss_weight: float
    arrival_interval_weight: float
    def __init__(
        self,
        *,
        max_batch_size: int = ...,
        instances: int = ...,
        max_queue_delay_us: int = ...,
        auto_delay: bool = ...,
        preferred_batch_sizes: Sequence[int] = ...,
        max_queue_size: int = ...,
        priority_levels: int = ...,
        default_priority_level: int = ...,
        default_timeout_us: int = ...,
        latency_target_us: int = ...,
        inline_max_batch_us: int = ...,
        inline_min_cost_samples: int = ...,
        saturated_enter_busy_fraction: float = ...,
        saturated_leave_busy_fraction: float = ...,
        saturated_batch_requests: float = ...,
        saturated_max_wait_us: int = ...,
        lull_arrival_intervals: float = ...,
        deadline_min_cost_samples: int = ...,
        deadline_delivery_margin_us: int = ...,
        keep_waiting_yield: float = ...,
        probe_every_arrivals: int = ...,
        yield_gain_weight: float = ...,
        yield_loss_weight: float = ...,
        arrival_interval_weight: float = ...,
    ) -> None: ...
    def validate(self) -> None:
        """Raise InvalidArgumentError naming the first bad field."""

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
        runner: NativeRunner | Callable[[list[npt.NDArray[Any]]], Sequence[npt.NDArray[Any]]],
        completions: CompletionQueue,
        drift: DriftAccumulator | None = None,
    ) -> None: ...
    @property
    def drift_counted_batches(self) -> int: ...
    @property
    def drift_skipped_batches(self) -> int: ...
    @property
    def name(self) -> str: ...
    def submit(
        self,
        inputs: Sequence[npt.NDArray[Any] | BytesTensor],
        priority: int = 0,
        deadline_ns: int = 0,
    ) -> int:
        """Queue a request; InvalidArgumentError for bad inputs, UnavailableError when the
        queue is full or the deadline is out of reach behind it, DeadlineExceededError when the
        deadline has already passed."""
    def submit_or_run(
        self,
        inputs: Sequence[npt.NDArray[Any] | BytesTensor],
        priority: int = 0,
        deadline_ns: int = 0,
    ) -> tuple[int, bool]: ...
    def check_deadline(self, deadline_ns: int, in_flight: int = 0) -> None:
        """Before a request is parsed: raise what submit would for the least demanding request
        (one row, highest priority) with this deadline: DeadlineExceededError when it has
        passed, UnavailableError with the prediction when the work ahead (at least
        max(queued rows, in_flight), in_flight being the caller's count of the model's
        requests admitted and not yet answered) and one row cannot end before it (counted in
        deadline_refused_count)."""
    def cancel(self, ticket: int) -> bool:
        """Remove a queued request: answered CANCELLED, or DEADLINE_EXCEEDED (counted as
        expired) when its deadline already left it no time; False when it is not queued."""
    def stats(self) -> dict[str, Any]:
        """request_success, request_failure, inference_count (rows run), execution_count
        (batches), queue_ns, queue_count, compute_ns, compute_count, batch_sizes ({rows:
        {"count", "compute_ns"}}), pending_requests, busy_instances, shed_count, expired_count
        (doomed_count included), doomed_count, cancelled_count, rejected_count,
        deadline_refused_count, last_inference_ms, cost_a_ns_per_row, cost_b_ns,
        cost_a_ns_per_byte, cost_b_bytes_ns, cost_samples,
        arrival_interval_ns, wait_yield, busy_fraction, saturated."""
    def shutdown(self, drain: bool = True) -> None: ...

# --- quant (csrc/quant) ---
def quant_supported_isas() -> list[str]: ...
def quant_missing_features(isa: str) -> list[str]: ...
def quant_default_isa() -> str: ...
def quant_max_activation_code(isa: str) -> int: ...
def quant_gemm_s32(
    a: npt.NDArray[np.uint8], b: npt.NDArray[np.int8], isa: str | None = None
) -> npt.NDArray[np.int32]: ...
def quant_packing(b: npt.NDArray[np.int8], isa: str) -> dict[str, bool | int]: ...
def quant_gemm_timings(
    a: npt.NDArray[np.uint8], b: npt.NDArray[np.int8], isa: str, repeats: int
) -> list[float]: ...
def quant_peak_gops(isa: str, iterations: int, paired: bool = False) -> float: ...

class QuantizedMlp:
    """An int8 MLP loaded from a .int8 file; run() is thread-safe and releases the GIL."""

    def __init__(
        self, path: str, isa: str | None = None, activation_bits: int | None = None
    ) -> None: ...
    @staticmethod
    def from_bytes(
        data: bytes, isa: str | None = None, activation_bits: int | None = None
    ) -> QuantizedMlp: ...
    def run(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]: ...
    @property
    def activation_bits(self) -> int: ...
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

# --- drift (csrc/drift) ---

class BinLayout:
    """Where each feature's values land in the flat count array."""
    def __init__(self) -> None: ...
    def add_numerical(self, edges: npt.ArrayLike) -> None: ...
    def add_categorical(self, n_categories: int) -> None: ...
    @property
    def feature_count(self) -> int: ...
    @property
    def total_bins(self) -> int: ...
    def bin_count(self, feature: int) -> int: ...
    def bin_offset(self, feature: int) -> int: ...
    def is_categorical(self, feature: int) -> bool: ...
    def set_simd(self, enabled: bool) -> bool: ...
    @property
    def simd(self) -> bool: ...
    def bin_of(self, feature: int, value: float) -> int: ...
    def count(self, batch: npt.ArrayLike) -> npt.NDArray[np.uint64]: ...

class WindowCounts:
    """Counts of one window (or a merge of windows)."""
    @property
    def index(self) -> int: ...
    @property
    def start_ns(self) -> int: ...
    @property
    def end_ns(self) -> int: ...
    @property
    def rows(self) -> int: ...
    @property
    def windows(self) -> int: ...
    @property
    def closed_by(self) -> str: ...
    @property
    def counts(self) -> npt.NDArray[np.uint64]: ...

class DriftAccumulator:
    """Per-thread sharded drift counts in tumbling windows."""
    def __init__(
        self,
        layout: BinLayout,
        window_rows: int = 0,
        window_s: float = 0.0,
        windows_kept: int = 16,
        shards: int = 0,
        clock: Callable[[], float] | None = None,
    ) -> None: ...
    def observe(self, batch: npt.ArrayLike) -> None: ...
    def import_counts(self, counts: npt.ArrayLike, rows: int) -> None: ...
    def poll(self) -> bool: ...
    def close_window(self) -> int: ...
    def closed_windows(self) -> list[WindowCounts]: ...
    def merged(self, windows: int, include_open: bool = False) -> WindowCounts: ...
    def open_snapshot(self) -> WindowCounts: ...
    @property
    def windows_closed(self) -> int: ...
    @property
    def shards(self) -> int: ...
    @property
    def total_bins(self) -> int: ...
    @property
    def feature_count(self) -> int: ...

def population_stability_index(
    reference: npt.ArrayLike, current: npt.ArrayLike, floor_share: float = 0.0001
) -> float: ...
def chi_square(
    reference: npt.ArrayLike, current: npt.ArrayLike, min_expected: float = 5.0
) -> tuple[float, int, float, int]: ...
def binned_ks(
    reference: npt.ArrayLike, current: npt.ArrayLike
) -> tuple[float, float, float, float]: ...
def reject_hypotheses(p_values: npt.ArrayLike, alpha: float, correction: str) -> list[bool]: ...

# --- cuda (csrc/cuda; register_cuda.cc) ---
# Device work refuses with UnavailableError "no CUDA device: <why>" where no device can run the
# kernels (or the build has no CUDA); the packings and kernel emulations are in _core.testing.

def cuda_discover() -> dict[str, Any]:
    """{"built_with_cuda": bool, "devices": [dict], "reason": str ("" when usable)}."""

def cuda_gemm_s32(
    a: npt.NDArray[np.int8], w: npt.NDArray[np.int8], device: int = 0
) -> npt.NDArray[np.int32]: ...
def cuda_gemm_epilogue(
    a: npt.NDArray[np.int8],
    w: npt.NDArray[np.int8],
    row_scales: npt.NDArray[np.float32],
    weight_scales: npt.NDArray[np.float32],
    bias: npt.NDArray[np.float32] | None,
    activation: int,
    device: int = 0,
) -> npt.NDArray[np.float32]: ...
def cuda_time_gemm(
    m: int, n: int, k: int, iterations: int, device: int = 0
) -> dict[str, float]: ...

class CudaMlp:
    """An int8 MLP (.int8 file) on a CUDA device, every layer in one launch; run() is
    thread-safe and releases the GIL."""

    def __init__(
        self, path: str, device: int = 0, cluster_size: int = 0, use_graphs: bool = True
    ) -> None: ...
    @staticmethod
    def from_bytes(
        data: bytes, device: int = 0, cluster_size: int = 0, use_graphs: bool = True
    ) -> CudaMlp: ...
    def run(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]: ...
    def time_launch_us(self, rows: int, iterations: int, graph: bool) -> float: ...
    @property
    def input_size(self) -> int: ...
    @property
    def output_size(self) -> int: ...
    @property
    def layer_count(self) -> int: ...
    @property
    def device(self) -> int: ...
    @property
    def cluster_size(self) -> int: ...
    @property
    def shared_memory_bytes(self) -> int: ...
    @property
    def input(self) -> dict[str, str | list[int]]: ...
    @property
    def output(self) -> dict[str, str | list[int]]: ...

# --- runners (csrc/runners) ---
ORT_API_VERSION: int
"""The ONNX Runtime C API version the native runner requests (GetApi)."""
ORT_OLDEST_SUPPORTED_RELEASE: str
"""The oldest onnxruntime release headrace supports, as errors name it."""

def ort_library_version(library: str) -> str:
    """Load the ONNX Runtime library at this path (once per process) and return its release."""

class OrtRunner(NativeRunner):
    """Runs an OrtModel's batches on the batcher's workers (no GIL)."""

class QuantizedMlpRunner(NativeRunner):
    """Runs a QuantizedMlp's batches on the batcher's workers (no GIL)."""

    def __init__(self, model: QuantizedMlp) -> None: ...

class CudaMlpRunner(NativeRunner):
    """Runs a CudaMlp's batches on the batcher's workers (no GIL), each on its own stream."""

    def __init__(self, model: CudaMlp) -> None: ...

class OrtModel:
    """An ONNX Runtime session driven through the C API, without the GIL."""

    def __init__(
        self, library: str, path: str, intra_op_threads: int = 0, inter_op_threads: int = 0
    ) -> None: ...
    @property
    def inputs(self) -> list[tuple[str, str, tuple[int, ...]]]: ...
    @property
    def outputs(self) -> list[tuple[str, str, tuple[int, ...]]]: ...
    @property
    def version(self) -> str: ...
    def run(
        self,
        feed: dict[str, npt.NDArray[Any]],
        output_names: list[str],
        idle_priority: bool = False,
    ) -> list[npt.NDArray[Any]]: ...
    def runner(self, input_names: list[str], output_names: list[str]) -> OrtRunner: ...
