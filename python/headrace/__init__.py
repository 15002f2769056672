"""headrace: an inference server for trained ML models, with a native core.

The public API: :class:`Engine` (in-process inference), :mod:`headrace.client` (gRPC clients),
:mod:`headrace.errors`, and the ``headrace`` command line.
"""

from __future__ import annotations

try:
    from headrace import _core as _core
except ImportError as exc:  # pragma: no cover - only without a build
    raise ImportError(
        "headrace's native module headrace._core could not be imported: was the extension built? "
        "Install the package with `pip install .` (it compiles csrc/ with CMake), "
        f"then import again. Original error: {exc}"
    ) from exc

__version__ = "0.1.0"

from headrace.engine import Engine, InferResult, ModelMetadata

__all__ = ["Engine", "InferResult", "ModelMetadata", "__version__"]
