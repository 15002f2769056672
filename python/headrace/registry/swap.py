"""The mechanics of one switch: start a version (load, warm), say what a new snapshot changes
(the audit records written before it is published), drain and close what it retired."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from headrace.config import ServerSettings
from headrace.engine.completions import CompletionRouter
from headrace.engine.features import EngineFeatures
from headrace.engine.version import ModelVersion
from headrace.errors import HeadraceError, InternalError
from headrace.monitoring.drift.served import reference_stamp
from headrace.monitoring.metrics import Metrics
from headrace.registry.audit import AuditCause, AuditOutcome, AuditRecord
from headrace.registry.plan import VersionInput, alias_map
from headrace.registry.served import ServedModel, ServedVersion, VersionLease

log = logging.getLogger("headrace.registry.manager")


def file_fingerprint(path: Path) -> str:
    """A digest of the model file: a file replaced at the same version number reloads (read
    only at load time; timestamps alone can miss a same-size rewrite within their resolution)."""
    digest = hashlib.blake2b(digest_size=16)
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def unchanged(served: ServedVersion, wanted: VersionInput) -> bool:
    """The loaded version has the files, settings and drift profile ``wanted`` describes."""
    version = served.version
    return (
        served.fingerprint == wanted.fingerprint
        and version.config.serving_settings() == wanted.config.serving_settings()
        and version.drift_reference == reference_stamp(version.directory)
    )


def start_version(
    name: str,
    number: int,
    wanted: VersionInput,
    settings: ServerSettings,
    metrics: Metrics,
    completions: CompletionRouter,
    features: EngineFeatures | None = None,
) -> ServedVersion:
    """Load and warm a version through the runner that will serve it; raises HeadraceError
    (everything it made released) when it cannot serve."""
    started = time.perf_counter()
    try:
        version = ModelVersion(
            name,
            number,
            wanted.source.path,
            wanted.source.backend,
            wanted.config,
            settings,
            metrics,
            features=features,
        )
        loaded = time.perf_counter()
        version.start(completions, wanted.input_example)
    except HeadraceError:
        raise
    except Exception as error:
        log.exception("model %s version %d failed to load", name, number)
        raise InternalError(f"{type(error).__name__}: {error}") from None
    warmed = time.perf_counter()
    return ServedVersion(
        version,
        VersionLease(),
        wanted.fingerprint,
        wanted.origin,
        download_ms=wanted.download_ms,
        load_ms=(loaded - started) * 1000,
        warm_ms=(warmed - loaded) * 1000,
    )


@dataclass
class Retirement:
    """Versions a switch took out of service: drained and closed after the switch."""

    name: str
    retired: list[ServedVersion] = field(default_factory=list)
    from_version: int | None = None
    to_version: int | None = None
    cause: AuditCause = AuditCause.ADMIN_LOAD
    actor: str = ""
    source: str = ""


@dataclass(frozen=True)
class Transition:
    """What one call of the manager did to the serving version."""

    model: str
    from_version: int | None
    to_version: int | None


def effects(
    previous: ServedModel | None,
    snapshot: ServedModel,
    built: Mapping[int, ServedVersion],
    cause: AuditCause,
    actor: str,
    source: str,
    reason: str,
    announce: bool,
) -> list[AuditRecord]:
    """The audit records of replacing ``previous`` by ``snapshot``: the serving switch, versions
    loaded beside it, versions that stop answering."""
    old = previous.serving_version if previous is not None else None
    new = snapshot.serving_version
    old_versions = previous.versions if previous is not None else {}
    aliases = alias_map(snapshot.aliases)
    records: list[AuditRecord] = []

    def record(
        outcome: AuditOutcome, before: int | None, after: int | None, why: str, built_as: int | None
    ) -> None:
        started = built.get(built_as) if built_as is not None else None
        records.append(
            AuditRecord(
                snapshot.name,
                before,
                after,
                cause,
                actor,
                outcome,
                reason=why,
                source=source,
                download_ms=started.download_ms if started is not None else None,
                load_ms=started.load_ms if started is not None else None,
                warm_ms=started.warm_ms if started is not None else None,
            )
        )

    if old != new or new in built or announce:
        record(AuditOutcome.SWITCHED, old, new, reason, new)
    for number in sorted(built):
        if number == new:
            continue
        named = aliases.get(number)
        why = f"answers beside version {new}" + (f" (alias {', '.join(named)})" if named else "")
        record(
            AuditOutcome.SWITCHED, number if number in old_versions else None, number, why, number
        )
    for number in sorted(old_versions):
        if number not in snapshot.versions and number != old:
            where = "kept warm (standby)" if number in snapshot.standby else "closed after draining"
            record(AuditOutcome.UNLOADED, number, None, f"no longer answers; {where}", None)
    return records
