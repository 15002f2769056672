"""The feast store's replies, read off the connection by one hiredis reader (no Feast needed:
the hashes are written here in Feast's layout, byte for byte as ``feast materialize`` does —
test_feast_store checks that layout against the real SDK): a batch whose reply spans many socket
reads, an error reply in the middle of a batch (the connection is dropped, the next batch reads
right), and the fast path taken with the redis-py the tests install."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import redis.asyncio

from headrace.features import FeastStore, ViewConfig
from headrace.features.feast_layout import entity_keys, feature_field, timestamp_field
from headrace.features.resp import READ_BYTES, connection_stream
from headrace.features.store import StoreError
from headrace.wire import feast_value
from integration.features.redis_server import RedisServer

PROJECT = "demo"
USERS = 800
FLOATS = 60  # float_val features of view "wide_f"
INTS = 40  # int64_val features of view "wide_i"


def write_feast_layout(redis_server: RedisServer, db: int) -> tuple[np.ndarray, np.ndarray]:
    from google.protobuf.timestamp_pb2 import Timestamp

    rng = np.random.default_rng(4)
    floats = np.round(rng.normal(size=(USERS, FLOATS)), 3).astype(np.float32)
    ints = rng.integers(-5000, 5000, size=(USERS, INTS))
    stamp = Timestamp(seconds=int(time.time()) - 60).SerializeToString()
    client = redis_server.client(db)
    try:
        pipe = client.pipeline(transaction=False)
        names = entity_keys("user_id", "INT64", list(range(USERS)), PROJECT)
        for user, name in enumerate(names):
            fields = {timestamp_field("wide_f"): stamp, timestamp_field("wide_i"): stamp}
            for j in range(FLOATS):
                fields[feature_field("wide_f", f"f{j}")] = feast_value.Value(
                    float_val=float(floats[user, j])
                ).SerializeToString()
            for j in range(INTS):
                fields[feature_field("wide_i", f"i{j}")] = feast_value.Value(
                    int64_val=int(ints[user, j])
                ).SerializeToString()
            pipe.hset(name, mapping=fields)
        pipe.execute()
    finally:
        client.close()
    return floats, ints.astype(np.float32)


VIEWS = [
    ViewConfig(name="wide_f", entity="user_id", features=[f"f{j}" for j in range(FLOATS)]),
    ViewConfig(name="wide_i", entity="user_id", features=[f"i{j}" for j in range(INTS)]),
]


def test_a_batch_whose_reply_spans_many_socket_reads(
    redis_server: RedisServer, redis_db: int
) -> None:
    floats, ints = write_feast_layout(redis_server, redis_db)
    users = np.arange(USERS, dtype=np.int64)[::-1].copy()

    async def main() -> list[np.ndarray]:
        store = FeastStore(VIEWS, redis_server.url(redis_db), PROJECT)
        try:
            rows = await store.read({"user_id": users})
            assert all(r.found.all() and r.present.all() for r in rows)
            return [r.values for r in rows]
        finally:
            await store.close()

    got_floats, got_ints = asyncio.run(main())
    # Every field's reply is at least 9 bytes ($, length, CRLF, >= 3 value bytes, CRLF).
    assert USERS * (FLOATS + INTS) * 9 > 2 * READ_BYTES  # the reply takes several reads
    assert np.array_equal(got_floats, floats[users])
    assert np.array_equal(got_ints, ints[users])


def test_an_error_reply_mid_batch_fails_it_and_the_next_batch_reads_right(
    redis_server: RedisServer, redis_db: int
) -> None:
    floats, ints = write_feast_layout(redis_server, redis_db)
    (wrong,) = entity_keys("user_id", "INT64", [USERS + 1], PROJECT)
    client = redis_server.client(redis_db)
    client.set(wrong, b"not a hash")  # HMGET on it: a WRONGTYPE error reply
    client.close()
    bad = np.array([3, USERS + 1, 5, 7], np.int64)
    good = np.array([5, 3, 7], np.int64)

    async def main() -> list[np.ndarray]:
        store = FeastStore(VIEWS, redis_server.url(redis_db), PROJECT)
        try:
            with pytest.raises(StoreError, match="WRONGTYPE"):
                await store.read({"user_id": bad})
            rows = await store.read({"user_id": good})
            return [r.values for r in rows]
        finally:
            await store.close()

    got_floats, got_ints = asyncio.run(main())
    assert np.array_equal(got_floats, floats[good])
    assert np.array_equal(got_ints, ints[good])


def test_the_installed_redis_py_connection_gives_its_stream(redis_server: RedisServer) -> None:
    """Else every round trip falls back to redis-py's read_response per reply (slow, not
    wrong): a redis-py that moved its stream must fail here, not only in the benchmark."""

    async def main() -> None:
        client = redis.asyncio.Redis.from_url(redis_server.url())
        connection = await client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await connection.send_packed_command(b"*1\r\n$4\r\nPING\r\n", check_health=False)
            stream = connection_stream(connection)
            assert isinstance(stream, asyncio.StreamReader)
            assert await stream.readuntil(b"\r\n") == b"+PONG\r\n"
        finally:
            await connection.disconnect()
            await client.connection_pool.release(connection)
            await client.aclose()

    asyncio.run(main())


@pytest.mark.parametrize("query", ["", "?protocol=3"], ids=["resp2", "resp3"])
def test_wide_reads_take_whole_hashes_and_pick_the_same_rows(
    redis_server: RedisServer, redis_db: int, query: str
) -> None:
    """Asking for all 102 fields of 102-field hashes: from the second round trip on, HGETALL;
    hashes listing their fields in another order, holding one view only, or absent read the
    same as through HMGET. RESP2 (lists, the store's own choice) and RESP3 (maps, when the
    URL asks for it)."""
    floats, ints = write_feast_layout(redis_server, redis_db)
    client = redis_server.client(redis_db)
    (reordered, one_view) = entity_keys("user_id", "INT64", [10, 11], PROJECT)
    fields = client.hgetall(reordered)
    client.delete(reordered)
    client.hset(reordered, mapping=dict(reversed(list(fields.items()))))
    client.hdel(one_view, timestamp_field("wide_i"), *(feature_field("wide_i", f"i{j}")
                                                      for j in range(INTS)))  # fmt: skip
    client.close()
    users = np.array([3, 10, 11, USERS + 5, 3, 12, 10], np.int64)

    async def main() -> list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
        store = FeastStore(VIEWS, redis_server.url(redis_db) + query, PROJECT)
        reads = []
        try:
            for _ in range(3):
                rows = await store.read({"user_id": users})
                reads.append([(r.values, r.present, r.found) for r in rows])
            return reads
        finally:
            await store.close()

    redis_server.reset_stats()
    narrow, wide, again = asyncio.run(main())
    assert redis_server.command_calls("hmget") == len(users)
    assert redis_server.command_calls("hgetall") == 2 * len(users)
    for first, second, third in zip(narrow, wide, again, strict=True):
        for a, b, c in zip(first, second, third, strict=True):
            assert np.array_equal(a, b) and np.array_equal(a, c)
    (f_values, f_present, f_found), (i_values, i_present, i_found) = wide
    assert f_found.tolist() == [True, True, True, False, True, True, True]
    assert i_found.tolist() == [True, True, False, False, True, True, True]
    known = [0, 1, 2, 4, 5, 6]
    assert np.array_equal(f_values[known], floats[users[known]])
    assert f_present[known].all() and not f_present[3].any()
    assert np.array_equal(i_values[[0, 1, 4, 5, 6]], ints[users[[0, 1, 4, 5, 6]]])
    assert not i_present[[2, 3]].any()
