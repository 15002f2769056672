"""Model quality from labels, judged with a version's drift: the ``[drift]`` quality rules.

Labels (delayed ground truth, sent with Feedback) are scored per endpoint variant in tumbling
windows by the router (``routing/feedback.py``: accuracy for a classifier, mean absolute error
for a regressor). The engine hands the windows of the variants that run a model version to that
version's drift monitoring as :class:`QualityWindow` rows (a :data:`QualitySource`); here a
closed window with at least ``min_labels`` rows is judged against ``min_accuracy`` /
``max_mae``. A window that fails starts a quality alert when the variant's previous judged
window did not: the same path as a drift alert (``headrace_drift_detected`` with
``feature="quality:<endpoint>/<variant>"`` and ``test`` "accuracy" or "mae", the log, the
retraining trigger with this window as the report).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from headrace.config import DriftSettings

QUALITY_FEATURE_PREFIX = "quality:"


@dataclass(frozen=True)
class QualityWindow:
    """One window of label quality of one endpoint variant running the version."""

    endpoint: str
    variant: str
    kind: str  # classifier (value = accuracy) | regressor (value = mean absolute error)
    value: float
    count: int  # labelled rows (elements for a regressor)
    window_start_s: float  # wall clock
    window_s: float
    closed: bool  # its time is over: no label can change it any more

    @property
    def metric(self) -> str:
        return "accuracy" if self.kind == "classifier" else "mae"

    @property
    def feature(self) -> str:
        """The ``feature`` label of the alert gauge."""
        return f"{QUALITY_FEATURE_PREFIX}{self.endpoint}/{self.variant}"


# (model, version) -> the label-quality windows of the variants that run it, oldest first.
QualitySource = Callable[[str, str], Sequence[QualityWindow]]


def threshold(settings: DriftSettings, window: QualityWindow) -> float | None:
    """The bound a window of this kind is held to, or None (no rule for its kind)."""
    return settings.min_accuracy if window.kind == "classifier" else settings.max_mae


def judge(settings: DriftSettings, window: QualityWindow) -> str:
    """ "alert" when a window with enough labels is past its kind's bound, else "ok"."""
    bound = threshold(settings, window)
    if bound is None or window.count < settings.min_labels or window.value != window.value:
        return "ok"
    if window.kind == "classifier":
        return "alert" if window.value < bound else "ok"
    return "alert" if window.value > bound else "ok"


@dataclass(frozen=True)
class JudgedWindow:
    window: QualityWindow
    decision: str


class QualityAlerts:
    """Which variants' quality alerts are on; windows are judged once, when closed.

    ``update`` is called by the drift watcher thread (serialized by a lock all the same).
    """

    def __init__(self, settings: DriftSettings) -> None:
        self.settings = settings
        self._judged_until: dict[tuple[str, str], float] = {}  # newest judged window start
        self._alerting: dict[tuple[str, str], bool] = {}
        self._lock = threading.Lock()

    @property
    def configured(self) -> bool:
        return self.settings.min_accuracy is not None or self.settings.max_mae is not None

    def update(
        self, windows: Sequence[QualityWindow]
    ) -> tuple[list[JudgedWindow], list[JudgedWindow]]:
        """Judge the closed windows not judged yet, in order: (newly judged, alerts started)."""
        judged: list[JudgedWindow] = []
        started: list[JudgedWindow] = []
        with self._lock:
            for window in windows:
                key = (window.endpoint, window.variant)
                if not window.closed or window.window_start_s <= self._judged_until.get(
                    key, float("-inf")
                ):
                    continue
                if window.count < self.settings.min_labels:
                    continue  # too few labels to say anything; the alert state stays
                self._judged_until[key] = window.window_start_s
                decision = judge(self.settings, window)
                item = JudgedWindow(window, decision)
                judged.append(item)
                alerting = decision == "alert"
                if alerting and not self._alerting.get(key, False):
                    started.append(item)
                self._alerting[key] = alerting
        return judged, started


def quality_report_json(
    model: str, version: str, settings: DriftSettings, item: JudgedWindow
) -> str:
    """What the retraining trigger receives for a quality alert."""
    window = item.window
    body = {
        "model": model,
        "version": version,
        "alert": "quality",  # a drift alert's report has "features" instead
        "decision": item.decision,
        "metric": window.metric,
        "threshold": threshold(settings, window),
        "min_labels": settings.min_labels,
        **asdict(window),  # endpoint, variant, kind (classifier | regressor), value, count, ...
    }
    return json.dumps(body, allow_nan=False)
