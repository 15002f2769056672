"""The lifecycle of served models: load -> warm -> switch -> drain -> close, per model.

Each model has a lock of its own, so loading or draining one model never blocks requests or
loads of another. Requests read an immutable ``ServedModel`` snapshot (one dict lookup, no lock)
and *acquire* the version they run on; a switch publishes a new snapshot atomically, then waits
until the retired versions' in-flight requests are done (``drain_timeout_s``), then closes them.

A version is never visible before it has warmed up through the runner that will serve it; a
version that fails to download, load or warm is reported (``index``, the log, the transitions
metric, the audit trail) and never replaces a serving one. Every transition is in the audit trail
(fsynced) before it takes effect. Versions whose files, config and drift profile are unchanged
are kept across a reload; the ``keep_previous_versions`` that served last stay loaded on standby
(answering nothing) so that ``rollback`` is instant. Which versions load and serve is decided in
``plan.py``; models come from the repository (``load``) or follow MLflow (``follow``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

from headrace.errors import (
    ConfigError,
    FailedPreconditionError,
    HeadraceError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
from headrace.registry.audit import AuditCause, AuditOutcome
from headrace.registry.plan import (
    ModelControl,
    Override,
    VersionInput,
    rollback_target,
    served_aliases,
)
from headrace.registry.reconcile import ModelStore
from headrace.registry.served import ServedModel, ServedVersion, VersionLease
from headrace.registry.swap import Retirement, Transition, file_fingerprint
from headrace.types import ModelIndexEntry

__all__ = [
    "ModelManager",
    "ServedModel",
    "ServedVersion",
    "Transition",
    "VersionLease",
    "check_model_name",
    "file_fingerprint",
]

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


class ModelManager(ModelStore):
    """Owns every served model's lifecycle; thread-safe. Every changing call blocks (files,
    model sessions, the audit fsync, the drain): call it from a worker thread."""

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
                    entries.extend(
                        ModelIndexEntry(name, str(v), "UNAVAILABLE", why)
                        for v, why in sorted(model.failed.items())
                    )
                continue
            # Answering versions, and beside them the versions that failed to replace them.
            rows = {v: ModelIndexEntry(name, str(v), "READY", "") for v in model.versions}
            if not ready_only:
                for v, reason in model.failed.items():
                    rows.setdefault(v, ModelIndexEntry(name, str(v), "UNAVAILABLE", reason))
            entries.extend(rows[v] for v in sorted(rows))
        return entries

    # -- the repository ----------------------------------------------------------------------

    def load_repository(self) -> None:
        """Load every model of the repository; a model that fails is reported and skipped."""
        if self.repository is None:
            return
        for name in self.repository.model_names():
            try:
                self.load(name, cause=AuditCause.STARTUP, actor="startup")
            except HeadraceError:
                continue  # reported by load(): the index shows it, and a log line

    def load(
        self, name: str, *, cause: AuditCause = AuditCause.ADMIN_LOAD, actor: str = "api"
    ) -> Transition:
        """(Re)load a model from the repository; see the module docstring for the steps."""
        check_model_name(name)
        if self.repository is None:
            raise UnavailableError("this engine has no model repository")
        control = self._controls.get(name)
        if control is not None and control.kind == "mlflow":
            raise FailedPreconditionError(
                f"model '{name}' follows {control.reference} in MLflow and changes with it; "
                "use PinModel / RollbackModel to choose its version"
            )
        if name not in self._models and not (self.repository.root / name).is_dir():
            # Checked before a lock is made for the name: unknown names leave no state.
            raise NotFoundError(f"model '{name}' is not in the model repository")
        return self._change(name, lambda control: self._reconcile(name, control, cause, actor))

    # -- MLflow ------------------------------------------------------------------------------

    def follow(
        self,
        name: str,
        *,
        reference: str,
        alias: str | None,
        origin: str,
        provider: Callable[[int], VersionInput],
    ) -> None:
        """Serve ``name`` from MLflow: versions come from ``provider`` (blocking), the serving
        one from ``set_desired``. Until then the model is listed as waiting."""
        check_model_name(name)
        if self.repository is not None and (self.repository.root / name).is_dir():
            raise ConfigError(
                f"model '{name}' is in the model repository and referenced with --model: "
                "serve it from one source"
            )
        with self._lock_for(name):
            self._controls[name] = ModelControl(
                "mlflow",
                origin=origin,
                reference=reference,
                followed_alias=alias,
                provider=provider,
            )
            if name not in self._models:
                self._publish(
                    ServedModel(
                        name, None, {}, "UNAVAILABLE", f"waiting for {reference} from {origin}"
                    )
                )

    def set_desired(
        self,
        name: str,
        version: int,
        *,
        cause: AuditCause,
        actor: str,
        files: VersionInput | None = None,
    ) -> Transition:
        """The source now points at ``version``: load, warm and switch to it (unless pinned).
        ``files``: the version as the caller just fetched it (its download time is audited)."""

        def change(control: ModelControl) -> Retirement:
            saved = control.override
            ended = control.desired_moved(version)
            reason = (
                f"the {ended.kind} to version {ended.version} ended: the source moved on"
                if ended is not None
                else ""
            )
            if control.override is not None:
                self._record_quietly(
                    name,
                    version,
                    f"{control.override.kind} to version {control.override.version} by "
                    f"{control.override.actor} holds; not switching",
                    cause,
                    actor,
                    AuditOutcome.IGNORED,
                )
                return Retirement(name)
            fetched = {version: files} if files is not None else None
            try:
                return self._reconcile(name, control, cause, actor, reason, fetched=fetched)
            except BaseException:
                control.override = saved  # nothing switched: a rollback holds
                raise

        return self._change(name, change)

    def set_aliases(self, name: str, aliases: Mapping[str, int], actor: str) -> Transition:
        """The source's alias map changed: requests may name the aliases; with
        ``serve_aliases`` the versions they point at load (reported if they cannot)."""

        def change(control: ModelControl) -> Retirement:
            control.aliases = dict(aliases)
            model = self._models.get(name)
            if model is None or not model.versions:
                return Retirement(name)
            if self._settings.serve_aliases:
                return self._reconcile(name, control, AuditCause.ALIAS_MOVED, actor)
            serving = model.serving_version
            assert serving is not None
            shown = served_aliases(control, serving, model.versions, model.aliases)
            self._publish(dataclasses.replace(model, aliases=shown))
            return Retirement(name)

        return self._change(name, change)

    def note_failure(
        self,
        name: str,
        version: int | None,
        reason: str,
        *,
        cause: AuditCause,
        actor: str,
        outcome: AuditOutcome = AuditOutcome.FAILED,
    ) -> None:
        """A version the source offers cannot be taken (download failed, corrupt, not READY):
        reported beside what serves, which stays."""
        with self._lock_for(name):
            self._fail(name, version, reason, cause, actor, outcome)

    def note_source(self, name: str, note: str) -> None:
        """How the model's source is doing (e.g. unreachable); shown while nothing serves."""
        with self._lock_for(name):
            control = self._controls.get(name)
            if control is None:
                return
            control.source_note = note
            model = self._models.get(name)
            if model is not None and not model.versions and note:
                self._publish(dataclasses.replace(model, reason=note))

    # -- admin -------------------------------------------------------------------------------

    def pin(self, name: str, label: str, actor: str) -> Transition:
        """Serve ``label`` (a version number or an alias) until ``unpin``, whatever the source
        says; the version loads first if it is not loaded."""

        def change(control: ModelControl) -> Retirement:
            number = _version_of(name, label, control.aliases)
            saved = control.override
            control.override = Override("pin", number, control.desired, actor)
            try:
                return self._reconcile(
                    name, control, AuditCause.ADMIN_PIN, actor, f"pinned to {label}", True
                )
            except BaseException:
                control.override = saved
                raise

        return self._change(name, change, managed=True)

    def unpin(self, name: str, actor: str) -> Transition:
        """Back to the version the source wants."""

        def change(control: ModelControl) -> Retirement:
            saved = control.override
            if saved is None:
                raise FailedPreconditionError(f"model '{name}' is not pinned or rolled back")
            control.override = None
            try:
                return self._reconcile(
                    name,
                    control,
                    AuditCause.ADMIN_UNPIN,
                    actor,
                    f"{saved.kind} to version {saved.version} lifted",
                    True,
                )
            except BaseException:
                control.override = saved
                raise

        return self._change(name, change, managed=True)

    def rollback(self, name: str, actor: str) -> Transition:
        """Back to the version that served before the current one (kept warm: instant); it
        holds until ``unpin`` or until the source moves to yet another version. Each rollback
        walks one version further back."""

        def change(control: ModelControl) -> Retirement:
            model = self._models.get(name)
            serving = model.serving_version if model is not None else None
            target = rollback_target(control.history, serving)
            if target is None:
                raise FailedPreconditionError(
                    f"model '{name}' has no earlier serving version to roll back to"
                )
            saved = (list(control.history), control.override)
            if serving in control.history:
                control.history.remove(serving)
            control.override = Override("rollback", target, control.desired, actor)
            try:
                return self._reconcile(
                    name,
                    control,
                    AuditCause.ADMIN_ROLLBACK,
                    actor,
                    f"rolled back from version {serving}",
                    True,
                )
            except BaseException:
                control.history, control.override = saved
                raise

        return self._change(name, change, managed=True)

    def unload(
        self, name: str, *, cause: AuditCause = AuditCause.ADMIN_UNLOAD, actor: str = "api"
    ) -> Transition:
        """Stop serving a model; requests already running finish (up to the drain timeout)."""
        check_model_name(name)
        model = self._models.get(name)
        if model is None or not model.versions:
            raise NotFoundError(f"model '{name}' is not loaded")
        return self._change(name, lambda control: self._unload_locked(name, cause, actor))

    def close(self) -> None:
        """Drain and release every model."""
        with self._publish_lock:
            self._closed = True
            models = self._models
            self._models = {}
        for name, model in models.items():
            self._retire(name, list(model.loaded().values()))
        self.transitions.close()

    # -- internals ---------------------------------------------------------------------------

    def _change(
        self, name: str, change: Callable[[ModelControl], Retirement], managed: bool = False
    ) -> Transition:
        """Run ``change`` under the model's lock, then drain what it retired."""
        check_model_name(name)
        with self._lock_for(name):
            if self._closed:
                raise UnavailableError("the engine is shutting down")
            control = self._controls.get(name)
            if control is None:
                if managed and name not in self._models:
                    raise NotFoundError(f"unknown model '{name}'")
                if self.repository is None:
                    raise NotFoundError(f"model '{name}' is not followed in a registry")
                control = self._controls[name] = ModelControl(
                    "repository", origin=str(self.repository.root / name)
                )
            retirement = change(control)
        self._drain(retirement)
        return Transition(name, retirement.from_version, retirement.to_version)


def _version_of(name: str, label: str, aliases: Mapping[str, int]) -> int:
    if label.isdigit() and int(label) > 0:
        return int(label)
    if label in aliases:
        return aliases[label]
    known = ", ".join(sorted(aliases)) or "none"
    raise NotFoundError(f"model '{name}' has no version or alias '{label}' (aliases: {known})")
