"""Fixtures for the routing wire tests: a real server over a repository with endpoints."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from conftest import RunningServer, start_server, stop_server
from headrace import wire
from integration.routing.routing_wire import write_repository


@pytest.fixture(scope="module")
def routing_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_repository(tmp_path_factory.mktemp("routing"))


@pytest.fixture(scope="module")
def routing_server(
    routing_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    state = tmp_path_factory.mktemp("routing-state")
    # Shadow copies are counted exactly in these tests: no time budget for shadow calls (it is
    # tested with a fake clock in unit/routing/test_shadow.py).
    running, thread = start_server(routing_repo, state_dir=state, shadow_budget_share=1.0)
    yield running
    stop_server(running, thread)


@pytest.fixture()
def feedback_stub(routing_server: RunningServer) -> Iterator[Any]:
    with grpc.insecure_channel(routing_server.address) as channel:
        yield wire.Stub(channel, wire.FEEDBACK_SERVICE)


@pytest.fixture()
def admin_stub(routing_server: RunningServer) -> Iterator[Any]:
    with grpc.insecure_channel(routing_server.address) as channel:
        yield wire.Stub(channel, wire.ADMIN_SERVICE)
