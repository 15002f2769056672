"""The request-latency histogram counted as plain numbers and exported at scrape time: each
latency lands in the smallest bucket whose bound holds it, as Prometheus' own Histogram would."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from headrace.monitoring.metrics import LATENCY_BUCKETS_S, Metrics

LATENCIES_NS = [0, 1, 24_999, 25_000, 25_001, 50_000, 50_001, 99_999, 3_000_000, 26_214_400_000,
                26_214_400_001, 10**12]  # fmt: skip


def buckets(text: str, name: str) -> dict[str, float]:
    found = {}
    for le, value in re.findall(rf'{name}_bucket{{[^}}]*le="([^"]+)"[^}}]*}} (\S+)', text):
        found[le] = float(value)
    return found


def test_buckets_match_prometheus_histogram_on_every_boundary() -> None:
    metrics = Metrics()
    series = metrics.series("m", "1", "m", "m")
    reference_registry = CollectorRegistry()
    reference = Histogram(
        "ref", "reference", buckets=LATENCY_BUCKETS_S, registry=reference_registry
    )
    for latency_ns in LATENCIES_NS:
        series.observe(latency_ns)
        reference.observe(latency_ns / 1e9)
    ours = buckets(metrics.exposition().decode(), "headrace_inference_request_duration_seconds")
    theirs = buckets(generate_latest(reference_registry).decode(), "ref")
    assert len(ours) == len(LATENCY_BUCKETS_S) + 1
    assert {float(le): n for le, n in ours.items()} == {float(le): n for le, n in theirs.items()}
    text = metrics.exposition().decode()
    assert 'headrace_inference_request_duration_seconds_count{endpoint="m"' in text
    total = re.search(r"headrace_inference_request_duration_seconds_sum{[^}]*} (\S+)", text)
    assert total is not None and abs(float(total.group(1)) - sum(LATENCIES_NS) / 1e9) < 1e-6
    success = re.search(r"headrace_inference_request_success_total{[^}]*} (\S+)", text)
    assert success is not None and float(success.group(1)) == len(LATENCIES_NS)
