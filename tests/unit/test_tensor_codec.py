"""The core's tensor validation and BYTES codec, against a pure-Python reference."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from headrace import _core
from headrace.client.codec import decode_raw_output
from headrace.errors import InvalidArgumentError
from headrace.server.convert import decode_raw, encode_raw


def reference_encode(elements: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


@given(st.lists(st.binary(max_size=40), max_size=30))
def test_bytes_round_trip_matches_reference(elements: list[bytes]) -> None:
    array = np.empty(len(elements), dtype=object)
    array[:] = elements
    blob = _core.encode_bytes(array, "t")
    assert blob == reference_encode(elements)
    assert _core.decode_bytes(blob, len(elements), "t").tolist() == elements


@given(st.lists(st.binary(max_size=20), min_size=1, max_size=10), st.data())
def test_every_truncation_is_refused(elements: list[bytes], data: st.DataObject) -> None:
    blob = reference_encode(elements)
    cut = data.draw(st.integers(0, len(blob) - 1))
    with pytest.raises(_core.CoreError) as info:
        _core.decode_bytes(blob[:cut], len(elements), "t")
    code, message = info.value.code, info.value.message
    assert code == 3 and "input 't'" in message


@given(st.binary(max_size=64), st.integers(0, 40))
def test_garbage_never_crashes(blob: bytes, count: int) -> None:
    try:
        decoded = _core.decode_bytes(blob, count, "g")
    except _core.CoreError:
        return
    assert reference_encode(decoded.tolist()) == blob


def test_declared_count_cannot_force_an_allocation() -> None:
    with pytest.raises(_core.CoreError, match="cannot hold"):
        _core.decode_bytes(b"\x00" * 8, 2**62, "t")


def test_str_elements_are_utf8_encoded() -> None:
    blob = _core.encode_bytes(np.array(["é", "a\x00b"], dtype=object), "o")
    assert blob == reference_encode(["é".encode(), b"a\x00b"])
    with pytest.raises(_core.CoreError, match="neither bytes nor str"):
        _core.encode_bytes(np.array([1], dtype=object), "o")


# The bindings cap every limit at 2^60 elements, so that elements x 8 bytes stays exact in 64
# bits; a larger configured limit behaves as 2^60.
ELEMENT_LIMIT_CAP = 2**60


@given(st.lists(st.integers(0, 2**40), max_size=5), st.integers(1, 2**62))
def test_element_count_never_wraps(shape: list[int], limit: int) -> None:
    product = int(np.prod([int(d) for d in shape], dtype=object)) if shape else 1
    if product <= min(limit, ELEMENT_LIMIT_CAP):
        assert _core.checked_element_count(shape, limit, "s") == product
    else:
        with pytest.raises(_core.CoreError, match="request limit"):
            _core.checked_element_count(shape, limit, "s")


def test_limits_above_the_cap_act_as_the_cap() -> None:
    assert _core.checked_element_count([2**30, 2**30], 2**62, "s") == 2**60
    with pytest.raises(_core.CoreError, match="request limit"):
        _core.checked_element_count([2**31, 2**30], 2**62, "s")


def test_raw_input_is_a_view_of_the_request_bytes() -> None:
    raw = np.arange(6, dtype=np.float32).tobytes()
    array = decode_raw("x", "FP32", [2, 3], raw, 100)
    assert not array.flags.owndata  # no copy was made
    assert np.array_equal(array, np.arange(6, dtype=np.float32).reshape(2, 3))
    with pytest.raises(InvalidArgumentError, match="raw content has 24 bytes"):
        decode_raw("x", "FP64", [2, 3], raw, 100)


def test_output_codec_round_trip() -> None:
    values = np.array([[b"", b"\x00"], [b"abc", "é".encode()]], dtype=object)
    raw = encode_raw("y", "BYTES", values)
    assert decode_raw_output("BYTES", [2, 2], raw).tolist() == values.tolist()
    floats = np.array([1.5, -2.0], np.float16)
    assert np.array_equal(decode_raw_output("FP16", [2], encode_raw("f", "FP16", floats)), floats)
