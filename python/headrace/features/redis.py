"""The redis store: headrace's own Redis layout, read with one ``MGET`` per batch.

Layout (``headrace features push`` and :class:`RedisFeatureWriter` write it):

* ``hr:<view>:schema`` — JSON ``{"format": 1, "entity": ..., "key": "INT64"|"BYTES",
  "features": [...], "id": <crc32 of the feature list>}``.
* ``hr:<view>:i:<decimal key>`` (INT64 keys) or ``hr:<view>:b:<raw key bytes>`` (BYTES keys) —
  one row: ``<u32 schema id><i64 event time, µs since the epoch>`` then one little-endian float32
  per feature, in the schema's order. NaN marks a missing value.

A batch reads every view's schema and every (view, key) row in one ``MGET``. The schema id in
each row guards against a re-push that changed the columns: a row of another schema counts as
missing until it is rewritten. View names may not contain ``:`` (the config refuses them).
"""

from __future__ import annotations

import asyncio
import json
import zlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from headrace.features.config import ViewConfig
from headrace.features.keys import KeyKind, Keys, key_kind
from headrace.features.resp import connection_stream, pack_args, read_replies
from headrace.features.store import StoreError, ViewRows

if TYPE_CHECKING:
    import redis.asyncio

ROW_FORMAT = 1
_HEADER = np.dtype([("schema", "<u4"), ("event_us", "<i8")])


def _redis_connection_error() -> type[Exception]:
    from redis.exceptions import ConnectionError as RedisConnectionError

    return RedisConnectionError


def open_client(url: str) -> redis.asyncio.Redis:
    """A redis-py asyncio client (RESP2; hiredis parses replies) that fails at once
    instead of retrying, and has no socket timeouts of its own: the caller's timeout (which
    covers every read of a round trip at once, instead of a timer per reply) and breaker
    decide what a failure means."""
    try:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
    except ImportError as error:  # pragma: no cover - the features extra brings it
        raise StoreError(
            "the redis store needs redis-py (pip install headrace[features])"
        ) from error
    client: redis.asyncio.Redis = aioredis.Redis.from_url(
        url,
        # RESP2 (redis-py 8 asks for RESP3): every Redis speaks it, and hiredis parses a hash
        # (HGETALL) as a flat list ~10x faster than as a RESP3 map (a dict).
        protocol=2,
        retry=Retry(NoBackoff(), 0),
        retry_on_error=[],
        health_check_interval=0,
        socket_timeout=None,
        socket_connect_timeout=None,
    )
    return client


def describe(error: BaseException) -> str:
    """An error for a message: its type and text (redis-py's repr of its errors drops the
    text: ``server:ResponseError``)."""
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class LoopClient:
    """One asyncio client per event loop (redis-py's connections belong to the loop that
    opened them); made on first use.

    :meth:`round_trip` keeps the connections it used (at most one per round trip in flight)
    instead of handing them back to redis-py's pool each time: taking one from the pool costs
    a lock and its bookkeeping, more than packing a batch. The client's ``aclose`` closes them
    with the pool's own."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._client: redis.asyncio.Redis | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: list[Any] = []  # connections of ``_client`` kept for round trips

    def get(self) -> redis.asyncio.Redis:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._client = open_client(self.url)
            self._loop = loop
            self._idle = []
        return self._client

    async def round_trip(self, packed: bytes, replies: int) -> list[Any]:
        """Send ``packed`` (``replies`` read-only commands) on one connection and read every
        reply. On any error or cancellation the connection is dropped (it may hold unread
        replies). A kept connection that turns out dead (the server restarted or closed it
        while it sat idle) is replaced once, as the pool would have before handing it out:
        the commands only read, so sending them again is safe."""
        client = self.get()
        if self._idle:
            connection = self._idle.pop()
            try:
                return await self._exchange(client, connection, packed, replies)
            except (ConnectionError, OSError, _redis_connection_error()):
                pass  # dropped already; a fresh connection below
        connection = await client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        return await self._exchange(client, connection, packed, replies)

    async def _exchange(
        self, client: redis.asyncio.Redis, connection: Any, packed: bytes, replies: int
    ) -> list[Any]:
        try:
            await connection.send_packed_command(packed, check_health=False)
            stream = connection_stream(connection)
            if stream is not None:  # every reply through one hiredis reader (resp module)
                out = await read_replies(stream, replies)
            else:
                out = [await connection.read_response() for _ in range(replies)]
        except BaseException:
            await connection.disconnect(nowait=True)
            await client.connection_pool.release(connection)
            raise
        if self._client is client:
            self._idle.append(connection)
        else:  # the client was closed or replaced meanwhile
            await connection.disconnect(nowait=True)
        return out

    async def close(self) -> None:
        client, self._client = self._client, None
        self._idle = []
        if client is not None and self._loop is asyncio.get_running_loop():
            await client.aclose()


def schema_key(view: str) -> bytes:
    return f"hr:{view}:schema".encode()


def row_keys(view: str, keys: Keys) -> list[bytes]:
    """The Redis keys of one view's rows."""
    if keys.dtype == np.int64:
        prefix = f"hr:{view}:i:"
        return [f"{prefix}{k}".encode() for k in keys.tolist()]
    head = f"hr:{view}:b:".encode()
    return [head + k for k in keys.tolist()]


def schema_id(features: Sequence[str]) -> int:
    return zlib.crc32(json.dumps(list(features)).encode())


def encode_schema(entity: str, kind: KeyKind, features: Sequence[str]) -> bytes:
    return json.dumps(
        {
            "format": ROW_FORMAT,
            "entity": entity,
            "key": kind,
            "features": list(features),
            "id": schema_id(features),
        }
    ).encode()


def encode_rows(
    features: int, values: npt.NDArray[np.float32], event_time_s: npt.NDArray[np.float64], sid: int
) -> list[bytes]:
    """Rows as stored: header then ``features`` float32 each."""
    rows = np.zeros(len(values), dtype=[("h", _HEADER), ("v", "<f4", (features,))])
    rows["h"]["schema"] = sid
    rows["h"]["event_us"] = np.round(event_time_s * 1e6).astype(np.int64)
    rows["v"] = values
    data = rows.tobytes()
    size = rows.dtype.itemsize
    return [data[i * size : (i + 1) * size] for i in range(len(values))]


class _Schema:
    """A parsed schema and where each of a view's features sits in its rows."""

    def __init__(self, raw: bytes, view: ViewConfig) -> None:
        try:
            parsed = json.loads(raw)
            names = [str(f) for f in parsed["features"]]
            self.id = int(parsed["id"])
            self.kind = str(parsed["key"])
        except (ValueError, KeyError, TypeError) as error:
            raise StoreError(f"view '{view.name}': unreadable {schema_key(view.name)!r}") from error
        self.raw = raw
        self.width = len(names)
        self.row_bytes = _HEADER.itemsize + 4 * self.width
        # A row as stored, read in place: header fields then the values.
        self.dtype = np.dtype([("schema", "<u4"), ("event_us", "<i8"), ("v", "<f4", (self.width,))])
        where = {name: i for i, name in enumerate(names)}
        self.columns = np.array([where.get(f, -1) for f in view.features], dtype=np.intp)
        self.known = self.columns >= 0
        # The usual case: the view asks for the pushed columns, in the pushed order.
        self.identity = list(view.features) == names


class RedisStore:
    """headrace's layout in Redis (module docstring); one MGET per batch for all views."""

    kind = "redis"
    remote = True

    def __init__(self, views: Sequence[ViewConfig], url: str) -> None:
        self._views = list(views)
        self._client = LoopClient(url)
        self._schemas: dict[str, _Schema] = {}
        self._packed_schema_keys = pack_args([schema_key(v.name) for v in self._views])
        # Per view: the RESP bulk string of an INT64 row key, less its length and key text.
        self._templates: list[tuple[ViewConfig, bytes, int]] = []
        for view in self._views:
            head = f"hr:{view.name}:i:".encode()
            template = b"$%d\r\n" + head.replace(b"%", b"%%") + b"%b\r\n"
            self._templates.append((view, template, len(head)))

    async def read(self, keys: Mapping[str, Keys]) -> list[ViewRows]:
        packed = self._pack(keys)
        try:
            (raw,) = await self._client.round_trip(packed, 1)
        except Exception as error:
            raise StoreError(f"redis {self._client.url}: {describe(error)}") from error
        out = []
        start = len(self._views)
        for index, view in enumerate(self._views):
            end = start + len(keys[view.entity])
            out.append(self._decode(view, raw[index], raw[start:end]))
            start = end
        return out

    def _pack(self, keys: Mapping[str, Keys]) -> bytes:
        """One ``MGET``: every view's schema key, then each view's row keys. A key's text is
        made once per entity input, then placed into each view's bulk-string template."""
        texts: dict[str, list[bytes]] = {}
        parts = [self._packed_schema_keys]
        count = len(self._views)
        for view, template, head_length in self._templates:
            view_keys = keys[view.entity]
            count += len(view_keys)
            if view_keys.dtype != np.int64:
                parts.append(pack_args(row_keys(view.name, view_keys)))
                continue
            text = texts.get(view.entity)
            if text is None:
                text = texts[view.entity] = [b"%d" % k for k in view_keys.tolist()]
            parts.append(b"".join([template % (head_length + len(t), t) for t in text]))
        return b"*%d\r\n$4\r\nMGET\r\n%b" % (count + 1, b"".join(parts))

    def _schema(self, view: ViewConfig, raw: bytes) -> _Schema:
        schema = self._schemas.get(view.name)
        if schema is None or schema.raw != raw:
            schema = _Schema(raw, view)
            self._schemas[view.name] = schema
        return schema

    def _decode(self, view: ViewConfig, raw_schema: Any, raw: list[Any]) -> ViewRows:
        n = len(raw)
        if raw_schema is None:
            return ViewRows.empty(n, len(view.features))  # the view was never pushed
        schema = self._schema(view, raw_schema)
        if n and None not in raw and set(map(len, raw)) == {schema.row_bytes}:
            # The usual case: every key has a row of this schema's size. One buffer, one
            # structured view over it, no copy.
            table = np.frombuffer(b"".join(raw), schema.dtype)
            if (table["schema"] == schema.id).all():
                stored = table["v"]
                if schema.identity:
                    picked = stored
                else:
                    picked = np.full((n, len(view.features)), np.nan, np.float32)
                    picked[:, schema.known] = stored[:, schema.columns[schema.known]]
                present = ~np.isnan(picked)
                return ViewRows(picked, present, np.ones(n, np.bool_), table["event_us"] / 1e6)
        return self._decode_mixed(view, schema, raw)

    def _decode_mixed(self, view: ViewConfig, schema: _Schema, raw: list[Any]) -> ViewRows:
        """Rows absent, of another size or of another schema among the rows of this one."""
        n = len(raw)
        size = schema.row_bytes
        # Rows of the wrong size (another schema's) or absent are left out, then placed back.
        rows = [r for r in raw if r is not None and len(r) == size]
        whole = len(rows) == n
        if whole:
            found = np.ones(n, np.bool_)
        else:
            found = np.fromiter(
                (r is not None and len(r) == size for r in raw), dtype=np.bool_, count=n
            )
        at = np.flatnonzero(found)  # where each of ``rows`` goes
        table = np.frombuffer(b"".join(rows), np.uint8).reshape(len(rows), size)
        header = table[:, : _HEADER.itemsize].copy().view(_HEADER)[:, 0]
        stored = table[:, _HEADER.itemsize :].copy().view("<f4")
        current = header["schema"] == schema.id
        if not current.all():
            found[at[~current]] = False
            stored[~current] = np.nan
        if schema.identity:
            picked = stored
        else:
            picked = np.full((len(rows), len(view.features)), np.nan, np.float32)
            picked[:, schema.known] = stored[:, schema.columns[schema.known]]
        event_time = np.where(current, header["event_us"] / 1e6, np.nan)
        if not whole:
            spread = np.full((n, len(view.features)), np.nan, np.float32)
            spread[at] = picked
            picked = spread
            times = np.full(n, np.nan)
            times[at] = event_time
            event_time = times
        present = ~np.isnan(picked)
        return ViewRows(picked, present, found, event_time)

    async def ping(self) -> None:
        try:
            await self._client.get().ping()
        except Exception as error:
            raise StoreError(f"redis {self._client.url}: {describe(error)}") from error

    def entity_datatype(self, entity: str) -> str | None:
        return None

    async def close(self) -> None:
        await self._client.close()


class RedisFeatureWriter:
    """Writes views in headrace's layout (rows first, then the schema, so a new view appears
    whole). ``chunk_rows`` bounds one MSET; ``timeout_s`` bounds each command (the client has
    no socket timeout of its own)."""

    def __init__(self, url: str, chunk_rows: int = 2000, timeout_s: float = 30.0) -> None:
        self._client = LoopClient(url)
        self._chunk_rows = chunk_rows
        self._timeout_s = timeout_s

    async def write(
        self,
        view: str,
        entity: str,
        features: Sequence[str],
        keys: Keys,
        values: npt.NDArray[np.float32],
        event_time_s: npt.NDArray[np.float64] | None = None,
    ) -> int:
        """Store ``values[i]`` (one float32 per feature; NaN = missing) as the row of
        ``keys[i]``; ``event_time_s`` defaults to now. Returns the rows written."""
        if ":" in view:
            raise ValueError(f"view name {view!r} may not contain ':'")
        values = np.asarray(values, dtype=np.float32)
        if values.shape != (len(keys), len(features)):
            raise ValueError(f"values are {values.shape}, expected {(len(keys), len(features))}")
        if event_time_s is None:
            event_time_s = np.full(len(keys), _now_s())
        event_time_s = np.where(np.isnan(event_time_s), _now_s(), event_time_s)
        sid = schema_id(features)
        client = self._client.get()
        for start in range(0, len(keys), self._chunk_rows):
            stop = start + self._chunk_rows
            names = row_keys(view, keys[start:stop])
            rows = encode_rows(len(features), values[start:stop], event_time_s[start:stop], sid)
            async with asyncio.timeout(self._timeout_s):
                await client.mset(dict(zip(names, rows, strict=True)))
        kind = key_kind(keys) if len(keys) else "INT64"
        async with asyncio.timeout(self._timeout_s):
            await client.set(schema_key(view), encode_schema(entity, kind, features))
        return len(keys)

    async def close(self) -> None:
        await self._client.close()


def _now_s() -> float:
    import time

    return time.time()
