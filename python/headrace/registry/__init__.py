"""Where models come from: the filesystem repository and MLflow's model registry.

``base.Source`` is what every source offers; ``cache``, ``watcher``, ``poller`` and ``audit`` are
the parts the lifecycle manager composes. ``headrace.registry.mlflow`` is imported on demand (it
needs the ``headrace[mlflow]`` extra).

How the manager uses them: the poller (MLflow) and the watcher (repository) call one async
callback with events; on ``DesiredVersionChanged`` / ``VersionAdded`` / ``VersionChanged`` the
manager gets the files with ``await asyncio.to_thread(source.materialize, model, version)`` (the
watcher's events carry them already), loads and warms them (``MaterializedVersion.
version_source()``, ``.model_config()``, ``example.read_input_example(...)``), appends an
``audit.AuditRecord`` with ``await audit.append_async(...)`` and only then switches. Source calls
block: never call them on the event loop.
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
