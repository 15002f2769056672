"""The feature joiner on the embedded store: what clients send, how ``into`` is filled, the
missing-value rules, bad input, metrics."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prometheus_client import CollectorRegistry

from headrace.backends.base import TensorSpec
from headrace.errors import ConfigError, InvalidArgumentError, NotFoundError
from headrace.features import FeatureJoiner, FeatureMetrics, load_features_config
from unit.features import snapshots

NOW = time.time()


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    snapshots.write(tmp_path / "users.parquet", snapshots.user_table(rows=20))
    items = {
        "item_id": np.array(["a", "b", "c"], dtype=object),
        "ctr_7d": np.array([0.5, 0.25, 0.125]),
    }
    pq.write_table(pa.table(items), tmp_path / "items.parquet")
    fresh = pa.table(
        {
            "user_id": pa.array([1000, 1003], pa.int64()),
            "risk": pa.array([0.5, 0.75], pa.float32()),
            "event_timestamp": pa.array(
                [int((NOW - 10) * 1e6), int((NOW - 7200) * 1e6)], pa.timestamp("us", tz="UTC")
            ),
        }
    )
    pq.write_table(fresh, tmp_path / "risk.parquet")
    return tmp_path


def config(**changes: Any) -> Any:
    table: dict[str, Any] = {
        "into": "x",
        "request_inputs": ["amount"],
        "views": [
            {
                "name": "user_stats",
                "entity": "user_id",
                "features": ["age", "spend_30d"],
                "defaults": {"age": 35.0},
                "snapshot": "users.parquet",
            },
            {
                "name": "item_stats",
                "entity": "item_id",
                "features": ["ctr_7d"],
                "snapshot": "items.parquet",
            },
        ],
    }
    table.update(changes)
    return load_features_config(table)


MODEL_INPUTS = [TensorSpec("x", "FP32", (-1, 4)), TensorSpec("mask", "BOOL", (-1, 2))]


def joiner(model_dir: Path, **kwargs: Any) -> FeatureJoiner:
    return FeatureJoiner(
        kwargs.pop("config", None) or config(),
        model_dir,
        kwargs.pop("model_inputs", MODEL_INPUTS),
        model="fraud",
        version="3",
        **kwargs,
    )


def assemble(j: FeatureJoiner, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return asyncio.run(j.assemble(inputs))


def request(users: list[int], items: list[bytes]) -> dict[str, np.ndarray]:
    return {
        "user_id": np.array(users, np.int64),
        "item_id": np.array(items, dtype=object),
        "amount": np.arange(len(users), dtype=np.float32) + 0.5,
        "mask": np.ones((len(users), 2), np.bool_),
    }


def test_clients_send_entities_and_request_inputs_not_into(model_dir: Path) -> None:
    specs = joiner(model_dir).client_inputs()
    assert specs == (
        TensorSpec("mask", "BOOL", (-1, 2)),
        TensorSpec("user_id", "INT64", (-1,)),
        TensorSpec("item_id", "BYTES", (-1,)),  # from the snapshot's key column
        TensorSpec("amount", "FP32", (-1,)),
    )


def test_into_is_filled_in_view_and_feature_order_then_request_inputs(model_dir: Path) -> None:
    table = snapshots.user_table(rows=20)
    out = assemble(joiner(model_dir), request([1003, 4, 1000], [b"c", b"a", b"zz"]))
    assert set(out) == {"x", "mask"}
    x = out["x"]
    assert x.dtype == np.float32 and x.shape == (3, 4)
    expected = [
        [table["age"][1], table["spend_30d"][1], 0.125, 0.5],
        [35.0, 0.0, 0.5, 1.5],  # unknown user: the defaults (age 35, spend 0)
        [table["age"][0], table["spend_30d"][0], 0.0, 2.5],  # unknown item: 0.0
    ]
    assert x.tolist() == np.array(expected, np.float32).tolist()


def test_on_missing_error_names_the_view_feature_and_key(model_dir: Path) -> None:
    j = joiner(model_dir, config=config(on_missing="error"))
    assert assemble(j, request([1003], [b"a"]))["x"].shape == (1, 4)
    with pytest.raises(NotFoundError) as error:
        assemble(j, request([1003, 42], [b"a", b"b"]))
    assert "'user_stats.age' for user_id=42: no row for the key" in error.value.message
    with pytest.raises(NotFoundError, match=r"'item_stats.ctr_7d' for item_id='nope'"):
        assemble(j, request([1003], [b"nope"]))


def test_rows_older_than_max_age_count_as_missing(model_dir: Path) -> None:
    views = [
        {
            "name": "risk",
            "entity": "user_id",
            "features": ["risk"],
            "defaults": {"risk": -1.0},
            "snapshot": "risk.parquet",
            "max_age_s": 3600,
        }
    ]
    registry = CollectorRegistry()
    j = joiner(
        model_dir,
        config=config(views=views, request_inputs=[]),
        model_inputs=[TensorSpec("x", "FP32", (-1, 1))],
        metrics=FeatureMetrics(registry),
    )
    x = assemble(j, {"user_id": np.array([1000, 1003, 1], np.int64)})["x"]
    assert x[:, 0].tolist() == [0.5, -1.0, -1.0]
    labels = {"model": "fraud", "version": "3", "view": "risk"}
    for result, count in [("hit", 1), ("stale", 1), ("miss", 1)]:
        sample = {**labels, "result": result}
        value = registry.get_sample_value("headrace_feature_rows_total", sample)
        assert value == count, result
    assert registry.get_sample_value("headrace_feature_defaults_total", labels) == 2
    strict = joiner(
        model_dir,
        config=config(views=views, request_inputs=[], on_missing="error"),
        model_inputs=[TensorSpec("x", "FP32", (-1, 1))],
    )
    with pytest.raises(NotFoundError, match="user_id=1003: its row is older than max_age_s=3600"):
        assemble(strict, {"user_id": np.array([1000, 1003], np.int64)})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"user_id": np.array([1.0, 2.0])}, "'user_id': datatype float64, expected INT64"),
        ({"user_id": np.zeros((2, 2), np.int64)}, r"'user_id': shape \[2, 2\]"),
        ({"user_id": np.array([b"a", b"b"], dtype=object)}, "'user_id': BYTES, expected INT64"),
        ({"item_id": np.array([1, 2], np.int64)}, "'item_id': INT64, expected BYTES"),
        ({"user_id": np.array([1, 2, 3], np.int64)}, "'item_id' has 2 rows, the other inputs 3"),
        ({"amount": np.array(["a", "b"])}, "request input 'amount'"),
        ({"amount": np.zeros((2, 3), np.float32)}, r"'amount': float32 \[2, 3\]"),
        ({"user_id": None}, "missing entity input 'user_id'"),
        ({"amount": None}, "missing request input 'amount'"),
    ],
)
def test_bad_entities_and_request_inputs(
    model_dir: Path, change: dict[str, Any], message: str
) -> None:
    inputs = request([1000, 1003], [b"a", b"b"])
    for name, value in change.items():
        if value is None:
            del inputs[name]
        else:
            inputs[name] = value
    with pytest.raises(InvalidArgumentError, match=message):
        assemble(joiner(model_dir), inputs)


def test_entity_columns_of_shape_rows_by_one_are_accepted(model_dir: Path) -> None:
    inputs = request([1000, 1003], [b"a", b"b"])
    flat = assemble(joiner(model_dir), inputs)["x"]
    inputs["user_id"] = inputs["user_id"].reshape(-1, 1)
    inputs["item_id"] = inputs["item_id"].reshape(-1, 1)
    inputs["amount"] = inputs["amount"].reshape(-1, 1).astype(np.float64)
    assert np.array_equal(assemble(joiner(model_dir), inputs)["x"], flat)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ([TensorSpec("y", "FP32", (-1, 4))], "the model has no input 'x'"),
        ([TensorSpec("x", "FP32", (-1, 5))], r"fill FP32 \[-1, 4\]"),
        ([TensorSpec("x", "FP16", (-1, 4))], "is FP16"),
        ([TensorSpec("x", "FP32", (4,))], r"FP32 \[4\]"),
    ],
)
def test_into_must_be_an_fp32_model_input_of_the_right_width(
    model_dir: Path, inputs: list[TensorSpec], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        joiner(model_dir, model_inputs=inputs)


def test_inputs_the_model_also_takes_pass_through(model_dir: Path) -> None:
    inputs = [*MODEL_INPUTS, TensorSpec("user_id", "INT64", (-1,))]
    j = joiner(model_dir, model_inputs=inputs)
    assert [s.name for s in j.client_inputs()] == ["mask", "user_id", "item_id", "amount"]
    out = assemble(j, request([1000], [b"a"]))
    assert set(out) == {"x", "mask", "user_id"}


def test_an_empty_request_asks_no_store(model_dir: Path) -> None:
    out = assemble(joiner(model_dir), request([], []))
    assert out["x"].shape == (0, 4) and out["x"].dtype == np.float32
