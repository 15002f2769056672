"""Tensors to and from the v2 protocol's raw bytes, in pure Python (no native core), so the
client installs and imports without the server.

Fixed-size datatypes are little-endian element bytes; BYTES is, per element, a 4-byte
little-endian length followed by the element's bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from headrace.datatypes import DATATYPE_TO_NUMPY, TYPED_FIELD
from headrace.errors import InvalidArgumentError

_LENGTH = struct.Struct("<I")


def encode_bytes(array: npt.NDArray[Any], name: str) -> bytes:
    """BYTES elements (bytes, or str as UTF-8) as length-prefixed raw contents."""
    parts: list[bytes] = []
    for index, value in enumerate(array.reshape(-1)):
        if isinstance(value, str):
            value = value.encode("utf-8")
        elif isinstance(value, np.bytes_ | bytearray | memoryview):
            value = bytes(value)
        if not isinstance(value, bytes):
            raise InvalidArgumentError(
                f"tensor '{name}': BYTES element {index} is {type(value).__name__}, "
                "not bytes or str"
            )
        parts.append(_LENGTH.pack(len(value)))
        parts.append(value)
    return b"".join(parts)


def decode_bytes(raw: bytes, count: int, name: str) -> npt.NDArray[Any]:
    """Length-prefixed raw contents as an object array of ``count`` bytes elements."""
    out = np.empty(count, dtype=object)
    view = memoryview(raw)
    offset = 0
    for index in range(count):
        if offset + 4 > len(view):
            raise InvalidArgumentError(
                f"tensor '{name}': BYTES contents end inside element {index}'s length"
            )
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise InvalidArgumentError(
                f"tensor '{name}': BYTES element {index} claims {length} bytes past the end"
            )
        out[index] = bytes(view[offset : offset + length])
        offset += length
    if offset != len(view):
        raise InvalidArgumentError(
            f"tensor '{name}': {len(view) - offset} bytes left after {count} BYTES elements"
        )
    return out


def encode_raw(name: str, datatype: str, array: npt.NDArray[Any]) -> bytes:
    """An array as raw little-endian bytes (BYTES as 4-byte length + payload)."""
    if datatype == "BYTES":
        return encode_bytes(np.asarray(array, dtype=object), name)
    return np.ascontiguousarray(array).tobytes()


def decode_raw_output(datatype: str, shape: Sequence[int], raw: bytes) -> npt.NDArray[Any]:
    """A raw output back to numpy (copies nothing for fixed-size types)."""
    if datatype == "BYTES":
        count = int(np.prod(shape)) if len(shape) else 1
        return decode_bytes(raw, count, "output").reshape(tuple(shape))
    dtype = DATATYPE_TO_NUMPY[datatype]
    return np.frombuffer(raw, dtype=dtype).reshape(tuple(shape))


def decode_typed_output(datatype: str, contents: Any, shape: Sequence[int]) -> npt.NDArray[Any]:
    """A typed output (``InferTensorContents``) as a numpy array."""
    values = getattr(contents, TYPED_FIELD[datatype])
    if datatype == "BYTES":
        array = np.empty(len(values), dtype=object)
        array[:] = list(values)
        return array.reshape(tuple(shape))
    return np.asarray(values).astype(DATATYPE_TO_NUMPY[datatype]).reshape(tuple(shape))
