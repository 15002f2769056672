"""The feast store: reads the Redis that ``feast materialize`` fills, unchanged.

Feast keeps one hash per (entity key, project) holding every view that shares the join key (see
:mod:`headrace.features.feast_layout`). Feast's own server reads view by view; here the views of
one join key are read together — one ``HMGET`` per distinct entity key with every view's feature
fields and ``_ts`` fields — and all of a batch's ``HMGET`` go out in one pipeline: one round trip.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from headrace.errors import InternalError
from headrace.features.config import ViewConfig
from headrace.features.feast_layout import (
    ValueDecodeError,
    decode_timestamps,
    decode_values,
    entity_keys,
    feature_field,
    timestamp_field,
)
from headrace.features.keys import Keys, key_kind
from headrace.features.redis import LoopClient
from headrace.features.resp import pack_args, pack_hmgets
from headrace.features.store import StoreError, ViewRows


@dataclass(frozen=True)
class _Group:
    """Views read from the same hashes: one entity input, one Feast join key."""

    entity: str
    join_key: str
    views: tuple[int, ...]  # indices into the store's views
    fields: tuple[bytes, ...]  # every view's feature fields then its _ts field
    packed_fields: bytes  # ``fields`` in RESP, made once
    offsets: tuple[int, ...]  # where each view's fields start in ``fields``


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
            offsets = []
            for index in members:
                view = self._views[index]
                offsets.append(len(fields))
                fields.extend(feature_field(view.name, f) for f in view.features)
                fields.append(timestamp_field(view.name))
            groups.append(
                _Group(
                    entity,
                    join_key,
                    tuple(members),
                    tuple(fields),
                    pack_args(fields),
                    tuple(offsets),
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
            raise StoreError(f"redis {self._client.url} (feast): {error!r}") from error
        out: list[ViewRows | None] = [None] * len(self._views)
        start = 0
        for group, count in zip(self._groups, counts, strict=True):
            group_replies = replies[start : start + count]
            start += count
            for index, offset in zip(group.views, group.offsets, strict=True):
                out[index] = self._decode(self._views[index], group_replies, offset)
        return [rows for rows in out if rows is not None]

    def _decode(self, view: ViewConfig, replies: list[list[bytes | None]], offset: int) -> ViewRows:
        n = len(replies)
        width = len(view.features)
        end = offset + width
        stamps = [reply[end] for reply in replies]
        found = np.fromiter((s is not None for s in stamps), dtype=np.bool_, count=n)
        flat = [value for reply in replies for value in reply[offset:end]]
        names = [f"feast view '{view.name}' '{feature}'" for feature in view.features]
        try:
            values, present = decode_values(flat, names)
        except ValueDecodeError as error:
            # The data, not the store, is wrong: an error for the callers, not a store failure.
            raise InternalError(str(error)) from None
        present = present.reshape(n, width)
        present &= found[:, None]
        event_time = decode_timestamps(stamps) if view.max_age_s > 0 else None
        return ViewRows(values.reshape(n, width), present, found, event_time)

    async def ping(self) -> None:
        try:
            await self._client.get().ping()
        except Exception as error:
            raise StoreError(f"redis {self._client.url}: {error!r}") from error

    def entity_datatype(self, entity: str) -> str | None:
        return None

    async def close(self) -> None:
        await self._client.close()
