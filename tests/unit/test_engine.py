"""The in-process engine: the same behaviour as the wire, without a socket."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from headrace import Engine
from headrace.errors import ConfigError, InvalidArgumentError, NotFoundError
from helpers import onnx_models


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    repo = tmp_path_factory.mktemp("engine") / "models"
    onnx_models.write_model(repo, "pair", onnx_models.two_in_two_out())
    onnx_models.write_model(repo, "mlp", onnx_models.mlp([8, 4]), version=3)
    onnx_models.write_model(repo, "typo", onnx_models.mlp([8, 4]), toml="max_batch_sise = 3\n")
    engine = Engine.from_repository(repo)
    yield engine
    engine.close()


def test_sync_infer(engine: Engine) -> None:
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    result = engine.infer("pair", {"a": a, "b": a}, outputs=["sum"])
    assert result.model_version == "1"
    assert list(result.outputs) == ["sum"]
    assert np.array_equal(result.outputs["sum"], 2 * a)


def test_async_infer_runs_concurrently(engine: Engine) -> None:
    async def main() -> list[np.ndarray]:
        calls = [
            engine.infer_async(
                "pair", {"a": np.full((1, 4), i, np.float32), "b": np.ones((1, 4), np.float32)}
            )
            for i in range(16)
        ]
        return [r.outputs["product"] for r in await asyncio.gather(*calls)]

    products = asyncio.run(main())
    for i, product in enumerate(products):
        assert np.array_equal(product, np.full((1, 4), i, np.float32))


def test_metadata_and_errors(engine: Engine) -> None:
    metadata = engine.metadata("mlp")
    assert metadata.versions == ("3",)
    assert metadata.inputs[0].shape == (-1, 8)
    with pytest.raises(NotFoundError):
        engine.infer("nope", {})
    with pytest.raises(InvalidArgumentError, match="numpy dtype float64"):
        engine.infer("mlp", {"x": np.ones((1, 8))})
    with pytest.raises(NotFoundError, match="version '1'"):
        engine.infer("mlp", {"x": np.ones((1, 8), np.float32)}, version=1)


def test_bad_model_toml_is_reported_in_the_index(engine: Engine) -> None:
    entry = next(e for e in engine.repository_index() if e.name == "typo")
    assert entry.state == "UNAVAILABLE"
    assert "unknown key 'max_batch_sise'" in entry.reason and "model.toml" in entry.reason
    with pytest.raises(ConfigError):
        engine.load_model("typo")
