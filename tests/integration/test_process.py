"""`headrace serve` as a real process: the CLI, settings from the environment, tritonclient as a
client, and a graceful SIGTERM with requests in flight."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from headrace.client import Client
from helpers import onnx_models
from helpers.serve_process import ServeProcess

HERE = Path(__file__).resolve().parent


@pytest.fixture()
def example_server(tmp_path: Path) -> Iterator[ServeProcess]:
    repo = tmp_path / "models"
    onnx_models.write_model(repo, "tabular", onnx_models.mlp([32, 64, 1]))
    serving = ServeProcess(
        ["--model-repository", str(repo), "--grpc-port", "0", "--metrics-port", "-1"]
    )
    yield serving
    if serving.process.poll() is None:
        serving.terminate()


def test_tritonclient_talks_to_headrace(example_server: ServeProcess) -> None:
    checked = subprocess.run(
        [sys.executable, str(HERE / "tritonclient_check.py"), example_server.address],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    report = json.loads(checked.stdout)
    assert report["live"] and report["ready"] and report["model_ready"]
    assert report["metadata_inputs"] == [["x", "FP32", [-1, 32]]]
    assert report["max_batch_size"] == 64
    assert report["id"] == "t1"
    assert report["success_count"] == 1
    assert "StatusCode.NOT_FOUND" in report["error"]
    x = np.linspace(-1, 1, 3 * 32, dtype=np.float32).reshape(3, 32)
    with Client(example_server.address) as client:
        expected = client.infer("tabular", {"x": x}).outputs["y"]
    np.testing.assert_array_equal(np.array(report["y"], np.float32), expected)


def test_settings_from_environment_and_clean_exit(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    onnx_models.write_model(repo, "m", onnx_models.mlp([4, 4]))
    uds = tmp_path / "h.sock"
    serving = ServeProcess(
        ["--grpc-port", "0"],
        env={
            "HEADRACE_MODEL_REPOSITORY": str(repo),
            "HEADRACE_METRICS_PORT": "-1",
            "HEADRACE_GRPC_UDS": str(uds),
        },
    )
    with Client(f"unix:{uds}") as client:
        assert client.is_model_ready("m")
    code, out, _ = serving.terminate()
    assert code == 0
    assert "stopped" in out
    assert not uds.exists()


def test_missing_repository_is_a_clear_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "headrace", "serve", "--grpc-port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("HEADRACE_")},
    )
    assert result.returncode == 2
    assert "--model-repository" in result.stderr


def _pending_requests(metrics_url: str) -> int:
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    match = re.search(
        r'headrace_inference_pending_request_count\{[^}]*model="slow"[^}]*\} (\S+)', text
    )
    return int(float(match.group(1))) if match else 0


def test_sigterm_answers_every_request_in_flight_then_exits_zero(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    onnx_models.write_model(repo, "slow", onnx_models.slow_matmul(size=384, repeats=12))
    serving = ServeProcess(
        ["--model-repository", str(repo), "--grpc-port", "0", "--metrics-port", "0"]
    )
    x = np.ones((384, 384), np.float32) / 384
    results: dict[int, object] = {}
    connected = threading.Barrier(9)

    def call(i: int) -> None:
        with Client(serving.address) as client:
            client.is_server_live()  # connected before the requests go out together
            connected.wait(30)
            try:
                results[i] = client.infer("slow", {"x": x}, request_id=str(i)).outputs["y"]
            except Exception as error:  # recorded and asserted on below
                results[i] = error

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    connected.wait(30)
    with Client(serving.address) as client:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            # Every request has reached the server: queued, running or done.
            dispatched = client.model_statistics("slow").model_stats[0].inference_stats.queue.count
            if dispatched + _pending_requests(serving.metrics_url) >= 8:
                break
            time.sleep(0.005)
        in_flight = 8 - client.model_statistics("slow").model_stats[0].execution_count
    assert in_flight >= 3, "the model ran too fast for this test to mean anything"
    code, _, err = serving.terminate()
    for thread in threads:
        thread.join(60)
    assert code == 0, err
    assert sorted(results) == list(range(8))
    for i, value in results.items():
        assert isinstance(value, np.ndarray), f"request {i}: {value!r}"
        assert value.shape == (384, 384)


def _thread_policies(pid: int) -> dict[int, tuple[str, int]]:
    """(name, scheduling policy) of every thread of ``pid``, by thread id."""
    policies = {}
    for entry in os.listdir(f"/proc/{pid}/task"):
        try:
            name = Path(f"/proc/{pid}/task/{entry}/comm").read_text().strip()
            policies[int(entry)] = (name, os.sched_getscheduler(int(entry)))
        except (ProcessLookupError, FileNotFoundError):  # ended meanwhile
            continue
    return policies


@pytest.mark.parametrize("policy", ["batch", "normal"])
def test_helper_threads_yield_to_the_event_loop(tmp_path: Path, policy: str) -> None:
    """Every thread of the server but the event loop's (the main thread) runs under the helper
    policy, SCHED_BATCH by default: gRPC's threads, the batcher's, those of a model loaded after
    start (its load runs on the loop's executor) and those a model without a batch dimension
    runs on (started by the loop's thread at its first request: they set the policy when they
    start). "normal" leaves all of them to the kernel's default."""
    repo = tmp_path / "models"
    onnx_models.write_model(repo, "first", onnx_models.mlp([4, 8, 2]))
    onnx_models.write_model(
        repo, "unbatched", onnx_models.mlp([4, 8, 2], seed=2), toml="max_batch_size = 0\n"
    )
    serving = ServeProcess(
        ["--model-repository", str(repo), "--grpc-port", "0", "--metrics-port", "-1"],
        env={"HEADRACE_HELPER_THREAD_POLICY": policy},
    )
    pid = serving.process.pid
    try:
        with Client(serving.address) as client:
            before = set(_thread_policies(pid))
            # Threads started after the sweep: a loaded model's batcher, an unbatched model's.
            onnx_models.write_model(repo, "later", onnx_models.mlp([4, 8, 2], seed=1))
            client.load_model("later")
            x = np.ones((2, 4), np.float32)
            for model in ("first", "later", "unbatched"):
                assert client.infer(model, {"x": x}).outputs["y"].shape == (2, 2)
            policies = _thread_policies(pid)
        helper = os.SCHED_BATCH if policy == "batch" else os.SCHED_OTHER
        assert policies.pop(pid)[1] == os.SCHED_OTHER  # the event loop keeps wake-up preemption
        names = [name for name, _ in policies.values()]
        # Two batched models: each batcher names its scheduler and worker threads.
        assert names.count("batch-scheduler") == 2 and names.count("batch-worker") == 2, names
        assert set(policies) - before, "loading a model started no thread"
        wrong = {t: np for t, np in policies.items() if np[1] not in (helper, os.SCHED_IDLE)}
        assert not wrong, f"threads not under the helper policy {policy}: {wrong}"
    finally:
        serving.terminate()
