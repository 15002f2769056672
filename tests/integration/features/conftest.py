"""Fixtures of the features integration tests: one redis-server for the session (real, Debian's
package, free port, persistence off)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from integration.features.redis_server import RedisServer


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.kill()


@pytest.fixture
def redis_db(redis_server: RedisServer) -> Iterator[int]:
    """A database of the session's server, emptied before the test (tests run one by one)."""
    client = redis_server.client(db=1)
    client.flushdb()
    client.close()
    yield 1
