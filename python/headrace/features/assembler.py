"""The feature joiner: a request's entity keys in, the model's assembled input out.

A :class:`FeatureJoiner` belongs to one model version. Clients send the entity inputs and the
request inputs (:meth:`FeatureJoiner.client_inputs`); :meth:`FeatureJoiner.assemble` looks the
entities up (remote stores through the coalescer and the breaker, within ``timeout_ms``) and
fills ``into``: float32 ``[rows, features + request inputs]``, views in config order, each
view's features in order, then the request inputs.

Semantics of a value that is not there:

* no row for the key, a row older than ``max_age_s``, or a missing value → the feature's
  default; with ``on_missing = "error"`` a NotFoundError that names the key instead.
* the store fails, times out or its breaker is open → every feature of the request gets its
  default (``on_store_error = "default"``) or the request fails UNAVAILABLE (``"unavailable"``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from headrace.backends.base import TensorSpec
from headrace.errors import ConfigError, InvalidArgumentError, NotFoundError, UnavailableError
from headrace.features.breaker import Breaker, BreakerPolicy, BreakerState
from headrace.features.coalescer import (
    BreakerOpenError,
    CoalescePolicy,
    LookupCoalescer,
    RoundTrip,
    StoreTimeoutError,
)
from headrace.features.config import FeaturesConfig
from headrace.features.keys import Keys, key_kind, key_text, normalize_entity
from headrace.features.metrics import FeatureMetrics, ModelFeatureMetrics
from headrace.features.served_log import ServedLog, ServedRows
from headrace.features.store import FeatureStore, StoreError, ViewRows, make_store


def _check_into(config: FeaturesConfig, model_inputs: Sequence[TensorSpec]) -> None:
    spec = next((s for s in model_inputs if s.name == config.into), None)
    names = ", ".join(s.name for s in model_inputs)
    if spec is None:
        raise ConfigError(f"features.into: the model has no input '{config.into}' (has: {names})")
    width = config.width
    if spec.datatype != "FP32" or len(spec.shape) != 2 or spec.shape[1] not in (-1, width):
        raise ConfigError(
            f"features.into: input '{config.into}' is {spec.datatype} {list(spec.shape)}; the "
            f"features fill FP32 [-1, {width}] ({width} = features + request inputs)"
        )


class FeatureJoiner:
    """Joins online features into one model version's requests (module docstring).

    Build it where the version loads (any thread); call :meth:`assemble` on the event loop;
    :meth:`close` when the version is retired."""

    def __init__(
        self,
        config: FeaturesConfig,
        model_dir: Path,
        model_inputs: Sequence[TensorSpec],
        *,
        model: str = "",
        version: str = "",
        metrics: FeatureMetrics | None = None,
        served_log: ServedLog | None = None,
        store: FeatureStore | None = None,
        coalesce: CoalescePolicy | None = None,
        breaker: BreakerPolicy | None = None,
    ) -> None:
        _check_into(config, model_inputs)
        self.config = config
        self.model = model
        self.version = version
        self.store = store if store is not None else make_store(config, model_dir)
        self._model_inputs = tuple(model_inputs)
        self._model_input_names = {s.name for s in model_inputs}
        self._views = config.views
        self._defaults = [np.array(v.default_row(), np.float32) for v in self._views]
        self._timeout_s = config.timeout_ms / 1e3
        self._served_log = served_log
        self._metrics: ModelFeatureMetrics | None = None
        if metrics is not None:
            self._metrics = metrics.for_model(
                model, version, self.store.kind, tuple(v.name for v in self._views)
            )
        self._entity_types: dict[str, str] = {}
        for entity in config.entity_inputs:
            declared = next(
                (
                    v.entity_datatype
                    for v in self._views
                    if v.entity == entity and v.entity_datatype
                ),
                None,
            )
            self._entity_types[entity] = declared or self.store.entity_datatype(entity) or "INT64"
        policy = breaker or BreakerPolicy(probe_timeout_s=self._timeout_s)
        self.breaker = Breaker(policy, self._breaker_changed)
        self.coalescer = LookupCoalescer(
            self.store,
            [v.entity for v in self._views],
            timeout_s=self._timeout_s,
            breaker=self.breaker,
            policy=coalesce,
            on_round_trip=self._round_trip_done,
        )
        if self._metrics is not None:
            self._metrics.breaker_state.set(int(BreakerState.CLOSED))

    # -- what clients see -----------------------------------------------------------------

    def client_inputs(self) -> tuple[TensorSpec, ...]:
        """The inputs a client sends: the model's inputs except ``into``, then each entity
        input (INT64 or BYTES, [-1]) and each request input (FP32, [-1]) the model does not
        take itself. ModelMetadata and ModelConfig should show these."""
        specs = [s for s in self._model_inputs if s.name != self.config.into]
        for entity in self.config.entity_inputs:
            if entity not in self._model_input_names:
                specs.append(TensorSpec(entity, self._entity_types[entity], (-1,)))
        for name in self.config.request_inputs:
            if name not in self._model_input_names:
                specs.append(TensorSpec(name, "FP32", (-1,)))
        return tuple(specs)

    @property
    def feature_names(self) -> tuple[str, ...]:
        """The columns of ``into``: ``view.feature`` for each feature, then request inputs."""
        return self.config.feature_names

    def owns_input(self, name: str) -> bool:
        """True for the entity and request inputs that the joiner checks (their datatype and
        shape rules are its own: see :meth:`check_inputs`)."""
        return name in self._entity_types or name in self.config.request_inputs

    def check_inputs(self, inputs: Mapping[str, npt.NDArray[Any]]) -> tuple[dict[str, Keys], int]:
        """Normalised keys per entity input and the row count; InvalidArgumentError for a
        missing input, a wrong datatype or shape, or rows that disagree."""
        keys: dict[str, Keys] = {}
        rows: int | None = None
        for entity, datatype in self._entity_types.items():
            array = inputs.get(entity)
            if array is None:
                raise InvalidArgumentError(f"missing entity input '{entity}' ({datatype}, [-1])")
            normalised = normalize_entity(entity, np.asarray(array))
            if len(normalised) and key_kind(normalised) != datatype:
                raise InvalidArgumentError(
                    f"entity input '{entity}': {key_kind(normalised)}, expected {datatype}"
                )
            keys[entity] = normalised
            rows = _same_rows(entity, len(normalised), rows)
        for name in self.config.request_inputs:
            array = inputs.get(name)
            if array is None:
                raise InvalidArgumentError(f"missing request input '{name}' (FP32, [-1])")
            array = np.asarray(array)
            if array.dtype.kind not in "iufb" or not (
                array.ndim == 1 or (array.ndim == 2 and array.shape[1] == 1)
            ):
                raise InvalidArgumentError(
                    f"request input '{name}': {array.dtype} {list(array.shape)}, expected a "
                    "number per row ([-1] or [-1, 1])"
                )
            rows = _same_rows(name, array.shape[0], rows)
        return keys, rows or 0

    # -- assembling -----------------------------------------------------------------------

    async def assemble(self, inputs: Mapping[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        """The model's inputs for ``inputs``: ``into`` filled, entity and request inputs the
        model does not take dropped, the rest passed through."""
        keys, rows = self.check_inputs(inputs)
        x = np.empty((rows, self.config.width), np.float32)
        column = sum(len(view.features) for view in self._views)
        if rows:  # an empty request asks no store
            self._fill_features(x, keys, await self._lookup(keys))
        for name in self.config.request_inputs:
            x[:, column] = np.asarray(inputs[name]).reshape(rows)
            column += 1
        out = {
            name: array
            for name, array in inputs.items()
            if name in self._model_input_names or not self.owns_input(name)
        }
        out[self.config.into] = x
        return out

    def _fill_features(
        self, x: npt.NDArray[np.float32], keys: dict[str, Keys], found: list[ViewRows] | None
    ) -> None:
        column = 0
        now = time.time()
        for index, view in enumerate(self._views):
            width = len(view.features)
            block = x[:, column : column + width]
            if found is None:  # the store failed: on_store_error = "default"
                block[:] = self._defaults[index]
                if self._metrics is not None:
                    self._metrics.defaults[index].inc(block.size)
            else:
                self._fill(index, block, found[index], keys[view.entity], now)
            column += width

    async def _lookup(self, keys: dict[str, Keys]) -> list[ViewRows] | None:
        if not self.store.remote:
            start = time.monotonic()
            rows = await self.store.read(keys)
            if self._metrics is not None:
                self._metrics.lookup_duration.observe(time.monotonic() - start)
            return rows
        try:
            return await self.coalescer.lookup(keys, self._timeout_s)
        except StoreError as error:
            reason = "error"
            if isinstance(error, StoreTimeoutError):
                reason = "timeout"
            elif isinstance(error, BreakerOpenError):
                reason = "breaker_open"
            if self._metrics is not None:
                self._metrics.errors[reason].inc()
            if self.config.on_store_error == "unavailable":
                raise UnavailableError(f"features of model '{self.model}': {error}") from None
            return None

    def _fill(
        self, index: int, block: npt.NDArray[np.float32], rows: ViewRows, keys: Keys, now: float
    ) -> None:
        view = self._views[index]
        present = rows.present
        stale: npt.NDArray[np.bool_] | None = None
        if view.max_age_s > 0 and rows.event_time_s is not None:
            # NaN (unknown) event times never count as stale.
            stale = rows.found & (now - rows.event_time_s > view.max_age_s)
            if stale.any():
                present = present & ~stale[:, None]
            else:
                stale = None
        complete = bool(present.all())
        if complete:
            block[:] = rows.values
        else:
            np.copyto(block, np.where(present, rows.values, self._defaults[index]))
        if self._metrics is not None:
            if complete and stale is None:  # every key found (a present value implies it)
                self._metrics.hits[index].inc(len(rows.found))
            else:
                missing = 0 if complete else int(present.size - present.sum())
                self._count(index, rows, stale, missing)
        if not complete and self.config.on_missing == "error":
            raise NotFoundError(self._missing_message(index, rows, stale, present, keys))

    def _count(
        self, index: int, rows: ViewRows, stale: npt.NDArray[np.bool_] | None, defaults: int
    ) -> None:
        assert self._metrics is not None
        found = int(rows.found.sum())
        stale_count = 0 if stale is None else int(stale.sum())
        if found - stale_count:
            self._metrics.hits[index].inc(found - stale_count)
        if len(rows.found) - found:
            self._metrics.misses[index].inc(len(rows.found) - found)
        if stale_count:
            self._metrics.stale[index].inc(stale_count)
        if defaults:
            self._metrics.defaults[index].inc(defaults)

    def _missing_message(
        self,
        index: int,
        rows: ViewRows,
        stale: npt.NDArray[np.bool_] | None,
        present: npt.NDArray[np.bool_],
        keys: Keys,
    ) -> str:
        view = self._views[index]
        row, feature = (int(i) for i in np.argwhere(~present)[0])
        key = f"{view.entity}={key_text(keys[row])}"
        if not rows.found[row]:
            why = "no row for the key"
        elif stale is not None and stale[row]:
            why = f"its row is older than max_age_s={view.max_age_s:g}"
        else:
            why = "the value is missing"
        return (
            f"feature '{view.name}.{view.features[feature]}' for {key}: {why} "
            f"(store '{self.store.kind}', on_missing = \"error\")"
        )

    # -- the served log ------------------------------------------------------------------

    def log_served(
        self,
        inputs: Mapping[str, npt.NDArray[Any]],
        assembled: Mapping[str, npt.NDArray[Any]],
        outputs: Mapping[str, npt.NDArray[Any]],
        *,
        request_id: str = "",
        endpoint: str | None = None,
        variant: str | None = None,
    ) -> bool:
        """Queue the served rows of one request for the served log (no-op without one):
        ``inputs`` as the client sent them, ``assembled`` as :meth:`assemble` returned them,
        ``outputs`` as the model answered. Never blocks; False when not logged."""
        if self._served_log is None:
            return False
        entities = {e: normalize_entity(e, np.asarray(inputs[e])) for e in self._entity_types}
        return self._served_log.append(
            ServedRows(
                model=self.model,
                version=self.version,
                time_ns=time.time_ns(),
                request_id=request_id,
                endpoint=endpoint,
                variant=variant,
                entities=entities,
                columns=self.config.feature_names,
                values=assembled[self.config.into],
                outputs=dict(outputs),
            )
        )

    # -- bookkeeping ---------------------------------------------------------------------

    def _round_trip_done(self, trip: RoundTrip) -> None:
        if self._metrics is not None:
            self._metrics.round_trips.inc()
            self._metrics.store_lookups.inc(trip.lookups)
            if trip.ok:
                self._metrics.lookup_duration.observe(trip.duration_s)

    def _breaker_changed(self, state: BreakerState) -> None:
        if self._metrics is not None:
            self._metrics.breaker_state.set(int(state))

    async def close(self) -> None:
        """Release the store's connections (call on the loop that served)."""
        await self.store.close()


def _same_rows(name: str, rows: int, expected: int | None) -> int:
    if expected is not None and rows != expected:
        raise InvalidArgumentError(f"input '{name}' has {rows} rows, the other inputs {expected}")
    return rows
