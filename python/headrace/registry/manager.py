"""The lifecycle of served models: load -> warm -> switch -> drain -> close, per model.

Each model has a lock of its own, so loading or draining one model never blocks requests or
loads of another. Requests read an immutable ``ServedModel`` snapshot (one dict lookup, no lock)
and *acquire* the version they run on; a switch publishes a new snapshot atomically, then waits
until the old versions' in-flight requests are done (``drain_timeout_s``), then closes them.

A version is never visible before it has warmed up through the runner that will serve it; a
version that fails to load or warm is reported (``index``, the log) and never replaces a serving
one. Versions whose files, config and drift profile are unchanged are kept across a reload.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from headrace.config import ModelConfig, ServerSettings
from headrace.engine.completions import CompletionRouter
from headrace.engine.version import ModelVersion
from headrace.errors import (
    HeadraceError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
from headrace.monitoring.drift.served import reference_stamp
from headrace.monitoring.metrics import Metrics
from headrace.registry.filesystem import FilesystemRepository, ModelSource
from headrace.types import ModelIndexEntry

log = logging.getLogger(__name__)

# Model names travel into paths and metrics labels: printable, no separators, bounded.
MAX_MODEL_NAME_CHARS = 200


def check_model_name(name: str) -> None:
    """INVALID_ARGUMENT for a name that is not a plain folder name (no path is echoed)."""
    if not name:
        raise InvalidArgumentError("model name must not be empty")
    if len(name) > MAX_MODEL_NAME_CHARS:
        raise InvalidArgumentError(f"model name is longer than {MAX_MODEL_NAME_CHARS} characters")
    if name in (".", "..") or name.startswith(".") or "/" in name or "\\" in name:
        raise InvalidArgumentError(
            f"model name {name!r} is not valid: a model name is a plain folder name "
            "(no path separators, no '..', not hidden)"
        )
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise InvalidArgumentError("model name contains control characters")


def file_fingerprint(path: Path) -> str:
    """A digest of the model file: a file replaced at the same version number reloads (read
    only at load time; timestamps alone can miss a same-size rewrite within their resolution)."""
    digest = hashlib.blake2b(digest_size=16)
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class VersionLease:
    """Counts a version's in-flight requests so that a switch can wait for them to finish."""

    def __init__(self) -> None:
        self._condition = threading.Condition(threading.Lock())
        self._in_flight = 0
        self._retired = False

    def acquire(self) -> bool:
        """False once the version is retired: the caller looks up the new snapshot."""
        with self._condition:
            if self._retired:
                return False
            self._in_flight += 1
            return True

    def release(self) -> None:
        with self._condition:
            self._in_flight -= 1
            if self._in_flight == 0 and self._retired:
                self._condition.notify_all()

    def retire(self, timeout_s: float) -> int:
        """No new request from now on; wait for those in flight. Returns how many remain."""
        deadline = time.monotonic() + timeout_s
        with self._condition:
            self._retired = True
            while self._in_flight > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._condition.wait(left)
            return self._in_flight


@dataclass
class ServedVersion:
    version: ModelVersion
    lease: VersionLease
    fingerprint: str


@dataclass(frozen=True)
class ServedModel:
    """An immutable snapshot of one model: what requests see."""

    name: str
    config: ModelConfig | None
    versions: dict[int, ServedVersion]
    state: str  # READY or UNAVAILABLE
    reason: str = ""
    failed: dict[int, str] = field(default_factory=dict)  # version -> why it did not load

    @property
    def latest(self) -> ServedVersion | None:
        return self.versions[max(self.versions)] if self.versions else None


class ModelManager:
    """Owns every served model's lifecycle; thread-safe."""

    def __init__(
        self,
        repository: FilesystemRepository | None,
        settings: ServerSettings,
        metrics: Metrics,
        completions: CompletionRouter,
    ) -> None:
        self.repository = repository
        self._settings = settings
        self._metrics = metrics
        self._completions = completions
        # Replaced, never mutated in place: readers take it without a lock.
        self._models: dict[str, ServedModel] = {}
        self._publish_lock = threading.Lock()  # serialises snapshot replacement only
        self._model_locks: dict[str, threading.Lock] = {}
        self._model_locks_lock = threading.Lock()
        self._closed = False

    # -- reading -----------------------------------------------------------------------------

    def get(self, name: str) -> ServedModel | None:
        return self._models.get(name)

    def models(self) -> dict[str, ServedModel]:
        return self._models

    def index(self, ready_only: bool = False) -> list[ModelIndexEntry]:
        models = self._models
        names = set(models)
        if self.repository is not None and not ready_only:
            names.update(self.repository.model_names())
        entries: list[ModelIndexEntry] = []
        for name in sorted(names):
            model = models.get(name)
            if model is None:
                entries.append(ModelIndexEntry(name, "", "UNAVAILABLE", "not loaded"))
                continue
            if not model.versions:
                if not ready_only:
                    entries.append(ModelIndexEntry(name, "", model.state, model.reason))
                continue
            # Serving versions, and beside them the versions that failed to replace them.
            rows = {v: ModelIndexEntry(name, str(v), "READY", "") for v in model.versions}
            if not ready_only:
                for v, reason in model.failed.items():
                    rows.setdefault(v, ModelIndexEntry(name, str(v), "UNAVAILABLE", reason))
            entries.extend(rows[v] for v in sorted(rows))
        return entries

    # -- changing ----------------------------------------------------------------------------

    def _lock_for(self, name: str) -> threading.Lock:
        with self._model_locks_lock:
            lock = self._model_locks.get(name)
            if lock is None:
                lock = self._model_locks[name] = threading.Lock()
            return lock

    def _publish(self, model: ServedModel) -> None:
        with self._publish_lock:
            models = dict(self._models)
            models[model.name] = model
            self._models = models

    def load_repository(self) -> None:
        """Load every model of the repository; a model that fails is reported and skipped."""
        if self.repository is None:
            return
        for name in self.repository.model_names():
            try:
                self.load(name)
            except HeadraceError:
                continue  # reported by load(): the index shows it, and a log line

    def load(self, name: str) -> None:
        """(Re)load a model from the repository; see the module docstring for the steps."""
        check_model_name(name)
        if self.repository is None:
            raise UnavailableError("this engine has no model repository")
        if name not in self._models and not (self.repository.root / name).is_dir():
            # Checked before a lock is made for the name: unknown names leave no state.
            raise NotFoundError(f"model '{name}' is not in the model repository")
        with self._lock_for(name):
            if self._closed:
                raise UnavailableError("the engine is shutting down")
            previous = self._models.get(name)
            try:
                source = self.repository.read(name)
            except NotFoundError:
                raise NotFoundError(f"model '{name}' is not in the model repository") from None
            except HeadraceError as error:
                self._record_failure(name, previous, {}, error.message)
                raise
            built, kept, failed = self._build(source, previous)
            if failed:
                for served in built.values():
                    served.version.close()
                version, reason = next(iter(failed.items()))
                self._record_failure(name, previous, failed, reason)
                raise UnavailableError(f"model '{name}' version {version} failed to load: {reason}")
            versions = {**kept, **built}
            self._publish(ServedModel(name, source.config, versions, "READY"))
            retired = [
                served
                for number, served in (previous.versions.items() if previous else ())
                if versions.get(number) is not served
            ]
        log.info("model %s ready, versions %s", name, sorted(versions))
        self._retire(name, retired)

    def _build(
        self, source: ModelSource, previous: ServedModel | None
    ) -> tuple[dict[int, ServedVersion], dict[int, ServedVersion], dict[int, str]]:
        """(newly built and started, kept unchanged, failed with reasons)."""
        built: dict[int, ServedVersion] = {}
        kept: dict[int, ServedVersion] = {}
        for version_source in source.versions:
            number = version_source.version
            old = previous.versions.get(number) if previous else None
            try:
                fingerprint = file_fingerprint(version_source.path)
            except OSError as error:
                return built, kept, {number: f"model file unreadable: {error.strerror}"}
            if (
                old is not None
                and previous is not None
                and previous.config is not None
                and previous.config.serving_settings() == source.config.serving_settings()
                and old.fingerprint == fingerprint
                and old.version.drift_reference == reference_stamp(old.version.directory)
            ):
                kept[number] = old
                continue
            try:
                version = ModelVersion(
                    source.name,
                    number,
                    version_source.path,
                    version_source.backend,
                    source.config,
                    self._settings,
                    self._metrics,
                )
                version.start(self._completions)
            except HeadraceError as error:
                return built, kept, {number: error.message}
            except Exception as error:
                log.exception("model %s version %d failed to load", source.name, number)
                return built, kept, {number: f"{type(error).__name__}: {error}"}
            built[number] = ServedVersion(version, VersionLease(), fingerprint)
        return built, kept, {}

    def _record_failure(
        self, name: str, previous: ServedModel | None, failed: dict[int, str], reason: str
    ) -> None:
        log.error("model %s failed to load: %s", name, reason)
        if previous is not None and previous.versions:
            self._publish(
                ServedModel(
                    name,
                    previous.config,
                    previous.versions,
                    "READY",
                    f"last reload failed: {reason}",
                    failed,
                )
            )
            return
        self._publish(ServedModel(name, None, {}, "UNAVAILABLE", reason, failed))

    def unload(self, name: str) -> None:
        """Stop serving a model; requests already running finish (up to the drain timeout)."""
        check_model_name(name)
        with self._lock_for(name):
            model = self._models.get(name)
            if model is None or not model.versions:
                raise NotFoundError(f"model '{name}' is not loaded")
            self._publish(ServedModel(name, model.config, {}, "UNAVAILABLE", "unloaded"))
        self._retire(name, list(model.versions.values()))

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

    def close(self) -> None:
        """Drain and release every model."""
        with self._publish_lock:
            self._closed = True
            models = self._models
            self._models = {}
        for name, model in models.items():
            self._retire(name, list(model.versions.values()))
