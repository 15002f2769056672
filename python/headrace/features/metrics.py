"""Prometheus families of the feature joiner, registered once per registry (one per engine).

Every joiner takes labelled children from one :class:`FeatureMetrics`; nothing here starts a
thread. Families (``model``, ``version`` on each):

* ``headrace_feature_lookup_duration_seconds{store}`` — one store round trip (or in-memory
  lookup for the embedded store), histogram.
* ``headrace_feature_rows_total{view, result}`` — entity rows looked up: ``hit``, ``miss`` (no
  row), ``stale`` (older than ``max_age_s``).
* ``headrace_feature_defaults_total{view}`` — feature values served from defaults.
* ``headrace_feature_store_errors_total{store, reason}`` — ``error``, ``timeout``,
  ``breaker_open``: lookups that fell back to ``on_store_error``.
* ``headrace_feature_breaker_state{store}`` — 0 closed, 1 half-open, 2 open.
* ``headrace_feature_store_round_trips_total{store}`` and
  ``headrace_feature_store_lookups_total{store}`` — round trips to a remote store, and the
  requests' lookups they carried: their ratio is how far concurrent lookups were merged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# 25 µs .. ~0.8 s, doubling: an in-memory lookup to a timed-out round trip.
LOOKUP_BUCKETS_S = tuple(25e-6 * 2**i for i in range(16))
_LABELS = ("model", "version")


class FeatureMetrics:
    """The feature families of one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.lookup_duration = Histogram(
            "headrace_feature_lookup_duration_seconds",
            "Feature store round trip (or in-memory lookup) time",
            (*_LABELS, "store"),
            buckets=LOOKUP_BUCKETS_S,
            registry=registry,
        )
        self.rows = Counter(
            "headrace_feature_rows",
            "Entity rows looked up, by result (hit, miss, stale)",
            (*_LABELS, "view", "result"),
            registry=registry,
        )
        self.defaults = Counter(
            "headrace_feature_defaults",
            "Feature values served from defaults",
            (*_LABELS, "view"),
            registry=registry,
        )
        self.store_errors = Counter(
            "headrace_feature_store_errors",
            "Lookups that fell back to on_store_error, by reason",
            (*_LABELS, "store", "reason"),
            registry=registry,
        )
        self.round_trips = Counter(
            "headrace_feature_store_round_trips",
            "Round trips to a remote feature store (answered or failed)",
            (*_LABELS, "store"),
            registry=registry,
        )
        self.store_lookups = Counter(
            "headrace_feature_store_lookups",
            "Requests' lookups carried by round trips to a remote feature store",
            (*_LABELS, "store"),
            registry=registry,
        )
        self.breaker_state = Gauge(
            "headrace_feature_breaker_state",
            "Feature store breaker: 0 closed, 1 half-open, 2 open",
            (*_LABELS, "store"),
            registry=registry,
        )

    def for_model(
        self, model: str, version: str, store: str, views: tuple[str, ...]
    ) -> ModelFeatureMetrics:
        labels = (model, version)
        return ModelFeatureMetrics(
            lookup_duration=self.lookup_duration.labels(*labels, store),
            hits=tuple(self.rows.labels(*labels, v, "hit") for v in views),
            misses=tuple(self.rows.labels(*labels, v, "miss") for v in views),
            stale=tuple(self.rows.labels(*labels, v, "stale") for v in views),
            defaults=tuple(self.defaults.labels(*labels, v) for v in views),
            errors={
                reason: self.store_errors.labels(*labels, store, reason)
                for reason in ("error", "timeout", "breaker_open")
            },
            breaker_state=self.breaker_state.labels(*labels, store),
            round_trips=self.round_trips.labels(*labels, store),
            store_lookups=self.store_lookups.labels(*labels, store),
        )


@dataclass(frozen=True)
class ModelFeatureMetrics:
    """One model version's children (looked up once, so a request pays no label lookups)."""

    lookup_duration: Any
    hits: tuple[Any, ...]
    misses: tuple[Any, ...]
    stale: tuple[Any, ...]
    defaults: tuple[Any, ...]
    errors: dict[str, Any]
    breaker_state: Any
    round_trips: Any
    store_lookups: Any
