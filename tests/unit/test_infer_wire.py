"""The native ModelInfer wire codec against the Python protobuf runtime and convert.py.

Requests are built and serialized with the protobuf runtime (plus hand-encoded unpacked shapes
and unknown fields), then parsed both by ``_core.parse_infer_request`` and by
``pb.ModelInferRequest.FromString`` + ``decode_infer_request``: the two must agree on every value,
and on every error message. Responses from ``_core.serialize_infer_response`` must parse to the
message that ``encode_infer_response`` builds.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headrace import _core
from headrace.datatypes import DATATYPE_TO_NUMPY
from headrace.engine import InferResult
from headrace.errors import InvalidArgumentError
from headrace.server.convert import decode_infer_request, encode_infer_response
from headrace.wire import inference as pb

INVALID_ARGUMENT = 3
DATATYPES = list(DATATYPE_TO_NUMPY)
MAX_ELEMENTS = 4096

# ---- hand encoding of the few things the protobuf runtime will not write for us ----


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64: 10-byte two's complement
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def tag(field: int, wire: int) -> bytes:
    return varint((field << 3) | wire)


def length_delimited(field: int, payload: bytes) -> bytes:
    return tag(field, 2) + varint(len(payload)) + payload


def bytes_blob(elements: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


unknown_field = st.one_of(
    st.tuples(st.integers(8, 5000), st.integers(0, 2**64 - 1)).map(
        lambda f: tag(f[0], 0) + varint(f[1])
    ),
    st.tuples(st.integers(8, 5000), st.binary(min_size=8, max_size=8)).map(
        lambda f: tag(f[0], 1) + f[1]
    ),
    st.tuples(st.integers(8, 5000), st.binary(max_size=20)).map(
        lambda f: length_delimited(f[0], f[1])
    ),
    st.tuples(st.integers(8, 5000), st.binary(min_size=4, max_size=4)).map(
        lambda f: tag(f[0], 5) + f[1]
    ),
    st.tuples(st.integers(8, 5000), st.integers(0, 2**63)).map(
        lambda f: tag(f[0], 3) + tag(1, 0) + varint(f[1]) + tag(f[0], 4)
    ),
)

text = st.text(max_size=12)  # includes non-ASCII and NUL
name = st.text(min_size=1, max_size=8)

parameter = st.one_of(
    st.booleans().map(lambda v: pb.InferParameter(bool_param=v)),
    st.integers(-(2**63), 2**63 - 1).map(lambda v: pb.InferParameter(int64_param=v)),
    text.map(lambda v: pb.InferParameter(string_param=v)),
    st.floats(allow_nan=False).map(lambda v: pb.InferParameter(double_param=v)),
    st.integers(0, 2**64 - 1).map(lambda v: pb.InferParameter(uint64_param=v)),
    st.just(pb.InferParameter()),  # no choice set: None, as in convert.py
)


@st.composite
def raw_input(draw: st.DrawFn, input_name: str) -> tuple[bytes, bytes]:
    """One input's InferInputTensor bytes and its raw content, valid for its datatype."""
    datatype = draw(st.sampled_from(DATATYPES))
    shape = draw(st.lists(st.integers(0, 4), max_size=3))
    count = math.prod(shape)
    if datatype == "BYTES":
        raw = bytes_blob(draw(st.lists(st.binary(max_size=6), min_size=count, max_size=count)))
    else:
        size = count * DATATYPE_TO_NUMPY[datatype].itemsize
        raw = draw(st.binary(min_size=size, max_size=size))
        if datatype == "BOOL":
            raw = bytes(b & 1 for b in raw)  # numpy bools are 0/1 bytes
    tensor = pb.ModelInferRequest.InferInputTensor(name=input_name, datatype=datatype)
    tensor.parameters["p"].int64_param = draw(st.integers(-5, 5))
    encoded = tensor.SerializeToString()
    if draw(st.booleans()):
        encoded += length_delimited(3, b"".join(varint(d) for d in shape))  # packed
    else:
        encoded += b"".join(tag(3, 0) + varint(d) for d in shape)  # unpacked
    return encoded, raw


@st.composite
def infer_request(draw: st.DrawFn) -> bytes:
    base = pb.ModelInferRequest(model_name=draw(text), model_version=draw(text), id=draw(text))
    for key, value in draw(st.dictionaries(text, parameter, max_size=4)).items():
        base.parameters[key].CopyFrom(value)
    for output in draw(st.lists(name, max_size=3)):
        requested = base.outputs.add(name=output)
        requested.parameters["binary_data"].bool_param = True
    names = draw(st.lists(name, max_size=4, unique=True))
    message = base.SerializeToString()
    for input_name in names:
        encoded, raw = draw(raw_input(input_name))
        message += length_delimited(5, encoded) + length_delimited(7, raw)
    for extra in draw(st.lists(unknown_field, max_size=3)):
        message += extra
    return message


def reference(message: bytes, max_elements: int = MAX_ELEMENTS) -> Any:
    return decode_infer_request(pb.ModelInferRequest.FromString(message), max_elements)


def _comparable(parameters: dict[str, Any]) -> dict[str, tuple[type, Any]]:
    """Values with their types (True is not 1); floats by bit pattern (NaN equals NaN)."""
    return {
        k: (type(v), struct.pack("<d", v) if isinstance(v, float) else v)
        for k, v in parameters.items()
    }


def assert_same(parsed: tuple[Any, ...], expected: Any) -> None:
    model_name, model_version, request_id, parameters, inputs, outputs, typed = parsed
    assert (model_name, model_version, request_id) == (
        expected.model_name,
        expected.model_version,
        expected.request_id,
    )
    assert _comparable(parameters) == _comparable(expected.parameters)
    assert outputs == expected.outputs
    assert typed is False
    assert [n for n, _, _ in inputs] == list(expected.inputs)
    for input_name, datatype, array in inputs:
        want = expected.inputs[input_name]
        assert datatype == expected.declared_datatypes[input_name]
        assert array.dtype == want.dtype and array.shape == want.shape
        if datatype == "BYTES":
            assert array.tolist() == want.tolist()
        else:
            assert array.tobytes() == want.tobytes()
            assert not array.flags.writeable


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(infer_request())
def test_parse_matches_protobuf_runtime(message: bytes) -> None:
    assert_same(_core.parse_infer_request(message, MAX_ELEMENTS), reference(message))


def test_raw_inputs_are_views_of_the_message() -> None:
    values = np.arange(32, dtype=np.float32).reshape(1, 32)
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 32])
    request.raw_input_contents.append(values.tobytes())
    message = request.SerializeToString()
    array = _core.parse_infer_request(message, 100)[4][0][2]
    assert array is not None
    base: object = array.base
    assert base is message
    assert np.array_equal(array, values)
    del message
    assert np.array_equal(array, values)  # the view keeps the bytes alive


def test_typed_contents_fall_back_to_the_runtime() -> None:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="a", datatype="INT32", shape=[2]).contents.int_contents.extend([1, 2])
    request.inputs.add(name="b", datatype="FP32", shape=[1])  # no contents: Python reports it
    parsed = _core.parse_infer_request(request.SerializeToString(), 100)
    assert parsed[6] is True
    assert parsed[4][0] == ("a", "INT32", None)


# ---- error cases: the same code and message as convert.py ----


def base_request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="a", datatype="FP32", shape=[2])
    request.raw_input_contents.append(b"\0" * 8)
    request.inputs.add(name="b", datatype="BYTES", shape=[1])
    request.raw_input_contents.append(bytes_blob([b"xyz"]))
    return request


def _count_mismatch(r: pb.ModelInferRequest) -> None:
    del r.raw_input_contents[1]


def _mixed(r: pb.ModelInferRequest) -> None:
    r.inputs[1].contents.bytes_contents.append(b"x")


def _duplicate(r: pb.ModelInferRequest) -> None:
    r.inputs[1].name = "a"


def _no_contents(r: pb.ModelInferRequest) -> None:
    del r.raw_input_contents[:]


def _no_contents_before_typed(r: pb.ModelInferRequest) -> None:
    del r.raw_input_contents[:]
    r.inputs[1].contents.bytes_contents.append(b"x")


def _unknown_datatype(r: pb.ModelInferRequest) -> None:
    r.inputs[0].datatype = "FP33"


def _negative_dim(r: pb.ModelInferRequest) -> None:
    r.inputs[0].shape[0] = -2


def _too_many_elements(r: pb.ModelInferRequest) -> None:
    r.inputs[0].shape[:] = [1 << 20, 1 << 20]


def _byte_size(r: pb.ModelInferRequest) -> None:
    r.raw_input_contents[0] = b"\0" * 7


def _bytes_truncated(r: pb.ModelInferRequest) -> None:
    r.raw_input_contents[1] = bytes_blob([b"xyz"])[:-1]


def _bytes_trailing(r: pb.ModelInferRequest) -> None:
    r.raw_input_contents[1] = bytes_blob([b"xyz", b""])


def _bytes_too_few(r: pb.ModelInferRequest) -> None:
    r.inputs[1].shape[:] = [3]


ERROR_CASES = {
    "count mismatch": (_count_mismatch, "raw_input_contents entries"),
    "raw and typed mixed": (_mixed, "are mixed in one request"),
    "duplicate name": (_duplicate, "appears more than once"),
    "no contents": (_no_contents, "has no contents (typed or raw)"),
    "no contents before typed": (_no_contents_before_typed, "has no contents (typed or raw)"),
    "unknown datatype": (_unknown_datatype, "unknown datatype 'FP33'"),
    "negative dim": (_negative_dim, "is negative (-2)"),
    "too many elements": (_too_many_elements, "the request limit"),
    "byte size": (_byte_size, "raw content has 7 bytes"),
    "BYTES truncated": (_bytes_truncated, "BYTES element 0 declares"),
    "BYTES trailing": (_bytes_trailing, "bytes after the 1 elements"),
    "BYTES too few": (_bytes_too_few, "cannot hold 3 elements"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_errors_match_convert(case: str) -> None:
    mutate, fragment = ERROR_CASES[case]
    request = base_request()
    mutate(request)
    message = request.SerializeToString()
    with pytest.raises(InvalidArgumentError) as expected:
        reference(message, 1000)
    with pytest.raises(_core.CoreError) as info:
        _core.parse_infer_request(message, 1000)
    code, text_ = info.value.code, info.value.message
    assert code == INVALID_ARGUMENT
    assert text_ == str(expected.value)
    assert fragment in text_


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(infer_request(), st.data())
def test_structural_mutations_agree_with_convert(message: bytes, data: st.DataObject) -> None:
    """Random damage at the message level (entries dropped, names collided, shapes changed):
    the core and convert.py both accept with equal values or both refuse with one message."""
    request = pb.ModelInferRequest.FromString(message)
    action = data.draw(st.sampled_from(["drop_raw", "rename", "reshape", "retype", "typed"]))
    if action == "drop_raw" and request.raw_input_contents:
        del request.raw_input_contents[
            data.draw(st.integers(0, len(request.raw_input_contents) - 1))
        ]
    elif action == "rename" and len(request.inputs) > 1:
        request.inputs[-1].name = request.inputs[0].name
    elif action == "reshape" and request.inputs:
        request.inputs[0].shape[:] = data.draw(st.lists(st.integers(-3, 70), max_size=3))
    elif action == "retype" and request.inputs:
        request.inputs[0].datatype = data.draw(st.sampled_from([*DATATYPES, "", "fp32"]))
    elif action == "typed" and request.inputs:
        request.inputs[0].contents.fp32_contents.append(1.0)
    message = request.SerializeToString()
    try:
        expected = reference(message, 64)
    except InvalidArgumentError as error:
        with pytest.raises(_core.CoreError) as info:
            _core.parse_infer_request(message, 64)
        assert info.value.code == INVALID_ARGUMENT and info.value.message == str(error)
        return
    parsed = _core.parse_infer_request(message, 64)
    if request.inputs and request.inputs[0].HasField("contents"):
        assert parsed[6] is True
        return
    assert_same(parsed, expected)


# ---- malformed bytes never crash ----


def _parse_or_refuse(message: bytes) -> None:
    """Parsed or refused with INVALID_ARGUMENT; where both parsers accept, they agree."""
    try:
        parsed = _core.parse_infer_request(message, MAX_ELEMENTS)
    except _core.CoreError as error:
        assert error.code == INVALID_ARGUMENT
        return
    try:
        request = pb.ModelInferRequest.FromString(message)
    except DecodeError:
        return  # damage inside typed contents, which only the runtime reads
    if parsed[6]:
        assert [n for n, _, _ in parsed[4]] == [t.name for t in request.inputs]
        return
    assert_same(parsed, decode_infer_request(request, MAX_ELEMENTS))


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(infer_request(), st.data())
def test_truncations_and_flips_never_crash(message: bytes, data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(message)))
    _parse_or_refuse(message[:cut])
    if message:
        flipped = bytearray(message)
        for _ in range(data.draw(st.integers(1, 4))):
            flipped[data.draw(st.integers(0, len(message) - 1))] = data.draw(st.integers(0, 255))
        _parse_or_refuse(bytes(flipped))


@given(st.binary(max_size=200))
def test_garbage_never_crashes(message: bytes) -> None:
    _parse_or_refuse(message)


@pytest.mark.parametrize(
    ("message", "fragment"),
    [
        (tag(1, 2) + varint(50) + b"short", "length-delimited field of 50 bytes"),
        (tag(1, 0) + b"\xff" * 11, "varint longer than 10 bytes"),
        (tag(1, 0) + b"\xff\xff", "truncated varint"),
        (tag(9, 7), "invalid wire type 7"),
        (b"\x00", "field number 0"),
        (tag(9, 4), "end of group outside a group"),
        (tag(9, 3) + tag(1, 0) + b"\x01", "unterminated group"),
        (length_delimited(1, b"\xc3\x28"), "not valid UTF-8"),
        (tag(9, 1) + b"1234", "truncated fixed64"),
    ],
)
def test_malformed_messages_are_refused(message: bytes, fragment: str) -> None:
    with pytest.raises(Exception):  # noqa: B017 - the runtime refuses it too
        pb.ModelInferRequest.FromString(message)
    with pytest.raises(_core.CoreError) as info:
        _core.parse_infer_request(message, 10)
    code, text_ = info.value.code, info.value.message
    assert code == INVALID_ARGUMENT
    assert text_.startswith("malformed ModelInferRequest: ") and fragment in text_


# ---- responses ----


@st.composite
def output_array(draw: st.DrawFn) -> tuple[str, Any]:
    datatype = draw(st.sampled_from(DATATYPES))
    shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
    count = math.prod(shape)
    if datatype == "BYTES":
        elements: list[Any] = draw(
            st.lists(st.one_of(st.binary(max_size=6), text), min_size=count, max_size=count)
        )
        array = np.empty(count, dtype=object)
        array[:] = elements
        return datatype, array.reshape(shape)
    dtype = DATATYPE_TO_NUMPY[datatype]
    raw = draw(st.binary(min_size=count * dtype.itemsize, max_size=count * dtype.itemsize))
    array = np.frombuffer(raw, dtype=np.uint8).copy()
    if datatype == "BOOL":
        array &= 1
    array = array.view(dtype).reshape(shape)
    if draw(st.booleans()) and array.ndim >= 2:
        array = array.T  # not C-contiguous: serialized in C order, as tobytes() does
    return datatype, array


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(text, text, text, st.dictionaries(name, output_array(), max_size=4))
def test_serialize_matches_protobuf_runtime(
    model_name: str, model_version: str, request_id: str, outputs: dict[str, tuple[str, Any]]
) -> None:
    result = InferResult(
        model_name=model_name,
        model_version=model_version,
        outputs={k: v[1] for k, v in outputs.items()},
        id=request_id,
        datatypes={k: v[0] for k, v in outputs.items()},
    )
    expected = encode_infer_response(result)
    ours = _core.serialize_infer_response(
        model_name, model_version, request_id, [(k, d, a) for k, (d, a) in outputs.items()]
    )
    assert pb.ModelInferResponse.FromString(ours) == expected
    # Same field order as the runtime's own output, so even the bytes agree.
    assert ours == expected.SerializeToString()


def test_serialize_round_trips_through_parse() -> None:
    values = np.arange(6, dtype=np.int64).reshape(2, 3) - 3
    ours = _core.serialize_infer_response("m", "2", "id", [("y", "INT64", values)])
    response = pb.ModelInferResponse.FromString(ours)
    assert list(response.outputs[0].shape) == [2, 3]
    assert np.array_equal(np.frombuffer(response.raw_output_contents[0], np.int64), values.ravel())


def test_serialize_refuses_object_arrays_for_fixed_types() -> None:
    array = np.empty(2, dtype=object)
    with pytest.raises(_core.CoreError) as info:
        _core.serialize_infer_response("m", "", "", [("y", "FP32", array)])
    assert info.value.code == INVALID_ARGUMENT and "output 'y'" in info.value.message


def test_parameter_entries_follow_the_runtime() -> None:
    """Map rules as the Python runtime applies them: the last entry for a key wins, and an entry
    that carries unknown fields is not a map entry at all (upb keeps it as an unknown field)."""
    first = length_delimited(1, b"k") + length_delimited(2, length_delimited(3, b"s"))
    second = length_delimited(1, b"k") + length_delimited(2, tag(1, 0) + b"\x01")
    with_unknown = (
        length_delimited(1, b"k") + tag(3, 0) + b"\x05" + length_delimited(2, tag(2, 0) + b"\x07")
    )
    no_value = length_delimited(1, b"n")
    message = b"".join(length_delimited(4, e) for e in (first, second, with_unknown, no_value))
    expected = reference(message).parameters
    assert expected == {"k": True, "n": None}
    assert _comparable(_core.parse_infer_request(message, 10)[3]) == _comparable(expected)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    text,
    text,
    st.dictionaries(name, output_array(), max_size=3),
    st.dictionaries(name, text, max_size=4),
)
def test_serialize_string_parameters_match_protobuf_runtime(
    model_version: str,
    request_id: str,
    outputs: dict[str, tuple[str, Any]],
    parameters: dict[str, str],
) -> None:
    """Response parameters (headrace_variant and the like) as map entries of string_param, in
    the runtime's deterministic order (keys sorted by their bytes) when given sorted."""
    ordered = sorted(parameters.items())
    result = InferResult(
        model_name="endpoint",
        model_version=model_version,
        outputs={k: v[1] for k, v in outputs.items()},
        id=request_id,
        datatypes={k: v[0] for k, v in outputs.items()},
        parameters=dict(ordered),
    )
    expected = encode_infer_response(result)
    ours = _core.serialize_infer_response(
        "endpoint",
        model_version,
        request_id,
        [(k, d, a) for k, (d, a) in outputs.items()],
        ordered,
    )
    parsed = pb.ModelInferResponse.FromString(ours)
    assert parsed == expected
    assert {k: v.string_param for k, v in parsed.parameters.items()} == parameters
    assert ours == expected.SerializeToString(deterministic=True)


def test_serialize_an_empty_parameter_key_and_value_as_the_runtime() -> None:
    """Map entries always carry key and value, even empty ones (as the runtime writes them)."""
    expected = pb.ModelInferResponse(model_name="m")
    expected.parameters[""].string_param = ""
    ours = _core.serialize_infer_response("m", "", "", [], [("", "")])
    assert ours == expected.SerializeToString()
    # The runtime's deterministic order puts an empty key last; any order parses the same.
    expected.parameters["k"].string_param = "v"
    both = _core.serialize_infer_response("m", "", "", [], [("", ""), ("k", "v")])
    assert pb.ModelInferResponse.FromString(both) == expected


def test_serialize_parameters_none_or_empty_is_no_map() -> None:
    array = np.zeros((1, 2), np.float32)
    plain = _core.serialize_infer_response("m", "1", "i", [("y", "FP32", array)])
    assert _core.serialize_infer_response("m", "1", "i", [("y", "FP32", array)], None) == plain
    assert _core.serialize_infer_response("m", "1", "i", [("y", "FP32", array)], []) == plain


def test_serialize_parameters_refuses_what_is_not_str_pairs() -> None:
    array = np.zeros((1, 2), np.float32)
    for bad in ([("k", 1)], [("k",)], [b"k"], ("k", "v")):
        with pytest.raises(TypeError):
            _core.serialize_infer_response("m", "1", "i", [("y", "FP32", array)], bad)  # type: ignore[arg-type]
