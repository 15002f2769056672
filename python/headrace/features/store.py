"""The one interface every feature store offers, and the factory that builds a model's store.

A store knows the model's views (from its :class:`~headrace.features.config.FeaturesConfig`)
and answers one call, :meth:`FeatureStore.read`: the distinct keys of each entity input in, each
view's rows out, in **one round trip** for all views (a remote store) or in memory (embedded).
Merging the keys of concurrent requests is the coalescer's job, filling defaults the assembler's;
a store only reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from headrace.errors import HeadraceError, StatusCode
from headrace.features.config import FeaturesConfig
from headrace.features.keys import Keys

Float32Array = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]
Float64Array = npt.NDArray[np.float64]


class StoreError(HeadraceError):
    """The store could not answer (down, slow, or answered something unreadable)."""

    code = StatusCode.UNAVAILABLE


@dataclass(frozen=True, slots=True)
class ViewRows:
    """What a store holds for one view's keys, in key order.

    ``values[i, j]`` is feature j of key i where ``present[i, j]``; anything elsewhere.
    ``found[i]`` says the key has a row in the view at all. ``event_time_s[i]`` is the row's event
    time (seconds since the epoch; NaN where unknown), or None when the store keeps none.
    """

    values: Float32Array
    present: BoolArray
    found: BoolArray
    event_time_s: Float64Array | None

    @staticmethod
    def empty(keys: int, features: int) -> ViewRows:
        return ViewRows(
            np.zeros((keys, features), np.float32),
            np.zeros((keys, features), np.bool_),
            np.zeros(keys, np.bool_),
            None,
        )


class FeatureStore(Protocol):
    """Reads the rows of a model's views. ``read`` and ``ping`` run on the event loop and must
    never block it; ``remote`` stores go through the coalescer and the breaker, others are called
    directly."""

    kind: str
    remote: bool

    async def read(self, keys: Mapping[str, Keys]) -> list[ViewRows]:
        """Rows of every view (config order) for the distinct keys of each entity input (by
        input name); one round trip. Raises StoreError when the store cannot answer."""
        ...

    async def ping(self) -> None:
        """One cheap round trip; raises StoreError when the store is not there."""
        ...

    def entity_datatype(self, entity: str) -> str | None:
        """The datatype ("INT64" or "BYTES") the store's keys of ``entity`` have, if it knows."""
        ...

    async def close(self) -> None: ...


def make_store(config: FeaturesConfig, model_dir: Path) -> FeatureStore:
    """The store a model's ``[features]`` table names; files are relative to ``model_dir``."""
    if config.store == "embedded":
        from headrace.features.embedded import EmbeddedStore

        return EmbeddedStore(config.views, model_dir)
    assert config.redis_url is not None  # the config checks it
    if config.store == "redis":
        from headrace.features.redis import RedisStore

        return RedisStore(config.views, config.redis_url)
    from headrace.features.feast import FeastStore

    assert config.feast_project is not None
    return FeastStore(config.views, config.redis_url, config.feast_project)
