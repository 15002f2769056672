"""The feast store: reads the Redis that ``feast materialize`` fills, unchanged.

Feast keeps one hash per (entity key, project) holding every view that shares the join key (see
:mod:`headrace.features.feast_layout`). Feast's own server reads view by view; here the views of
one join key are read together — one ``HMGET`` per distinct entity key with every view's feature
fields and then their ``_ts`` fields — and all of a batch's ``HMGET`` go out in one write: one
round trip, its replies parsed by one hiredis reader (:func:`headrace.features.resp.read_replies`).
The feature values of a group of views are then joined into one buffer and decoded together
(:func:`headrace.features.feast_layout.decode_spans`): no Python object per value after hiredis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
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
from headrace.features.resp import pack_args, pack_hmgets
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

    async def read(self, keys: Mapping[str, Keys]) -> list[ViewRows]:
        counts = []
        commands = []
        for group in self._groups:
            group_keys = keys[group.entity]
            names = entity_keys(
                group.join_key, key_kind(group_keys), group_keys.tolist(), self._project
            )
            counts.append(len(names))
            commands.append(pack_hmgets(names, group.packed_fields, len(group.fields)))
        try:
            replies = await self._client.round_trip(b"".join(commands), sum(counts))
        except Exception as error:
            raise StoreError(f"redis {self._client.url} (feast): {describe(error)}") from error
        out: list[ViewRows | None] = [None] * len(self._views)
        start = 0
        for group, count in zip(self._groups, counts, strict=True):
            self._decode(group, replies[start : start + count], out)
            start += count
        return [rows for rows in out if rows is not None]

    def _decode(self, group: _Group, replies: list[Any], out: list[ViewRows | None]) -> None:
        """Every view of ``group`` from its ``HMGET`` replies (one per key), into ``out``."""
        n = len(replies)
        width = len(group.fields)
        flat = list(chain.from_iterable(replies))
        if len(flat) != n * width:
            raise StoreError(f"redis {self._client.url} (feast): HMGET answered the wrong shape")
        nil = False
        try:  # (cheaper than looking for None first: ``None in flat`` compares every item)
            lengths = np.fromiter(map(len, flat), dtype=np.intp, count=n * width)
        except TypeError:  # absent fields (keys or views not in Redis): no bytes, length 0
            nil = True
            flat = [b"" if item is None else item for item in flat]
            lengths = np.fromiter(map(len, flat), dtype=np.intp, count=n * width)
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
