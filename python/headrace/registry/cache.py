"""The local model cache (``--model-cache DIR``): complete, verified versions only.

Layout::

    DIR/.partial/<id>/            downloads in progress (removed when the cache opens)
    DIR/<model>/aliases.json      the alias map last read from the source (startup when it is down)
    DIR/<model>/<version>/        a complete version: its files + headrace-version.json

A version is filled into ``.partial``, verified (every listed file present at its listed size, the
model file complete: ``registry/verify.py``), fsynced, then renamed into place: a reader sees a
whole version or none. The model name is percent-encoded into one path segment.

Thread-safety: one lock per (model, version) serialises installs of the same version; reads take
no lock (a version folder never changes after its rename). Several processes may share a cache: a
rename that finds the folder already there keeps the existing one when it verifies.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from headrace.errors import InvalidArgumentError
from headrace.registry.base import MaterializedVersion, fingerprint_directory, fsync_directory
from headrace.registry.verify import IncompleteModelError, check_model_file

log = logging.getLogger(__name__)

META_FILE = "headrace-version.json"
ALIASES_FILE = "aliases.json"
_PARTIAL = ".partial"
_META_FORMAT = 1


class VerificationError(InvalidArgumentError):
    """A downloaded version is incomplete or corrupt; nothing was installed."""


@dataclass(frozen=True)
class VersionLayout:
    """What a fill function reports about the folder it filled (paths relative to it)."""

    model_file: str
    backend: str
    config_file: str | None = None
    reference_file: str | None = None
    input_example_file: str | None = None
    # Sizes the source listed for its files: each must match what landed on disk.
    expected_sizes: Mapping[str, int] = field(default_factory=dict)
    extras: Mapping[str, str] = field(default_factory=dict)


def _write_json_atomically(path: Path, content: Mapping[str, Any]) -> None:
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    with temporary.open("w", encoding="utf-8") as handle:
        json.dump(content, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    fsync_directory(path.parent)


def _fsync_tree(directory: Path) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
    for path in sorted((p for p in directory.rglob("*") if p.is_dir()), reverse=True):
        fsync_directory(path)
    fsync_directory(directory)


def _sizes(directory: Path) -> dict[str, int]:
    return {
        path.relative_to(directory).as_posix(): path.stat().st_size
        for path in directory.rglob("*")
        if path.is_file()
    }


class ModelCache:
    """Complete versions by (model, version); see the module docstring for the guarantees."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        partial = root / _PARTIAL
        if partial.exists():  # left by a process that died mid-download
            shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        self._locks: dict[tuple[str, int], threading.Lock] = {}
        self._locks_lock = threading.Lock()

    def model_dir(self, model: str) -> Path:
        if not model:
            raise InvalidArgumentError("empty model name")
        encoded = quote(model, safe="")
        if encoded.startswith("."):  # never ".", ".." or a hidden folder such as .partial
            encoded = "%2E" + encoded[1:]
        return self.root / encoded

    def version_dir(self, model: str, version: int) -> Path:
        return self.model_dir(model) / str(version)

    def versions(self, model: str) -> list[int]:
        """Versions of ``model`` present in the cache, ascending."""
        directory = self.model_dir(model)
        if not directory.is_dir():
            return []
        return sorted(
            int(entry.name)
            for entry in directory.iterdir()
            if entry.is_dir() and entry.name.isdigit() and (entry / META_FILE).is_file()
        )

    def _lock(self, model: str, version: int) -> threading.Lock:
        with self._locks_lock:
            return self._locks.setdefault((model, version), threading.Lock())

    def get(self, model: str, version: int, origin: str) -> MaterializedVersion | None:
        """The cached version if it is there, came from ``origin`` and still verifies."""
        directory = self.version_dir(model, version)
        try:
            meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            log.warning("model cache: %s unreadable (%s); ignoring it", directory, error)
            return None
        if meta.get("origin") != origin:
            log.info(
                "model cache: %s came from %s, not %s; not used",
                directory,
                meta.get("origin"),
                origin,
            )
            return None
        try:
            self._check_sizes(directory, meta["sizes"])
            check_model_file(directory / meta["model_file"], meta["backend"])
        except (IncompleteModelError, KeyError) as error:
            log.warning("model cache: %s no longer verifies (%s); ignoring it", directory, error)
            return None
        return self._materialized(model, version, directory, meta, from_cache=True)

    def install(
        self, model: str, version: int, origin: str, fill: Callable[[Path], VersionLayout]
    ) -> MaterializedVersion:
        """Fill a fresh folder, verify it and rename it into place; VerificationError (nothing
        installed) when it is incomplete. An already cached, verified copy is returned as is."""
        with self._lock(model, version):
            cached = self.get(model, version, origin)
            if cached is not None:
                return cached
            partial = self.root / _PARTIAL / f"{uuid.uuid4().hex}"
            partial.mkdir()
            try:
                started = time.monotonic()
                layout = fill(partial)
                meta = self._verify(partial, layout, origin, model, version)
                meta["download_ms"] = round((time.monotonic() - started) * 1000, 3)
                (partial / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True))
                _fsync_tree(partial)
                final = self.version_dir(model, version)
                final.parent.mkdir(exist_ok=True)
                self._rename_into_place(partial, final)
            finally:
                if partial.exists():
                    shutil.rmtree(partial, ignore_errors=True)
            log.info("model cache: installed %s version %d from %s", model, version, origin)
            return self._materialized(model, version, final, meta, from_cache=False)

    def remove(self, model: str, version: int) -> None:
        """Delete a cached version (a loaded copy keeps its open files)."""
        directory = self.version_dir(model, version)
        if directory.exists():
            doomed = self.root / _PARTIAL / f"removed-{uuid.uuid4().hex}"
            os.rename(directory, doomed)
            shutil.rmtree(doomed, ignore_errors=True)

    def prune(self, model: str, keep: Collection[int]) -> list[int]:
        """Delete every cached version of ``model`` not in ``keep``; the numbers removed."""
        removed = [v for v in self.versions(model) if v not in keep]
        for version in removed:
            self.remove(model, version)
        return removed

    def save_aliases(self, model: str, origin: str, aliases: Mapping[str, int]) -> None:
        """Remember the alias map read from ``origin`` (durably; only when it changed)."""
        if self.load_aliases(model, origin) == dict(aliases):
            return
        self.model_dir(model).mkdir(exist_ok=True)
        _write_json_atomically(
            self.model_dir(model) / ALIASES_FILE,
            {"origin": origin, "aliases": dict(aliases), "saved_at_unix_s": time.time()},
        )

    def load_aliases(self, model: str, origin: str) -> dict[str, int] | None:
        """The alias map last saved for ``model`` from ``origin``; None when there is none."""
        try:
            saved = json.loads((self.model_dir(model) / ALIASES_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(saved, dict) or saved.get("origin") != origin:
            return None
        aliases = saved.get("aliases")
        if not isinstance(aliases, dict):
            return None
        return {str(alias): int(version) for alias, version in aliases.items()}

    # -- internals -------------------------------------------------------------------------

    @staticmethod
    def _check_sizes(directory: Path, expected: Mapping[str, int]) -> None:
        for relative, size in expected.items():
            path = directory / relative
            if not path.is_file():
                raise IncompleteModelError(f"{relative} is missing")
            if path.stat().st_size != size:
                raise IncompleteModelError(
                    f"{relative} is {path.stat().st_size} bytes, expected {size}"
                )

    def _verify(
        self, directory: Path, layout: VersionLayout, origin: str, model: str, version: int
    ) -> dict[str, Any]:
        named = [layout.model_file, layout.config_file, layout.reference_file]
        named.append(layout.input_example_file)
        try:
            self._check_sizes(directory, layout.expected_sizes)
            for relative in named:
                if relative is not None and not (directory / relative).is_file():
                    raise IncompleteModelError(f"{relative} is missing")
            check_model_file(directory / layout.model_file, layout.backend)
        except IncompleteModelError as error:
            raise VerificationError(
                f"model '{model}' version {version} from {origin} failed verification: "
                f"{error.message}"
            ) from None
        return {
            "format": _META_FORMAT,
            "origin": origin,
            "model": model,
            "version": version,
            "model_file": layout.model_file,
            "backend": layout.backend,
            "config_file": layout.config_file,
            "reference_file": layout.reference_file,
            "input_example_file": layout.input_example_file,
            "extras": dict(layout.extras),
            "fingerprint": fingerprint_directory(directory),
            "sizes": _sizes(directory),
            "installed_at_unix_s": time.time(),
        }

    def _rename_into_place(self, partial: Path, final: Path) -> None:
        if final.exists():
            # From another origin, or no longer verifying: set it aside first. A version loaded
            # from it keeps its open files; the rename below is still atomic for new readers.
            doomed = self.root / _PARTIAL / f"replaced-{uuid.uuid4().hex}"
            os.rename(final, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
        try:
            os.rename(partial, final)
        except OSError:
            if not (final / META_FILE).is_file():
                raise
            # Another process installed the same version between our check and our rename.
            log.info("model cache: %s was installed concurrently; keeping that copy", final)
        fsync_directory(final.parent)

    @staticmethod
    def _materialized(
        model: str, version: int, directory: Path, meta: Mapping[str, Any], *, from_cache: bool
    ) -> MaterializedVersion:
        def optional(key: str) -> Path | None:
            value = meta.get(key)
            return directory / value if isinstance(value, str) else None

        extras = {str(k): str(v) for k, v in dict(meta.get("extras", {})).items()}
        return MaterializedVersion(
            model=model,
            version=version,
            directory=directory,
            model_file=directory / meta["model_file"],
            backend=meta["backend"],
            fingerprint=meta["fingerprint"],
            origin=meta["origin"],
            config_file=optional("config_file"),
            reference_file=optional("reference_file"),
            input_example_file=optional("input_example_file"),
            from_cache=from_cache,
            download_ms=None if from_cache else float(meta["download_ms"]),
            extras=extras,
        )
