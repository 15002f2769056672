"""What requests see of a model: immutable ``ServedModel`` snapshots of leased ``ServedVersion``s.

A snapshot is replaced, never changed: a request reads it without a lock, picks a version and
*acquires* its lease; a switch publishes a new snapshot, and a version that leaves it is retired
(no new lease) and closed once its in-flight requests are done.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from headrace.config import ModelConfig
from headrace.engine.version import ModelVersion
from headrace.errors import NotFoundError

# How often a retiring version rechecks its in-flight count while it waits for a release.
RETIRE_POLL_S = 0.05


class VersionLease:
    """Counts a version's in-flight requests so that a switch can wait for them to finish, and
    among them the clients' (shadow copies are not), which shadows yield to.

    Every request acquires and releases one, so the counting takes no lock: a request in flight
    is one token in a list (``append`` to acquire, ``pop`` to release: each one C call, atomic
    under the GIL), client requests and shadow copies in lists apart, so that the count is a
    ``len`` -- read for every answer of a mirrored endpoint. An acquire adds its token *before*
    it reads the retired flag and takes it back when the flag is set, so a retire that has set
    the flag and then sees nothing in flight cannot miss a request that will still run. Only the
    retiring side waits, on a condition that a release signals once the version is retired."""

    def __init__(self) -> None:
        self._clients: list[None] = []
        self._shadows: list[None] = []
        self._retired = False
        self._condition = threading.Condition(threading.Lock())

    @property
    def clients(self) -> int:
        """Client requests in flight now (shadow copies not counted): a snapshot."""
        return len(self._clients)

    def acquire(self, client: bool = True) -> bool:
        """False once the version is retired: the caller looks up the new snapshot.
        ``client``: False for a shadow copy (release it alike)."""
        (self._clients if client else self._shadows).append(None)
        if self._retired:
            self.release(client)
            return False
        return True

    def release(self, client: bool = True) -> None:
        (self._clients if client else self._shadows).pop()
        if self._retired:
            with self._condition:
                self._condition.notify_all()

    def _in_flight(self) -> int:
        return len(self._clients) + len(self._shadows)

    def retire(self, timeout_s: float) -> int:
        """No new request from now on; wait for those in flight. Returns how many remain."""
        deadline = time.monotonic() + timeout_s
        with self._condition:
            self._retired = True
            while (left_in_flight := self._in_flight()) > 0:
                left_s = deadline - time.monotonic()
                if left_s <= 0:
                    break
                # Bounded wait: a release racing the flag may notify before this waits.
                self._condition.wait(min(left_s, RETIRE_POLL_S))
            return left_in_flight


@dataclass
class ServedVersion:
    """A started version with its lease, the digest of its files and how it came to be."""

    version: ModelVersion
    lease: VersionLease
    fingerprint: str
    origin: str = ""  # the repository folder or the MLflow URI it came from
    loaded_unix_s: float = field(default_factory=time.time)
    download_ms: float | None = None
    load_ms: float | None = None
    warm_ms: float | None = None


@dataclass(frozen=True)
class ServedModel:
    """An immutable snapshot of one model: what requests see.

    ``versions`` answer requests (by number or alias); ``serving`` is the one that answers a
    request that names no version (None: the newest). ``standby`` versions are loaded and warm
    but answer nothing: they make a rollback instant. ``failed`` says why versions did not load
    or were not taken (a FAILED / PENDING registry version).
    """

    name: str
    config: ModelConfig | None
    versions: Mapping[int, ServedVersion]
    state: str  # READY or UNAVAILABLE
    reason: str = ""
    failed: Mapping[int, str] = field(default_factory=dict)  # version -> why it is not serving
    serving: int | None = None
    standby: Mapping[int, ServedVersion] = field(default_factory=dict)
    aliases: Mapping[str, int] = field(default_factory=dict)

    @property
    def latest(self) -> ServedVersion | None:
        """The version that answers requests that name none."""
        if self.serving is not None and self.serving in self.versions:
            return self.versions[self.serving]
        return self.versions[max(self.versions)] if self.versions else None

    @property
    def serving_version(self) -> int | None:
        latest = self.latest
        return latest.version.version if latest is not None else None

    def loaded(self) -> dict[int, ServedVersion]:
        """Every loaded version: those that answer and those on standby."""
        return {**self.standby, **self.versions}

    def resolve(self, label: str | int) -> ServedVersion:
        """The version a request names: a number, or an alias of the model (NotFoundError)."""
        text = str(label)
        if text.isdigit():
            number = int(text)
        elif text in self.aliases:
            number = self.aliases[text]
        else:
            known = ", ".join(sorted(self.aliases)) or "none"
            raise NotFoundError(
                f"model '{self.name}' has no version '{text}' (a number, or an alias: {known})"
            )
        found = self.versions.get(number)
        if found is None:
            via = "" if text.isdigit() else f" (an alias of version {number})"
            raise NotFoundError(
                f"model '{self.name}' has no version '{text}'{via} "
                f"(serving: {', '.join(str(v) for v in sorted(self.versions)) or 'none'})"
            )
        return found
