"""The filesystem model repository: ``<repo>/<model>/<version>/model.onnx``.

``<repo>/<model>/model.toml`` is optional. Version directories are positive integers; anything else
in a model folder is ignored (with a log line), so a half-copied ``tmp`` folder never loads. The
``[aliases]`` table of ``model.toml`` names versions (``champion = 3``).

``FilesystemRepository`` is the engine's reader of today; ``FilesystemSource`` offers the same
layout through the registry's ``Source`` protocol (statuses, aliases, materialized versions).
"""

from __future__ import annotations

import logging
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

from headrace.config import ModelConfig, load_model_config
from headrace.errors import ConfigError, InvalidArgumentError, NotFoundError
from headrace.registry.base import (
    CONFIG_FILE,
    INPUT_EXAMPLE_FILE,
    MODEL_FILES,
    REFERENCE_FILE,
    MaterializedVersion,
    ModelDescription,
    ModelReference,
    VersionInfo,
    VersionSource,
    VersionStatus,
    check_alias,
    fingerprint_directory,
)
from headrace.registry.verify import IncompleteModelError, check_model_file

log = logging.getLogger(__name__)

__all__ = [
    "MODEL_FILES",
    "FilesystemRepository",
    "FilesystemSource",
    "ModelSource",
    "VersionSource",
    "read_aliases",
]

# A version whose files changed less than this long ago may still be being copied.
DEFAULT_SETTLE_S = 2.0


@dataclass(frozen=True)
class ModelSource:
    name: str
    directory: Path
    config: ModelConfig
    versions: tuple[VersionSource, ...]  # those the version policy selects, ascending


def _version_dirs(name: str, directory: Path) -> dict[int, Path]:
    found: dict[int, Path] = {}
    for entry in directory.iterdir():
        if not entry.is_dir():
            continue
        if not entry.name.isdigit() or int(entry.name) <= 0:
            log.info("model %s: ignoring %s (not a positive integer version)", name, entry)
            continue
        found[int(entry.name)] = entry
    return found


def _model_file(entry: Path, config: ModelConfig) -> tuple[Path, str] | None:
    for file, backend in MODEL_FILES.items():
        if (entry / file).is_file() and (config.backend is None or config.backend == backend):
            return entry / file, backend
    return None


def _read_config(name: str, directory: Path) -> ModelConfig:
    toml_path = directory / CONFIG_FILE
    return load_model_config(name, toml_path) if toml_path.exists() else ModelConfig(name=name)


def read_aliases(toml_path: Path) -> dict[str, int]:
    """The ``[aliases]`` table of a ``model.toml`` (alias -> version); {} without one."""
    if not toml_path.exists():
        return {}
    try:
        raw = tomllib.loads(toml_path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"{toml_path}: cannot be read: {error}") from None
    table = raw.get("aliases", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{toml_path}: 'aliases' must be a table (alias = version)")
    aliases: dict[str, int] = {}
    for alias, version in table.items():
        try:
            check_alias(alias, f"{toml_path}: aliases")
        except InvalidArgumentError as error:
            raise ConfigError(error.message) from None
        if isinstance(version, bool) or not isinstance(version, int) or version <= 0:
            raise ConfigError(f"{toml_path}: 'aliases.{alias}' must be a positive version number")
        aliases[alias] = version
    return aliases


class FilesystemRepository:
    """Reads model folders; never loads anything itself (the engine does)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        if not root.is_dir():
            raise NotFoundError(f"model repository {root} is not a directory")

    def model_names(self) -> list[str]:
        return sorted(
            entry.name
            for entry in self.root.iterdir()
            if entry.is_dir() and not entry.name.startswith(".")
        )

    def available(self, name: str) -> tuple[ModelConfig, dict[int, VersionSource]]:
        """The model's config and every version folder with a model file (policy aside)."""
        directory = self.root / name
        if not directory.is_dir():
            raise NotFoundError(f"model '{name}' is not in repository {self.root}")
        config = _read_config(name, directory)
        found: dict[int, VersionSource] = {}
        for version, entry in _version_dirs(name, directory).items():
            model_file = _model_file(entry, config)
            if model_file is None:
                log.warning("model %s version %d: no model file in %s", name, version, entry)
                continue
            found[version] = VersionSource(version, *model_file)
        return config, found

    def read(self, name: str) -> ModelSource:
        """The model's config and selected versions; ConfigError / NotFoundError otherwise."""
        directory = self.root / name
        config, by_version = self.available(name)
        selected = config.version_policy.select(list(by_version))
        if not selected:
            raise ConfigError(
                f"model '{name}': no version in {directory} matches the version policy "
                f"({config.version_policy.kind})"
            )
        return ModelSource(name, directory, config, tuple(by_version[v] for v in selected))


class FilesystemSource:
    """The repository through the ``Source`` protocol. A version is READY when its model file is
    complete (``registry/verify.py``) and no file in it changed for ``settle_s``; PENDING before.
    Materializing reads in place: the version folder is the materialized folder."""

    kind = "filesystem"

    def __init__(self, root: Path, *, settle_s: float = DEFAULT_SETTLE_S) -> None:
        self.repository = FilesystemRepository(root)
        self.root = root
        self.settle_s = settle_s

    def model_names(self) -> list[str]:
        return self.repository.model_names()

    def _directory(self, model: str) -> Path:
        directory = self.root / model
        if model.startswith(".") or "/" in model or not directory.is_dir():
            raise NotFoundError(f"model '{model}' is not in repository {self.root}")
        return directory

    def _status(self, entry: Path, config: ModelConfig) -> tuple[VersionStatus, str]:
        model_file = _model_file(entry, config)
        if model_file is None:
            return VersionStatus.PENDING, f"no model file in {entry} yet"
        files = [path for path in entry.rglob("*") if path.is_file()]
        age_s = time.time() - max(path.stat().st_mtime for path in files)
        if age_s < self.settle_s:
            return (
                VersionStatus.PENDING,
                f"files changed {age_s:.1f} s ago (settle {self.settle_s} s)",
            )
        try:
            check_model_file(*model_file)
        except IncompleteModelError as error:
            return VersionStatus.PENDING, error.message
        return VersionStatus.READY, ""

    def describe(self, model: str) -> ModelDescription:
        directory = self._directory(model)
        config = _read_config(model, directory)
        aliases = read_aliases(directory / CONFIG_FILE)
        by_version: dict[int, list[str]] = {}
        for alias, version in sorted(aliases.items()):
            by_version.setdefault(version, []).append(alias)
        versions = []
        for version, entry in sorted(_version_dirs(model, directory).items()):
            status, message = self._status(entry, config)
            versions.append(
                VersionInfo(model, version, status, message, tuple(by_version.get(version, ())))
            )
        return ModelDescription(model, aliases, tuple(versions))

    def resolve(self, reference: ModelReference) -> VersionInfo:
        description = self.describe(reference.name)
        by_number = {info.version: info for info in description.versions}
        if reference.alias is not None:
            if reference.alias not in description.aliases:
                raise NotFoundError(
                    f"model '{reference.name}' has no alias '{reference.alias}' in "
                    f"{self.root / reference.name / CONFIG_FILE}"
                )
            number = description.aliases[reference.alias]
        elif reference.version is not None:
            number = reference.version
        else:
            ready = [info.version for info in description.versions if info.status == "READY"]
            if not ready:
                raise NotFoundError(f"model '{reference.name}' has no READY version")
            number = max(ready)
        if number not in by_number:
            raise NotFoundError(
                f"model '{reference.name}' has no version {number} in {self.root / reference.name}"
            )
        return by_number[number]

    def materialize(self, model: str, version: int) -> MaterializedVersion:
        directory = self._directory(model)
        entry = directory / str(version)
        if not entry.is_dir():
            raise NotFoundError(f"model '{model}' has no version {version} in {directory}")
        model_file = _model_file(entry, _read_config(model, directory))
        if model_file is None:
            raise NotFoundError(f"model '{model}' version {version}: no model file in {entry}")
        check_model_file(*model_file)
        config_file = directory / CONFIG_FILE
        return MaterializedVersion(
            model=model,
            version=version,
            directory=entry,
            model_file=model_file[0],
            backend=model_file[1],
            fingerprint=fingerprint_directory(entry),
            origin=str(entry),
            config_file=config_file if config_file.is_file() else None,
            reference_file=_optional(entry / REFERENCE_FILE),
            input_example_file=_optional(entry / INPUT_EXAMPLE_FILE),
        )


def _optional(path: Path) -> Path | None:
    return path if path.is_file() else None
