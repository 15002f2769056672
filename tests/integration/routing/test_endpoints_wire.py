"""Endpoints over gRPC, driven by tritonclient (Triton's own client, unchanged) and by headrace's
admin and feedback stubs: endpoints answer as their variants with `headrace_variant` set, a
blue-green switch under 16 callers fails no request, a slow shadow does not hold the primary,
feedback by request id moves a bandit, and bad feedback gets a clear status."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

import grpc
import numpy as np

from conftest import RunningServer
from headrace.engine import Engine
from headrace.wire import admin as pb
from integration.routing.routing_wire import DRIVER, X, drive


def engine_of(server: RunningServer) -> Engine:
    engine: Engine = server.server.engine  # type: ignore[attr-defined]
    return engine


def direct(server: RunningServer, model: str) -> list[list[float]]:
    version = engine_of(server).get_version(model)
    y: list[list[float]] = version.backend.run({"x": X}, ["y"])[0].tolist()
    return y


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    """Poll state until ``condition`` holds (the bound only stops a broken test from hanging)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_an_endpoint_answers_as_its_variants(routing_server: RunningServer) -> None:
    expected = {"va": direct(routing_server, "a"), "vb": direct(routing_server, "b")}
    report = drive(routing_server.address, "answers", model="split", n=40, ids=True)
    variants = set()
    for index, answer in enumerate(report["answers"]):
        assert answer["id"] == f"r{index}"
        assert (answer["model_name"], answer["model_version"]) == ("split", "1")
        variants.add(answer["variant"])
        np.testing.assert_allclose(answer["y"], expected[answer["variant"]], rtol=1e-6)
    assert variants == {"va", "vb"}  # 2^-39 to miss one at 50/50
    # An endpoint describes itself as its first variant, under its own name.
    a = drive(routing_server.address, "answers", model="a", n=1)
    assert report["metadata"]["name"] == "split" and report["metadata"]["versions"] == []
    assert report["metadata"]["inputs"] == a["metadata"]["inputs"]
    assert report["metadata"]["outputs"] == a["metadata"]["outputs"]
    assert report["config"] == {"name": "split", "max_batch_size": a["config"]["max_batch_size"]}
    assert report["ready"] is True
    # A plain model is an endpoint of one variant: its own name.
    assert a["answers"][0]["variant"] == "a" and a["answers"][0]["id"]


def test_stream_answers_carry_the_variant_and_an_assigned_id(
    routing_server: RunningServer,
) -> None:
    report = drive(
        routing_server.address,
        "answers",
        model="split",
        n=20,
        stream=True,
        parameters={"headrace_variant": "vb"},
    )
    answers = report["answers"]
    assert all("error" not in a for a in answers), answers
    assert {a["variant"] for a in answers} == {"vb"}  # pinned by the request parameter
    ids = [a["id"] for a in answers]
    assert all(ids) and len(set(ids)) == 20  # assigned, one per request
    expected = direct(routing_server, "b")
    for answer in answers:
        np.testing.assert_allclose(answer["y"], expected, rtol=1e-6)


def test_blue_green_switch_under_16_callers_fails_nothing(
    routing_server: RunningServer, admin_stub: Any
) -> None:
    driver = subprocess.Popen(
        [
            sys.executable,
            str(DRIVER),
            routing_server.address,
            "callers",
            '{"model": "bg", "callers": 16, "before": 5, "after": 5, "wanted": "green"}',
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert driver.stdin is not None and driver.stdout is not None
    try:
        assert driver.stdout.readline().strip() == "ready"
        answer = admin_stub.Switch(pb.SwitchRequest(endpoint="bg", variant="green"))
        assert answer.active == "green" and answer.event.kind == "switch"
        driver.stdin.write("switched\n")
        driver.stdin.flush()
        out, err = driver.communicate(timeout=240)
    finally:
        if driver.poll() is None:
            driver.kill()
    report = json.loads(out.strip().splitlines()[-1])
    assert report["done"], err[-2000:]
    assert report["failures"] == []
    for variants, mark in zip(report["variants"], report["marks"], strict=True):
        assert set(variants[:mark]) <= {"blue", "green"} and variants[0] == "blue"
        # Once a caller is answered by green, every later request of it was routed after the
        # switch: none goes back to blue.
        first_green = variants.index("green")
        assert first_green <= mark + 1  # at most its request in flight at the switch was blue
        assert set(variants[first_green:]) == {"green"}
    rollback = admin_stub.Rollback(pb.RollbackRequest(endpoint="bg"))
    assert rollback.event.kind == "rollback" and rollback.event.variant == "blue"
    assert drive(routing_server.address, "answers", model="bg", n=1)["answers"][0]["variant"] == (
        "blue"
    )


def test_copies_are_dropped_not_queued_while_the_primary_is_saturated(
    routing_server: RunningServer, admin_stub: Any
) -> None:
    engine = engine_of(routing_server)
    routing = engine.routing
    model = engine.models.get("a")
    assert model is not None and model.latest is not None
    lease = model.latest.lease

    def shadow() -> Any:
        return routing.endpoints.report("shadowed").shadows[0]

    before = shadow()
    busy_before = before.dropped_by.get("primary_busy", 0)
    # A client request in flight on the primary's one instance, as a held request holds it:
    # the state the mirror's admission reads.
    assert lease.acquire()
    try:
        report = drive(routing_server.address, "answers", model="shadowed", n=8)
        assert [a["variant"] for a in report["answers"]] == ["main"] * 8
        mirror = routing.mirror
        assert mirror is not None and mirror.queued == 0  # dropped, not queued
        during = shadow()
        assert during.dropped_by["primary_busy"] == busy_before + 8
        assert during.completed + during.errors == before.completed + before.errors
    finally:
        lease.release()
    drive(routing_server.address, "answers", model="shadowed", n=4)
    wait_for(lambda: shadow().completed == before.completed + 4, "the 4 admitted copies")
    after = shadow()
    assert after.dropped == before.dropped + 8 and after.offered == before.offered + 12
    assert math.isclose(after.mirrored, after.completed / after.offered)
    url = f"http://127.0.0.1:{routing_server.metrics_port}/metrics"
    with urllib.request.urlopen(url) as response:
        text = response.read().decode()
    dropped = (
        'headrace_shadow_dropped_total{endpoint="shadowed",reason="primary_busy",shadow="next"}'
    )
    assert f"{dropped} {float(busy_before + 8)}" in text
    assert 'headrace_shadow_mirrored_ratio{endpoint="shadowed",shadow="next"}' in text
    wire_report = engine.endpoints.report("shadowed")
    assert wire_report.shadows[0].dropped_by["primary_busy"] == busy_before + 8


def test_a_slow_shadow_does_not_hold_the_primary(routing_server: RunningServer) -> None:
    routing = engine_of(routing_server).routing
    gate, entered = threading.Event(), threading.Event()
    real = routing.mirror_call

    async def held(model: str, version: str, inputs: Mapping[str, Any]) -> Any:
        entered.set()
        await asyncio.to_thread(gate.wait)  # blocks this shadow call, never the loop
        return await real(model, version, inputs)

    before = routing.endpoints.report("shadowed").shadows[0]
    routing.mirror_call = held
    try:
        report = drive(routing_server.address, "answers", model="shadowed", n=8)
        # Every primary answer arrived while the shadow calls were still held at the gate.
        assert entered.is_set() and not gate.is_set()
        shadow = routing.endpoints.report("shadowed").shadows[0]
        assert shadow.completed == before.completed
        mirror = routing.mirror
        assert mirror is not None and mirror.in_flight + mirror.queued == 8
        expected = direct(routing_server, "a")
        for answer in report["answers"]:
            assert answer["variant"] == "main"
            np.testing.assert_allclose(answer["y"], expected, rtol=1e-6)
    finally:
        gate.set()
        routing.mirror_call = real

    def shadow_done() -> bool:
        shadow = routing.endpoints.report("shadowed").shadows[0]
        return shadow.completed == before.completed + 8

    wait_for(shadow_done, "the held shadow calls to finish")
    shadow = routing.endpoints.report("shadowed").shadows[0]
    assert shadow.errors == before.errors and shadow.dropped == before.dropped
    assert shadow.abs_delta_max > 0  # model c answers unlike model a


def gauge(server: RunningServer, sample: str) -> float:
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    with urllib.request.urlopen(url) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(sample + " "):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {sample}")


def test_feedback_by_request_id_moves_the_bandit(
    routing_server: RunningServer, feedback_stub: Any, admin_stub: Any
) -> None:
    allocation = 'headrace_bandit_allocation{endpoint="bandit",variant="vb"}'
    assert 0.4 < gauge(routing_server, allocation) < 0.6  # no rewards yet: a coin flip
    answers = drive(routing_server.address, "answers", model="bandit", n=200)["answers"]
    served = {a["variant"] for a in answers}
    assert served == {"va", "vb"}
    batch = pb.FeedbackBatchRequest(
        items=[
            pb.FeedbackRequest(
                request_id=a["id"], reward=1.0 if a["variant"] == "vb" else 0.0, endpoint="bandit"
            )
            for a in answers
        ]
    )
    results = feedback_stub.FeedbackBatch(batch).results
    assert [r.code for r in results] == [0] * 200
    assert [r.response.variant for r in results] == [a["variant"] for a in answers]
    report = admin_stub.GetExperimentReport(pb.GetExperimentReportRequest(endpoint="bandit"))
    arms = report.state.arms
    assert arms["va"].mean == 0.0 and arms["vb"].mean == 1.0
    assert arms["va"].rewards + arms["vb"].rewards == 200
    treated = report.variants[1]
    assert treated.name == "vb" and treated.significant and treated.comparison.p_value < 1e-6
    assert gauge(routing_server, allocation) > 0.99
    # Thompson draws in batches of 64: the last 100 of 200 requests see the rewards.
    after = drive(routing_server.address, "answers", model="bandit", n=200)["answers"]
    assert sum(a["variant"] == "vb" for a in after[100:]) >= 95


def feedback_code(stub: Any, **fields: Any) -> tuple[grpc.StatusCode, str]:
    try:
        stub.Feedback(pb.FeedbackRequest(**fields))
    except grpc.RpcError as error:
        return error.code(), error.details()  # type: ignore[attr-defined]
    return grpc.StatusCode.OK, ""


def test_bad_feedback_gets_a_clear_status(
    routing_server: RunningServer, feedback_stub: Any, admin_stub: Any
) -> None:
    admin_stub.CreateEndpoint(
        pb.CreateEndpointRequest(
            endpoint=pb.Endpoint(
                name="judged",
                strategy="bandit",
                variants=[
                    pb.EndpointVariant(name="va", model="a"),
                    pb.EndpointVariant(name="vb", model="b"),
                ],
            )
        )
    )
    answer = drive(routing_server.address, "answers", model="judged", n=1)["answers"][0]
    rid = answer["id"]
    cases = [
        ({"request_id": "never-sent", "reward": 1.0}, grpc.StatusCode.NOT_FOUND, "never-sent"),
        ({"request_id": rid, "reward": math.nan}, grpc.StatusCode.INVALID_ARGUMENT, "finite"),
        ({"request_id": rid, "reward": math.inf}, grpc.StatusCode.INVALID_ARGUMENT, "finite"),
        (
            {"request_id": rid, "reward": 1.0, "endpoint": "split"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "answered by endpoint 'judged', not 'split'",
        ),
        ({"request_id": rid, "reward": 2.0}, grpc.StatusCode.INVALID_ARGUMENT, "outside [0, 1]"),
        ({"request_id": rid}, grpc.StatusCode.INVALID_ARGUMENT, "needs a reward, a label"),
        ({"reward": 1.0}, grpc.StatusCode.INVALID_ARGUMENT, "request_id"),
        (
            {"request_id": rid, "label": pb.LabelTensor(shape=[2], int64_contents=[1])},
            grpc.StatusCode.INVALID_ARGUMENT,
            "int64_contents has 1 elements but shape [2] needs 2",
        ),
    ]
    for fields, code, text in cases:
        got, details = feedback_code(feedback_stub, **fields)
        assert (got, text in details) == (code, True), (fields, got, details)
    # None of the refused items counted; the first valid reward does, a second one cannot.
    rewards = sum(
        v.rewards.count
        for v in admin_stub.GetExperimentReport(
            pb.GetExperimentReportRequest(endpoint="judged")
        ).variants
    )
    assert rewards == 0
    assert feedback_code(feedback_stub, request_id=rid, reward=1.0) == (grpc.StatusCode.OK, "")
    code, details = feedback_code(feedback_stub, request_id=rid, reward=0.0)
    assert code == grpc.StatusCode.ALREADY_EXISTS and "already has a reward" in details
    # A batch judges each item alone.
    results = feedback_stub.FeedbackBatch(
        pb.FeedbackBatchRequest(
            items=[
                pb.FeedbackRequest(request_id="never-sent", reward=1.0),
                pb.FeedbackRequest(request_id=rid, reward=math.nan),
            ]
        )
    ).results
    assert [(r.code, r.HasField("response")) for r in results] == [
        (grpc.StatusCode.NOT_FOUND.value[0], False),
        (grpc.StatusCode.INVALID_ARGUMENT.value[0], False),
    ]
    # A plain model's answers are not remembered by default: its ids are unknown to feedback.
    plain = drive(routing_server.address, "answers", model="a", n=1)["answers"][0]
    assert feedback_code(feedback_stub, request_id=plain["id"], reward=1.0)[0] == (
        grpc.StatusCode.NOT_FOUND
    )
