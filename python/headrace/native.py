"""The native core, imported with a message that says how to build it when it is missing.

Modules that need ``headrace._core`` import it from here, so a source checkout without a build
fails with "was the extension built?" rather than a bare ImportError.
"""

from __future__ import annotations

try:
    from headrace import _core as core
except ImportError as exc:  # pragma: no cover - only without a build
    raise ImportError(
        "headrace's native module headrace._core could not be imported: was the extension built? "
        "Install the package with `pip install .` (it compiles csrc/ with CMake), "
        f"then import again. Original error: {exc}"
    ) from exc

__all__ = ["core"]
