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
counted in ``headrace_drift_trigger_firings_total{model, version, outcome}``. Label quality of the
endpoint variants running the version alerts the same way (``quality.py``): ``check`` takes their
windows from the watcher.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy.typing as npt

from headrace.config import DriftSettings
from headrace.errors import HeadraceError, InvalidArgumentError
from headrace.monitoring.drift.gauges import DriftMetrics
from headrace.monitoring.drift.monitor import DriftMonitor, DriftReport
from headrace.monitoring.drift.profile import ReferenceProfile
from headrace.monitoring.drift.quality import QualityAlerts, QualityWindow, quality_report_json
from headrace.monitoring.drift.triggers import RetrainingTrigger

log = logging.getLogger(__name__)

REFERENCE_FILE = "reference.json"


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
        self.config = settings
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
        self.quality = QualityAlerts(settings)

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

    def check(self, quality: Sequence[QualityWindow] = ()) -> bool:
        """Close a window whose time is up; if windows closed since the last check, publish the
        last one's statistics and fire the trigger when an alert starts. True if any closed.

        ``quality``: the label-quality windows of the variants running this version; closed ones
        are judged by the ``[drift]`` quality rules and alert alike."""
        if quality and self.quality.configured:
            self._check_quality(quality)
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

    def _check_quality(self, windows: Sequence[QualityWindow]) -> None:
        judged, started = self.quality.update(windows)
        if judged and self._metrics is not None:
            self._metrics.publish_quality(self.model, self.version, judged)
        for start in started:
            window = start.window
            log.warning(
                "quality alert on model %s version %s: endpoint %s variant %s %s %.4g over %d "
                "labelled rows in the window from %s",
                self.model,
                self.version,
                window.endpoint,
                window.variant,
                window.metric,
                window.value,
                window.count,
                window.window_start_s,
            )
            self.trigger.alert_started(
                quality_report_json(self.model, self.version, self.settings, start)
            )

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
