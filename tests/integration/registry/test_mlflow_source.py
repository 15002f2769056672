"""The MLflow source against a real MLflow server: aliases, statuses, references, and versions
materialized into the cache complete and verified, or not at all."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from headrace.errors import InvalidArgumentError, NotFoundError
from headrace.registry.base import ModelReference, VersionStatus
from headrace.registry.cache import ModelCache, VerificationError
from headrace.registry.example import read_input_example
from headrace.registry.mlflow import MlflowSource


def source_for(server: Any, tmp_path: Path, *references: str) -> MlflowSource:
    return MlflowSource(
        list(references), cache=ModelCache(tmp_path / "cache"), tracking_uri=server.uri
    )


def test_aliases_statuses_and_references(mlflow_server: Any, logged: Any, tmp_path: Path) -> None:
    name = "source-describe"
    v1 = mlflow_server.create_version(name, logged.one)
    v2 = mlflow_server.create_version(name, logged.two)
    mlflow_server.set_alias(name, "champion", v1)
    mlflow_server.set_alias(name, "challenger", v2)
    source = source_for(mlflow_server, tmp_path, f"{name}@champion")

    assert source.model_names() == [name]
    assert source.aliases(name) == {"champion": v1, "challenger": v2}
    description = source.describe(name)
    assert [(v.version, v.status, v.aliases) for v in description.versions] == [
        (v1, VersionStatus.READY, ("champion",)),
        (v2, VersionStatus.READY, ("challenger",)),
    ]
    assert description.resolve_label("challenger") == v2
    assert description.resolve_label(str(v1)) == v1
    assert source.resolve(ModelReference.parse(f"{name}@challenger")).version == v2
    assert source.resolve(ModelReference.parse(f"{name}/{v1}")).version == v1
    assert source.resolve(ModelReference(name)).version == v2  # newest READY

    with pytest.raises(NotFoundError, match="alias"):
        description.resolve_label("nobody")
    with pytest.raises(NotFoundError):
        source.resolve(ModelReference.parse(f"{name}@nobody"))
    with pytest.raises(NotFoundError):
        source.version(name, 99)
    with pytest.raises(NotFoundError):
        source.aliases("no-such-model")


def test_materialized_version_is_complete_and_loadable(
    mlflow_server: Any, logged: Any, tmp_path: Path
) -> None:
    from mlflow.models import Model

    source = source_for(mlflow_server, tmp_path, "adder@champion")
    found = source.materialize("adder", 2)

    # The model file is the one MLmodel's flavors.onnx.data names; the extras sit next to it.
    served_mlmodel = Model.load(str(mlflow_server.artifact_dir("adder", 2) / "MLmodel"))
    assert found.model_file.name == served_mlmodel.flavors["onnx"]["data"]
    assert found.backend == "onnxruntime"
    assert found.reference_file == found.model_file.parent / "reference.json"
    profile = json.loads(found.reference_file.read_text())
    assert profile["format"] == "headrace-drift-profile" and profile["rows"] == 512
    assert found.model_config().max_batch_size == 8
    assert found.version_source().path == found.model_file
    assert found.extras["run_id"] == logged.two.run_id
    assert not found.from_cache and found.download_ms is not None

    # The logged input example is the warm-up sample: run it through the downloaded model.
    assert found.input_example_file is not None
    inputs = read_input_example(found.input_example_file).arrays({"x": np.float32})
    session = ort.InferenceSession(str(found.model_file), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, inputs)
    np.testing.assert_allclose(y, inputs["x"] + 2.0)

    again = source.materialize("adder", 2)
    assert again.from_cache and again.download_ms is None
    assert again.fingerprint == found.fingerprint and again.directory == found.directory
    assert list((tmp_path / "cache" / ".partial").iterdir()) == []


def test_versions_that_are_not_ready_never_materialize(
    mlflow_server: Any, logged: Any, tmp_path: Path
) -> None:
    name = "source-status"
    pending = mlflow_server.create_version(name, logged.one)
    failed = mlflow_server.create_version(name, logged.two)
    mlflow_server.set_status(name, pending, "PENDING_REGISTRATION")
    mlflow_server.set_status(name, failed, "FAILED_REGISTRATION")
    source = source_for(mlflow_server, tmp_path, f"{name}/{pending}")

    assert source.version(name, pending).status == VersionStatus.PENDING
    assert source.version(name, failed).status == VersionStatus.FAILED
    for version, status in [(pending, "PENDING"), (failed, "FAILED")]:
        with pytest.raises(InvalidArgumentError, match=f"is {status}, not READY"):
            source.materialize(name, version)
    assert source.cache.versions(name) == []


def test_corrupt_artifact_fails_verification_and_leaves_nothing(
    mlflow_server: Any, tmp_path: Path
) -> None:
    name = "source-corrupt"
    mlflow_server.log_model(name, 5.0, workdir=tmp_path / "logged")
    onnx_file = mlflow_server.artifact_dir(name, 1) / "model.onnx"
    complete = onnx_file.read_bytes()
    source = source_for(mlflow_server, tmp_path, f"{name}/1")

    onnx_file.write_bytes(complete[: len(complete) // 2])  # a truncated upload
    with pytest.raises(VerificationError, match="not a complete ONNX model"):
        source.materialize(name, 1)
    onnx_file.write_bytes(b"\xff" * len(complete))  # overwritten, same size
    with pytest.raises(VerificationError, match="not a complete ONNX model"):
        source.materialize(name, 1)
    assert source.cache.versions(name) == []
    assert not source.cache.version_dir(name, 1).exists()
    assert list((tmp_path / "cache" / ".partial").iterdir()) == []

    onnx_file.write_bytes(complete)  # repaired: now it installs
    assert source.materialize(name, 1).model_file.read_bytes() == complete


def test_tracking_uri_from_the_environment(
    mlflow_server: Any, logged: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    source = MlflowSource(["adder/1"], cache=ModelCache(tmp_path / "cache"))
    assert source.uri == mlflow_server.uri
    assert source.version("adder", 1).status == VersionStatus.READY
