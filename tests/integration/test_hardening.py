"""Issue #10's findings through the public face: a `headrace serve` process on free ports, driven
over gRPC with hand-built ModelInfer messages.

Each hostile request of the issue is answered with the right status, and the server's memory
grows by no more than what the request itself costs to receive (gRPC's buffers and the bytes
object Python gets): its peak RSS is read from /proc after a reset. A wide
single-row request runs on a worker, not on the event loop: the loop answers while its batch
runs. A request whose deadline its model cannot meet is refused before it is parsed; one admitted
but overtaken by time leaves the queue unrun. Outcomes are decided by statuses, the server's
counters and memory, never by latency.
"""

from __future__ import annotations

import concurrent.futures
import struct
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from headrace.client import Client
from headrace.errors import DeadlineExceededError, UnavailableError
from headrace.wire import inference as pb
from helpers import onnx_models
from helpers.serve_process import ServeProcess

MIB = 1 << 20
INFER = "/inference.GRPCInferenceService/ModelInfer"
# What receiving a request may cost beyond its size: gRPC's buffers and the bytes object Python
# gets (the huge-BYTES test measures it for numbers of the same size); allocator slack on top.
COPIES_OF_THE_REQUEST = 3.5
SLACK_BYTES = 32 * MIB
WIDE_ELEMENTS = 1 << 22  # one row of this many: ~16 passes of sin over 16 MiB, far from cheap
SLOW_WIDTH = 1 << 20  # one row of this many through 64 passes of sin: tens of ms a batch


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    repo = tmp_path_factory.mktemp("hardening") / "models"
    batched = "max_batch_size = 8\n[batching]\nmax_queue_delay_us = 0\n"
    onnx_models.write_model(
        repo, "identity", onnx_models.identity("FP32", ["batch", "n"]), toml=batched
    )
    onnx_models.write_model(repo, "wide", onnx_models.sin_chain(16), toml=batched)
    onnx_models.write_model(repo, "slow", onnx_models.sin_chain(64), toml=batched)
    serving = ServeProcess(
        ["--model-repository", str(repo), "--grpc-port", "0", "--metrics-port", "0"]
    )
    yield serving
    code, _, err = serving.terminate()
    assert code == 0, err


def _identity(data: bytes) -> bytes:
    return data


def raw_infer(address: str, message: bytes, timeout_s: float = 60.0) -> tuple[str, str]:
    """(status name, details) of a ModelInfer sent as these exact bytes."""
    options = [("grpc.max_send_message_length", 512 * MIB)]
    with grpc.insecure_channel(address, options=options) as channel:
        call = channel.unary_unary(
            INFER, request_serializer=_identity, response_deserializer=_identity
        )
        try:
            call(message, timeout=timeout_s)
        except grpc.RpcError as error:
            return error.code().name, error.details() or ""
    return "OK", ""


def request(model: str, inputs: list[tuple[str, str, list[int], bytes]]) -> Any:
    message = pb.ModelInferRequest(model_name=model)
    for name, datatype, shape, raw in inputs:
        message.inputs.add(name=name, datatype=datatype, shape=shape)
        message.raw_input_contents.append(raw)
    return message


def peak_growth(server: ServeProcess, message: bytes) -> tuple[str, str, int]:
    """Send `message`; (status, details, how far the server's peak RSS rose above its RSS
    before). The server answers ServerLive afterwards: nothing is left blocked."""
    before = server.rss_bytes()
    server.reset_peak_rss()
    status, details = raw_infer(server.address, message)
    growth = server.peak_rss_bytes() - before
    with Client(server.address) as client:
        assert client.is_server_live()
    return status, details, growth


def allowed_growth(message: bytes) -> float:
    return COPIES_OF_THE_REQUEST * len(message) + SLACK_BYTES


def counters(server: ServeProcess, model: str) -> dict[str, float]:
    """The server's Prometheus counters for `model`, by family name (without headrace_)."""
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("model") == model and not sample.name.endswith("_created"):
                name = family.name.removeprefix("headrace_")
                found[name] = found.get(name, 0.0) + sample.value
    return found


def stats(client: Client, model: str) -> Any:
    return client.model_statistics(model).model_stats[0]


# --- bounded work per request ---


def test_a_zero_dimension_does_not_exempt_the_others(served: ServeProcess) -> None:
    hostile = request("identity", [("x", "FP32", [2**31, 0], b"")]).SerializeToString()
    status, details, growth = peak_growth(served, hostile)
    assert status == "INVALID_ARGUMENT"
    assert "zero dimension" in details and "request limit" in details, details
    assert growth <= SLACK_BYTES, f"peak RSS rose {growth / MIB:.1f} MiB for a 30-byte request"
    # Empty and within the limit: a legal request, answered with an empty result.
    with Client(served.address) as client:
        result = client.infer("identity", {"x": np.empty((1 << 20, 0), np.float32)})
        assert client.repository_index()  # an unrelated RPC is served meanwhile and after
    assert result.outputs["y"].shape == (1 << 20, 0)


def test_100k_parameters_are_refused_at_the_cap(served: ServeProcess) -> None:
    message = request("identity", [("x", "FP32", [1, 1], b"\0" * 4)])
    for i in range(100_000):
        message.parameters[f"p{i}"].int64_param = i
    hostile = message.SerializeToString()
    status, details, growth = peak_growth(served, hostile)
    assert status == "INVALID_ARGUMENT"
    assert details == "request has more than 256 parameters, the limit per request"
    assert growth <= allowed_growth(hostile), f"peak RSS rose {growth / MIB:.1f} MiB"


def test_10k_inputs_are_refused_at_the_cap(served: ServeProcess) -> None:
    hostile = request(
        "identity", [(f"x{i}", "FP32", [1, 1], b"\0" * 4) for i in range(10_000)]
    ).SerializeToString()
    status, details, growth = peak_growth(served, hostile)
    assert status == "INVALID_ARGUMENT"
    assert details == "request has more than 1024 inputs, the limit per request"
    assert growth <= allowed_growth(hostile), f"peak RSS rose {growth / MIB:.1f} MiB"


def test_a_huge_bytes_tensor_for_a_missing_model_is_refused_unexpanded(
    served: ServeProcess,
) -> None:
    # 11M elements of 2 bytes (64 MiB): as Python objects they would take ~8x that.
    count = (64 * MIB) // 6
    layout = np.dtype([("length", "<u4"), ("payload", "S2")])
    elements = np.zeros(count, dtype=layout)
    elements["length"] = 2
    elements["payload"] = b"ab"
    blob = elements.tobytes()
    assert len(blob) == 6 * count and blob[:6] == struct.pack("<I", 2) + b"ab"
    # What receiving 64 MiB costs by itself (gRPC's frames, its assembled buffer, the bytes
    # Python gets: about three copies), measured with FP32 contents of the same size, which the
    # server only ever views.
    numbers = request("no-such-model", [("x", "FP32", [len(blob) // 4], blob)])
    status, _, received = peak_growth(served, numbers.SerializeToString())
    assert status == "NOT_FOUND"
    hostile = request("no-such-model", [("s", "BYTES", [count], blob)]).SerializeToString()
    resident: list[int] = []
    for _ in range(5):
        status, details, growth = peak_growth(served, hostile)
        assert status == "NOT_FOUND"
        assert "no-such-model" in details
        assert growth <= received + SLACK_BYTES, (
            f"peak RSS rose {growth / MIB:.0f} MiB for a {len(hostile) / MIB:.0f} MiB request; "
            f"{received / MIB:.0f} MiB for numbers of the same size"
        )
        resident.append(served.rss_bytes())
    # What stays resident does not grow with each request (a refused request's bytes are freed
    # when it is answered, not when a collector runs): gRPC's and the allocator's caches may keep
    # about one request's buffers, not one per request.
    assert resident[-1] - resident[0] <= len(hostile) + SLACK_BYTES, [r // MIB for r in resident]


# --- the inline decision weighs the request's size, not its rows ---


def test_a_wide_single_row_runs_off_the_event_loop(served: ServeProcess) -> None:
    with Client(served.address) as client:
        # Narrow rows teach the cost model that a row is cheap (they then run inline).
        for _ in range(24):
            client.infer("wide", {"x": np.ones((1, 4), np.float32)})
        before = stats(client, "wide")
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            wide = pool.submit(
                client.infer, "wide", {"x": np.full((1, WIDE_ELEMENTS), 0.5, np.float32)}
            )
            # Run on the event loop, the batch would hold it from its dispatch to its end: no
            # answer could show it dispatched and not finished. Run on a worker, the loop
            # answers while it runs.
            deadline = time.monotonic() + 60
            while True:
                now = stats(client, "wide")
                if now.inference_stats.queue.count > before.inference_stats.queue.count:
                    break
                assert time.monotonic() < deadline, "the wide request was never dispatched"
            assert now.execution_count == before.execution_count, (
                "the event loop answered only after the wide batch had ended: it ran inline"
            )
            result = wide.result(60)
    expected = np.float32(0.5)
    for _ in range(16):
        expected = np.sin(expected)
    y = result.outputs["y"]
    assert y.shape == (1, WIDE_ELEMENTS)
    assert np.allclose(y[0, :: WIDE_ELEMENTS // 8], expected, rtol=1e-5)


# --- deadlines: refused before parsing, or dropped from the queue unrun ---


def _calibrated_batch_s(client: Client) -> float:
    """Enough one-row batches of "slow" for its cost model to predict; their mean time."""
    x = np.ones((1, SLOW_WIDTH), np.float32)
    for _ in range(5):
        client.infer("slow", {"x": x})
    batches = {b.batch_size: b for b in stats(client, "slow").batch_stats}
    one_row = batches[1].compute_infer
    return one_row.ns / one_row.count / 1e9


def _refusal_attempt(served: ServeProcess, client: Client, batch_s: float) -> bool:
    """A request whose deadline is half the model's batch time: True when it was refused on
    arrival with nothing run or queued for it; False when the attempt proves nothing (on a busy
    machine the cost model may predict under half the mean it was calibrated on, and the
    request runs, or it arrives already expired)."""
    before = stats(client, "slow")
    counted = counters(served, "slow")
    try:
        client.infer("slow", {"x": np.ones((1, SLOW_WIDTH), np.float32)}, timeout_s=batch_s / 2)
    except UnavailableError as error:
        assert "cannot answer before the request's deadline" in error.message, error.message
    except DeadlineExceededError:
        return False
    else:
        return False
    after = stats(client, "slow")
    now = counters(served, "slow")
    assert now["inference_deadline_refused_requests"] == (
        counted["inference_deadline_refused_requests"] + 1
    )
    assert after.inference_count == before.inference_count  # nothing ran for it
    assert after.inference_stats.queue.count == before.inference_stats.queue.count
    return True


def test_a_deadline_the_model_cannot_meet_is_refused_unrun(served: ServeProcess) -> None:
    with Client(served.address) as client:
        for _attempt in range(3):
            if _refusal_attempt(served, client, _calibrated_batch_s(client)):
                return
    raise AssertionError("a deadline of half the batch time was never refused on arrival")


def _doomed_attempt(served: ServeProcess, client: Client, batch_s: float) -> bool | None:
    """A request admitted behind a running batch with a deadline that batch will outlast: True
    when the scheduler dropped it unrun, None when the attempt proves nothing (it ran)."""
    x = np.ones((1, SLOW_WIDTH), np.float32)
    before = stats(client, "slow")
    counted = counters(served, "slow")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        blocker = pool.submit(client.infer, "slow", {"x": x})
        deadline = time.monotonic() + 60
        while (
            stats(client, "slow").inference_stats.queue.count == before.inference_stats.queue.count
        ):
            assert time.monotonic() < deadline, "the blocker was never dispatched"
        try:
            client.infer("slow", {"x": x}, timeout_s=1.25 * batch_s)
        except DeadlineExceededError as error:
            outcome = error.message
        else:
            outcome = ""
        blocker.result(60)
    if not outcome:
        return None
    assert "no batch could end before its deadline" in outcome, outcome
    now = counters(served, "slow")
    assert now["inference_doomed_requests"] == counted["inference_doomed_requests"] + 1
    assert now["inference_expired_requests"] == counted["inference_expired_requests"] + 1
    assert stats(client, "slow").inference_count == before.inference_count + 1  # the blocker
    return True


def test_a_queued_request_that_can_no_longer_make_it_leaves_unrun(served: ServeProcess) -> None:
    with Client(served.address) as client:
        batch_s = _calibrated_batch_s(client)
        for _attempt in range(3):
            if _doomed_attempt(served, client, batch_s):
                return
    raise AssertionError("the blocker never outlasted the queued request's deadline")
