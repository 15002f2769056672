"""The filesystem model repository: ``<repo>/<model>/<version>/model.onnx``.

``<repo>/<model>/model.toml`` is optional. Version directories are positive integers; anything else
in a model folder is ignored (with a log line), so a half-copied ``tmp`` folder never loads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from headrace.config import ModelConfig, load_model_config
from headrace.errors import ConfigError, NotFoundError

log = logging.getLogger(__name__)

MODEL_FILES = {"model.onnx": "onnxruntime", "model.int8": "int8"}


@dataclass(frozen=True)
class VersionSource:
    version: int
    path: Path  # the model file
    backend: str


@dataclass(frozen=True)
class ModelSource:
    name: str
    directory: Path
    config: ModelConfig
    versions: tuple[VersionSource, ...]  # those the version policy selects, ascending


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

    def read(self, name: str) -> ModelSource:
        """The model's config and selected versions; ConfigError / NotFoundError otherwise."""
        directory = self.root / name
        if not directory.is_dir():
            raise NotFoundError(f"model '{name}' is not in repository {self.root}")
        toml_path = directory / "model.toml"
        config = (
            load_model_config(name, toml_path) if toml_path.exists() else ModelConfig(name=name)
        )
        found: list[VersionSource] = []
        for entry in directory.iterdir():
            if not entry.is_dir():
                continue
            if not entry.name.isdigit() or int(entry.name) <= 0:
                log.info("model %s: ignoring %s (not a positive integer version)", name, entry)
                continue
            version = int(entry.name)
            candidates = [
                (entry / file, backend)
                for file, backend in MODEL_FILES.items()
                if (entry / file).is_file()
                and (config.backend is None or config.backend == backend)
            ]
            if not candidates:
                log.warning("model %s version %d: no model file in %s", name, version, entry)
                continue
            path, backend = candidates[0]
            found.append(VersionSource(version, path, backend))
        by_version = {v.version: v for v in found}
        selected = config.version_policy.select(list(by_version))
        if not selected:
            raise ConfigError(
                f"model '{name}': no version in {directory} matches the version policy "
                f"({config.version_policy.kind})"
            )
        return ModelSource(name, directory, config, tuple(by_version[v] for v in selected))
