"""RESP commands packed here, for one pipelined round trip over a redis-py asyncio connection
(:meth:`headrace.features.redis.LoopClient.round_trip`).

redis-py's ``Pipeline`` builds a Python object per command and packs every argument on each
call; a batch of 32 ``HMGET`` of 11 fields then costs more CPU than the round trip itself. The
fields of a view never change, so their RESP encoding is made once and each command is a few
byte joins. The connection, its socket handling and the hiredis reply parser stay redis-py's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass


def bulk(value: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%b\r\n" % (len(value), value)


def pack_args(args: Sequence[bytes]) -> bytes:
    """RESP encoding of ``args`` without the array header (a command's constant tail)."""
    return b"".join(bulk(a) for a in args)


def pack_hmgets(keys: Sequence[bytes], packed_fields: bytes, fields: int) -> bytes:
    """``HMGET key <fields>`` for each key; ``packed_fields`` is ``pack_args(fields)``."""
    head = b"*%d\r\n$5\r\nHMGET\r\n" % (fields + 2)
    return b"".join(head + bulk(k) + packed_fields for k in keys)
