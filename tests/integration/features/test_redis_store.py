"""headrace's Redis layout on a real redis-server: ``headrace features push`` then the redis store
gives the snapshot's rows (the same as the embedded store); concurrent requests share MGETs;
the served log holds what was assembled."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from headrace.backends.base import TensorSpec
from headrace.features import (
    EmbeddedStore,
    FeatureJoiner,
    RedisStore,
    ServedLog,
    ViewConfig,
    load_features_config,
    read_served_log,
)
from headrace.features.cli import main as features_cli
from integration.features.redis_server import RedisServer
from unit.features import snapshots

FEATURES = ("age", "spend_30d", "clicks")


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return write_model_dir(tmp_path)


def write_model_dir(tmp_path: Path) -> Path:
    """The users and items snapshots the tests push."""
    snapshots.write(tmp_path / "users.parquet", snapshots.user_table(rows=200, seed=3))
    items = pa.table(
        {
            "item_id": [f"item-{i}" for i in range(30)],
            "ctr_7d": pa.array(np.round(np.linspace(0, 0.3, 30), 3), pa.float64()),
            "price": pa.array([None if i % 7 == 0 else float(i) for i in range(30)], pa.float64()),
        }
    )
    pq.write_table(items, tmp_path / "items.parquet")
    return tmp_path


def push(model_dir: Path, url: str) -> None:
    assert features_cli(["push", str(model_dir / "users.parquet"), "--view", "user_stats",
                         "--entity", "user_id", "--redis", url]) == 0  # fmt: skip
    assert features_cli(["push", str(model_dir / "items.parquet"), "--view", "item_stats",
                         "--entity", "item_id", "--redis", url]) == 0  # fmt: skip


VIEWS = [
    ViewConfig(name="user_stats", entity="user_id", features=FEATURES,
               snapshot="users.parquet"),
    ViewConfig(name="item_stats", entity="item_id", features=("price", "ctr_7d"),
               snapshot="items.parquet", entity_datatype="BYTES"),
]  # fmt: skip


def lookup_keys() -> dict[str, np.ndarray]:
    users = 1000 + 3 * np.array([0, 5, 199, 200, 7, 5], np.int64)
    users[3] = 999  # not in the snapshot
    items = np.array([b"item-0", b"item-3", b"gone", b"item-29", b"item-14", b"item-3"], object)
    return {"user_id": users, "item_id": items}


def test_redis_and_embedded_give_the_snapshot_rows(
    model_dir: Path, redis_server: RedisServer, redis_db: int
) -> None:
    push(model_dir, redis_server.url(redis_db))
    keys = lookup_keys()

    async def main() -> list[Any]:
        store = RedisStore(VIEWS, redis_server.url(redis_db))
        try:
            return await store.read(keys)
        finally:
            await store.close()

    from_redis = asyncio.run(main())
    from_memory = EmbeddedStore(VIEWS, model_dir).lookup(keys)
    table = snapshots.user_table(rows=200, seed=3)
    for ours, theirs in zip(from_redis, from_memory, strict=True):
        assert ours.found.tolist() == theirs.found.tolist()
        assert ours.present.tolist() == theirs.present.tolist()
        assert np.array_equal(ours.values[ours.present], theirs.values[theirs.present])
    users, items = from_redis
    assert users.found.tolist() == [True, True, True, False, True, True]
    row = [table[f][199] for f in FEATURES]
    assert users.values[2].tolist() == np.array(row, np.float32).tolist()
    # item-0 and item-14 have a null price: missing in both stores.
    assert items.present[:, 0].tolist() == [False, True, False, True, False, True]
    assert items.values[3].tolist() == [29.0, np.float32(0.3)]


def test_a_repush_with_other_columns_is_read_by_its_schema(
    model_dir: Path, redis_server: RedisServer, redis_db: int
) -> None:
    url = redis_server.url(redis_db)
    path = model_dir / "users.parquet"
    assert features_cli(["push", str(path), "--view", "user_stats", "--entity", "user_id",
                         "--redis", url, "--features", "clicks,age"]) == 0  # fmt: skip
    keys = {"user_id": np.array([1000, 1003], np.int64), "item_id": np.array([], object)}
    table = snapshots.user_table(rows=200, seed=3)

    async def read() -> Any:
        store = RedisStore(VIEWS[:1], url)
        try:
            return (await store.read(keys))[0]
        finally:
            await store.close()

    rows = asyncio.run(read())
    # spend_30d was not pushed: missing; age and clicks found where the schema put them.
    assert rows.present.tolist() == [[True, False, True]] * 2
    assert rows.values[1, 0] == table["age"][1] and rows.values[1, 2] == table["clicks"][1]
    assert features_cli(["push", str(path), "--view", "user_stats", "--entity", "user_id",
                         "--redis", url]) == 0  # fmt: skip
    rows = asyncio.run(read())
    assert rows.present.all()
    assert rows.values[1].tolist() == np.array([table[f][1] for f in FEATURES], np.float32).tolist()


def test_push_errors_exit_non_zero_with_a_message(
    model_dir: Path, redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    url = redis_server.url(1)
    assert features_cli(["push", str(model_dir / "nope.parquet"), "--view", "v",
                         "--entity", "user_id", "--redis", url]) == 1  # fmt: skip
    assert "snapshot file not found" in capsys.readouterr().err
    assert features_cli(["push", str(model_dir / "users.parquet"), "--view", "v",
                         "--entity", "uid", "--redis", url]) == 1  # fmt: skip
    assert "no key column 'uid'" in capsys.readouterr().err
    closed = f"redis://127.0.0.1:{redis_server.port + 1 if redis_server.port < 65535 else 1}/0"
    assert features_cli(["push", str(model_dir / "users.parquet"), "--view", "v",
                         "--entity", "user_id", "--redis", closed]) == 1  # fmt: skip
    assert "headrace features push:" in capsys.readouterr().err


def joiner_config(url: str) -> Any:
    return load_features_config(
        {
            "store": "redis",
            # Results are compared, not latency: a first connection on a busy machine may take
            # longer than the 20 ms default, which would serve defaults.
            "timeout_ms": 10_000,
            "redis_url": url,
            "into": "x",
            "request_inputs": ["amount"],
            "views": [v.model_dump(exclude_none=True) for v in VIEWS],
        }
    )


def requests(count: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(11)
    out = []
    for _ in range(count):
        rows = int(rng.integers(1, 9))
        out.append(
            {
                "user_id": 1000 + 3 * rng.integers(0, 210, rows),
                "item_id": np.array([b"item-%d" % i for i in rng.integers(0, 35, rows)], object),
                "amount": rng.uniform(0, 100, rows).astype(np.float32),
            }
        )
    return out


def test_64_concurrent_requests_share_a_few_mgets_and_are_logged(
    model_dir: Path, redis_server: RedisServer, redis_db: int, tmp_path: Path
) -> None:
    url = redis_server.url(redis_db)
    push(model_dir, url)
    batch = requests(64)
    served_log = ServedLog(tmp_path / "served")

    async def main() -> list[dict[str, np.ndarray]]:
        joiner = FeatureJoiner(
            joiner_config(url),
            model_dir,
            [TensorSpec("x", "FP32", (-1, 6))],
            model="ranker",
            version="1",
            served_log=served_log,
        )
        try:
            await joiner.assemble(batch[0])  # connect before counting
            redis_server.reset_stats()
            assembled = await asyncio.gather(*(joiner.assemble(r) for r in batch))
            for index, (request, model_inputs) in enumerate(zip(batch, assembled, strict=True)):
                outputs = {"score": model_inputs["x"].sum(axis=1)}
                joiner.log_served(request, model_inputs, outputs, request_id=f"req-{index}")
            return assembled
        finally:
            await joiner.close()

    assembled = asyncio.run(main())
    mgets = redis_server.command_calls("mget")
    print(f"{mgets} MGET round trips for 64 concurrent requests")
    assert 1 <= mgets <= 4, f"{mgets} MGETs for 64 concurrent requests"
    # Every request got the embedded store's answer (the same snapshot, in memory).
    embedded = FeatureJoiner(
        joiner_config(url).model_copy(update={"store": "embedded"}),
        model_dir,
        [TensorSpec("x", "FP32", (-1, 6))],
    )
    for request, model_inputs in zip(batch, assembled, strict=True):
        expected = asyncio.run(embedded.assemble(request))["x"]
        assert np.array_equal(model_inputs["x"], expected)
    # The served log: one row per served row, the values the model received.
    assert served_log.flush(timeout_s=60)
    served_log.close()
    table = read_served_log(tmp_path / "served")
    assert table.num_rows == sum(len(r["user_id"]) for r in batch)
    x = np.concatenate([a["x"] for a in assembled])
    names = ["user_stats.age", "user_stats.spend_30d", "user_stats.clicks", "item_stats.price",
             "item_stats.ctr_7d", "amount"]  # fmt: skip
    for j, name in enumerate(names):
        assert table[name].to_numpy().tolist() == x[:, j].tolist(), name
    assert table["user_id"].to_pylist() == np.concatenate([r["user_id"] for r in batch]).tolist()
    assert table["output.score"].to_pylist() == x.sum(axis=1).tolist()
    ids = [f"req-{i}" for i, r in enumerate(batch) for _ in range(len(r["user_id"]))]
    assert table["request_id"].to_pylist() == ids


def test_pushed_event_times_drive_max_age(
    tmp_path: Path, redis_server: RedisServer, redis_db: int
) -> None:
    import time

    now = time.time()
    table = pa.table(
        {
            "user_id": pa.array([1, 2], pa.int64()),
            "score": pa.array([0.5, 0.75], pa.float32()),
            "event_timestamp": pa.array(
                [int((now - 60) * 1e6), int((now - 7200) * 1e6)], pa.timestamp("us", tz="UTC")
            ),
        }
    )
    pq.write_table(table, tmp_path / "scores.parquet")
    url = redis_server.url(redis_db)
    assert features_cli(["push", str(tmp_path / "scores.parquet"), "--view", "scores",
                         "--entity", "user_id", "--redis", url]) == 0  # fmt: skip
    config = load_features_config(
        {
            "store": "redis",
            # Results are compared, not latency: a first connection on a busy machine may take
            # longer than the 20 ms default, which would serve defaults.
            "timeout_ms": 10_000,
            "redis_url": url,
            "into": "x",
            "views": [
                {"name": "scores", "entity": "user_id", "features": ["score"],
                 "defaults": {"score": -1.0}, "max_age_s": 3600}
            ],
        }
    )  # fmt: skip

    async def main() -> np.ndarray:
        joiner = FeatureJoiner(config, tmp_path, [TensorSpec("x", "FP32", (-1, 1))])
        try:
            return (await joiner.assemble({"user_id": np.array([1, 2, 3], np.int64)}))["x"]
        finally:
            await joiner.close()

    assert asyncio.run(main())[:, 0].tolist() == [0.5, -1.0, -1.0]
