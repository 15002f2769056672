"""Watching a filesystem repository: versions added, removed or changed in place, model.toml edits.

Changes are noticed through inotify (the ``watchfiles`` library) and, where that is unavailable
(no library, a network filesystem, the inotify watch limit), by rescanning every ``poll_s``. Either
way a version is reported only once its files have not changed for ``settle_s`` AND its model file
is complete (``registry/verify.py``): a version folder copied in slowly is never reported
half-written. (A copy that pauses longer than ``settle_s`` between two extra files can still be
seen between them; publish with a rename from a dot-folder, which the repository ignores, to be
exact.) A version changed in place is reported with its new content fingerprint; touching files
without changing them reports nothing.

Events go to an injected async callback (the lifecycle manager), in order, awaited one at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from headrace.errors import HeadraceError
from headrace.registry.base import CONFIG_FILE, MaterializedVersion
from headrace.registry.filesystem import DEFAULT_SETTLE_S, FilesystemSource, read_aliases

log = logging.getLogger(__name__)

DEFAULT_POLL_S = 1.0
# With inotify, a full rescan still runs this often: the kernel drops events when its queue
# overflows, and a rescan finds whatever was missed.
INOTIFY_RESCAN_S = 30.0

# (model, version) for a version folder; (model, None) for the model's model.toml.
_Key = tuple[str, int | None]
_Snapshot = tuple[tuple[str, int, int], ...]


@dataclass(frozen=True)
class VersionAdded:
    version: MaterializedVersion  # complete and verified, read in place


@dataclass(frozen=True)
class VersionChanged:
    version: MaterializedVersion
    previous_fingerprint: str


@dataclass(frozen=True)
class VersionRemoved:
    model: str
    version: int
    directory: Path


@dataclass(frozen=True)
class ModelConfigChanged:
    """``model.toml`` changed (``fingerprint`` None: removed). ``error`` names what is wrong when
    its aliases cannot be read; ``aliases`` is then empty."""

    model: str
    path: Path
    fingerprint: str | None
    aliases: Mapping[str, int]
    error: str = ""


WatchEvent = VersionAdded | VersionChanged | VersionRemoved | ModelConfigChanged
WatchCallback = Callable[[WatchEvent], Awaitable[None]]


@dataclass
class _Observation:
    snapshot: _Snapshot
    since_s: float  # monotonic time this snapshot was first seen
    evaluated: _Snapshot | None = field(default=None)  # the snapshot last judged


def _scan(root: Path) -> dict[_Key, _Snapshot]:
    """Every version folder's and model.toml's (path, size, mtime) list. Blocking."""
    found: dict[_Key, _Snapshot] = {}
    try:
        models = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError as error:
        log.warning("repository watcher: cannot list %s: %s", root, error)
        return found
    for model_dir in models:
        try:
            stat = (model_dir / CONFIG_FILE).stat()
            found[(model_dir.name, None)] = ((CONFIG_FILE, stat.st_size, stat.st_mtime_ns),)
        except FileNotFoundError:
            pass
        except OSError:
            found[(model_dir.name, None)] = (("", -1, time.monotonic_ns()),)
        try:
            entries = list(model_dir.iterdir())
        except OSError:
            continue  # removed while we looked; the next scan says so
        for entry in entries:
            if not entry.name.isdigit() or int(entry.name) <= 0:
                continue
            try:
                if not entry.is_dir():
                    continue
                files = []
                for path in entry.rglob("*"):
                    if path.is_file():
                        stat = path.stat()
                        relative = path.relative_to(entry).as_posix()
                        files.append((relative, stat.st_size, stat.st_mtime_ns))
                found[(model_dir.name, int(entry.name))] = tuple(sorted(files))
            except OSError:
                # Changing under us: a snapshot that differs from every other keeps it unsettled.
                found[(model_dir.name, int(entry.name))] = (("", -1, time.monotonic_ns()),)
    return found


class RepositoryWatcher:
    """Reports changes of ``source``'s repository to ``on_event``; see the module docstring.

    ``scans`` counts completed scans and ``pending`` the folders seen changing but not yet
    judged, so a caller can wait for the watcher to have looked (tests do).
    """

    def __init__(
        self,
        source: FilesystemSource,
        on_event: WatchCallback,
        *,
        settle_s: float = DEFAULT_SETTLE_S,
        poll_s: float = DEFAULT_POLL_S,
        use_inotify: bool = True,
    ) -> None:
        self.source = source
        self.root = source.root
        self.settle_s = settle_s
        self.poll_s = poll_s
        self.mode: Literal["inotify", "polling"] = "polling"
        self.scans = 0  # completed
        self._scans_started = 0
        self._scanned = asyncio.Condition()
        self._use_inotify = use_inotify
        self._on_event = on_event
        self._observed: dict[_Key, _Observation] = {}
        self._known: dict[tuple[str, int], str] = {}  # version -> fingerprint reported
        self._config_known: dict[str, str] = {}  # model -> model.toml fingerprint reported
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def pending(self) -> int:
        return sum(1 for o in self._observed.values() if o.evaluated != o.snapshot)

    def known(self) -> dict[tuple[str, int], str]:
        """Reported versions and their fingerprints."""
        return dict(self._known)

    async def start(self, baseline: Mapping[tuple[str, int], str] | None = None) -> None:
        """Start watching. ``baseline`` (version -> fingerprint) is what the manager loaded;
        differences from it are reported. Without it, the complete versions found now are the
        baseline and nothing is reported for them."""
        if self._tasks:
            return
        if baseline is not None:
            self._known = dict(baseline)
        else:
            await self._take_baseline()
        if self._use_inotify:
            self._tasks.append(asyncio.create_task(self._inotify(), name="repository-inotify"))
            self.mode = "inotify"
        self._tasks.append(asyncio.create_task(self._run(), name="repository-watcher"))

    async def stop(self) -> None:
        self._stop.set()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def scan_now(self) -> None:
        """Scan at once and return when a scan that started after this call has completed (a
        change made before the call has then been seen; it is judged once settled)."""
        target = self._scans_started + 1
        self._wake.set()
        async with self._scanned:
            await self._scanned.wait_for(lambda: self.scans >= target)

    async def _take_baseline(self) -> None:
        snapshot = await asyncio.to_thread(_scan, self.root)
        now = time.monotonic()
        for key, files in snapshot.items():
            model, version = key
            self._observed[key] = _Observation(files, now, files)
            if version is None:
                digest = await asyncio.to_thread(_file_digest, self._toml(model))
                if digest is not None:
                    self._config_known[model] = digest
                continue
            try:
                found = await asyncio.to_thread(self.source.materialize, model, version)
            except HeadraceError:
                self._observed[key].evaluated = None  # not complete yet: judge it when settled
                continue
            self._known[(model, version)] = found.fingerprint

    async def _inotify(self) -> None:
        try:
            import watchfiles
        except ImportError:
            log.warning("repository watcher: watchfiles is not installed; polling %s", self.root)
            self.mode = "polling"
            return
        try:
            async for _changes in watchfiles.awatch(
                self.root,
                watch_filter=None,
                debounce=200,
                step=20,
                stop_event=self._stop,
                ignore_permission_denied=True,
            ):
                self._wake.set()
        except Exception as error:  # inotify limits, unsupported filesystems: fall back
            log.warning(
                "repository watcher: inotify on %s failed (%s); polling every %.1f s",
                self.root,
                error,
                self.poll_s,
            )
            self.mode = "polling"
            self._wake.set()

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                await self._scan_once()
            except Exception:  # a watcher that stops silently is worse than one that logs
                log.exception("repository watcher: scan of %s failed", self.root)
            timeout = self._next_wait_s()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()

    def _next_wait_s(self) -> float:
        wait = self.poll_s if self.mode == "polling" else INOTIFY_RESCAN_S
        now = time.monotonic()
        for observation in self._observed.values():
            if observation.evaluated != observation.snapshot:
                wait = min(wait, max(0.0, observation.since_s + self.settle_s - now) + 0.01)
        return wait

    async def _scan_once(self) -> None:
        self._scans_started += 1
        try:
            await self._scan_and_judge()
        finally:
            self.scans += 1
            async with self._scanned:
                self._scanned.notify_all()

    async def _scan_and_judge(self) -> None:
        current = await asyncio.to_thread(_scan, self.root)
        now = time.monotonic()
        for key, files in current.items():
            observation = self._observed.get(key)
            if observation is None:
                self._observed[key] = _Observation(files, now)
            elif observation.snapshot != files:
                observation.snapshot, observation.since_s = files, now
        for key in [k for k in self._observed if k not in current]:
            del self._observed[key]
        for model, version in [k for k in self._known if k not in current]:
            del self._known[(model, version)]
            log.info("repository: %s version %d removed", model, version)
            await self._emit(VersionRemoved(model, version, self.root / model / str(version)))
        for model in [m for m in self._config_known if (m, None) not in current]:
            del self._config_known[model]
            await self._emit(ModelConfigChanged(model, self._toml(model), None, {}))
        for key, observation in list(self._observed.items()):
            if observation.evaluated == observation.snapshot:
                continue
            if now - observation.since_s < self.settle_s:
                continue
            observation.evaluated = observation.snapshot
            await self._judge(key)

    async def _judge(self, key: _Key) -> None:
        model, version = key
        if version is None:
            await self._judge_config(model)
            return
        try:
            found = await asyncio.to_thread(self.source.materialize, model, version)
        except HeadraceError as error:
            log.warning("repository: %s version %d not loadable yet: %s", model, version, error)
            return
        previous = self._known.get((model, version))
        if previous == found.fingerprint:
            return  # touched, not changed
        self._known[(model, version)] = found.fingerprint
        if previous is None:
            log.info("repository: %s version %d added", model, version)
            await self._emit(VersionAdded(found))
        else:
            log.info("repository: %s version %d changed in place", model, version)
            await self._emit(VersionChanged(found, previous))

    async def _judge_config(self, model: str) -> None:
        path = self._toml(model)
        digest = await asyncio.to_thread(_file_digest, path)
        if digest is None or digest == self._config_known.get(model):
            return
        self._config_known[model] = digest
        try:
            aliases, error = await asyncio.to_thread(read_aliases, path), ""
        except HeadraceError as failure:
            aliases, error = {}, failure.message
        await self._emit(ModelConfigChanged(model, path, digest, aliases, error))
        # A version judged not loadable may have failed on the old model.toml: judge it again.
        for (other, version), observation in self._observed.items():
            if other == model and version is not None and (model, version) not in self._known:
                observation.evaluated = None

    def _toml(self, model: str) -> Path:
        return self.root / model / CONFIG_FILE

    async def _emit(self, event: WatchEvent) -> None:
        try:
            await self._on_event(event)
        except Exception:  # the manager's failure must not stop the watcher
            log.exception("repository watcher: the event callback failed on %s", event)


def _file_digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None
