"""Settings: one ``ServerSettings`` for the process (``server.py``) and one ``ModelConfig`` per
model from its ``model.toml`` (``model.py``). Part of the base: imports nothing above it."""

from __future__ import annotations

from headrace.config.features import FeaturesConfig, ViewConfig
from headrace.config.model import (
    BatchingConfig,
    DriftSettings,
    Int8Config,
    ModelConfig,
    OnnxRuntimeConfig,
    TensorConfig,
    VersionPolicy,
    load_model_config,
)
from headrace.config.server import ServerSettings
from headrace.types import DEFAULT_MAX_MESSAGE_BYTES

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "BatchingConfig",
    "DriftSettings",
    "FeaturesConfig",
    "Int8Config",
    "ModelConfig",
    "OnnxRuntimeConfig",
    "ServerSettings",
    "TensorConfig",
    "VersionPolicy",
    "ViewConfig",
    "load_model_config",
]
