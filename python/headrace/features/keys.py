"""Entity keys as the stores take them: a request's entity input checked and normalised, and the
keys of many requests merged without duplicates.

An entity input is INT64 (keys are ``int``) or BYTES (keys are ``bytes``; ``str`` elements are
taken as UTF-8), shaped ``[rows]`` or ``[rows, 1]``. Normalised keys are a 1-D ``int64`` array or
a 1-D object array of ``bytes``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from headrace.errors import InvalidArgumentError

KeyKind = Literal["INT64", "BYTES"]
Keys = npt.NDArray[Any]  # 1-D int64, or 1-D object array of bytes


def key_kind(keys: Keys) -> KeyKind:
    return "INT64" if keys.dtype == np.int64 else "BYTES"


def normalize_entity(name: str, array: npt.NDArray[Any]) -> Keys:
    """An entity input as 1-D keys, or InvalidArgumentError naming the input."""
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    elif array.ndim != 1:
        raise InvalidArgumentError(
            f"entity input '{name}': shape {list(array.shape)}, expected [-1] or [-1, 1]"
        )
    if array.dtype == np.int64:
        return array
    if array.dtype.kind == "S":
        return np.array([bytes(v) for v in array.tolist()], dtype=object)
    if array.dtype.kind == "U":
        return np.array([v.encode() for v in array.tolist()], dtype=object)
    if array.dtype.kind == "O":
        items = array.tolist()
        if all(type(v) is bytes for v in items):
            return array
        out = np.empty(len(items), dtype=object)
        for i, value in enumerate(items):
            if isinstance(value, bytes | bytearray | memoryview):
                out[i] = bytes(value)
            elif isinstance(value, str):
                out[i] = value.encode()
            else:
                raise InvalidArgumentError(
                    f"entity input '{name}': element {i} is {type(value).__name__}, "
                    "expected bytes (BYTES) or an INT64 tensor"
                )
        return out
    raise InvalidArgumentError(
        f"entity input '{name}': datatype {array.dtype}, expected INT64 or BYTES"
    )


def key_text(key: object) -> str:
    """A key as an error message shows it."""
    if isinstance(key, bytes):
        try:
            return repr(key.decode())
        except UnicodeDecodeError:
            return repr(key)
    return str(key)


@dataclass(frozen=True, slots=True)
class MergedKeys:
    """Distinct keys of several requests, and where each request's keys sit among them."""

    unique: Keys
    positions: list[npt.NDArray[np.intp]]  # per request: index into ``unique`` for each key


def merge_keys(parts: Sequence[Keys]) -> MergedKeys:
    """Merge the keys of several requests (all of one kind) into distinct keys, first-seen
    order; each request keeps the positions of its keys in the merged array."""
    if len(parts) == 1 and parts[0].dtype == np.int64 and len(parts[0]) <= 1:
        return MergedKeys(parts[0], [np.arange(len(parts[0]), dtype=np.intp)])
    slots: dict[Any, int] = {}
    positions = []
    for part in parts:
        items = part.tolist()
        index = [slots.setdefault(k, len(slots)) for k in items]
        positions.append(np.fromiter(index, dtype=np.intp, count=len(index)))
    kind = parts[0].dtype if parts else np.dtype(np.int64)
    if kind == np.int64:
        unique: Keys = np.fromiter(slots, dtype=np.int64, count=len(slots))
    else:
        unique = np.empty(len(slots), dtype=object)
        unique[:] = list(slots)
    return MergedKeys(unique, positions)
