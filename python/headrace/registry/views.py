"""What ``ListModelVersions`` shows: each model's versions with their state, aliases, load
times, and what its source and its admins want."""

from __future__ import annotations

from dataclasses import dataclass

from headrace.registry.plan import alias_map
from headrace.registry.reconcile import ModelStore
from headrace.registry.served import ServedVersion

# A version's state in the listing.
SERVING = "SERVING"  # answers requests that name no version
LOADED = "LOADED"  # answers requests that name it (its number or an alias)
STANDBY = "STANDBY"  # loaded and warm for an instant rollback; answers nothing
FAILED = "FAILED"  # did not load, or was not taken (a FAILED / PENDING registry version)


@dataclass(frozen=True)
class VersionView:
    version: int
    state: str
    aliases: tuple[str, ...] = ()
    reason: str = ""
    origin: str = ""
    loaded_unix_s: float | None = None
    download_ms: float | None = None
    load_ms: float | None = None
    warm_ms: float | None = None


@dataclass(frozen=True)
class ModelView:
    name: str
    source: str  # "repository" or "mlflow"
    reference: str  # what --model named (MLflow)
    origin: str
    serving: int | None
    desired: int | None  # what the source points at
    override: str  # "", "pin" or "rollback"
    override_version: int | None
    override_actor: str
    aliases: dict[str, int]
    note: str  # e.g. the registry is unreachable, or why nothing serves
    versions: tuple[VersionView, ...]


def _loaded(number: int, state: str, served: ServedVersion, aliases: list[str]) -> VersionView:
    return VersionView(
        number,
        state,
        tuple(aliases),
        origin=served.origin,
        loaded_unix_s=served.loaded_unix_s,
        download_ms=served.download_ms,
        load_ms=served.load_ms,
        warm_ms=served.warm_ms,
    )


def describe_models(store: ModelStore, name: str = "") -> list[ModelView]:
    """Every model (or the one named; NotFoundError is the caller's) as the listing shows it."""
    models = store.models()
    names = [name] if name else sorted(models)
    views: list[ModelView] = []
    for model_name in names:
        model = models.get(model_name)
        control = store.control(model_name)
        if model is None:
            continue
        # The source's map (a pin overrides an alias only for the requests that name it).
        aliases = dict(control.aliases if control is not None else model.aliases)
        by_version = alias_map(aliases)
        serving = model.serving_version
        rows: dict[int, VersionView] = {}
        for number, served in model.versions.items():
            state = SERVING if number == serving else LOADED
            rows[number] = _loaded(number, state, served, by_version.get(number, []))
        for number, served in model.standby.items():
            rows.setdefault(number, _loaded(number, STANDBY, served, by_version.get(number, [])))
        for number, reason in model.failed.items():
            rows.setdefault(
                number, VersionView(number, FAILED, tuple(by_version.get(number, [])), reason)
            )
        override = control.override if control is not None else None
        note = control.source_note if control is not None else ""
        if not model.versions and model.reason and model.reason != note:
            note = f"{note}; {model.reason}" if note else model.reason
        views.append(
            ModelView(
                model_name,
                control.kind if control is not None else "repository",
                control.reference if control is not None else "",
                control.origin if control is not None else "",
                serving,
                control.desired if control is not None else None,
                override.kind if override is not None else "",
                override.version if override is not None else None,
                override.actor if override is not None else "",
                aliases,
                note,
                tuple(rows[v] for v in sorted(rows)),
            )
        )
    return views
