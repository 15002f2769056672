"""``endpoints.toml`` as pydantic models, and the signature check between an endpoint's variants.

The file holds ``[[endpoint]]`` tables; each names a strategy and its variants (a model at a
version or alias). Every mistake is a :class:`~headrace.errors.ConfigError` that names the key and
the file (or ``<admin>`` for an endpoint sent through the admin RPCs), so a typo never falls back
to a default silently.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from headrace.errors import ConfigError, InvalidArgumentError

Strategy = Literal["split", "canary", "blue_green", "bandit"]
ADMIN_SOURCE = "<admin>"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _version_text(value: Any) -> Any:
    # TOML users write `version = 3`; versions and aliases are strings everywhere else.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


class VariantConfig(_Strict):
    """One way an endpoint can answer: a model at a version or alias ("" = its default)."""

    name: str = Field(min_length=1)
    model: str = Field(min_length=1)
    version: str = ""
    weight: float | None = Field(default=None, ge=0)  # split only; default 1

    _version = field_validator("version", mode="before")(_version_text)


class ShadowConfig(_Strict):
    """A model that receives a copy of a sampled share of the traffic and never answers."""

    name: str = Field(min_length=1)
    model: str = Field(min_length=1)
    version: str = ""
    sample: float = Field(default=1.0, gt=0, le=1)
    # Agreement for non-classifiers: every |primary - shadow| element within this bound.
    tolerance: float = Field(default=1e-6, ge=0)

    _version = field_validator("version", mode="before")(_version_text)


class CanaryConfig(_Strict):
    """The ramp of a canary: the candidate's share steps up while its gates hold."""

    steps: tuple[float, ...] = (5, 25, 50, 100)
    # A step is due after step_s seconds or step_requests requests, whichever comes first; 0
    # turns a trigger off (TOML has no null).
    step_s: float = Field(default=60.0, ge=0)
    step_requests: int = Field(default=0, ge=0)
    # The candidate needs this many requests in a step before its gates judge or it advances.
    min_requests: int = Field(default=100, ge=1)
    max_error_rate_delta: float = Field(default=0.01, ge=0)
    max_p99_ratio: float = Field(default=1.5, ge=0)  # 0: no latency gate
    # Gate on feedback: baseline mean reward minus candidate mean reward may not exceed this.
    max_reward_drop: float | None = Field(default=None, ge=0)
    min_rewards: int = Field(default=30, ge=1)

    @field_validator("steps")
    @classmethod
    def _steps_rise_to_100(cls, steps: tuple[float, ...]) -> tuple[float, ...]:
        if not steps:
            raise ValueError("needs at least one step")
        previous = 0.0
        for step in steps:
            if not previous < step <= 100:
                raise ValueError(f"steps must rise strictly within (0, 100], got {list(steps)}")
            previous = step
        if steps[-1] != 100:
            raise ValueError(f"the last step must be 100 (promotion), got {list(steps)}")
        return steps

    @model_validator(mode="after")
    def _some_trigger(self) -> CanaryConfig:
        if self.step_s == 0 and self.step_requests == 0:
            raise ValueError("step_s or step_requests must be above 0")
        return self


class BanditConfig(_Strict):
    algorithm: Literal["thompson", "epsilon_greedy", "ucb1"] = "thompson"
    epsilon: float = Field(default=0.1, ge=0, le=1)
    reward: Literal["bernoulli", "gaussian"] = "bernoulli"
    ucb_c: float = Field(default=2.0**0.5, gt=0)  # exploration scale of ucb1


class BlueGreenConfig(_Strict):
    active: str | None = None  # a variant name; default the first variant


class QualityConfig(_Strict):
    """How labels (delayed ground truth) and shadow outputs are compared with answers."""

    # auto: a classifier when the output is 2-D with more than one column (scores per class).
    kind: Literal["auto", "classifier", "regressor"] = "auto"
    output: str | None = None  # default: the first output
    # Keep a copy of each answer's quality output (at most 1024 elements) so that labels sent
    # by feedback can be scored; off, a label is refused and answers cost no copy.
    labels: bool = False
    window_s: float = Field(default=300.0, gt=0)
    windows_kept: int = Field(default=12, ge=1)


class EndpointConfig(_Strict):
    """One ``[[endpoint]]`` table.

    Settings of strategies other than ``strategy`` (weights, sticky_key, the tables of the
    others) are kept but inert, so that an update can switch the strategy without restating
    them; the issue's own example declares them side by side.
    """

    name: str = Field(min_length=1)
    strategy: Strategy = "split"
    sticky_key: str | None = None
    variants: tuple[VariantConfig, ...] = Field(min_length=1)
    shadows: tuple[ShadowConfig, ...] = ()
    canary: CanaryConfig | None = None
    bandit: BanditConfig | None = None
    blue_green: BlueGreenConfig | None = None
    quality: QualityConfig = QualityConfig()

    @model_validator(mode="after")
    def _consistent(self) -> EndpointConfig:
        names = [v.name for v in self.variants] + [s.name for s in self.shadows]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"variant and shadow names must be unique, repeated: {duplicates}")
        if len(self.variants) > 255:
            raise ValueError("at most 255 variants")
        if self.strategy in ("canary", "blue_green") and len(self.variants) != 2:
            raise ValueError(
                f"strategy '{self.strategy}' needs exactly 2 variants "
                f"({'baseline, candidate' if self.strategy == 'canary' else 'blue, green'})"
            )
        if self.strategy == "split" and sum(self.weights()) <= 0:
            raise ValueError("the variants' weights sum to 0")
        if self.strategy == "bandit" and len(self.variants) < 2:
            raise ValueError("strategy 'bandit' needs at least 2 variants")
        active = self.blue_green.active if self.blue_green else None
        if active is not None and active not in {v.name for v in self.variants}:
            raise ValueError(f"blue_green.active '{active}' is not a variant")
        return self

    def weights(self) -> list[float]:
        return [1.0 if v.weight is None else v.weight for v in self.variants]

    def canary_settings(self) -> CanaryConfig:
        return self.canary or CanaryConfig()

    def bandit_settings(self) -> BanditConfig:
        return self.bandit or BanditConfig()

    def to_toml_dict(self) -> dict[str, Any]:
        """The plain-data form (what the state folder stores; parses back to an equal config)."""
        return self.model_dump(mode="json", exclude_none=True)


class EndpointsFile(_Strict):
    endpoint: tuple[EndpointConfig, ...] = ()

    @model_validator(mode="after")
    def _unique(self) -> EndpointsFile:
        names = [e.name for e in self.endpoint]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"endpoint names must be unique, repeated: {duplicates}")
        return self


def _location(loc: Sequence[int | str]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _config_error(source: str, error: ValidationError, prefix: str = "") -> ConfigError:
    problems = []
    for item in error.errors():
        where = _location([*([prefix] if prefix else []), *item["loc"]])
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        problems.append(f"'{where}': {message}" if where else message)
    return ConfigError(f"{source}: " + "; ".join(problems))


def parse_endpoints(data: Mapping[str, Any], source: str) -> tuple[EndpointConfig, ...]:
    """Validate a parsed ``endpoints.toml``; errors name the key and ``source``."""
    try:
        return EndpointsFile.model_validate(data).endpoint
    except ValidationError as error:
        raise _config_error(source, error) from None


def parse_endpoint(data: Mapping[str, Any], source: str = ADMIN_SOURCE) -> EndpointConfig:
    """Validate one endpoint table (the admin RPCs' form)."""
    try:
        return EndpointConfig.model_validate(data)
    except ValidationError as error:
        raise _config_error(source, error, prefix="endpoint") from None


def load_endpoints_file(path: Path) -> tuple[EndpointConfig, ...]:
    """Read and validate ``endpoints.toml``."""
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror or error}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    return parse_endpoints(data, str(path))


# -- signatures ----------------------------------------------------------------------------------

TensorSignature = tuple[str, str, tuple[int, ...]]  # (name, v2 datatype, shape; -1 = any)


@dataclass(frozen=True)
class ModelSignature:
    """What a model takes and gives, as the engine knows it from the loaded version."""

    inputs: tuple[TensorSignature, ...]
    outputs: tuple[TensorSignature, ...]


def _shape_text(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _tensor_mismatch(side: str, mine: TensorSignature, theirs: TensorSignature) -> str | None:
    name, datatype, shape = mine
    _, other_type, other_shape = theirs
    if datatype != other_type:
        return f"{side} '{name}' is {datatype} vs {other_type}"
    compatible = len(shape) == len(other_shape) and all(
        a == b or a == -1 or b == -1 for a, b in zip(shape, other_shape, strict=True)
    )
    if not compatible:
        return f"{side} '{name}' has shape {_shape_text(shape)} vs {_shape_text(other_shape)}"
    return None


def signature_mismatch(first: ModelSignature, second: ModelSignature) -> str | None:
    """Why two signatures differ (None when they agree; -1 dims match any size)."""
    for side, mine, theirs in (
        ("input", first.inputs, second.inputs),
        ("output", first.outputs, second.outputs),
    ):
        by_name = {t[0]: t for t in theirs}
        names, other_names = [t[0] for t in mine], [t[0] for t in theirs]
        if sorted(names) != sorted(other_names):
            return f"{side}s {sorted(names)} vs {sorted(other_names)}"
        for tensor in mine:
            problem = _tensor_mismatch(side, tensor, by_name[tensor[0]])
            if problem:
                return problem
    return None


def check_signatures(endpoint: str, signatures: Mapping[str, ModelSignature]) -> None:
    """Every variant (and shadow) of ``endpoint`` must take and give the same tensors.

    ``signatures`` maps variant names, in declaration order, to their models' signatures; the
    first is the reference. Raises InvalidArgumentError naming both variants and the tensor.
    """
    items = list(signatures.items())
    if not items:
        return
    first_name, first = items[0]
    for name, signature in items[1:]:
        problem = signature_mismatch(first, signature)
        if problem:
            raise InvalidArgumentError(
                f"endpoint '{endpoint}': variant '{name}' does not match variant "
                f"'{first_name}': {problem}; the variants of an endpoint must share their "
                "input and output signatures"
            )
