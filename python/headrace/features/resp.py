"""RESP for one pipelined round trip over a redis-py asyncio connection
(:meth:`headrace.features.redis.LoopClient.round_trip`): commands packed here, replies parsed here.

redis-py's ``Pipeline`` builds a Python object per command and packs every argument on each
call; a batch of 32 ``HMGET`` of 11 fields then costs more CPU than the round trip itself. The
fields of a view never change, so their RESP encoding is made once and each command is a few
byte joins.

Replies: redis-py's ``read_response`` runs five coroutine layers, a timeout check and a push
notification check per reply — for 32 replies about as much CPU as decoding them.
:func:`read_replies` instead feeds the bytes the connection's stream holds into one
``hiredis.Reader`` and takes every reply of the round trip out of it (one or a few socket reads
in all). The connection, its handshake (AUTH, SELECT, TLS) and its socket stay redis-py's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

# One socket read; a batch of 256 entities x 100 features is ~300 KB, read in a few.
READ_BYTES = 1 << 18


def bulk(value: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%b\r\n" % (len(value), value)


def pack_args(args: Sequence[bytes]) -> bytes:
    """RESP encoding of ``args`` without the array header (a command's constant tail)."""
    return b"".join(bulk(a) for a in args)


def pack_hmgets(keys: Sequence[bytes], packed_fields: bytes, fields: int) -> bytes:
    """``HMGET key <fields>`` for each key; ``packed_fields`` is ``pack_args(fields)``."""
    head = b"*%d\r\n$5\r\nHMGET\r\n" % (fields + 2)
    return b"".join([head + bulk(k) + packed_fields for k in keys])


def pack_key_commands(command: bytes, keys: Sequence[bytes]) -> bytes:
    """``<command> key`` for each key (HGETALL, HLEN)."""
    head = b"*2\r\n" + bulk(command)
    return b"".join([head + bulk(k) for k in keys])


def connection_stream(connection: Any) -> asyncio.StreamReader | None:
    """The stream a connected redis-py asyncio connection reads its replies from (its
    ``_reader``), or None where this redis-py keeps it elsewhere (the caller then reads reply
    by reply through ``read_response``). Tested against the redis-py the tests install."""
    stream = getattr(connection, "_reader", None)
    return stream if isinstance(stream, asyncio.StreamReader) else None


async def read_replies(stream: asyncio.StreamReader, count: int) -> list[Any]:
    """The next ``count`` replies on ``stream`` (bulk strings as bytes, nil as None, arrays as
    lists). Raises redis-py's ResponseError for an error reply (after reading them all),
    ConnectionError when the server closed the connection, InvalidResponse for bytes that are
    not RESP or more replies than commands sent (the connection must then be dropped)."""
    import hiredis
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import InvalidResponse, ResponseError

    reader = hiredis.Reader(protocolError=InvalidResponse, replyError=ResponseError)
    out: list[Any] = []
    while True:
        data = await stream.read(READ_BYTES)
        if not data:
            raise RedisConnectionError("Connection closed by server.")
        reader.feed(data)
        reply = reader.gets()
        while reply is not False:
            out.append(reply)
            if len(out) == count:
                if reader.has_data():
                    raise InvalidResponse(f"more than the {count} replies asked for")
                for item in out:
                    if isinstance(item, ResponseError):
                        raise item
                return out
            reply = reader.gets()
