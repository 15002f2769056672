"""Following MLflow: poll each model's alias map and report where each reference should point.

Per poll and model: one ``registered-models/get`` (every alias at once); when the target of a
reference changed, one ``model-versions/get`` for its status. Only a READY target becomes desired;
a PENDING one is asked again next poll, a FAILED one never (MLflow never revives it); both are
reported once. When MLflow cannot be reached, polls back off exponentially (poll_s, 2 poll_s, ...
up to backoff_max_s) with a log line each time; at startup the references are then served from the
model cache's last known alias map. The poller decides nothing about loading: it hands events to
an injected async callback (the lifecycle manager) in order, and goes on polling whatever the
callback does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from headrace.errors import ConfigError, HeadraceError, UnavailableError
from headrace.registry.base import MaterializedVersion, ModelReference, VersionInfo, VersionStatus

log = logging.getLogger(__name__)

DEFAULT_POLL_S = 10.0
DEFAULT_BACKOFF_MAX_S = 60.0
# Spread of each backoff delay, so that a fleet of servers does not retry in lockstep.
_JITTER = 0.1


class PolledSource(Protocol):
    """What the poller needs of a source (``MlflowSource`` has it); every call may block."""

    uri: str

    def aliases(self, model: str) -> dict[str, int]: ...

    def version(self, model: str, version: int) -> VersionInfo: ...

    def cached(self, model: str, version: int) -> MaterializedVersion | None: ...

    def cached_aliases(self, model: str) -> dict[str, int] | None: ...


@dataclass(frozen=True)
class DesiredVersionChanged:
    """``reference`` should now be served by ``to_version`` (READY in the source)."""

    model: str
    reference: ModelReference
    from_version: int | None
    to_version: int
    cause: Literal["startup", "alias_moved"]
    from_cache: bool = False  # decided from the cache's last known aliases: MLflow was down


@dataclass(frozen=True)
class TargetIgnored:
    """A reference points at something that cannot load; the desired version stays."""

    model: str
    reference: ModelReference
    version: int | None  # None when the alias is not set or the model is gone
    status: VersionStatus | None
    reason: str


@dataclass(frozen=True)
class AliasesChanged:
    """The model's alias map (alias -> version) differs from the last one seen."""

    model: str
    aliases: Mapping[str, int]
    from_cache: bool = False


@dataclass(frozen=True)
class SourceUnreachable:
    uri: str
    error: str
    failures: int  # consecutive failed polls
    retry_in_s: float


@dataclass(frozen=True)
class SourceRecovered:
    uri: str
    failures: int
    down_s: float


PollerEvent = (
    DesiredVersionChanged | TargetIgnored | AliasesChanged | SourceUnreachable | SourceRecovered
)
EventCallback = Callable[[PollerEvent], Awaitable[None]]


class RegistryPoller:
    """Polls ``source`` for ``references`` (one per model, each NAME@ALIAS or NAME/VERSION).

    Runs on the event loop; the source's blocking calls go to worker threads. ``cycle`` counts
    poll cycles started (an alias moved before cycle N starts is reported by cycle N at latest).
    """

    def __init__(
        self,
        source: PolledSource,
        references: Sequence[ModelReference],
        on_event: EventCallback,
        *,
        poll_s: float = DEFAULT_POLL_S,
        backoff_max_s: float = DEFAULT_BACKOFF_MAX_S,
    ) -> None:
        if poll_s <= 0 or backoff_max_s < poll_s:
            raise ConfigError(
                f"registry poll: need 0 < poll_s <= backoff_max_s, got {poll_s}, {backoff_max_s}"
            )
        names = [reference.name for reference in references]
        for reference in references:
            if reference.alias is None and reference.version is None:
                raise ConfigError(
                    f"--model {reference}: name an alias to follow (NAME@ALIAS) or a version to "
                    "pin (NAME/VERSION)"
                )
            if names.count(reference.name) > 1:
                raise ConfigError(f"model '{reference.name}' is referenced more than once")
        self.source = source
        self.references = tuple(references)
        self.poll_s = poll_s
        self.backoff_max_s = backoff_max_s
        self.cycle = 0
        self._on_event = on_event
        self._desired: dict[str, int] = {}
        self._aliases: dict[str, dict[str, int]] = {}
        self._reported: dict[str, tuple[int | None, VersionStatus | None, str]] = {}
        self._last: dict[str, DesiredVersionChanged] = {}
        self._retry: set[str] = set()
        self._failed: set[tuple[str, int]] = set()  # FAILED versions: terminal, never asked again
        self._uncached: set[str] = set()  # models already reported as absent from the cache
        self._failures = 0
        self._down_since = 0.0
        self._retry_in_s = poll_s
        self._task: asyncio.Task[None] | None = None

    # -- state the manager may read ------------------------------------------------------

    def desired(self, model: str) -> int | None:
        """The version last reported as desired for ``model``."""
        return self._desired.get(model)

    def aliases(self, model: str) -> dict[str, int]:
        """The alias map last seen for ``model`` (from the cache while MLflow is down)."""
        return dict(self._aliases.get(model, {}))

    @property
    def reachable(self) -> bool:
        return self._failures == 0

    def retry(self, model: str) -> None:
        """Report the last DesiredVersionChanged of ``model`` again at the next poll, unless the
        target moved meanwhile (then that is reported). The manager calls this when loading the
        desired version failed for a reason that may pass (a download cut, a full disk)."""
        if model in self._last:
            self._retry.add(model)

    # -- running -----------------------------------------------------------------------------

    async def start(self, *, poll_now: bool = True) -> None:
        """Poll now (or, after a ``poll_once`` of the caller's, after a pause), then every
        ``poll_s`` (backing off while MLflow is unreachable)."""
        if self._task is None:
            self._task = asyncio.create_task(
                self._run(poll_now), name=f"registry-poller {self.source.uri}"
            )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self, poll_now: bool) -> None:
        if not poll_now:
            await asyncio.sleep(self.poll_s if self.reachable else self._retry_in_s)
        while True:
            try:
                reachable = await self.poll_once()
            except Exception:  # a bug must not end the polling: log it and poll again later
                log.exception("registry %s: poll failed", self.source.uri)
                reachable = True
            await asyncio.sleep(self.poll_s if reachable else self._retry_in_s)

    def _backoff_s(self) -> float:
        delay = min(self.backoff_max_s, self.poll_s * 2.0 ** (self._failures - 1))
        return float(delay * random.uniform(1 - _JITTER, 1 + _JITTER))

    async def poll_once(self) -> bool:
        """One poll cycle over every reference; False when the source was unreachable."""
        self.cycle += 1
        try:
            for reference in self.references:
                await self._poll(reference)
        except UnavailableError as error:
            await self._unreachable(error)
            return False
        if self._failures:
            down_s = time.monotonic() - self._down_since
            log.warning(
                "registry %s reachable again after %d failed polls (%.1f s)",
                self.source.uri,
                self._failures,
                down_s,
            )
            await self._emit(SourceRecovered(self.source.uri, self._failures, down_s))
            self._failures = 0
        return True

    async def _poll(self, reference: ModelReference) -> None:
        model = reference.name
        try:
            aliases = await asyncio.to_thread(self.source.aliases, model)
        except UnavailableError:
            raise
        except HeadraceError as error:  # no such model, or a request MLflow refuses
            await self._ignore(reference, None, None, error.message)
            return
        if aliases != self._aliases.get(model):
            self._aliases[model] = aliases
            await self._emit(AliasesChanged(model, dict(aliases)))
        if reference.alias is not None:
            target = aliases.get(reference.alias)
            if target is None:
                await self._ignore(reference, None, None, f"alias '{reference.alias}' is not set")
                return
        else:
            assert reference.version is not None  # checked in __init__
            target = reference.version
        if target == self._desired.get(model):
            if model in self._retry:
                self._retry.discard(model)
                await self._emit(self._last[model])
            return
        if (model, target) in self._failed:
            return
        try:
            info = await asyncio.to_thread(self.source.version, model, target)
        except UnavailableError:
            raise
        except HeadraceError as error:
            await self._ignore(reference, target, None, error.message)
            return
        if info.status != VersionStatus.READY:
            if info.status == VersionStatus.FAILED:
                self._failed.add((model, target))
            reason = f"version {target} is {info.status}" + (
                f": {info.status_message}" if info.status_message else ""
            )
            await self._ignore(reference, target, info.status, reason)
            return
        previous = self._desired.get(model)
        self._desired[model] = target
        self._reported.pop(model, None)
        cause: Literal["startup", "alias_moved"] = "startup" if previous is None else "alias_moved"
        log.info("registry %s: %s -> version %d (%s)", self.source.uri, reference, target, cause)
        self._retry.discard(model)
        await self._emit(
            self._remember(DesiredVersionChanged(model, reference, previous, target, cause))
        )

    async def _ignore(
        self,
        reference: ModelReference,
        version: int | None,
        status: VersionStatus | None,
        reason: str,
    ) -> None:
        key = (version, status, reason)
        if self._reported.get(reference.name) == key:
            return
        self._reported[reference.name] = key
        serving = self._desired.get(reference.name)
        log.warning(
            "registry %s: %s ignored: %s (desired stays %s)",
            self.source.uri,
            reference,
            reason,
            serving if serving is not None else "none",
        )
        await self._emit(TargetIgnored(reference.name, reference, version, status, reason))

    async def _unreachable(self, error: HeadraceError) -> None:
        if self._failures == 0:
            self._down_since = time.monotonic()
        self._failures += 1
        retry_in_s = self._retry_in_s = self._backoff_s()
        log.warning(
            "registry %s unreachable (%s); serving the versions loaded, poll %d failed in a row, "
            "next try in %.1f s",
            self.source.uri,
            error.message,
            self._failures,
            retry_in_s,
        )
        await self._emit(
            SourceUnreachable(self.source.uri, error.message, self._failures, retry_in_s)
        )
        for reference in self.references:
            if reference.name not in self._desired:
                await self._startup_from_cache(reference)

    async def _startup_from_cache(self, reference: ModelReference) -> None:
        model = reference.name
        aliases = await asyncio.to_thread(self.source.cached_aliases, model)
        if aliases is not None and model not in self._aliases:
            self._aliases[model] = aliases
            await self._emit(AliasesChanged(model, dict(aliases), from_cache=True))
        target = reference.version
        if reference.alias is not None:
            target = (aliases or {}).get(reference.alias)
        cached = (
            await asyncio.to_thread(self.source.cached, model, target)
            if target is not None
            else None
        )
        if cached is None:
            if model in self._uncached:
                return
            self._uncached.add(model)
            log.error(
                "registry %s: %s is not in the model cache; it loads once the registry answers",
                self.source.uri,
                reference,
            )
            return
        assert target is not None
        self._desired[model] = target
        log.warning(
            "registry %s unreachable at startup: %s -> version %d from the model cache",
            self.source.uri,
            reference,
            target,
        )
        await self._emit(
            self._remember(DesiredVersionChanged(model, reference, None, target, "startup", True))
        )

    def _remember(self, event: DesiredVersionChanged) -> DesiredVersionChanged:
        self._last[event.model] = event
        return event

    async def _emit(self, event: PollerEvent) -> None:
        try:
            await self._on_event(event)
        except Exception:  # the manager's failure must not stop the poll loop
            log.exception("registry poller: the event callback failed on %s", event)
