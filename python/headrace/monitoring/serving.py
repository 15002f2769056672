"""Drift monitoring on the serving path: one :class:`ServedDrift` per model version that ships a
reference profile (``<repo>/<model>/<version>/reference.json``, made by ``headrace profile``).

Where the work happens, and why:

* Counting: every executed batch's inputs and outputs go to ``ServedDrift.observe`` on the thread
  that ran the batch (a batcher worker, or an instance thread). The counting is C++ with the GIL
  released, into per-thread shards, so it costs a few ns per value and no lock that requests wait
  on. A window that fills by rows is closed by the thread whose batch filled it: a sweep of the
  shards (O(shards x bins), microseconds), never a statistic.
* Closing by time, statistics, gauges, alert transitions: one :class:`DriftWatcher` thread per
  engine calls :meth:`ServedDrift.check` every ``interval_s``. It polls (closes a window whose
  time is up), and when a window has closed it computes the report of the last window, sets the
  Prometheus gauges and decides whether an alert started. Requests never wait for this, and the
  event loop never runs it.
* Retraining triggers (webhook POST or command, report JSON as body/stdin) run on a thread of
  their own, with a timeout, so a slow receiver delays neither the watcher nor requests.

An alert *starts* when the last window's decision is ``alert`` and the previous window's was not.
A start fires the trigger unless it fired less than ``cooldown_s`` ago; every firing is logged and
counted in ``headrace_drift_trigger_firings_total{model, version, outcome}``.
"""

from __future__ import annotations

import json
import logging
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy.typing as npt
from prometheus_client import CollectorRegistry, Counter, Gauge

from headrace.config import DriftSettings
from headrace.errors import HeadraceError, InvalidArgumentError
from headrace.monitoring.drift import DriftConfig, DriftMonitor, DriftReport
from headrace.monitoring.profile import ReferenceProfile

log = logging.getLogger(__name__)

REFERENCE_FILE = "reference.json"
TRIGGER_TIMEOUT_S = 30.0
# Windows smaller than this are reported but never flagged (fewer rows when windows are smaller).
MIN_ROWS = 200

_DRIFT_LABELS = ("model", "version", "feature", "test")


def drift_config(settings: DriftSettings) -> DriftConfig:
    """The monitor's settings from a model's ``[drift]`` table."""
    min_rows = min(MIN_ROWS, settings.window_rows) if settings.window_rows else MIN_ROWS
    return DriftConfig(
        bins=settings.bins,
        window_rows=settings.window_rows,
        window_s=settings.window_s,
        windows_kept=settings.windows_kept,
        psi_warn=settings.psi_warn,
        psi_alert=settings.psi_alert,
        p_value=settings.p_value,
        correction=settings.correction,
        min_rows=max(1, min_rows),
    )


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
            "for a significant test after correction",
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
        self._lock = threading.Lock()

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
        for feature, test in seen:
            for gauge in (self.psi, self.statistic, self.p_value, self.detected):
                try:
                    gauge.remove(model, version, feature, test)
                except KeyError:
                    continue


def _gauge_value(value: float | None) -> float:
    return float("nan") if value is None else float(value)


class RetrainingTrigger:
    """Fires a webhook (HTTP POST of the report JSON) and/or a command (report JSON on stdin, no
    shell) when an alert starts, at most once per ``cooldown_s``; firings run on a thread."""

    def __init__(
        self,
        model: str,
        version: str,
        settings: DriftSettings,
        metrics: DriftMetrics | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model = model
        self.version = version
        self.webhook = settings.trigger_webhook
        self.command = settings.trigger_command
        self.cooldown_s = settings.cooldown_s
        self._metrics = metrics
        self._clock = clock
        self._last_fired: float | None = None
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    @property
    def configured(self) -> bool:
        return self.webhook is not None or self.command is not None

    def alert_started(self, report_json: str) -> bool:
        """An alert started: fire unless within the cooldown. Returns whether it fired."""
        if not self.configured:
            return False
        now = self._clock()
        with self._lock:
            if self._last_fired is not None and now - self._last_fired < self.cooldown_s:
                log.warning(
                    "drift alert on model %s version %s: trigger not fired, it fired %.0f s ago "
                    "(cooldown_s %g)",
                    self.model,
                    self.version,
                    now - self._last_fired,
                    self.cooldown_s,
                )
                return False
            self._last_fired = now
            thread = threading.Thread(
                target=self._fire,
                args=(report_json,),
                name=f"headrace-drift-trigger-{self.model}",
                daemon=True,
            )
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()
        return True

    def wait(self, timeout_s: float) -> bool:
        """Wait for firings in flight to finish; True if none is left."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in threads)

    def _fire(self, report_json: str) -> None:
        body = report_json.encode("utf-8")
        if self.webhook is not None:
            self._record("webhook", self.webhook, lambda: self._post(body))
        if self.command is not None:
            self._record("command", " ".join(self.command), lambda: self._run(body))

    def _record(self, kind: str, target: str, action: Callable[[], None]) -> None:
        try:
            action()
        except Exception as error:  # any failure of the receiver is logged and counted, no more
            outcome = "error"
            log.error(
                "drift trigger %s %s for model %s version %s failed: %s",
                kind,
                target,
                self.model,
                self.version,
                error,
            )
        else:
            outcome = "ok"
            log.warning(
                "drift trigger %s %s fired for model %s version %s",
                kind,
                target,
                self.model,
                self.version,
            )
        if self._metrics is not None:
            self._metrics.trigger_firings.labels(self.model, self.version, outcome).inc()

    def _post(self, body: bytes) -> None:
        assert self.webhook is not None
        request = urllib.request.Request(
            self.webhook,
            data=body,
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=TRIGGER_TIMEOUT_S) as response:
            status = int(response.status)
        if not 200 <= status < 300:
            raise RuntimeError(f"HTTP {status}")

    def _run(self, body: bytes) -> None:
        assert self.command is not None
        completed = subprocess.run(
            list(self.command),
            input=body,
            capture_output=True,
            timeout=TRIGGER_TIMEOUT_S,
            check=False,
        )
        if completed.returncode != 0:
            stderr = completed.stderr.decode("utf-8", "replace").strip()[-500:]
            raise RuntimeError(f"exit status {completed.returncode}: {stderr}")


class ServedDrift:
    """Drift of one served model version: its monitor (inputs and outputs are features of one
    profile), the gauges, the alert state and the retraining trigger.

    ``observe`` is called by whichever thread ran a batch; ``check`` by the watcher thread (or a
    test). ``clock`` (monotonic seconds) drives both windows and the trigger's cooldown.
    """

    def __init__(
        self,
        model: str,
        version: str,
        profile: ReferenceProfile,
        settings: DriftSettings,
        metrics: DriftMetrics | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.model = model
        self.version = version
        self.settings = settings
        self.config = drift_config(settings)
        self.monitor = DriftMonitor(profile, self.config, clock=clock)
        self.trigger = RetrainingTrigger(
            model, version, settings, metrics, clock if clock is not None else time.monotonic
        )
        self._metrics = metrics
        self._seen_windows = 0
        self._last_index = -1  # index of the newest closed window checked
        self._alerting = False
        self._check_lock = threading.Lock()
        self._observe_failed = False
        self.last_report: DriftReport | None = None

    @property
    def profile(self) -> ReferenceProfile:
        return self.monitor.profile

    def observe(
        self,
        inputs: Mapping[str, npt.NDArray[Any]],
        outputs: Mapping[str, npt.NDArray[Any]] | Sequence[npt.NDArray[Any]],
        output_names: Sequence[str] = (),
    ) -> None:
        """Count one executed batch. Never raises: a batch that does not fit the profile is
        skipped (logged once per version), since monitoring must not fail a request."""
        named_outputs = (
            outputs
            if isinstance(outputs, Mapping)
            else dict(zip(output_names, outputs, strict=True))
        )
        try:
            self.monitor.observe({**inputs, **named_outputs})
        except HeadraceError as error:
            if not self._observe_failed:
                self._observe_failed = True
                log.error(
                    "drift: model %s version %s: a batch could not be counted (%s); batches like "
                    "it are skipped",
                    self.model,
                    self.version,
                    error.message,
                )

    def native_counts(self, input_names: Sequence[str], output_names: Sequence[str]) -> Any:
        """The accumulator for a native runner to count into (C++, after each batch), or None
        when the profile needs Python (categorical codes) or lists other tensors or orders: the
        caller then counts in Python."""
        layout = [i.name for i in self.profile.inputs]
        if layout != [*input_names, *output_names]:
            return None
        if any(f.kind == "categorical" for f in self.profile.features):
            return None
        return self.monitor.accumulator

    def check(self) -> bool:
        """Close a window whose time is up; if windows closed since the last check, publish the
        last one's statistics and fire the trigger when an alert starts. True if any closed."""
        with self._check_lock:
            self.monitor.poll()
            closed = self.monitor.windows_closed
            if closed == self._seen_windows:
                return False
            self._seen_windows = closed
            # Every window closed since the last check, in order, so that an alert that starts
            # and ends between two checks is still seen to start.
            reports = self.monitor.window_reports(self._last_index)
            if not reports:
                return True
            self._last_index = (
                reports[-1].last_window if reports[-1].last_window is not None else -1
            )
            started = []
            for report in reports:
                alerting = report.decision() == "alert"
                if alerting and not self._alerting:
                    started.append(report)
                self._alerting = alerting
            report = reports[-1]
            self.last_report = report
            if self._metrics is not None:
                self._metrics.publish(self.model, self.version, report, self.config.psi_alert)
        for start in started:
            log.warning(
                "drift alert on model %s version %s, window %s: %s",
                self.model,
                self.version,
                start.last_window,
                ", ".join(start.flagged()),
            )
            self.trigger.alert_started(self.report_json(start))
        return True

    def report_json(self, report: DriftReport) -> str:
        body = report.to_dict()
        body.update(
            model=self.model,
            version=self.version,
            psi_warn=self.config.psi_warn,
            psi_alert=self.config.psi_alert,
            decision=report.decision(),
        )
        return json.dumps(body, allow_nan=False)

    def report(self, windows: int = 1) -> DriftReport:
        """The last ``windows`` closed windows against the reference (0: the open one only)."""
        if windows == 0:
            return self.monitor.report(0, include_open=True)
        return self.monitor.report(windows)

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.forget(self.model, self.version)


def reference_stamp(version_dir: Path) -> tuple[int, int] | None:
    """(mtime_ns, size) of the version's reference profile, None without one: a reload keeps a
    loaded version only while this is unchanged, so a new profile takes effect on reload."""
    try:
        stat = (version_dir / REFERENCE_FILE).stat()
    except FileNotFoundError:
        return None
    return stat.st_mtime_ns, stat.st_size


def load_served_drift(
    version_dir: Path,
    model: str,
    version: str,
    settings: DriftSettings,
    metrics: DriftMetrics | None,
) -> ServedDrift | None:
    """The version's drift monitoring, or None when it ships no reference profile."""
    path = version_dir / REFERENCE_FILE
    if not path.is_file():
        return None
    profile = ReferenceProfile.load(path)
    try:
        return ServedDrift(model, version, profile, settings, metrics)
    except InvalidArgumentError as error:
        raise InvalidArgumentError(f"{path}: {error.message}") from error


class DriftWatcher:
    """One thread per engine that checks every registered :class:`ServedDrift` each
    ``interval_s``; it runs while at least one is registered."""

    def __init__(self, interval_s: float = 0.25) -> None:
        self.interval_s = interval_s
        self._served: list[ServedDrift] = []
        self._condition = threading.Condition()
        self._thread: threading.Thread | None = None

    def register(self, served: ServedDrift) -> None:
        with self._condition:
            self._served.append(served)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="headrace-drift-watcher", daemon=True
                )
                self._thread.start()

    def unregister(self, served: ServedDrift) -> None:
        with self._condition:
            if served in self._served:
                self._served.remove(served)
            self._condition.notify_all()

    def _run(self) -> None:
        while True:
            with self._condition:
                if not self._served:
                    self._thread = None
                    return
                served = list(self._served)
            for item in served:
                try:
                    item.check()
                except Exception:  # one version's failure must not stop the others' checks
                    log.exception("drift check of model %s version %s", item.model, item.version)
            with self._condition:
                if self._served:
                    self._condition.wait(self.interval_s)
