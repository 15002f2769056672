"""The ``[features]`` table of a model's ``model.toml``, as pydantic models (unknown keys are
errors). Part of the config base (``ModelToml.features``); ``headrace.features.config`` re-exports
it for the features package.

::

    [features]
    store = "redis"                          # "embedded" (default) | "redis" | "feast"
    redis_url = "redis://127.0.0.1:6379/0"   # redis and feast
    feast_project = "demo"                   # feast: the project suffix of Feast's keys
    into = "x"                               # the model input the assembled rows fill
    request_inputs = ["amount"]              # appended after the features
    on_missing = "default"                   # or "error"
    timeout_ms = 20
    on_store_error = "default"               # or "unavailable"

    [[features.views]]
    name = "user_stats"
    entity = "user_id"
    features = ["age", "spend_30d"]
    defaults = { age = 35.0 }

:func:`load_features_config` turns a parsed table into a :class:`FeaturesConfig` and reports a
mistake as a :class:`~headrace.errors.ConfigError` that names the key (``features.views[0].entity``)
and the file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from headrace.errors import ConfigError

StoreKind = Literal["embedded", "redis", "feast"]
EntityDatatype = Literal["INT64", "BYTES"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ViewConfig(_Strict):
    """One feature view: whose keys (``entity``) and which features, in the order they fill."""

    name: str = Field(min_length=1, pattern=r"^[^:\s]+$")
    entity: str = Field(min_length=1)
    join_key: str | None = None
    features: tuple[str, ...] = Field(min_length=1)
    defaults: dict[str, float] = Field(default_factory=dict)
    snapshot: str | None = None
    max_age_s: float = Field(default=0.0, ge=0.0)
    # The entity input's datatype as clients see it in the model's metadata. Unset: the embedded
    # store reads it from the snapshot's key column; redis and feast assume INT64.
    entity_datatype: EntityDatatype | None = None

    @model_validator(mode="after")
    def _check(self) -> ViewConfig:
        if len(set(self.features)) != len(self.features):
            raise ValueError(f"view '{self.name}': a feature is listed twice in 'features'")
        unknown = sorted(set(self.defaults) - set(self.features))
        if unknown:
            raise ValueError(
                f"view '{self.name}': 'defaults' names {unknown}, which are not in 'features'"
            )
        for feature, value in self.defaults.items():
            if math.isinf(value):
                raise ValueError(f"view '{self.name}': 'defaults.{feature}' is infinite")
        return self

    @property
    def feast_join_key(self) -> str:
        """Feast's join key of this view's entity (the entity input's name unless given)."""
        return self.join_key or self.entity

    def default_row(self) -> tuple[float, ...]:
        """Each feature's default, in feature order (0.0 where none is given)."""
        return tuple(self.defaults.get(f, 0.0) for f in self.features)


class FeaturesConfig(_Strict):
    """A model's ``[features]`` table: where features live and how a request's rows fill
    ``into``."""

    store: StoreKind = "embedded"
    redis_url: str | None = None
    feast_project: str | None = None
    into: str = Field(min_length=1)
    request_inputs: tuple[str, ...] = ()
    on_missing: Literal["default", "error"] = "default"
    timeout_ms: float = Field(default=20.0, gt=0.0)
    on_store_error: Literal["default", "unavailable"] = "default"
    views: tuple[ViewConfig, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> FeaturesConfig:
        if self.store in ("redis", "feast") and not self.redis_url:
            raise ValueError(f"'redis_url' is required when store = \"{self.store}\"")
        if self.store == "feast" and not self.feast_project:
            raise ValueError("'feast_project' is required when store = \"feast\"")
        names = [v.name for v in self.views]
        if len(set(names)) != len(names):
            raise ValueError("two views have the same 'name'")
        if self.store == "embedded":
            missing = [v.name for v in self.views if not v.snapshot]
            if missing:
                raise ValueError(f"views {missing} need a 'snapshot' (store = \"embedded\")")
        inputs = set(self.entity_inputs)
        if len(set(self.request_inputs)) != len(self.request_inputs):
            raise ValueError("'request_inputs' lists an input twice")
        clash = sorted(inputs & set(self.request_inputs))
        if clash:
            raise ValueError(f"'request_inputs' {clash} are also view entities")
        if self.into in inputs or self.into in self.request_inputs:
            raise ValueError(f"'into' ({self.into}) is also an entity or request input")
        declared: dict[str, str] = {}
        for view in self.views:
            if view.entity_datatype is None:
                continue
            other = declared.setdefault(view.entity, view.entity_datatype)
            if other != view.entity_datatype:
                raise ValueError(
                    f"entity '{view.entity}' is declared {other} and {view.entity_datatype}"
                )
        return self

    @property
    def entity_inputs(self) -> tuple[str, ...]:
        """The distinct entity inputs, in the order views name them."""
        return tuple(dict.fromkeys(v.entity for v in self.views))

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Column names of the assembled row: ``view.feature`` then the request inputs."""
        return tuple(f"{v.name}.{f}" for v in self.views for f in v.features) + self.request_inputs

    @property
    def width(self) -> int:
        """Columns of ``into``: every view's features, then the request inputs."""
        return sum(len(v.features) for v in self.views) + len(self.request_inputs)


def _location(loc: tuple[int | str, ...]) -> str:
    text = "features"
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text


def load_features_config(
    table: Mapping[str, Any], source: Path | str = "model.toml"
) -> FeaturesConfig:
    """Validate a parsed ``[features]`` table; errors name the key and ``source``."""
    if not isinstance(table, Mapping):
        raise ConfigError(f"{source}: 'features' must be a table")
    try:
        return FeaturesConfig.model_validate(dict(table))
    except ValidationError as error:
        problems = []
        items = error.errors()
        # A list whose entries failed also reports itself as too short: say only what failed.
        failed = {tuple(i["loc"][:n]) for i in items for n in range(1, len(i["loc"]))}
        for item in items:
            if item["type"] == "too_short" and tuple(item["loc"]) in failed:
                continue
            where = _location(tuple(item["loc"]))
            message = item["msg"].removeprefix("Value error, ")
            if item["type"] == "extra_forbidden":
                message = "unknown key"
            problems.append(f"'{where}': {message}")
        raise ConfigError(f"{source}: {'; '.join(problems)}") from None
