"""`headrace features push` then `headrace serve --served-log DIR` as real processes: the pushed
features fill a model's input for tritonclient, and what was served is in DIR after SIGTERM."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from headrace.features import read_served_log
from integration.features import served_repo
from integration.features.redis_server import RedisServer
from integration.features.triton import infer

SERVING_LINE = re.compile(r"serving gRPC on ([\d.]+):(\d+)")
REDIS_DB = 3


def headrace(*args: str) -> list[str]:
    return [sys.executable, "-m", "headrace", *args]


def test_push_then_serve_with_a_served_log(tmp_path: Path, redis_server: RedisServer) -> None:
    url = redis_server.url(REDIS_DB)
    client = redis_server.client(REDIS_DB)
    client.flushdb()
    client.close()
    repo = served_repo.write_repository(tmp_path, url)
    snapshots = repo / "scored_embedded"
    for file, view, entity in (("users.parquet", "user_stats", "user_id"),
                               ("items.parquet", "item_stats", "item_id")):  # fmt: skip
        pushed = subprocess.run(
            headrace("features", "push", str(snapshots / file), "--view", view,
                     "--entity", entity, "--redis", url),
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert pushed.returncode == 0, pushed.stderr
        assert f"of view '{view}' to {url}" in pushed.stdout
    log_dir = tmp_path / "served"
    process = subprocess.Popen(
        headrace("serve", "--model-repository", str(repo), "--grpc-port", "0",
                 "--metrics-port", "-1", "--served-log", str(log_dir)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
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
        triton = grpcclient.InferenceServerClient(address)
        inputs = served_repo.request(6, 42)
        y, _ = infer(triton, "scored", inputs, request_id="from-the-process")
        bare, _ = infer(triton, "bare", {"x": served_repo.expected_x(inputs)})
        triton.close()
        assert np.array_equal(y, bare)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
        assert process.returncode == 0, err[-2000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    # The log is closed on shutdown: every served row is in a finished file.
    table = read_served_log(log_dir, "scored").to_pydict()
    assert table["request_id"] == ["from-the-process"] * 6
    assert table["row"] == list(range(6))
    logged = np.array([table["user_stats.age"], table["user_stats.spend_30d"],
                       table["item_stats.ctr_7d"], table["amount"]], np.float32).T  # fmt: skip
    assert np.array_equal(logged, served_repo.expected_x(inputs))
    assert not read_served_log(log_dir, "bare").num_rows  # a model without features logs nothing


def test_features_push_errors_exit_1(tmp_path: Path) -> None:
    done = subprocess.run(
        headrace("features", "push", str(tmp_path / "none.parquet"), "--view", "v",
                 "--entity", "user_id", "--redis", "redis://127.0.0.1:1/0"),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1
    assert "headrace features push:" in done.stderr and "not found" in done.stderr
    usage = subprocess.run(headrace("features", "push"), capture_output=True, text=True,
                           timeout=120)  # fmt: skip
    assert usage.returncode == 2 and "--view" in usage.stderr
