"""``ServerSettings``: the process-wide settings, from defaults, ``HEADRACE_*`` environment
variables and explicit values (the CLI's flags), in rising priority."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from headrace.types import DEFAULT_MAX_MESSAGE_BYTES


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
    # How long a swapped-out or unloaded version may finish its in-flight requests before it is
    # closed anyway (what is left then answers UNAVAILABLE).
    drain_timeout_s: float = Field(default=30.0, ge=0)
    log_level: str = "INFO"
