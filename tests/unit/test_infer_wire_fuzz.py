"""Fuzzing the wire parser with mutated real requests: ModelInferRequests as headrace's client
serializes them (FP32, INT64, BYTES inputs, parameters, requested outputs), then truncated,
byte-flipped, with length fields and shape dims rewritten, and with fields repeated.

Whatever the bytes, the parser returns or raises InvalidArgumentError -- never another exception,
never a crash -- and its work, counted by the parser itself, stays linear in the
message size, refused or not. Expanding a BYTES input afterwards obeys the same rules.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headrace import _core
from headrace.client import build_infer_request
from headrace.errors import HeadraceError

INVALID_ARGUMENT = 3
MAX_ELEMENTS = 1 << 16
# Steps are fields and values read, set lookups and BYTES elements walked: each consumes at
# least a byte of the message, except a constant few per request.
STEP_SLACK = 16


def real_requests() -> list[bytes]:
    rng = np.random.default_rng(5)
    texts = np.array([b"", b"a", "é".encode(), b"\x00\xff", b"longer text"], dtype=object)
    requests = [
        build_infer_request("mlp", {"x": rng.normal(size=(3, 8)).astype(np.float32)}),
        build_infer_request(
            "two_in",
            {
                "a": rng.integers(-5, 5, size=(2, 4)).astype(np.int64),
                "b": rng.normal(size=(2, 4)).astype(np.float32),
            },
            version="2",
            request_id="req-17",
            outputs=["sum", "product"],
            parameters={"priority": 1, "timeout": 30_000, "note": "x", "flag": True},
        ),
        build_infer_request("strings", {"s": texts.reshape(5, 1)}, outputs=["upper"]),
        build_infer_request(
            "mixed",
            {"s": texts[:2].reshape(1, 2), "v": np.zeros((1, 0), np.float32)},
            parameters={"ratio": 0.5},
        ),
    ]
    return [request.SerializeToString() for request in requests]


REAL = real_requests()


def varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def length_fields(data: bytes, base: int = 0, depth: int = 0) -> list[tuple[int, int]]:
    """(start, end) of every length varint in a well-formed message, nested ones included."""
    found: list[tuple[int, int]] = []
    pos = 0
    while pos < len(data):
        tag, pos = read_varint(data, pos)
        wire = tag & 7
        if wire == 0:
            _, pos = read_varint(data, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            start = pos
            length, pos = read_varint(data, pos)
            found.append((base + start, base + pos))
            payload = data[pos : pos + length]
            if depth < 3:
                # A payload that is not a message (raw bytes, strings) runs off its end.
                with contextlib.suppress(IndexError):
                    found.extend(length_fields(payload, base + pos, depth + 1))
            pos += length
        else:
            return found
    return found


def fields(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of every top-level field."""
    spans = []
    pos = 0
    while pos < len(data):
        start = pos
        tag, pos = read_varint(data, pos)
        wire = tag & 7
        if wire == 0:
            _, pos = read_varint(data, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            length, pos = read_varint(data, pos)
            pos += length
        spans.append((start, pos))
    return spans


interesting_lengths = st.one_of(
    st.integers(0, 64),
    st.sampled_from([2**31 - 1, 2**31, 2**32, 2**63 - 1, 2**64 - 1]),
)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    message = bytearray(draw(st.sampled_from(REAL)))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["truncate", "flip", "length", "repeat", "splice"]))
        if not message:
            break
        if kind == "truncate":
            del message[draw(st.integers(0, len(message) - 1)) :]
        elif kind == "flip":
            for _ in range(draw(st.integers(1, 8))):
                message[draw(st.integers(0, len(message) - 1))] = draw(st.integers(0, 255))
        elif kind == "length":
            try:
                spans = length_fields(bytes(message))
            except IndexError:
                spans = []
            if spans:
                start, end = draw(st.sampled_from(spans))
                message[start:end] = varint(draw(interesting_lengths))
        elif kind == "repeat":
            try:
                spans = fields(bytes(message))
            except IndexError:
                spans = []
            if spans:
                start, end = draw(st.sampled_from(spans))
                message += bytes(message[start:end]) * draw(st.integers(1, 400))
        else:
            cut = draw(st.integers(0, len(message)))
            message[cut:cut] = draw(st.binary(max_size=16))
    return bytes(message)


def check(message: bytes) -> None:
    steps, code, text = _core.testing.infer_request_parse_steps(message, MAX_ELEMENTS)
    assert code in (0, INVALID_ARGUMENT), (code, text)
    assert steps <= len(message) + STEP_SLACK, (steps, len(message))
    try:
        parsed = _core.parse_infer_request(message, MAX_ELEMENTS, expand_bytes=False)
    except HeadraceError as error:
        assert error.code == INVALID_ARGUMENT, error.message
        assert code == INVALID_ARGUMENT and error.message == text
        return
    assert code == 0, text
    for _, datatype, value in parsed[4]:
        if isinstance(value, _core.BytesTensor):
            assert datatype == "BYTES" and value.size <= value.nbytes // 4
            try:
                expanded = value.to_numpy()
            except HeadraceError as error:
                assert error.code == INVALID_ARGUMENT, error.message
                continue
            assert expanded.shape == value.shape
    # The eager path agrees: same outcome, BYTES errors included.
    try:
        _core.parse_infer_request(message, MAX_ELEMENTS)
    except HeadraceError as error:
        assert error.code == INVALID_ARGUMENT, error.message


def test_the_real_requests_parse() -> None:
    for message in REAL:
        steps, code, text = _core.testing.infer_request_parse_steps(message, MAX_ELEMENTS)
        assert code == 0, text
        assert steps <= len(message)
        check(message)


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(mutated())
def test_mutated_real_requests_parse_or_are_refused(message: bytes) -> None:
    check(message)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.sampled_from(REAL), st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=40))
def test_rewritten_shapes_parse_or_are_refused(message: bytes, shape: list[int]) -> None:
    from headrace.wire import inference as pb

    request: Any = pb.ModelInferRequest.FromString(message)
    del request.inputs[0].shape[:]
    request.inputs[0].shape.extend(shape)
    check(request.SerializeToString())
