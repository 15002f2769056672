"""Prometheus families of the model lifecycle: transitions, the serving version, the registries.

``headrace_model_transitions_total{model,cause,outcome}`` counts what the audit trail records
(switched, drained, unloaded, failed, ignored); ``headrace_model_serving_version{model}`` is the
version that answers requests naming none (absent while nothing serves);
``headrace_registry_reachable{source}`` is 1 while a polled registry answers, 0 while it does not.
Updated when transitions happen, never per request.
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge


class LifecycleMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.transitions = Counter(
            "headrace_model_transitions",
            "Model version transitions by cause and outcome (as in the audit trail)",
            ("model", "cause", "outcome"),
            registry=registry,
        )
        self.serving_version = Gauge(
            "headrace_model_serving_version",
            "The version that answers requests that name no version",
            ("model",),
            registry=registry,
        )
        self.registry_reachable = Gauge(
            "headrace_registry_reachable",
            "1 while the model registry answers its polls, 0 while it does not",
            ("source",),
            registry=registry,
        )

    def transition(self, model: str, cause: str, outcome: str) -> None:
        self.transitions.labels(model, cause, outcome).inc()

    def serving(self, model: str, version: int | None) -> None:
        if version is None:
            with contextlib.suppress(KeyError):  # never set
                self.serving_version.remove(model)
            return
        self.serving_version.labels(model).set(version)

    def reachable(self, source: str, up: bool) -> None:
        self.registry_reachable.labels(source).set(1 if up else 0)
