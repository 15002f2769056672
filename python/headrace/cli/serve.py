"""``headrace serve``: serve a model repository over gRPC (KServe v2)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_parser(commands: Any) -> None:
    serve = commands.add_parser("serve", help="serve a model repository over gRPC (KServe v2)")
    serve.add_argument("--model-repository", type=Path, help="folder of <model>/<version>/")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--grpc-port", type=int, help="gRPC port (default 8001; 0 picks one)")
    serve.add_argument("--metrics-port", type=int, help="Prometheus port (default 8002; -1 off)")
    serve.add_argument("--grpc-uds", type=Path, help="also listen on this Unix socket")
    serve.add_argument("--tls-cert", type=Path, help="PEM certificate chain for TLS")
    serve.add_argument("--tls-key", type=Path, help="PEM private key for TLS")
    serve.add_argument("--max-message-bytes", type=int, help="gRPC message limit (256 MiB)")
    serve.add_argument("--intra-op-threads", type=int, help="ONNX Runtime threads per session")
    serve.add_argument("--drain-timeout-s", type=float, help="drain of a swapped version (30)")
    serve.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR")
    access = serve.add_argument_group("access (see README: Security)")
    access.add_argument("--admin-token-file", type=Path, help="bearer token for control RPCs")
    access.add_argument("--inference-token-file", type=Path, help="bearer token for inference")
    access.add_argument("--tls-client-ca", type=Path, help="PEM CA: mutual TLS for every caller")
    access.add_argument(
        "--control-rpcs", choices=["auto", "on", "off"], help="model load/unload and admin RPCs"
    )
    access.add_argument(
        "--trust-model-triggers",
        action="store_true",
        default=None,
        help="let model.toml [drift] triggers run commands / call webhooks",
    )
    routing = serve.add_argument_group("endpoints (traffic strategies, feedback)")
    routing.add_argument(
        "--endpoints",
        type=Path,
        help="endpoints.toml (default: _endpoints.toml in the model repository, if present)",
    )
    routing.add_argument(
        "--state-dir", type=Path, help="where endpoint changes persist (default: <repo>/.headrace)"
    )
    routing.add_argument(
        "--feedback-max-entries", type=int, help="answered ids feedback can find (100000)"
    )
    routing.add_argument("--feedback-ttl-s", type=float, help="feedback window per answer (3600)")
    routing.add_argument(
        "--shadow-budget-share",
        type=float,
        help="share of CPU time shadow calls may take; beyond it copies drop (0.05; 1: all)",
    )
    routing.add_argument(
        "--feedback-plain-models",
        action="store_true",
        default=None,
        help="remember plain models' answers for feedback too (endpoints always do)",
    )
    serve.add_argument(
        "--served-log",
        type=Path,
        help="log every row served by a model with [features] here (Parquet)",
    )
    registry = serve.add_argument_group("model registry (MLflow, the watched repository, audit)")
    registry.add_argument("--mlflow-uri", help="MLflow tracking server (else MLFLOW_TRACKING_URI)")
    registry.add_argument(
        "--model",
        action="append",
        dest="models",
        metavar="NAME@ALIAS|NAME/VERSION",
        help="serve a model from MLflow, following an alias or pinned (repeatable)",
    )
    registry.add_argument("--registry-poll-s", type=float, help="MLflow poll interval (10)")
    registry.add_argument("--model-cache", type=Path, help="MLflow versions kept here")
    registry.add_argument("--audit-log", type=Path, help="JSON lines of every transition")
    registry.add_argument(
        "--keep-previous", type=int, help="versions kept warm for an instant rollback (1)"
    )
    registry.add_argument(
        "--watch-repository",
        action="store_true",
        default=None,
        help="follow the repository: new versions load, removed ones unload, changes reload",
    )
    registry.add_argument("--settle-s", type=float, help="a new version's files settle (2)")
    load = serve.add_argument_group("load")
    load.add_argument("--max-inflight-rpcs", type=int, help="cap (default: from memory)")
    load.add_argument("--stream-stall-timeout-s", type=float, help="cancel a stalled reader (30)")
    load.add_argument(
        "--helper-thread-policy",
        choices=("batch", "normal"),
        help="batch (default): threads other than the event loop do not preempt it on wake-up",
    )
    serve.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from headrace.config import ServerSettings
    from headrace.server import serve

    # Only flags the user gave override the environment (HEADRACE_*) and the defaults.
    overrides: dict[str, Any] = {
        key: value
        for key, value in {
            "model_repository": args.model_repository,
            "host": args.host,
            "grpc_port": args.grpc_port,
            "metrics_port": args.metrics_port,
            "grpc_uds": args.grpc_uds,
            "tls_cert": args.tls_cert,
            "tls_key": args.tls_key,
            "max_message_bytes": args.max_message_bytes,
            "intra_op_threads": args.intra_op_threads,
            "drain_timeout_s": args.drain_timeout_s,
            "admin_token_file": args.admin_token_file,
            "inference_token_file": args.inference_token_file,
            "tls_client_ca": args.tls_client_ca,
            "control_rpcs": args.control_rpcs,
            "trust_model_triggers": args.trust_model_triggers,
            "max_inflight_rpcs": args.max_inflight_rpcs,
            "stream_stall_timeout_s": args.stream_stall_timeout_s,
            "helper_thread_policy": args.helper_thread_policy,
            "endpoints_file": args.endpoints,
            "state_dir": args.state_dir,
            "feedback_max_entries": args.feedback_max_entries,
            "feedback_ttl_s": args.feedback_ttl_s,
            "feedback_plain_models": args.feedback_plain_models,
            "shadow_budget_share": args.shadow_budget_share,
            "served_log": args.served_log,
            "mlflow_uri": args.mlflow_uri,
            "models": args.models,
            "registry_poll_s": args.registry_poll_s,
            "model_cache": args.model_cache,
            "audit_log": args.audit_log,
            "keep_previous_versions": args.keep_previous,
            "watch_repository": args.watch_repository,
            "repository_settle_s": args.settle_s,
            "log_level": args.log_level,
        }.items()
        if value is not None
    }
    settings = ServerSettings(**overrides)
    if settings.model_repository is None and not settings.models:
        print(
            "headrace serve: --model-repository (or HEADRACE_MODEL_REPOSITORY) or --model "
            "NAME@ALIAS with --mlflow-uri is required",
            file=sys.stderr,
        )
        return 2
    problem = _registry_problem(settings)
    if problem:
        print(f"headrace serve: {problem}", file=sys.stderr)
        return 2
    if (settings.tls_cert is None) != (settings.tls_key is None):
        print("headrace serve: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    return serve(settings)


def _registry_problem(settings: Any) -> str:
    """What is wrong with the registry settings (said before anything starts), or ""."""
    from headrace.errors import HeadraceError

    if not settings.models:
        return ""
    try:
        from headrace.registry.follow import parse_references
        from headrace.registry.mlflow import import_mlflow_client, resolve_tracking_uri

        parse_references(settings.models)
        resolve_tracking_uri(settings.mlflow_uri)
        import_mlflow_client()
    except HeadraceError as error:
        return error.message
    return ""
