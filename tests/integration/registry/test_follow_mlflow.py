"""A server that follows MLflow aliases, against the session's real MLflow server: alias moves
switch serving after one poll and the load, ten moves under 16 callers fail no request, corrupt
and FAILED versions never swap in, rollback and pin, the audit trail, and the index saying why.
Every wait is for a state (an answer, a poll cycle, the follower being idle)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from headrace.client import Client
from headrace.errors import FailedPreconditionError, NotFoundError
from helpers import onnx_models
from integration.registry.serving import Callers, Move, check_answers_against_moves, serving

X = {"x": np.ones((1, 3), np.float32)}


def bias_of(answer_value: float) -> float:
    return answer_value - 1.0  # y = x + bias with x = 1


def follow_settings(server: Any, tmp_path: Path, *models: str, **extra: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "mlflow_uri": server.uri,
        "models": list(models),
        "model_cache": tmp_path / "cache",
        "audit_log": tmp_path / "audit.jsonl",
        "registry_poll_s": 0.2,
    }
    settings.update(extra)
    return settings


def audit(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_alias_move_switches_after_one_poll_and_the_load(
    mlflow_server: Any, logged: Any, tmp_path: Path
) -> None:
    name = "follow-move"
    v1 = mlflow_server.create_version(name, logged.one)
    v2 = mlflow_server.create_version(name, logged.two)
    mlflow_server.set_alias(name, "champion", v1)
    # The test polls by hand: the poller's own loop would wait an hour. A model of the
    # repository serves beside it (both sources in one server).
    repo = tmp_path / "models"
    onnx_models.write_model(repo, "local", onnx_models.mlp([3, 4, 2]))
    settings = follow_settings(
        mlflow_server, tmp_path, f"{name}@champion", registry_poll_s=3600, model_repository=repo
    )
    with serving(**settings) as running, Client(running.address) as client:
        assert client.infer("local", X).model_version == "1"
        first = client.infer(name, X)
        assert first.model_version == str(v1) and bias_of(first.outputs["y"][0, 0]) == 1.0
        assert client.infer(name, X, version="champion").model_version == str(v1)

        mlflow_server.set_alias(name, "champion", v2)
        follower = running.engine.registry
        running.run(follower.poller.poll_once())  # one poll ...
        running.run(follower.idle())  # ... and the load it asked for
        moved = client.infer(name, X)
        assert moved.model_version == str(v2) and bias_of(moved.outputs["y"][0, 0]) == 2.0
        assert client.infer(name, X, version="champion").model_version == str(v2)

        records = [r for r in audit(tmp_path / "audit.jsonl") if r["model"] == name]
        switches = [(r["from_version"], r["to_version"], r["cause"], r["actor"]) for r in records]
        assert switches[0] == (None, v1, "startup", "poller")
        assert (v1, v2, "alias_moved", "poller") in switches
        switched = next(r for r in records if r["to_version"] == v2)
        assert switched["outcome"] == "switched"
        assert switched["load_ms"] is not None and switched["warm_ms"] is not None
        assert switched["download_ms"] is not None
        # The input example served as the warm-up sample; the metric says what serves.
        (versions,) = client.list_model_versions(name)
        assert (versions.serving, versions.reference, versions.source) == (
            str(v2),
            f"{name}@champion",
            "mlflow",
        )
        states = {v.version: v.state for v in versions.versions}
        assert states == {str(v1): "STANDBY", str(v2): "SERVING"}
        exposition = running.engine.metrics.exposition().decode()
        assert f'headrace_model_serving_version{{model="{name}"}} {float(v2)}' in exposition
        line = (
            f'headrace_model_transitions_total{{cause="alias_moved",model="{name}",'
            'outcome="switched"} 1.0'
        )
        assert line in exposition


def test_ten_alias_moves_under_16_callers_fail_no_request(
    mlflow_server: Any, logged: Any, tmp_path: Path
) -> None:
    name = "follow-ten"
    versions = [
        mlflow_server.create_version(name, logged.one if k % 2 == 0 else logged.two)
        for k in range(11)
    ]
    bias = {str(v): 1.0 if k % 2 == 0 else 2.0 for k, v in enumerate(versions)}
    mlflow_server.set_alias(name, "champion", versions[0])
    settings = follow_settings(mlflow_server, tmp_path, f"{name}@champion")
    with serving(**settings) as running:
        # 12 callers name no version, 4 name the alias: neither kind may fail across a move.
        callers = Callers(running.address, name, X, "y", count=12).start()
        by_alias = Callers(running.address, name, X, "y", version="champion", count=4).start()
        try:
            start = time.monotonic()
            first = callers.wait_for(lambda a: a.version == str(versions[0]))
            moves = [Move(str(versions[0]), 0.0, first.answered_s)]
            for version in versions[1:]:
                moved = time.monotonic()
                mlflow_server.set_alias(name, "champion", version)
                seen = callers.wait_for(lambda a, v=version: a.version == str(v), moved)
                moves.append(Move(str(version), moved, seen.answered_s))
            by_alias.wait_for(lambda a: a.version == str(versions[-1]))
        finally:
            callers.stop()
            by_alias.stop()
        assert not callers.failures, callers.failures[:3]
        assert not by_alias.failures, by_alias.failures[:3]
        answers = [a for a in callers.answers if a.sent_s >= start]
        assert len(answers) > len(versions) * 16
        check_answers_against_moves(answers, moves)
        for answer in [*answers, *by_alias.answers]:  # values come from the version named
            assert bias_of(answer.value) == bias[answer.version], answer
        assert {a.version for a in by_alias.answers} >= {str(versions[0]), str(versions[-1])}
        records = audit(tmp_path / "audit.jsonl")
        switched = [r["to_version"] for r in records if r["outcome"] == "switched"]
        assert switched == versions


def test_corrupt_artifact_and_failed_version_never_swap_in(
    mlflow_server: Any, logged: Any, tmp_path: Path
) -> None:
    name = "follow-faults"
    good = mlflow_server.create_version(name, logged.one)
    failed = mlflow_server.create_version(name, logged.two)
    mlflow_server.set_status(name, failed, "FAILED_REGISTRATION")
    mlflow_server.set_alias(name, "champion", good)
    corrupt_model = mlflow_server.log_model("follow-corrupt-source", 7.0, workdir=tmp_path / "c")
    corrupt = mlflow_server.create_version(name, corrupt_model)
    onnx_file = mlflow_server.artifact_dir(name, corrupt) / "model.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes()[:100])  # a truncated upload
    settings = follow_settings(mlflow_server, tmp_path, f"{name}@champion", registry_poll_s=3600)
    with serving(**settings) as running, Client(running.address) as client:
        follower = running.engine.registry
        for target in (failed, corrupt):
            mlflow_server.set_alias(name, "champion", target)
            running.run(follower.poller.poll_once())
            running.run(follower.idle())
            answer = client.infer(name, X)
            assert answer.model_version == str(good)
            assert bias_of(answer.outputs["y"][0, 0]) == 1.0
        rows = {(e.version, e.state): e.reason for e in client.repository_index()}
        assert (str(good), "READY") in rows
        assert "FAILED" in rows[(str(failed), "UNAVAILABLE")]
        assert "not a complete ONNX model" in rows[(str(corrupt), "UNAVAILABLE")]
        (listed,) = client.list_model_versions(name)
        states = {v.version: v.state for v in listed.versions}
        assert states == {str(good): "SERVING", str(failed): "FAILED", str(corrupt): "FAILED"}
        outcomes = {
            (r["to_version"], r["outcome"], r["cause"]) for r in audit(tmp_path / "audit.jsonl")
        }
        assert (failed, "ignored", "alias_moved") in outcomes
        assert (corrupt, "failed", "load_failed") in outcomes
        assert not any(o[0] in (failed, corrupt) and o[1] == "switched" for o in outcomes)
        exposition = running.engine.metrics.exposition().decode()
        assert (
            f'headrace_model_transitions_total{{cause="load_failed",model="{name}",'
            'outcome="failed"} 1.0'
        ) in exposition


def test_requests_name_aliases_and_admins_pin_and_roll_back(
    mlflow_server: Any, logged: Any, tmp_path: Path
) -> None:
    name = "follow-admin"
    v1 = mlflow_server.create_version(name, logged.one)
    v2 = mlflow_server.create_version(name, logged.two)
    v3 = mlflow_server.create_version(name, logged.one)
    mlflow_server.set_alias(name, "champion", v1)
    mlflow_server.set_alias(name, "challenger", v2)
    settings = follow_settings(mlflow_server, tmp_path, f"{name}@champion", registry_poll_s=3600)
    with serving(**settings) as running, Client(running.address) as client:
        follower = running.engine.registry
        assert client.infer(name, X).model_version == str(v1)
        # The challenger's version loads beside the champion: requests may name it.
        assert client.infer(name, X, version="challenger").model_version == str(v2)
        with pytest.raises(NotFoundError, match="nobody"):
            client.infer(name, X, version="nobody")
        with pytest.raises(FailedPreconditionError, match="roll back"):
            client.rollback_model(name)

        mlflow_server.set_alias(name, "champion", v3)
        running.run(follower.poller.poll_once())
        running.run(follower.idle())
        assert client.infer(name, X).model_version == str(v3)

        change = client.rollback_model(name)
        assert (change.from_version, change.to_version) == (str(v3), str(v1))
        assert client.infer(name, X).model_version == str(v1)
        running.run(follower.poller.poll_once())  # the poller does not undo a rollback
        running.run(follower.idle())
        assert client.infer(name, X).model_version == str(v1)
        (listed,) = client.list_model_versions(name)
        assert (listed.override, listed.override_version, listed.desired) == (
            "rollback",
            str(v1),
            str(v3),
        )
        assert listed.override_actor.startswith("peer:")

        change = client.pin_model(name, "challenger")
        assert (change.from_version, change.to_version) == (str(v1), str(v2))
        mlflow_server.set_alias(name, "champion", v1)  # an alias move does not undo a pin
        running.run(follower.poller.poll_once())
        running.run(follower.idle())
        assert client.infer(name, X).model_version == str(v2)
        change = client.unpin_model(name)
        assert (change.from_version, change.to_version) == (str(v2), str(v1))
        assert client.infer(name, X).model_version == str(v1)
        with pytest.raises(FailedPreconditionError, match="not pinned"):
            client.unpin_model(name)

        causes = [(e.cause, e.outcome, e.to_version) for e in client.audit_log(name)]
        assert ("admin_rollback", "switched", str(v1)) in causes
        assert ("admin_pin", "switched", str(v2)) in causes
        assert ("alias_moved", "ignored", str(v1)) in causes  # held by the pin
        assert ("admin_unpin", "switched", str(v1)) in causes
        assert client.audit_log(name, limit=2)[-1] == client.audit_log(name)[-1]
