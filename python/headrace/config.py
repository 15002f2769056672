"""Settings: one ``ServerSettings`` for the process and one ``ModelConfig`` per model.

``ServerSettings`` reads, in rising priority, defaults, ``HEADRACE_*`` environment variables and
explicit values (the CLI's flags). ``ModelConfig`` comes from ``<repo>/<model>/model.toml``; a key
it does not know is an error naming the key and the file, so a typo never silently falls back to
a default.
"""

from __future__ import annotations

import math
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from headrace.errors import ConfigError

DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024


class ServerSettings(BaseSettings):
    """Process-wide settings; every field is also ``HEADRACE_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="HEADRACE_", extra="forbid")

    model_repository: Path | None = None
    host: str = "127.0.0.1"
    grpc_port: int = Field(default=8001, ge=0, le=65535)
    metrics_port: int = Field(default=8002, ge=-1, le=65535, description="-1 disables metrics")
    grpc_uds: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_message_bytes: int = Field(default=DEFAULT_MAX_MESSAGE_BYTES, gt=0)
    # Largest element count one input tensor may declare; checked before anything is allocated.
    max_request_elements: int = Field(default=1 << 28, gt=0)
    # ONNX Runtime threads per session; 0 lets ONNX Runtime choose.
    intra_op_threads: int = Field(default=1, ge=0)
    inter_op_threads: int = Field(default=1, ge=0)
    # Run ONNX models on the CPU through ONNX Runtime's C API from the core (no GIL on the batch
    # path) when the model allows it; False keeps every run in onnxruntime's Python API.
    native_onnxruntime: bool = True
    shutdown_grace_s: float = Field(default=30.0, ge=0)
    log_level: str = "INFO"


VersionPolicyKind = Literal["latest", "all", "specific"]


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions of a model are served (Triton's semantics; default latest 1)."""

    kind: VersionPolicyKind = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def select(self, available: list[int]) -> list[int]:
        ordered = sorted(available)
        if self.kind == "all":
            return ordered
        if self.kind == "specific":
            return [v for v in ordered if v in self.versions]
        return ordered[-self.num_versions :] if self.num_versions > 0 else []


@dataclass(frozen=True)
class TensorConfig:
    """A declared input or output: name, v2 datatype, shape with -1 for dynamic dims."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class BatchingConfig:
    """The ``[batching]`` table of model.toml (used by the dynamic batcher)."""

    max_queue_delay_us: int | Literal["auto"] = "auto"
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int = 0
    priority_levels: int = 0
    default_priority_level: int = 0
    default_timeout_us: int = 0
    latency_target_us: int = 0


@dataclass(frozen=True)
class DriftSettings:
    """The ``[drift]`` table of model.toml: how served traffic is compared with the version's
    reference profile (``<version>/reference.json``, made by ``headrace profile``)."""

    bins: int = 50  # bins of a numerical feature in the profile; must match the profile
    window_rows: int = 10_000  # a window closes at window_rows rows or window_s, whichever first
    window_s: float = 60.0
    windows_kept: int = 60
    feature_names: tuple[str, ...] | None = None  # names of the input features, in column order
    categorical: tuple[str, ...] = ()
    top_k: int = 20  # categories kept per categorical feature in the profile
    psi_warn: float = 0.1
    psi_alert: float = 0.2
    p_value: float = 0.05
    correction: Literal["bonferroni", "bh"] = "bonferroni"
    trigger_webhook: str | None = None  # POSTed the report JSON when an alert starts
    trigger_command: tuple[str, ...] | None = None  # run (no shell), report JSON on stdin
    cooldown_s: float = 3600.0  # at most one trigger firing per cooldown


@dataclass(frozen=True)
class ModelConfig:
    """One model's settings, from ``model.toml`` (all optional)."""

    name: str
    backend: str | None = None
    max_batch_size: int | None = None
    instances: int = 1
    version_policy: VersionPolicy = field(default_factory=VersionPolicy)
    inputs: tuple[TensorConfig, ...] = ()
    outputs: tuple[TensorConfig, ...] = ()
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    batching_configured: bool = False
    intra_op_threads: int | None = None
    inter_op_threads: int | None = None
    drift: DriftSettings = field(default_factory=lambda: DriftSettings())
    source: Path | None = None


_TOP_LEVEL_KEYS = {
    "backend",
    "max_batch_size",
    "instances",
    "version_policy",
    "inputs",
    "outputs",
    "batching",
    "onnxruntime",
    "drift",
    "aliases",  # read by the registry (registry/filesystem.py), not part of ModelConfig
}
_BATCHING_KEYS = {
    "max_queue_delay_us",
    "preferred_batch_sizes",
    "max_queue_size",
    "priority_levels",
    "default_priority_level",
    "default_timeout_us",
    "latency_target_us",
}
_DRIFT_KEYS = {
    "bins",
    "window_rows",
    "window_s",
    "windows_kept",
    "feature_names",
    "categorical",
    "top_k",
    "psi_warn",
    "psi_alert",
    "p_value",
    "correction",
    "trigger_webhook",
    "trigger_command",
    "cooldown_s",
}
_ORT_KEYS = {"intra_op_threads", "inter_op_threads"}
_TENSOR_KEYS = {"name", "datatype", "shape"}
_BACKENDS = {"onnxruntime", "int8"}


def _fail(path: Path, message: str) -> ConfigError:
    return ConfigError(f"{path}: {message}")


def _check_keys(path: Path, table: dict[str, Any], allowed: set[str], where: str) -> None:
    for key in table:
        if key not in allowed:
            raise _fail(path, f"unknown key '{where}{key}' (known: {', '.join(sorted(allowed))})")


def _int(path: Path, value: Any, key: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(path, f"'{key}' must be an integer >= {minimum}, got {value!r}")
    return value


def _tensors(path: Path, value: Any, key: str) -> tuple[TensorConfig, ...]:
    from headrace.tensors import DATATYPE_TO_NUMPY

    if not isinstance(value, list):
        raise _fail(path, f"'{key}' must be an array of tables ([[{key}]])")
    tensors = []
    for index, entry in enumerate(value):
        if not isinstance(entry, dict):
            raise _fail(path, f"'{key}[{index}]' must be a table")
        _check_keys(path, entry, _TENSOR_KEYS, f"{key}[{index}].")
        name = entry.get("name")
        datatype = entry.get("datatype")
        shape = entry.get("shape")
        if not isinstance(name, str) or not name:
            raise _fail(path, f"'{key}[{index}].name' must be a non-empty string")
        if datatype not in DATATYPE_TO_NUMPY:
            raise _fail(path, f"'{key}[{index}].datatype' is not a v2 datatype: {datatype!r}")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= -1 for d in shape
        ):
            raise _fail(path, f"'{key}[{index}].shape' must be a list of ints >= -1")
        tensors.append(TensorConfig(name, str(datatype), tuple(shape)))
    return tuple(tensors)


def _version_policy(path: Path, value: Any) -> VersionPolicy:
    if value == "latest":
        return VersionPolicy("latest", 1)
    if value == "all":
        return VersionPolicy("all")
    if isinstance(value, dict) and len(value) == 1:
        ((kind, arg),) = value.items()
        if kind == "latest":
            return VersionPolicy("latest", _int(path, arg, "version_policy.latest", 1))
        if kind == "specific" and isinstance(arg, list) and arg:
            return VersionPolicy(
                "specific",
                versions=tuple(_int(path, v, "version_policy.specific", 1) for v in arg),
            )
    raise _fail(
        path,
        '\'version_policy\' must be "latest", "all", { latest = N } or '
        f"{{ specific = [versions] }}, got {value!r}",
    )


def _batching(path: Path, table: Any) -> BatchingConfig:
    if not isinstance(table, dict):
        raise _fail(path, "'batching' must be a table")
    _check_keys(path, table, _BATCHING_KEYS, "batching.")
    delay = table.get("max_queue_delay_us", "auto")
    if delay != "auto":
        delay = _int(path, delay, "batching.max_queue_delay_us")
    preferred = table.get("preferred_batch_sizes", [])
    if not isinstance(preferred, list):
        raise _fail(path, "'batching.preferred_batch_sizes' must be a list of integers")
    levels = _int(path, table.get("priority_levels", 0), "batching.priority_levels")
    default_level = _int(
        path, table.get("default_priority_level", 0), "batching.default_priority_level"
    )
    if levels and not 1 <= default_level <= levels and default_level != 0:
        raise _fail(path, "'batching.default_priority_level' must lie in 1..priority_levels")
    return BatchingConfig(
        max_queue_delay_us=delay,
        preferred_batch_sizes=tuple(
            _int(path, v, "batching.preferred_batch_sizes", 1) for v in preferred
        ),
        max_queue_size=_int(path, table.get("max_queue_size", 0), "batching.max_queue_size"),
        priority_levels=levels,
        default_priority_level=default_level,
        default_timeout_us=_int(
            path, table.get("default_timeout_us", 0), "batching.default_timeout_us"
        ),
        latency_target_us=_int(
            path, table.get("latency_target_us", 0), "batching.latency_target_us"
        ),
    )


def _number(path: Path, value: Any, key: str, minimum: float = 0.0) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < minimum
    ):
        raise _fail(path, f"'{key}' must be a number >= {minimum:g}, got {value!r}")
    return float(value)


def _strings(path: Path, value: Any, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _fail(path, f"'{key}' must be a list of non-empty strings, got {value!r}")
    return tuple(value)


def _drift(path: Path, table: Any) -> DriftSettings:
    if not isinstance(table, dict):
        raise _fail(path, "'drift' must be a table")
    _check_keys(path, table, _DRIFT_KEYS, "drift.")
    default = DriftSettings()
    feature_names = table.get("feature_names")
    correction = table.get("correction", default.correction)
    if correction not in ("bonferroni", "bh"):
        raise _fail(path, f'\'drift.correction\' must be "bonferroni" or "bh", got {correction!r}')
    webhook = table.get("trigger_webhook")
    if webhook is not None and (
        not isinstance(webhook, str) or not webhook.startswith(("http://", "https://"))
    ):
        raise _fail(path, f"'drift.trigger_webhook' must be an http(s) URL, got {webhook!r}")
    command = table.get("trigger_command")
    if command is not None:
        if isinstance(command, str):
            command = shlex.split(command)
        command = _strings(path, command, "drift.trigger_command")
        if not command:
            raise _fail(path, "'drift.trigger_command' must not be empty")
    p_value = _number(path, table.get("p_value", default.p_value), "drift.p_value")
    if not 0.0 < p_value < 1.0:
        raise _fail(path, f"'drift.p_value' must lie in (0, 1), got {p_value!r}")
    psi_warn = _number(path, table.get("psi_warn", default.psi_warn), "drift.psi_warn")
    psi_alert = _number(path, table.get("psi_alert", default.psi_alert), "drift.psi_alert")
    if psi_alert < psi_warn:
        raise _fail(path, "'drift.psi_alert' must be >= 'drift.psi_warn'")
    window_rows = _int(path, table.get("window_rows", default.window_rows), "drift.window_rows")
    window_s = _number(path, table.get("window_s", default.window_s), "drift.window_s")
    if window_rows == 0 and window_s == 0:
        raise _fail(path, "'drift.window_rows' and 'drift.window_s' cannot both be 0")
    return DriftSettings(
        bins=_int(path, table.get("bins", default.bins), "drift.bins", 1),
        window_rows=window_rows,
        window_s=window_s,
        windows_kept=_int(
            path, table.get("windows_kept", default.windows_kept), "drift.windows_kept", 1
        ),
        feature_names=(
            _strings(path, feature_names, "drift.feature_names")
            if feature_names is not None
            else None
        ),
        categorical=_strings(path, table.get("categorical", []), "drift.categorical"),
        top_k=_int(path, table.get("top_k", default.top_k), "drift.top_k", 1),
        psi_warn=psi_warn,
        psi_alert=psi_alert,
        p_value=p_value,
        correction=correction,
        trigger_webhook=webhook,
        trigger_command=command,
        cooldown_s=_number(path, table.get("cooldown_s", default.cooldown_s), "drift.cooldown_s"),
    )


def load_model_config(name: str, path: Path) -> ModelConfig:
    """Parse ``model.toml``; every error names the key and the file."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise _fail(path, f"not valid TOML: {error}") from None
    except OSError as error:
        raise _fail(path, f"cannot be read: {error}") from None
    _check_keys(path, raw, _TOP_LEVEL_KEYS, "")
    backend = raw.get("backend")
    if backend is not None and backend not in _BACKENDS:
        raise _fail(path, f"'backend' must be one of {sorted(_BACKENDS)}, got {backend!r}")
    max_batch_size = raw.get("max_batch_size")
    if max_batch_size is not None:
        max_batch_size = _int(path, max_batch_size, "max_batch_size")
    ort = raw.get("onnxruntime", {})
    if not isinstance(ort, dict):
        raise _fail(path, "'onnxruntime' must be a table")
    _check_keys(path, ort, _ORT_KEYS, "onnxruntime.")
    return ModelConfig(
        name=name,
        backend=backend,
        max_batch_size=max_batch_size,
        instances=_int(path, raw.get("instances", 1), "instances", 1),
        version_policy=_version_policy(path, raw.get("version_policy", "latest")),
        inputs=_tensors(path, raw.get("inputs", []), "inputs"),
        outputs=_tensors(path, raw.get("outputs", []), "outputs"),
        batching=_batching(path, raw.get("batching", {})),
        batching_configured="batching" in raw,
        intra_op_threads=(
            _int(path, ort["intra_op_threads"], "onnxruntime.intra_op_threads")
            if "intra_op_threads" in ort
            else None
        ),
        inter_op_threads=(
            _int(path, ort["inter_op_threads"], "onnxruntime.inter_op_threads")
            if "inter_op_threads" in ort
            else None
        ),
        drift=_drift(path, raw.get("drift", {})),
        source=path,
    )
