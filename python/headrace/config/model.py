"""``model.toml`` as pydantic models: one ``ModelConfig`` per model, all keys optional.

Every table forbids unknown keys, and every error names the key (``batching.max_queue_size``,
``inputs[0].datatype``) and the file, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import math
import shlex
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic import model_validator as _model_validator

from headrace.config.features import FeaturesConfig, ViewConfig
from headrace.datatypes import DATATYPE_TO_NUMPY
from headrace.errors import ConfigError

_FROM_FILE = "headrace_model_toml"


def _strict_int(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be an integer, got {value!r}")
    return value


def _finite_number(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {value!r}")
    return float(value)


Int = Annotated[int, BeforeValidator(_strict_int)]
Number = Annotated[float, BeforeValidator(_finite_number)]


def _location(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


_UNION_TAGS = {"int", "float", "str", "bool", "none", "tuple", "list", "dict"}


def _key_path(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    """The keys of an error location, without pydantic's union-member and validator tags."""
    return tuple(
        p for p in loc if isinstance(p, int) or (p.isidentifier() and p not in _UNION_TAGS)
    )


def describe_validation_error(error: ValidationError, known: dict[str, list[str]]) -> str:
    """The first problem of a ValidationError in model.toml's words: the key and what is wrong."""
    errors = error.errors(include_url=False)
    first = errors[0]
    loc = _key_path(first["loc"])
    key = _location(loc)
    alternatives = [e for e in errors if _key_path(e["loc"]) == loc]
    if len(alternatives) > 1:  # a union: say what each member wanted
        wanted = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in alternatives)
        return f"'{key}' has an invalid value {first.get('input')!r} ({wanted})"
    kind = first["type"]
    given = first.get("input")
    ctx = first.get("ctx") or {}
    if kind == "extra_forbidden":
        table = _location(loc[:-1])
        allowed = known.get(table, [])
        return f"unknown key '{key}' (known: {', '.join(sorted(allowed))})"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        bound = {
            "greater_than_equal": ">=",
            "greater_than": ">",
            "less_than_equal": "<=",
            "less_than": "<",
        }[kind]
        limit = next(iter(ctx.values()))
        noun = "an integer" if isinstance(given, int) else "a number"
        return f"'{key}' must be {noun} {bound} {limit}, got {given!r}"
    if kind == "literal_error":
        return f"'{key}' must be one of {ctx.get('expected', '')}, got {given!r}"
    message = str(first["msg"]).removeprefix("Value error, ")
    if message.startswith("must"):
        return f"'{key}' {message}"
    head, _, rest = message.partition(" ")
    if head.isidentifier() and rest.startswith("must"):  # a check across keys names its key
        return f"'{key}.{head}' {rest}" if key else f"'{head}' {rest}"
    return f"'{key}': {message}"


class ConfigModel(BaseModel):
    """Frozen, unknown keys forbidden; constructing one with bad values raises ConfigError."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @_model_validator(mode="wrap")
    @classmethod
    def _typed_errors(cls, data: Any, handler: Any, info: ValidationInfo) -> Any:
        # Built in code (DriftSettings(...)): a bad value is a ConfigError. Read from a file
        # (context set by load_model_config): the whole ValidationError goes up, so the message
        # can name the full key (drift.p_value, inputs[0].datatype) and the file.
        if info.context and info.context.get(_FROM_FILE):
            result = handler(data)
            result.check()
            return result
        try:
            result = handler(data)
            result.check()
        except ValidationError as error:
            raise ConfigError(describe_validation_error(error, known_keys())) from None
        except ValueError as error:
            head, _, rest = str(error).partition(" ")
            raise ConfigError(f"'{head}' {rest}") from None
        return result

    def check(self) -> None:
        """Checks across keys; raise ValueError("<key> must ...") naming the key to blame."""


class VersionPolicy(ConfigModel):
    """Which versions of a model are served (Triton's semantics; default latest 1)."""

    kind: Literal["latest", "all", "specific"] = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def __init__(
        self,
        kind: Literal["latest", "all", "specific"] = "latest",
        num_versions: int = 1,
        versions: tuple[int, ...] = (),
    ) -> None:
        fields: dict[str, Any] = {"kind": kind, "num_versions": num_versions, "versions": versions}
        super().__init__(**fields)

    def select(self, available: list[int]) -> list[int]:
        ordered = sorted(available)
        if self.kind == "all":
            return ordered
        if self.kind == "specific":
            return [v for v in ordered if v in self.versions]
        return ordered[-self.num_versions :] if self.num_versions > 0 else []


def _version_policy(value: Any) -> Any:
    if isinstance(value, VersionPolicy):
        return value
    if value == "latest":
        return VersionPolicy("latest", 1)
    if value == "all":
        return VersionPolicy("all")
    if isinstance(value, dict) and len(value) == 1:
        ((kind, arg),) = value.items()
        if kind == "latest" and isinstance(arg, int) and not isinstance(arg, bool) and arg >= 1:
            return VersionPolicy("latest", arg)
        if (
            kind == "specific"
            and isinstance(arg, list)
            and arg
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in arg)
        ):
            return VersionPolicy("specific", versions=tuple(arg))
    raise ValueError(
        f'must be "latest", "all", {{ latest = N }} or {{ specific = [versions] }}, got {value!r}'
    )


class TensorConfig(ConfigModel):
    """A declared input or output: name, v2 datatype, shape with -1 for dynamic dims."""

    name: Annotated[str, Field(min_length=1)]
    datatype: str
    shape: tuple[Annotated[Int, Field(ge=-1)], ...]

    @field_validator("datatype")
    @classmethod
    def _known_datatype(cls, value: str) -> str:
        if value not in DATATYPE_TO_NUMPY:
            raise ValueError(
                f"must be a v2 datatype ({', '.join(DATATYPE_TO_NUMPY)}), not {value!r}"
            )
        return value


class BatchingConfig(ConfigModel):
    """The ``[batching]`` table (the dynamic batcher of batched models)."""

    max_queue_delay_us: Literal["auto"] | Annotated[Int, Field(ge=0)] = "auto"
    preferred_batch_sizes: tuple[Annotated[Int, Field(ge=1)], ...] = ()
    max_queue_size: Annotated[Int, Field(ge=0)] = 0
    priority_levels: Annotated[Int, Field(ge=0)] = 0
    default_priority_level: Annotated[Int, Field(ge=0)] = 0
    default_timeout_us: Annotated[Int, Field(ge=0)] = 0
    latency_target_us: Annotated[Int, Field(ge=0)] = 0

    def check(self) -> None:
        levels, level = self.priority_levels, self.default_priority_level
        if levels and level != 0 and not 1 <= level <= levels:
            raise ValueError("default_priority_level must lie in 1..priority_levels")


class OnnxRuntimeConfig(ConfigModel):
    """The ``[onnxruntime]`` table; None takes the server's setting."""

    intra_op_threads: Annotated[Int, Field(ge=0)] | None = None
    inter_op_threads: Annotated[Int, Field(ge=0)] | None = None


INT8_DEVICES = ("cpu", "auto", "cuda", "cuda:N")


def parse_int8_device(device: str) -> tuple[str, int]:
    """``"cpu"`` / ``"auto"`` / ``"cuda"`` / ``"cuda:N"`` -> (kind, CUDA device index);
    ValueError("must be ...") for anything else."""
    if device in ("cpu", "auto", "cuda"):
        return device, 0
    index = device.removeprefix("cuda:")
    if index != device and index.isascii() and index.isdigit():
        return "cuda", int(index)
    raise ValueError(f"must be one of {', '.join(map(repr, INT8_DEVICES))}, got {device!r}")


def _int8_device(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError(f"must be a string ({', '.join(map(repr, INT8_DEVICES))}), got {value!r}")
    parse_int8_device(value)
    return value


class Int8Config(ConfigModel):
    """The ``[int8]`` table (``backend = "int8"`` models): where the kernels run. ``"cpu"``, the
    default; ``"cuda"`` / ``"cuda:N"``, that GPU (a load fails with "no CUDA device: ..." where
    none is usable); ``"auto"``, the GPU when one is usable, else the CPU."""

    device: Annotated[str, BeforeValidator(_int8_device)] = "cpu"


def _command(value: Any) -> Any:
    if isinstance(value, str):
        value = shlex.split(value)
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"must be a list of non-empty strings, got {value!r}")
    if not value:
        raise ValueError("must not be empty")
    return tuple(value)


def _webhook(value: Any) -> Any:
    if value is not None and (
        not isinstance(value, str) or not value.startswith(("http://", "https://"))
    ):
        raise ValueError(f"must be an http(s) URL, got {value!r}")
    return value


class DriftSettings(ConfigModel):
    """The ``[drift]`` table, and the settings of a DriftMonitor: how served traffic is compared
    with the version's reference profile (``<version>/reference.json``)."""

    bins: Annotated[Int, Field(ge=1)] | None = None  # None: the profile's; else must match it
    window_rows: Annotated[Int, Field(ge=0)] = 10_000  # 0: no row trigger
    window_s: Annotated[Number, Field(ge=0)] = 60.0  # 0: no time trigger
    windows_kept: Annotated[Int, Field(ge=1)] = 60
    feature_names: tuple[Annotated[str, Field(min_length=1)], ...] | None = None
    categorical: tuple[Annotated[str, Field(min_length=1)], ...] = ()
    top_k: Annotated[Int, Field(ge=1)] = 20  # categories kept per categorical feature
    psi_warn: Annotated[Number, Field(ge=0)] = 0.1
    psi_alert: Annotated[Number, Field(ge=0)] = 0.2
    p_value: Annotated[Number, Field(gt=0, lt=1)] = 0.05
    correction: Literal["bonferroni", "bh", "none"] = "bonferroni"
    # Windows with fewer rows are reported but never flagged (at most window_rows when smaller).
    min_rows: Annotated[Int, Field(ge=1)] = 200
    shards: Annotated[Int, Field(ge=0)] = 0  # 0: twice the hardware threads, at least 4
    trigger_webhook: Annotated[str | None, BeforeValidator(_webhook)] = None
    trigger_command: Annotated[tuple[str, ...] | None, BeforeValidator(_command)] = None
    cooldown_s: Annotated[Number, Field(ge=0)] = 3600.0  # at most one firing per cooldown
    # Model quality from labels (endpoints with [endpoint.quality] labels = true), per variant
    # running this version and quality window: a closed window with min_labels labelled rows
    # alerts below min_accuracy (a classifier) or above max_mae (a regressor), like drift.
    min_accuracy: Annotated[Number, Field(ge=0, le=1)] | None = None
    max_mae: Annotated[Number, Field(ge=0)] | None = None
    min_labels: Annotated[Int, Field(ge=1)] = 30

    def check(self) -> None:
        if self.psi_alert < self.psi_warn:
            raise ValueError("psi_alert must be >= psi_warn")

    @property
    def effective_min_rows(self) -> int:
        return max(1, min(self.min_rows, self.window_rows)) if self.window_rows else self.min_rows


class ModelToml(ConfigModel):
    """The keys of model.toml."""

    backend: Literal["onnxruntime", "int8"] | None = None
    max_batch_size: Annotated[Int, Field(ge=0)] | None = None
    instances: Annotated[Int, Field(ge=1)] = 1
    version_policy: Annotated[VersionPolicy, BeforeValidator(_version_policy)] = Field(
        default_factory=VersionPolicy
    )
    inputs: tuple[TensorConfig, ...] = ()
    outputs: tuple[TensorConfig, ...] = ()
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    onnxruntime: OnnxRuntimeConfig = Field(default_factory=OnnxRuntimeConfig)
    int8: Int8Config = Field(default_factory=Int8Config)
    drift: DriftSettings = Field(default_factory=DriftSettings)
    # Online features joined into one input (``into``) before the batcher; clients send the
    # entity and request inputs instead (headrace.features).
    features: FeaturesConfig | None = None
    # Alias -> version number (``champion = 3``): labels a request may name as model_version.
    # Read by the registry's filesystem source; a moved alias is not a config change.
    aliases: dict[Annotated[str, Field(min_length=1)], Annotated[Int, Field(ge=1)]] = Field(
        default_factory=dict
    )


class ModelConfig(ModelToml):
    """One model's settings: its name, the file they came from, and model.toml's keys."""

    name: str
    source: Path | None = None

    def serving_settings(self) -> dict[str, Any]:
        """Everything that changes how versions are built and run (aliases do not)."""
        return self.model_dump(exclude={"aliases", "source"})

    @property
    def intra_op_threads(self) -> int | None:
        return self.onnxruntime.intra_op_threads

    @property
    def inter_op_threads(self) -> int | None:
        return self.onnxruntime.inter_op_threads


_TABLES: dict[str, type[BaseModel]] = {
    "": ModelToml,
    "batching": BatchingConfig,
    "onnxruntime": OnnxRuntimeConfig,
    "int8": Int8Config,
    "drift": DriftSettings,
    "inputs": TensorConfig,
    "outputs": TensorConfig,
    "features": FeaturesConfig,
    "features.views": ViewConfig,
}


def known_keys() -> dict[str, list[str]]:
    """Each table's keys, for "unknown key" messages (``inputs[0]`` is the inputs table)."""
    keys = {table: list(model.model_fields) for table, model in _TABLES.items()}
    for index in range(64):
        keys[f"inputs[{index}]"] = keys["inputs"]
        keys[f"outputs[{index}]"] = keys["outputs"]
        keys[f"features.views[{index}]"] = keys["features.views"]
    return keys


def load_model_config(name: str, path: Path) -> ModelConfig:
    """Parse ``model.toml``; every error names the key and the file."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot be read: {error}") from None
    try:
        parsed = ModelToml.model_validate(raw, context={_FROM_FILE: True})
    except ValidationError as error:
        raise ConfigError(f"{path}: {describe_validation_error(error, known_keys())}") from None
    if parsed.drift.window_rows == 0 and parsed.drift.window_s == 0:
        # A monitor driven by hand may close windows itself; a served one needs a trigger.
        raise ConfigError(f"{path}: 'drift.window_rows' and 'drift.window_s' cannot both be 0")
    return ModelConfig.model_construct(
        **{key: getattr(parsed, key) for key in ModelToml.model_fields},
        name=name,
        source=path,
    )
