"""The drift watcher: one thread per engine that checks every registered ServedDrift (closes
windows whose time is up, computes statistics, sets gauges, fires triggers) off the request
path."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from headrace.monitoring.drift.quality import QualitySource, QualityWindow
from headrace.monitoring.drift.served import ServedDrift

log = logging.getLogger(__name__)


class DriftWatcher:
    """One thread per engine that checks every registered :class:`ServedDrift` each
    ``interval_s``; it runs while at least one is registered."""

    def __init__(self, interval_s: float = 0.25) -> None:
        self.interval_s = interval_s
        # The label-quality windows of the endpoint variants running a version (the engine's,
        # set once it has endpoints); None: quality is not judged.
        self.quality_of: QualitySource | None = None
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

    def _quality(self, served: ServedDrift) -> Sequence[QualityWindow]:
        source = self.quality_of
        if source is None or not served.quality.configured:
            return ()
        return source(served.model, served.version)

    def _run(self) -> None:
        while True:
            with self._condition:
                if not self._served:
                    self._thread = None
                    return
                served = list(self._served)
            for item in served:
                try:
                    item.check(self._quality(item))
                except Exception:  # one version's failure must not stop the others' checks
                    log.exception("drift check of model %s version %s", item.model, item.version)
            with self._condition:
                if self._served:
                    self._condition.wait(self.interval_s)
