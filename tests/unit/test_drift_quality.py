"""The [drift] label-quality rules: which closed windows are judged, when an alert starts, and
that a start goes down the drift alert path (gauge and retraining trigger)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from headrace.config import DriftSettings
from headrace.errors import ConfigError
from headrace.monitoring.drift import build_profile
from headrace.monitoring.drift.gauges import DriftMetrics
from headrace.monitoring.drift.quality import QualityAlerts, QualityWindow
from headrace.monitoring.drift.served import ServedDrift
from unit.test_drift_serving import _reference


def window(
    start: float, value: float, count: int = 50, kind: str = "classifier", closed: bool = True
) -> QualityWindow:
    return QualityWindow("e", "v", kind, value, count, start, 60.0, closed)


def test_closed_windows_with_enough_labels_are_judged_once_and_alerts_start_once() -> None:
    alerts = QualityAlerts(DriftSettings(min_accuracy=0.9, min_labels=30))
    judged, started = alerts.update([window(0, 0.95), window(60, 0.5), window(120, 0.4)])
    assert [j.decision for j in judged] == ["ok", "alert", "alert"]
    assert [s.window.window_start_s for s in started] == [60]  # the alert starts once
    # Seen windows are not judged again; an open one or one with too few labels is not judged.
    judged, started = alerts.update(
        [window(120, 0.4), window(180, 0.1, count=5), window(240, 0.1, closed=False)]
    )
    assert (judged, started) == ([], [])
    judged, started = alerts.update([window(300, 0.97), window(360, 0.2)])
    assert [j.decision for j in judged] == ["ok", "alert"]
    assert [s.window.window_start_s for s in started] == [360]  # recovered, then failed again


def test_regressors_are_held_to_max_mae_and_kinds_without_a_rule_never_alert() -> None:
    alerts = QualityAlerts(DriftSettings(max_mae=1.0, min_labels=1))
    judged, started = alerts.update(
        [window(0, 0.5, kind="regressor"), window(60, 1.5, kind="regressor"), window(120, 0.0)]
    )
    assert [j.decision for j in judged] == ["ok", "alert", "ok"]  # no min_accuracy: ok
    assert len(started) == 1 and started[0].window.metric == "mae"
    assert not QualityAlerts(DriftSettings()).configured


@pytest.mark.parametrize(
    ("key", "value"), [("min_accuracy", 1.5), ("max_mae", -1), ("min_labels", 0)]
)
def test_bad_quality_rules_are_refused(key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=key):
        DriftSettings.model_validate({key: value})


def test_a_quality_alert_sets_the_gauge_and_fires_the_trigger(tmp_path: Path) -> None:
    sink = tmp_path / "fired.jsonl"
    script = "import sys, pathlib; pathlib.Path(sys.argv[1]).write_text(sys.stdin.read())"
    settings = DriftSettings(
        bins=10,
        window_rows=0,
        window_s=0,
        min_accuracy=0.8,
        min_labels=10,
        trigger_command=(sys.executable, "-c", script, str(sink)),
    )
    registry = CollectorRegistry()
    served = ServedDrift(
        "m", "1", build_profile(_reference(), bins=10), settings, DriftMetrics(registry)
    )
    labels = {"model": "m", "version": "1", "feature": "quality:e/v", "test": "accuracy"}
    served.check([window(0, 0.9)])
    assert registry.get_sample_value("headrace_drift_detected", labels) == 0.0
    assert served.trigger.wait(20) and not sink.exists()
    served.check([window(0, 0.9), window(60, 0.25, count=40)])
    assert registry.get_sample_value("headrace_drift_detected", labels) == 1.0
    assert served.trigger.wait(20)
    report = json.loads(sink.read_text())
    assert (report["alert"], report["endpoint"], report["variant"]) == ("quality", "e", "v")
    assert (report["value"], report["count"], report["threshold"]) == (0.25, 40, 0.8)
    served.close()
    assert registry.get_sample_value("headrace_drift_detected", labels) is None
