"""Reference profiles: binning, the versioned file format and the data readers."""

from __future__ import annotations

import builtins
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from headrace.cli.profile import data_main as main
from headrace.errors import InvalidArgumentError
from headrace.monitoring.drift import (
    FORMAT_VERSION,
    ProfileFormatError,
    ReferenceProfile,
    build_profile,
    read_data,
)


def test_numerical_edges_are_reference_quantiles_and_counts_match() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10_000, 3))
    x[::50, 1] = np.nan
    profile = build_profile(x, bins=50)
    assert profile.feature_names == ["x:0", "x:1", "x:2"]
    assert profile.rows == 10_000
    for j, feature in enumerate(profile.features):
        column = x[:, j]
        finite = column[np.isfinite(column)]
        assert np.array_equal(feature.edges, np.quantile(finite, np.arange(1, 50) / 50))
        value_bins = np.searchsorted(feature.edges, finite, side="left")
        expected = np.bincount(value_bins, minlength=len(feature.edges) + 1)
        assert list(feature.counts[:-1]) == expected.tolist()
        assert feature.missing == int(np.isnan(column).sum())
        # Quantile bins hold about 1/bins of the reference each.
        assert max(feature.counts[:-1]) <= 0.03 * len(finite)
    assert profile.features[1].missing == 200


def test_tied_quantiles_are_deduplicated() -> None:
    x = np.concatenate([np.zeros(900), np.arange(100.0)])
    feature = build_profile(x.reshape(-1, 1), bins=20).features[0]
    assert list(feature.edges) == sorted(set(feature.edges))
    assert len(feature.edges) < 19
    assert sum(feature.counts) == 1_000
    constant = build_profile(np.full((10, 1), 3.0)).features[0]
    assert constant.edges == (3.0,) and constant.counts == (10, 0, 0)


def test_categorical_top_k_other_and_missing() -> None:
    values = np.array(["a"] * 5 + ["b"] * 3 + ["c"] * 2 + ["d"] + [None] * 4, dtype=object)
    feature = build_profile({"colour": values}, top_k=2).features[0]
    assert feature.name == "colour" and feature.kind == "categorical"
    assert feature.categories == ("a", "b")
    assert feature.counts == (5, 3, 3, 4)  # a, b, other (c, c, d), missing


def test_feature_names_inputs_and_categorical_selection() -> None:
    rng = np.random.default_rng(1)
    data = {"dense": rng.normal(size=(100, 2)), "age": rng.integers(0, 5, size=100)}
    profile = build_profile(data, categorical=["age"])
    assert profile.feature_names == ["dense:0", "dense:1", "age"]
    assert [i.name for i in profile.inputs] == ["dense", "age"]
    assert profile.feature("age").kind == "categorical"
    renamed = build_profile(data["dense"], feature_names=["height", "weight"], categorical=[1])
    assert renamed.feature_names == ["height", "weight"]
    assert renamed.feature("weight").kind == "categorical"
    with pytest.raises(InvalidArgumentError):
        build_profile(data["dense"], feature_names=["only-one"])
    with pytest.raises(InvalidArgumentError):
        build_profile(data["dense"], categorical=["nope"])


def test_round_trip_is_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    data = {
        "x": rng.standard_cauchy(size=(3_000, 3)),
        "kind": rng.choice(np.array(["u", "v", "w"], dtype=object), size=3_000),
        "code": rng.integers(0, 30, size=3_000).astype(np.float64),
    }
    profile = build_profile(data, categorical=["code"], top_k=10)
    path = tmp_path / "reference.json"
    profile.save(path)
    loaded = ReferenceProfile.load(path)
    assert loaded == profile
    document = json.loads(path.read_text())
    assert document["format_version"] == FORMAT_VERSION == 1
    assert document["format"] == "headrace-drift-profile"


def test_unknown_format_version_is_a_clear_error(tmp_path: Path) -> None:
    profile = build_profile(np.zeros((5, 1)))
    document = profile.to_dict()
    document["format_version"] = 99
    path = tmp_path / "future.json"
    path.write_text(json.dumps(document))
    with pytest.raises(ProfileFormatError, match="format_version 99 is not supported"):
        ReferenceProfile.load(path)
    document["format_version"] = 1
    document["format"] = "something-else"
    path.write_text(json.dumps(document))
    with pytest.raises(ProfileFormatError, match="not a headrace drift profile"):
        ReferenceProfile.load(path)
    path.write_text("{not json")
    with pytest.raises(ProfileFormatError):
        ReferenceProfile.load(path)
    document["format"] = "headrace-drift-profile"
    document["features"][0]["counts"] = [1]
    path.write_text(json.dumps(document))
    with pytest.raises(ProfileFormatError, match="counts do not fit"):
        ReferenceProfile.load(path)


def _frame() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    numbers = rng.normal(size=(50, 2))
    numbers[4, 1] = np.nan
    labels = rng.choice(np.array(["p", "q"], dtype=object), size=50)
    return numbers, labels


def test_read_npy_and_npz(tmp_path: Path) -> None:
    numbers, _ = _frame()
    np.save(tmp_path / "d.npy", numbers)
    loaded = read_data(tmp_path / "d.npy")
    assert isinstance(loaded, np.ndarray)
    assert np.array_equal(loaded, numbers, equal_nan=True)
    np.savez(tmp_path / "d.npz", x=numbers, y=numbers[:, 0])
    archive = read_data(tmp_path / "d.npz")
    assert isinstance(archive, dict) and sorted(archive) == ["x", "y"]
    assert build_profile(archive).feature_names == ["x:0", "x:1", "y"]


def test_unreadable_numpy_files_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(InvalidArgumentError, match=r"cannot read as \.npy"):
        read_data(tmp_path / "bad.npy")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(InvalidArgumentError, match="cannot read"):
        read_data(tmp_path / "objects.npy")


def test_read_csv(tmp_path: Path) -> None:
    numbers, labels = _frame()
    lines = ["a,b,label"]
    for (a, b), label in zip(numbers, labels, strict=True):
        lines.append(f"{float(a)!r},{'' if math.isnan(b) else repr(float(b))},{label}")
    lines.append("1.5,2.5,")  # empty text cell: missing
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    data = read_data(tmp_path / "d.csv")
    assert isinstance(data, dict) and list(data) == ["a", "b", "label"]
    assert np.array_equal(data["a"][:-1], numbers[:, 0])
    assert np.isnan(data["b"][4])
    assert data["label"][-1] is None
    profile = build_profile(data)
    assert profile.feature("label").kind == "categorical"
    assert profile.feature("label").missing == 1
    assert profile.feature("b").missing == 1
    (tmp_path / "bad.csv").write_text("a,b\n1\n")
    with pytest.raises(InvalidArgumentError, match=r"bad\.csv:2"):
        read_data(tmp_path / "bad.csv")


def test_read_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    numbers, labels = _frame()
    table = pa.table(
        {
            "a": numbers[:, 0],
            "n": pa.array([1, None, 3] * 16 + [4, 5], type=pa.int64()),
            "label": pa.array([*labels[:-1], None]),
        }
    )
    pq.write_table(table, tmp_path / "d.parquet")
    data = read_data(tmp_path / "d.parquet")
    assert isinstance(data, dict) and list(data) == ["a", "n", "label"]
    assert np.array_equal(data["a"], numbers[:, 0])
    assert np.isnan(data["n"][1])  # integer nulls become NaN
    profile = build_profile(data)
    assert profile.feature("n").missing == 16
    assert profile.feature("label").kind == "categorical"
    assert profile.feature("label").missing == 1


def test_parquet_without_pyarrow_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_import = builtins.__import__

    def no_pyarrow(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("pyarrow"):
            raise ImportError("No module named 'pyarrow'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    (tmp_path / "d.parquet").write_bytes(b"PAR1")
    with pytest.raises(InvalidArgumentError, match="needs pyarrow"):
        read_data(tmp_path / "d.parquet")


def test_unsupported_suffix(tmp_path: Path) -> None:
    (tmp_path / "d.xlsx").write_bytes(b"")
    with pytest.raises(InvalidArgumentError, match="unsupported data file type"):
        read_data(tmp_path / "d.xlsx")


def test_main_writes_a_profile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(4)
    x = np.column_stack([rng.normal(size=500), rng.integers(0, 3, size=500)])
    np.save(tmp_path / "train.npy", x)
    out = tmp_path / "reference.json"
    argv = [
        "--data",
        str(tmp_path / "train.npy"),
        "--out",
        str(out),
        "--bins",
        "10",
        "--feature-names",
        "height",
        "colour",
        "--categorical",
        "colour",
    ]
    assert main(argv) == 0
    profile = ReferenceProfile.load(out)
    assert profile.bins == 10 and profile.feature_names == ["height", "colour"]
    assert len(profile.feature("height").edges) == 9
    assert profile.feature("colour").categories == tuple(
        float(v)
        for v in np.unique(x[:, 1])[np.argsort(-np.bincount(x[:, 1].astype(int)), kind="stable")]
    )
    assert "profiled 500 rows" in capsys.readouterr().out
    assert main(["--data", str(tmp_path / "missing.npy"), "--out", str(out)]) == 2
