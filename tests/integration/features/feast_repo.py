"""A real Feast feature repository in a folder: Parquet files behind FileSources, ``feast
apply`` and ``feast materialize`` into a Redis online store, and Feast's own
``get_online_features`` — all run by the Feast SDK in its own venv (see feast_env)."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from integration.features.feast_env import ensure_feast_venv

PROJECT = "demo"

# Feast's Python types by the name this module's callers use.
_FEAST_TYPES = {"float32": "Float32", "float64": "Float64", "int64": "Int64", "int32": "Int32"}


@dataclass(frozen=True)
class FeastView:
    """One feature view: its entity (join key and Feast value type), features with their Feast
    dtype, and the rows of its Parquet source."""

    name: str
    join_key: str
    key_type: str  # "INT64" or "STRING"
    features: Mapping[str, str]  # feature -> "float32" | "float64" | "int64" | "int32"
    rows: Mapping[str, Sequence[Any]]  # column -> values; includes join_key and event_timestamp


def _definitions(views: Sequence[FeastView]) -> str:
    lines = [
        "from datetime import timedelta",
        "from feast import Entity, FeatureView, Field, FileSource, ValueType",
        "from feast.types import Float32, Float64, Int32, Int64",
        "",
    ]
    entities: dict[str, str] = {}
    for view in views:
        if view.join_key not in entities:
            entities[view.join_key] = f"entity_{view.join_key}"
            lines.append(
                f"{entities[view.join_key]} = Entity(name={view.join_key!r}, "
                f"join_keys=[{view.join_key!r}], value_type=ValueType.{view.key_type})"
            )
    for view in views:
        fields = ", ".join(
            f"Field(name={f!r}, dtype={_FEAST_TYPES[t]})" for f, t in view.features.items()
        )
        lines.append(
            textwrap.dedent(f"""
            {view.name} = FeatureView(
                name={view.name!r},
                entities=[{entities[view.join_key]}],
                ttl=timedelta(days=3650),
                schema=[{fields}],
                source=FileSource(path="data/{view.name}.parquet",
                                  timestamp_field="event_timestamp"),
                online=True,
            )""")
        )
    return "\n".join(lines) + "\n"


def _arrow_type(kind: str) -> pa.DataType:
    return {"float32": pa.float32(), "float64": pa.float64(), "int64": pa.int64(),
            "int32": pa.int32()}[kind]  # fmt: skip


def _source_table(view: FeastView) -> pa.Table:
    columns: dict[str, pa.Array] = {}
    key_type = pa.int64() if view.key_type == "INT64" else pa.string()
    columns[view.join_key] = pa.array(view.rows[view.join_key], key_type)
    for feature, kind in view.features.items():
        columns[feature] = pa.array(view.rows[feature], _arrow_type(kind))
    columns["event_timestamp"] = pa.array(
        view.rows["event_timestamp"], pa.timestamp("us", tz="UTC")
    )
    return pa.table(columns)


class FeastRepo:
    """A Feast repository in ``path`` whose online store is ``redis_host_port`` database
    ``db``."""

    def __init__(self, path: Path, redis_port: int, db: int, views: Sequence[FeastView]) -> None:
        self.path = path
        self.views = list(views)
        self.python = ensure_feast_venv()
        self.env = {**os.environ, "FEAST_USAGE": "False", "PYTHONWARNINGS": "ignore"}
        (path / "data").mkdir(parents=True, exist_ok=True)
        (path / "feature_store.yaml").write_text(
            textwrap.dedent(f"""\
            project: {PROJECT}
            registry: data/registry.db
            provider: local
            online_store:
              type: redis
              connection_string: "127.0.0.1:{redis_port},db={db}"
            offline_store:
              type: file
            entity_key_serialization_version: 3
            """)
        )
        (path / "definitions.py").write_text(_definitions(self.views))
        for view in self.views:
            pq.write_table(_source_table(view), path / "data" / f"{view.name}.parquet")

    def feast(self, *args: str) -> str:
        done = subprocess.run(
            [str(self.python.parent / "feast"), *args],
            cwd=self.path,
            env=self.env,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise RuntimeError(f"feast {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def apply_and_materialize(self) -> None:
        self.feast("apply")
        end = datetime.now(UTC) + timedelta(days=1)
        self.feast("materialize", "2000-01-01T00:00:00", end.strftime("%Y-%m-%dT%H:%M:%S"))

    def online_features(
        self, features: Sequence[str], entity_rows: Sequence[Mapping[str, Any]]
    ) -> dict[str, list[Any]]:
        """Feast's own ``get_online_features(...).to_dict()`` (full feature names)."""
        script = textwrap.dedent("""
            import json, sys
            from feast import FeatureStore
            request = json.load(sys.stdin)
            store = FeatureStore(repo_path=".")
            answer = store.get_online_features(
                features=request["features"], entity_rows=request["rows"],
                full_feature_names=True,
            ).to_dict()
            json.dump(answer, sys.stdout)
        """)
        done = subprocess.run(
            [str(self.python), "-c", script],
            cwd=self.path,
            env=self.env,
            input=json.dumps({"features": list(features), "rows": list(entity_rows)}),
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise RuntimeError(f"get_online_features failed:\n{done.stderr}")
        answer: dict[str, list[Any]] = json.loads(done.stdout)
        return answer
