"""The in-process engine: models and ``infer`` — everything the server wraps.

A Python user gets every capability of the gRPC server here without a socket::

    engine = Engine.from_repository("examples/models")
    result = engine.infer("tabular", {"x": np.ones((1, 32), np.float32)})
    result.outputs["y"]

``infer`` (blocking) and ``infer_async`` (asyncio) take an endpoint's name (see ``routing/``; a
plain model is an endpoint of one variant), let its strategy choose the variant, validate inputs
against that model's metadata, run the version it names, and keep Triton-style statistics and
Prometheus metrics. Each result says which variant answered (``parameters["headrace_variant"]``)
and carries the request id (assigned when the caller gave none) that feedback refers to. Model
execution never happens on the event loop. Loading, swapping and draining versions is
``registry.manager.ModelManager``'s job; the routing glue is ``routed.EngineRouting``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from headrace.config import ServerSettings
from headrace.engine.completions import CompletionRouter
from headrace.engine.features import EngineFeatures
from headrace.engine.lookup import lease_route, served_version
from headrace.engine.routed import EngineRouting, signature_of_version
from headrace.engine.shadows import EngineShadows
from headrace.engine.validation import deadline_ns
from headrace.engine.version import ModelVersion
from headrace.errors import HeadraceError, InvalidArgumentError, NotFoundError
from headrace.monitoring.drift.quality import QualityWindow
from headrace.monitoring.drift.served import ServedDrift
from headrace.monitoring.metrics import Metrics
from headrace.registry.filesystem import FilesystemRepository
from headrace.registry.follow import RegistryFollower
from headrace.registry.manager import ModelManager, ServedVersion
from headrace.routing import PIN_PARAMETER, Endpoints, FeedbackReceipt, RequestIds, Route
from headrace.routing.config import ModelSignature
from headrace.types import (
    InferRequest,
    InferResult,
    InputTensor,
    ModelIndexEntry,
    ModelMetadata,
    VersionStatistics,
)


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
        # Feature joiners' metrics, the served log and a loop for blocking lookups.
        self.features = EngineFeatures(self.settings.served_log, self.metrics.registry)
        self.models = ModelManager(
            repository, self.settings, self.metrics, self.completions, features=self.features
        )
        self._routing: EngineRouting | None = None
        # Shadow copies run on idle-priority threads (engine/shadows.py).
        self.shadows = EngineShadows(self.models)
        self._routing_lock = threading.Lock()
        self._ids = RequestIds()  # ids for requests sent without one (feedback refers to them)
        # MLflow aliases and the watched repository; started by the server, or in-process by
        # `await engine.registry.start()`.
        self.registry = RegistryFollower(self.settings, self.models, self.metrics)
        # A model that becomes ready by any path (repository, MLflow, the watcher) is callable
        # by name: an endpoint of one variant.
        self.models.listeners.append(self._model_published)
        # Drift monitoring judges the label quality of the variants that run a version.
        self.metrics.drift_watcher.quality_of = self.variant_quality

    @classmethod
    def from_repository(cls, path: str | Path, **settings: Any) -> Engine:
        """An engine with every model of ``path`` loaded (failures are reported, not raised)."""
        engine = cls(ServerSettings(model_repository=Path(path), **settings))
        engine.load_repository()
        return engine

    # -- repository --------------------------------------------------------------------------

    def load_repository(self) -> None:
        """Load every model of the repository (a model that fails is reported and skipped),
        then the endpoints (ConfigError / NotFoundError for one that does not fit the models)."""
        self.models.load_repository()
        routing = self.routing
        for name in self.model_names():
            routing.endpoints.add_model(name)

    def load_model(self, name: str) -> None:
        """(Re)load a model from the repository: new versions load and warm up first, then
        replace the old ones, which drain. A failure leaves the old versions serving."""
        self.models.load(name)
        if self._routing is not None:  # else built on first use, from every ready model
            self._routing.endpoints.add_model(name)

    def unload_model(self, name: str) -> None:
        """Stop serving a model; requests already running finish."""
        self.models.unload(name)
        if self._routing is not None:
            self._routing.endpoints.remove_model(name)

    def _model_published(self, name: str, ready: bool) -> None:
        routing = self._routing
        if routing is None:
            return  # built later, with every ready model
        if ready:
            routing.endpoints.add_model(name)
        else:
            routing.endpoints.remove_model(name)

    # -- endpoints ---------------------------------------------------------------------------

    @property
    def routing(self) -> EngineRouting:
        """The routing glue, built on first use from the endpoints file and state folder."""
        routing = self._routing
        if routing is None:
            with self._routing_lock:
                routing = self._routing
                if routing is None:
                    routing = EngineRouting.build(
                        self.settings,
                        self.metrics,
                        self._signature,
                        self.shadows.hooks(),
                        self.models.transitions.audit,
                        self._ids,
                    )
                    for name in self.model_names():
                        routing.endpoints.add_model(name)
                    self._routing = routing
        return routing

    @property
    def endpoints(self) -> Endpoints:
        """The endpoint table: ``create``, ``update``, ``delete``, ``switch``, ``rollback``,
        ``report``, ``names`` (what AdminService offers; they write the state folder, so call
        them off the event loop)."""
        return self.routing.endpoints

    def feedback(
        self,
        request_id: str,
        *,
        reward: float | None = None,
        label: npt.NDArray[Any] | None = None,
        endpoint: str | None = None,
    ) -> FeedbackReceipt:
        """A reward and/or a label for an answered request, by the id its result carried."""
        return self.routing.feedback(request_id, reward=reward, label=label, endpoint=endpoint)

    def _signature(self, model: str, version: str) -> ModelSignature:
        return signature_of_version(self.get_version(model, version or None))

    def _declared_route(self, name: str) -> Route | None:
        """The first variant of a declared endpoint called ``name``; None for anything else."""
        try:
            runtime = self.routing.endpoints.get(name)
        except NotFoundError:
            return None
        return None if runtime.implicit else runtime.routes[0]

    def repository_index(self, ready_only: bool = False) -> list[ModelIndexEntry]:
        return self.models.index(ready_only)

    # -- lookup ------------------------------------------------------------------------------

    def model_names(self) -> list[str]:
        return sorted(name for name, m in self.models.models().items() if m.versions)

    def _served(self, name: str, version: str | int | None) -> ServedVersion:
        return served_version(self.models, name, version)

    def get_version(self, name: str, version: str | int | None = None) -> ModelVersion:
        """The version that serves ``name`` (latest loaded when ``version`` is empty)."""
        return self._served(name, version).version

    def is_model_ready(self, name: str, version: str | int | None = None) -> bool:
        """A model version serves; an endpoint (no version) has every variant serving."""
        route = self._declared_route(name)
        try:
            if route is None:
                self._served(name, version)
            elif version:
                return False
            else:
                for variant in route.runtime.routes:
                    self._served(variant.model, variant.version or None)
        except NotFoundError:
            return False
        return True

    def model_config(self, name: str, version: str | int | None = None) -> ModelVersion:
        """A model version; for an endpoint, the version its first variant runs."""
        route = self._declared_route(name)
        if route is not None:
            self._no_version_for_endpoint(name, version)
            return self.get_version(route.model, route.version or None)
        return self.get_version(name, version)

    @staticmethod
    def _no_version_for_endpoint(name: str, version: str | int | None) -> None:
        if version:
            raise InvalidArgumentError(
                f"'{name}' is an endpoint that chooses the version itself; ask without a version"
            )

    def metadata(self, name: str, version: str | int | None = None) -> ModelMetadata:
        """A model's metadata; an endpoint answers its first variant's (under its own name,
        without versions: the endpoint chooses them)."""
        route = self._declared_route(name)
        if route is not None:
            self._no_version_for_endpoint(name, version)
            served = self.get_version(route.model, route.version or None)
            return ModelMetadata(
                name=name,
                versions=(),
                platform=served.backend.platform,
                inputs=served.inputs,
                outputs=served.outputs,
            )
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

    def variant_quality(self, model: str, version: str) -> list[QualityWindow]:
        """Label-quality windows of the endpoint variants that run ``model`` at ``version``."""
        routing = self._routing
        if routing is None:
            return []
        return routing.quality_windows(model, version, self._serving_version)

    def _serving_version(self, model: str, version: str) -> str | None:
        try:
            return self.get_version(model, version or None).version_str
        except NotFoundError:
            return None

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

    def _route(
        self,
        model: str,
        version: str | int | None,
        parameters: Mapping[str, Any] | None,
        inputs: Mapping[str, Any],
    ) -> Route:
        try:
            return self.routing.resolve(
                model, "" if version is None else str(version), parameters, inputs
            )
        except NotFoundError:
            self._served(model, version)  # a model known but not ready says why
            raise

    def _answer(
        self,
        route: Route,
        served: ModelVersion,
        request_id: str,
        seq: int,
        inputs: Mapping[str, InputTensor],
        outputs: dict[str, npt.NDArray[Any]],
        start_ns: int,
    ) -> InferResult:
        latency_ns = time.perf_counter_ns() - start_ns
        self.routing.answered(
            route, served.version_str, request_id, inputs, outputs, latency_ns, seq
        )
        return InferResult(
            route.endpoint,
            served.version_str,
            outputs,
            request_id,
            served.output_datatypes,
            {PIN_PARAMETER: route.variant},
        )

    def _failed(
        self, route: Route, served: ModelVersion | None, error: HeadraceError, start_ns: int
    ) -> None:
        version = served.version_str if served is not None else ""
        self.routing.failed(route, version, error, time.perf_counter_ns() - start_ns)

    def infer(
        self,
        model: str,
        inputs: Mapping[str, npt.NDArray[Any]],
        version: str | int | None = None,
        outputs: Sequence[str] | None = None,
        *,
        request_id: str = "",
        parameters: Mapping[str, Any] | None = None,
        priority: int = 0,
        timeout_us: int = 0,
    ) -> InferResult:
        """Run ``model`` (a model or an endpoint) on numpy ``inputs`` in the calling thread;
        blocks until done.

        ``parameters`` are request parameters (an endpoint's sticky key, ``headrace_variant``
        to pin a variant); ``priority`` (1 is highest, 0 the model's default) and ``timeout_us``
        (time allowed in the queue; 0 for the model's default) have Triton's meaning."""
        arrays = {k: np.asarray(v) for k, v in inputs.items()}
        route = self._route(model, version, parameters, arrays)
        seq, request_id = (-1, request_id) if request_id else self._ids.numbered()
        start_ns = time.perf_counter_ns()
        served: ModelVersion | None = None
        try:
            leased = lease_route(self.models, route)
            served = leased.version
            try:
                names = served.validator.check(arrays, outputs)
                result = served.infer(
                    arrays,
                    names,
                    priority,
                    deadline_ns(timeout_us, None),
                    request_id=request_id,
                    endpoint=route.endpoint,
                    variant=route.variant,
                )
            finally:
                leased.lease.release()
        except HeadraceError as error:
            self._failed(route, served, error, start_ns)
            raise
        return self._answer(route, served, request_id, seq, arrays, result, start_ns)

    async def infer_async(
        self,
        model: str,
        inputs: Mapping[str, InputTensor],
        version: str | int | None = None,
        outputs: Sequence[str] | None = None,
        *,
        request_id: str = "",
        parameters: Mapping[str, Any] | None = None,
        declared_datatypes: Mapping[str, str] | None = None,
        priority: int = 0,
        timeout_us: int = 0,
        timeout_s: float | None = None,
    ) -> InferResult:
        """As :meth:`infer`, awaitable; the model runs off the event loop. ``timeout_s`` is the
        caller's remaining time (a gRPC deadline); the earlier of it and ``timeout_us`` wins.
        Inputs may be wire BYTES (``WireBytes``, from the server's parser): they are checked
        against the model without being expanded."""
        return await self.infer_request(
            InferRequest(
                model,
                inputs,
                version,
                outputs,
                request_id,
                declared_datatypes,
                priority,
                timeout_us,
                timeout_s,
                parameters if parameters is not None else {},
            )
        )

    async def infer_request(self, request: InferRequest) -> InferResult:
        """:meth:`infer_async` of a domain request (what the server decodes): the request path
        itself, one coroutine deep, as the server calls it for every request."""
        inputs = request.inputs
        route = self._route(request.model, request.version, request.parameters, inputs)
        seq, request_id = (-1, request.request_id) if request.request_id else self._ids.numbered()
        start_ns = time.perf_counter_ns()
        served: ModelVersion | None = None
        try:
            leased = lease_route(self.models, route)
            served = leased.version
            try:
                names = served.validator.check(inputs, request.outputs, request.declared_datatypes)
                result = await served.infer_async(
                    inputs,
                    names,
                    request.priority,
                    deadline_ns(request.timeout_us, request.timeout_s),
                    request_id=request_id,
                    endpoint=route.endpoint,
                    variant=route.variant,
                )
            finally:
                leased.lease.release()
        except HeadraceError as error:
            self._failed(route, served, error, start_ns)
            raise
        return self._answer(route, served, request_id, seq, inputs, result, start_ns)

    def check_deadline(
        self, model: str, version: str, timeout_s: float, in_flight: int = 0
    ) -> None:
        """Before a request to ``model`` is parsed: raise DeadlineExceededError when the
        caller's remaining ``timeout_s`` is spent, UnavailableError (with the prediction) when
        the work ahead -- the model's queue, or ``in_flight`` requests the caller has admitted
        to it and not yet answered, whichever is more -- and one row of its batches cannot end
        within it. The server calls it with the gRPC deadline so that work which would be
        answered too late is turned away for the least it can cost. Names it cannot judge
        without the request (declared endpoints, whose variant depends on it; unknown models)
        pass: their own path says what happens."""
        if self._declared_route(model) is not None:
            return
        try:
            served = self._served(model, version or None)
        except NotFoundError:
            return
        served.version.check_deadline(deadline_ns(0, timeout_s), in_flight)

    def close(self) -> None:
        """Write the routing state, stop shadows, drain and release every model."""
        if self._routing is not None:
            self._routing.close()
        self.shadows.close()
        self.models.close()
        self.features.close()
