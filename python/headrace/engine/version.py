"""A loaded model version: its backend, its specs, how it executes, its statistics and drift.

Construction only loads (no threads, no traffic); ``start`` builds the execution (batcher or
instance threads) and warms the version up through it, so a version that cannot run never takes
traffic. Safe to call from several threads once started.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from headrace.backends.base import Backend
from headrace.config import DriftSettings, ModelConfig, ServerSettings
from headrace.datatypes import DATATYPE_TO_NUMPY
from headrace.engine.completions import CompletionRouter
from headrace.engine.execution import BatchedExecution, DirectExecution, Execution
from headrace.engine.features import (
    EngineFeatures,
    VersionFeatures,
    build_version_features,
    expanded,
)
from headrace.engine.validation import (
    RequestValidator,
    apply_declared,
    resolve_max_batch_size,
    utf8_texts,
    zero_inputs,
)
from headrace.errors import ConfigError, HeadraceError, UnavailableError, runner_failure
from headrace.monitoring.drift.served import ServedDrift, load_served_drift, reference_stamp
from headrace.monitoring.metrics import Metrics
from headrace.native import core as _core
from headrace.thread_policy import run_at_idle_priority
from headrace.types import InputTensor, TensorSpec, VersionStatistics, as_array

log = logging.getLogger(__name__)

# A version's warm-up request, when zeros are not a valid input for the model.
WARMUP_FILE = "warmup.npz"


def load_backend(
    path: Path, backend: str, config: ModelConfig, settings: ServerSettings
) -> Backend:
    """The backend for a version's model file (``model.onnx`` or ``model.int8``)."""
    if backend == "onnxruntime":
        from headrace.backends.onnx import OnnxBackend

        return OnnxBackend(
            path,
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
    if backend == "int8":
        from headrace.backends.int8_cuda import load_int8_backend

        return load_int8_backend(path, config.int8.device)
    raise ConfigError(f"{path}: backend '{backend}' is not available in this build")


def batcher_config(config: ModelConfig, max_batch_size: int) -> Any:
    """The core's BatcherConfig from the model's ``[batching]`` table."""
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
    except HeadraceError as error:
        raise ConfigError(f"{config.source}: {error.message}") from None
    return core_config


class ModelVersion:
    """One version of a model: loaded by the constructor, serving after ``start``."""

    def __init__(
        self,
        name: str,
        version: int,
        model_file: Path,
        backend_name: str,
        config: ModelConfig,
        settings: ServerSettings,
        metrics: Metrics,
        features: EngineFeatures | None = None,
    ) -> None:
        self.name = name
        self.version = version
        self.version_str = str(version)
        self.directory = model_file.parent
        self.model_file = model_file
        self.config = config
        self._trust_triggers = settings.trust_model_triggers
        self.backend = load_backend(model_file, backend_name, config, settings)
        try:
            self.inputs: tuple[TensorSpec, ...] = apply_declared(
                config.inputs, self.backend.inputs, "input", config
            )
            self.outputs: tuple[TensorSpec, ...] = apply_declared(
                config.outputs, self.backend.outputs, "output", config
            )
            self.max_batch_size = resolve_max_batch_size(config, self.inputs)
        except BaseException:
            self.backend.close()
            raise
        self.validator = RequestValidator(
            name, self.inputs, self.outputs, batched=self.max_batch_size > 0
        )
        # What the model itself takes. A features model's clients send other inputs (``inputs``
        # and ``validator`` become theirs at start); the batcher and warm-up take these.
        self.model_inputs = self.inputs
        self._model_validator = self.validator
        # A version built without an engine's (tests, tools) gets one of its own, closed with it.
        self._features_shared = features if features is not None else EngineFeatures()
        self._owns_features_shared = features is None
        self.features: VersionFeatures | None = None
        self._input_names = [s.name for s in self.inputs]
        self._output_names = [s.name for s in self.outputs]
        self.output_datatypes = {s.name: s.datatype for s in self.outputs}
        self._bytes_inputs = [s.name for s in self.inputs if s.datatype == "BYTES"]
        self._metrics = metrics
        self._stats_lock = threading.Lock()
        self._success_count = 0
        self._success_ns = 0
        self._fail_count = 0
        self._fail_ns = 0
        self.drift_reference = reference_stamp(self.directory)
        self.drift: ServedDrift | None = None
        self._native_drift: Any = None
        self.execution: Execution | None = None
        self.input_example: Path | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, completions: CompletionRouter, input_example: Path | None = None) -> None:
        """Build the execution and warm up through it; raises (and releases) if it cannot run.
        ``input_example``: a registry's sample request (MLflow's ``input_example.json``)."""
        self.input_example = input_example
        try:
            self._start_features()
            self.drift = load_served_drift(
                self.directory,
                self.name,
                self.version_str,
                self._drift_settings(),
                self._metrics.drift,
            )
            self.execution = self._build_execution(completions)
            self._warm_up()
        except BaseException:
            self.close()
            raise
        self._metrics.track(self)
        if self.drift is not None:
            self._metrics.drift_watcher.register(self.drift)

    def _start_features(self) -> None:
        """The feature joiner of a model with ``[features]``; clients then see its inputs."""
        if self.config.features is None:
            return
        source = self.config.source
        self.features = build_version_features(
            self.name,
            self.version_str,
            self.config.features,
            source,
            source.parent if source is not None else self.directory.parent,
            self.model_inputs,
            self._features_shared,
            batched=self.max_batch_size > 0,
        )
        self.inputs = self.features.client_inputs
        self.validator = RequestValidator(
            self.name,
            self.inputs,
            self.outputs,
            batched=self.max_batch_size > 0,
            owned=self.features.owned,
        )

    def _drift_settings(self) -> DriftSettings:
        """The [drift] table; its retraining trigger only when the repository is trusted with
        commands (a trigger runs with the server's rights: whoever can write a model.toml could
        otherwise run anything)."""
        drift = self.config.drift
        if self._trust_triggers or (
            drift.trigger_command is None and drift.trigger_webhook is None
        ):
            return drift
        log.warning(
            "model %s: [drift] trigger ignored; start the server with --trust-model-triggers "
            "to let model.toml files run retraining commands or call webhooks",
            self.name,
        )
        return drift.model_copy(update={"trigger_command": None, "trigger_webhook": None})

    def _build_execution(self, completions: CompletionRouter) -> Execution:
        if self.max_batch_size <= 0:
            return DirectExecution(self.name, self.config.instances, self._run_direct, self._rows)
        # A backend with a native runner (int8; ONNX Runtime through its C API) runs batches
        # without Python or the GIL.
        native = self.backend.batch_runner(self._input_names, self._output_names)
        if self.drift is not None:
            # Drift of numerical FP32 profiles is counted by the batcher in C++ after each run;
            # a profile with categories (or other tensors) is counted in _run_batch, so such a
            # model runs its batches through Python.
            all_fp32 = all(t.datatype == "FP32" for t in (*self.model_inputs, *self.outputs))
            self._native_drift = (
                self.drift.native_counts(self._input_names, self._output_names)
                if all_fp32
                else None
            )
            if self._native_drift is None:
                native = None
        return BatchedExecution(
            f"{self.name}:{self.version_str}",
            batcher_config(self.config, self.max_batch_size),
            native if native is not None else self._run_batch,
            completions,
            self._input_names,
            self._output_names,
            drift=self._native_drift,
        )

    def warm_up_inputs(self) -> dict[str, npt.NDArray[Any]]:
        """The version's warm-up sample: ``warmup.npz`` beside the model file (one array per
        input), else the registry's input example, else zeros of each input's shape with
        dynamic dims as 1. These are the model's own inputs, for a features model too (``into``
        included): the store is not asked, so a version loads while its store is down."""
        sample = self.directory / WARMUP_FILE
        if not sample.is_file():
            if self.input_example is not None:
                return self._example_inputs(self.input_example)
            return zero_inputs(self.model_inputs)
        try:
            with np.load(sample, allow_pickle=False) as arrays:
                inputs = {name: arrays[name] for name in arrays.files}
        except (OSError, ValueError) as error:
            raise ConfigError(f"{sample}: not a readable .npz of input arrays: {error}") from None
        try:
            self._model_validator.check(inputs, None)
        except HeadraceError as error:
            raise ConfigError(f"{sample}: {error.message}") from None
        return inputs

    def _example_inputs(self, path: Path) -> dict[str, npt.NDArray[Any]]:
        from headrace.registry.example import read_input_example

        try:
            inputs = read_input_example(path).arrays(
                {s.name: DATATYPE_TO_NUMPY[s.datatype] for s in self.model_inputs}
            )
            if self.max_batch_size > 0:  # an example longer than a batch: its first rows
                inputs = {k: v[: self.max_batch_size] for k, v in inputs.items()}
            self._model_validator.check(inputs, None)
        except HeadraceError as error:
            raise ConfigError(f"input example {path}: {error.message}") from None
        return inputs

    def _warm_up(self) -> None:
        """One request through the model's runner (the native session or int8 model that
        serves batches, or the Python path) before traffic; a failure fails the load."""
        try:
            self.backend.run(self.prepare_inputs(self.warm_up_inputs()), self._output_names)
        except HeadraceError as error:
            raise UnavailableError(
                f"model '{self.name}' version {self.version}: warm-up failed: {error.message}"
            ) from error
        except Exception as error:
            raise UnavailableError(
                f"model '{self.name}' version {self.version}: warm-up failed: "
                f"{type(error).__name__}: {error}"
            ) from error

    def close(self) -> None:
        """Stop taking work; what was accepted runs first, then the resources go."""
        if self.execution is not None:
            self.execution.close()
        if self.features is not None:
            self.features.close()
        if self._owns_features_shared:
            self._features_shared.close()
        self._metrics.untrack(self)
        if self.drift is not None:
            self._metrics.drift_watcher.unregister(self.drift)
            self.drift.close()
        self.backend.close()

    # -- running -----------------------------------------------------------------------------

    def check_inputs(
        self,
        inputs: Mapping[str, InputTensor],
        requested_outputs: Sequence[str] | None,
        declared_datatypes: Mapping[str, str] | None = None,
    ) -> list[str]:
        """Validate names, datatypes and shapes; returns the output names to compute."""
        return self.validator.check(inputs, requested_outputs, declared_datatypes)

    def prepare_inputs(self, inputs: Mapping[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        """Inputs as ONNX Runtime takes them: its string tensors hold UTF-8 text and its Python
        API takes ``str``, so BYTES elements (checked as UTF-8 by check_inputs) are decoded."""
        prepared = dict(inputs)
        for name in self._bytes_inputs:
            array = prepared[name]
            if array.dtype.kind == "O" and array.size:
                prepared[name] = utf8_texts(array)
        return prepared

    def _rows(self, inputs: Mapping[str, npt.NDArray[Any]]) -> int:
        if self.max_batch_size > 0 and self.model_inputs:
            return int(inputs[self.model_inputs[0].name].shape[0])
        return 1

    def _run_direct(
        self,
        inputs: Mapping[str, npt.NDArray[Any]],
        output_names: Sequence[str],
        idle: bool = False,
    ) -> list[npt.NDArray[Any]]:
        prepared = self.prepare_inputs(inputs)
        arrays: list[npt.NDArray[Any]]
        if idle:  # a shadow copy: the backend's run alone at idle CPU priority
            native_idle = getattr(self.backend, "run_idle", None)
            arrays = run_at_idle_priority(self.backend.run, native_idle, prepared, output_names)
        else:
            arrays = self.backend.run(prepared, output_names)
        if self.drift is not None:
            self.drift.observe(prepared, arrays, output_names)
        return arrays

    def run_copy(
        self,
        inputs: Mapping[str, InputTensor],
        output_names: Sequence[str],
        idle: bool = False,
    ) -> dict[str, npt.NDArray[Any]]:
        """Run validated inputs on the calling thread, outside the batcher (a shadow copy:
        engine/shadows.py), the backend's run alone at idle CPU priority with ``idle``. Counted
        in Triton's request statistics and in drift like any run; a runner's failure reads as
        every runner failure does."""
        start_ns = time.perf_counter_ns()
        try:
            expanded = {n: as_array(t) for n, t in inputs.items()}
            arrays = self._run_direct(expanded, output_names, idle)
        except HeadraceError as error:
            self._record_request(False, time.perf_counter_ns() - start_ns, error)
            raise
        except Exception as error:
            failure = runner_failure(error)
            self._record_request(False, time.perf_counter_ns() - start_ns, failure)
            raise failure from error
        self._record_request(True, time.perf_counter_ns() - start_ns, None)
        return dict(zip(output_names, arrays, strict=True))

    def _run_batch(self, arrays: list[npt.NDArray[Any]]) -> list[npt.NDArray[Any]]:
        """The batcher's Python runner: called on a core worker thread, holding the GIL only
        here. Computes every output; each caller gets its rows of the outputs it asked for."""
        feed = dict(zip(self._input_names, arrays, strict=True))
        for name in self._bytes_inputs:
            # The core hands BYTES back as bytes; ONNX Runtime wants str (validated UTF-8).
            feed[name] = utf8_texts(feed[name])
        outputs = self.backend.run(feed, self._output_names)
        if self.drift is not None and self._native_drift is None:
            self.drift.observe(feed, outputs, self._output_names)
        return outputs

    def _record_request(self, ok: bool, duration_ns: int, error: HeadraceError | None) -> None:
        # Triton's statistics; the Prometheus request series (labelled by endpoint and variant
        # too) are the engine's, which knows what the client called.
        with self._stats_lock:
            if ok:
                self._success_count += 1
                self._success_ns += duration_ns
            else:
                self._fail_count += 1
                self._fail_ns += duration_ns

    def infer(
        self,
        inputs: Mapping[str, InputTensor],
        output_names: Sequence[str],
        priority: int = 0,
        deadline_ns: int = 0,
        *,
        request_id: str | None = None,
        endpoint: str | None = None,
        variant: str | None = None,
    ) -> dict[str, npt.NDArray[Any]]:
        """Run one validated request, blocking the calling thread until it is answered (see
        :meth:`infer_async` for features models and the served log)."""
        assert self.execution is not None, "version not started"
        start_ns = time.perf_counter_ns()
        try:
            if self.features is None:
                outputs = self.execution.infer(inputs, output_names, priority, deadline_ns)
            else:
                client = expanded(inputs)  # the joiner reads the entity keys' elements
                feed = self.features.assemble_blocking(client)
                outputs = self.execution.infer(feed, output_names, priority, deadline_ns)
        except HeadraceError as error:
            self._record_request(False, time.perf_counter_ns() - start_ns, error)
            raise
        self._record_request(True, time.perf_counter_ns() - start_ns, None)
        if self.features is not None and request_id is not None:
            self.features.log_served(client, feed, outputs, request_id, endpoint, variant)
        return outputs

    async def infer_async(
        self,
        inputs: Mapping[str, InputTensor],
        output_names: Sequence[str],
        priority: int = 0,
        deadline_ns: int = 0,
        *,
        request_id: str | None = None,
        endpoint: str | None = None,
        variant: str | None = None,
        inline: bool = True,
    ) -> dict[str, npt.NDArray[Any]]:
        """Run one validated request; the event loop only awaits (a cancelled caller's request
        leaves the batcher's queue). A features model takes the client's inputs and assembles
        the model's here, before the batcher; with a ``request_id`` (a client's request, not a
        shadow copy) its served rows then go to the served log, with the endpoint and variant
        that answered. ``inline=False`` keeps even a cheap batch off the calling thread."""
        assert self.execution is not None, "version not started"
        start_ns = time.perf_counter_ns()
        try:
            if self.features is None:
                outputs = await self.execution.infer_async(
                    inputs, output_names, priority, deadline_ns, inline
                )
            else:
                client = expanded(inputs)  # the joiner reads the entity keys' elements
                feed = await self.features.assemble(client)
                outputs = await self.execution.infer_async(
                    feed, output_names, priority, deadline_ns, inline
                )
        except HeadraceError as error:
            self._record_request(False, time.perf_counter_ns() - start_ns, error)
            raise
        self._record_request(True, time.perf_counter_ns() - start_ns, None)
        if self.features is not None and request_id is not None:
            self.features.log_served(client, feed, outputs, request_id, endpoint, variant)
        return outputs

    def check_deadline(self, deadline_ns: int, in_flight: int = 0) -> None:
        """Before a request is parsed: raise when even one row could not be answered before
        ``deadline_ns`` behind ``in_flight`` admitted requests (``Execution.check_deadline``);
        counted by the batcher, not here."""
        if self.execution is not None:
            self.execution.check_deadline(deadline_ns, in_flight)

    def statistics(self) -> VersionStatistics:
        result = VersionStatistics(self.name, self.version_str)
        with self._stats_lock:
            result.success_count = self._success_count
            result.success_ns = self._success_ns
            result.fail_count = self._fail_count
            result.fail_ns = self._fail_ns
        if self.execution is not None:
            self.execution.fill_statistics(result)
        return result
