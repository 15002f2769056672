"""The in-process engine: models, endpoints and ``infer`` — everything the server wraps.

A Python user gets every capability of the gRPC server here without a socket::

    engine = Engine.from_repository("examples/models")
    result = engine.infer("tabular", {"x": np.ones((1, 32), np.float32)})
    result.outputs["y"]

``infer`` (blocking) and ``infer_async`` (asyncio) validate inputs against the model's metadata,
run the model version that the version policy serves, and keep Triton-style statistics and
Prometheus metrics. Model execution never happens on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from headrace import _core
from headrace.backends.base import Backend, TensorSpec
from headrace.completions import CompletionRouter, Outputs
from headrace.config import ModelConfig, ServerSettings
from headrace.errors import (
    ConfigError,
    DeadlineExceededError,
    HeadraceError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
    from_core_error,
)
from headrace.monitoring.metrics import Metrics
from headrace.monitoring.serving import ServedDrift, load_served_drift, reference_stamp
from headrace.registry.filesystem import FilesystemRepository, ModelSource, VersionSource
from headrace.tensors import DATATYPE_TO_NUMPY

log = logging.getLogger(__name__)

# Without a model.toml, a model whose inputs all have a dynamic first dim is batched this wide.
DEFAULT_MAX_BATCH_SIZE = 64


@dataclass(slots=True)
class InferResult:
    """One answer: the version that served it and the requested outputs by name."""

    model_name: str
    model_version: str
    outputs: dict[str, npt.NDArray[Any]]
    id: str = ""
    datatypes: dict[str, str] = field(default_factory=dict)  # v2 datatype of each output


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


def _resolve_max_batch_size(config: ModelConfig, inputs: tuple[TensorSpec, ...]) -> int:
    batchable = bool(inputs) and all(len(s.shape) >= 1 and s.shape[0] == -1 for s in inputs)
    if config.max_batch_size is None:
        return DEFAULT_MAX_BATCH_SIZE if batchable else 0
    if config.max_batch_size > 0 and not batchable:
        raise ConfigError(
            f"{config.source}: 'max_batch_size' = {config.max_batch_size} but not every input of "
            f"model '{config.name}' has a dynamic first dimension to batch along"
        )
    return config.max_batch_size


def _apply_declared(
    declared: tuple[Any, ...], actual: tuple[TensorSpec, ...], kind: str, config: ModelConfig
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


def _load_backend(source: VersionSource, config: ModelConfig, settings: ServerSettings) -> Backend:
    if source.backend == "onnxruntime":
        from headrace.backends.onnx import OnnxBackend

        return OnnxBackend(
            source.path,
            native=settings.native_onnxruntime,
            intra_op_threads=(
                config.intra_op_threads
                if config.intra_op_threads is not None
                else settings.intra_op_threads
            ),
            inter_op_threads=(
                config.inter_op_threads
                if config.inter_op_threads is not None
                else settings.inter_op_threads
            ),
        )
    if source.backend == "int8":
        from headrace.backends.int8 import Int8Backend

        return Int8Backend(source.path)
    raise ConfigError(f"{source.path}: backend '{source.backend}' is not available in this build")


def _deadline_ns(timeout_us: int, timeout_s: float | None) -> int:
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


def _batcher_config(config: ModelConfig, max_batch_size: int) -> Any:
    batching = config.batching
    delay = batching.max_queue_delay_us
    preferred = [size for size in batching.preferred_batch_sizes if size <= max_batch_size]
    try:
        core_config = _core.BatcherConfig(
            max_batch_size=max_batch_size,
            instances=max(1, config.instances),
            max_queue_delay_us=0 if delay == "auto" else delay,
            auto_delay=delay == "auto",
            preferred_batch_sizes=preferred,
            max_queue_size=batching.max_queue_size,
            priority_levels=batching.priority_levels,
            default_priority_level=batching.default_priority_level
            or (batching.priority_levels if batching.priority_levels else 0),
            default_timeout_us=batching.default_timeout_us,
            latency_target_us=batching.latency_target_us,
        )
        core_config.validate()
    except _core.CoreError as error:
        raise ConfigError(f"{config.source}: {error.args[-1]}") from None
    return core_config


def _check_utf8(name: str, array: npt.NDArray[Any]) -> None:
    if array.dtype.kind != "O":
        return
    for index, value in enumerate(array.reshape(-1)):
        if isinstance(value, bytes):
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidArgumentError(
                    f"input '{name}': BYTES element {index} is not valid UTF-8 "
                    "(ONNX Runtime string tensors hold UTF-8 text)"
                ) from None


def _utf8_texts(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    texts = np.empty(array.shape, dtype=object)
    flat = texts.reshape(-1)
    for index, value in enumerate(array.reshape(-1)):
        flat[index] = value.decode("utf-8") if isinstance(value, bytes) else value
    return texts


class ModelVersion:
    """A loaded, warmed-up version of a model; safe to call from several threads."""

    def __init__(
        self,
        source: VersionSource,
        config: ModelConfig,
        settings: ServerSettings,
        metrics: Metrics,
        completions: CompletionRouter,
    ) -> None:
        self.name = config.name
        self.version = source.version
        self.version_str = str(source.version)
        self.directory = source.path.parent
        self.config = config
        self.settings = settings
        self.backend = _load_backend(source, config, settings)
        self.inputs = _apply_declared(config.inputs, self.backend.inputs, "input", config)
        self.outputs = _apply_declared(config.outputs, self.backend.outputs, "output", config)
        self.max_batch_size = _resolve_max_batch_size(config, self.inputs)
        self._input_by_name = {s.name: s for s in self.inputs}
        self._input_names = [s.name for s in self.inputs]
        self._output_names = [s.name for s in self.outputs]
        self.output_datatypes = {s.name: s.datatype for s in self.outputs}
        self.stats = VersionStatistics(self.name, self.version_str)
        self._stats_lock = threading.Lock()
        self._metrics = metrics
        self._labels = (self.name, self.version_str)
        # Labelled children looked up once: labels() costs a dict lookup and a lock per call.
        self._duration_histogram = metrics.request_duration.labels(*self._labels)
        self._bytes_inputs = [s.name for s in self.inputs if s.datatype == "BYTES"]
        self._completions = completions
        self.warm_up()
        # Drift counting for versions that ship a reference profile (monitoring/serving.py).
        self.drift_reference = reference_stamp(self.directory)
        self.drift = load_served_drift(
            self.directory, self.name, self.version_str, config.drift, metrics.drift
        )
        # Batched models go through the native batcher (queue, deadlines, priorities, one copy
        # into the batch buffer); the others run one request per call on instance threads.
        self._batcher: Any = None
        self._native_drift: Any = None
        self._executor: ThreadPoolExecutor | None = None
        if self.max_batch_size > 0:
            # A backend with a native runner (int8; ONNX Runtime through its C API) runs batches
            # without Python or the GIL.
            native = self.backend.batch_runner(self._input_names, self._output_names)
            if self.drift is not None:
                # Drift of numerical FP32 profiles is counted by the batcher in C++ after each run;
                # a profile with categories (or other tensors) is counted in _run_batch, so such
                # a model runs its batches through Python.
                all_fp32 = all(t.datatype == "FP32" for t in (*self.inputs, *self.outputs))
                self._native_drift = (
                    self.drift.native_counts(self._input_names, self._output_names)
                    if all_fp32
                    else None
                )
                if self._native_drift is None:
                    native = None
            self._batcher = _core.Batcher(
                f"{self.name}:{self.version_str}",
                _batcher_config(config, self.max_batch_size),
                native if native is not None else self._run_batch,
                completions.queue,
                drift=self._native_drift,
            )
        else:
            self._executor = ThreadPoolExecutor(
                max_workers=max(1, config.instances), thread_name_prefix=f"headrace-{self.name}"
            )
        metrics.track(self)
        if self.drift is not None:
            metrics.drift_watcher.register(self.drift)

    # -- validation -------------------------------------------------------------------------

    def check_inputs(
        self,
        inputs: Mapping[str, npt.NDArray[Any]],
        requested_outputs: Sequence[str] | None,
        declared_datatypes: Mapping[str, str] | None = None,
    ) -> list[str]:
        """Validate names, datatypes and shapes; returns the output names to compute."""
        for name in inputs:
            if name not in self._input_by_name:
                raise InvalidArgumentError(
                    f"unknown input '{name}' for model '{self.name}' "
                    f"(expects: {', '.join(self._input_by_name)})"
                )
        rows: int | None = None
        for spec in self.inputs:
            array = inputs.get(spec.name)
            if array is None:
                raise InvalidArgumentError(f"missing input '{spec.name}' for model '{self.name}'")
            declared = declared_datatypes.get(spec.name) if declared_datatypes else None
            if declared is not None:
                if declared != spec.datatype:
                    raise InvalidArgumentError(
                        f"input '{spec.name}': datatype {declared} but model '{self.name}' "
                        f"expects {spec.datatype}"
                    )
            else:
                expected = DATATYPE_TO_NUMPY[spec.datatype]
                ok = array.dtype == expected or (
                    spec.datatype == "BYTES" and array.dtype.kind in ("O", "U", "S")
                )
                if not ok:
                    raise InvalidArgumentError(
                        f"input '{spec.name}': numpy dtype {array.dtype} but model "
                        f"'{self.name}' expects {spec.datatype}"
                    )
            shape = array.shape
            if len(shape) != len(spec.shape) or any(
                m != -1 and d != m for d, m in zip(shape, spec.shape, strict=True)
            ):
                raise InvalidArgumentError(
                    f"input '{spec.name}': shape {list(shape)} does not match model "
                    f"'{self.name}' shape {list(spec.shape)} (-1 is any size)"
                )
            if spec.datatype == "BYTES":
                _check_utf8(spec.name, array)
            if self.max_batch_size > 0:
                if rows is None:
                    rows = shape[0]
                elif shape[0] != rows:
                    raise InvalidArgumentError(
                        f"input '{spec.name}': batch dimension {shape[0]} differs from the "
                        f"other inputs' {rows}"
                    )
        if not requested_outputs:
            return list(self._output_names)
        seen: set[str] = set()
        for name in requested_outputs:
            if name not in self._output_names:
                raise InvalidArgumentError(
                    f"unknown requested output '{name}' for model '{self.name}' "
                    f"(has: {', '.join(self._output_names)})"
                )
            if name in seen:
                raise InvalidArgumentError(f"output '{name}' is requested twice")
            seen.add(name)
        return list(requested_outputs)

    # -- execution --------------------------------------------------------------------------

    def prepare_inputs(self, inputs: Mapping[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        """Inputs as ONNX Runtime takes them: its string tensors hold UTF-8 text and its Python
        API takes ``str``, so BYTES elements (checked as UTF-8 by check_inputs) are decoded."""
        prepared = dict(inputs)
        for name in self._bytes_inputs:
            array = prepared[name]
            if array.dtype.kind == "O" and array.size:
                prepared[name] = _utf8_texts(array)
        return prepared

    def _rows(self, inputs: Mapping[str, npt.NDArray[Any]]) -> int:
        if self.max_batch_size > 0 and self.inputs:
            return int(inputs[self.inputs[0].name].shape[0])
        return 1

    def _run_batch(self, arrays: list[npt.NDArray[Any]]) -> list[npt.NDArray[Any]]:
        """The batcher's runner: called on a core worker thread, holding the GIL only here.
        Computes every output; each caller gets its rows of the outputs it asked for."""
        feed = dict(zip(self._input_names, arrays, strict=True))
        for name in self._bytes_inputs:
            # The core hands BYTES back as bytes; ONNX Runtime wants str (validated UTF-8).
            feed[name] = _utf8_texts(feed[name])
        outputs = self.backend.run(feed, self._output_names)
        if self.drift is not None and self._native_drift is None:
            self.drift.observe(feed, outputs, self._output_names)
        return outputs

    def _execute(
        self, inputs: Mapping[str, npt.NDArray[Any]], output_names: Sequence[str], enqueue_ns: int
    ) -> dict[str, npt.NDArray[Any]]:
        start_ns = time.perf_counter_ns()
        try:
            arrays = self.backend.run(inputs, output_names)
        except HeadraceError:
            raise
        except Exception as error:  # a model's own failure: INTERNAL with its message
            raise InternalError(f"model '{self.name}' failed: {error}") from error
        end_ns = time.perf_counter_ns()
        if self.drift is not None:
            self.drift.observe(inputs, arrays, output_names)
        self._record_execution(self._rows(inputs), start_ns - enqueue_ns, end_ns - start_ns)
        return dict(zip(output_names, arrays, strict=True))

    def _submit(
        self, inputs: Mapping[str, npt.NDArray[Any]], priority: int, deadline_ns: int
    ) -> tuple[int, Outputs | None]:
        """Queue a request: (ticket, None), or (ticket, outputs) when its batch was cheap enough
        to run right here (its completion is then taken at once: no wake-up, no future)."""
        arrays = [inputs[name] for name in self._input_names]
        try:
            ticket, ran_here = self._batcher.submit_or_run(arrays, priority, deadline_ns)
        except _core.CoreError as error:
            raise from_core_error(error) from None
        if ran_here:
            return ticket, self._completions.take_now(ticket)
        return ticket, None

    def _pick(
        self, outputs: list[npt.NDArray[Any]], output_names: Sequence[str]
    ) -> dict[str, npt.NDArray[Any]]:
        by_name = dict(zip(self._output_names, outputs, strict=True))
        if output_names == self._output_names:  # all of them, in the model's order
            return by_name
        return {name: by_name[name] for name in output_names}

    def _record_execution(self, rows: int, queue_ns: int, compute_ns: int) -> None:
        with self._stats_lock:
            s = self.stats
            s.inference_count += rows
            s.execution_count += 1
            s.queue_count += 1
            s.queue_ns += queue_ns
            s.compute_count += 1
            s.compute_ns += compute_ns
            s.last_inference_ms = int(time.time() * 1000)
            batch = s.batches.setdefault(rows, BatchStatistics())
            batch.count += 1
            batch.compute_ns += compute_ns

    def _record_request(self, ok: bool, duration_ns: int, error: HeadraceError | None) -> None:
        with self._stats_lock:
            if ok:
                self.stats.success_count += 1
                self.stats.success_ns += duration_ns
            else:
                self.stats.fail_count += 1
                self.stats.fail_ns += duration_ns
        if ok:  # the success count is exported from self.stats at scrape time
            self._duration_histogram.observe(duration_ns / 1e9)
        else:
            code = error.code.name if error is not None else "INTERNAL"
            self._metrics.request_failure.labels(*self._labels, code).inc()

    def infer(
        self,
        inputs: Mapping[str, npt.NDArray[Any]],
        output_names: Sequence[str],
        priority: int = 0,
        deadline_ns: int = 0,
    ) -> dict[str, npt.NDArray[Any]]:
        """Run one validated request, blocking the calling thread until it is answered."""
        start_ns = time.perf_counter_ns()
        try:
            if self._batcher is not None:
                ticket, done = self._submit(inputs, priority, deadline_ns)
                if done is None:
                    done = self._completions.wait(ticket)
                outputs = self._pick(done, output_names)
            else:
                outputs = self._execute(self.prepare_inputs(inputs), output_names, start_ns)
        except HeadraceError as error:
            self._record_request(False, time.perf_counter_ns() - start_ns, error)
            raise
        self._record_request(True, time.perf_counter_ns() - start_ns, None)
        return outputs

    async def infer_async(
        self,
        inputs: Mapping[str, npt.NDArray[Any]],
        output_names: Sequence[str],
        priority: int = 0,
        deadline_ns: int = 0,
    ) -> dict[str, npt.NDArray[Any]]:
        """Run one validated request; the event loop only awaits (a cancelled caller's request
        leaves the batcher's queue)."""
        start_ns = time.perf_counter_ns()
        try:
            if self._batcher is not None:
                ticket, done = self._submit(inputs, priority, deadline_ns)
                if done is None:
                    future = self._completions.future_for(ticket)
                    try:
                        done = await future
                    except asyncio.CancelledError:
                        self._batcher.cancel(ticket)
                        self._completions.abandon(ticket)
                        raise
                outputs = self._pick(done, output_names)
            else:
                if deadline_ns and _core.monotonic_ns() >= deadline_ns:
                    raise DeadlineExceededError(f"model '{self.name}': deadline passed")
                loop = asyncio.get_running_loop()
                assert self._executor is not None
                outputs = await loop.run_in_executor(
                    self._executor,
                    self._execute,
                    self.prepare_inputs(inputs),
                    output_names,
                    start_ns,
                )
        except HeadraceError as error:
            self._record_request(False, time.perf_counter_ns() - start_ns, error)
            raise
        self._record_request(True, time.perf_counter_ns() - start_ns, None)
        return outputs

    def warm_up(self) -> None:
        """Run the model once on zeros (dynamic dims as 1) before it takes traffic."""
        inputs: dict[str, npt.NDArray[Any]] = {}
        for spec in self.inputs:
            shape = tuple(1 if d == -1 else d for d in spec.shape)
            if spec.datatype == "BYTES":
                inputs[spec.name] = np.full(shape, b"", dtype=object)
            else:
                inputs[spec.name] = np.zeros(shape, dtype=DATATYPE_TO_NUMPY[spec.datatype])
        try:
            self.backend.run(self.prepare_inputs(inputs), self._output_names)
        except Exception as error:  # a model may reject zeros; that is no reason to refuse it
            log.warning(
                "model %s version %s: warm-up run failed: %s", self.name, self.version, error
            )

    def statistics(self) -> VersionStatistics:
        with self._stats_lock:
            s = self.stats
            result = VersionStatistics(
                **{k: getattr(s, k) for k in s.__dataclass_fields__ if k != "batches"},
                batches={k: BatchStatistics(v.count, v.compute_ns) for k, v in s.batches.items()},
            )
        if self._batcher is not None:
            # Execution-side numbers are kept by the scheduler itself.
            core = self._batcher.stats()
            result.inference_count = int(core["inference_count"])
            result.execution_count = int(core["execution_count"])
            result.queue_count = int(core["queue_count"])
            result.queue_ns = int(core["queue_ns"])
            result.compute_count = int(core["compute_count"])
            result.compute_ns = int(core["compute_ns"])
            result.last_inference_ms = int(core["last_inference_ms"])
            result.pending_requests = int(core["pending_requests"])
            result.shed_count = int(core["shed_count"])
            result.expired_count = int(core["expired_count"])
            result.cancelled_count = int(core["cancelled_count"])
            result.rejected_count = int(core["rejected_count"])
            result.batches = {
                int(rows): BatchStatistics(int(entry["count"]), int(entry["compute_ns"]))
                for rows, entry in core["batch_sizes"].items()
            }
        return result

    def close(self) -> None:
        """Stop taking work; what is queued runs first, then the resources go."""
        if self._batcher is not None:
            self._batcher.shutdown(drain=True)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self._metrics.untrack(self)
        if self.drift is not None:
            self._metrics.drift_watcher.unregister(self.drift)
            self.drift.close()


@dataclass
class _Model:
    name: str
    config: ModelConfig | None
    versions: dict[int, ModelVersion]
    state: str
    reason: str = ""
    latest: ModelVersion | None = None  # served when no version is asked for (set on init)

    def __post_init__(self) -> None:
        self.latest = self.versions[max(self.versions)] if self.versions else None


class Engine:
    """Loads a model repository and serves inference in-process."""

    def __init__(self, settings: ServerSettings | None = None, *, metrics: Metrics | None = None):
        self.settings = settings if settings is not None else ServerSettings()
        self.metrics = metrics if metrics is not None else Metrics()
        self._repository = (
            FilesystemRepository(Path(self.settings.model_repository))
            if self.settings.model_repository is not None
            else None
        )
        self._models: dict[str, _Model] = {}
        self.completions = CompletionRouter()
        self._lock = threading.RLock()  # serialises load/unload; reads take a snapshot
        self._closed = False

    @classmethod
    def from_repository(cls, path: str | Path, **settings: Any) -> Engine:
        """An engine with every model of ``path`` loaded (failures are reported, not raised)."""
        engine = cls(ServerSettings(model_repository=Path(path), **settings))
        engine.load_repository()
        return engine

    # -- repository --------------------------------------------------------------------------

    def load_repository(self) -> None:
        """Load every model of the repository; a model that fails is reported and skipped."""
        if self._repository is None:
            return
        for name in self._repository.model_names():
            try:
                self.load_model(name)
            except HeadraceError:
                continue  # reported by load_model: state UNAVAILABLE with the reason, a log line

    def load_model(self, name: str) -> None:
        """(Re)load a model from the repository. New versions load and warm up first; only then
        do they replace the old ones, which drain. A failure leaves the old versions serving."""
        if self._repository is None:
            raise UnavailableError("this engine has no model repository")
        with self._lock:
            previous = self._models.get(name)
            try:
                source = self._repository.read(name)
            except NotFoundError:
                raise  # nothing to report in the index for a model that does not exist
            except HeadraceError as error:
                self._record_failure(name, previous, error.message)
                raise
            try:
                versions = self._load_versions(source, previous)
            except HeadraceError as error:
                self._record_failure(name, previous, error.message)
                raise
            except Exception as error:
                message = f"{type(error).__name__}: {error}"
                self._record_failure(name, previous, message)
                raise UnavailableError(f"model '{name}' failed to load: {message}") from error
            self._models[name] = _Model(name, source.config, versions, "READY")
            if previous is not None:
                for number, old in previous.versions.items():
                    if versions.get(number) is not old:
                        old.close()
        log.info("model %s ready, versions %s", name, sorted(versions))

    def _load_versions(
        self, source: ModelSource, previous: _Model | None
    ) -> dict[int, ModelVersion]:
        versions: dict[int, ModelVersion] = {}
        for version_source in source.versions:
            old = previous.versions.get(version_source.version) if previous else None
            if (
                old is not None
                and previous is not None
                and previous.config == source.config
                and old.drift_reference == reference_stamp(old.directory)
            ):
                versions[version_source.version] = old
                continue
            versions[version_source.version] = ModelVersion(
                version_source, source.config, self.settings, self.metrics, self.completions
            )
        return versions

    def _record_failure(self, name: str, previous: _Model | None, reason: str) -> None:
        log.error("model %s failed to load: %s", name, reason)
        if previous is not None and previous.versions:
            previous.reason = f"last reload failed: {reason}"
            return
        self._models[name] = _Model(name, None, {}, "UNAVAILABLE", reason)

    def unload_model(self, name: str) -> None:
        """Stop serving a model; requests already running finish."""
        with self._lock:
            model = self._models.get(name)
            if model is None or model.state != "READY":
                raise NotFoundError(f"model '{name}' is not loaded")
            self._models[name] = _Model(name, model.config, {}, "UNAVAILABLE", "unloaded")
        for version in model.versions.values():
            version.close()

    def repository_index(self, ready_only: bool = False) -> list[ModelIndexEntry]:
        entries: list[ModelIndexEntry] = []
        names = set(self._models)
        if self._repository is not None and not ready_only:
            names.update(self._repository.model_names())
        for name in sorted(names):
            model = self._models.get(name)
            if model is None:
                entries.append(ModelIndexEntry(name, "", "UNAVAILABLE", "not loaded"))
            elif model.versions:
                entries.extend(
                    ModelIndexEntry(name, str(v), "READY", model.reason)
                    for v in sorted(model.versions)
                )
            elif not ready_only:
                entries.append(ModelIndexEntry(name, "", model.state, model.reason))
        return entries

    # -- lookup ------------------------------------------------------------------------------

    def model_names(self) -> list[str]:
        return sorted(name for name, m in self._models.items() if m.versions)

    def get_version(self, name: str, version: str | int | None = None) -> ModelVersion:
        """The version that serves ``name`` (latest loaded when ``version`` is empty)."""
        model = self._models.get(name)
        if model is None or not model.versions:
            raise NotFoundError(
                f"unknown model '{name}'"
                if model is None
                else f"model '{name}' is not ready: {model.reason}"
            )
        if version is None or version == "":
            assert model.latest is not None  # versions is not empty
            return model.latest
        try:
            number = int(version)
        except ValueError:
            raise NotFoundError(f"model '{name}' has no version '{version}'") from None
        found = model.versions.get(number)
        if found is None:
            raise NotFoundError(
                f"model '{name}' has no version '{version}' "
                f"(serving: {', '.join(str(v) for v in sorted(model.versions))})"
            )
        return found

    def is_model_ready(self, name: str, version: str | int | None = None) -> bool:
        try:
            self.get_version(name, version)
        except NotFoundError:
            return False
        return True

    def model_config(self, name: str, version: str | int | None = None) -> ModelVersion:
        return self.get_version(name, version)

    def metadata(self, name: str, version: str | int | None = None) -> ModelMetadata:
        served = self.get_version(name, version)
        model = self._models[name]
        return ModelMetadata(
            name=name,
            versions=tuple(str(v) for v in sorted(model.versions)),
            platform=served.backend.platform,
            inputs=served.inputs,
            outputs=served.outputs,
        )

    def drift(self, name: str, version: str | int | None = None) -> ServedDrift:
        """Drift monitoring of a served version (``.report(windows)`` for its statistics);
        NotFoundError when the model or version is unknown or ships no reference profile."""
        served = self.get_version(name, version)
        if served.drift is None:
            raise NotFoundError(
                f"model '{name}' version {served.version_str} has no drift reference profile "
                "(make one with `headrace profile`)"
            )
        return served.drift

    def statistics(self, name: str = "", version: str = "") -> list[VersionStatistics]:
        if name:
            if version:
                return [self.get_version(name, version).statistics()]
            model = self._models.get(name)
            if model is None or not model.versions:
                raise NotFoundError(f"unknown model '{name}'")
            return [model.versions[v].statistics() for v in sorted(model.versions)]
        return [
            m.versions[v].statistics()
            for _, m in sorted(self._models.items())
            for v in sorted(m.versions)
        ]

    # -- inference ---------------------------------------------------------------------------

    def infer(
        self,
        model: str,
        inputs: Mapping[str, npt.NDArray[Any]],
        version: str | int | None = None,
        outputs: Sequence[str] | None = None,
        *,
        request_id: str = "",
        priority: int = 0,
        timeout_us: int = 0,
    ) -> InferResult:
        """Run ``model`` on numpy ``inputs`` in the calling thread; blocks until done.

        ``priority`` (1 is highest, 0 the model's default) and ``timeout_us`` (time allowed in
        the queue; 0 for the model's default) have Triton's meaning."""
        served = self.get_version(model, version)
        inputs = {k: np.asarray(v) for k, v in inputs.items()}
        names = served.check_inputs(inputs, outputs)
        result = served.infer(inputs, names, priority, _deadline_ns(timeout_us, None))
        return InferResult(model, served.version_str, result, request_id, served.output_datatypes)

    async def infer_async(
        self,
        model: str,
        inputs: Mapping[str, npt.NDArray[Any]],
        version: str | int | None = None,
        outputs: Sequence[str] | None = None,
        *,
        request_id: str = "",
        declared_datatypes: Mapping[str, str] | None = None,
        priority: int = 0,
        timeout_us: int = 0,
        timeout_s: float | None = None,
    ) -> InferResult:
        """As :meth:`infer`, awaitable; the model runs off the event loop. ``timeout_s`` is the
        caller's remaining time (a gRPC deadline); the earlier of it and ``timeout_us`` wins."""
        served = self.get_version(model, version)
        names = served.check_inputs(inputs, outputs, declared_datatypes)
        result = await served.infer_async(
            inputs, names, priority, _deadline_ns(timeout_us, timeout_s)
        )
        return InferResult(model, served.version_str, result, request_id, served.output_datatypes)

    def close(self) -> None:
        """Drain and release every model."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            models = list(self._models.values())
            self._models = {}
        for model in models:
            for version in model.versions.values():
                version.close()
