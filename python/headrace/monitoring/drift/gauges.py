"""Prometheus gauges of drift: the last closed window's statistics per model, version, feature
and test, and the retraining trigger's firings."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge

from headrace.monitoring.drift.monitor import DriftReport
from headrace.monitoring.drift.quality import JudgedWindow

_DRIFT_LABELS = ("model", "version", "feature", "test")


class DriftMetrics:
    """The drift families of one engine's registry, set as windows close."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.psi = Gauge(
            "headrace_drift_psi",
            "Population stability index of the last closed window against the reference",
            _DRIFT_LABELS,
            registry=registry,
        )
        self.statistic = Gauge(
            "headrace_drift_statistic",
            "Test statistic of the last closed window (binned KS D, or chi-square)",
            _DRIFT_LABELS,
            registry=registry,
        )
        self.p_value = Gauge(
            "headrace_drift_p_value",
            "p-value of the last closed window's test (before correction)",
            _DRIFT_LABELS,
            registry=registry,
        )
        self.detected = Gauge(
            "headrace_drift_detected",
            "1 when the last closed window drifted: test=psi for PSI >= psi_alert, test=ks|chi2 "
            "for a significant test after correction; feature=quality:<endpoint>/<variant> with "
            "test=accuracy|mae when its last judged label-quality window failed [drift]'s "
            "min_accuracy or max_mae",
            _DRIFT_LABELS,
            registry=registry,
        )
        self.trigger_firings = Counter(
            "headrace_drift_trigger_firings",
            "Retraining trigger firings, by outcome (ok, error)",
            ("model", "version", "outcome"),
            registry=registry,
        )
        self._published: dict[tuple[str, str], set[tuple[str, str]]] = {}
        self._quality_published: dict[tuple[str, str], set[tuple[str, str]]] = {}
        self._lock = threading.Lock()

    def publish_quality(self, model: str, version: str, judged: Sequence[JudgedWindow]) -> None:
        """``headrace_drift_detected`` for judged label-quality windows: 1 while failing."""
        for item in judged:
            window = item.window
            self.detected.labels(model, version, window.feature, window.metric).set(
                float(item.decision == "alert")
            )
            with self._lock:
                seen = self._quality_published.setdefault((model, version), set())
                seen.add((window.feature, window.metric))

    def publish(self, model: str, version: str, report: DriftReport, psi_alert: float) -> None:
        seen: set[tuple[str, str]] = set()
        for f in report.features:
            self.psi.labels(model, version, f.name, "psi").set(_gauge_value(f.psi))
            self.detected.labels(model, version, f.name, "psi").set(
                float(f.psi is not None and report.enough_rows and f.psi >= psi_alert)
            )
            statistic = f.ks if f.test == "ks" else f.chi2
            self.statistic.labels(model, version, f.name, f.test).set(_gauge_value(statistic))
            self.p_value.labels(model, version, f.name, f.test).set(_gauge_value(f.test_p))
            self.detected.labels(model, version, f.name, f.test).set(float(f.significant))
            seen.update({(f.name, "psi"), (f.name, f.test)})
        with self._lock:
            self._published[(model, version)] = seen

    def forget(self, model: str, version: str) -> None:
        """Drop a version's series (it stopped serving)."""
        with self._lock:
            seen = self._published.pop((model, version), set())
            seen |= self._quality_published.pop((model, version), set())
        for feature, test in seen:
            for gauge in (self.psi, self.statistic, self.p_value, self.detected):
                try:
                    gauge.remove(model, version, feature, test)
                except KeyError:
                    continue


def _gauge_value(value: float | None) -> float:
    return float("nan") if value is None else float(value)
