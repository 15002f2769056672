"""headrace: an inference server for trained ML models, with a native core.

The public API: :class:`Engine` (in-process inference), :mod:`headrace.client` (gRPC clients, a
light import: no server, no native core), :mod:`headrace.errors`, and the ``headrace`` command
line. Importing ``headrace`` is cheap: the engine and the native core load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from headrace.engine import Engine
    from headrace.types import InferResult, ModelMetadata

__all__ = ["Engine", "InferResult", "ModelMetadata", "__version__"]

_LAZY = {
    "Engine": "headrace.engine",
    "InferResult": "headrace.types",
    "ModelMetadata": "headrace.types",
}


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'headrace' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value
