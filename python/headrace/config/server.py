"""``ServerSettings``: the process-wide settings, from defaults, ``HEADRACE_*`` environment
variables and explicit values (the CLI's flags), in rising priority."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from headrace.types import DEFAULT_MAX_MESSAGE_BYTES

# Beside the model folders (a file, or a hidden folder: neither is read as a model).
DEFAULT_ENDPOINTS_FILE = "_endpoints.toml"
DEFAULT_STATE_DIR = ".headrace"


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
    # -- access (server/auth.py) --
    # Control RPCs (RepositoryModelLoad/Unload, AdminService): "auto" opens them on loopback or a
    # Unix socket, needs credentials elsewhere; "on" opens them anywhere; "off" refuses them.
    control_rpcs: Literal["auto", "on", "off"] = "auto"
    admin_token_file: Path | None = None
    inference_token_file: Path | None = None  # set: inference RPCs need a token too
    tls_client_ca: Path | None = None  # PEM: a client certificate signed by it is an admin
    # Drift retraining triggers (commands, webhooks) in model.toml run with the server's rights:
    # honoured only when the repository is trusted with them.
    trust_model_triggers: bool = False
    # -- endpoints and traffic strategies (routing/) --
    # endpoints.toml; None: `_endpoints.toml` at the model repository's root when it exists.
    endpoints_file: Path | None = None
    # Where endpoints changed at run time and the strategies' state persist; None: `.headrace`
    # inside the model repository (none without a repository: nothing persists).
    state_dir: Path | None = None
    # Feedback finds an answer by its request id among the last `feedback_max_entries` answers
    # no older than `feedback_ttl_s`; older or dropped ids answer NOT_FOUND.
    feedback_max_entries: int = Field(default=100_000, ge=1)
    feedback_ttl_s: float = Field(default=3600.0, gt=0)
    # Declared endpoints always remember their answers' ids for feedback; plain models (an
    # endpoint of one variant) only when this is on: remembering costs about a microsecond per
    # request, which a model nobody sends feedback for should not pay.
    feedback_plain_models: bool = False
    # Shadow calls may take at most this share of the server's CPU time (a token bucket charged
    # each call's duration; copies beyond it are dropped as over_budget and counted): what
    # mirroring may cost a saturated server, against how much of the traffic a shadow sees.
    # 1: no budget.
    shadow_budget_share: float = Field(default=0.05, gt=0, le=1)
    # -- online features (features/) --
    # Where every row served by a model with [features] is logged (Parquet, rotated; read back
    # with headrace.features.read_served_log); None: no log.
    served_log: Path | None = None
    # -- model registry (registry/): MLflow aliases, the watched repository, the audit trail --
    # MLflow's tracking server; None: $MLFLOW_TRACKING_URI (read only when `models` are given).
    mlflow_uri: str | None = None
    # Models to serve from MLflow: NAME@ALIAS follows an alias, NAME/VERSION pins a version.
    models: list[str] = Field(default_factory=list)
    registry_poll_s: float = Field(default=10.0, gt=0)
    # Verified copies of MLflow versions (a restart while MLflow is down serves from here);
    # None: $XDG_CACHE_HOME/headrace/models (~/.cache/headrace/models).
    model_cache: Path | None = None
    # Watch the model repository: a new version folder loads once its files are settled, a
    # removed one drains and unloads, a changed file reloads (off: load on RepositoryModelLoad).
    watch_repository: bool = False
    repository_settle_s: float = Field(default=2.0, ge=0)
    repository_poll_s: float = Field(default=1.0, gt=0)  # where inotify is unavailable
    # Versions that served before the current one and stay loaded (warm, answering nothing), so
    # that a rollback switches at once; each costs the memory of a loaded version.
    keep_previous_versions: int = Field(default=1, ge=0)
    # Also load the versions the model's other aliases point at, so requests can name them.
    serve_aliases: bool = True
    # JSON lines of every transition, fsynced before the switch takes effect; None: none kept.
    audit_log: Path | None = None
    # -- load --
    # RPCs in flight at once, streams counted once each; beyond it RESOURCE_EXHAUSTED.
    # 0: from the machine's memory (see server/app.py).
    max_inflight_rpcs: int = Field(default=0, ge=0)
    # A stream whose reader takes no answer for this long is cancelled.
    stream_stall_timeout_s: float = Field(default=30.0, gt=0)
    # Threads other than the event loop's (gRPC's, the batcher's, the metrics server's): "batch"
    # runs them under Linux's SCHED_BATCH, so that their wake-ups do not preempt the loop on a
    # shared core (thread_policy.py); "normal" leaves the kernel's default.
    helper_thread_policy: Literal["batch", "normal"] = "batch"

    def resolved_endpoints_file(self) -> Path | None:
        """The endpoints file to read: the setting, else the repository's `_endpoints.toml`."""
        if self.endpoints_file is not None:
            return self.endpoints_file
        if self.model_repository is not None:
            default = Path(self.model_repository) / DEFAULT_ENDPOINTS_FILE
            if default.is_file():
                return default
        return None

    def resolved_state_dir(self) -> Path | None:
        """The routing state folder: the setting, else `.headrace` in the repository."""
        if self.state_dir is not None:
            return self.state_dir
        if self.model_repository is not None:
            return Path(self.model_repository) / DEFAULT_STATE_DIR
        return None
