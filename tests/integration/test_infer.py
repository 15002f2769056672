"""Inference over the wire: every datatype, raw and typed contents, BYTES edge cases, several
inputs and outputs, concurrency, and every kind of bad input (each followed by a good request)."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable

import grpc
import numpy as np
import pytest

from conftest import ALL_DATATYPES
from headrace import wire
from headrace.client import Client
from headrace.datatypes import DATATYPE_TO_NUMPY, TYPED_FIELD
from headrace.wire import inference as pb


@pytest.fixture()
def client(server):  # type: ignore[no-untyped-def]
    with Client(server.address) as c:
        yield c


@pytest.fixture()
def stub(server):  # type: ignore[no-untyped-def]
    with grpc.insecure_channel(server.address) as channel:
        yield wire.Stub(channel, wire.INFERENCE_SERVICE)


def sample(datatype: str, rows: int = 2) -> np.ndarray:
    rng = np.random.default_rng(abs(hash(datatype)) % 1000)
    if datatype == "BYTES":
        values = [
            b"",
            "h\u00e9llo \u4e16\u754c".encode(),
            b"a\x00b\x00",
            b"\x00",
            b"x" * 300,
            b"plain",
        ]
        return np.array(values, dtype=object).reshape(rows, 3)
    if datatype == "BOOL":
        return rng.integers(0, 2, (rows, 3)).astype(bool)
    dtype = DATATYPE_TO_NUMPY[datatype]
    if datatype == "BF16":
        floats = rng.standard_normal((rows, 3)).astype(np.float32)
        return (floats.view(np.uint32) >> 16).astype(np.uint16)
    if dtype.kind == "f":
        return rng.standard_normal((rows, 3)).astype(dtype)
    info = np.iinfo(dtype)
    extremes = np.array([info.min, info.max, 0], dtype=dtype)
    values = rng.integers(info.min, info.max, (rows, 3), dtype=dtype, endpoint=True)
    values[0] = extremes
    return values


@pytest.mark.parametrize("datatype", ALL_DATATYPES)
def test_identity_round_trip_raw(client: Client, datatype: str) -> None:
    x = sample(datatype)
    result = client.infer(f"identity_{datatype.lower()}", {"x": x}, datatypes={"x": datatype})
    assert result.datatypes["y"] == datatype
    y = result.outputs["y"]
    assert y.shape == x.shape
    if datatype == "BYTES":
        assert y.tolist() == x.tolist()
    else:
        assert y.dtype == x.dtype
        assert np.array_equal(y, x)


@pytest.mark.parametrize("datatype", [d for d in ALL_DATATYPES if d in TYPED_FIELD])
def test_identity_round_trip_typed(stub, datatype: str) -> None:  # type: ignore[no-untyped-def]
    x = sample(datatype)
    request = pb.ModelInferRequest(model_name=f"identity_{datatype.lower()}")
    tensor = request.inputs.add(name="x", datatype=datatype, shape=list(x.shape))
    getattr(tensor.contents, TYPED_FIELD[datatype]).extend(x.ravel().tolist())
    response = stub.ModelInfer(request)
    assert response.outputs[0].datatype == datatype
    raw = response.raw_output_contents[0]
    if datatype == "BYTES":
        from headrace.client.codec import decode_raw_output

        assert decode_raw_output("BYTES", list(x.shape), raw).tolist() == x.tolist()
    else:
        assert np.array_equal(np.frombuffer(raw, x.dtype).reshape(x.shape), x)


def test_fp16_raw_bits_survive(client: Client) -> None:
    special = np.array([[0.0, -0.0, np.inf], [-np.inf, 65504.0, 6e-8]], dtype=np.float16)
    y = client.infer("identity_fp16", {"x": special}).outputs["y"]
    assert y.view(np.uint16).tolist() == special.view(np.uint16).tolist()


def test_two_inputs_asking_for_one_output(client: Client) -> None:
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    b = np.full((2, 4), 3, np.float32)
    only_product = client.infer("two_in_two_out", {"a": a, "b": b}, outputs=["product"])
    assert list(only_product.outputs) == ["product"]
    assert np.array_equal(only_product.outputs["product"], a * b)
    both = client.infer("two_in_two_out", {"a": a, "b": b})
    assert list(both.outputs) == ["sum", "product"]
    assert np.array_equal(both.outputs["sum"], a + b)


def test_64_concurrent_requests_each_get_their_own_answer(client: Client) -> None:
    def call(i: int) -> tuple[int, np.ndarray, np.ndarray]:
        a = np.full((1 + i % 3, 4), i, np.float32)
        b = np.arange(4, dtype=np.float32) + i
        b = np.broadcast_to(b, a.shape).copy()
        result = client.infer("two_in_two_out", {"a": a, "b": b}, request_id=str(i))
        assert result.id == str(i)
        return i, result.outputs["sum"], a + b

    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        results = list(pool.map(call, range(64)))
    assert len(results) == 64
    for _, got, expected in results:
        assert np.array_equal(got, expected)


def test_model_runtime_error_is_internal_with_its_message(stub, client: Client) -> None:  # type: ignore[no-untyped-def]
    request = pb.ModelInferRequest(model_name="reshaper")
    request.inputs.add(name="x", datatype="FP32", shape=[6])
    request.inputs.add(name="shape", datatype="INT64", shape=[2])
    request.raw_input_contents.append(np.arange(6, dtype=np.float32).tobytes())
    request.raw_input_contents.append(np.array([4, 4], np.int64).tobytes())
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request)
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert "Reshape" in info.value.details()
    ok = client.infer("reshaper", {"x": np.arange(6, dtype=np.float32), "shape": np.array([2, 3])})
    assert ok.outputs["y"].shape == (2, 3)


# -- bad input: each case is a request builder and what the error must say -------------------


def _request(model: str = "two_in_two_out") -> pb.ModelInferRequest:
    return pb.ModelInferRequest(model_name=model)


def _good_pair(request: pb.ModelInferRequest, rows: int = 1) -> pb.ModelInferRequest:
    for name in ("a", "b"):
        request.inputs.add(name=name, datatype="FP32", shape=[rows, 4])
        request.raw_input_contents.append(np.ones((rows, 4), np.float32).tobytes())
    return request


def unknown_model() -> pb.ModelInferRequest:
    return _good_pair(_request("no_such_model"))


def unknown_version() -> pb.ModelInferRequest:
    request = _good_pair(_request())
    request.model_version = "7"
    return request


def wrong_datatype() -> pb.ModelInferRequest:
    request = _request()
    request.inputs.add(name="a", datatype="FP64", shape=[1, 4])
    request.raw_input_contents.append(np.ones((1, 4), np.float64).tobytes())
    request.inputs.add(name="b", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.ones((1, 4), np.float32).tobytes())
    return request


def wrong_rank() -> pb.ModelInferRequest:
    request = _request()
    request.inputs.add(name="a", datatype="FP32", shape=[4])
    request.raw_input_contents.append(np.ones(4, np.float32).tobytes())
    request.inputs.add(name="b", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.ones((1, 4), np.float32).tobytes())
    return request


def wrong_dims() -> pb.ModelInferRequest:
    request = _request()
    request.inputs.add(name="a", datatype="FP32", shape=[1, 5])
    request.raw_input_contents.append(np.ones((1, 5), np.float32).tobytes())
    request.inputs.add(name="b", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.ones((1, 4), np.float32).tobytes())
    return request


def raw_size_mismatch() -> pb.ModelInferRequest:
    request = _good_pair(_request())
    request.raw_input_contents[0] = request.raw_input_contents[0][:-1]
    return request


def raw_and_typed_mixed() -> pb.ModelInferRequest:
    request = _good_pair(_request())
    request.inputs[1].contents.fp32_contents.extend([1.0] * 4)
    return request


def too_few_raw_entries() -> pb.ModelInferRequest:
    request = _good_pair(_request())
    del request.raw_input_contents[1]
    return request


def too_many_raw_entries() -> pb.ModelInferRequest:
    request = _good_pair(_request())
    request.raw_input_contents.append(b"\x00" * 16)
    return request


def negative_dim() -> pb.ModelInferRequest:
    request = _good_pair(_request())
    request.inputs[0].shape[0] = -1
    return request


def overflowing_dims() -> pb.ModelInferRequest:
    request = _good_pair(_request())
    del request.inputs[0].shape[:]
    request.inputs[0].shape.extend([2**62, 2**62])
    return request


def dims_over_request_limit() -> pb.ModelInferRequest:
    # 2^21 elements > the server's max_request_elements of 2^20; nothing of that size exists.
    request = _good_pair(_request())
    del request.inputs[0].shape[:]
    request.inputs[0].shape.extend([2**19, 4])
    return request


def typed_dims_over_request_limit() -> pb.ModelInferRequest:
    request = _request()
    for name in ("a", "b"):
        tensor = request.inputs.add(name=name, datatype="FP32", shape=[2**40, 4])
        tensor.contents.fp32_contents.extend([1.0] * 4)
    return request


def unknown_datatype() -> pb.ModelInferRequest:
    request = _good_pair(_request())
    request.inputs[0].datatype = "FLOAT"
    return request


def bytes_length_past_end() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="identity_bytes")
    request.inputs.add(name="x", datatype="BYTES", shape=[1, 3])
    request.raw_input_contents.append(
        b"\x01\x00\x00\x00a" + b"\x00\x00\x00\x00" + b"\xff\x00\x00\x00ab"
    )
    return request


def bytes_count_mismatch() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="identity_bytes")
    request.inputs.add(name="x", datatype="BYTES", shape=[1, 3])
    request.raw_input_contents.append(b"\x01\x00\x00\x00a" * 4)
    return request


def bytes_not_utf8() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="identity_bytes")
    request.inputs.add(name="x", datatype="BYTES", shape=[1, 3])
    request.raw_input_contents.append(b"\x01\x00\x00\x00a" * 2 + b"\x02\x00\x00\x00\xff\xfe")
    return request


def missing_input() -> pb.ModelInferRequest:
    request = _good_pair(_request())
    del request.inputs[1]
    del request.raw_input_contents[1]
    return request


def duplicate_input() -> pb.ModelInferRequest:
    request = _good_pair(_request())
    request.inputs[1].name = "a"
    return request


def unknown_input() -> pb.ModelInferRequest:
    request = _good_pair(_request())
    request.inputs.add(name="c", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.ones((1, 4), np.float32).tobytes())
    return request


def unknown_output() -> pb.ModelInferRequest:
    request = _good_pair(_request())
    request.outputs.add(name="quotient")
    return request


def fp16_typed() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="identity_fp16")
    tensor = request.inputs.add(name="x", datatype="FP16", shape=[1, 3])
    tensor.contents.fp32_contents.extend([1.0, 2.0, 3.0])
    return request


def typed_out_of_range() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="identity_int8")
    tensor = request.inputs.add(name="x", datatype="INT8", shape=[1, 3])
    tensor.contents.int_contents.extend([1, 2, 300])
    return request


def batch_dims_disagree() -> pb.ModelInferRequest:
    request = _request()
    for name, rows in (("a", 1), ("b", 2)):
        request.inputs.add(name=name, datatype="FP32", shape=[rows, 4])
        request.raw_input_contents.append(np.ones((rows, 4), np.float32).tobytes())
    return request


BAD_REQUESTS: list[tuple[Callable[[], pb.ModelInferRequest], grpc.StatusCode, str]] = [
    (unknown_model, grpc.StatusCode.NOT_FOUND, "no_such_model"),
    (unknown_version, grpc.StatusCode.NOT_FOUND, "version '7'"),
    (wrong_datatype, grpc.StatusCode.INVALID_ARGUMENT, "input 'a': datatype FP64"),
    (wrong_rank, grpc.StatusCode.INVALID_ARGUMENT, "input 'a': shape [4]"),
    (wrong_dims, grpc.StatusCode.INVALID_ARGUMENT, "input 'a': shape [1, 5]"),
    (raw_size_mismatch, grpc.StatusCode.INVALID_ARGUMENT, "input 'a': raw content has 15 bytes"),
    (raw_and_typed_mixed, grpc.StatusCode.INVALID_ARGUMENT, "input 'b': typed contents and raw"),
    (too_few_raw_entries, grpc.StatusCode.INVALID_ARGUMENT, "2 inputs but 1 raw_input_contents"),
    (too_many_raw_entries, grpc.StatusCode.INVALID_ARGUMENT, "2 inputs but 3 raw_input_contents"),
    (negative_dim, grpc.StatusCode.INVALID_ARGUMENT, "input 'a': dimension 0 is negative"),
    (overflowing_dims, grpc.StatusCode.INVALID_ARGUMENT, "input 'a': shape has more than"),
    (dims_over_request_limit, grpc.StatusCode.INVALID_ARGUMENT, "input 'a': shape has more than"),
    (typed_dims_over_request_limit, grpc.StatusCode.INVALID_ARGUMENT, "input 'a': shape has more"),
    (unknown_datatype, grpc.StatusCode.INVALID_ARGUMENT, "input 'a': unknown datatype 'FLOAT'"),
    (bytes_length_past_end, grpc.StatusCode.INVALID_ARGUMENT, "input 'x': BYTES element 2"),
    (
        bytes_count_mismatch,
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'x': BYTES content has 5 bytes after",
    ),
    (
        bytes_not_utf8,
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'x': BYTES element 2 is not valid UTF-8",
    ),
    (missing_input, grpc.StatusCode.INVALID_ARGUMENT, "missing input 'b'"),
    (duplicate_input, grpc.StatusCode.INVALID_ARGUMENT, "input 'a' appears more than once"),
    (unknown_input, grpc.StatusCode.INVALID_ARGUMENT, "unknown input 'c'"),
    (unknown_output, grpc.StatusCode.INVALID_ARGUMENT, "unknown requested output 'quotient'"),
    (fp16_typed, grpc.StatusCode.INVALID_ARGUMENT, "input 'x': datatype FP16 must be sent in raw"),
    (typed_out_of_range, grpc.StatusCode.INVALID_ARGUMENT, "input 'x': a value in int_contents"),
    (batch_dims_disagree, grpc.StatusCode.INVALID_ARGUMENT, "input 'b': batch dimension 2"),
]


@pytest.mark.parametrize(
    ("build", "code", "message"), BAD_REQUESTS, ids=[b[0].__name__ for b in BAD_REQUESTS]
)
def test_bad_input_is_refused_and_the_server_keeps_serving(
    stub,
    build: Callable[[], pb.ModelInferRequest],
    code: grpc.StatusCode,
    message: str,  # type: ignore[no-untyped-def]
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(build())
    assert info.value.code() == code, info.value.details()
    assert message in info.value.details()
    good = stub.ModelInfer(_good_pair(_request(), rows=2))
    total = np.frombuffer(good.raw_output_contents[0], np.float32)
    assert np.array_equal(total, np.full(8, 2.0, np.float32))
