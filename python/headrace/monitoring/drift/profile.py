"""Reference profiles for drift monitoring: per-feature bins and counts of the training data.

A profile ships with a model version (``models/<name>/<version>/reference.json``). For every
feature it stores the bins the serving accumulator counts into and the reference counts in them:

* numerical feature: up to ``bins - 1`` edges at the reference quantiles ``i / bins`` (ties
  removed), giving ``len(edges) + 1`` value bins ``(e_{i-1}, e_i]`` (the first open to -inf, the
  last to +inf) and a missing bin for NaN, last;
* categorical feature: the ``top_k`` most frequent categories (most frequent first, ties by
  value), then "other" (any unseen or rarer category) and "missing" (None or NaN), last.

Model outputs (prediction drift) are profiled the same way: the caller passes the outputs as data.

File format (JSON, UTF-8), ``format_version`` 1::

    {"format": "headrace-drift-profile", "format_version": 1,
     "bins": 50, "top_k": 20, "rows": 20000,
     "metadata": {},                                     # free-form strings (model, source)
     "inputs": [{"name": "x", "columns": 20,             # how features sit in the inputs:
                 "one_dimensional": false}],             # a 1-D input is one feature
     "features": [
        {"name": "x:0", "kind": "numerical", "edges": [...], "counts": [...]},
        {"name": "x:3", "kind": "categorical", "categories": [...], "counts": [...]}]}

``counts`` holds one integer per bin in the order above (numerical: ``len(edges) + 2``,
categorical: ``len(categories) + 2``). Floats are written with ``repr`` precision, so edges
round-trip exactly. A reader refuses any other ``format`` or ``format_version``.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from headrace.errors import InvalidArgumentError

FORMAT_NAME = "headrace-drift-profile"
FORMAT_VERSION = 1
DEFAULT_BINS = 50
DEFAULT_TOP_K = 20

Category = int | float | str | bool
FeatureKind = Literal["numerical", "categorical"]
Data = Mapping[str, npt.ArrayLike] | npt.ArrayLike


class ProfileFormatError(InvalidArgumentError):
    """A profile file is not one this version of headrace can read."""


@dataclass(frozen=True)
class FeatureProfile:
    """Bins and reference counts of one feature."""

    name: str
    kind: FeatureKind
    counts: tuple[int, ...]
    edges: tuple[float, ...] = ()
    categories: tuple[Category, ...] = ()

    @property
    def rows(self) -> int:
        return sum(self.counts)

    @property
    def missing(self) -> int:
        return self.counts[-1]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.kind == "numerical":
            out["edges"] = list(self.edges)
        else:
            out["categories"] = list(self.categories)
        out["counts"] = list(self.counts)
        return out


@dataclass(frozen=True)
class InputLayout:
    """One named input and how many feature columns it contributes (1 for a 1-D input)."""

    name: str
    columns: int
    one_dimensional: bool = False


@dataclass(frozen=True)
class ReferenceProfile:
    """Per-feature bins and counts of reference data; see the module docstring for the format."""

    features: tuple[FeatureProfile, ...]
    inputs: tuple[InputLayout, ...]
    rows: int
    bins: int = DEFAULT_BINS
    top_k: int = DEFAULT_TOP_K
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    def feature(self, name: str) -> FeatureProfile:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "bins": self.bins,
            "top_k": self.top_k,
            "rows": self.rows,
            "metadata": dict(self.metadata),
            "inputs": [
                {"name": i.name, "columns": i.columns, "one_dimensional": i.one_dimensional}
                for i in self.inputs
            ],
            "features": [f.to_dict() for f in self.features],
        }

    def save(self, path: str | Path) -> None:
        """Write the profile as JSON (format_version 1)."""
        text = json.dumps(self.to_dict(), allow_nan=False, indent=1)
        Path(path).write_text(text + "\n", encoding="utf-8")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReferenceProfile:
        if data.get("format") != FORMAT_NAME:
            raise ProfileFormatError(
                f"not a headrace drift profile (format {data.get('format')!r}, "
                f"expected {FORMAT_NAME!r})"
            )
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ProfileFormatError(
                f"drift profile format_version {version!r} is not supported: this headrace "
                f"reads format_version {FORMAT_VERSION}; rebuild the profile with "
                "`headrace profile` or upgrade headrace"
            )
        try:
            features = []
            for f in data["features"]:
                kind = f["kind"]
                if kind == "numerical":
                    edges = tuple(float(e) for e in f["edges"])
                    counts = tuple(int(c) for c in f["counts"])
                    if len(counts) != len(edges) + 2:
                        raise ProfileFormatError(f"feature {f['name']!r}: counts do not fit edges")
                    features.append(FeatureProfile(str(f["name"]), "numerical", counts, edges))
                elif kind == "categorical":
                    categories = tuple(f["categories"])
                    counts = tuple(int(c) for c in f["counts"])
                    if len(counts) != len(categories) + 2:
                        raise ProfileFormatError(
                            f"feature {f['name']!r}: counts do not fit categories"
                        )
                    features.append(
                        FeatureProfile(str(f["name"]), "categorical", counts, (), categories)
                    )
                else:
                    raise ProfileFormatError(f"feature {f.get('name')!r}: unknown kind {kind!r}")
            inputs = tuple(
                InputLayout(str(i["name"]), int(i["columns"]), bool(i.get("one_dimensional")))
                for i in data["inputs"]
            )
            return cls(
                features=tuple(features),
                inputs=inputs,
                rows=int(data["rows"]),
                bins=int(data["bins"]),
                top_k=int(data["top_k"]),
                metadata={str(k): str(v) for k, v in data.get("metadata", {}).items()},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProfileFormatError(f"malformed drift profile: {exc!r}") from exc

    @classmethod
    def load(cls, path: str | Path) -> ReferenceProfile:
        """Read a profile written by :meth:`save`; refuses unknown format versions."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ProfileFormatError(f"{path}: not a JSON drift profile ({exc})") from exc
        if not isinstance(data, dict):
            raise ProfileFormatError(f"{path}: not a JSON drift profile")
        return cls.from_dict(data)


# ---- columns ---------------------------------------------------------------------------------


def is_missing(value: object) -> bool:
    """None and float NaN are missing values (of any feature kind)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def category_value(value: object) -> Category:
    """A category as the JSON-able Python value stored in profiles (numpy scalars unwrapped)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if isinstance(value, bool | int | float | str):
        return value
    raise InvalidArgumentError(f"category values must be numbers or strings, got {value!r}")


def split_columns(
    data: Data, feature_names: Sequence[str] | None = None
) -> tuple[list[str], list[npt.NDArray[Any]], tuple[InputLayout, ...]]:
    """Feature names, 1-D column arrays and input layout of a dict of inputs or one 2-D array.

    A 2-D input ``x`` gives features ``x:0, x:1, ...``; a 1-D input gives one feature named as
    the input; a bare array is input ``x``. ``feature_names`` renames the features in order.
    """
    inputs = dict(data) if isinstance(data, Mapping) else {"x": data}
    names: list[str] = []
    columns: list[npt.NDArray[Any]] = []
    layout: list[InputLayout] = []
    rows: int | None = None
    for input_name, raw in inputs.items():
        array = np.asarray(raw)
        if array.ndim == 1:
            names.append(input_name)
            columns.append(array)
            layout.append(InputLayout(input_name, 1, one_dimensional=True))
        elif array.ndim == 2:
            names.extend(f"{input_name}:{j}" for j in range(array.shape[1]))
            columns.extend(array[:, j] for j in range(array.shape[1]))
            layout.append(InputLayout(input_name, int(array.shape[1])))
        else:
            raise InvalidArgumentError(
                f"input {input_name!r}: expected a 1-D or 2-D array, got shape {array.shape}"
            )
        if rows is not None and array.shape[0] != rows:
            raise InvalidArgumentError(
                f"input {input_name!r} has {array.shape[0]} rows, earlier inputs have {rows}"
            )
        rows = int(array.shape[0])
    if feature_names is not None:
        if len(feature_names) != len(names):
            raise InvalidArgumentError(
                f"{len(feature_names)} feature names given for {len(names)} features"
            )
        names = [str(n) for n in feature_names]
    if len(set(names)) != len(names):
        raise InvalidArgumentError("feature names must be unique")
    return names, columns, tuple(layout)


def _numerical_profile(name: str, column: npt.NDArray[Any], bins: int) -> FeatureProfile:
    values = np.asarray(column, dtype=np.float64)
    missing = np.isnan(values)
    finite = values[np.isfinite(values)]
    if finite.size:
        quantiles = np.quantile(finite, np.arange(1, bins, dtype=np.float64) / bins)
        edges = np.unique(quantiles)
    else:
        edges = np.empty(0, dtype=np.float64)
    # searchsorted(side="left") counts the edges strictly below a value: bin i is (e_{i-1}, e_i],
    # the same search the C++ accumulator runs.
    value_bins = np.searchsorted(edges, values[~missing], side="left")
    counts = np.bincount(value_bins, minlength=edges.size + 1)
    return FeatureProfile(
        name,
        "numerical",
        (*(int(c) for c in counts), int(missing.sum())),
        tuple(float(e) for e in edges),
    )


def _categorical_profile(name: str, column: npt.NDArray[Any], top_k: int) -> FeatureProfile:
    counter: Counter[Category] = Counter()
    missing = 0
    for value in column.tolist():
        if is_missing(value):
            missing += 1
        else:
            counter[category_value(value)] += 1
    # Most frequent first; ties broken by the value's text so the order is reproducible.
    ranked = sorted(
        counter.items(), key=lambda item: (-item[1], type(item[0]).__name__, str(item[0]))
    )
    kept = ranked[:top_k]
    other = sum(count for _, count in ranked[top_k:])
    return FeatureProfile(
        name,
        "categorical",
        (*(count for _, count in kept), other, missing),
        (),
        tuple(value for value, _ in kept),
    )


def _is_text(column: npt.NDArray[Any]) -> bool:
    return column.dtype.kind in "OUSb"


def build_profile(
    data: Data,
    feature_names: Sequence[str] | None = None,
    categorical: Iterable[str | int] = (),
    bins: int = DEFAULT_BINS,
    top_k: int = DEFAULT_TOP_K,
) -> ReferenceProfile:
    """Profile reference data (training inputs, or model outputs for prediction drift).

    ``data`` is one 2-D array (features are its columns, named ``x:0, x:1, ...``) or a dict of
    named 1-D/2-D arrays. ``categorical`` names the categorical features (by name or column
    index); string, bytes, bool and object columns are categorical whatever it says.
    """
    if bins < 1:
        raise InvalidArgumentError("bins must be at least 1")
    if top_k < 0:
        raise InvalidArgumentError("top_k must not be negative")
    names, columns, layout = split_columns(data, feature_names)
    if not columns:
        raise InvalidArgumentError("no features to profile")
    chosen = set()
    for item in categorical:
        if isinstance(item, int | np.integer):
            if not 0 <= int(item) < len(names):
                raise InvalidArgumentError(f"categorical column index {item} out of range")
            chosen.add(names[int(item)])
        elif item in names:
            chosen.add(str(item))
        else:
            raise InvalidArgumentError(f"categorical feature {item!r} is not among the features")
    features = []
    for name, column in zip(names, columns, strict=True):
        if name in chosen or _is_text(column):
            features.append(_categorical_profile(name, column, top_k))
        else:
            features.append(_numerical_profile(name, column, bins))
    return ReferenceProfile(
        features=tuple(features),
        inputs=layout,
        rows=int(columns[0].shape[0]),
        bins=bins,
        top_k=top_k,
    )


# ---- readers for training data -----------------------------------------------------------


def _csv_column(values: list[str]) -> npt.NDArray[Any]:
    try:
        return np.array([float(v) if v.strip() != "" else math.nan for v in values])
    except ValueError:
        return np.array([v if v != "" else None for v in values], dtype=object)


def read_data(path: str | Path) -> dict[str, npt.NDArray[Any]] | npt.NDArray[Any]:
    """Read reference data from ``.npy`` (one array), ``.npz`` (one input per key), ``.csv``
    (header row; numeric columns as float64 with empty cells NaN, others as text with empty
    cells missing) or ``.parquet`` (needs pyarrow; nulls become NaN or None)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".npy", ".npz"):
        try:
            if suffix == ".npy":
                return np.asarray(np.load(path, allow_pickle=False))
            with np.load(path, allow_pickle=False) as archive:
                return {key: np.asarray(archive[key]) for key in archive.files}
        except ValueError as exc:  # pickled object arrays, or not a NumPy file at all
            raise InvalidArgumentError(f"{path}: cannot read as {suffix}: {exc}") from exc
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            try:
                header = next(reader)
            except StopIteration:
                raise InvalidArgumentError(f"{path}: empty CSV file") from None
            cells: list[list[str]] = [[] for _ in header]
            for line_number, row in enumerate(reader, start=2):
                if len(row) != len(header):
                    raise InvalidArgumentError(
                        f"{path}:{line_number}: {len(row)} cells, the header has {len(header)}"
                    )
                for j, cell in enumerate(row):
                    cells[j].append(cell)
        return {name: _csv_column(values) for name, values in zip(header, cells, strict=True)}
    if suffix in (".parquet", ".pq"):
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise InvalidArgumentError(
                f"{path}: reading Parquet needs pyarrow (pip install pyarrow)"
            ) from exc
        table = pq.read_table(path)
        return {
            name: np.asarray(table.column(name).to_numpy(zero_copy_only=False))
            for name in table.column_names
        }
    raise InvalidArgumentError(
        f"{path}: unsupported data file type {suffix!r} (use .npy, .npz, .csv or .parquet)"
    )
