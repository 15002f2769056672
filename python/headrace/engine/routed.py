"""Endpoints on the engine's request path: which variant serves a request, how its outcome is
counted, and where its shadow copies go.

:class:`EngineRouting` wraps the routing package's :class:`~headrace.routing.Endpoints` for one
engine. Per request the engine calls :meth:`EngineRouting.resolve` (the variant), runs it, then
:meth:`EngineRouting.answered` or :meth:`EngineRouting.failed`: those count the outcome for the
strategy, the experiment report and Prometheus (``endpoint`` and ``variant`` labels), remember the
request id for feedback, and offer the answer to the endpoint's shadows. A plain model is an
endpoint of one variant, so every request takes the same path.

Threads: routing state has one writer at a time. The event loop and blocking callers
(``Engine.infer`` from any thread) both take :attr:`EngineRouting.lock` around the calls that
count an outcome (nothing blocking runs under it). Choosing a variant takes no lock: it reads the
strategy's state, and its only writes -- a refill of pre-drawn choices (split, Thompson) -- may
race under the GIL without harm (a refill lost to another thread's is drawn from the same
distribution). Admin operations run on any thread: ``Endpoints`` serializes them itself and
swaps its table whole.

Shadow copies go to a :class:`~headrace.routing.ShadowMirror` on an event loop: the server's, or
the first running loop that answers a shadowed request, or, for blocking callers when none runs,
a loop on a thread of its own. Copies cross threads with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headrace.config import ServerSettings
from headrace.engine.endpoint_audit import EndpointAuditTrail
from headrace.engine.version import ModelVersion
from headrace.errors import ConfigError, HeadraceError, StatusCode
from headrace.monitoring.drift.quality import QualityWindow
from headrace.monitoring.metrics import Metrics, RequestSeries
from headrace.registry.audit import AuditLog
from headrace.routing import (
    Endpoints,
    FeedbackReceipt,
    RequestIds,
    Route,
    RoutingEvent,
    ShadowMirror,
)
from headrace.routing.config import ModelSignature
from headrace.routing.shadow import ADMITTED, PRIMARY_BUSY

log = logging.getLogger(__name__)

ShadowCall = Callable[[str, str, Mapping[str, Any]], Awaitable[Mapping[str, Any]]]


@dataclass(frozen=True)
class ShadowHooks:
    """What the mirror needs of the engine: ``call`` runs a copy (model, version, inputs);
    ``busy(route)`` says the version that answered has no spare capacity (its copies are then
    dropped as primary_busy: shadows yield to clients); ``rows(model, version)`` bounds a
    coalesced call (the shadow's batch size)."""

    call: ShadowCall
    busy: Callable[[Route], bool] = lambda route: False
    rows: Callable[[str, str], int] = lambda model, version: 0


SignatureOf = Callable[[str, str], ModelSignature]

# Failures of the server or the model: they count against a variant (error rate, canary gates).
# A client's bad input (INVALID_ARGUMENT, NOT_FOUND, ...) or its cancellation says nothing about
# the variant and is left out of the strategy's statistics.
VARIANT_FAILURES = frozenset(
    {
        StatusCode.INTERNAL,
        StatusCode.UNAVAILABLE,
        StatusCode.DEADLINE_EXCEEDED,
        StatusCode.RESOURCE_EXHAUSTED,
        StatusCode.UNKNOWN,
    }
)
# How often the server writes changed strategy state (canary steps, bandit arms) to the state
# folder: what a crash can lose, against a file write every few seconds while traffic flows.
PERSIST_INTERVAL_S = 5.0
# Cached request series, by version label and then variant; past this many labels the cache
# starts over rather than grow.
MAX_CACHED_SERIES = 4096


def signature_of_version(version: ModelVersion) -> ModelSignature:
    """What a loaded version takes and gives, as the variants' signature check compares it."""
    return ModelSignature(
        tuple((s.name, s.datatype, tuple(s.shape)) for s in version.inputs),
        tuple((s.name, s.datatype, tuple(s.shape)) for s in version.outputs),
    )


def state_folder(settings: ServerSettings) -> Path | None:
    """The routing state folder, created if needed. A folder the operator named must be usable
    (ConfigError otherwise); the default inside the repository is skipped with a warning when
    the repository is read-only (run-time endpoint changes then last until a restart)."""
    folder = settings.resolved_state_dir()
    if folder is None:
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        if settings.state_dir is not None:
            raise ConfigError(
                f"state_dir {folder}: cannot create the routing state folder: "
                f"{error.strerror or error}"
            ) from None
        log.warning(
            "routing state not persisted: cannot create %s (%s); set --state-dir",
            folder,
            error.strerror or error,
        )
        return None
    return folder


class EngineRouting:
    """One engine's endpoints, shadow mirror and request series."""

    def __init__(
        self,
        endpoints: Endpoints,
        metrics: Metrics,
        shadow: ShadowHooks,
        feedback_plain_models: bool = False,
        trail: EndpointAuditTrail | None = None,
        budget_share: float = 1.0,
    ) -> None:
        self.endpoints = endpoints
        # The variant that serves a request (Endpoints.resolve: name, version, parameters,
        # inputs): bound directly, without a lock (see the module's note on threads).
        self.resolve: Callable[..., Route] = endpoints.resolve
        self._budget_share = budget_share  # of wall time for shadow calls (ShadowMirror)
        self.trail = trail
        self.feedback_plain_models = feedback_plain_models
        self.lock = threading.Lock()
        # What shadow copies run through (the engine's unrouted inference); replace it to
        # observe or hold shadow runs.
        self.mirror_call: ShadowCall = shadow.call
        self._shadow = shadow
        self._metrics = metrics
        # version label -> variant statistics (one object per endpoint variant, so it stands
        # for the endpoint, variant and model labels) -> series: two dict lookups per request.
        self._series: dict[str, dict[object, RequestSeries]] = {}
        self._mirror: ShadowMirror | None = None
        self._mirror_loop: asyncio.AbstractEventLoop | None = None
        self._mirror_lock = threading.Lock()
        self._own_loop_thread: threading.Thread | None = None
        self._persist_task: asyncio.Task[None] | None = None

    @classmethod
    def build(
        cls,
        settings: ServerSettings,
        metrics: Metrics,
        signature_of: SignatureOf,
        shadow: ShadowHooks,
        audit: AuditLog | None = None,
        request_ids: RequestIds | None = None,
    ) -> EngineRouting:
        """Read the endpoints file and the state folder; every declared endpoint is checked
        against the loaded models (a clear ConfigError / NotFoundError otherwise). Endpoint
        changes go to ``audit`` (the server's audit trail), when there is one."""
        gauges = metrics.routing
        trail = EndpointAuditTrail(audit)

        def on_event(event: RoutingEvent) -> None:
            gauges.on_event(event)
            trail.on_event(event)

        endpoints = Endpoints.from_file(
            settings.resolved_endpoints_file(),
            state_dir=state_folder(settings),
            signature_of=signature_of,
            on_event=on_event,
            audit=trail.write,
            feedback_max_entries=settings.feedback_max_entries,
            feedback_ttl_s=settings.feedback_ttl_s,
            request_ids=request_ids,
        )
        gauges.watch(endpoints)
        return cls(
            endpoints,
            metrics,
            shadow,
            settings.feedback_plain_models,
            trail,
            settings.shadow_budget_share,
        )

    # -- the request path ----------------------------------------------------------------------

    def answered(
        self,
        route: Route,
        version: str,
        request_id: str,
        inputs: Mapping[str, Any],
        outputs: Mapping[str, Any],
        latency_ns: int,
        seq: int = -1,
    ) -> None:
        """Count a successful answer, remember its id for feedback (declared endpoints, and
        plain models when ``feedback_plain_models``); offer it to the endpoint's shadows.
        ``seq``: the id's number when the engine assigned it (``RequestIds.numbered``)."""
        with self.lock:
            if route.runtime.implicit and not self.feedback_plain_models:
                # A plain model: no strategy, no feedback memory; what complete() would do.
                route.stats.observe(True, latency_ns)
            else:
                self.endpoints.complete(route, True, latency_ns, request_id, outputs, seq)
            by_variant = self._series.get(version)
            series = by_variant.get(route.stats) if by_variant is not None else None
            if series is None:
                series = self._new_series(route, version)
            series.observe(latency_ns)
        if route.shadows:
            self._offer(route, inputs, outputs)

    def failed(
        self,
        route: Route,
        version: str,
        error: HeadraceError,
        latency_ns: int,
    ) -> None:
        """Count a failed request: for the strategy only when the server or model failed."""
        with self.lock:
            if error.code in VARIANT_FAILURES:
                self.endpoints.complete(route, ok=False, latency_ns=latency_ns)
            series = self._new_series(route, version)  # a cold path
        series.failed(error.code.name)

    def _new_series(self, route: Route, version: str) -> RequestSeries:
        by_variant = self._series.get(version)
        if by_variant is None:
            if len(self._series) >= MAX_CACHED_SERIES:
                self._series.clear()
            by_variant = self._series[version] = {}
        series = self._metrics.series(route.model, version, route.endpoint, route.variant)
        by_variant[route.stats] = series
        return series

    # -- feedback ------------------------------------------------------------------------------

    def feedback(
        self,
        request_id: str,
        *,
        reward: float | None = None,
        label: Any = None,
        endpoint: str | None = None,
    ) -> FeedbackReceipt:
        """A reward and/or label for an answered request (see ``Endpoints.feedback``)."""
        with self.lock:
            return self.endpoints.feedback(
                request_id, reward=reward, label=label, endpoint=endpoint
            )

    # -- label quality, for drift monitoring ----------------------------------------------------

    def quality_windows(
        self, model: str, version: str, version_of: Callable[[str, str], str | None]
    ) -> list[QualityWindow]:
        """The label-quality windows of every variant that runs ``model`` at ``version``
        (``version_of(model, version_or_alias)`` says which version a variant runs now).

        Called by the drift watcher thread: it reads windows the event loop writes; a closed
        window no longer changes, the open one may be read between two of its updates."""
        now_s = time.time()
        endpoints, rows = self.endpoints, []
        for name in endpoints.names(include_models=True):
            try:
                runtime = endpoints.get(name)
            except HeadraceError:
                continue  # deleted since names() was read
            quality = runtime.config.quality
            if not quality.labels:
                continue
            for index, route in enumerate(runtime.routes):
                if route.model != model or version_of(route.model, route.version) != version:
                    continue
                for window in list(runtime.quality.windows[index]):
                    rows.append(
                        QualityWindow(
                            runtime.name,
                            route.variant,
                            window.kind,
                            window.value,
                            window.count,
                            window.start_s,
                            quality.window_s,
                            window.start_s + quality.window_s <= now_s,
                        )
                    )
        return rows

    # -- shadows -------------------------------------------------------------------------------

    async def _call_shadow(self, model: str, version: str, inputs: Mapping[str, Any]) -> Any:
        return await self.mirror_call(model, version, inputs)

    def _new_mirror(self) -> ShadowMirror:
        return ShadowMirror(
            self._call_shadow,
            admit=self._busy_primary,
            max_rows=self._shadow.rows,
            budget_share=self._budget_share,
        )

    def _offer(self, route: Route, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> None:
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        # Admission is decided by the answering thread: the primary's load when the copy was
        # made, not when another thread gets round to queueing it. On the mirror's own loop
        # the mirror asks only for a copy it sampled (most requests of a sampled shadow are
        # not copied, and the question costs a few reads of the lease's counters).
        mirror, loop = self._mirror, self._mirror_loop
        if mirror is not None and loop is running is not None:  # the server's case
            mirror.offer(route, inputs, outputs)
            return
        if mirror is None or loop is None or loop.is_closed() or not loop.is_running():
            mirror, loop = self._start_mirror(running)
        if loop is running:
            mirror.offer(route, inputs, outputs)
        else:
            refused = self._busy_primary(route) or ADMITTED
            loop.call_soon_threadsafe(mirror.offer, route, inputs, outputs, refused)

    def _busy_primary(self, route: Route) -> str | None:
        return PRIMARY_BUSY if self._shadow.busy(route) else None

    def _start_mirror(
        self, running: asyncio.AbstractEventLoop | None
    ) -> tuple[ShadowMirror, asyncio.AbstractEventLoop]:
        """A mirror on the running loop, else on a loop of its own thread."""
        with self._mirror_lock:
            mirror, loop = self._mirror, self._mirror_loop
            if mirror is not None and loop is not None and loop.is_running():
                return mirror, loop
            mirror = self._new_mirror()
            if running is not None:
                loop = running
                mirror.start()
            else:
                loop = self._own_loop()
                loop.call_soon_threadsafe(mirror.start)
            self._mirror, self._mirror_loop = mirror, loop
            return mirror, loop

    def _own_loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.new_event_loop()
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(started.set)
            loop.run_forever()
            loop.close()

        thread = threading.Thread(target=run, name="headrace-shadows", daemon=True)
        thread.start()
        started.wait()
        self._own_loop_thread = thread
        return loop

    @property
    def mirror(self) -> ShadowMirror | None:
        """The shadow mirror, once a shadowed request (or the server) started it."""
        return self._mirror

    # -- server lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """On the server's loop: shadow workers there, and the periodic state write."""
        running = asyncio.get_running_loop()
        with self._mirror_lock:
            if self._mirror_loop is not running:
                mirror = self._new_mirror()
                mirror.start()
                previous, previous_loop = self._mirror, self._mirror_loop
                self._mirror, self._mirror_loop = mirror, running
            else:
                previous = previous_loop = None
        if previous is not None and previous_loop is not None and previous_loop.is_running():
            asyncio.run_coroutine_threadsafe(previous.stop(), previous_loop)
        if self._persist_task is None:
            self._persist_task = running.create_task(self._persist_every(PERSIST_INTERVAL_S))

    async def _persist_every(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await asyncio.to_thread(self.endpoints.persist)
            except (OSError, HeadraceError) as error:
                log.error("routing state not written: %s", error)

    async def stop(self) -> None:
        """Stop the shadow workers and the periodic write; write the state once more."""
        task, self._persist_task = self._persist_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        running = asyncio.get_running_loop()
        mirror, loop = self._mirror, self._mirror_loop
        if mirror is not None and loop is running:
            self._mirror = self._mirror_loop = None
            await mirror.stop()
        await asyncio.to_thread(self.persist)

    def persist(self) -> None:
        try:
            self.endpoints.persist()
        except (OSError, HeadraceError) as error:
            log.error("routing state not written: %s", error)

    def close(self) -> None:
        """Write the state and the queued audit records; stop a shadow loop of our own
        (blocking; not on the loop)."""
        self.persist()
        if self.trail is not None:
            self.trail.close()
        thread, loop = self._own_loop_thread, self._mirror_loop
        if thread is not None and loop is not None and not loop.is_closed():
            mirror = self._mirror
            if mirror is not None:
                with contextlib.suppress(Exception):
                    asyncio.run_coroutine_threadsafe(mirror.stop(), loop).result(5)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
        self._own_loop_thread = None
        self._mirror = self._mirror_loop = None
