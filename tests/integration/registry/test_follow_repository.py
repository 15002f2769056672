"""A server that watches its model repository: a version folder copied in slowly is never loaded
half-written, ten new versions under 16 callers fail no request, a version that cannot load never
swaps in, a removed version drains and unloads, a changed file reloads, rollback and pin. Waits
are for states: a scan of the watcher that judged everything it saw, an answer, an audit line."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from headrace.client import Client
from integration.registry.serving import (
    Callers,
    Move,
    Serving,
    check_answers_against_moves,
    serving,
)

MODEL = "watched"
X = {"x": np.ones((1, 4), np.float32)}


def scaled(scale: float) -> bytes:
    """y = x * scale: the answer says which version (and which file) served."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "s"], ["y"])],
        "scaled",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(np.array(scale, np.float32), "s")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def unloadable() -> bytes:
    """A complete ONNX file that ONNX Runtime refuses (an operator that does not exist)."""
    graph = helper.make_graph(
        [helper.make_node("NoSuchOperator", ["x"], ["y"], domain="headrace.test")],
        "broken",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("headrace.test", 1)],
    )
    model.ir_version = 8
    return bytes(model.SerializeToString())


def write_version(repo: Path, version: int, content: bytes) -> Path:
    folder = repo / MODEL / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(content)
    return folder


def settle(running: Serving) -> None:
    """Until the watcher has looked at the tree and judged everything it saw change."""
    watcher = running.engine.registry.watcher
    deadline = time.monotonic() + 120
    while True:
        running.run(watcher.scan_now())
        if watcher.pending == 0:
            return
        assert time.monotonic() < deadline, "the watcher never settled: hang guard"


def audit(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    write_version(root, 1, scaled(1.0))
    return root


def watch_settings(repo: Path, tmp_path: Path) -> dict[str, Any]:
    return {
        "model_repository": repo,
        "watch_repository": True,
        "repository_settle_s": 0.3,
        "repository_poll_s": 0.2,
        "audit_log": tmp_path / "audit.jsonl",
    }


def test_a_version_copied_in_slowly_loads_only_when_complete(repo: Path, tmp_path: Path) -> None:
    with serving(**watch_settings(repo, tmp_path)) as running, Client(running.address) as client:
        content = scaled(2.0)
        folder = repo / MODEL / "2"
        folder.mkdir()
        with (folder / "model.onnx").open("wb") as partial:
            partial.write(content[: len(content) // 2])
            partial.flush()
            settle(running)  # the half file settled and was judged: not loadable yet
            assert client.infer(MODEL, X).model_version == "1"
            assert {e.version for e in client.repository_index()} == {"1"}
            assert all(r["to_version"] != 2 for r in audit(tmp_path / "audit.jsonl"))
            moved = time.monotonic()
            partial.write(content[len(content) // 2 :])
        callers = Callers(running.address, MODEL, X, "y").start()
        try:
            seen = callers.wait_for(lambda a: a.version == "2", moved)
        finally:
            callers.stop()
        assert not callers.failures, callers.failures[:3]
        assert seen.value == 2.0
        records = audit(tmp_path / "audit.jsonl")
        assert [(r["to_version"], r["cause"], r["actor"], r["outcome"]) for r in records][:2] == [
            (1, "startup", "startup", "switched"),
            (2, "version_added", "watcher", "switched"),
        ]
        assert not [r for r in records if r["outcome"] == "failed"]


def test_ten_new_versions_under_16_callers_fail_no_request(repo: Path, tmp_path: Path) -> None:
    with serving(**watch_settings(repo, tmp_path)) as running:
        callers = Callers(running.address, MODEL, X, "y").start()
        try:
            first = callers.wait_for(lambda a: a.version == "1")
            moves = [Move("1", 0.0, first.answered_s)]
            for version in range(2, 12):
                moved = time.monotonic()
                write_version(repo, version, scaled(float(version)))
                seen = callers.wait_for(lambda a, v=version: a.version == str(v), moved)
                moves.append(Move(str(version), moved, seen.answered_s))
        finally:
            callers.stop()
        assert not callers.failures, callers.failures[:3]
        check_answers_against_moves(callers.answers, moves)
        for answer in callers.answers:
            assert answer.value == float(answer.version), answer
        records = audit(tmp_path / "audit.jsonl")
        switched = [r["to_version"] for r in records if r["outcome"] == "switched"]
        assert switched == list(range(1, 12))
        # Each switch kept one previous version warm and closed the one before it.
        drained = [r["reason"] for r in records if r["outcome"] == "drained"]
        assert drained == [f"closed version {v}" for v in range(1, 10)]


def test_failing_removed_and_changed_versions(repo: Path, tmp_path: Path) -> None:
    with serving(**watch_settings(repo, tmp_path)) as running, Client(running.address) as client:
        write_version(repo, 2, scaled(2.0))
        settle(running)
        running.run(running.engine.registry.idle())
        assert client.infer(MODEL, X).model_version == "2"
        # Version 3 is complete but cannot load: it never swaps in; the index says why.
        write_version(repo, 3, unloadable())
        settle(running)
        running.run(running.engine.registry.idle())
        assert client.infer(MODEL, X).model_version == "2"
        rows = {(e.version, e.state): e.reason for e in client.repository_index()}
        assert "NoSuchOperator" in rows[("3", "UNAVAILABLE")]
        failed = [r for r in audit(tmp_path / "audit.jsonl") if r["outcome"] == "failed"]
        assert [(r["to_version"], r["cause"], r["actor"]) for r in failed] == [
            (3, "load_failed", "watcher")
        ]
        exposition = running.engine.metrics.exposition().decode()
        assert f'headrace_model_transitions_total{{cause="load_failed",model="{MODEL}"' in (
            exposition
        )

        # The serving version's folder goes: the previous one (kept warm) serves at once.
        shutil.rmtree(repo / MODEL / "2")
        settle(running)
        running.run(running.engine.registry.idle())
        answer = client.infer(MODEL, X)
        assert (answer.model_version, float(answer.outputs["y"][0, 0])) == ("1", 1.0)
        rows = {(e.version, e.state) for e in client.repository_index()}
        assert rows == {("1", "READY"), ("3", "UNAVAILABLE")}  # 3 still says why
        removed = [r for r in audit(tmp_path / "audit.jsonl") if r["cause"] == "version_removed"]
        assert [(r["from_version"], r["to_version"], r["outcome"]) for r in removed] == [
            (2, 1, "switched"),
            (2, 1, "drained"),
        ]

        # A changed file at the same version reloads: same number, new answers.
        (repo / MODEL / "1" / "model.onnx").write_bytes(scaled(10.0))
        settle(running)
        running.run(running.engine.registry.idle())
        answer = client.infer(MODEL, X)
        assert (answer.model_version, float(answer.outputs["y"][0, 0])) == ("1", 10.0)
        changed = [r for r in audit(tmp_path / "audit.jsonl") if r["cause"] == "file_changed"]
        first = changed[0]
        assert (first["from_version"], first["to_version"], first["outcome"]) == (1, 1, "switched")


def test_rollback_pin_and_aliases_of_a_watched_model(repo: Path, tmp_path: Path) -> None:
    (repo / MODEL / "model.toml").write_text("[aliases]\nchampion = 1\n")
    with serving(**watch_settings(repo, tmp_path)) as running, Client(running.address) as client:
        write_version(repo, 2, scaled(2.0))
        settle(running)
        running.run(running.engine.registry.idle())
        assert client.infer(MODEL, X).model_version == "2"
        assert client.infer(MODEL, X, version="champion").model_version == "1"
        change = client.rollback_model(MODEL)
        assert (change.from_version, change.to_version) == ("2", "1")
        assert client.infer(MODEL, X).model_version == "1"
        change = client.unpin_model(MODEL)
        assert (change.from_version, change.to_version) == ("1", "2")
        # A pin holds over a new version; the rollback does not.
        client.pin_model(MODEL, "1")
        write_version(repo, 3, scaled(3.0))
        settle(running)
        running.run(running.engine.registry.idle())
        assert client.infer(MODEL, X).model_version == "1"
        client.unpin_model(MODEL)
        assert client.infer(MODEL, X).model_version == "3"
        (listed,) = client.list_model_versions(MODEL)
        assert (listed.source, listed.serving, listed.aliases["champion"]) == (
            "repository",
            "3",
            "1",
        )
        # The new alias map applies once model.toml settles.
        (repo / MODEL / "model.toml").write_text("[aliases]\nchampion = 3\n")
        settle(running)
        running.run(running.engine.registry.idle())
        assert client.infer(MODEL, X, version="champion").model_version == "3"
