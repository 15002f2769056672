"""Drift monitoring end to end: `headrace profile` writes reference.json, a real server counts
served batches (ONNX Runtime through the Python runner, int8 through the native runner), and
shifted traffic moves the Prometheus gauges and the AdminService's GetDriftReport."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import RunningServer, start_server, stop_server
from headrace import wire
from headrace.cli import main as cli_main
from headrace.client import AsyncClient, Client
from headrace.monitoring.drift import ReferenceProfile
from headrace.monitoring.drift.model_profile import profile_model
from headrace.wire import admin as admin_pb2
from helpers import onnx_models

WINDOW_ROWS = 1000
# 10 bins keep PSI's small-sample bias ((bins - 1) / rows) well under psi_warn at 1000 rows;
# p_value 0.001 keeps a calm window's chance of a Bonferroni alert at 0.1%.
DRIFT_TOML = (
    f"[drift]\nbins = 10\nwindow_rows = {WINDOW_ROWS}\nwindow_s = 0\np_value = 0.001\n"
    'feature_names = ["f0", "f1", "f2", "f3", "f4", "f5", "f6", "f7"]\n'
)


def wait_for(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def drift_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("drift")
    repo = root / "models"
    onnx_models.write_model(repo, "tabular", onnx_models.mlp([8, 16, 2], seed=3), toml=DRIFT_TOML)
    onnx_models.write_model(repo, "plain", onnx_models.mlp([8, 16, 2]))
    onnx_models.write_model(
        repo, "typo", onnx_models.mlp([8, 16, 2]), toml="[drift]\nwindows_rows = 10\n"
    )
    source = onnx_models.write_model(repo / "src", "fp32", onnx_models.mlp([16, 32, 4], seed=7))
    quantized = subprocess.run(
        [sys.executable, "-m", "headrace", "quantize", str(source), "--out",
         str(repo / "tabular_int8" / "1")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert quantized.returncode == 0, quantized.stderr
    (repo / "tabular_int8" / "model.toml").write_text(
        "max_batch_size = 32\n[batching]\nmax_queue_delay_us = 1000\n"
        f"[drift]\nbins = 10\nwindow_rows = {WINDOW_ROWS}\nwindow_s = 0\np_value = 0.001\n"
    )
    import shutil

    shutil.rmtree(repo / "src")
    rng = np.random.default_rng(0)
    np.save(root / "train8.npy", rng.standard_normal((20_000, 8)).astype(np.float32))
    np.save(root / "train16.npy", rng.standard_normal((20_000, 16)).astype(np.float32))
    for model, data in (("tabular", "train8.npy"), ("tabular_int8", "train16.npy")):
        code = cli_main(
            ["profile", "--data", str(root / data), "--model-repository", str(repo),
             "--model", model, "--version", "1"]
        )  # fmt: skip
        assert code == 0
    return repo


def test_profile_cli_writes_inputs_and_outputs(drift_repo: Path) -> None:
    profile = ReferenceProfile.load(drift_repo / "tabular" / "1" / "reference.json")
    assert profile.feature_names == [f"f{i}" for i in range(8)] + ["y:0", "y:1"]
    assert [(i.name, i.columns) for i in profile.inputs] == [("x", 8), ("y", 2)]
    assert profile.rows == 20_000 and profile.bins == 10
    assert profile.metadata["outputs"] == "y"
    # the output profile is the model's answer on the data, not a copy of an input
    y = profile.feature("y:0")
    assert len(y.edges) == 9 and sum(y.counts) == 20_000
    assert y.edges != profile.feature("f0").edges
    int8 = ReferenceProfile.load(drift_repo / "tabular_int8" / "1" / "reference.json")
    assert int8.feature_names[-4:] == ["y:0", "y:1", "y:2", "y:3"]


def test_profile_cli_errors_clearly_for_an_unknown_model(drift_repo: Path, tmp_path: Path) -> None:
    data = tmp_path / "d.npy"
    np.save(data, np.zeros((10, 8), np.float32))
    done = subprocess.run(
        [sys.executable, "-m", "headrace", "profile", "--data", str(data),
         "--model-repository", str(drift_repo), "--model", "nope"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "nope" in done.stderr and "headrace profile:" in done.stderr
    assert not (drift_repo / "nope").exists()


@pytest.fixture(scope="module")
def drift_server(drift_repo: Path) -> Iterator[RunningServer]:
    running, thread = start_server(drift_repo)
    yield running
    stop_server(running, thread)


def scrape(running: RunningServer, name: str) -> dict[tuple[str, str, str], float]:
    """(model, feature, test) -> value of one drift gauge from /metrics."""
    url = f"http://127.0.0.1:{running.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                labels = sample.labels
                out[(labels["model"], labels["feature"], labels["test"])] = sample.value
    return out


def send(running: RunningServer, model: str, width: int, shift: float, seed: int) -> None:
    """One window of rows in requests of 25 rows, 32 in flight."""
    rng = np.random.default_rng(seed)
    batches = [
        (rng.standard_normal((25, width)) + shift).astype(np.float32)
        for _ in range(WINDOW_ROWS // 25)
    ]

    async def main() -> None:
        async with AsyncClient(running.address) as client:
            for start in range(0, len(batches), 32):
                await asyncio.gather(
                    *(client.infer(model, {"x": x}) for x in batches[start : start + 32])
                )

    asyncio.run(main())


def drift_report(running: RunningServer, model: str, windows: int = 1) -> Any:
    with grpc.insecure_channel(running.address) as channel:
        stub = wire.Stub(channel, wire.ADMIN_SERVICE)
        return stub.GetDriftReport(
            admin_pb2.GetDriftReportRequest(model=model, windows=windows), timeout=30
        )


def windows_reported(running: RunningServer, model: str) -> int:
    return int(drift_report(running, model, windows=1000).windows)


@pytest.mark.parametrize(("model", "width"), [("tabular", 8), ("tabular_int8", 16)])
def test_shifted_traffic_moves_gauges_and_report_calm_traffic_does_not(
    drift_server: RunningServer, model: str, width: int
) -> None:
    before = windows_reported(drift_server, model)
    send(drift_server, model, width, shift=0.0, seed=1)
    wait_for(lambda: windows_reported(drift_server, model) >= before + 1)
    first = "f0" if model == "tabular" else "x:0"
    wait_for(lambda: (model, first, "ks") in scrape(drift_server, "headrace_drift_detected"))
    detected = {k: v for k, v in scrape(drift_server, "headrace_drift_detected").items()
                if k[0] == model}  # fmt: skip
    assert detected and all(v == 0.0 for v in detected.values()), detected
    psi = {k: v for k, v in scrape(drift_server, "headrace_drift_psi").items() if k[0] == model}
    assert max(psi.values()) < 0.1, psi
    calm = drift_report(drift_server, model)
    assert calm.decision == "ok" and calm.rows >= WINDOW_ROWS and calm.enough_rows
    assert calm.psi_warn == pytest.approx(0.1) and calm.psi_alert == pytest.approx(0.2)
    assert calm.p_value == pytest.approx(0.001) and calm.correction == "bonferroni"
    assert all(f.decision == "ok" for f in calm.features)

    send(drift_server, model, width, shift=1.0, seed=2)
    wait_for(lambda: scrape(drift_server, "headrace_drift_detected")[(model, first, "ks")] == 1.0)
    shifted_psi = scrape(drift_server, "headrace_drift_psi")[(model, first, "psi")]
    assert shifted_psi >= 0.2
    assert scrape(drift_server, "headrace_drift_p_value")[(model, first, "ks")] < 1e-6
    report = drift_report(drift_server, model)
    assert report.decision == "alert"
    by_name = {f.name: f for f in report.features}
    assert by_name[first].decision == "alert" and by_name[first].significant
    assert by_name[first].test == "ks"
    assert by_name[first].statistic <= by_name[first].statistic_upper
    # prediction drift: the outputs are monitored too
    assert "y:0" in by_name
    if model == "tabular_int8":
        # counted in C++ by the batcher's DriftCountingRunner: no batch reached Python
        batcher = drift_server.server.engine.get_version(model).execution._batcher  # type: ignore[union-attr]
        assert batcher.drift_counted_batches > 0 and batcher.drift_skipped_batches == 0
    # two windows merged: the calm one and the shifted one
    both = drift_report(drift_server, model, windows=2)
    assert both.windows == 2 and both.rows >= 2 * WINDOW_ROWS


def test_drift_report_not_found_and_bad_drift_config_in_repository_index(
    drift_server: RunningServer,
) -> None:
    for model in ("plain", "nope", "typo"):
        with pytest.raises(grpc.RpcError) as info:
            drift_report(drift_server, model)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND, model
    with pytest.raises(grpc.RpcError) as plain:
        drift_report(drift_server, "plain")
    assert "no drift reference profile" in str(plain.value.details())
    with Client(drift_server.address) as client:
        index = {m.name: m for m in client.repository_index()}
    typo = index["typo"]
    assert typo.state == "UNAVAILABLE"
    assert "drift.windows_rows" in typo.reason
    assert str(Path("typo") / "model.toml") in typo.reason


def test_unbatched_version_counts_in_execute_and_profile_writes_beside_it(
    tmp_path: Path,
) -> None:
    from headrace import Engine

    repo = tmp_path / "models"
    onnx_models.write_model(
        repo, "unbatched", onnx_models.mlp([4, 8, 1]), toml="max_batch_size = 0\n" + (
            "[drift]\nbins = 10\nwindow_rows = 100\nwindow_s = 0\n"
        ),
    )  # fmt: skip
    data = tmp_path / "train.csv"
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((2000, 4))
    data.write_text("a,b,c,d\n" + "\n".join(",".join(f"{v:.6f}" for v in r) for r in rows))
    assert cli_main(
        ["profile", "--data", str(data), "--model-repository", str(repo), "--model", "unbatched"]
    ) == 0  # fmt: skip
    profile = ReferenceProfile.load(repo / "unbatched" / "1" / "reference.json")
    assert profile.feature_names == ["x:0", "x:1", "x:2", "x:3", "y:0"]
    engine = Engine.from_repository(repo)
    try:
        for _ in range(30):
            x = rng.standard_normal((5, 4)).astype(np.float32)
            engine.infer("unbatched", {"x": x})
        drift = engine.drift("unbatched")
        assert drift.monitor.windows_closed == 1  # 150 rows: one 100-row window closed
        assert drift.report(1).rows >= 100 and drift.report(0).rows == 150 - drift.report(1).rows
    finally:
        engine.close()


def test_a_new_profile_takes_effect_when_the_model_reloads(tmp_path: Path) -> None:
    from headrace import Engine
    from headrace.errors import NotFoundError

    repo = tmp_path / "models"
    onnx_models.write_model(repo, "m", onnx_models.mlp([4, 8, 1]))
    engine = Engine.from_repository(repo)
    try:
        with pytest.raises(NotFoundError, match="no drift reference profile"):
            engine.drift("m")
        data = np.random.default_rng(0).standard_normal((500, 4)).astype(np.float32)
        profile_model(repo, "m", None, data)
        engine.load_model("m")
        assert engine.drift("m").profile.rows == 500
        engine.infer("m", {"x": data[:7]})
        assert engine.drift("m").report(0).rows == 7
    finally:
        engine.close()


@pytest.mark.parametrize("trusted", [False, True])
def test_model_toml_triggers_run_only_from_a_trusted_repository(
    tmp_path: Path, trusted: bool
) -> None:
    from headrace import Engine

    repo = tmp_path / "models"
    onnx_models.write_model(
        repo,
        "m",
        onnx_models.mlp([4, 8, 1]),
        toml='[drift]\ntrigger_command = ["touch", "/tmp/planted"]\n',
    )
    data = np.random.default_rng(0).standard_normal((500, 4)).astype(np.float32)
    profile_model(repo, "m", None, data)
    engine = Engine.from_repository(repo, trust_model_triggers=trusted)
    try:
        trigger = engine.drift("m").trigger
        assert trigger.configured is trusted
        assert (trigger.command is not None) is trusted
    finally:
        engine.close()
