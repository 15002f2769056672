"""The embedded store: Parquet, CSV and NPZ snapshots give the same rows; a changed file is
reloaded; a broken one keeps the old snapshot serving."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from headrace.errors import ConfigError, InvalidArgumentError
from headrace.features import EmbeddedStore, ViewConfig
from headrace.features import embedded as embedded_module
from unit.features import snapshots

FEATURES = ("age", "spend_30d", "clicks")


def view(snapshot: str, features: tuple[str, ...] = FEATURES) -> ViewConfig:
    return ViewConfig(name="users", entity="user_id", features=features, snapshot=snapshot)


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".npz"])
def test_every_format_gives_the_snapshot_rows(tmp_path: Path, suffix: str) -> None:
    table = snapshots.user_table()
    # Rows in no particular key order.
    shuffled = np.random.default_rng(1).permutation(len(table["user_id"]))
    snapshots.write(tmp_path / f"users{suffix}", {k: v[shuffled] for k, v in table.items()})
    store = EmbeddedStore([view(f"users{suffix}")], tmp_path)
    ids = table["user_id"]
    keys = np.array([ids[4], 7, ids[0], ids[4], ids[-1], 10**12, -5], np.int64)
    (rows,) = store.lookup({"user_id": keys})
    assert rows.found.tolist() == [True, False, True, True, True, False, False]
    assert rows.present.tolist() == [[f] * 3 for f in rows.found.tolist()]
    for i, row in [(0, 4), (2, 0), (3, 4), (4, len(ids) - 1)]:
        expected = [table[f][row] for f in FEATURES]
        assert rows.values[i].tolist() == np.array(expected, np.float32).tolist()
    assert store.entity_datatype("user_id") == "INT64"


def test_text_keys_nulls_and_the_latest_row_per_key(tmp_path: Path) -> None:
    table = pa.table(
        {
            "item": ["a", "b", "a"],
            "ctr": pa.array([0.5, None, 0.25], pa.float64()),
            "event_timestamp": pa.array([2_000_000, 1_000_000, 1_000_000], pa.timestamp("s")),
        }
    )
    pq.write_table(table, tmp_path / "items.parquet")
    config = ViewConfig(name="items", entity="item", features=("ctr",), snapshot="items.parquet")
    store = EmbeddedStore([config], tmp_path)
    (rows,) = store.lookup({"item": np.array([b"a", b"b", b"c"], dtype=object)})
    assert rows.found.tolist() == [True, True, False]
    assert rows.present[:, 0].tolist() == [True, False, False]
    assert rows.values[0, 0] == 0.5  # the row with the later event time
    assert rows.event_time_s is not None and rows.event_time_s[0] == 2_000_000.0
    assert store.entity_datatype("item") == "BYTES"
    with pytest.raises(InvalidArgumentError, match="INT64 keys, but view 'items' has BYTES"):
        store.lookup({"item": np.array([1], np.int64)})


@pytest.mark.parametrize(
    ("features", "snapshot", "message"),
    [
        (("age", "height"), "users.parquet", r"no column \['height'\]"),
        (("age",), "missing.parquet", "snapshot file not found"),
        (("age",), "users.json", "a snapshot is .parquet"),
    ],
)
def test_bad_snapshots_are_config_errors(
    tmp_path: Path, features: tuple[str, ...], snapshot: str, message: str
) -> None:
    snapshots.write(tmp_path / "users.parquet", snapshots.user_table())
    (tmp_path / "users.json").write_text("{}")
    with pytest.raises(ConfigError, match=message):
        EmbeddedStore([view(snapshot, features)], tmp_path)


def test_a_changed_file_is_reloaded_and_a_broken_one_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(embedded_module, "RELOAD_CHECK_S", 0.0)
    path = tmp_path / "users.parquet"
    table = snapshots.user_table(rows=5)
    snapshots.write(path, table)
    store = EmbeddedStore([view("users.parquet")], tmp_path)
    key = {"user_id": np.array([table["user_id"][0]], np.int64)}

    async def age_until(expected: float, reloads: int) -> None:
        deadline = time.monotonic() + 30
        while True:
            served = store.lookup(key)[0].values[0, 0]  # a lookup is what looks at the file
            if store.reloads >= reloads and served == expected:
                return
            assert time.monotonic() < deadline, "the snapshot was not reloaded"
            await asyncio.sleep(0.01)

    async def main() -> None:
        changed = dict(table, age=table["age"] + 100)
        snapshots.write(path, changed)
        await age_until(float(table["age"][0] + 100), 1)
        path.write_bytes(b"PAR1 not really parquet")
        # Wait until the broken file has been tried (its signature remembered), then check the
        # old rows still serve.
        view_state = store._views[0]
        deadline = time.monotonic() + 30
        while view_state._failed_signature is None:
            assert time.monotonic() < deadline
            store.lookup(key)
            await asyncio.sleep(0.01)
        assert store.lookup(key)[0].values[0, 0] == table["age"][0] + 100
        snapshots.write(path, table)
        await age_until(float(table["age"][0]), 2)

    asyncio.run(main())
