"""`headrace serve` as a real process for tests: started on free ports, its address and metrics
URL read from the line it prints, stopped with SIGTERM. A process of its own, so that what a test
measures of it (RSS, peak RSS) is the server's alone."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

SERVING_LINE = re.compile(r"serving gRPC on ([\d.]+):(\d+)")
METRICS_URL = re.compile(r"metrics on (http://\S+/metrics)")


class ServeProcess:
    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "headrace", "serve", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        assert self.process.stdout is not None
        deadline = time.monotonic() + 60
        self.address = ""
        self.metrics_url = ""
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            match = SERVING_LINE.search(line)
            if match:
                self.address = f"{match.group(1)}:{match.group(2)}"
                metrics = METRICS_URL.search(line)
                self.metrics_url = metrics.group(1) if metrics else ""
                break
        if not self.address:
            self.process.kill()
            _, err = self.process.communicate()
            raise AssertionError(f"headrace serve did not start:\n{err}")

    def terminate(self) -> tuple[int, str, str]:
        self.process.send_signal(signal.SIGTERM)
        out, err = self.process.communicate(timeout=60)
        return self.process.returncode, out, err

    def _status_kib(self, field: str) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise AssertionError(f"/proc/{self.process.pid}/status has no {field}")

    def rss_bytes(self) -> int:
        """Resident memory now."""
        return self._status_kib("VmRSS") * 1024

    def reset_peak_rss(self) -> None:
        """Start the peak (VmHWM) over from the resident memory now (Linux: clear_refs 5)."""
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")

    def peak_rss_bytes(self) -> int:
        """The most resident memory since start or the last reset_peak_rss."""
        return self._status_kib("VmHWM") * 1024
