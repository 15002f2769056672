"""``headrace profile`` for a model whose ``model.toml`` has ``[features]``.

Serving counts drift on what the model itself receives — the assembled ``into`` input, after the
feature lookup — so the reference profile must hold the same columns. The data file holds what a
client sends (the entity inputs and the request inputs); each chunk is assembled by a feature
joiner over **the model's own store** (``store`` in ``[features]``: the embedded snapshots in the
model's folder, or the Redis at ``redis_url`` in headrace's or Feast's layout), then the model runs
on the assembled rows. Unlike serving, a store that fails or times out fails the profile
(``on_store_error`` is taken as ``"unavailable"``): a profile of defaults would be a wrong
reference. Missing keys still get their defaults (or NOT_FOUND with ``on_missing = "error"``), as
when serving.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import numpy.typing as npt

from headrace.config.features import FeaturesConfig

Arrays = dict[str, npt.NDArray[Any]]

# At least this long per lookup: profiling reads whole chunks, not one request's keys.
MIN_TIMEOUT_MS = 30_000


def store_description(config: FeaturesConfig) -> str:
    """Which store a profile's features came from (the URL without its password)."""
    if config.store == "embedded":
        files = ", ".join(str(v.snapshot) for v in config.views)
        return f"embedded (snapshots {files})"
    parts = urlsplit(config.redis_url or "")
    if parts.password is not None:
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        user = parts.username or ""
        parts = parts._replace(netloc=f"{user}:***@{host}{port}")
    where = urlunsplit(parts)
    if config.store == "feast":
        return f"feast ({where}, project {config.feast_project})"
    return f"redis ({where})"


def model_folder(served: Any) -> Path:
    """The folder snapshot paths are relative to (that of model.toml), as the engine has it."""
    source = served.config.source
    return Path(source.parent if source is not None else served.directory.parent)


def run_with_features(
    served: Any, inputs: Mapping[str, npt.NDArray[Any]], chunk: int
) -> tuple[Arrays, Arrays]:
    """The model's own inputs (``into`` assembled) and its outputs for the client ``inputs``
    of a loaded features version ``served``, ``chunk`` rows at a time."""
    from headrace.features import FeatureJoiner

    config: FeaturesConfig = served.config.features
    config = config.model_copy(
        update={
            "on_store_error": "unavailable",
            "timeout_ms": max(config.timeout_ms, MIN_TIMEOUT_MS),
        }
    )
    joiner = FeatureJoiner(
        config,
        model_folder(served),
        served.model_inputs,
        model=served.name,
        version=served.version_str,
    )
    total = len(next(iter(inputs.values())))
    starts = range(0, total, chunk)

    async def assemble_all() -> list[Arrays]:
        try:
            return [
                await joiner.assemble({n: a[s : s + chunk] for n, a in inputs.items()})
                for s in starts
            ]
        finally:
            await joiner.close()

    assembled = asyncio.run(assemble_all())
    output_names = [spec.name for spec in served.outputs]
    parts: dict[str, list[npt.NDArray[Any]]] = {}
    for model_inputs in assembled:
        outputs = served.backend.run(served.prepare_inputs(model_inputs), output_names)
        for name, array in zip(output_names, outputs, strict=True):
            parts.setdefault(name, []).append(array)
    model_names = [spec.name for spec in served.model_inputs]
    joined = {name: np.concatenate([a[name] for a in assembled]) for name in model_names}
    return joined, {name: np.concatenate(arrays) for name, arrays in parts.items()}


def column_names(
    config: FeaturesConfig, inputs: Mapping[str, npt.NDArray[Any]], names: Sequence[str]
) -> list[str]:
    """``names`` (split_columns's, ``x:0``...) with the ``into`` columns named as the features
    fill them: ``view.feature``, then the request inputs."""
    into = [f"{config.into}:{j}" for j in range(config.width)]
    if config.into not in inputs or list(names).count(into[0]) != 1:
        return list(names)
    at = list(names).index(into[0])
    if list(names[at : at + len(into)]) != into:
        return list(names)
    return [*names[:at], *config.feature_names, *names[at + len(into) :]]
