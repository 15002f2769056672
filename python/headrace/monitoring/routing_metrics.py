"""Prometheus metrics of endpoints: shadow agreement, bandit allocation, canary share, the active
blue-green colour, label quality per variant, the feedback memory; counters of routing events.

Gauges are read from the routing state when Prometheus scrapes (nothing per request); events
(rollbacks, promotions, switches, admin changes) are counted as the router reports them through
its ``on_event`` hook. The request, latency and error series of endpoints are the engine's request
series (``metrics.py``), labelled by ``endpoint`` and ``variant``.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from headrace.routing.bandit import (
    greedy_arm,
    thompson_bernoulli,
    thompson_gaussian,
    ucb1,
)

if TYPE_CHECKING:
    from headrace.routing import Endpoints, RoutingEvent
    from headrace.routing.runtime import EndpointRuntime

# Thompson sampling's allocation is the probability that each arm's posterior draw is the
# largest, estimated from this many draws per scrape (standard error under 1.2 points).
ALLOCATION_DRAWS = 2000
SHADOW_OUTCOMES = ("offered", "dropped", "completed", "errors", "mismatched")


def bandit_allocation(runtime: EndpointRuntime) -> list[float]:
    """The share of requests the bandit sends to each variant in its present state."""
    bandit = runtime.bandit
    assert bandit is not None
    settings = bandit.settings
    arms = bandit.arms
    counts = [a.count for a in arms]
    means = [a.mean for a in arms]
    if settings.algorithm == "thompson":
        # A generator of its own, seeded alike each time: the bandit's draws stay untouched and
        # the gauge is a function of the arms' state.
        rng = np.random.default_rng(0)
        if settings.reward == "bernoulli":
            successes = [m * c for m, c in zip(means, counts, strict=True)]
            failures = [c - s for c, s in zip(counts, successes, strict=True)]
            chosen = thompson_bernoulli(successes, failures, rng, ALLOCATION_DRAWS)
        else:
            variances = [a.variance if a.count > 1 else 0.0 for a in arms]
            chosen = thompson_gaussian(counts, means, variances, rng, ALLOCATION_DRAWS)
        shares = np.bincount(np.asarray(chosen, dtype=np.int64), minlength=len(arms))
        return [float(s) / ALLOCATION_DRAWS for s in shares]
    if settings.algorithm == "epsilon_greedy":
        allocation = [settings.epsilon / len(arms)] * len(arms)
        allocation[greedy_arm(counts, means)] += 1.0 - settings.epsilon
        return allocation
    allocation = [0.0] * len(arms)
    allocation[ucb1(counts, means, settings.ucb_c)] = 1.0
    return allocation


class RoutingMetrics:
    """The endpoint families of one engine's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ("endpoint", "variant")
        self.rollbacks = Counter(
            "headrace_endpoint_rollbacks",
            "Rollbacks: a canary candidate set to 0 % (by its gates or an operator), or a "
            "blue-green endpoint switched back; variant is the one rolled back from or to",
            labels,
            registry=registry,
        )
        self.promotions = Counter(
            "headrace_endpoint_promotions",
            "Canary candidates promoted to 100 %",
            labels,
            registry=registry,
        )
        self.events = Counter(
            "headrace_endpoint_events",
            "Routing events by kind (rollback, promotion, step, switch, created, updated, deleted)",
            ("endpoint", "kind"),
            registry=registry,
        )
        self._endpoints: Endpoints | None = None
        self._lock = threading.Lock()
        registry.register(_EndpointCollector(self))

    def watch(self, endpoints: Endpoints) -> None:
        """Read gauges from ``endpoints`` from now on."""
        with self._lock:
            self._endpoints = endpoints

    def watched(self) -> Endpoints | None:
        with self._lock:
            return self._endpoints

    def on_event(self, event: RoutingEvent) -> None:
        """The router's ``on_event`` hook: count the event."""
        self.events.labels(event.endpoint, event.kind).inc()
        if event.kind == "rollback":
            self.rollbacks.labels(event.endpoint, event.variant).inc()
        elif event.kind == "promotion":
            self.promotions.labels(event.endpoint, event.variant).inc()


class _EndpointCollector:
    def __init__(self, owner: RoutingMetrics) -> None:
        self._owner = owner

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        endpoints = self._owner.watched()
        agreement = GaugeMetricFamily(
            "headrace_shadow_agreement",
            "Share of a shadow's compared answers that agreed with the primary's",
            labels=["endpoint", "shadow"],
        )
        shadow_requests = CounterMetricFamily(
            "headrace_shadow_requests",
            "Shadow copies by outcome (offered, dropped: queue full, completed, errors, "
            "mismatched: not comparable)",
            labels=["endpoint", "shadow", "outcome"],
        )
        shadow_dropped = CounterMetricFamily(
            "headrace_shadow_dropped",
            "Shadow copies not sent, by reason: primary_busy (the primary had no idle instance: "
            "shadows yield to clients), over_budget (shadow calls used their share of time), "
            "queue_full (the shadow fell behind)",
            labels=["endpoint", "shadow", "reason"],
        )
        mirrored = GaugeMetricFamily(
            "headrace_shadow_mirrored_ratio",
            "Share of sampled requests whose copy the shadow answered (what agreement is "
            "measured over; the rest were dropped or failed)",
            labels=["endpoint", "shadow"],
        )
        allocation = GaugeMetricFamily(
            "headrace_bandit_allocation",
            "Share of requests a bandit endpoint sends to each variant now",
            labels=["endpoint", "variant"],
        )
        canary = GaugeMetricFamily(
            "headrace_canary_candidate_percent",
            "A canary endpoint's share of traffic for its candidate",
            labels=["endpoint", "variant"],
        )
        active = GaugeMetricFamily(
            "headrace_blue_green_active",
            "1 for the variant of a blue-green endpoint that answers now, else 0",
            labels=["endpoint", "variant"],
        )
        quality = GaugeMetricFamily(
            "headrace_variant_quality",
            "Model quality from labels in the latest window: accuracy (classifier) or mean "
            "absolute error (regressor)",
            labels=["endpoint", "variant", "kind"],
        )
        labelled = GaugeMetricFamily(
            "headrace_variant_quality_rows",
            "Labelled rows behind headrace_variant_quality",
            labels=["endpoint", "variant"],
        )
        remembered = GaugeMetricFamily(
            "headrace_feedback_remembered_requests",
            "Answered request ids that feedback can still refer to",
        )
        evicted = CounterMetricFamily(
            "headrace_feedback_evicted_requests",
            "Request ids dropped for room before their feedback window ended",
        )
        if endpoints is not None:
            for name in endpoints.names(include_models=True):
                try:
                    runtime = endpoints.get(name)
                except Exception:  # deleted since names() was read
                    continue
                self._endpoint(runtime, agreement, shadow_requests, allocation, canary, active)
                self._shadows(runtime, shadow_dropped, mirrored)
                self._quality(runtime, quality, labelled)
            store = endpoints.feedback_store
            remembered.add_metric([], len(store))
            evicted.add_metric([], store.evicted)
        yield from (
            agreement,
            shadow_requests,
            shadow_dropped,
            mirrored,
            allocation,
            canary,
            active,
            quality,
            labelled,
            remembered,
            evicted,
        )

    @staticmethod
    def _endpoint(
        runtime: EndpointRuntime,
        agreement: GaugeMetricFamily,
        shadow_requests: CounterMetricFamily,
        allocation: GaugeMetricFamily,
        canary: GaugeMetricFamily,
        active: GaugeMetricFamily,
    ) -> None:
        name = runtime.name
        for shadow in runtime.shadows:
            stats = shadow.stats
            if stats.compared:
                agreement.add_metric([name, shadow.name], stats.agreement)
            for outcome in SHADOW_OUTCOMES:
                shadow_requests.add_metric([name, shadow.name, outcome], getattr(stats, outcome))
        variants = [route.variant for route in runtime.routes]
        if runtime.bandit is not None:
            for variant, share in zip(variants, bandit_allocation(runtime), strict=True):
                allocation.add_metric([name, variant], share)
        if runtime.ramp is not None:
            canary.add_metric([name, variants[1]], runtime.ramp.candidate_percent)
        if runtime.config.strategy == "blue_green":
            for index, variant in enumerate(variants):
                active.add_metric([name, variant], 1.0 if index == runtime.active else 0.0)

    @staticmethod
    def _shadows(
        runtime: EndpointRuntime, dropped: CounterMetricFamily, mirrored: GaugeMetricFamily
    ) -> None:
        for shadow in runtime.shadows:
            stats = shadow.stats
            for reason, count in list(stats.dropped_by.items()):
                dropped.add_metric([runtime.name, shadow.name, reason], count)
            if stats.offered:
                mirrored.add_metric([runtime.name, shadow.name], stats.mirrored)

    @staticmethod
    def _quality(
        runtime: EndpointRuntime, quality: GaugeMetricFamily, labelled: GaugeMetricFamily
    ) -> None:
        for index, route in enumerate(runtime.routes):
            latest = runtime.quality.latest(index)
            if latest is None or not latest.count or math.isnan(latest.value):
                continue
            quality.add_metric([runtime.name, route.variant, latest.kind], latest.value)
            labelled.add_metric([runtime.name, route.variant], latest.count)
