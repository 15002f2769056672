"""The engine: the in-process API the server wraps.

``engine.py`` the facade (endpoint -> variant -> infer), ``routed.py`` endpoints on the request
path (routing, shadows, request series), ``lookup.py`` which loaded version serves,
``version.py`` a loaded version, ``execution.py`` batched and direct execution behind one
interface, ``validation.py`` request and spec checks, ``completions.py`` the completion router
that wakes callers once per batch, ``features.py`` online features on the request path (a
version's feature joiner and the loop it reads its store on). Names load lazily,
so ``registry.manager`` can import a submodule without a cycle through the facade.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from headrace.engine.engine import Engine
    from headrace.engine.validation import deadline_ns
    from headrace.engine.version import ModelVersion
    from headrace.types import InferResult, ModelIndexEntry, ModelMetadata, VersionStatistics

__all__ = [
    "Engine",
    "InferResult",
    "ModelIndexEntry",
    "ModelMetadata",
    "ModelVersion",
    "VersionStatistics",
    "deadline_ns",
]

_WHERE = {
    "Engine": "headrace.engine.engine",
    "deadline_ns": "headrace.engine.validation",
    "ModelVersion": "headrace.engine.version",
    "InferResult": "headrace.types",
    "ModelIndexEntry": "headrace.types",
    "ModelMetadata": "headrace.types",
    "VersionStatistics": "headrace.types",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'headrace.engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
