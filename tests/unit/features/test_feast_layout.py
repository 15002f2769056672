"""Feast's Redis layout: murmur3 fields, v3 entity keys, Value decoding (fast paths agree with
the protobuf runtime)."""

from __future__ import annotations

import struct

import mmh3
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from headrace.features.feast_layout import (
    ValueDecodeError,
    decode_spans,
    decode_timestamps,
    decode_values,
    entity_keys,
    feature_field,
    murmur3_32,
    timestamp_field,
)
from headrace.wire import feast_value as Value_pb2


@given(st.binary(max_size=64), st.integers(0, 2**32 - 1))
def test_murmur3_matches_the_reference_implementation(data: bytes, seed: int) -> None:
    assert murmur3_32(data, seed) == mmh3.hash(data, seed, signed=False)


def test_feature_field_is_little_endian_murmur3_of_view_colon_feature() -> None:
    expected = struct.pack("<I", mmh3.hash("driver_stats:conv_rate", signed=False))
    assert feature_field("driver_stats", "conv_rate") == expected
    assert timestamp_field("driver_stats") == b"_ts:driver_stats"


def test_entity_key_v3_golden_bytes() -> None:
    # Bytes of Feast's _redis_key for driver_id=1001 in project "demo" (reference notes, 1.2).
    golden = bytes.fromhex("010000000200000009000000") + b"driver_id"
    golden += bytes.fromhex("0400000008000000e903000000000000") + b"demo"
    assert entity_keys("driver_id", "INT64", [1001], "demo") == [golden]


def test_string_entity_key() -> None:
    (key,) = entity_keys("user", "BYTES", [b"ab"], "p")
    assert key == struct.pack("<III", 1, 2, 4) + b"user" + struct.pack("<II", 2, 2) + b"ab" + b"p"


def value(**field: object) -> bytes:
    return Value_pb2.Value(**field).SerializeToString()  # type: ignore[no-any-return]


def test_float_val_on_the_wire_is_field_6_fixed32() -> None:
    # Independent of our .proto: tag (6 << 3 | 5) then the little-endian float.
    raw = [b"\x35" + struct.pack("<f", 1.5), b"\x35" + struct.pack("<f", -2.0)]
    values, present = decode_values(raw, ["f"])
    assert values.tolist() == [1.5, -2.0] and present.all()
    assert value(float_val=1.5) == raw[0]


def test_every_numeric_variant_and_missing_values() -> None:
    raw = [
        value(float_val=0.0),
        value(double_val=2.25),
        value(int64_val=-30),
        value(int32_val=7),
        value(bool_val=True),
        value(unix_timestamp_val=1_700_000_000),
        b"",  # Feast's null: an empty Value
        None,  # no such field in the hash
        value(null_val=Value_pb2.NULL),
    ]
    values, present = decode_values(raw, ["f"])
    assert present.tolist() == [True] * 6 + [False] * 3
    assert values[:6].tolist() == [0.0, 2.25, -30.0, 7.0, 1.0, np.float32(1_700_000_000)]


@given(st.lists(st.floats(width=32, allow_nan=False), min_size=1, max_size=40))
def test_float_fast_path_equals_protobuf(floats: list[float]) -> None:
    raw = [value(float_val=f) for f in floats]
    values, present = decode_values(raw, ["f"])
    assert present.all()
    assert values.tolist() == [Value_pb2.Value.FromString(r).float_val for r in raw]


@given(st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=40))
def test_double_fast_path_equals_protobuf(doubles: list[float]) -> None:
    raw = [value(double_val=d) for d in doubles]
    values, _ = decode_values(raw, ["f"])
    with np.errstate(over="ignore"):
        assert values.tolist() == np.array(doubles, np.float32).tolist()


@given(
    st.lists(
        st.one_of(
            st.none(),
            st.floats(width=32, allow_nan=False).map(lambda f: value(float_val=f)),
            st.integers(-(2**63), 2**63 - 1).map(lambda i: value(int64_val=i)),
            st.integers(-(2**31), 2**31 - 1).map(lambda i: value(int32_val=i)),
            st.integers(-(2**63), 2**63 - 1).map(lambda i: value(unix_timestamp_val=i)),
            st.booleans().map(lambda b: value(bool_val=b)),
            st.floats(allow_nan=False).map(lambda d: value(double_val=d)),
            st.just(value(null_val=Value_pb2.NULL)),
            st.just(b""),
        ),
        max_size=30,
    )
)
def test_mixed_columns_decode_one_by_one(raw: list[bytes | None]) -> None:
    values, present = decode_values(raw, ["f", "g", "h"])
    for i, item in enumerate(raw):
        message = Value_pb2.Value.FromString(item or b"")
        variant = message.WhichOneof("val")
        assert present[i] == (variant not in (None, "null_val"))
        if present[i]:
            with np.errstate(over="ignore"):
                expected = np.float32(getattr(message, message.WhichOneof("val") or "float_val"))
            assert values[i] == expected


@given(
    st.lists(
        st.tuples(
            st.binary(max_size=5),  # bytes before the value: other replies, RESP framing
            st.one_of(
                st.none(),
                st.floats(width=32, allow_nan=False).map(lambda f: value(float_val=f)),
                st.integers(-(2**63), 2**63 - 1).map(lambda i: value(int64_val=i)),
                st.booleans().map(lambda b: value(bool_val=b)),
                st.floats(allow_nan=False).map(lambda d: value(double_val=d)),
                st.just(value(null_val=Value_pb2.NULL)),
            ),
        ),
        max_size=30,
    )
)
def test_values_decoded_in_place_in_a_larger_buffer_equal_values_decoded_alone(
    items: list[tuple[bytes, bytes | None]],
) -> None:
    data = b""
    starts, lengths = [], []
    for gap, item in items:
        data += gap
        starts.append(len(data))
        lengths.append(len(item or b""))
        data += item or b""
    values, present = decode_spans(
        data + b"\xff", np.array(starts, np.intp), np.array(lengths, np.intp), ["f", "g"]
    )
    want_values, want_present = decode_values([item for _, item in items], ["f", "g"])
    assert present.tolist() == want_present.tolist()
    assert values.tolist() == want_values.tolist()


def test_text_values_cannot_fill_a_float_input() -> None:
    with pytest.raises(ValueDecodeError, match=r"user_stats\.city: a string_val value"):
        decode_values([value(string_val="Lyon")], ["user_stats.city"])


def test_list_values_are_refused() -> None:
    float_list = b"\x82\x01\x05\x0a\x03\x00\x00\x80"  # field 16 (float_list_val), unknown to us
    with pytest.raises(ValueDecodeError, match="does not read"):
        decode_values([float_list], ["f"])


def test_timestamps() -> None:
    from google.protobuf.timestamp_pb2 import Timestamp

    stamp = Timestamp(seconds=1_700_000_000, nanos=500_000_000).SerializeToString()
    times = decode_timestamps([stamp, None])
    assert times[0] == 1_700_000_000.5 and np.isnan(times[1])
