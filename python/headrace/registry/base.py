"""What every model source offers the lifecycle manager: the ``Source`` protocol and its types.

A source lists the models it offers, describes their versions (number, status, aliases), resolves a
reference (``NAME@ALIAS`` follows an alias, ``NAME/VERSION`` pins, ``NAME`` takes the newest), and
materializes a version into a local folder the engine loads. Every method may block (network, disk):
the manager calls them from a worker thread (``asyncio.to_thread``), never on the event loop.
"""

from __future__ import annotations

import enum
import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from headrace.config import ModelConfig, load_model_config
from headrace.errors import InvalidArgumentError, NotFoundError

# MLflow's alias rule (letters, digits, '_' and '-'; not 'latest', not 'v<digits>'), which the
# filesystem source shares so one alias name means the same thing everywhere.
_ALIAS = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
_RESERVED_ALIAS = re.compile(r"^(latest|v\d+)$", re.IGNORECASE)

# Files a version may carry besides its model file; the manager finds them next to it.
CONFIG_FILE = "model.toml"
REFERENCE_FILE = "reference.json"
INPUT_EXAMPLE_FILE = "input_example.json"
MODEL_FILES = {"model.onnx": "onnxruntime", "model.int8": "int8"}


@dataclass(frozen=True)
class VersionSource:
    """A loadable version as the engine sees it: its number, model file and backend."""

    version: int
    path: Path  # the model file; the version's other files sit next to it
    backend: str


class VersionStatus(enum.StrEnum):
    """Only READY versions load; PENDING may become READY later, FAILED never will."""

    READY = "READY"
    PENDING = "PENDING"
    FAILED = "FAILED"


def check_alias(alias: str, where: str) -> str:
    """``alias`` if it is a valid alias name; InvalidArgumentError naming ``where`` otherwise."""
    if not _ALIAS.match(alias) or _RESERVED_ALIAS.match(alias):
        raise InvalidArgumentError(
            f"{where}: '{alias}' is not an alias name (letters, digits, '_' and '-'; "
            "not 'latest' or 'v<number>')"
        )
    return alias


@dataclass(frozen=True)
class ModelReference:
    """What ``--model`` names: ``fraud@champion`` (follow), ``churn/3`` (pin) or ``churn``."""

    name: str
    alias: str | None = None
    version: int | None = None

    @classmethod
    def parse(cls, text: str) -> ModelReference:
        """Parse ``NAME@ALIAS``, ``NAME/VERSION`` or ``NAME``; InvalidArgumentError otherwise."""
        if "@" in text:
            name, alias = text.rsplit("@", 1)
            if not name:
                raise InvalidArgumentError(f"model reference '{text}' has no model name")
            return cls(name, alias=check_alias(alias, f"model reference '{text}'"))
        if "/" in text:
            name, version = text.rsplit("/", 1)
            if not name or not version.isdigit() or int(version) <= 0:
                raise InvalidArgumentError(
                    f"model reference '{text}': expected NAME/VERSION with a positive integer "
                    "version, NAME@ALIAS or NAME"
                )
            return cls(name, version=int(version))
        if not text.strip():
            raise InvalidArgumentError("empty model reference")
        return cls(text)

    def __str__(self) -> str:
        if self.alias is not None:
            return f"{self.name}@{self.alias}"
        if self.version is not None:
            return f"{self.name}/{self.version}"
        return self.name


@dataclass(frozen=True)
class VersionInfo:
    """One version as the source sees it."""

    model: str
    version: int
    status: VersionStatus
    status_message: str = ""
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelDescription:
    """A model's versions and its alias map (alias -> version) at one moment."""

    name: str
    aliases: Mapping[str, int]
    versions: tuple[VersionInfo, ...]  # ascending by number

    def resolve_label(self, label: str) -> int:
        """A request's ``model_version``: a number, or an alias of this model."""
        if label.isdigit():
            return int(label)
        if label in self.aliases:
            return self.aliases[label]
        known = ", ".join(sorted(self.aliases)) or "none"
        raise NotFoundError(f"model '{self.name}' has no alias '{label}' (aliases: {known})")


@dataclass(frozen=True)
class MaterializedVersion:
    """A version's files in a local folder, complete and verified; what the engine loads.

    ``model_file`` and the optional ``config_file`` / ``reference_file`` / ``input_example_file``
    live in ``directory`` (the engine reads ``reference.json`` next to the model file).
    ``fingerprint`` is a digest of every file's content: equal fingerprints mean equal files.
    """

    model: str
    version: int
    directory: Path
    model_file: Path
    backend: str
    fingerprint: str
    origin: str  # where it came from: a repository folder or an MLflow URI
    config_file: Path | None = None
    reference_file: Path | None = None
    input_example_file: Path | None = None
    from_cache: bool = False  # served from the model cache without asking the source
    download_ms: float | None = None  # time to fetch and verify; None when nothing was fetched
    extras: Mapping[str, str] = field(default_factory=dict)  # e.g. MLflow run_id, model_id

    def version_source(self) -> VersionSource:
        """The engine's description of a loadable version."""
        return VersionSource(self.version, self.model_file, self.backend)

    def model_config(self) -> ModelConfig:
        """The version's ``model.toml`` parsed (defaults when it ships none)."""
        if self.config_file is None:
            return ModelConfig(name=self.model)
        return load_model_config(self.model, self.config_file)


@runtime_checkable
class Source(Protocol):
    """Where versions come from. Every method may block: call it from a worker thread.

    Errors: NotFoundError (no such model, version or alias), UnavailableError (the source cannot
    be reached), InvalidArgumentError / ConfigError (a bad reference or a bad file).
    """

    @property
    def kind(self) -> str:
        """``"filesystem"`` or ``"mlflow"``."""
        ...

    def model_names(self) -> list[str]:
        """The models this source offers, sorted."""
        ...

    def describe(self, model: str) -> ModelDescription:
        """The model's versions (with status and aliases) and its alias map."""
        ...

    def resolve(self, reference: ModelReference) -> VersionInfo:
        """The version a reference points at now (any status: check ``.status``)."""
        ...

    def materialize(self, model: str, version: int) -> MaterializedVersion:
        """The version's files in a complete, verified local folder (downloading if needed)."""
        ...


def fingerprint_directory(directory: Path) -> str:
    """SHA-256 over every file's relative path and content, in path order."""
    digest = hashlib.sha256()
    files = sorted(
        path for path in directory.rglob("*") if path.is_file() and not path.is_symlink()
    )
    for path in files:
        relative = path.relative_to(directory).as_posix().encode()
        digest.update(len(relative).to_bytes(4, "little") + relative)
        digest.update(path.stat().st_size.to_bytes(8, "little"))
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def fsync_directory(directory: Path) -> None:
    """Make a rename or a new entry in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
