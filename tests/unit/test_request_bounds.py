"""Bounded work per request, at the core: what a request merely declares (a shape with a zero
dim, 100k parameters, 10k inputs, a huge BYTES tensor) is refused or answered without work or
allocation in proportion to it.

Allocation is measured where it is observable: Python objects through tracemalloc, C++ buffers
through the peak RSS of a fresh subprocess, parse work through the parser's own step counter.
Nothing here measures time.
"""

from __future__ import annotations

import select
import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headrace import _core
from headrace.backends.onnx import native_library
from headrace.errors import InvalidArgumentError
from headrace.wire import inference as pb
from helpers.onnx_models import identity

INVALID_ARGUMENT = 3
MAX_ELEMENTS = 1 << 24
MIB = 1 << 20


def request_bytes(
    inputs: list[tuple[str, str, list[int], bytes]],
    parameters: dict[str, int] | None = None,
    outputs: list[str] | None = None,
) -> bytes:
    request = pb.ModelInferRequest(model_name="m")
    for name, datatype, shape, raw in inputs:
        request.inputs.add(name=name, datatype=datatype, shape=shape)
        request.raw_input_contents.append(raw)
    for key, value in (parameters or {}).items():
        request.parameters[key].int64_param = value
    for name in outputs or []:
        request.outputs.add(name=name)
    return request.SerializeToString()


def refusal(message: bytes, max_elements: int = MAX_ELEMENTS, **kwargs: Any) -> str:
    with pytest.raises(InvalidArgumentError) as info:
        _core.parse_infer_request(message, max_elements, **kwargs)
    code, text = info.value.code, info.value.message
    assert code == INVALID_ARGUMENT, text
    return str(text)


def bytes_blob(elements: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


# --- shapes ---


@pytest.mark.parametrize(
    "shape",
    [[2**31, 0], [0, 2**31], [2**20, 2**20, 0], [0, 2**40, 3], [2**62, 0, 2**62]],
)
def test_a_zero_dim_does_not_exempt_the_other_dims(shape: list[int]) -> None:
    # [2^31, 0] used to parse as an empty array, whose rows the batcher then walked.
    text = refusal(request_bytes([("x", "FP32", shape, b"")]))
    assert text == (
        "input 'x': shape is empty (a zero dimension) but its other dimensions multiply to more "
        f"than {MAX_ELEMENTS}, the request limit"
    )


def test_an_empty_tensor_within_the_limit_is_an_empty_view() -> None:
    parsed = _core.parse_infer_request(request_bytes([("x", "FP32", [4096, 0], b"")]), 1 << 12)
    array = parsed[4][0][2]
    assert isinstance(array, np.ndarray) and array.shape == (4096, 0)


def test_the_rank_is_capped() -> None:
    assert refusal(request_bytes([("x", "FP32", [1] * 33, b"\0" * 4)])) == (
        "input 'x': shape has 33 dimensions; at most 32 are supported"
    )
    # A packed shape of 100k dims is counted, not stored.
    message = request_bytes([("x", "FP32", [1] * 100_000, b"\0" * 4)])
    steps, code, text = _core.testing.infer_request_parse_steps(message, MAX_ELEMENTS)
    assert (code, text) == (
        INVALID_ARGUMENT,
        "input 'x': shape has 100000 dimensions; at most 32 are supported",
    )
    assert steps <= len(message)
    assert _core.checked_element_count([1] * 32, 1, "s") == 1
    with pytest.raises(InvalidArgumentError, match="at most 32"):
        _core.checked_element_count([1] * 33, 1, "s")


# --- counts ---


def test_parameters_are_capped() -> None:
    many = {f"p{i}": i for i in range(100_000)}
    message = request_bytes([("x", "FP32", [1], b"\0" * 4)], parameters=many)
    assert refusal(message) == "request has more than 256 parameters, the limit per request"
    steps, code, _ = _core.testing.infer_request_parse_steps(message, MAX_ELEMENTS)
    # Refused at the 257th entry, not after reading (or indexing) 100k of them.
    assert code == INVALID_ARGUMENT and steps < 257 * 8


def test_inputs_outputs_and_raw_contents_are_capped() -> None:
    inputs = [(f"x{i}", "FP32", [1], b"\0" * 4) for i in range(10_000)]
    assert refusal(request_bytes(inputs)) == (
        "request has more than 1024 inputs, the limit per request"
    )
    outputs = [f"y{i}" for i in range(10_000)]
    assert refusal(request_bytes(inputs[:1], outputs=outputs)) == (
        "request asks for more than 1024 outputs, the limit per request"
    )
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="FP32", shape=[1])
    request.raw_input_contents.extend([b"\0" * 4] * 10_000)
    assert refusal(request.SerializeToString()) == (
        "request has more than 1024 raw_input_contents entries, the limit per request"
    )


@pytest.mark.parametrize("count", [16, 256, 1024])
def test_parse_work_is_linear_in_the_message(count: int) -> None:
    # Distinct names and keys at the caps: each costs one hash lookup, not a scan of the earlier
    # ones (the old duplicate checks compared every pair).
    inputs = [(f"input_{i}", "FP32", [1, 2], b"\0" * 8) for i in range(count)]
    parameters = {f"key_{i}": i for i in range(min(count, 256))}
    message = request_bytes(inputs, parameters=parameters)
    steps, code, text = _core.testing.infer_request_parse_steps(message, MAX_ELEMENTS)
    assert code == 0, text
    assert steps <= len(message) // 2
    duplicated = request_bytes([*inputs[:-1], inputs[0]])
    assert refusal(duplicated) == "input 'input_0' appears more than once"


def test_repeated_parameter_keys_keep_the_last_value_in_first_seen_order() -> None:
    entries = [("a", 1), ("b", 2), ("a", 3)]
    message = request_bytes([("x", "FP32", [1], b"\0" * 4)])
    for key, value in entries:
        entry = pb.ModelInferRequest(parameters={key: pb.InferParameter(int64_param=value)})
        message += entry.SerializeToString()
    parameters = _core.parse_infer_request(message, MAX_ELEMENTS)[3]
    assert list(parameters.items()) == [("a", 3), ("b", 2)]
    assert dict(pb.ModelInferRequest.FromString(message).parameters) == {
        "a": pb.InferParameter(int64_param=3),
        "b": pb.InferParameter(int64_param=2),
    }


# --- BYTES stays in wire form until asked ---

HUGE_COUNT = 1 << 20  # empty elements: 4 MiB of length prefixes, 1M Python objects if expanded


def huge_bytes_request() -> bytes:
    return request_bytes([("s", "BYTES", [HUGE_COUNT], b"\0" * (4 * HUGE_COUNT))])


def python_peak_bytes(message: bytes, **kwargs: Any) -> int:
    tracemalloc.start()
    try:
        parsed = _core.parse_infer_request(message, MAX_ELEMENTS, **kwargs)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del parsed
    return peak


def test_a_huge_bytes_input_is_not_expanded_by_the_parse() -> None:
    message = huge_bytes_request()
    lazy_peak = python_peak_bytes(message, expand_bytes=False)
    assert lazy_peak < 64 * 1024, lazy_peak  # a few objects, nothing per element
    # What it saves: expanding makes one object per element.
    assert python_peak_bytes(message, expand_bytes=True) > 8 * HUGE_COUNT
    steps, code, _ = _core.testing.infer_request_parse_steps(
        message, MAX_ELEMENTS, validate_bytes=False
    )
    assert code == 0 and steps < 32  # the 1M length prefixes are not walked


def test_a_bytes_tensor_expands_when_asked() -> None:
    elements = [b"", b"ab", "é".encode(), b"\0x"]
    message = request_bytes([("s", "BYTES", [2, 2], bytes_blob(elements))])
    (_, datatype, lazy) = _core.parse_infer_request(message, 16, expand_bytes=False)[4][0]
    assert datatype == "BYTES" and isinstance(lazy, _core.BytesTensor)
    assert (lazy.name, lazy.datatype, lazy.shape, lazy.ndim, lazy.size) == (
        "s",
        "BYTES",
        (2, 2),
        2,
        4,
    )
    assert lazy.nbytes == len(bytes_blob(elements))
    expanded = lazy.to_numpy()
    assert expanded.dtype == object and expanded.shape == (2, 2)
    assert expanded.ravel().tolist() == elements
    eager = _core.parse_infer_request(message, 16)[4][0][2]
    assert isinstance(eager, np.ndarray) and eager.tolist() == expanded.tolist()


def test_a_bad_bytes_layout_is_refused_when_expanded_with_the_parse_message() -> None:
    blob = bytes_blob([b"abc", b"de"])[:-1]  # the last payload is one byte short
    message = request_bytes([("s", "BYTES", [2], blob)])
    eager_text = refusal(message)
    assert eager_text == "input 's': BYTES element 1 declares 2 bytes but only 1 remain"
    lazy = _core.parse_infer_request(message, 16, expand_bytes=False)[4][0][2]
    assert isinstance(lazy, _core.BytesTensor)
    with pytest.raises(InvalidArgumentError) as info:
        lazy.to_numpy()
    assert (info.value.code, info.value.message) == (INVALID_ARGUMENT, eager_text)
    # A count the bytes cannot hold is refused by the parse itself: nothing downstream may
    # size anything by it.
    assert refusal(request_bytes([("s", "BYTES", [1000], b"\0" * 8)]), expand_bytes=False) == (
        "input 's': BYTES content of 8 bytes cannot hold 1000 elements"
    )


def test_a_batcher_takes_a_bytes_tensor_without_expanding_it() -> None:
    elements = [b"x", b"", b"yz"]
    seen: list[Any] = []

    def runner(inputs: list[Any]) -> list[Any]:
        seen.append(inputs[0].tolist())
        return list(inputs)

    queue = _core.CompletionQueue()
    batcher = _core.Batcher("m", _core.BatcherConfig(max_batch_size=8), runner, queue)
    try:
        good = _core.parse_infer_request(
            request_bytes([("s", "BYTES", [3, 1], bytes_blob(elements))]), 16, expand_bytes=False
        )[4][0][2]
        assert isinstance(good, _core.BytesTensor)
        ticket = batcher.submit([good])
        assert select.select([queue.fd], [], [], 10)[0]
        ((done, code, message, outputs),) = queue.drain()
        assert (done, code) == (ticket, 0), message
        assert outputs is not None and outputs[0].ravel().tolist() == elements
        assert seen == [[[b"x"], [b""], [b"yz"]]]
        bad = _core.parse_infer_request(
            request_bytes([("s", "BYTES", [2, 1], bytes_blob([b"ab", b"c"])[:-1])]),
            16,
            expand_bytes=False,
        )[4][0][2]
        with pytest.raises(InvalidArgumentError) as info:
            batcher.submit([bad])
        assert info.value.code == INVALID_ARGUMENT and "BYTES element 1" in info.value.message
    finally:
        batcher.shutdown(drain=False)


# --- the batcher sizes nothing by declared rows ---

EMPTY_ROWS_SCRIPT = """
import resource, select, sys
import numpy as np
from headrace import _core

rows = 1 << 26
queue = _core.CompletionQueue()
config = _core.BatcherConfig(max_batch_size=rows, max_queue_delay_us=200_000)
batcher = _core.Batcher("m", config, lambda inputs: [inputs[0], inputs[0][:, :0]], queue)
before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
# Two requests batched together: assembly, runner and scatter all see 2^27 empty rows.
tickets = [batcher.submit([np.empty((rows // 2, 0), np.float32)]) for _ in range(2)]
done = {}
while len(done) < 2:
    assert select.select([queue.fd], [], [], 30)[0], "no completion"
    for ticket, code, message, outputs in queue.drain():
        assert code == 0, message
        assert [o.shape for o in outputs] == [(rows // 2, 0), (rows // 2, 0)]
        done[ticket] = outputs
assert sorted(done) == sorted(tickets)
assert list(batcher.stats()["batch_sizes"]) == [rows]  # one batch of both
after_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
batcher.shutdown(drain=False)
print(after_kib - before_kib)
"""


def test_empty_rows_cost_the_batcher_nothing_per_row() -> None:
    # 2^27 rows of nothing used to cost a table of 2^27 offsets (1 GiB) at submit and again at
    # scatter; the peak RSS of a fresh process shows whether anything is sized by rows now.
    result = subprocess.run(
        [sys.executable, "-c", EMPTY_ROWS_SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    growth_kib = int(result.stdout.strip())
    assert growth_kib < 32 * 1024, f"peak RSS grew by {growth_kib} KiB"


def test_the_batcher_refuses_shapes_past_its_extent() -> None:
    queue = _core.CompletionQueue()
    batcher = _core.Batcher("m", _core.BatcherConfig(), lambda inputs: list(inputs), queue)
    try:
        # numpy allows (2^40, 0) and (1, 2^40, 0); what the batcher multiplies stays below 2^60.
        assert batcher.submit([np.empty((2**40, 0), np.uint8)]) > 0
        with pytest.raises(InvalidArgumentError) as info:
            batcher.submit([np.empty((2**31, 2**31, 0), np.uint8)])
        assert (info.value.code, info.value.message) == (
            INVALID_ARGUMENT,
            f"input 0: shape has more than {2**60} index positions",
        )
    finally:
        batcher.shutdown(drain=False)


# --- the inline decision weighs the request's own size ---


def test_a_wide_single_row_never_runs_in_the_submitting_thread(tmp_path: Path) -> None:
    library = native_library()
    assert library is not None, "onnxruntime/capi/libonnxruntime.so* not found"
    path = tmp_path / "identity.onnx"
    onnx.save(identity("FP32", ["batch", "width"]), str(path))
    model = _core.OrtModel(library, str(path), 1, 1)
    queue = _core.CompletionQueue()
    batcher = _core.Batcher(
        "m", _core.BatcherConfig(max_batch_size=8), model.runner(["x"], ["y"]), queue
    )

    def run(x: np.ndarray[Any, Any]) -> bool:
        ticket, here = batcher.submit_or_run([x])
        if not here:
            assert select.select([queue.fd], [], [], 30)[0], "no completion"
        ((done, code, message, outputs),) = queue.drain()
        assert (done, code) == (ticket, 0), message
        assert outputs is not None and outputs[0].shape == x.shape
        return bool(here)

    try:
        narrow = np.ones((1, 4), np.float32)
        ran_here = [run(narrow) for _ in range(40)]
        assert all(ran_here[20:]), "cheap narrow rows should run inline once the cost is fitted"
        # One row, as the narrow ones, but 2^22 elements: its bytes predict its cost.
        assert not run(np.ones((1, 1 << 22), np.float32))
    finally:
        batcher.shutdown(drain=False)


# --- UTF-8 of wire BYTES, checked by the core without objects ---


@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(max_size=12), max_size=8))
def test_the_core_utf8_check_agrees_with_python(elements: list[bytes]) -> None:
    message = request_bytes([("s", "BYTES", [len(elements)], bytes_blob(elements))])
    lazy = _core.parse_infer_request(message, 64, expand_bytes=False)[4][0][2]
    assert isinstance(lazy, _core.BytesTensor)
    expected = None
    for index, element in enumerate(elements):
        try:
            element.decode("utf-8")
        except UnicodeDecodeError:
            expected = index
            break
    assert lazy.first_non_utf8_element() == expected


@pytest.mark.parametrize(
    "element",
    [
        b"\xc0\xaf",  # overlong '/'
        b"\xe0\x80\xaf",  # overlong, 3 bytes
        b"\xed\xa0\x80",  # a surrogate
        b"\xf4\x90\x80\x80",  # past U+10FFFF
        b"\xe2\x82",  # truncated
        b"\x80",  # a lone continuation byte
    ],
)
def test_the_core_utf8_check_refuses_what_python_refuses(element: bytes) -> None:
    message = request_bytes([("s", "BYTES", [2], bytes_blob(["ok €".encode(), element]))])
    lazy = _core.parse_infer_request(message, 64, expand_bytes=False)[4][0][2]
    assert isinstance(lazy, _core.BytesTensor)
    assert lazy.first_non_utf8_element() == 1
    with pytest.raises(UnicodeDecodeError):
        element.decode("utf-8")


def test_the_utf8_check_validates_the_layout_first() -> None:
    blob = bytes_blob([b"abc", b"de"])[:-1]
    lazy = _core.parse_infer_request(
        request_bytes([("s", "BYTES", [2], blob)]), 16, expand_bytes=False
    )[4][0][2]
    assert isinstance(lazy, _core.BytesTensor)
    with pytest.raises(InvalidArgumentError, match="BYTES element 1 declares 2 bytes"):
        lazy.first_non_utf8_element()


# --- the model a request names, read before anything else ---


def test_the_target_is_peeked_without_parsing() -> None:
    message = pb.ModelInferRequest(model_name="m", model_version="3", id="r")
    message.inputs.add(name="x", datatype="FP32", shape=[2**31, 0])  # refused by a parse
    message.raw_input_contents.append(b"")
    for i in range(300):  # past the parameter cap: refused by a parse
        message.parameters[f"p{i}"].int64_param = i
    data = message.SerializeToString()
    assert _core.peek_infer_target(data) == ("m", "3")
    with pytest.raises(InvalidArgumentError):
        _core.parse_infer_request(data, MAX_ELEMENTS)
    # As for any proto3 string field, the last occurrence wins.
    repeated = data + pb.ModelInferRequest(model_name="n").SerializeToString()
    assert _core.peek_infer_target(repeated) == ("n", "3")
    assert _core.peek_infer_target(b"") == ("", "")
    assert _core.peek_infer_target(b"\x0a\x05ab") is None  # truncated
    assert _core.peek_infer_target(b"\x0a\x02\xff\xfe") is None  # model_name not UTF-8
