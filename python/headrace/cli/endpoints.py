"""``headrace endpoints``: manage a running server's endpoints through ``headrace.v1.AdminService``.

    headrace endpoints list     --server HOST:PORT [--include-models] [--json]
    headrace endpoints create   --server HOST:PORT FILE.toml     # its [[endpoint]] tables
    headrace endpoints update   --server HOST:PORT FILE.toml
    headrace endpoints delete   --server HOST:PORT NAME
    headrace endpoints switch   --server HOST:PORT NAME [--to VARIANT]
    headrace endpoints rollback --server HOST:PORT NAME
    headrace endpoints report   --server HOST:PORT NAME [--json]

Control RPCs need the admin token: ``--token-file FILE`` or the HEADRACE_TOKEN environment
variable (as ``headrace.client.Client(token=...)``); ``--tls-ca PEM`` for a TLS server. A file
for create/update has the shape of endpoints.toml and is checked here first, so a typo is named
with its key before anything is sent.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from headrace import wire
from headrace.client import read_token_file
from headrace.errors import HeadraceError
from headrace.routing.config import load_endpoints_file
from headrace.wire import admin as pb

TIMEOUT_S = 30.0


def add_parser(commands: Any) -> None:
    endpoints = commands.add_parser(
        "endpoints", help="list, create, update, delete, switch, roll back endpoints; reports"
    )
    actions = endpoints.add_subparsers(dest="action", required=True)

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = actions.add_parser(name, help=help_text)
        parser.add_argument("--server", required=True, help="HOST:PORT or unix:/path")
        parser.add_argument("--token-file", type=Path, help="admin token (else HEADRACE_TOKEN)")
        parser.add_argument("--tls-ca", type=Path, help="PEM roots: talk TLS to the server")
        return parser

    listing = action("list", "endpoints and what their strategies do now")
    listing.add_argument("--include-models", action="store_true", help="plain models too")
    listing.add_argument("--json", action="store_true", help="the answer as JSON")
    for name, text in (("create", "create endpoints"), ("update", "replace endpoints")):
        changing = action(name, f"{text} from a file shaped like endpoints.toml")
        changing.add_argument("file", type=Path, help="TOML with [[endpoint]] tables")
    action("delete", "delete an endpoint").add_argument("name")
    switch = action("switch", "blue-green: the next request goes to the other colour")
    switch.add_argument("name")
    switch.add_argument("--to", default="", help="the variant to activate (default: the other)")
    rollback = action("rollback", "blue-green: back to the previous colour; canary: candidate 0 %")
    rollback.add_argument("name")
    report = action("report", "per-variant traffic, latency, rewards and significance tests")
    report.add_argument("name")
    report.add_argument("--json", action="store_true", help="the answer as JSON")
    endpoints.set_defaults(handler=run)


def _channel(args: argparse.Namespace) -> grpc.Channel:
    if args.tls_ca is not None:
        credentials = grpc.ssl_channel_credentials(root_certificates=args.tls_ca.read_bytes())
        return grpc.secure_channel(args.server, credentials)
    return grpc.insecure_channel(args.server)


def _metadata(args: argparse.Namespace) -> tuple[tuple[str, str], ...] | None:
    token = (
        read_token_file(args.token_file)
        if args.token_file is not None
        else os.environ.get("HEADRACE_TOKEN") or None
    )
    return (("authorization", f"Bearer {token}"),) if token else None


def _as_json(message: Any) -> str:
    data = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return json.dumps(data, indent=2, sort_keys=True)


def _variants(endpoint: Any) -> str:
    parts = []
    for v in endpoint.variants:
        text = f"{v.name}={v.model}" + (f":{v.version}" if v.version else "")
        if endpoint.strategy == "split" and v.HasField("weight"):
            text += f" w{v.weight:g}"
        parts.append(text)
    parts.extend(f"shadow {s.name}={s.model}" for s in endpoint.shadows)
    return ", ".join(parts)


def _state(status: Any) -> str:
    state = status.state
    strategy = status.endpoint.strategy
    if strategy == "split":
        return " ".join(f"{k} {v:.0%}" for k, v in sorted(state.shares.items()))
    if strategy == "canary":
        return f"{state.canary_state} step {state.step_index}: {state.candidate_percent:g} %"
    if strategy == "blue_green":
        return f"active {state.active}"
    arms = " ".join(
        f"{name} n={arm.rewards} mean={arm.mean:.3g}" for name, arm in sorted(state.arms.items())
    )
    return f"{state.algorithm}: {arms}"


def _number(value: float, digits: int = 3) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}g}"


def _percent(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1%}"


def format_report(report: Any) -> str:
    """The experiment report as text: one row per variant, then the shadows and the caveat."""
    lines = [f"endpoint {report.endpoint} ({report.strategy}), control {report.control}"]
    header = (
        f"{'variant':<14} {'model':<16} {'requests':>9} {'errors':>7} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'rewards':>8} {'mean':>8} {'95% interval':>19} {'p':>8}"
    )
    lines.append(header)
    for v in report.variants:
        model = v.model + (f":{v.version}" if v.version else "")
        rewards = v.rewards
        interval = f"[{_number(rewards.ci_low)}, {_number(rewards.ci_high)}]"
        p_value = (
            "control"
            if v.control
            else _number(v.comparison.p_value) + (" *" if v.significant else "")
        )
        lines.append(
            f"{v.name:<14} {model:<16} {v.requests:>9} {v.errors:>7} "
            f"{_number(v.latency_p50_ms):>8} {_number(v.latency_p99_ms):>8} "
            f"{rewards.count:>8} {_number(rewards.mean):>8} {interval:>19} {p_value:>8}"
        )
        if v.HasField("quality"):
            kind = "accuracy" if v.quality.kind == "classifier" else "MAE"
            lines.append(f"{'':<14} {kind} {_number(v.quality.value)} over {v.quality.count} rows")
    for s in report.shadows:
        # The mirrored share first: agreement is measured over the copies that were answered.
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(s.dropped_by.items()))
        lines.append(
            f"shadow {s.name} ({s.model}): mirrored {_percent(s.mirrored)} of {s.offered} sampled"
            f", dropped {s.dropped}{f' ({reasons})' if reasons else ''}, errors {s.errors}, "
            f"agreement {_number(s.agreement)}, |delta| p99 {_number(s.abs_delta_p99)}"
            f", p99 {_number(s.latency_p99_ms)} ms"
        )
    for event in report.events[-5:]:
        lines.append(f"event {event.kind}: {event.detail}")
    lines.append(f"* p < {report.alpha:g}. {report.caveat}")
    return "\n".join(lines)


def _endpoint_messages(path: Path) -> list[Any]:
    return [
        json_format.ParseDict(config.to_toml_dict(), pb.Endpoint())
        for config in load_endpoints_file(path)
    ]


def _do(args: argparse.Namespace, call: Callable[[str, Any], Any]) -> None:
    action = args.action
    if action == "list":
        response = call(
            "ListEndpoints", pb.ListEndpointsRequest(include_models=args.include_models)
        )
        if args.json:
            print(_as_json(response))
            return
        for status in response.endpoints:
            kind = "model" if status.implicit else status.endpoint.strategy
            print(f"{status.endpoint.name:<20} {kind:<11} {_variants(status.endpoint)}")
            print(f"{'':<20} {'':<11} {_state(status)}")
    elif action in ("create", "update"):
        method = "CreateEndpoint" if action == "create" else "UpdateEndpoint"
        request_type = pb.CreateEndpointRequest if action == "create" else pb.UpdateEndpointRequest
        for message in _endpoint_messages(args.file):
            call(method, request_type(endpoint=message))
            print(f"{action}d endpoint {message.name}")
    elif action == "delete":
        call("DeleteEndpoint", pb.DeleteEndpointRequest(name=args.name))
        print(f"deleted endpoint {args.name}")
    elif action == "switch":
        answer = call("Switch", pb.SwitchRequest(endpoint=args.name, variant=args.to))
        print(f"{args.name}: {answer.event.detail} (active: {answer.active})")
    elif action == "rollback":
        answer = call("Rollback", pb.RollbackRequest(endpoint=args.name))
        print(f"{args.name}: {answer.event.detail}")
    else:
        report = call("GetExperimentReport", pb.GetExperimentReportRequest(endpoint=args.name))
        print(_as_json(report) if args.json else format_report(report))


def run(args: argparse.Namespace) -> int:
    try:
        metadata = _metadata(args)
        with _channel(args) as channel:
            stub = wire.Stub(channel, wire.ADMIN_SERVICE)

            def call(method: str, request: Any) -> Any:
                return getattr(stub, method)(request, timeout=TIMEOUT_S, metadata=metadata)

            _do(args, call)
    except grpc.RpcError as error:
        code = error.code()
        details = error.details()
        print(f"headrace endpoints {args.action}: {code.name}: {details}", file=sys.stderr)
        return 1
    except HeadraceError as error:  # a bad file, checked before sending
        print(f"headrace endpoints {args.action}: {error.message}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"headrace endpoints {args.action}: {error}", file=sys.stderr)
        return 2
    return 0
