"""The filesystem repository through the Source protocol: statuses, [aliases] from model.toml,
references, and materialized versions read in place. The engine's reader keeps working."""

from __future__ import annotations

import os
import time
from pathlib import Path

import onnx
import pytest

from headrace.errors import ConfigError, NotFoundError
from headrace.registry import FilesystemRepository, FilesystemSource, Source, VersionStatus
from headrace.registry.base import ModelReference, fingerprint_directory
from headrace.registry.filesystem import read_aliases
from headrace.registry.verify import IncompleteModelError
from helpers import onnx_models


def age(directory: Path, seconds: float) -> None:
    """Date every file of ``directory`` back, as if it had been copied ``seconds`` ago."""
    stamp = time.time() - seconds
    for path in directory.rglob("*"):
        os.utime(path, (stamp, stamp))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    for version, seed in [(1, 1), (2, 2), (3, 3)]:
        onnx_models.write_model(root, "fraud", onnx_models.mlp([4, 2], seed=seed), version)
    (root / "fraud" / "model.toml").write_text(
        'version_policy = "all"\n[aliases]\nchampion = 2\nchallenger = 3\n'
    )
    (root / "fraud" / "2" / "reference.json").write_text("{}")
    (root / "fraud" / "2" / "input_example.json").write_text("[[0, 0, 0, 0]]")
    # A version being copied: half a model file, written just now.
    partial = root / "fraud" / "4" / "model.onnx"
    partial.parent.mkdir()
    partial.write_bytes(onnx_models.mlp([4, 2]).SerializeToString()[:40])
    age(root / "fraud" / "1", 60)
    age(root / "fraud" / "2", 60)
    age(root / "fraud" / "3", 60)
    return root


def test_describe_reports_statuses_and_aliases(repo: Path) -> None:
    source = FilesystemSource(repo, settle_s=5.0)
    assert isinstance(source, Source)
    assert source.model_names() == ["fraud"]
    description = source.describe("fraud")
    assert dict(description.aliases) == {"champion": 2, "challenger": 3}
    statuses = {v.version: (v.status, v.aliases) for v in description.versions}
    assert statuses == {
        1: (VersionStatus.READY, ()),
        2: (VersionStatus.READY, ("champion",)),
        3: (VersionStatus.READY, ("challenger",)),
        4: (VersionStatus.PENDING, ()),
    }
    # Recently touched files are PENDING until the settle time has passed, even when complete.
    os.utime(repo / "fraud" / "3" / "model.onnx")
    recent = {v.version: v for v in source.describe("fraud").versions}[3]
    assert recent.status == VersionStatus.PENDING and "settle" in recent.status_message
    # An old but incomplete file stays PENDING with the reason.
    age(repo / "fraud" / "4", 60)
    incomplete = {v.version: v for v in source.describe("fraud").versions}[4]
    assert incomplete.status == VersionStatus.PENDING
    assert "not a complete ONNX model" in incomplete.status_message


def test_references_resolve(repo: Path) -> None:
    source = FilesystemSource(repo, settle_s=5.0)
    assert source.resolve(ModelReference.parse("fraud@champion")).version == 2
    assert source.resolve(ModelReference.parse("fraud/1")).version == 1
    assert source.resolve(ModelReference.parse("fraud")).version == 3  # newest READY
    with pytest.raises(NotFoundError, match="no alias 'nobody'"):
        source.resolve(ModelReference.parse("fraud@nobody"))
    with pytest.raises(NotFoundError, match="no version 9"):
        source.resolve(ModelReference.parse("fraud/9"))
    with pytest.raises(NotFoundError):
        source.describe("absent")


def test_materialize_reads_in_place(repo: Path) -> None:
    source = FilesystemSource(repo, settle_s=5.0)
    found = source.materialize("fraud", 2)
    assert found.directory == repo / "fraud" / "2"
    assert found.model_file == repo / "fraud" / "2" / "model.onnx"
    assert found.backend == "onnxruntime"
    assert found.reference_file == repo / "fraud" / "2" / "reference.json"
    assert found.input_example_file == repo / "fraud" / "2" / "input_example.json"
    assert found.config_file == repo / "fraud" / "model.toml"
    assert found.model_config().version_policy.kind == "all"
    assert found.fingerprint == fingerprint_directory(repo / "fraud" / "2")
    assert source.materialize("fraud", 1).reference_file is None
    assert source.materialize("fraud", 1).fingerprint != found.fingerprint
    with pytest.raises(IncompleteModelError, match="not a complete ONNX model"):
        source.materialize("fraud", 4)


def test_fingerprint_follows_content_not_timestamps(repo: Path) -> None:
    source = FilesystemSource(repo, settle_s=0.0)
    before = source.materialize("fraud", 1).fingerprint
    os.utime(repo / "fraud" / "1" / "model.onnx")
    assert source.materialize("fraud", 1).fingerprint == before
    onnx.save(onnx_models.mlp([4, 2], seed=9), str(repo / "fraud" / "1" / "model.onnx"))
    assert source.materialize("fraud", 1).fingerprint != before


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("aliases = 3\n", "must be a table"),
        ("[aliases]\nchampion = 0\n", "positive version"),
        ("[aliases]\nchampion = '2'\n", "positive version"),
        ("[aliases]\nlatest = 2\n", "not an alias name"),
    ],
)
def test_bad_aliases_name_the_key_and_file(tmp_path: Path, table: str, message: str) -> None:
    path = tmp_path / "model.toml"
    path.write_text(table)
    with pytest.raises(ConfigError, match=message) as info:
        read_aliases(path)
    assert str(path) in str(info.value)


def test_engine_reader_accepts_aliases_in_model_toml(repo: Path) -> None:
    source = FilesystemRepository(repo).read("fraud")
    # Today's reader lists every folder with a model file (4 is half-written: the engine's load
    # fails on it); FilesystemSource marks it PENDING instead.
    assert [v.version for v in source.versions] == [1, 2, 3, 4]
    assert source.config.version_policy.kind == "all"
