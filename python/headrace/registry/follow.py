"""Served models follow their sources: MLflow aliases through the poller, the repository through
the watcher; the manager loads, switches and drains.

``RegistryFollower`` builds what the settings ask for (``models`` and ``mlflow_uri``: an
``MlflowSource`` over a ``ModelCache`` and a ``RegistryPoller``; ``watch_repository``: a
``RepositoryWatcher``) and turns their events into the manager's calls. The poller and the watcher
await their callback, so each model's events go to a task of its own that runs them in order, one
at a time, off the event loop (the manager blocks on files, sessions and fsyncs): a slow download
of one model never delays another model or the next poll.

Faults: MLflow unreachable at startup -> the poller serves the last known versions from the cache
and backs off; unreachable later -> serving continues, the index and ListModelVersions say so
and ``headrace_registry_reachable`` drops to 0; a download that fails is asked for again at the
next poll; a corrupt artifact or a FAILED / PENDING target is reported and never swapped in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from headrace.config import ServerSettings
from headrace.errors import ConfigError, HeadraceError, InvalidArgumentError, UnavailableError
from headrace.monitoring.metrics import Metrics
from headrace.registry.audit import AuditCause, AuditOutcome
from headrace.registry.base import ModelReference
from headrace.registry.filesystem import FilesystemSource
from headrace.registry.manager import ModelManager, check_model_name
from headrace.registry.plan import VersionInput
from headrace.registry.poller import (
    DEFAULT_BACKOFF_MAX_S,
    AliasesChanged,
    DesiredVersionChanged,
    PollerEvent,
    RegistryPoller,
    SourceRecovered,
    SourceUnreachable,
    TargetIgnored,
)
from headrace.registry.views import ModelView, describe_models
from headrace.registry.watcher import (
    ModelConfigChanged,
    RepositoryWatcher,
    VersionAdded,
    VersionChanged,
    VersionRemoved,
    WatchEvent,
)

if TYPE_CHECKING:
    from headrace.registry.mlflow import MlflowSource

log = logging.getLogger(__name__)

POLLER = "poller"
WATCHER = "watcher"
_Job = Callable[[], Awaitable[None]]


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/headrace/models, else ~/.cache/headrace/models."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "headrace" / "models"


def parse_references(texts: list[str]) -> list[ModelReference]:
    """``--model`` values as references; ConfigError naming the bad one."""
    references = []
    for text in texts:
        try:
            reference = ModelReference.parse(text)
            check_model_name(reference.name)
        except InvalidArgumentError as error:
            raise ConfigError(f"--model {text}: {error.message}") from None
        if reference.alias is None and reference.version is None:
            raise ConfigError(
                f"--model {text}: name an alias to follow (NAME@ALIAS) or a version to pin "
                "(NAME/VERSION)"
            )
        references.append(reference)
    return references


class _ModelQueue:
    """One model's jobs, run in order by a task of its own."""

    def __init__(self, name: str) -> None:
        self.jobs: asyncio.Queue[_Job] = asyncio.Queue()
        self.task = asyncio.create_task(self._run(), name=f"registry-follow {name}")

    async def _run(self) -> None:
        while True:
            job = await self.jobs.get()
            try:
                await job()
            except Exception:  # one failed job must not stop the model's later ones
                log.exception("registry: a model transition failed unexpectedly")
            finally:
                self.jobs.task_done()


class RegistryFollower:
    """Connects the sources the settings name to the manager; see the module docstring."""

    def __init__(self, settings: ServerSettings, manager: ModelManager, metrics: Metrics) -> None:
        self._settings = settings
        self._manager = manager
        self._metrics = metrics
        self.references = parse_references(settings.models)
        self.source: MlflowSource | None = None
        self.poller: RegistryPoller | None = None
        self.watcher: RepositoryWatcher | None = None
        self._queues: dict[str, _ModelQueue] = {}
        self._accepting = False

    @property
    def active(self) -> bool:
        return bool(self.references) or (
            self._settings.watch_repository and self._manager.repository is not None
        )

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Follow the sources. MLflow models are loaded (or reported) when this returns: the
        first poll and the loads it asked for are awaited."""
        if self._accepting:
            return
        self._accepting = True
        if self.references:
            await self._start_mlflow()
        if self._settings.watch_repository and self._manager.repository is not None:
            await self._start_watcher()

    async def stop(self) -> None:
        """Stop following; a transition under way finishes first."""
        self._accepting = False
        if self.poller is not None:
            await self.poller.stop()
        if self.watcher is not None:
            await self.watcher.stop()
            self._manager.complete_versions = None
        await self.idle()
        for queue in self._queues.values():
            queue.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await queue.task
        self._queues.clear()

    async def idle(self) -> None:
        """Return when every queued transition has run."""
        for queue in list(self._queues.values()):
            await queue.jobs.join()

    def describe(self, model: str = "") -> list[ModelView]:
        return describe_models(self._manager, model)

    # -- MLflow ------------------------------------------------------------------------------

    async def _start_mlflow(self) -> None:
        from headrace.registry.cache import ModelCache
        from headrace.registry.mlflow import MlflowSource

        cache_dir = self._settings.model_cache or default_cache_dir()
        cache = await asyncio.to_thread(ModelCache, cache_dir)
        # Importing the MLflow client takes a while: off the loop too.
        source = await asyncio.to_thread(
            MlflowSource, self.references, cache=cache, tracking_uri=self._settings.mlflow_uri
        )
        self.source = source
        for reference in self.references:
            await asyncio.to_thread(
                self._manager.follow,
                reference.name,
                reference=str(reference),
                alias=reference.alias,
                origin=source.uri,
                provider=self._provider(source, reference.name),
            )
        poll_s = self._settings.registry_poll_s
        self.poller = RegistryPoller(
            source,
            source.references,
            self._on_poll,
            poll_s=poll_s,
            backoff_max_s=max(poll_s, DEFAULT_BACKOFF_MAX_S),
        )
        self._metrics.lifecycle.reachable(source.uri, True)
        await self.poller.poll_once()
        await self.idle()
        await self.poller.start(poll_now=False)
        log.info(
            "registry: following %s in MLflow at %s every %g s (cache %s)",
            ", ".join(str(r) for r in self.references),
            source.uri,
            self._settings.registry_poll_s,
            cache_dir,
        )

    @staticmethod
    def _fetch(source: MlflowSource, model: str, version: int) -> VersionInput:
        return VersionInput.from_materialized(source.materialize(model, version))

    @staticmethod
    def _provider(source: MlflowSource, model: str) -> Callable[[int], VersionInput]:
        def provide(version: int) -> VersionInput:
            return VersionInput.from_materialized(source.materialize(model, version))

        return provide

    async def _on_poll(self, event: PollerEvent) -> None:
        manager = self._manager
        if isinstance(event, SourceUnreachable | SourceRecovered):
            up = isinstance(event, SourceRecovered)
            self._metrics.lifecycle.reachable(event.uri, up)
            note = (
                ""
                if isinstance(event, SourceRecovered)
                else f"MLflow at {event.uri} unreachable ({event.error}); {event.failures} polls "
                f"failed, next in {event.retry_in_s:.1f} s; what is loaded keeps serving"
            )
            for reference in self.references:
                self._enqueue(reference.name, self._call(manager.note_source, reference.name, note))
        elif isinstance(event, AliasesChanged):
            job = self._call(manager.set_aliases, event.model, dict(event.aliases), POLLER)
            self._enqueue(event.model, job)
        elif isinstance(event, DesiredVersionChanged):
            self._enqueue(event.model, lambda: self._switch(event))
        elif isinstance(event, TargetIgnored):
            reason = f"{event.reference} ignored: {event.reason}"
            self._enqueue(
                event.model,
                self._call(
                    manager.note_failure,
                    event.model,
                    event.version,
                    reason,
                    cause=AuditCause.ALIAS_MOVED,
                    actor=POLLER,
                    outcome=AuditOutcome.IGNORED,
                ),
            )

    async def _switch(self, event: DesiredVersionChanged) -> None:
        poller, source = self.poller, self.source
        assert poller is not None and source is not None
        model, version = event.model, event.to_version
        if poller.desired(model) != version:
            return  # the alias moved again meanwhile: that event follows
        cause = AuditCause.STARTUP if event.cause == "startup" else AuditCause.ALIAS_MOVED
        try:
            # The download (verified, into the cache) apart from the load: a failed download
            # may pass and is asked for again; the manager then finds it in the cache.
            files = await asyncio.to_thread(self._fetch, source, model, version)
        except (UnavailableError, OSError) as error:
            message = error.message if isinstance(error, HeadraceError) else str(error)
            await asyncio.to_thread(
                self._manager.note_failure,
                model,
                version,
                f"download failed, asked again at the next poll: {message}",
                cause=cause,
                actor=POLLER,
            )
            poller.retry(model)
            return
        except HeadraceError as error:  # corrupt, incomplete, not READY: never swapped in
            await asyncio.to_thread(
                self._manager.note_failure, model, version, error.message, cause=cause, actor=POLLER
            )
            return
        with contextlib.suppress(HeadraceError):  # reported by the manager
            await asyncio.to_thread(
                self._manager.set_desired, model, version, cause=cause, actor=POLLER, files=files
            )

    # -- the repository ----------------------------------------------------------------------

    async def _start_watcher(self) -> None:
        repository = self._manager.repository
        assert repository is not None
        source = FilesystemSource(repository.root, settle_s=self._settings.repository_settle_s)
        baseline = await asyncio.to_thread(self._baseline, source)
        watcher = RepositoryWatcher(
            source,
            self._on_watch,
            settle_s=self._settings.repository_settle_s,
            poll_s=self._settings.repository_poll_s,
        )
        self.watcher = watcher

        def complete(model: str) -> set[int]:
            return {v for (m, v) in watcher.known() if m == model}

        await watcher.start(baseline=baseline)
        self._manager.complete_versions = complete
        log.info("registry: watching %s (%s)", repository.root, watcher.mode)

    def _baseline(self, source: FilesystemSource) -> dict[tuple[str, int], str]:
        """What is loaded from the repository, as the watcher fingerprints it."""
        baseline: dict[tuple[str, int], str] = {}
        for name, model in self._manager.models().items():
            control = self._manager.control(name)
            if control is None or control.kind != "repository":
                continue
            for number in model.loaded():
                try:
                    baseline[(name, number)] = source.materialize(name, number).fingerprint
                except HeadraceError:
                    continue  # changing or gone: the watcher judges it when settled
        return baseline

    async def _on_watch(self, event: WatchEvent) -> None:
        if isinstance(event, VersionAdded | VersionChanged):
            model = event.version.model
            cause = (
                AuditCause.VERSION_ADDED
                if isinstance(event, VersionAdded)
                else AuditCause.FILE_CHANGED
            )
        elif isinstance(event, VersionRemoved):
            model, cause = event.model, AuditCause.VERSION_REMOVED
        else:
            assert isinstance(event, ModelConfigChanged)
            model, cause = event.model, AuditCause.FILE_CHANGED
        self._enqueue(model, lambda: self._reload(model, cause))

    async def _reload(self, model: str, cause: AuditCause) -> None:
        try:
            await asyncio.to_thread(self._manager.load, model, cause=cause, actor=WATCHER)
        except HeadraceError as error:  # reported by the manager where it matters
            log.debug("repository: %s not reloaded: %s", model, error.message)

    # -- plumbing ----------------------------------------------------------------------------

    def _enqueue(self, model: str, job: _Job) -> None:
        if not self._accepting:
            return
        queue = self._queues.get(model)
        if queue is None:
            queue = self._queues[model] = _ModelQueue(model)
        queue.jobs.put_nowait(job)

    @staticmethod
    def _call(function: Callable[..., object], *args: object, **kwargs: object) -> _Job:
        async def job() -> None:
            with contextlib.suppress(HeadraceError):  # reported by the manager
                await asyncio.to_thread(function, *args, **kwargs)

        return job
