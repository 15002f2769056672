"""``headrace profile`` of a model with ``[features]``: the data holds what clients send
(``user_id``, ``item_id``, ``amount``); the profile holds what the model receives — ``x`` as the
model's own store assembles it, its columns named ``view.feature`` — and the model's answers on
it, exactly the profile of the bare model fed the assembled rows. Embedded store (the snapshots
in the model folder) and redis store (a real redis-server); a store that cannot answer fails the
profile instead of profiling defaults."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from headrace.cli import main as cli_main
from headrace.monitoring.drift import ReferenceProfile
from integration.features import served_repo
from integration.features.redis_server import RedisServer, free_port

ROWS = 3000
NAMES = ["user_stats.age", "user_stats.spend_30d", "item_stats.ctr_7d", "amount", "y:0", "y:1"]


def write_repository(root: Path, redis_url: str) -> Path:
    # The repository's _endpoints.toml names models the profile does not load: a profile runs
    # its one version directly, never through the endpoints (which would not resolve).
    return served_repo.write_repository(root, redis_url)


def write_requests(path: Path) -> dict[str, np.ndarray]:
    inputs = served_repo.request(ROWS, seed=11)
    table = pa.table(
        {
            "user_id": pa.array(inputs["user_id"]),
            "item_id": pa.array(inputs["item_id"].tolist(), pa.binary()),
            "amount": pa.array(inputs["amount"]),
        }
    )
    pq.write_table(table, path)
    return inputs


def bare_profile(tmp_path: Path, repo: Path, inputs: dict[str, np.ndarray]) -> ReferenceProfile:
    """The bare model (same weights) profiled on ``x`` as the features must fill it."""
    np.save(tmp_path / "x.npy", served_repo.expected_x(inputs))
    out = tmp_path / "bare.json"
    assert cli_main(["profile", "--data", str(tmp_path / "x.npy"), "--model-repository",
                     str(repo), "--model", "bare", "--out", str(out)]) == 0  # fmt: skip
    return ReferenceProfile.load(out)


def profile(repo: Path, model: str, data: Path) -> int:
    return cli_main(
        ["profile", "--data", str(data), "--model-repository", str(repo), "--model", model]
    )


def assert_profiles_the_assembled_rows(
    repo: Path, model: str, expected: ReferenceProfile, out: str
) -> ReferenceProfile:
    got = ReferenceProfile.load(repo / model / "1" / "reference.json")
    assert got.feature_names == NAMES
    assert [(i.name, i.columns) for i in got.inputs] == [("x", 4), ("y", 2)]
    assert got.rows == ROWS
    # Same bins and counts as the bare model fed the expected rows (names aside).
    for mine, theirs in zip(got.features, expected.features, strict=True):
        assert dataclasses.replace(mine, name=theirs.name) == theirs, mine.name
    # Defaults for unknown users and items were served: the profile holds them too.
    assert got.feature("user_stats.age").rows == ROWS
    assert "features assembled from the" in out
    return got


def test_profile_of_an_embedded_features_model_holds_the_assembled_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = write_repository(tmp_path, "redis://127.0.0.1:1/0")
    inputs = write_requests(tmp_path / "requests.parquet")
    expected = bare_profile(tmp_path, repo, inputs)
    capsys.readouterr()
    assert profile(repo, "scored_embedded", tmp_path / "requests.parquet") == 0
    got = assert_profiles_the_assembled_rows(
        repo, "scored_embedded", expected, capsys.readouterr().out
    )
    snapshots = "embedded (snapshots users.parquet, items.parquet)"
    assert got.metadata["features_store"] == snapshots


def test_profile_of_a_redis_features_model_reads_its_redis(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    redis_server: RedisServer,
    redis_db: int,
) -> None:
    url = redis_server.url(redis_db)
    repo = write_repository(tmp_path, url)
    served_repo.write_snapshots(tmp_path / "snapshots")
    served_repo.push(tmp_path / "snapshots", url)
    inputs = write_requests(tmp_path / "requests.parquet")
    expected = bare_profile(tmp_path, repo, inputs)
    capsys.readouterr()
    redis_server.reset_stats()
    assert profile(repo, "scored", tmp_path / "requests.parquet") == 0
    got = assert_profiles_the_assembled_rows(repo, "scored", expected, capsys.readouterr().out)
    assert got.metadata["features_store"] == f"redis ({url})"
    assert redis_server.command_calls("mget") > 0  # read from Redis, not from a snapshot


def test_a_store_that_cannot_answer_fails_the_profile(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Nothing listens there: serving would answer with defaults (on_store_error = "default"),
    # a profile must not.
    repo = write_repository(tmp_path, f"redis://127.0.0.1:{free_port()}/0")
    write_requests(tmp_path / "requests.parquet")
    capsys.readouterr()
    assert profile(repo, "scored", tmp_path / "requests.parquet") == 2
    err = capsys.readouterr().err
    assert "headrace profile:" in err and "features of model 'scored'" in err
    assert not (repo / "scored" / "1" / "reference.json").exists()
