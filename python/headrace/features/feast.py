"""The feast store: reads the Redis that ``feast materialize`` fills, unchanged.

Feast keeps one hash per (entity key, project) holding every view that shares the join key (see
:mod:`headrace.features.feast_layout`). Feast's own server reads view by view; here the views of
one join key are read together — one ``HMGET`` per distinct entity key with every view's feature
fields and then their ``_ts`` fields — and all of a batch's ``HMGET`` go out in one write: one
round trip, its replies parsed by one hiredis reader (:func:`headrace.features.resp.read_replies`).
The feature values of a group of views are then joined into one buffer and decoded together
(:func:`headrace.features.feast_layout.decode_spans`): no Python object per value after hiredis.

Wide reads: Redis keeps a small hash (up to 128 fields of short values: a few Feast views) as a
listpack and finds each ``HMGET`` field by scanning it, so asking for most of a 102-field hash
costs ~59 µs of server time per key against ~10 µs for ``HGETALL`` (measured, redis 7). Each
round trip also asks the ``HLEN`` of one key per group; when a group asks for at least half of
the fields its hashes hold, the next round trips read them with ``HGETALL`` and pick the fields
here (by position while hashes list their fields in one order, as ``feast materialize`` writes
them). Replies come in RESP2: hiredis makes a RESP3 map into a dict at ~10x the cost of a list.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from operator import itemgetter
from typing import Any

import numpy as np

from headrace.errors import InternalError
from headrace.features.config import ViewConfig
from headrace.features.feast_layout import (
    ValueDecodeError,
    decode_spans,
    decode_timestamps,
    entity_keys,
    feature_field,
    timestamp_field,
)
from headrace.features.keys import Keys, key_kind
from headrace.features.redis import LoopClient, describe
from headrace.features.resp import pack_args, pack_hmgets, pack_key_commands
from headrace.features.store import StoreError, ViewRows


@dataclass(frozen=True)
class _Group:
    """Views read from the same hashes: one entity input, one Feast join key."""

    entity: str
    join_key: str
    views: tuple[int, ...]  # indices into the store's views
    fields: tuple[bytes, ...]  # every view's feature fields, then every view's _ts field
    packed_fields: bytes  # ``fields`` in RESP, made once
    offsets: tuple[int, ...]  # where each view's feature fields start in ``fields``
    features: int  # feature fields (the _ts fields follow them)
    names: tuple[str, ...]  # each feature field's name in errors


class FeastStore:
    """Feast's Redis layout (module docstring); one pipelined round trip per batch."""

    kind = "feast"
    remote = True

    def __init__(self, views: Sequence[ViewConfig], url: str, project: str) -> None:
        self._views = list(views)
        self._project = project
        self._client = LoopClient(url)
        by_key: dict[tuple[str, str], list[int]] = {}
        for index, view in enumerate(self._views):
            by_key.setdefault((view.entity, view.feast_join_key), []).append(index)
        groups = []
        for (entity, join_key), members in by_key.items():
            fields: list[bytes] = []
            names: list[str] = []
            offsets = []
            for index in members:
                view = self._views[index]
                offsets.append(len(fields))
                fields.extend(feature_field(view.name, f) for f in view.features)
                names.extend(f"feast view '{view.name}' '{f}'" for f in view.features)
            features = len(fields)
            fields.extend(timestamp_field(self._views[index].name) for index in members)
            groups.append(
                _Group(
                    entity,
                    join_key,
                    tuple(members),
                    tuple(fields),
                    pack_args(fields),
                    tuple(offsets),
                    features,
                    tuple(names),
                )
            )
        self._groups = groups
        # Per group: the field count of its hashes (HLEN of one, from the last round trip), and
        # what picks the group's fields, in order, out of a whole hash.
        self._hash_fields: list[int] = [0] * len(groups)
        self._pickers = [_picker(g.fields) for g in groups]
        # Per group: the field order of the last whole HGETALL list, and its picker.
        self._orders: list[tuple[list[bytes], Callable[[Any], Sequence[Any]]] | None] = [
            None
        ] * len(groups)

    def wide(self, group: int) -> bool:
        """True when group ``group`` is read with HGETALL (module docstring)."""
        return 0 < self._hash_fields[group] <= 2 * len(self._groups[group].fields)

    async def read(self, keys: Mapping[str, Keys]) -> list[ViewRows]:
        counts = []
        commands = []
        firsts = []
        wide = [self.wide(g) for g in range(len(self._groups))]
        for group, whole in zip(self._groups, wide, strict=True):
            group_keys = keys[group.entity]
            names = entity_keys(
                group.join_key, key_kind(group_keys), group_keys.tolist(), self._project
            )
            counts.append(len(names))
            if whole:
                commands.append(pack_key_commands(b"HGETALL", names))
            else:
                commands.append(pack_hmgets(names, group.packed_fields, len(group.fields)))
            firsts.append(names[0] if names else b"")
        commands.append(pack_key_commands(b"HLEN", firsts))
        try:
            replies = await self._client.round_trip(b"".join(commands), sum(counts) + len(firsts))
        except Exception as error:
            raise StoreError(f"redis {self._client.url} (feast): {describe(error)}") from error
        sizes = replies[len(replies) - len(firsts) :]
        out: list[ViewRows | None] = [None] * len(self._views)
        start = 0
        for index, (group, count) in enumerate(zip(self._groups, counts, strict=True)):
            group_replies = replies[start : start + count]
            if wide[index]:
                group_replies = self._pick(index, group_replies)
            self._decode(group, group_replies, out)
            start += count
            if isinstance(sizes[index], int) and sizes[index] > 0:
                self._hash_fields[index] = sizes[index]
        return [rows for rows in out if rows is not None]

    def _pick(self, index: int, replies: list[Any]) -> list[Any]:
        """HGETALL replies as HMGET's: the group's fields in order, None where absent. A reply
        is a flat list of fields and values (RESP2, what :func:`open_client` speaks) or a dict
        (RESP3). Lists that name their fields in the order of the last whole one (``feast
        materialize`` writes every hash's fields in the same order) are picked by position."""
        fields = self._groups[index].fields
        pick = self._pickers[index]
        out: list[Any] = []
        for reply in replies:
            if isinstance(reply, dict):
                values = reply
            else:
                names = reply[0::2]
                known = self._orders[index]
                if known is not None and names == known[0]:
                    out.append(known[1](reply))
                    continue
                values = dict(zip(names, reply[1::2], strict=True))
            try:
                out.append(pick(values))
            except KeyError:  # a hash without some of the fields (or no hash)
                out.append([values.get(f) for f in fields])
                continue
            if not isinstance(reply, dict):  # every field there: this order, by position
                at = {name: 2 * i + 1 for i, name in enumerate(names)}
                self._orders[index] = (names, _picker([at[f] for f in fields]))
        return out

    def _decode(self, group: _Group, replies: list[Any], out: list[ViewRows | None]) -> None:
        """Every view of ``group`` from its ``HMGET`` replies (one per key), into ``out``."""
        n = len(replies)
        width = len(group.fields)
        flat = list(chain.from_iterable(replies))
        if len(flat) != n * width:
            raise StoreError(f"redis {self._client.url} (feast): HMGET answered the wrong shape")
        nil = False
        try:  # (cheaper than looking for None first: ``None in flat`` compares every item)
            lengths = np.array(list(map(len, flat)), dtype=np.intp)
        except TypeError:  # absent fields (keys or views not in Redis): no bytes, length 0
            nil = True
            flat = [b"" if item is None else item for item in flat]
            lengths = np.array(list(map(len, flat)), dtype=np.intp)
        lengths = lengths.reshape(n, width)
        starts = np.cumsum(lengths).reshape(n, width) - lengths
        features = group.features
        try:
            values, present = decode_spans(
                b"".join(flat),
                starts[:, :features].ravel(),
                lengths[:, :features].ravel(),
                group.names,
            )
        except ValueDecodeError as error:
            # The data, not the store, is wrong: an error for the callers, not a store failure.
            raise InternalError(str(error)) from None
        values = values.reshape(n, features)
        present = present.reshape(n, features)
        for k, (index, offset) in enumerate(zip(group.views, group.offsets, strict=True)):
            view = self._views[index]
            end = offset + len(view.features)
            stamp = features + k  # the view's _ts field
            if nil:
                found = np.fromiter(
                    (reply[stamp] is not None for reply in replies), dtype=np.bool_, count=n
                )
                view_present = present[:, offset:end] & found[:, None]
            else:
                found = np.ones(n, np.bool_)
                view_present = present[:, offset:end]
            event_time = None
            if view.max_age_s > 0:
                event_time = decode_timestamps([reply[stamp] for reply in replies])
            out[index] = ViewRows(values[:, offset:end], view_present, found, event_time)

    async def ping(self) -> None:
        try:
            await self._client.get().ping()
        except Exception as error:
            raise StoreError(f"redis {self._client.url}: {describe(error)}") from error

    def entity_datatype(self, entity: str) -> str | None:
        return None

    async def close(self) -> None:
        await self._client.close()


def _picker(keys: Sequence[Any]) -> Callable[[Any], Sequence[Any]]:
    """The items of ``keys`` (fields of a dict, positions in a list), in order (KeyError or
    IndexError when one is absent)."""
    if len(keys) == 1:  # itemgetter of one key gives the item, not a tuple
        (key,) = keys
        return lambda values: (values[key],)
    return itemgetter(*keys)
