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
from typing import Any

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


# Tags (field number << 3 | wire type) of the scalar variants, as Feast's Value writes them.
_FLOAT_TAG = 0x35  # float_val = 6, fixed32
_DOUBLE_TAG = 0x29  # double_val = 5, fixed64
_VARINT_TAGS = (0x18, 0x20, 0x38, 0x40)  # int32_val = 3, int64_val = 4, bool_val = 7,
# unix_timestamp_val = 8: varints (negative int32/int64 as 10-byte two's complement)
_NULL_TAG = 0x98  # null_val = 19 (two tag bytes: 0x98 0x01)
_MAX_VARINT = 10


def _value_message() -> type:
    from headrace import wire

    message: type = wire.feast_value.Value
    return message


_NUMERIC = ("float_val", "double_val", "int64_val", "int32_val", "bool_val", "unix_timestamp_val")


def _fixed(buf: npt.NDArray[np.uint8], starts: npt.NDArray[np.intp], width: int) -> Any:
    at = starts[:, None] + 1 + np.arange(width)
    return buf[at].copy().view(f"<f{width}")[:, 0]


def _varints(
    buf: npt.NDArray[np.uint8], starts: npt.NDArray[np.intp], lengths: npt.NDArray[np.intp]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """Varints after a one-byte tag; the second array says which were well formed (every
    byte but the last has the continuation bit)."""
    # As many byte columns as the longest varint here (small counts take one or two bytes).
    k = np.arange(int(lengths.max()) - 1)
    count = (lengths - 1)[:, None]
    inside = k < count
    at = np.minimum(starts[:, None] + 1 + k, len(buf) - 1)
    data = np.where(inside, buf[at], 0).astype(np.uint64)
    continues = (data & 0x80) != 0
    ok = (continues == (k < count - 1)).all(axis=1)
    value = ((data & 0x7F) << (7 * k).astype(np.uint64)).sum(axis=1, dtype=np.uint64)
    return value.view(np.int64), ok


_IS_VARINT_TAG = np.zeros(256, np.bool_)
_IS_VARINT_TAG[list(_VARINT_TAGS)] = True
_UNIFORM = {5: (_FLOAT_TAG, "<f4"), 9: (_DOUBLE_TAG, "<f8")}


def _decode_uniform(raw: Sequence[bytes | None]) -> npt.NDArray[np.float32] | None:
    """The usual view of Feast floats (or doubles): every value one tag and a fixed-size
    number, read as one ``[n, 1 + size]`` byte table. None when the values are not so."""
    first = raw[0]
    assert first is not None
    width = len(first)
    kind = _UNIFORM.get(width)
    if kind is None or first[0] != kind[0]:
        return None
    if set(map(len, raw)) != {width}:  # type: ignore[arg-type]  # no None: the caller checked
        return None
    data = b"".join(raw)  # type: ignore[arg-type]
    table = np.frombuffer(data, np.uint8).reshape(len(raw), width)
    if not (table[:, 0] == kind[0]).all():
        return None
    return table[:, 1:].copy().view(kind[1])[:, 0].astype(np.float32)


def decode_values(
    raw: Sequence[bytes | None], names: Sequence[str]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    """Decode serialised ``feast.types.Value`` s to float32 and a present mask. ``raw`` is
    row-major over ``names`` (value i is feature ``names[i % len(names)]``, named in errors).
    Values beyond float32's range become +-inf, as in any cast to the model's FP32 input."""
    n = len(raw)
    with np.errstate(over="ignore"):
        if n and None not in raw:
            uniform = _decode_uniform(raw)  # every value a float (or every one a double)
            if uniform is not None:
                return uniform, np.ones(n, np.bool_)
        items = [r or b"" for r in raw]
        lengths = np.fromiter(map(len, items), dtype=np.intp, count=n)
        return _decode_spans(b"".join(items), np.cumsum(lengths) - lengths, lengths, names)


def decode_spans(
    data: bytes,
    starts: npt.NDArray[np.intp],
    lengths: npt.NDArray[np.intp],
    names: Sequence[str],
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    """:func:`decode_values` of the values ``data[starts[i] : starts[i] + lengths[i]]`` (a
    length of 0: missing), without a Python object per value: a round trip's replies joined
    once decode every view of a hash together."""
    with np.errstate(over="ignore"):
        return _decode_spans(data, starts, lengths, names)


def _decode_spans(
    data: bytes,
    starts: npt.NDArray[np.intp],
    lengths: npt.NDArray[np.intp],
    names: Sequence[str],
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    """The scalar variants Feast writes for numeric features — one tag and a fixed32, fixed64
    or varint — decoded for the whole batch at once with numpy; anything else (nulls, text,
    lists) goes through the protobuf runtime one by one."""
    n = len(lengths)
    values = np.zeros(n, np.float32)
    present = np.zeros(n, np.bool_)
    if n == 0:
        return values, present
    buf = np.frombuffer(data, np.uint8)
    filled = lengths > 0
    tags = np.zeros(n, np.uint8)
    if filled.all():
        tags = buf[starts]
    else:
        tags[filled] = buf[starts[filled]]
    done = ~filled  # absent field or empty Value: Feast's null
    floats = (tags == _FLOAT_TAG) & (lengths == 5)
    if floats.all():  # the usual view of floats: nothing else to look at
        return _fixed(buf, starts, 4), np.ones(n, np.bool_)
    if floats.any():
        values[floats] = _fixed(buf, starts[floats], 4)
        present[floats] = True
        done |= floats
    doubles = (tags == _DOUBLE_TAG) & (lengths == 9)
    if doubles.any():
        values[doubles] = _fixed(buf, starts[doubles], 8)
        present[doubles] = True
        done |= doubles
    varints = _IS_VARINT_TAG[tags] & (lengths >= 2) & (lengths <= _MAX_VARINT + 1)
    if varints.any():
        where = np.flatnonzero(varints)
        decoded, ok = _varints(buf, starts[where], lengths[where])
        where, decoded = where[ok], decoded[ok]
        is_bool = tags[where] == 0x38
        decoded[is_bool] = decoded[is_bool] != 0
        values[where] = decoded
        present[where] = True
        done[where] = True
    rest = np.flatnonzero(~done)
    if rest.size:
        _decode_slowly(data, starts, lengths, rest, names, values, present)
    return values, present


def _decode_slowly(
    data: bytes,
    starts: npt.NDArray[np.intp],
    lengths: npt.NDArray[np.intp],
    indices: npt.NDArray[np.intp],
    names: Sequence[str],
    values: npt.NDArray[np.float32],
    present: npt.NDArray[np.bool_],
) -> None:
    message = _value_message()()
    for i in indices.tolist():
        what = names[i % len(names)]
        start = int(starts[i])
        message.Clear()
        try:
            message.ParseFromString(data[start : start + int(lengths[i])])
        except Exception as error:
            raise ValueDecodeError(f"{what}: not a feast.types.Value ({error})") from None
        variant = message.WhichOneof("val")
        if variant in _NUMERIC:
            values[i] = float(getattr(message, variant))
            present[i] = True
        elif variant == "null_val":
            continue
        elif variant is None:
            raise ValueDecodeError(f"{what}: a Feast value type headrace does not read (a list?)")
        else:
            raise ValueDecodeError(f"{what}: a {variant} value cannot fill a float32 input")


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
