"""Where models come from: the filesystem repository (default); MLflow later."""

from headrace.registry.filesystem import FilesystemRepository, ModelSource, VersionSource

__all__ = ["FilesystemRepository", "ModelSource", "VersionSource"]
