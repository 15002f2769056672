"""Snapshot files: one entity column, feature columns, optionally ``event_timestamp``.

Parquet (``.parquet``, ``.pq``), CSV (``.csv``) and NumPy (``.npz``, one 1-D array per column)
are read into a :class:`Snapshot`: keys normalised as the stores use them (``int64`` or
``bytes``), features as float32 with a mask of present values (null in Parquet/CSV is missing).
When a key appears twice, the row with the later event time (else the later row) wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from headrace.errors import ConfigError
from headrace.features.keys import Keys

EVENT_TIME_COLUMN = "event_timestamp"
SNAPSHOT_SUFFIXES = (".parquet", ".pq", ".csv", ".npz")


@dataclass(frozen=True)
class Snapshot:
    """A snapshot in memory: ``values[i]`` is the row of ``keys[i]`` (columns = ``features``)."""

    keys: Keys
    features: tuple[str, ...]
    values: npt.NDArray[np.float32]  # [rows, features]
    present: npt.NDArray[np.bool_]  # [rows, features]
    event_time_s: npt.NDArray[np.float64] | None  # [rows]


def _keys_from(path: Path, entity: str, column: npt.NDArray[Any]) -> Keys:
    if column.dtype.kind in "iu":
        return column.astype(np.int64, copy=False)
    if column.dtype.kind in "SUO":
        out = np.empty(len(column), dtype=object)
        for i, value in enumerate(column.tolist()):
            if isinstance(value, str):
                out[i] = value.encode()
            elif isinstance(value, bytes):
                out[i] = value
            else:
                raise ConfigError(f"{path}: key column '{entity}' row {i} is {value!r}")
        return out
    raise ConfigError(f"{path}: key column '{entity}' has type {column.dtype}; needs ints or text")


def _arrow_columns(path: Path) -> dict[str, tuple[npt.NDArray[Any], npt.NDArray[np.bool_]]]:
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
    except ImportError as error:  # pragma: no cover - the features extra brings it
        raise ConfigError(
            f"{path}: reading it needs pyarrow (pip install headrace[features])"
        ) from error
    if path.suffix == ".csv":
        import pyarrow.csv as pacsv

        table = pacsv.read_csv(path)
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
    columns: dict[str, tuple[npt.NDArray[Any], npt.NDArray[np.bool_]]] = {}
    for name in table.column_names:
        chunked = table.column(name).combine_chunks()
        valid = np.asarray(pc.is_valid(chunked).to_numpy(zero_copy_only=False), dtype=np.bool_)
        if pa.types.is_timestamp(chunked.type):
            # Arrow keeps zoned times as UTC; naive ones are taken as UTC, as Feast does.
            micros = chunked.cast(pa.timestamp("us", tz=chunked.type.tz)).cast(pa.int64())
            filled = pc.fill_null(micros, 0).to_numpy(zero_copy_only=False)
            array = np.asarray(filled, dtype=np.float64) / 1e6
        elif (
            pa.types.is_string(chunked.type)
            or pa.types.is_large_string(chunked.type)
            or pa.types.is_binary(chunked.type)
            or pa.types.is_large_binary(chunked.type)
        ):
            array = np.asarray(chunked.to_pylist(), dtype=object)
        elif pa.types.is_integer(chunked.type) and chunked.null_count == 0:
            array = chunked.to_numpy()
        elif pa.types.is_integer(chunked.type) or pa.types.is_floating(chunked.type):
            array = np.asarray(pc.fill_null(chunked, 0).to_numpy(), dtype=np.float64)
        elif pa.types.is_boolean(chunked.type):
            array = np.asarray(pc.fill_null(chunked, False).to_numpy(zero_copy_only=False))
        else:
            array = np.asarray(chunked.to_pylist(), dtype=object)
        columns[name] = (array, valid)
    return columns


def _npz_columns(path: Path) -> dict[str, tuple[npt.NDArray[Any], npt.NDArray[np.bool_]]]:
    with np.load(path, allow_pickle=False) as data:
        columns = {}
        for name in data.files:
            array = data[name]
            if array.ndim != 1:
                raise ConfigError(f"{path}: array '{name}' must be 1-D, is {list(array.shape)}")
            present = ~np.isnan(array) if array.dtype.kind == "f" else np.ones(len(array), bool)
            columns[name] = (array, present)
    return columns


def read_snapshot(path: Path, entity: str, features: Sequence[str] | None = None) -> Snapshot:
    """Read ``path``; ``features`` picks and orders the feature columns (default: every column
    but the entity and ``event_timestamp``). Errors name the file and the column."""
    if path.suffix not in SNAPSHOT_SUFFIXES:
        raise ConfigError(f"{path}: a snapshot is {', '.join(SNAPSHOT_SUFFIXES)}")
    if not path.is_file():
        raise ConfigError(f"{path}: snapshot file not found")
    columns = _npz_columns(path) if path.suffix == ".npz" else _arrow_columns(path)
    if entity not in columns:
        raise ConfigError(f"{path}: no key column '{entity}' (has: {', '.join(columns)})")
    key_column, key_valid = columns[entity]
    if not key_valid.all():
        raise ConfigError(f"{path}: key column '{entity}' has nulls")
    keys = _keys_from(path, entity, key_column)
    if features is None:
        features = [c for c in columns if c not in (entity, EVENT_TIME_COLUMN)]
    missing = [f for f in features if f not in columns]
    if missing:
        raise ConfigError(f"{path}: no column {missing} (has: {', '.join(columns)})")
    rows = len(keys)
    values = np.zeros((rows, len(features)), np.float32)
    present = np.zeros((rows, len(features)), np.bool_)
    for j, feature in enumerate(features):
        array, valid = columns[feature]
        if array.dtype.kind not in "iufb":
            raise ConfigError(f"{path}: column '{feature}' is not numeric ({array.dtype})")
        values[:, j] = array
        present[:, j] = valid
    event_time: npt.NDArray[np.float64] | None = None
    if EVENT_TIME_COLUMN in columns:
        times, valid = columns[EVENT_TIME_COLUMN]
        event_time = np.where(valid, times.astype(np.float64), np.nan)
    order = np.arange(rows) if event_time is None else np.argsort(event_time, kind="stable")
    # Keep one row per key: the last in event-time (else file) order.
    ordered_keys = keys[order].tolist()
    last: dict[Any, int] = {}
    for position, key in enumerate(ordered_keys):
        last[key] = position
    if len(last) != rows:
        keep = order[np.fromiter(last.values(), dtype=np.intp, count=len(last))]
        keys, values, present = keys[keep], values[keep], present[keep]
        event_time = None if event_time is None else event_time[keep]
    return Snapshot(keys, tuple(features), values, present, event_time)
