"""Which versions of a model are loaded and which one serves: pure decisions over its state.

A model's ``ModelControl`` holds what its source wants (``desired``: the version an MLflow alias
points at, or the newest version the repository's version policy selects), an admin ``Override``
(a pin, or a rollback that lasts until the source moves on) and the ``history`` of versions that
served. ``choose`` turns that into a ``Choice``: the version that serves, the versions that must
load for it (all or nothing), those loaded when they can be (alias targets), and the standby
versions kept warm so that a rollback is instant. No I/O here: the manager applies the choice.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from headrace.config import ModelConfig
from headrace.errors import NotFoundError
from headrace.registry.base import MaterializedVersion, VersionSource

# Serving versions remembered per model, for rollbacks (a rollback walks back through them).
HISTORY_LENGTH = 32

SourceKind = Literal["repository", "mlflow"]


@dataclass(frozen=True)
class VersionInput:
    """A version ready to load: its model file, its config and what identifies its content."""

    source: VersionSource
    config: ModelConfig
    fingerprint: str
    origin: str
    input_example: Path | None = None  # MLflow's input_example.json: the warm-up sample
    download_ms: float | None = None

    @classmethod
    def from_materialized(cls, found: MaterializedVersion) -> VersionInput:
        return cls(
            found.version_source(),
            found.model_config(),
            found.fingerprint,
            found.origin,
            found.input_example_file,
            found.download_ms,
        )


@dataclass(frozen=True)
class Override:
    """An admin's choice over the source's: ``pin`` lasts until unpinned; ``rollback`` until
    unpinned or until the source points at yet another version than ``desired_at``."""

    kind: Literal["pin", "rollback"]
    version: int
    desired_at: int | None
    actor: str


@dataclass
class ModelControl:
    """The lifecycle state of one model; guarded by the manager's lock for the model."""

    kind: SourceKind
    origin: str = ""  # the repository folder or the MLflow URI
    reference: str = ""  # what --model named (fraud@champion), for MLflow
    followed_alias: str | None = None  # the alias whose target serves (not an extra version)
    desired: int | None = None
    override: Override | None = None
    history: list[int] = field(default_factory=list)  # serving versions, oldest first
    aliases: dict[str, int] = field(default_factory=dict)
    # MLflow: the files of a version (from the cache, else downloaded); blocking.
    provider: Callable[[int], VersionInput] | None = None
    source_note: str = ""  # e.g. "MLflow unreachable since ...": shown with the model
    # Versions that failed to load, by the fingerprint of their files then: not tried again by
    # the watcher or a restart until their files change (an admin's load tries again).
    failed_fingerprints: dict[int, str] = field(default_factory=dict)

    def served(self, version: int) -> None:
        """Remember that ``version`` serves now (moved to the end of the history)."""
        if version in self.history:
            self.history.remove(version)
        self.history.append(version)
        del self.history[:-HISTORY_LENGTH]

    def desired_moved(self, desired: int | None) -> Override | None:
        """The source now wants ``desired``: a rollback ends when it moved on to another version
        (returned, so that the caller can say so); a pin holds."""
        self.desired = desired
        override = self.override
        if override is not None and override.kind == "rollback" and desired != override.desired_at:
            self.override = None
            return override
        return None


@dataclass(frozen=True)
class Choice:
    serving: int
    required: frozenset[int]  # load all of them or change nothing
    optional: frozenset[int]  # alias targets: loaded when they can be, else reported
    standby: tuple[int, ...]  # kept warm if already loaded (never loaded for this)
    dropped: Override | None = None  # an override whose version is gone


def choose(
    control: ModelControl,
    *,
    selected: Sequence[int],
    available: Collection[int] | None,
    loaded: Collection[int],
    keep_previous: int,
    serve_aliases: bool,
) -> Choice:
    """The versions to load and serve. ``selected``: what the source wants loaded (the version
    policy's choice, or the MLflow target); ``available``: every version that could load (None
    when the source does not list them cheaply); ``loaded``: what is loaded now."""
    dropped = None
    override = control.override
    if override is not None and available is not None and override.version not in available:
        control.override, dropped = None, override
    desired = max(selected) if selected else control.desired
    if desired is None and control.override is None:
        raise NotFoundError("no version to serve")
    serving = control.override.version if control.override is not None else desired
    assert serving is not None
    required = frozenset(selected) | {serving}
    optional: frozenset[int] = frozenset()
    if serve_aliases:
        optional = frozenset(
            v
            for alias, v in control.aliases.items()
            if alias != control.followed_alias
            and v not in required
            and (available is None or v in available)
        )
    standby = standby_versions(
        control.history,
        keep_previous,
        serving=serving,
        exclude=required | optional,
        loaded=loaded,
    )
    # What the source wants stays warm while overridden: an unpin is then instant.
    if (
        control.override is not None
        and desired is not None
        and desired in loaded
        and desired not in required | optional
        and desired not in standby
    ):
        standby = (*standby, desired)
    if available is not None:
        standby = tuple(v for v in standby if v in available)
    return Choice(serving, required, optional, standby, dropped)


def standby_versions(
    history: Sequence[int],
    keep_previous: int,
    *,
    serving: int,
    exclude: Collection[int],
    loaded: Collection[int],
) -> tuple[int, ...]:
    """The ``keep_previous`` versions that served last before ``serving`` and are still loaded."""
    kept: list[int] = []
    for version in reversed(history):
        if len(kept) >= keep_previous:
            break
        if version == serving or version in exclude or version in kept:
            continue
        if version in loaded:
            kept.append(version)
    return tuple(kept)


def rollback_target(history: Sequence[int], serving: int | None) -> int | None:
    """The version that served before ``serving`` (None when there is none)."""
    earlier = [v for v in history if v != serving]
    return earlier[-1] if earlier else None


def served_aliases(
    control: ModelControl,
    serving: int,
    answering: Collection[int],
    before: Mapping[str, int],
) -> dict[str, int]:
    """The alias map requests see: the followed alias names what serves (a pin overrides it
    locally); an alias whose version is still loading keeps naming the version it named, so
    that a request naming an alias never fails across a move."""
    aliases: dict[str, int] = {}
    for alias, version in control.aliases.items():
        if alias == control.followed_alias:
            aliases[alias] = serving
        elif version in answering or before.get(alias) not in answering:
            aliases[alias] = version
        else:
            aliases[alias] = before[alias]
    return aliases


def alias_map(aliases: Mapping[str, int]) -> dict[int, list[str]]:
    """version -> its aliases, sorted."""
    by_version: dict[int, list[str]] = {}
    for alias, version in sorted(aliases.items()):
        by_version.setdefault(version, []).append(alias)
    return by_version
