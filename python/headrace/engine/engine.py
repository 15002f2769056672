"""The in-process engine: models and ``infer`` — everything the server wraps.

A Python user gets every capability of the gRPC server here without a socket::

    engine = Engine.from_repository("examples/models")
    result = engine.infer("tabular", {"x": np.ones((1, 32), np.float32)})
    result.outputs["y"]

``infer`` (blocking) and ``infer_async`` (asyncio) validate inputs against the model's metadata,
run the model version that the version policy serves, and keep Triton-style statistics and
Prometheus metrics. Model execution never happens on the event loop. Loading, swapping and
draining versions is ``registry.manager.ModelManager``'s job.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from headrace import _core
from headrace.config import ServerSettings
from headrace.engine.completions import CompletionRouter
from headrace.engine.version import ModelVersion
from headrace.errors import InvalidArgumentError, NotFoundError, UnavailableError
from headrace.monitoring.drift.served import ServedDrift
from headrace.monitoring.metrics import Metrics
from headrace.registry.filesystem import FilesystemRepository
from headrace.registry.manager import ModelManager, ServedVersion
from headrace.types import (
    InferRequest,
    InferResult,
    ModelIndexEntry,
    ModelMetadata,
    VersionStatistics,
)

# How often a request retries the lookup when its version was retired between the lookup and
# the lease (a swap in progress); the second lookup sees the new snapshot.
_LEASE_ATTEMPTS = 3


def deadline_ns(timeout_us: int, timeout_s: float | None) -> int:
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


class Engine:
    """Loads a model repository and serves inference in-process."""

    def __init__(self, settings: ServerSettings | None = None, *, metrics: Metrics | None = None):
        self.settings = settings if settings is not None else ServerSettings()
        self.metrics = metrics if metrics is not None else Metrics()
        repository = (
            FilesystemRepository(Path(self.settings.model_repository))
            if self.settings.model_repository is not None
            else None
        )
        self.completions = CompletionRouter()
        self.models = ModelManager(repository, self.settings, self.metrics, self.completions)

    @classmethod
    def from_repository(cls, path: str | Path, **settings: Any) -> Engine:
        """An engine with every model of ``path`` loaded (failures are reported, not raised)."""
        engine = cls(ServerSettings(model_repository=Path(path), **settings))
        engine.load_repository()
        return engine

    # -- repository --------------------------------------------------------------------------

    def load_repository(self) -> None:
        """Load every model of the repository; a model that fails is reported and skipped."""
        self.models.load_repository()

    def load_model(self, name: str) -> None:
        """(Re)load a model from the repository: new versions load and warm up first, then
        replace the old ones, which drain. A failure leaves the old versions serving."""
        self.models.load(name)

    def unload_model(self, name: str) -> None:
        """Stop serving a model; requests already running finish."""
        self.models.unload(name)

    def repository_index(self, ready_only: bool = False) -> list[ModelIndexEntry]:
        return self.models.index(ready_only)

    # -- lookup ------------------------------------------------------------------------------

    def model_names(self) -> list[str]:
        return sorted(name for name, m in self.models.models().items() if m.versions)

    def _served(self, name: str, version: str | int | None) -> ServedVersion:
        model = self.models.get(name)
        if model is None or not model.versions:
            raise NotFoundError(
                f"unknown model '{name}'"
                if model is None
                else f"model '{name}' is not ready: {model.reason}"
            )
        if version is None or version == "":
            latest = model.latest
            assert latest is not None  # versions is not empty
            return latest
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

    def _lease(self, name: str, version: str | int | None) -> ServedVersion:
        """The serving version, with one in-flight request counted on it (release after)."""
        for _ in range(_LEASE_ATTEMPTS):
            served = self._served(name, version)
            if served.lease.acquire():
                return served
        raise UnavailableError(f"model '{name}' is being swapped; retry")

    def get_version(self, name: str, version: str | int | None = None) -> ModelVersion:
        """The version that serves ``name`` (latest loaded when ``version`` is empty)."""
        return self._served(name, version).version

    def is_model_ready(self, name: str, version: str | int | None = None) -> bool:
        try:
            self._served(name, version)
        except NotFoundError:
            return False
        return True

    def model_config(self, name: str, version: str | int | None = None) -> ModelVersion:
        return self.get_version(name, version)

    def metadata(self, name: str, version: str | int | None = None) -> ModelMetadata:
        served = self.get_version(name, version)
        model = self.models.get(name)
        versions = model.versions if model is not None else {}
        return ModelMetadata(
            name=name,
            versions=tuple(str(v) for v in sorted(versions)),
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
            model = self.models.get(name)
            if model is None or not model.versions:
                raise NotFoundError(f"unknown model '{name}'")
            return [model.versions[v].version.statistics() for v in sorted(model.versions)]
        return [
            m.versions[v].version.statistics()
            for _, m in sorted(self.models.models().items())
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
        leased = self._lease(model, version)
        try:
            served = leased.version
            arrays = {k: np.asarray(v) for k, v in inputs.items()}
            names = served.validator.check(arrays, outputs)
            result = served.infer(arrays, names, priority, deadline_ns(timeout_us, None))
        finally:
            leased.lease.release()
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
        leased = self._lease(model, version)
        try:
            served = leased.version
            names = served.validator.check(inputs, outputs, declared_datatypes)
            result = await served.infer_async(
                inputs, names, priority, deadline_ns(timeout_us, timeout_s)
            )
        finally:
            leased.lease.release()
        return InferResult(model, served.version_str, result, request_id, served.output_datatypes)

    async def infer_request(self, request: InferRequest) -> InferResult:
        """:meth:`infer_async` of a domain request (what the server decodes)."""
        return await self.infer_async(
            request.model,
            request.inputs,
            request.version,
            request.outputs,
            request_id=request.request_id,
            declared_datatypes=request.declared_datatypes,
            priority=request.priority,
            timeout_us=request.timeout_us,
            timeout_s=request.timeout_s,
        )

    def close(self) -> None:
        """Drain and release every model."""
        self.models.close()
