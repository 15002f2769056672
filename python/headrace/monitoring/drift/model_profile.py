"""``headrace profile``: the reference profile of a model version, inputs and outputs.

Reads the training data, runs the model on it through :class:`headrace.Engine` (in chunks the
model batches), profiles the inputs and the outputs (prediction drift) with the model's
``[drift]`` settings, and writes ``<repo>/<model>/<version>/reference.json``, where the server
looks for it when the version loads.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from headrace.config import ServerSettings
from headrace.datatypes import DATATYPE_TO_NUMPY
from headrace.errors import InvalidArgumentError
from headrace.monitoring.drift.features_profile import (
    column_names,
    run_with_features,
    store_description,
)
from headrace.monitoring.drift.profile import (
    DEFAULT_BINS,
    ReferenceProfile,
    build_profile,
    split_columns,
)
from headrace.monitoring.drift.served import REFERENCE_FILE


def _model_inputs(
    data: Mapping[str, npt.NDArray[Any]] | npt.NDArray[Any], served: Any
) -> dict[str, npt.NDArray[Any]]:
    """The data as the model's named inputs, in the model's datatypes."""
    specs = served.inputs
    if isinstance(data, Mapping):
        if all(spec.name in data for spec in specs):
            arrays = {spec.name: np.asarray(data[spec.name]) for spec in specs}
        elif len(specs) == 1 and len(specs[0].shape) == 2:
            # A table (CSV, Parquet) whose columns are the columns of the one 2-D input.
            columns = [np.asarray(c) for c in data.values()]
            width = specs[0].shape[1]
            if width not in (-1, len(columns)):
                raise InvalidArgumentError(
                    f"the data has {len(columns)} columns; input '{specs[0].name}' of model "
                    f"'{served.name}' takes {width}"
                )
            arrays = {specs[0].name: np.column_stack(columns)}
        else:
            raise InvalidArgumentError(
                f"the data holds {sorted(data)}; model '{served.name}' takes inputs "
                f"{[s.name for s in specs]}"
            )
    else:
        if len(specs) != 1:
            raise InvalidArgumentError(
                f"a bare array fits a model with one input; model '{served.name}' takes "
                f"{[s.name for s in specs]} (use an .npz with one array per input)"
            )
        arrays = {specs[0].name: np.asarray(data)}
    out = {}
    for spec in specs:
        array = arrays[spec.name]
        if spec.datatype != "BYTES":
            try:
                array = array.astype(DATATYPE_TO_NUMPY[spec.datatype], copy=False)
            except (TypeError, ValueError) as exc:
                raise InvalidArgumentError(
                    f"input '{spec.name}': the data cannot be read as {spec.datatype}: {exc}"
                ) from exc
        out[spec.name] = array
    return out


def profile_model(
    repository: Path,
    model: str,
    version: str | None,
    data: Mapping[str, npt.NDArray[Any]] | npt.NDArray[Any],
    out: Path | None = None,
    chunk_rows: int = 0,
) -> tuple[ReferenceProfile, Path]:
    """Profile a model version's inputs and outputs on ``data``; writes the profile to ``out``
    (default: the version's ``reference.json``). Returns the profile and where it went."""
    from headrace.engine import Engine

    engine = Engine(ServerSettings(model_repository=repository, metrics_port=-1))
    try:
        engine.load_model(model)
        served = engine.get_version(model, version)
        settings = served.config.drift
        inputs = _model_inputs(data, served)
        rows = {int(a.shape[0]) for a in inputs.values() if a.ndim}
        if len(rows) != 1:
            raise InvalidArgumentError(f"the inputs differ in rows: {sorted(rows)}")
        (total,) = rows
        if total == 0:
            raise InvalidArgumentError("the data has no rows")
        chunk = chunk_rows or served.max_batch_size or total
        if served.max_batch_size:
            chunk = min(chunk, served.max_batch_size)
        features = served.config.features
        if features is not None:  # profile what the model receives: ``into`` assembled
            inputs, outputs = run_with_features(served, inputs, chunk)
        else:
            outputs = _run(served, inputs, total, chunk)
        clash = set(inputs) & set(outputs)
        if clash:
            raise InvalidArgumentError(f"inputs and outputs share names: {sorted(clash)}")
        input_names, _, _ = split_columns(inputs)
        if features is not None:
            input_names = column_names(features, inputs, input_names)
        output_names, _, _ = split_columns(outputs)
        if settings.feature_names is not None:
            if len(settings.feature_names) != len(input_names):
                raise InvalidArgumentError(
                    f"[drift] feature_names names {len(settings.feature_names)} features; the "
                    f"inputs of model '{model}' have {len(input_names)}"
                )
            input_names = list(settings.feature_names)
        profile = build_profile(
            {**inputs, **outputs},
            feature_names=[*input_names, *output_names],
            categorical=settings.categorical,
            bins=settings.bins or DEFAULT_BINS,
            top_k=settings.top_k,
        )
        profile.metadata.update(
            model=model,
            version=served.version_str,
            outputs=",".join(outputs),
        )
        if features is not None:
            profile.metadata["features_store"] = store_description(features)
        target = out if out is not None else served.directory / REFERENCE_FILE
        profile.save(target)
        return profile, target
    finally:
        engine.close()


def _run(
    served: Any,  # the loaded ModelVersion
    inputs: dict[str, npt.NDArray[Any]],
    total: int,
    chunk: int,
) -> dict[str, npt.NDArray[Any]]:
    """The version's outputs on ``inputs``, ``chunk`` rows per inference call. The version
    runs them itself: a profile is of one model version, never routed (the repository's
    endpoints may name models this offline engine has not loaded)."""
    parts: dict[str, list[npt.NDArray[Any]]] = {}
    for start in range(0, total, chunk):
        rows = {name: a[start : start + chunk] for name, a in inputs.items()}
        outputs = served.infer(rows, served.validator.check(rows, None))
        for name, array in outputs.items():
            parts.setdefault(name, []).append(array)
    return {name: np.concatenate(arrays) for name, arrays in parts.items()}
