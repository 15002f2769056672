"""The routing state folder: endpoints changed at run time and the strategies' state, in one JSON
file written atomically (a reader or a crash sees the old file or the new one, never a mix).

Layout of ``<state_dir>/endpoints.json``::

    {"format": 1,
     "overrides": {"<endpoint>": {endpoint table} | null},   # created/updated, or deleted
     "runtime": {"<endpoint>": {"fingerprint": ..., strategy state}}}

At start the declared file's endpoints come first, then the overrides replace, add or delete;
runtime state is applied to an endpoint only when its fingerprint (a hash of its config) still
matches, so a changed declaration starts fresh.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headrace.errors import ConfigError

STATE_FILE = "endpoints.json"
FORMAT = 1


@dataclass
class SavedState:
    overrides: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    runtime: dict[str, dict[str, Any]] = field(default_factory=dict)


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, fsync and rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def load_state(state_dir: Path) -> SavedState:
    path = state_dir / STATE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return SavedState()
    except (OSError, ValueError) as error:
        raise ConfigError(f"{path}: cannot read the routing state: {error}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ConfigError(f"{path}: 'format' must be {FORMAT}")
    overrides = data.get("overrides", {})
    runtime = data.get("runtime", {})
    if not isinstance(overrides, dict) or not isinstance(runtime, dict):
        raise ConfigError(f"{path}: 'overrides' and 'runtime' must be objects")
    return SavedState(overrides, runtime)


def save_state(state_dir: Path, state: SavedState) -> None:
    document = {"format": FORMAT, "overrides": state.overrides, "runtime": state.runtime}
    atomic_write(state_dir / STATE_FILE, json.dumps(document, indent=1, sort_keys=True) + "\n")
