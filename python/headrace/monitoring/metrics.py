"""Prometheus metrics, prefixed ``headrace_`` and labelled by ``model`` and ``version``; the
request series (successes, failures, latency) also by ``endpoint`` and ``variant``: what the
client called and which of its variants answered (a plain model is its own endpoint and variant).

Latencies are histograms (not summaries) so p50/p95/p99 can be computed across replicas. Each
Engine owns its own registry, so several engines in one process (tests) never collide.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest

from headrace.monitoring.drift.gauges import DriftMetrics
from headrace.monitoring.drift.watcher import DriftWatcher
from headrace.monitoring.lifecycle_metrics import LifecycleMetrics
from headrace.monitoring.routing_metrics import RoutingMetrics

# 25 µs .. ~26 s, doubling: fine resolution where a small model's latency lives.
_FIRST_BUCKET_NS = 25_000
LATENCY_BUCKETS_S = tuple(_FIRST_BUCKET_NS * 2**i / 1e9 for i in range(21))
_INF_BUCKET = len(LATENCY_BUCKETS_S)
_LATENCY_BOUNDS = (*(repr(bound) for bound in LATENCY_BUCKETS_S), "+Inf")  # the `le` labels
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

_LABELS = ("model", "version")
REQUEST_LABELS = ("model", "version", "endpoint", "variant")


class VersionStatisticsSource(Protocol):
    name: str
    version_str: str

    def statistics(self) -> Any: ...


class RequestSeries:
    """The request series of one (model, version, endpoint, variant): counts kept as plain
    numbers by the request path and exported at scrape time -- successes, and the latency
    histogram (LATENCY_BUCKETS_S, doubling from 25 us, so a latency's bucket is the bit length
    of its multiple of 25 us: no Prometheus object, lock or bisect per request) -- and failure
    counters per status code (a cold path).

    Written by the thread that answers the request holding the engine's routing lock (the event
    loop, or a blocking caller), read at scrape time."""

    __slots__ = ("_failure", "duration_counts", "duration_sum_ns", "labels", "success")

    def __init__(self, metrics: Metrics, labels: tuple[str, str, str, str]) -> None:
        self.labels = labels
        self._failure = metrics.request_failure
        self.success = 0
        # One count per finite bucket, then +Inf; not cumulative (made so at scrape time).
        self.duration_counts = [0] * (len(LATENCY_BUCKETS_S) + 1)
        self.duration_sum_ns = 0

    def observe(self, latency_ns: int) -> None:
        """One successful request's latency (called with the routing lock held)."""
        self.success += 1
        self.duration_sum_ns += latency_ns
        # The smallest i with latency <= 25 us x 2^i: multiples of 25 us, rounded up, minus one
        # (comparisons rather than max/min: a builtin call costs more than the arithmetic).
        if latency_ns <= _FIRST_BUCKET_NS:
            self.duration_counts[0] += 1
            return
        bucket = ((latency_ns - 1) // _FIRST_BUCKET_NS).bit_length()
        self.duration_counts[bucket if bucket < _INF_BUCKET else _INF_BUCKET] += 1

    def failed(self, code: str) -> None:
        self._failure.labels(*self.labels, code).inc()


class Metrics:
    """The metric families one engine updates."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.request_failure = Counter(
            "headrace_inference_request_failure",
            "Failed inference requests",
            (*REQUEST_LABELS, "code"),
            registry=r,
        )
        self._series: dict[tuple[str, str, str, str], RequestSeries] = {}
        self._series_lock = threading.Lock()
        self._versions: dict[tuple[str, str], VersionStatisticsSource] = {}
        self._versions_lock = threading.Lock()
        r.register(_VersionCollector(self))
        self._collect_hooks: list[Callable[[], None]] = []
        self._hooks_lock = threading.Lock()
        # Drift gauges are set as windows close, by the watcher thread (never on a request).
        self.drift = DriftMetrics(r)
        self.drift_watcher = DriftWatcher()
        # Version transitions and the serving version per model, set as they happen.
        self.lifecycle = LifecycleMetrics(r)
        # Endpoint gauges are read from the routing state at scrape time; events count as they
        # happen (canary rollbacks and promotions, switches).
        self.routing = RoutingMetrics(r)

    def series(self, model: str, version: str, endpoint: str, variant: str) -> RequestSeries:
        """The request series of these labels (one object per label set; cache it)."""
        labels = (model, version, endpoint, variant)
        with self._series_lock:
            found = self._series.get(labels)
            if found is None:
                found = self._series[labels] = RequestSeries(self, labels)
            return found

    def all_series(self) -> list[RequestSeries]:
        with self._series_lock:
            return list(self._series.values())

    def track(self, version: VersionStatisticsSource) -> None:
        """Export ``version.statistics()`` at every scrape (kept by the scheduler itself)."""
        with self._versions_lock:
            self._versions[(version.name, version.version_str)] = version

    def untrack(self, version: VersionStatisticsSource) -> None:
        with self._versions_lock:
            key = (version.name, version.version_str)
            if self._versions.get(key) is version:
                del self._versions[key]

    def tracked(self) -> list[VersionStatisticsSource]:
        with self._versions_lock:
            return list(self._versions.values())

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


class _VersionCollector:
    """Execution statistics read from each model version at scrape time: counters the scheduler
    keeps cumulatively, and the batch-size histogram rebuilt exactly from its per-size counts."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        labels = list(_LABELS)
        # Counted by each request series and read at scrape time: no metric update per request.
        success = CounterMetricFamily(
            "headrace_inference_request_success",
            "Successful inference requests",
            labels=list(REQUEST_LABELS),
        )
        duration = HistogramMetricFamily(
            "headrace_inference_request_duration_seconds",
            "End-to-end request time inside the server (successful requests)",
            labels=list(REQUEST_LABELS),
        )
        for series in self._metrics.all_series():
            success.add_metric(list(series.labels), series.success)
            counts = list(series.duration_counts)  # a copy: requests keep counting meanwhile
            cumulative, latency_buckets = 0, []
            for le, in_bucket in zip(_LATENCY_BOUNDS, counts, strict=True):
                cumulative += in_bucket
                latency_buckets.append((le, cumulative))
            duration.add_metric(list(series.labels), latency_buckets, series.duration_sum_ns / 1e9)
        inference = CounterMetricFamily(
            "headrace_inference_count", "Rows inferred (batch dimension summed)", labels=labels
        )
        executions = CounterMetricFamily(
            "headrace_inference_exec_count", "Model executions (batches run)", labels=labels
        )
        queue = CounterMetricFamily(
            "headrace_inference_queue_duration_us",
            "Cumulative time requests spent queued",
            labels=labels,
        )
        compute = CounterMetricFamily(
            "headrace_inference_compute_infer_duration_us",
            "Cumulative model execution time",
            labels=labels,
        )
        pending = GaugeMetricFamily(
            "headrace_inference_pending_request_count",
            "Requests queued, not yet running",
            labels=labels,
        )
        shed = CounterMetricFamily(
            "headrace_inference_shed_requests",
            "Requests shed to meet the latency target",
            labels=labels,
        )
        expired = CounterMetricFamily(
            "headrace_inference_expired_requests",
            "Requests answered DEADLINE_EXCEEDED from the queue without running (doomed included)",
            labels=labels,
        )
        doomed = CounterMetricFamily(
            "headrace_inference_doomed_requests",
            "Queued requests dropped before their deadline: no batch could end before it",
            labels=labels,
        )
        deadline_refused = CounterMetricFamily(
            "headrace_inference_deadline_refused_requests",
            "Requests refused on arrival: deadline passed, or out of reach behind the queue",
            labels=labels,
        )
        cancelled = CounterMetricFamily(
            "headrace_inference_cancelled_requests",
            "Requests cancelled while queued",
            labels=labels,
        )
        rejected = CounterMetricFamily(
            "headrace_inference_rejected_requests",
            "Requests refused because the queue was full",
            labels=labels,
        )
        batch_size = HistogramMetricFamily(
            "headrace_inference_batch_size", "Rows per executed batch", labels=labels
        )
        for version in self._metrics.tracked():
            s = version.statistics()
            values = [version.name, version.version_str]
            inference.add_metric(values, s.inference_count)
            executions.add_metric(values, s.execution_count)
            queue.add_metric(values, s.queue_ns / 1000)
            compute.add_metric(values, s.compute_ns / 1000)
            pending.add_metric(values, s.pending_requests)
            shed.add_metric(values, s.shed_count)
            expired.add_metric(values, s.expired_count)
            doomed.add_metric(values, s.doomed_count)
            deadline_refused.add_metric(values, s.deadline_refused_count)
            cancelled.add_metric(values, s.cancelled_count)
            rejected.add_metric(values, s.rejected_count)
            buckets = []
            for bound in BATCH_SIZE_BUCKETS:
                count = sum(b.count for rows, b in s.batches.items() if rows <= bound)
                buckets.append((str(bound), count))
            buckets.append(("+Inf", sum(b.count for b in s.batches.values())))
            total_rows = sum(rows * b.count for rows, b in s.batches.items())
            batch_size.add_metric(values, buckets, total_rows)
        yield from (
            success,
            duration,
            inference,
            executions,
            queue,
            compute,
            pending,
            shed,
            expired,
            doomed,
            deadline_refused,
            cancelled,
            rejected,
            batch_size,
        )
