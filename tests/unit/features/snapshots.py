"""Snapshot files made in the tests: the same table as Parquet, CSV and NPZ."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq


def user_table(rows: int = 50, seed: int = 0) -> dict[str, npt.NDArray[np.generic]]:
    """``user_id`` (ids 1000, 1003, ...) and three float features of exactly representable
    float32 values."""
    rng = np.random.default_rng(seed)
    return {
        "user_id": 1000 + 3 * np.arange(rows, dtype=np.int64),
        "age": rng.integers(18, 90, rows).astype(np.float64),
        "spend_30d": np.round(rng.uniform(0, 500, rows), 2).astype(np.float32).astype(np.float64),
        "clicks": rng.integers(0, 1000, rows).astype(np.int64),
    }


def write(path: Path, table: dict[str, npt.NDArray[np.generic]]) -> Path:
    """``table`` as ``path`` (.parquet, .csv or .npz), written whole then renamed into place
    (a reader never sees half a file)."""
    partial = path.with_name(path.name + ".partial" + path.suffix)
    if path.suffix == ".npz":
        with open(partial, "wb") as out:
            np.savez(out, **table)
    elif path.suffix == ".csv":
        pacsv.write_csv(pa.table(table), partial)
    else:
        pq.write_table(pa.table(table), partial)
    partial.replace(path)
    return path
