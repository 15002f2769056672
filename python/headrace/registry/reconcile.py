"""The mechanics the model manager's operations share: the published snapshots, one lock per
model, reconciling a model to what ``plan.choose`` decides, reporting failures, draining.

``ModelStore`` is the base of ``manager.ModelManager``; every method here expects the model's
lock to be held by the caller (``_lock_for``), except the readers and ``_drain``.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping

from headrace.config import ServerSettings
from headrace.engine.completions import CompletionRouter
from headrace.engine.features import EngineFeatures
from headrace.errors import (
    ConfigError,
    HeadraceError,
    NotFoundError,
    UnavailableError,
)
from headrace.monitoring.metrics import Metrics
from headrace.registry.audit import AuditCause, AuditOutcome, AuditRecord
from headrace.registry.base import INPUT_EXAMPLE_FILE, VersionSource
from headrace.registry.filesystem import FilesystemRepository
from headrace.registry.plan import ModelControl, VersionInput, choose, served_aliases
from headrace.registry.served import ServedModel, ServedVersion
from headrace.registry.swap import Retirement, effects, file_fingerprint, start_version, unchanged
from headrace.registry.transitions import TransitionLog

log = logging.getLogger("headrace.registry.manager")

# Versions whose failure a model remembers (shown in the index), newest kept.
MAX_FAILED_VERSIONS = 16
_ADMIN = (AuditCause.ADMIN_PIN, AuditCause.ADMIN_ROLLBACK)


class ModelStore:
    """Snapshots and per-model locks, and the steps every change is made of."""

    def __init__(
        self,
        repository: FilesystemRepository | None,
        settings: ServerSettings,
        metrics: Metrics,
        completions: CompletionRouter,
        features: EngineFeatures | None = None,
    ) -> None:
        self.repository = repository
        self._settings = settings
        self._metrics = metrics
        self._completions = completions
        self._features = features  # what feature joiners share (engine/features.py)
        # Replaced, never mutated in place: readers take it without a lock.
        self._models: dict[str, ServedModel] = {}
        self._controls: dict[str, ModelControl] = {}
        self._publish_lock = threading.Lock()  # serialises snapshot replacement only
        self._model_locks: dict[str, threading.Lock] = {}
        self._model_locks_lock = threading.Lock()
        self._closed = False
        # Called with (model name, ready) after each publish, on the publishing thread.
        self.listeners: list[Callable[[str, bool], None]] = []
        self.transitions = TransitionLog(settings.audit_log, metrics.lifecycle)
        # Set while the repository is watched: the versions the watcher saw complete and
        # settled. Only those load, so a version folder being copied in is never read.
        self.complete_versions: Callable[[str], Collection[int]] | None = None

    def get(self, name: str) -> ServedModel | None:
        return self._models.get(name)

    def models(self) -> dict[str, ServedModel]:
        return self._models

    def control(self, name: str) -> ModelControl | None:
        """The model's lifecycle state (read without its lock: a moment's view)."""
        return self._controls.get(name)

    def _lock_for(self, name: str) -> threading.Lock:
        with self._model_locks_lock:
            lock = self._model_locks.get(name)
            if lock is None:
                lock = self._model_locks[name] = threading.Lock()
            return lock

    def _publish(self, model: ServedModel) -> bool:
        """Make ``model`` what requests see; False (nothing published) once closing. Listeners
        (the engine's routing: a ready model is an endpoint of one variant) hear of it."""
        with self._publish_lock:
            if self._closed:
                return False
            models = dict(self._models)
            models[model.name] = model
            self._models = models
        for listener in self.listeners:
            listener(model.name, bool(model.versions))
        return True

    def _reconcile(
        self,
        name: str,
        control: ModelControl,
        cause: AuditCause,
        actor: str,
        reason: str = "",
        announce: bool = False,
        fetched: Mapping[int, VersionInput] | None = None,
    ) -> Retirement:
        """Load what the model's state asks for and switch to it (lock held). ``fetched``:
        versions the caller already has (else the source's provider is asked). When nothing
        switches, an admin's override stays as it was (a rollback outlives a failed move)."""
        override = control.override
        try:
            return self._reconcile_to(name, control, cause, actor, reason, announce, fetched)
        except BaseException:
            control.override = override
            raise

    def _reconcile_to(
        self,
        name: str,
        control: ModelControl,
        cause: AuditCause,
        actor: str,
        reason: str,
        announce: bool,
        fetched: Mapping[int, VersionInput] | None,
    ) -> Retirement:
        previous = self._models.get(name)
        loaded = previous.loaded() if previous is not None else {}
        if control.kind == "repository":
            found = self._repository_versions(name, control, cause, actor)
            if found is None:
                return self._unload_locked(name, cause, actor)
            available, selected, get_input = found
            ended = control.desired_moved(max(selected))
            if ended is not None:
                reason = f"the {ended.kind} to version {ended.version} ended: a newer version"
        else:
            assert control.provider is not None
            provider, ready = control.provider, dict(fetched or {})

            def get_input(number: int) -> VersionInput:
                found = ready.get(number)
                return found if found is not None else provider(number)

            available = None
            desired = control.desired
            selected = [] if control.override is not None or desired is None else [desired]
        choice = choose(
            control,
            selected=selected,
            available=available,
            loaded=loaded,
            keep_previous=self._settings.keep_previous_versions,
            serve_aliases=self._settings.serve_aliases,
        )
        if choice.dropped is not None:
            if cause in _ADMIN:
                raise NotFoundError(f"model '{name}' has no version {choice.dropped.version}")
            reason = f"the {choice.dropped.kind} to version {choice.dropped.version} ended: gone"
        built: dict[int, ServedVersion] = {}
        failures: dict[int, str] = {}
        order = sorted(choice.required) + sorted(choice.optional)
        for number in order:
            wanted = None
            try:
                wanted = get_input(number)
                old = loaded.get(number)
                if old is None or not unchanged(old, wanted):
                    built[number] = start_version(
                        name,
                        number,
                        wanted,
                        self._settings,
                        self._metrics,
                        self._completions,
                        self._features,
                    )
            except (HeadraceError, OSError) as error:
                message = error.message if isinstance(error, HeadraceError) else str(error)
                if wanted is not None:
                    control.failed_fingerprints[number] = wanted.fingerprint
                if number in choice.optional:
                    failures[number] = message
                    if previous is None or previous.failed.get(number) != message:
                        self._record_quietly(name, number, message, cause, actor)
                    continue
                for served in built.values():
                    served.version.close()
                self._fail(name, number, message, cause, actor)
                raise UnavailableError(
                    f"model '{name}' version {number} failed to load: {message}"
                ) from None
        answering = (choice.required | choice.optional) - failures.keys()
        versions = {v: built.get(v) or loaded[v] for v in sorted(answering)}
        for number in versions:
            control.failed_fingerprints.pop(number, None)
        standby = {v: loaded[v] for v in choice.standby if v in loaded and v not in versions}
        kept = {id(s) for s in (*versions.values(), *standby.values())}
        retired = [served for served in loaded.values() if id(served) not in kept]
        failed = {
            v: why
            for v, why in (previous.failed.items() if previous else ())
            if v not in versions
            and (available is None or v in available or v in control.failed_fingerprints)
        }  # a version gone from the repository is forgotten
        failed.update(failures)
        snapshot = ServedModel(
            name,
            versions[choice.serving].version.config,
            versions,
            "READY",
            failed=dict(list(failed.items())[-MAX_FAILED_VERSIONS:]),
            serving=choice.serving,
            standby=standby,
            aliases=served_aliases(
                control, choice.serving, versions, previous.aliases if previous else {}
            ),
        )
        try:  # the trail first: a transition nobody could audit does not happen
            for record in effects(
                previous, snapshot, built, cause, actor, control.origin, reason, announce
            ):
                self.transitions.record(record)
        except (OSError, HeadraceError) as error:
            for served in built.values():
                served.version.close()
            raise UnavailableError(
                f"model '{name}' not switched: the audit trail cannot be written: {error}"
            ) from None
        if not self._publish(snapshot):
            for served in built.values():
                served.version.close()
            raise UnavailableError("the engine is shutting down")
        control.served(choice.serving)
        self.transitions.metrics.serving(name, choice.serving)
        before = previous.serving_version if previous is not None else None
        return Retirement(name, retired, before, choice.serving, cause, actor, control.origin)

    def _repository_versions(
        self, name: str, control: ModelControl, cause: AuditCause, actor: str
    ) -> tuple[dict[int, VersionSource], list[int], Callable[[int], VersionInput]] | None:
        """The loadable versions of ``name``, those its version policy selects, and how to read
        one. None when its folder or its last version was removed (the caller unloads)."""
        assert self.repository is not None
        loaded = self._models.get(name)
        gone = cause == AuditCause.VERSION_REMOVED and loaded is not None and bool(loaded.versions)
        try:
            config, available = self.repository.available(name)
        except NotFoundError:
            if gone:
                return None
            raise NotFoundError(f"model '{name}' is not in the model repository") from None
        except HeadraceError as error:
            self._fail(name, None, error.message, cause, actor)
            raise
        complete = self.complete_versions(name) if self.complete_versions is not None else None
        if complete is not None:
            available = {v: s for v, s in available.items() if v in complete}
        if cause != AuditCause.ADMIN_LOAD:
            available = self._without_failed(name, control, available)
        if not available and gone:
            return None
        selected = config.version_policy.select(list(available))
        if not selected:
            message = (
                f"model '{name}': no version in {self.repository.root / name} matches the "
                f"version policy ({config.version_policy.kind})"
            )
            self._fail(name, None, message, cause, actor)
            raise ConfigError(message)
        control.aliases = dict(config.aliases)
        directory = self.repository.root / name

        def get_input(number: int) -> VersionInput:
            source = available[number]
            example = source.path.parent / INPUT_EXAMPLE_FILE
            return VersionInput(
                source,
                config,
                file_fingerprint(source.path),
                str(directory / str(number)),
                example if example.is_file() else None,
            )

        return available, selected, get_input

    @staticmethod
    def _without_failed(
        name: str, control: ModelControl, available: dict[int, VersionSource]
    ) -> dict[int, VersionSource]:
        """``available`` less the versions that failed to load and have not changed since."""
        kept = dict(available)
        for number, fingerprint in list(control.failed_fingerprints.items()):
            source = kept.get(number)
            if source is None:
                del control.failed_fingerprints[number]  # gone
                continue
            try:
                same = file_fingerprint(source.path) == fingerprint
            except OSError:
                same = False
            if same:
                log.debug("model %s: version %d failed to load and is unchanged", name, number)
                del kept[number]
            else:
                del control.failed_fingerprints[number]
        return kept

    def _unload_locked(self, name: str, cause: AuditCause, actor: str) -> Retirement:
        model = self._models.get(name)
        if model is None or not model.versions:
            raise NotFoundError(f"model '{name}' is not loaded")
        old = model.serving_version
        reason = "unloaded" if cause == AuditCause.ADMIN_UNLOAD else "removed from the repository"
        control = self._controls.get(name)
        origin = control.origin if control is not None else ""
        self.transitions.record(
            AuditRecord(name, old, None, cause, actor, AuditOutcome.UNLOADED, reason, origin)
        )
        self._publish(ServedModel(name, model.config, {}, "UNAVAILABLE", reason))
        self.transitions.metrics.serving(name, None)
        return Retirement(name, list(model.loaded().values()), old, None, cause, actor, origin)

    def _fail(
        self,
        name: str,
        version: int | None,
        reason: str,
        cause: AuditCause,
        actor: str,
        outcome: AuditOutcome = AuditOutcome.FAILED,
    ) -> None:
        """Report a version (or the model) that did not load; what serves keeps serving."""
        previous = self._models.get(name)
        if previous is not None and version is not None and previous.failed.get(version) == reason:
            return  # reported already
        self._record_quietly(name, version, reason, cause, actor, outcome)
        failed = dict(previous.failed) if previous is not None else {}
        if version is not None:
            failed.pop(version, None)
            failed[version] = reason
        failed = dict(list(failed.items())[-MAX_FAILED_VERSIONS:])
        if previous is not None and previous.versions:
            self._publish(
                dataclasses.replace(previous, reason=f"last change failed: {reason}", failed=failed)
            )
            return
        self._publish(ServedModel(name, None, {}, "UNAVAILABLE", reason, failed))

    def _record_quietly(
        self,
        name: str,
        version: int | None,
        reason: str,
        cause: AuditCause,
        actor: str,
        outcome: AuditOutcome = AuditOutcome.FAILED,
    ) -> None:
        """Audit a version that was not taken (a failure path: an unwritable trail is logged)."""
        previous = self._models.get(name)
        control = self._controls.get(name)
        failed_cause = AuditCause.LOAD_FAILED if outcome == AuditOutcome.FAILED else cause
        why = f"{cause}: {reason}" if outcome == AuditOutcome.FAILED else reason
        try:
            self.transitions.record(
                AuditRecord(
                    name,
                    previous.serving_version if previous is not None else None,
                    version,
                    failed_cause,
                    actor,
                    outcome,
                    why,
                    control.origin if control is not None else "",
                )
            )
        except (OSError, HeadraceError) as error:
            log.error("model %s: the audit trail cannot be written: %s", name, error)

    def _drain(self, retirement: Retirement) -> None:
        if not retirement.retired:
            return
        started = time.perf_counter()
        self._retire(retirement.name, retirement.retired)
        closed = sorted(s.version.version for s in retirement.retired)
        try:
            self.transitions.record(
                AuditRecord(
                    retirement.name,
                    retirement.from_version,
                    retirement.to_version,
                    retirement.cause,
                    retirement.actor,
                    AuditOutcome.DRAINED,
                    f"closed version {', '.join(map(str, closed))}",
                    retirement.source,
                    drain_ms=(time.perf_counter() - started) * 1000,
                )
            )
        except (OSError, HeadraceError) as error:
            log.error("model %s: the audit trail cannot be written: %s", retirement.name, error)

    def _retire(self, name: str, retired: list[ServedVersion]) -> None:
        for served in retired:
            left = served.lease.retire(self._settings.drain_timeout_s)
            if left:
                log.warning(
                    "model %s version %d: %d requests still running after the %g s drain "
                    "timeout; closing (they answer UNAVAILABLE)",
                    name,
                    served.version.version,
                    left,
                    self._settings.drain_timeout_s,
                )
            served.version.close()
