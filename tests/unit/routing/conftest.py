"""Fixtures for the routing tests."""

from __future__ import annotations

import pytest

from unit.routing.routing_support import FakeClock, MakeEndpoints, make_factory


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_endpoints(clock: FakeClock) -> MakeEndpoints:
    return make_factory(clock)
