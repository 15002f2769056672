"""The redis store keeps its connection between round trips; one that the server closed while it
sat idle is replaced on the next lookup, which still answers (no error, no fallback)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from headrace.features import RedisStore
from integration.features.redis_server import RedisServer
from integration.features.test_redis_store import VIEWS, lookup_keys, push, write_model_dir


def test_a_connection_closed_by_the_server_while_idle_is_replaced(
    tmp_path: Path, redis_server: RedisServer, redis_db: int
) -> None:
    url = redis_server.url(redis_db)
    push(write_model_dir(tmp_path), url)
    keys = lookup_keys()

    async def main() -> None:
        store = RedisStore(VIEWS, url)
        try:
            first = await store.read(keys)
            killer = redis_server.client()
            try:
                # Every client but this one: the store's kept connection among them.
                assert killer.client_kill_filter(_type="normal", skipme=True) >= 1
            finally:
                killer.close()
            again = await store.read(keys)
            for before, after in zip(first, again, strict=True):
                assert np.array_equal(before.values, after.values, equal_nan=True)
                assert np.array_equal(before.found, after.found)
        finally:
            await store.close()

    asyncio.run(main())
