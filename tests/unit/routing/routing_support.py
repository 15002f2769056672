"""Helpers of the routing tests: a fake clock that only moves when a test moves it, and configs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from headrace.routing import EndpointConfig, Endpoints, RoutingEvent, parse_endpoints


class FakeClock:
    """Monotonic nanoseconds and wall seconds, advanced by hand."""

    def __init__(self) -> None:
        self.ns = 1_000_000_000

    def __call__(self) -> int:
        return self.ns

    def wall(self) -> float:
        return 1_700_000_000.0 + self.ns / 1e9

    def advance(self, seconds: float) -> None:
        self.ns += int(seconds * 1e9)


def endpoint(**fields: Any) -> EndpointConfig:
    """One endpoint config from keyword fields (validated as the file would be)."""
    return parse_endpoints({"endpoint": [fields]}, "test")[0]


def variants(*specs: tuple[str, float]) -> list[dict[str, Any]]:
    return [{"name": n, "model": f"model_{n}", "weight": w} for n, w in specs]


MakeEndpoints = Callable[..., Endpoints]


def make_factory(clock: FakeClock) -> MakeEndpoints:
    def make(
        *configs: EndpointConfig, events: list[RoutingEvent] | None = None, **kw: Any
    ) -> Endpoints:
        options: dict[str, Any] = {"seed": "test", "clock_ns": clock, "wall_clock_s": clock.wall}
        if events is not None:
            options["on_event"] = events.append
        options.update(kw)
        return Endpoints(configs, **options)

    return make
