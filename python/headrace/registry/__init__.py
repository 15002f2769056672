"""Where models come from and how served versions change: the filesystem repository and MLflow's
model registry, and the lifecycle that follows them.

``base.Source`` is what every source offers; ``cache``, ``watcher``, ``poller`` and ``audit`` are
the parts the lifecycle composes. ``headrace.registry.mlflow`` is imported on demand (it needs the
``headrace[mlflow]`` extra).

The lifecycle: ``manager.ModelManager`` owns the served models (``served.ServedModel``
snapshots; ``reconcile.ModelStore`` the steps of a change; ``swap.py`` starting a version, the
audit records of a switch, draining); ``plan.choose`` decides per model which versions load,
serve and stay warm (the source's choice, a pin, a rollback, alias targets); ``follow.
RegistryFollower`` turns the poller's and the watcher's events into the manager's calls, one
task per model; ``transitions.TransitionLog`` writes the audit trail (fsynced before a switch
takes effect), the transitions metric and the log; ``views`` is what ListModelVersions shows.
Source calls block: the manager is called from worker threads, never on the event loop.
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
