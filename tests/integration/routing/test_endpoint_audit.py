"""Endpoint changes in the audit trail (``--audit-log``): what AdminService changes, with who
asked and what changed, and what a canary decides by itself (a rollback driven by a failing
candidate, a promotion at 100 %). Driven over gRPC against a real server; the file is read back."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from conftest import start_server, stop_server
from headrace import wire
from headrace.client import Client
from headrace.errors import HeadraceError
from headrace.registry.audit import AuditLog, EndpointAction, EndpointAuditRecord
from headrace.wire import admin as pb
from helpers import onnx_models
from integration.routing.routing_wire import write_repository

ADMIN_TOKEN = "admin-" + "k" * 32
WAIT_S = 60.0


def endpoint_records(path: Path) -> list[EndpointAuditRecord]:
    with AuditLog(path) as trail:
        return trail.read_endpoints()


def wait_for_record(path: Path, action: EndpointAction, endpoint: str) -> EndpointAuditRecord:
    """The first record of ``action`` on ``endpoint``; automatic ones are written by a thread of
    their own, after the decision: wait for the state, not for a time."""
    deadline = time.monotonic() + WAIT_S
    while True:
        for record in endpoint_records(path):
            if record.action == action and record.endpoint == endpoint:
                return record
        assert time.monotonic() < deadline, f"no {action} record for {endpoint}"
        time.sleep(0.02)


def canary_endpoint(name: str, candidate: str) -> Any:
    return pb.Endpoint(
        name=name,
        strategy="canary",
        variants=[
            pb.EndpointVariant(name="base", model="lookup"),
            pb.EndpointVariant(name="cand", model=candidate),
        ],
        canary=pb.CanarySettings(
            steps=[50, 100],
            step_s=0,
            step_requests=10,
            min_requests=5,
            max_error_rate_delta=0.05,
            max_p99_ratio=0,  # judged on errors alone: latency on a shared box is no verdict
        ),
    )


@pytest.fixture()
def audited(tmp_path: Path) -> Any:
    repo = write_repository(tmp_path)
    # Gather from a table: an index outside it fails in ONNX Runtime itself. The failing
    # candidate's table is shorter than the baseline's, so index 50 fails on it alone.
    onnx_models.write_model(repo, "lookup", onnx_models.gather_lookup(100))
    onnx_models.write_model(repo, "short", onnx_models.gather_lookup(10))
    onnx_models.write_model(repo, "same", onnx_models.gather_lookup(100))
    token = tmp_path / "admin.token"
    token.write_text(ADMIN_TOKEN)
    audit = tmp_path / "audit.jsonl"
    running, thread = start_server(
        repo, state_dir=tmp_path / "state", audit_log=audit, admin_token_file=token
    )
    yield running, audit
    stop_server(running, thread)


def test_admin_changes_are_audited_with_actor_and_change(audited: Any) -> None:
    running, audit = audited
    metadata = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
    with grpc.insecure_channel(running.address) as channel:
        admin = wire.Stub(channel, wire.ADMIN_SERVICE)
        variants = [
            pb.EndpointVariant(name="va", model="a", weight=70),
            pb.EndpointVariant(name="vb", model="b", weight=30),
        ]
        admin.CreateEndpoint(
            pb.CreateEndpointRequest(endpoint=pb.Endpoint(name="made", variants=variants)),
            metadata=metadata,
        )
        variants[1].weight = 60
        admin.UpdateEndpoint(
            pb.UpdateEndpointRequest(endpoint=pb.Endpoint(name="made", variants=variants)),
            metadata=metadata,
        )
        admin.Switch(pb.SwitchRequest(endpoint="bg"), metadata=metadata)
        admin.Rollback(pb.RollbackRequest(endpoint="bg"), metadata=metadata)
        admin.DeleteEndpoint(pb.DeleteEndpointRequest(name="made"), metadata=metadata)
        # A refused change is not in the trail.
        with pytest.raises(grpc.RpcError):
            admin.CreateEndpoint(
                pb.CreateEndpointRequest(endpoint=pb.Endpoint(name="bg", variants=[variants[0]])),
                metadata=metadata,
            )
    records = endpoint_records(audit)
    assert [(r.endpoint, r.action) for r in records] == [
        ("made", EndpointAction.CREATED),
        ("made", EndpointAction.UPDATED),
        ("bg", EndpointAction.SWITCH),
        ("bg", EndpointAction.ROLLBACK),
        ("made", EndpointAction.DELETED),
    ]
    assert {r.actor for r in records} == {"token:admin.token"}
    created, updated, switched, rolled_back, deleted = records
    assert created.before == {}
    assert [(v["name"], v["weight"]) for v in created.after["variants"]] == [
        ("va", 70),
        ("vb", 30),
    ]
    # An update records only what changed: here the weights, in the variants.
    assert set(updated.before) == set(updated.after) == {"variants"}
    assert [v["weight"] for v in updated.before["variants"]] == [70, 30]
    assert [v["weight"] for v in updated.after["variants"]] == [70, 60]
    assert (switched.before, switched.after, switched.variant) == (
        {"active": "blue"},
        {"active": "green"},
        "green",
    )
    assert (rolled_back.before, rolled_back.after) == ({"active": "green"}, {"active": "blue"})
    assert deleted.after == {} and deleted.before["name"] == "made"
    # GetAuditLog answers them with `endpoints` (or an endpoint's name).
    with grpc.insecure_channel(running.address) as channel:
        admin = wire.Stub(channel, wire.ADMIN_SERVICE)
        entries = admin.GetAuditLog(pb.GetAuditLogRequest(endpoint="bg"), metadata=metadata)
        every = admin.GetAuditLog(pb.GetAuditLogRequest(endpoints=True), metadata=metadata)
        models = admin.GetAuditLog(pb.GetAuditLogRequest(), metadata=metadata)
    assert [(e.kind, e.action, e.actor) for e in entries.entries] == [
        ("endpoint", "switch", "token:admin.token"),
        ("endpoint", "rollback", "token:admin.token"),
    ]
    assert json.loads(entries.entries[0].change_to) == {"active": "green"}
    assert len(every.entries) == 5
    assert models.entries and {e.kind for e in models.entries} == {"model"}
    # Model transitions are read as before, the endpoint records beside them.
    with AuditLog(audit) as trail:
        models = trail.read()
    assert models and all(r.model for r in models)
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert {line["kind"] for line in lines} == {"model", "endpoint"}


def infer_until(client: Client, endpoint: str, index: int, done: Any) -> None:
    """Send requests until ``done()``; at most a few thousand."""
    x = np.array([[index]], dtype=np.int64)
    for _ in range(4000):
        if done():
            return
        with contextlib.suppress(HeadraceError):  # the failing candidate's answers
            client.infer(endpoint, {"index": x})
    raise AssertionError(f"{endpoint}: the canary did not decide in 4000 requests")


def test_a_canary_rollback_and_a_promotion_are_audited(audited: Any) -> None:
    running, audit = audited
    with Client(running.address, token=ADMIN_TOKEN) as client:
        client.admin(
            "CreateEndpoint", pb.CreateEndpointRequest(endpoint=canary_endpoint("bad", "short"))
        )
        client.admin(
            "CreateEndpoint", pb.CreateEndpointRequest(endpoint=canary_endpoint("good", "same"))
        )

        def state(name: str) -> str:
            listed = client.admin("ListEndpoints", pb.ListEndpointsRequest()).endpoints
            return next(e.state.canary_state for e in listed if e.endpoint.name == name)

        infer_until(client, "bad", 50, lambda: state("bad") == "rolled_back")
        infer_until(client, "good", 5, lambda: state("good") == "promoted")
    rollback = wait_for_record(audit, EndpointAction.CANARY_ROLLBACK, "bad")
    assert rollback.actor == "canary" and rollback.variant == "cand"
    assert rollback.before == {"candidate_percent": 50.0}
    assert rollback.after == {"candidate_percent": 0.0}
    assert "error rate" in rollback.reason and "max_error_rate_delta" in rollback.reason
    promotion = wait_for_record(audit, EndpointAction.CANARY_PROMOTION, "good")
    assert promotion.actor == "canary"
    assert (promotion.before, promotion.after) == (
        {"candidate_percent": 50.0},
        {"candidate_percent": 100.0},
    )
    assert not [
        r for r in endpoint_records(audit) if r.endpoint == "good" and "rollback" in r.action
    ]
