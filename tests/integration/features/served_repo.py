"""A model repository whose models join online features, for the served tests: the same MLP
bare (clients send ``x``) and with a ``[features]`` table that fills ``x`` from ``user_id``,
``item_id`` and ``amount`` (redis store and embedded store), plus what ``x`` must be for a
request (the snapshot rows, defaults for unknown keys, then the request input)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from headrace.features.cli import main as features_cli
from helpers import onnx_models
from unit.features import snapshots

USERS = snapshots.user_table(rows=40, seed=5)
ITEMS = {
    "item_id": np.array([f"item-{i}".encode() for i in range(20)], object),
    "ctr_7d": np.round(np.linspace(0.0, 0.19, 20), 2),
}
AGE_DEFAULT = 35.0
CTR_DEFAULT = -1.0
WIDTH = 4  # age, spend_30d, ctr_7d, amount
SIZES = [WIDTH, 16, 2]


def features_toml(store: str, redis_url: str, timeout_ms: int, on_store_error: str) -> str:
    where = f'redis_url = "{redis_url}"\n' if store == "redis" else ""
    return f"""max_batch_size = 64

[features]
store = "{store}"
{where}into = "x"
request_inputs = ["amount"]
timeout_ms = {timeout_ms}
on_store_error = "{on_store_error}"

[[features.views]]
name = "user_stats"
entity = "user_id"
features = ["age", "spend_30d"]
defaults = {{ age = {AGE_DEFAULT} }}
snapshot = "users.parquet"

[[features.views]]
name = "item_stats"
entity = "item_id"
entity_datatype = "BYTES"
features = ["ctr_7d"]
defaults = {{ ctr_7d = {CTR_DEFAULT} }}
snapshot = "items.parquet"
"""


# A declared endpoint over the redis model, shadowed by the embedded one (same client inputs).
ENDPOINTS = """
[[endpoint]]
name = "ranking"
variants = [{ name = "main", model = "scored" }]
shadows = [{ name = "copy", model = "scored_embedded", sample = 1.0 }]
"""


def write_snapshots(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    snapshots.write(folder / "users.parquet", USERS)
    items = pa.table({"item_id": pa.array(ITEMS["item_id"].tolist(), pa.binary()),
                      "ctr_7d": pa.array(ITEMS["ctr_7d"])})  # fmt: skip
    pq.write_table(items, folder / "items.parquet")


def push(folder: Path, redis_url: str) -> None:
    for file, view, entity in (("users.parquet", "user_stats", "user_id"),
                               ("items.parquet", "item_stats", "item_id")):  # fmt: skip
        assert features_cli(["push", str(folder / file), "--view", view, "--entity", entity,
                             "--redis", redis_url]) == 0  # fmt: skip


def write_repository(
    root: Path, redis_url: str, extra: dict[str, tuple[str, int]] | None = None
) -> Path:
    """``bare``, ``scored`` (redis) and ``scored_embedded``, the endpoint ``ranking``; ``extra``
    adds redis models: name -> (on_store_error, timeout_ms)."""
    repo = root / "models"
    mlp = onnx_models.mlp(SIZES, seed=3)
    onnx_models.write_model(repo, "bare", mlp, toml="max_batch_size = 64\n")
    onnx_models.write_model(
        repo, "scored", mlp, toml=features_toml("redis", redis_url, 5000, "default")
    )
    onnx_models.write_model(
        repo, "scored_embedded", mlp, toml=features_toml("embedded", "", 5000, "default")
    )
    write_snapshots(repo / "scored_embedded")
    (repo / "_endpoints.toml").write_text(ENDPOINTS)
    for name, (on_error, timeout_ms) in (extra or {}).items():
        onnx_models.write_model(
            repo, name, mlp, toml=features_toml("redis", redis_url, timeout_ms, on_error)
        )
    return repo


def request(rows: int, seed: int) -> dict[str, npt.NDArray[np.generic]]:
    """Client inputs: known and unknown users and items, an amount per row."""
    rng = np.random.default_rng(seed)
    users = USERS["user_id"][rng.integers(0, len(USERS["user_id"]), rows)].copy()
    items = ITEMS["item_id"][rng.integers(0, len(ITEMS["item_id"]), rows)].copy()
    unknown = rng.random(rows) < 0.25
    users[unknown] = 7  # no such user
    items[rng.random(rows) < 0.25] = b"no-such-item"
    return {
        "user_id": users.astype(np.int64),
        "item_id": items,
        "amount": np.round(rng.uniform(0, 100, rows), 2).astype(np.float32),
    }


def expected_x(inputs: dict[str, npt.NDArray[np.generic]]) -> npt.NDArray[np.float32]:
    """``x`` as the features fill it: [age, spend_30d, ctr_7d, amount] per row."""
    user_row = {int(u): i for i, u in enumerate(USERS["user_id"])}
    item_row = {bytes(k): i for i, k in enumerate(ITEMS["item_id"])}
    x = np.empty((len(inputs["user_id"]), WIDTH), np.float32)
    for r, (user, item) in enumerate(zip(inputs["user_id"], inputs["item_id"], strict=True)):
        u = user_row.get(int(user))
        x[r, 0] = USERS["age"][u] if u is not None else AGE_DEFAULT
        x[r, 1] = USERS["spend_30d"][u] if u is not None else 0.0
        i = item_row.get(bytes(item))
        x[r, 2] = ITEMS["ctr_7d"][i] if i is not None else CTR_DEFAULT
    x[:, 3] = inputs["amount"]
    return x
