"""Prometheus metrics, prefixed ``headrace_`` and labelled by ``model`` and ``version``.

Latencies are histograms (not summaries) so p50/p95/p99 can be computed across replicas. Each
Engine owns its own registry, so several engines in one process (tests) never collide.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.exposition import generate_latest

# 25 µs .. ~26 s, doubling: fine resolution where a small model's latency lives.
LATENCY_BUCKETS_S = tuple(25e-6 * 2**i for i in range(21))
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

_LABELS = ("model", "version")


class Metrics:
    """The metric families one engine updates."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.request_success = Counter(
            "headrace_inference_request_success",
            "Successful inference requests",
            _LABELS,
            registry=r,
        )
        self.request_failure = Counter(
            "headrace_inference_request_failure",
            "Failed inference requests",
            (*_LABELS, "code"),
            registry=r,
        )
        self.inference_count = Counter(
            "headrace_inference_count",
            "Rows inferred (batch dimension summed)",
            _LABELS,
            registry=r,
        )
        self.execution_count = Counter(
            "headrace_inference_exec_count", "Model executions (batches run)", _LABELS, registry=r
        )
        self.pending_requests = Gauge(
            "headrace_inference_pending_request_count",
            "Requests queued, not yet running",
            _LABELS,
            registry=r,
        )
        self.request_duration = Histogram(
            "headrace_inference_request_duration_seconds",
            "End-to-end request time inside the server",
            _LABELS,
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.queue_duration = Histogram(
            "headrace_inference_queue_duration_seconds",
            "Time queued before execution",
            _LABELS,
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.compute_duration = Histogram(
            "headrace_inference_compute_duration_seconds",
            "Model execution time per batch",
            _LABELS,
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.batch_size = Histogram(
            "headrace_inference_batch_size",
            "Rows per executed batch",
            _LABELS,
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.shed_requests = Counter(
            "headrace_inference_shed_requests",
            "Requests shed to meet the latency target",
            _LABELS,
            registry=r,
        )
        self.expired_requests = Counter(
            "headrace_inference_expired_requests",
            "Requests whose deadline passed in the queue",
            _LABELS,
            registry=r,
        )
        self._collect_hooks: list[Callable[[], None]] = []
        self._hooks_lock = threading.Lock()

    def add_collect_hook(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` before each exposition (to refresh gauges read from the core)."""
        with self._hooks_lock:
            self._collect_hooks.append(hook)

    def exposition(self) -> bytes:
        """The Prometheus text format of every family."""
        with self._hooks_lock:
            hooks = list(self._collect_hooks)
        for hook in hooks:
            hook()
        return generate_latest(self.registry)

    def serve(self, host: str, port: int) -> tuple[object, int]:
        """Serve ``/metrics`` on a daemon thread; returns (server, bound port)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server, int(server.server_port)
