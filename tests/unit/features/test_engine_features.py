"""A model with ``[features]`` in the in-process engine (embedded store: no server, no Redis):
clients see the entity and request inputs, the model gets the assembled ``x``, warm-up feeds the
model's own inputs, and a table that does not fit the model fails the load with its file."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from headrace.engine import Engine
from headrace.errors import InvalidArgumentError
from headrace.features import read_served_log
from headrace.types import TensorSpec
from helpers import onnx_models
from integration.features import served_repo

CLIENT_INPUTS = (
    TensorSpec("user_id", "INT64", (-1,)),
    TensorSpec("item_id", "BYTES", (-1,)),
    TensorSpec("amount", "FP32", (-1,)),
)


def repository(root: Path) -> Path:
    repo = root / "models"
    mlp = onnx_models.mlp(served_repo.SIZES, seed=3)
    onnx_models.write_model(repo, "bare", mlp, toml="max_batch_size = 64\n")
    toml = served_repo.features_toml("embedded", "", 5000, "default")
    onnx_models.write_model(repo, "scored", mlp, toml=toml)
    served_repo.write_snapshots(repo / "scored")
    return repo


def why_not_ready(engine: Engine, model: str) -> str:
    """The reasons the repository index gives (the model's, and its failed versions')."""
    return " | ".join(e.reason for e in engine.repository_index() if e.name == model)


def test_clients_see_the_entity_and_request_inputs(tmp_path: Path) -> None:
    engine = Engine.from_repository(repository(tmp_path), metrics_port=-1)
    try:
        assert engine.metadata("scored").inputs == CLIENT_INPUTS
        version = engine.get_version("scored")
        assert version.inputs == CLIENT_INPUTS
        assert version.model_inputs == (TensorSpec("x", "FP32", (-1, served_repo.WIDTH)),)
        inputs = served_repo.request(7, 1)
        want = engine.infer("bare", {"x": served_repo.expected_x(inputs)}).outputs["y"]
        assert np.array_equal(engine.infer("scored", inputs).outputs["y"], want)
        result = asyncio.run(engine.infer_async("scored", inputs))
        assert np.array_equal(result.outputs["y"], want)
        with pytest.raises(InvalidArgumentError, match="unknown input 'x'"):
            engine.infer("scored", {**inputs, "x": served_repo.expected_x(inputs)})
        with pytest.raises(InvalidArgumentError, match="entity input 'item_id'"):
            engine.infer("scored", {**inputs, "item_id": inputs["user_id"]})
    finally:
        engine.close()


def test_warm_up_feeds_the_models_own_inputs(tmp_path: Path) -> None:
    repo = repository(tmp_path)
    version = repo / "scored" / "1"
    np.savez(version / "warmup.npz", x=np.ones((2, served_repo.WIDTH), np.float32))
    engine = Engine.from_repository(repo, metrics_port=-1)
    try:
        assert engine.is_model_ready("scored")
    finally:
        engine.close()
    # A sample of the client's inputs is not the model's: the load says so.
    client = served_repo.request(2, 3)
    np.savez(version / "warmup.npz", user_id=client["user_id"], amount=client["amount"])
    engine = Engine.from_repository(repo, metrics_port=-1)
    try:
        assert not engine.is_model_ready("scored")
        reason = why_not_ready(engine, "scored")
        assert "warmup.npz" in reason and "unknown input" in reason
    finally:
        engine.close()


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('into = "x"', 'into = "z"', "features.into: the model has no input 'z'"),
        ('request_inputs = ["amount"]', "request_inputs = []", "features fill FP32 [-1, 3]"),
        ('snapshot = "users.parquet"', 'snapshot = "gone.parquet"', "snapshot file not found"),
    ],
)
def test_a_features_table_that_does_not_fit_fails_the_load(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    repo = repository(tmp_path)
    toml = repo / "scored" / "model.toml"
    toml.write_text(toml.read_text().replace(old, new))
    engine = Engine.from_repository(repo, metrics_port=-1)
    try:
        assert not engine.is_model_ready("scored") and engine.is_model_ready("bare")
        reason = why_not_ready(engine, "scored")
        assert str(toml) in reason and message in reason, reason
    finally:
        engine.close()


def test_blocking_calls_log_their_served_rows(tmp_path: Path) -> None:
    engine = Engine.from_repository(
        repository(tmp_path), metrics_port=-1, served_log=tmp_path / "log"
    )
    try:
        sent = {f"r{i}": served_repo.request(rows, 10 + i) for i, rows in enumerate((3, 1, 5))}
        for request_id, inputs in sent.items():
            engine.infer("scored", inputs, request_id=request_id)
        engine.infer("bare", {"x": np.zeros((2, served_repo.WIDTH), np.float32)})
    finally:
        engine.close()  # closes the log: what was queued is written
    table = read_served_log(tmp_path / "log").to_pydict()
    assert table["request_id"] == [rid for rid, inputs in sent.items() for _ in inputs["amount"]]
    assert set(table["model"]) == {"scored"}
    x = np.array([table["user_stats.age"], table["user_stats.spend_30d"],
                  table["item_stats.ctr_7d"], table["amount"]], np.float32).T  # fmt: skip
    want = np.concatenate([served_repo.expected_x(inputs) for inputs in sent.values()])
    assert np.array_equal(x, want)
