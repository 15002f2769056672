"""headrace's feast store against the real Feast SDK: a Feast repo (FileSources over Parquet),
``feast apply`` and ``feast materialize`` into the session's redis-server, then the same
entities through Feast's ``get_online_features`` and through headrace."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from headrace.backends.base import TensorSpec
from headrace.errors import InternalError
from headrace.features import FeastStore, FeatureJoiner, ViewConfig, load_features_config
from headrace.features.store import ViewRows
from integration.features.feast_repo import PROJECT, FeastRepo, FeastView
from integration.features.redis_server import RedisServer

# The first use makes Feast's venv (pip) unless `make` made it; apply + materialize take ~30 s.
pytestmark = pytest.mark.timeout(1200)

FEAST_DB = 2
NOW = datetime.now(UTC).replace(microsecond=0)
USERS = list(range(1001, 1041))


def user_views() -> list[FeastView]:
    rng = np.random.default_rng(7)
    n = len(USERS)
    spend: list[float | None] = np.round(rng.uniform(0, 500, n), 3).tolist()
    spend[3] = None  # a null value: Feast writes an empty Value
    stats = FeastView(
        name="user_stats",
        join_key="user_id",
        key_type="INT64",
        features={"age": "int64", "spend_30d": "float32", "score": "float64"},
        rows={
            "user_id": [*USERS, USERS[0]],  # user 1001 twice: the later row is the online one
            "age": [*rng.integers(18, 90, n).tolist(), 99],
            "spend_30d": [*spend, 1.5],
            "score": [*rng.normal(size=n).tolist(), 0.25],
            "event_timestamp": [NOW - timedelta(hours=i + 2) for i in range(n)]
            + [NOW - timedelta(hours=1)],
        },
    )
    # A second view of the same entity with fewer users: it shares their hashes.
    risk_users = USERS[::2]
    risk = FeastView(
        name="user_risk",
        join_key="user_id",
        key_type="INT64",
        features={"chargebacks": "int32", "risk": "float32"},
        rows={
            "user_id": risk_users,
            "chargebacks": rng.integers(0, 5, len(risk_users)).tolist(),
            "risk": np.round(rng.uniform(0, 1, len(risk_users)), 4).tolist(),
            "event_timestamp": [NOW - timedelta(days=30)] * len(risk_users),
        },
    )
    items = [f"i-{i}" for i in range(10)]
    item = FeastView(
        name="item_stats",
        join_key="item_id",
        key_type="STRING",
        features={"ctr_7d": "float32"},
        rows={
            "item_id": items,
            "ctr_7d": np.round(rng.uniform(0, 0.2, len(items)), 4).tolist(),
            "event_timestamp": [NOW - timedelta(minutes=5)] * len(items),
        },
    )
    return [stats, risk, item]


@pytest.fixture(scope="module")
def feast_repo(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> FeastRepo:
    client = redis_server.client(db=FEAST_DB)
    client.flushdb()
    client.close()
    repo = FeastRepo(tmp_path_factory.mktemp("feast"), redis_server.port, FEAST_DB, user_views())
    repo.apply_and_materialize()
    return repo


VIEWS = [
    ViewConfig(name="user_stats", entity="user_id", features=("age", "spend_30d", "score")),
    ViewConfig(name="user_risk", entity="user_id", features=("risk", "chargebacks")),
    ViewConfig(name="item_stats", entity="item", join_key="item_id", features=("ctr_7d",),
               entity_datatype="BYTES"),
]  # fmt: skip
# Known users, unknown ones (0, 5), a user in user_stats only (1002), a repeat.
USER_KEYS = [1001, 1002, 1003, 0, 1040, 1004, 5, 1001]
ITEM_KEYS = [b"i-3", b"nope", b"i-0", b"i-9", b"", b"i-3", b"i-1", b"x"]


def read_ours(redis_server: RedisServer, reads: int = 1) -> list[ViewRows]:
    """The store's rows (of the last of ``reads`` round trips on one store: from the second
    on, hashes whose fields it asks for at least half of are read with HGETALL)."""

    async def main() -> list[ViewRows]:
        store = FeastStore(VIEWS, redis_server.url(FEAST_DB), PROJECT)
        try:
            for _ in range(reads):
                rows = await store.read(
                    {
                        "user_id": np.array(USER_KEYS, np.int64),
                        "item": np.array(ITEM_KEYS, dtype=object),
                    }
                )
            return rows
        finally:
            await store.close()

    return asyncio.run(main())


def feast_answer(repo: FeastRepo) -> dict[str, list[Any]]:
    features = [f"{v.name}:{f}" for v in VIEWS for f in v.features]
    rows = [
        {"user_id": u, "item_id": i.decode()} for u, i in zip(USER_KEYS, ITEM_KEYS, strict=True)
    ]
    return repo.online_features(features, rows)


@pytest.mark.parametrize("reads", [1, 2], ids=["hmget", "hgetall"])
def test_our_feast_store_returns_what_feast_returns(
    feast_repo: FeastRepo, redis_server: RedisServer, reads: int
) -> None:
    theirs = feast_answer(feast_repo)
    redis_server.reset_stats()
    ours = read_ours(redis_server, reads)
    # Both groups ask for every field of their hashes: the second read takes them whole.
    assert redis_server.command_calls("hgetall") == (0 if reads == 1 else 16)
    compared = 0
    for view, rows in zip(VIEWS, ours, strict=True):
        for j, feature in enumerate(view.features):
            column = theirs[f"{view.name}__{feature}"]
            for i, expected in enumerate(column):
                if expected is None:
                    assert not rows.present[i, j], (view.name, feature, i)
                else:
                    assert rows.present[i, j], (view.name, feature, i)
                    assert rows.values[i, j] == np.float32(expected), (view.name, feature, i)
                compared += 1
    assert compared == len(USER_KEYS) * 6
    stats, risk, items = ours
    # The cases the comparison must have covered: missing entities, a null value, a user that
    # one view of the hash has and the other lacks, the latest of two rows.
    assert stats.found.tolist() == [True, True, True, False, True, True, False, True]
    assert risk.found.tolist() == [True, False, True, False, False, False, False, True]
    assert not stats.present[5, 1] and stats.present[5, 0]  # user 1004's null spend_30d
    assert stats.values[0].tolist() == [99.0, 1.5, 0.25]
    assert items.found.tolist() == [True, False, True, True, False, True, True, False]


def test_one_pipelined_round_trip_reads_both_views_of_a_hash(
    feast_repo: FeastRepo, redis_server: RedisServer
) -> None:
    redis_server.reset_stats()
    read_ours(redis_server)
    # One HMGET per key given (8 users, 8 items; merging duplicates is the coalescer's job),
    # both user views' fields in the same HMGET.
    assert redis_server.command_calls("hmget") == 8 + 8


def test_a_joiner_on_the_feast_store_fills_the_model_input(
    feast_repo: FeastRepo, redis_server: RedisServer, tmp_path: Path
) -> None:
    config = load_features_config(
        {
            "store": "feast",
            # Results are compared, not latency: a first connection on a busy machine may take
            # longer than the 20 ms default, which would serve defaults.
            "timeout_ms": 10_000,
            "redis_url": redis_server.url(FEAST_DB),
            "feast_project": PROJECT,
            "into": "x",
            "request_inputs": ["amount"],
            "views": [v.model_dump(exclude_none=True) for v in VIEWS],
        }
    )
    model_inputs = [TensorSpec("x", "FP32", (-1, 7))]
    theirs = feast_answer(feast_repo)

    async def main() -> dict[str, np.ndarray]:
        joiner = FeatureJoiner(config, tmp_path, model_inputs, model="m", version="1")
        try:
            return await joiner.assemble(
                {
                    "user_id": np.array(USER_KEYS, np.int64).reshape(-1, 1),
                    "item": np.array(ITEM_KEYS, dtype=object),
                    "amount": np.arange(len(USER_KEYS), dtype=np.float64),
                }
            )
        finally:
            await joiner.close()

    x = asyncio.run(main())["x"]
    names = [f"{v.name}__{f}" for v in VIEWS for f in v.features]
    for j, name in enumerate(names):
        expected = [0.0 if v is None else v for v in theirs[name]]
        assert x[:, j].tolist() == np.array(expected, np.float32).tolist(), name
    assert x[:, 6].tolist() == list(range(len(USER_KEYS)))


def test_a_text_feature_is_an_error_not_a_store_failure(
    feast_repo: FeastRepo, redis_server: RedisServer
) -> None:
    # Point a view at a field that holds a string: write one the way Feast does.
    from headrace.features.feast_layout import entity_keys, feature_field
    from headrace.wire import feast_value as Value_pb2

    (key,) = entity_keys("user_id", "INT64", [1001], PROJECT)
    client = redis_server.client(db=FEAST_DB)
    field = feature_field("user_stats", "city")
    client.hset(key, field, Value_pb2.Value(string_val="Lyon").SerializeToString())
    client.close()

    async def main() -> None:
        view = ViewConfig(name="user_stats", entity="user_id", features=("city",))
        store = FeastStore([view], redis_server.url(FEAST_DB), PROJECT)
        try:
            with pytest.raises(InternalError, match="'user_stats' 'city': a string_val"):
                await store.read({"user_id": np.array([1001], np.int64)})
        finally:
            await store.close()

    asyncio.run(main())


def test_feast_event_times_drive_max_age(feast_repo: FeastRepo, redis_server: RedisServer) -> None:
    # user_risk rows are 30 days old, user_stats rows hours old (their _ts fields).
    views = [
        ViewConfig(name="user_stats", entity="user_id", features=("age",), max_age_s=86400),
        ViewConfig(name="user_risk", entity="user_id", features=("risk",), max_age_s=86400),
    ]

    async def main() -> list[ViewRows]:
        store = FeastStore(views, redis_server.url(FEAST_DB), PROJECT)
        try:
            return await store.read({"user_id": np.array([1001, 1003, 7], np.int64)})
        finally:
            await store.close()

    stats, risk = asyncio.run(main())
    assert stats.event_time_s is not None and risk.event_time_s is not None
    expected = (NOW - timedelta(hours=1)).timestamp()  # 1001's latest row
    assert stats.event_time_s[0] == pytest.approx(expected, abs=1e-3)
    assert risk.event_time_s[1] == pytest.approx((NOW - timedelta(days=30)).timestamp(), abs=1e-3)
    assert np.isnan(stats.event_time_s[2])
    config = load_features_config(
        {
            "store": "feast",
            # Results are compared, not latency: a first connection on a busy machine may take
            # longer than the 20 ms default, which would serve defaults.
            "timeout_ms": 10_000,
            "redis_url": redis_server.url(FEAST_DB),
            "feast_project": PROJECT,
            "into": "x",
            "views": [
                {**v.model_dump(exclude_none=True), "defaults": {v.features[0]: -1.0}}
                for v in views
            ],
        }
    )

    async def assemble() -> np.ndarray:
        joiner = FeatureJoiner(config, Path("."), [TensorSpec("x", "FP32", (-1, 2))])
        try:
            return (await joiner.assemble({"user_id": np.array([1001], np.int64)}))["x"]
        finally:
            await joiner.close()

    x = asyncio.run(assemble())
    assert x[0, 0] == stats.values[0, 0] and x[0, 1] == -1.0  # user_risk is stale: default
