"""The audit trail (``--audit-log PATH``): one JSON object per line, of model transitions and of
endpoint changes.

``append`` writes the record and fsyncs the file before it returns, so the manager calls it before
a switch takes effect and a transition that served traffic is on disk even after ``kill -9`` or a
power cut. A line torn by a crash mid-write is skipped when reading (with a log line), and the
next append starts on a fresh line. Appends are serialised by a lock; ``append`` blocks for the
fsync, so on the event loop use ``append_async`` (a worker thread).

Every record has ``kind``, ``time`` (UTC, ISO 8601) and ``time_unix_s``. A model transition
(``kind`` "model"; a line without ``kind`` is one, as files written before endpoints were audited
hold): ``model``, ``from_version`` -> ``to_version``, ``cause``, ``actor``, ``outcome``,
``reason``, ``source``, and the milliseconds spent in ``download_ms`` / ``load_ms`` / ``warm_ms`` /
``drain_ms`` (null when not measured). An endpoint change (``kind`` "endpoint"): ``endpoint``,
``action``, ``actor``, ``variant``, ``from`` -> ``to`` (objects holding what changed: the config
keys of an update, the active colour, the candidate's percent), ``reason``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from headrace.errors import InvalidArgumentError
from headrace.registry.base import fsync_directory

log = logging.getLogger(__name__)


class AuditCause(enum.StrEnum):
    """Why a transition happened."""

    STARTUP = "startup"
    ALIAS_MOVED = "alias_moved"
    VERSION_ADDED = "version_added"
    VERSION_REMOVED = "version_removed"
    FILE_CHANGED = "file_changed"
    ADMIN_LOAD = "admin_load"
    ADMIN_UNLOAD = "admin_unload"
    ADMIN_ROLLBACK = "admin_rollback"
    ADMIN_PIN = "admin_pin"
    ADMIN_UNPIN = "admin_unpin"
    LOAD_FAILED = "load_failed"


class AuditOutcome(enum.StrEnum):
    """What came of it. ``switched`` is written before the switch takes effect; ``drained``
    after the old version drained (with ``drain_ms``)."""

    SWITCHED = "switched"
    DRAINED = "drained"
    UNLOADED = "unloaded"
    FAILED = "failed"
    IGNORED = "ignored"


def _optional_ms(value: Any, key: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise InvalidArgumentError(
            f"audit record: '{key}' must be milliseconds >= 0, got {value!r}"
        )
    return float(value)


class EndpointAction(enum.StrEnum):
    """What changed an endpoint: an operator's AdminService call, or the canary's own gates."""

    CREATED = "created"
    UPDATED = "updated"
    DELETED = "deleted"
    SWITCH = "switch"  # blue-green: another colour active
    ROLLBACK = "rollback"  # blue-green back to the previous colour, or a canary by an operator
    CANARY_ROLLBACK = "canary_rollback"  # a failed gate set the candidate to 0 %
    CANARY_PROMOTION = "canary_promotion"  # the candidate reached 100 %


@dataclass(frozen=True)
class AuditRecord:
    kind: ClassVar[str] = "model"

    model: str
    from_version: int | None
    to_version: int | None
    cause: AuditCause
    actor: str  # "poller", "watcher", a token name, a client-certificate subject
    outcome: AuditOutcome
    reason: str = ""
    source: str = ""  # e.g. the MLflow URI or the repository folder
    download_ms: float | None = None
    load_ms: float | None = None
    warm_ms: float | None = None
    drain_ms: float | None = None
    time_unix_s: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        # Accept the enums' string values too; anything else is a caller's bug, said plainly.
        try:
            object.__setattr__(self, "cause", AuditCause(self.cause))
            object.__setattr__(self, "outcome", AuditOutcome(self.outcome))
        except ValueError as error:
            raise InvalidArgumentError(f"audit record: {error}") from None
        for key in ("download_ms", "load_ms", "warm_ms", "drain_ms"):
            object.__setattr__(self, key, _optional_ms(getattr(self, key), key))

    @property
    def time(self) -> datetime:
        return datetime.fromtimestamp(self.time_unix_s, UTC)

    def to_json(self) -> str:
        content: dict[str, Any] = {
            "kind": self.kind,
            "time": self.time.isoformat().replace("+00:00", "Z"),
        }
        content.update(dataclasses.asdict(self))
        content["cause"] = str(self.cause)
        content["outcome"] = str(self.outcome)
        return json.dumps(content, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> AuditRecord:
        raw = json.loads(line)
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        raw.pop("time", None)  # derived from time_unix_s
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in raw.items() if key in names})


def _change(value: Any, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidArgumentError(f"audit record: '{key}' must be an object, got {value!r}")
    return value


@dataclass(frozen=True)
class EndpointAuditRecord:
    """An endpoint change: ``before`` -> ``after`` hold only what changed (written as the JSON
    keys ``from`` and ``to``)."""

    kind: ClassVar[str] = "endpoint"

    endpoint: str
    action: EndpointAction
    actor: str  # a token name, a client-certificate subject, a peer; "canary" for its gates
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)
    variant: str = ""  # the variant acted on (switched to, rolled back, promoted)
    reason: str = ""
    time_unix_s: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "action", EndpointAction(self.action))
        except ValueError as error:
            raise InvalidArgumentError(f"audit record: {error}") from None
        object.__setattr__(self, "before", _change(self.before, "from"))
        object.__setattr__(self, "after", _change(self.after, "to"))

    @property
    def time(self) -> datetime:
        return datetime.fromtimestamp(self.time_unix_s, UTC)

    def to_json(self) -> str:
        content = {
            "kind": self.kind,
            "time": self.time.isoformat().replace("+00:00", "Z"),
            "time_unix_s": self.time_unix_s,
            "endpoint": self.endpoint,
            "action": str(self.action),
            "actor": self.actor,
            "variant": self.variant,
            "from": self.before,
            "to": self.after,
            "reason": self.reason,
        }
        return json.dumps(content, separators=(",", ":"), default=str)

    @classmethod
    def from_json(cls, line: str) -> EndpointAuditRecord:
        raw = json.loads(line)
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        return cls(
            endpoint=raw["endpoint"],
            action=raw["action"],
            actor=raw.get("actor", ""),
            before=raw.get("from", {}),
            after=raw.get("to", {}),
            variant=raw.get("variant", ""),
            reason=raw.get("reason", ""),
            time_unix_s=raw["time_unix_s"],
        )


AnyAuditRecord = AuditRecord | EndpointAuditRecord


def parse_record(line: str) -> AnyAuditRecord:
    """One line of the trail as the record its ``kind`` says (no ``kind``: a model record)."""
    raw = json.loads(line)
    if not isinstance(raw, dict):
        raise ValueError("not a JSON object")
    kind = raw.get("kind", AuditRecord.kind)
    if kind == EndpointAuditRecord.kind:
        return EndpointAuditRecord.from_json(line)
    if kind != AuditRecord.kind:
        raise ValueError(f"unknown record kind {kind!r}")
    return AuditRecord.from_json(line)


_Record = TypeVar("_Record", AuditRecord, EndpointAuditRecord)


class AuditLog:
    """An append-only, fsynced JSON-lines file; see the module docstring."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        created = not path.exists()
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._lock = threading.Lock()
        if created:
            fsync_directory(path.parent)
        elif _ends_torn(path):
            # The last append was cut short by a crash: start the next record on its own line.
            self._write(b"\n")

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def append(self, record: _Record) -> _Record:
        """Write one record and fsync; when this returns the record survives a crash."""
        self._write((record.to_json() + "\n").encode())
        return record

    async def append_async(self, record: _Record) -> _Record:
        """``append`` on a worker thread (the fsync blocks)."""
        return await asyncio.to_thread(self.append, record)

    def _write(self, data: bytes) -> None:
        with self._lock:
            if self._fd < 0:
                raise InvalidArgumentError(f"audit log {self.path} is closed")
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            os.fsync(self._fd)

    def read(
        self,
        model: str | None = None,
        since_unix_s: float | None = None,
        until_unix_s: float | None = None,
        limit: int | None = None,
    ) -> list[AuditRecord]:
        """Model transitions in file order, filtered by model and ``since <= time < until``;
        with ``limit``, the last ``limit`` of them."""
        records = [
            r
            for r in self.read_all(since_unix_s, until_unix_s)
            if isinstance(r, AuditRecord) and (model is None or r.model == model)
        ]
        return _last(records, limit)

    def read_endpoints(
        self,
        endpoint: str | None = None,
        since_unix_s: float | None = None,
        until_unix_s: float | None = None,
        limit: int | None = None,
    ) -> list[EndpointAuditRecord]:
        """Endpoint changes, filtered and limited as :meth:`read` does."""
        records = [
            r
            for r in self.read_all(since_unix_s, until_unix_s)
            if isinstance(r, EndpointAuditRecord) and (endpoint is None or r.endpoint == endpoint)
        ]
        return _last(records, limit)

    def read_all(
        self, since_unix_s: float | None = None, until_unix_s: float | None = None
    ) -> list[AnyAuditRecord]:
        """Every readable record of either kind, in file order, with ``since <= time < until``."""
        records: list[AnyAuditRecord] = []
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = parse_record(line)
            except (ValueError, TypeError, KeyError, InvalidArgumentError) as error:
                log.warning(
                    "audit log %s line %d unreadable (%s); skipped", self.path, number, error
                )
                continue
            if since_unix_s is not None and record.time_unix_s < since_unix_s:
                continue
            if until_unix_s is not None and record.time_unix_s >= until_unix_s:
                continue
            records.append(record)
        return records


_T = TypeVar("_T")


def _last(records: list[_T], limit: int | None) -> list[_T]:
    if limit is not None:
        return records[-limit:] if limit > 0 else []
    return records


def _ends_torn(path: Path) -> bool:
    size = path.stat().st_size
    if size == 0:
        return False
    with path.open("rb") as handle:
        handle.seek(size - 1)
        return handle.read(1) != b"\n"
