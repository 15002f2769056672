"""Feast's Redis layout, byte by byte (what ``feast materialize`` writes with the Redis online
store; entity key serialisation version 3, the only one current Feast supports).

* Redis key: ``serialize_entity_key(key, v3) + project`` (the project is a *suffix*):
  ``u32 n_keys``, then per join key ``u32 STRING(2) u32 len name``, then per value
  ``u32 type u32 len bytes`` (INT64: ``<q``; STRING: UTF-8), all little-endian.
* Hash field of a feature: MurmurHash3 x86 32-bit (seed 0) of ``"<view>:<feature>"``, unsigned,
  as 4 little-endian bytes; value: a serialised ``feast.types.Value``.
* Hash field ``"_ts:<view>"``: a serialised ``google.protobuf.Timestamp``, the event time.

Values decode to float32: float, double, int32, int64, bool and unix-timestamp variants; an
empty value (Feast's null) or a null variant is missing; text or list variants are errors.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from headrace.features.keys import KeyKind

# feast.types.ValueType.Enum
VALUE_TYPE_STRING = 2
VALUE_TYPE_INT64 = 4

_MASK32 = 0xFFFFFFFF
_C1 = 0xCC9E2D51
_C2 = 0x1B873593


def _rotl32(x: int, r: int) -> int:
    return ((x << r) | (x >> (32 - r))) & _MASK32


def murmur3_32(data: bytes, seed: int = 0) -> int:
    """MurmurHash3 x86_32 of ``data``, unsigned."""
    h = seed & _MASK32
    blocks = len(data) // 4
    for (k,) in struct.iter_unpack("<I", data[: blocks * 4]):
        k = (k * _C1) & _MASK32
        k = _rotl32(k, 15)
        k = (k * _C2) & _MASK32
        h ^= k
        h = _rotl32(h, 13)
        h = (h * 5 + 0xE6546B64) & _MASK32
    tail = data[blocks * 4 :]
    if tail:
        k = 0
        for i, byte in enumerate(tail):
            k |= byte << (8 * i)
        k = (k * _C1) & _MASK32
        k = _rotl32(k, 15)
        k = (k * _C2) & _MASK32
        h ^= k
    h ^= len(data)
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _MASK32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _MASK32
    h ^= h >> 16
    return h


def feature_field(view: str, feature: str) -> bytes:
    """The hash field of ``view:feature``: its murmur3 as 4 little-endian bytes."""
    return struct.pack("<I", murmur3_32(f"{view}:{feature}".encode()))


def timestamp_field(view: str) -> bytes:
    return f"_ts:{view}".encode()


def key_prefix(join_key: str) -> bytes:
    """The part of a v3 entity key before its value (one join key)."""
    name = join_key.encode()
    return struct.pack("<III", 1, VALUE_TYPE_STRING, len(name)) + name


def entity_keys(
    join_key: str, kind: KeyKind, keys: Sequence[int] | Sequence[bytes], project: str
) -> list[bytes]:
    """The Redis keys of one join key's values. INT64 keys are Feast Int64 entities; BYTES keys
    are Feast String entities (their UTF-8 bytes)."""
    head = key_prefix(join_key)
    tail = project.encode()
    if kind == "INT64":
        pack = struct.Struct("<IIq").pack
        return [head + pack(VALUE_TYPE_INT64, 8, k) + tail for k in keys]
    out = []
    for k in keys:
        assert isinstance(k, bytes)
        out.append(head + struct.pack("<II", VALUE_TYPE_STRING, len(k)) + k + tail)
    return out


class ValueDecodeError(ValueError):
    pass


_FLOAT_TAG = 0x35  # field 6 (float_val), wire type 5 (32-bit)
_DOUBLE_TAG = 0x29  # field 5 (double_val), wire type 1 (64-bit)


def _value_message() -> type:
    from headrace._proto.feast.types import Value_pb2

    message: type = Value_pb2.Value
    return message


_NUMERIC = ("float_val", "double_val", "int64_val", "int32_val", "bool_val", "unix_timestamp_val")


def decode_column(
    raw: Sequence[bytes | None], what: str
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    """Decode one feature's values (one per entity) to float32 and a present mask. ``what``
    names the feature in errors. Doubles and integers beyond float32's range become +-inf,
    as in any cast to the model's FP32 input."""
    with np.errstate(over="ignore"):
        return _decode_column(raw, what)


def _decode_column(
    raw: Sequence[bytes | None], what: str
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    n = len(raw)
    values = np.zeros(n, np.float32)
    present = np.zeros(n, np.bool_)
    if None not in raw:
        joined = b"".join(raw)  # type: ignore[arg-type]
        # Fast paths: every value a float_val (5 bytes) or a double_val (9 bytes).
        if len(joined) == 5 * n:
            packed = np.frombuffer(joined, np.uint8).reshape(n, 5)
            if (packed[:, 0] == _FLOAT_TAG).all():
                values[:] = packed[:, 1:].copy().view("<f4")[:, 0]
                present[:] = True
                return values, present
        elif len(joined) == 9 * n:
            packed = np.frombuffer(joined, np.uint8).reshape(n, 9)
            if (packed[:, 0] == _DOUBLE_TAG).all():
                values[:] = packed[:, 1:].copy().view("<f8")[:, 0]
                present[:] = True
                return values, present
    message_type = _value_message()
    message = message_type()
    for i, item in enumerate(raw):
        if not item:
            continue  # no field, or an empty Value: Feast's null
        message.Clear()
        try:
            message.ParseFromString(item)
        except Exception as error:
            raise ValueDecodeError(f"{what}: not a feast.types.Value ({error})") from None
        variant = message.WhichOneof("val")
        if variant in _NUMERIC:
            values[i] = float(getattr(message, variant))
            present[i] = True
        elif variant == "null_val":
            continue
        elif variant is None:
            raise ValueDecodeError(
                f"{what}: a Feast value type headrace does not read (lists, maps)"
            )
        else:
            raise ValueDecodeError(f"{what}: a {variant} value cannot fill a float32 input")
    return values, present


def decode_timestamps(raw: Sequence[bytes | None]) -> npt.NDArray[np.float64]:
    """``_ts:<view>`` values as seconds since the epoch (NaN where absent)."""
    from google.protobuf.timestamp_pb2 import Timestamp

    out = np.full(len(raw), np.nan)
    stamp = Timestamp()
    for i, item in enumerate(raw):
        if item:
            stamp.Clear()
            stamp.ParseFromString(item)
            out[i] = stamp.seconds + stamp.nanos * 1e-9
    return out
