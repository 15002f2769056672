"""`headrace serve --endpoints FILE --state-dir DIR` as a real process: tritonclient is answered
by the file's endpoints, and feedback received before SIGTERM is in the state folder after it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc

from headrace import wire
from headrace.wire import admin as pb
from integration.routing.routing_wire import ENDPOINTS, drive, write_repository

SERVING_LINE = re.compile(r"serving gRPC on ([\d.]+):(\d+)")


def test_serve_with_an_endpoints_file_and_a_state_folder(tmp_path: Path) -> None:
    repo = write_repository(tmp_path)
    (repo / "_endpoints.toml").unlink()  # the flag names the file instead
    endpoints = tmp_path / "elsewhere.toml"
    endpoints.write_text(ENDPOINTS)
    state = tmp_path / "state"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "headrace",
            "serve",
            "--model-repository",
            str(repo),
            "--grpc-port",
            "0",
            "--metrics-port",
            "-1",
            "--endpoints",
            str(endpoints),
            "--state-dir",
            str(state),
            "--feedback-max-entries",
            "1000",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ},
    )
    assert process.stdout is not None
    try:
        address = ""
        deadline = time.monotonic() + 120
        while not address and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            match = SERVING_LINE.search(line)
            if match:
                address = f"{match.group(1)}:{match.group(2)}"
        assert address, process.stderr.read() if process.poll() is not None else "no start"
        answers = drive(address, "answers", model="bandit", n=10)["answers"]
        assert {a["variant"] for a in answers} <= {"va", "vb"}
        with grpc.insecure_channel(address) as channel:
            feedback = wire.Stub(channel, wire.FEEDBACK_SERVICE)
            for answer in answers:
                reward = 1.0 if answer["variant"] == "vb" else 0.0
                feedback.Feedback(pb.FeedbackRequest(request_id=answer["id"], reward=reward))
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
        assert process.returncode == 0, err[-2000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    saved = json.loads((state / "endpoints.json").read_text())
    arms = saved["runtime"]["bandit"]["bandit"]["arms"]
    assert sum(arm["count"] for arm in arms) == 10  # the rewards survived the shutdown


def test_serve_refuses_endpoints_that_do_not_fit_the_models(tmp_path: Path) -> None:
    repo = write_repository(tmp_path)
    (repo / "_endpoints.toml").write_text(
        '[[endpoint]]\nname = "e"\nvariants = [{ name = "x", model = "a" }, '
        '{ name = "y", model = "narrow" }]\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "headrace", "serve", "--model-repository", str(repo),
         "--grpc-port", "0", "--metrics-port", "-1"],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert "headrace serve: endpoint 'e': variant 'y' does not match variant 'x'" in done.stderr
