"""Retraining triggers: a webhook POST or a command (no shell) with the drift report JSON as
body / stdin, fired on its own thread with a timeout when an alert starts, at most once per
cooldown.

Trust rule: a trigger comes only from a model.toml that the server was told to trust; a command
runs with the server's rights, so whoever can write a model folder can run it.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable

from headrace.config import DriftSettings
from headrace.monitoring.drift.gauges import DriftMetrics

log = logging.getLogger(__name__)

TRIGGER_TIMEOUT_S = 30.0


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
