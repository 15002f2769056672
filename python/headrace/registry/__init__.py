"""Where models come from: the filesystem repository and MLflow's model registry.

``base.Source`` is what every source offers; ``cache``, ``watcher``, ``poller`` and ``audit`` are
the parts the lifecycle manager composes. ``headrace.registry.mlflow`` is imported on demand (it
needs the ``headrace[mlflow]`` extra).
"""

from headrace.registry.base import (
    MaterializedVersion,
    ModelDescription,
    ModelReference,
    Source,
    VersionInfo,
    VersionSource,
    VersionStatus,
)
from headrace.registry.filesystem import FilesystemRepository, FilesystemSource, ModelSource

__all__ = [
    "FilesystemRepository",
    "FilesystemSource",
    "MaterializedVersion",
    "ModelDescription",
    "ModelReference",
    "ModelSource",
    "Source",
    "VersionInfo",
    "VersionSource",
    "VersionStatus",
]
