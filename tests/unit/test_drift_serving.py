"""Drift on the serving path without a server: [drift] settings, ServedDrift windows and gauges,
the retraining trigger (command and webhook) with its cooldown, on a fake clock."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from headrace.config import DriftSettings, load_model_config
from headrace.errors import ConfigError
from headrace.monitoring.drift import build_profile
from headrace.monitoring.drift.gauges import DriftMetrics
from headrace.monitoring.drift.served import ServedDrift

WINDOW_ROWS = 400


def wait_for(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


# ---- model.toml [drift] ---------------------------------------------------------------------


def test_drift_table_parses_into_typed_settings(tmp_path: Path) -> None:
    path = tmp_path / "model.toml"
    path.write_text(
        "[drift]\nbins = 20\nwindow_rows = 1000\nwindow_s = 5\nwindows_kept = 3\n"
        'feature_names = ["a", "b"]\ncategorical = ["b"]\ntop_k = 4\npsi_warn = 0.05\n'
        'psi_alert = 0.3\np_value = 0.01\ncorrection = "bh"\n'
        'trigger_webhook = "http://127.0.0.1:9/hook"\ntrigger_command = "retrain --now \'a b\'"\n'
        "cooldown_s = 60\n"
    )
    drift = load_model_config("m", path).drift
    assert drift == DriftSettings(
        bins=20,
        window_rows=1000,
        window_s=5.0,
        windows_kept=3,
        feature_names=("a", "b"),
        categorical=("b",),
        top_k=4,
        psi_warn=0.05,
        psi_alert=0.3,
        p_value=0.01,
        correction="bh",
        trigger_webhook="http://127.0.0.1:9/hook",
        trigger_command=("retrain", "--now", "a b"),
        cooldown_s=60.0,
    )
    assert load_model_config("m", _toml(tmp_path, "")).drift == DriftSettings()


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "model.toml"
    path.write_text(text)
    return path


def test_unknown_drift_key_is_an_error_naming_key_and_file(tmp_path: Path) -> None:
    path = _toml(tmp_path, "[drift]\nwindow_row = 10\n")
    with pytest.raises(ConfigError) as info:
        load_model_config("m", path)
    assert "drift.window_row" in info.value.message
    assert str(path) in info.value.message


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('correction = "holm"', "drift.correction"),
        ("p_value = 1.5", "drift.p_value"),
        ("psi_warn = 0.3\npsi_alert = 0.2", "drift.psi_alert"),
        ('trigger_webhook = "ftp://x"', "drift.trigger_webhook"),
        ("trigger_command = []", "drift.trigger_command"),
        ("bins = 0", "drift.bins"),
        ("cooldown_s = -1", "drift.cooldown_s"),
        ("window_rows = 0\nwindow_s = 0", "drift.window_rows"),
    ],
)
def test_bad_drift_values_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_model_config("m", _toml(tmp_path, f"[drift]\n{text}\n"))


# ---- ServedDrift and the trigger ------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _reference() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20_000, 3)).astype(np.float32)
    return {"x": x, "y": x.sum(axis=1, keepdims=True)}


def _served(
    settings: DriftSettings, registry: CollectorRegistry | None = None
) -> tuple[ServedDrift, FakeClock]:
    # 10 bins: PSI's small-sample bias is about (bins - 1) / rows, so 50 bins would read a calm
    # 400-row window as drifted (0.12 + noise); small test windows need few bins.
    # p_value 0.001: under Bonferroni a calm window still alerts with probability p_value, and
    # these tests must not depend on the seed; a one-sigma shift gives p < 1e-20 at 400 rows.
    settings = settings.model_copy(update={"bins": 10, "p_value": 0.001})
    clock = FakeClock()
    profile = build_profile(_reference(), bins=settings.bins)
    metrics = DriftMetrics(registry if registry is not None else CollectorRegistry())
    return ServedDrift("m", "1", profile, settings, metrics, clock=clock), clock


def _window(served: ServedDrift, shift: float, seed: int) -> None:
    """One window of batches (x shifted by ``shift``), as a model would have run them."""
    rng = np.random.default_rng(seed)
    for _ in range(WINDOW_ROWS // 50):
        x = (rng.standard_normal((50, 3)) + shift).astype(np.float32)
        served.observe({"x": x}, [x.sum(axis=1, keepdims=True)], ["y"])


def _traffic(served: ServedDrift, shift: float, seed: int) -> None:
    _window(served, shift, seed)
    assert served.check(), "the window did not close"


def test_gauges_follow_closed_windows() -> None:
    registry = CollectorRegistry()
    served, _ = _served(DriftSettings(window_rows=WINDOW_ROWS, window_s=0), registry)
    assert not served.check()  # nothing closed yet, nothing published
    assert (
        registry.get_sample_value(
            "headrace_drift_psi", {"model": "m", "version": "1", "feature": "x:0", "test": "psi"}
        )
        is None
    )
    _traffic(served, 0.0, seed=11)
    labels = {"model": "m", "version": "1", "feature": "x:0", "test": "ks"}
    assert registry.get_sample_value("headrace_drift_detected", labels) == 0.0
    calm_psi = registry.get_sample_value("headrace_drift_psi", {**labels, "test": "psi"})
    assert calm_psi is not None and calm_psi < 0.1
    _traffic(served, 1.0, seed=2)
    assert registry.get_sample_value("headrace_drift_detected", labels) == 1.0
    assert registry.get_sample_value("headrace_drift_p_value", labels) < 1e-6  # type: ignore[operator]
    # prediction drift: the output is a feature of its own
    assert registry.get_sample_value("headrace_drift_detected", {**labels, "feature": "y:0"}) == 1.0
    served.close()
    assert registry.get_sample_value("headrace_drift_psi", {**labels, "test": "psi"}) is None


def test_command_trigger_fires_once_per_cooldown_with_the_report(tmp_path: Path) -> None:
    sink = tmp_path / "reports.jsonl"
    script = (
        "import sys, pathlib; p = pathlib.Path(sys.argv[1]); "
        "p.open('a').write(sys.stdin.read().strip() + '\\n')"
    )
    registry = CollectorRegistry()
    settings = DriftSettings(
        window_rows=WINDOW_ROWS,
        window_s=0,
        trigger_command=(sys.executable, "-c", script, str(sink)),
        cooldown_s=300,
    )
    served, clock = _served(settings, registry)

    def fired() -> list[dict[str, object]]:
        if not sink.exists():
            return []
        return [json.loads(line) for line in sink.read_text().splitlines()]

    def firings(outcome: str) -> float:
        value = registry.get_sample_value(
            "headrace_drift_trigger_firings_total",
            {"model": "m", "version": "1", "outcome": outcome},
        )
        return value or 0.0

    _traffic(served, 0.0, seed=11)  # no alert: nothing fires
    assert served.trigger.wait(20) and fired() == []
    _traffic(served, 1.0, seed=2)  # an alert starts: fires
    assert served.trigger.wait(20)
    reports = fired()
    assert len(reports) == 1
    assert reports[0]["model"] == "m" and reports[0]["decision"] == "alert"
    assert "x:0" in [f["name"] for f in reports[0]["features"] if f["decision"] == "alert"]  # type: ignore[attr-defined]
    assert firings("ok") == 1.0
    _traffic(served, 1.0, seed=3)  # the alert goes on: no new start, no firing
    _traffic(served, 0.0, seed=4)  # it ends
    clock.now += 100
    _traffic(served, 1.0, seed=5)  # starts again inside the cooldown: suppressed
    assert served.trigger.wait(20) and len(fired()) == 1
    _traffic(served, 0.0, seed=6)
    clock.now += 300
    _traffic(served, 1.0, seed=7)  # the cooldown has passed: fires again
    assert served.trigger.wait(20)
    assert len(fired()) == 2
    assert firings("ok") == 2.0 and firings("error") == 0.0


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[bytes]]]:
    received: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/retrain", received
    server.shutdown()
    server.server_close()
    thread.join(10)


def test_webhook_trigger_posts_the_report_once_per_cooldown(
    webhook: tuple[str, list[bytes]],
) -> None:
    url, received = webhook
    registry = CollectorRegistry()
    settings = DriftSettings(
        window_rows=WINDOW_ROWS, window_s=0, trigger_webhook=url, cooldown_s=60
    )
    served, clock = _served(settings, registry)
    _traffic(served, 1.5, seed=2)
    assert served.trigger.wait(20)
    assert len(received) == 1
    body = json.loads(received[0])
    assert body["model"] == "m" and body["version"] == "1" and body["decision"] == "alert"
    assert body["psi_alert"] == 0.2 and body["rows"] >= WINDOW_ROWS
    assert body["p_value"] == 0.001 and body["correction"] == "bonferroni"
    _traffic(served, 0.0, seed=3)
    _traffic(served, 1.5, seed=4)  # restarts within the cooldown
    assert served.trigger.wait(20) and len(received) == 1
    _traffic(served, 0.0, seed=5)
    clock.now += 61
    _traffic(served, 1.5, seed=6)
    assert served.trigger.wait(20) and len(received) == 2
    labels = {"model": "m", "version": "1", "outcome": "ok"}
    assert registry.get_sample_value("headrace_drift_trigger_firings_total", labels) == 2.0


def test_failing_webhook_is_counted_as_an_error() -> None:
    registry = CollectorRegistry()
    # Port 9 (discard) on loopback refuses the connection.
    settings = DriftSettings(
        window_rows=WINDOW_ROWS, window_s=0, trigger_webhook="http://127.0.0.1:9/x"
    )
    served, _ = _served(settings, registry)
    _traffic(served, 1.5, seed=2)
    assert served.trigger.wait(40)
    labels = {"model": "m", "version": "1", "outcome": "error"}
    assert registry.get_sample_value("headrace_drift_trigger_firings_total", labels) == 1.0


def test_time_window_closes_on_check_and_a_batch_that_does_not_fit_is_skipped() -> None:
    served, clock = _served(DriftSettings(window_rows=0, window_s=10))
    served.observe({"x": np.zeros((5, 2), np.float32)}, [np.zeros((5, 1), np.float32)], ["y"])
    x = np.zeros((7, 3), np.float32)
    served.observe({"x": x}, [x[:, :1]], ["y"])
    assert not served.check()
    clock.now += 11
    assert served.check()
    report = served.monitor.report(1)
    assert report.rows == 7  # the misfit batch was skipped, not counted and not raised


def test_an_alert_that_starts_and_ends_between_two_checks_still_fires(tmp_path: Path) -> None:
    sink = tmp_path / "reports.jsonl"
    script = "import sys; open(sys.argv[1], 'a').write(sys.stdin.read().strip() + '\\n')"
    registry = CollectorRegistry()
    settings = DriftSettings(
        window_rows=WINDOW_ROWS,
        window_s=0,
        trigger_command=(sys.executable, "-c", script, str(sink)),
    )
    served, _ = _served(settings, registry)
    _window(served, 1.0, seed=21)  # alert
    _window(served, 0.0, seed=22)  # calm again, before the watcher looked
    assert served.check()
    assert served.trigger.wait(20)
    reports = [json.loads(line) for line in sink.read_text().splitlines()]
    assert [r["last_window"] for r in reports] == [0]
    assert reports[0]["decision"] == "alert"
    # the gauges show the newest window: calm
    labels = {"model": "m", "version": "1", "feature": "x:0", "test": "ks"}
    assert registry.get_sample_value("headrace_drift_detected", labels) == 0.0
