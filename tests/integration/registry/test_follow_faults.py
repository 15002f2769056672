"""Following MLflow when things go wrong: MLflow dies while 16 callers infer (serving goes on),
headrace restarts while MLflow is down (it serves from its cache), and a real `headrace serve`
killed with SIGKILL after CLI rollbacks and pins leaves an audit file with every transition, its
cause and its actor."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from headrace.client import Client
from integration.registry.serving import HANG_GUARD_S, Callers, ServeProcess, serving

X = {"x": np.ones((1, 3), np.float32)}


def until(predicate: Any, what: str) -> Any:
    """The first truthy value of ``predicate()``; AssertionError after the hang guard."""
    deadline = time.monotonic() + HANG_GUARD_S
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: hang guard"
        time.sleep(0.05)  # between looks at a state, not a decision by time


def audit(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_mlflow_down_serving_goes_on_and_a_restart_serves_from_the_cache(
    mlflow_server: Any, logged: Any, tmp_path: Path
) -> None:
    name = "faults-outage"
    v1 = mlflow_server.create_version(name, logged.one)
    v2 = mlflow_server.create_version(name, logged.two)
    mlflow_server.set_alias(name, "champion", v1)
    settings = {
        "mlflow_uri": mlflow_server.uri,
        "models": [f"{name}@champion"],
        "model_cache": tmp_path / "cache",
        "audit_log": tmp_path / "audit.jsonl",
        "registry_poll_s": 0.2,
    }
    try:
        with serving(**settings) as running, Client(running.address) as client:
            callers = Callers(running.address, name, X, "y").start()
            try:
                callers.wait_for(lambda a: a.version == str(v1))
                moved = time.monotonic()
                mlflow_server.set_alias(name, "champion", v2)
                callers.wait_for(lambda a: a.version == str(v2), moved)

                mlflow_server.kill()
                note = until(
                    lambda: client.list_model_versions(name)[0].note, "the server sees MLflow down"
                )
                assert "unreachable" in note
                noticed = time.monotonic()
                later = callers.wait_for(lambda a: True, noticed)
                assert later.version == str(v2)
            finally:
                callers.stop()
            assert not callers.failures, callers.failures[:3]
            exposition = running.engine.metrics.exposition().decode()
            assert f'headrace_registry_reachable{{source="{mlflow_server.uri}"}} 0.0' in exposition

        # MLflow is still down: a new server serves the last good version from its cache.
        with serving(**settings) as again, Client(again.address) as client:
            answer = client.infer(name, X)
            assert answer.model_version == str(v2)
            assert float(answer.outputs["y"][0, 0]) == 3.0  # x + 2
            (listed,) = client.list_model_versions(name)
            assert listed.serving == str(v2) and "unreachable" in listed.note
            last = audit(tmp_path / "audit.jsonl")[-1]
            assert (last["to_version"], last["cause"], last["actor"]) == (v2, "startup", "poller")
    finally:
        mlflow_server.start()


def headrace_models(address: str, *args: str, token_file: Path | None = None) -> str:
    command = [sys.executable, "-m", "headrace", "models", args[0], "--server", address]
    if token_file is not None:
        command += ["--token-file", str(token_file)]
    done = subprocess.run(
        [*command, *args[1:]],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
        env={k: v for k, v in os.environ.items() if k != "HEADRACE_TOKEN"},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_cli_rollback_and_pin_then_kill_9_leaves_every_transition_audited(
    mlflow_server: Any, logged: Any, tmp_path: Path
) -> None:
    name = "faults-process"
    v1 = mlflow_server.create_version(name, logged.one)
    v2 = mlflow_server.create_version(name, logged.two)
    mlflow_server.set_alias(name, "champion", v1)
    token = tmp_path / "admin.token"
    token.write_text("a-long-random-admin-token-0123456789\n")
    audit_file = tmp_path / "audit.jsonl"
    process = ServeProcess(
        [
            "--mlflow-uri",
            mlflow_server.uri,
            "--model",
            f"{name}@champion",
            "--registry-poll-s",
            "0.2",
            "--model-cache",
            str(tmp_path / "cache"),
            "--audit-log",
            str(audit_file),
            "--admin-token-file",
            str(token),
            "--grpc-port",
            "0",
            "--metrics-port",
            "-1",
        ]
    )
    try:
        with Client(process.address) as client:
            assert client.infer(name, X).model_version == str(v1)
            mlflow_server.set_alias(name, "champion", v2)
            until(lambda: client.infer(name, X).model_version == str(v2), "the alias move")

            address = process.address
            out = headrace_models(address, "rollback", name, token_file=token)
            assert out.strip() == f"{name}: {v2} -> {v1}"
            assert client.infer(name, X).model_version == str(v1)
            out = headrace_models(address, "pin", name, str(v2), token_file=token)
            assert out.strip() == f"{name}: {v1} -> {v2}"
            listing = headrace_models(address, "list", name, token_file=token)
            assert f"serving {v2}" in listing and f"[pin to {v2} by token:admin.token" in listing
            out = headrace_models(address, "unpin", name, token_file=token)
            assert out.strip() == f"{name}: {v2} -> {v2}"
            trail = headrace_models(address, "audit", name, "--json", token_file=token)
            assert len(trail.splitlines()) >= 5
            refused = subprocess.run(
                [sys.executable, "-m", "headrace", "models", "rollback", "--server", address, name],
                capture_output=True,
                text=True,
                timeout=HANG_GUARD_S,
                env={k: v for k, v in os.environ.items() if k != "HEADRACE_TOKEN"},
            )
            assert refused.returncode == 1 and "token" in refused.stderr
    finally:
        process.kill()

    records = audit(audit_file)
    switched = [
        (r["from_version"], r["to_version"], r["cause"], r["actor"])
        for r in records
        if r["outcome"] == "switched"
    ]
    admin = "token:admin.token"
    assert switched == [
        (None, v1, "startup", "poller"),
        (v1, v2, "alias_moved", "poller"),
        (v2, v1, "admin_rollback", admin),
        (v1, v2, "admin_pin", admin),
        (v2, v2, "admin_unpin", admin),
    ]
    for record in records:
        assert record["time"] and record["source"] == mlflow_server.uri
    assert records[0]["load_ms"] is not None and records[0]["warm_ms"] is not None
