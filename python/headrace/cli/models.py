"""``headrace models``: a running server's model versions through ``headrace.v1.AdminService``.

    headrace models list     --server HOST:PORT [MODEL] [--json]
    headrace models rollback --server HOST:PORT MODEL
    headrace models pin      --server HOST:PORT MODEL VERSION      # a number or an alias
    headrace models unpin    --server HOST:PORT MODEL
    headrace models audit    --server HOST:PORT [MODEL] [--since T] [--until T] [--limit N]

These are control RPCs: the admin token comes from ``--token-file FILE`` or the HEADRACE_TOKEN
environment variable; ``--tls-ca PEM`` talks TLS. Times (``--since``, ``--until``) are seconds
since the epoch or ISO 8601 (``2025-01-31T12:00:00Z``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from headrace.errors import HeadraceError

TIMEOUT_S = 300.0  # a pin may load a version first


def add_parser(commands: Any) -> None:
    models = commands.add_parser(
        "models", help="list model versions, roll back, pin, unpin; the audit trail"
    )
    actions = models.add_subparsers(dest="action", required=True)

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = actions.add_parser(name, help=help_text)
        parser.add_argument("--server", required=True, help="HOST:PORT or unix:/path")
        parser.add_argument("--token-file", type=Path, help="admin token (else HEADRACE_TOKEN)")
        parser.add_argument("--tls-ca", type=Path, help="PEM roots: talk TLS to the server")
        return parser

    listing = action("list", "models, their versions and which one serves")
    listing.add_argument("model", nargs="?", default="", help="one model (default: all)")
    listing.add_argument("--json", action="store_true", help="the answer as JSON")
    action("rollback", "back to the version that served before").add_argument("model")
    pin = action("pin", "serve a version (a number or an alias) until unpinned")
    pin.add_argument("model")
    pin.add_argument("version")
    action("unpin", "back to the version the source points at").add_argument("model")
    audit = action("audit", "the audit trail of version transitions")
    audit.add_argument("model", nargs="?", default="", help="one model (default: all)")
    audit.add_argument("--since", type=_time, default=0.0, help="from (epoch s or ISO 8601)")
    audit.add_argument("--until", type=_time, default=0.0, help="until (exclusive)")
    audit.add_argument("--limit", type=int, default=0, help="the last N entries (1000)")
    audit.add_argument("--json", action="store_true", help="JSON lines")
    models.set_defaults(handler=run)


def _time(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"'{text}' is neither seconds since the epoch nor an ISO 8601 time"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.0f}"


def _as_json(message: Any) -> dict[str, Any]:
    from google.protobuf import json_format

    data: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return data


def _print_models(models: Any) -> None:
    for model in models:
        source = model.reference or model.source
        line = f"{model.model}  ({source}, {model.origin})  serving {model.serving or '-'}"
        if model.override:
            line += (
                f"  [{model.override} to {model.override_version} by {model.override_actor}; "
                f"source wants {model.desired or '-'}]"
            )
        print(line)
        if model.aliases:
            aliases = ", ".join(f"{a}={v}" for a, v in sorted(model.aliases.items()))
            print(f"  aliases: {aliases}")
        if model.note:
            print(f"  note: {model.note}")
        for v in model.versions:
            aliases = f" @{','.join(v.aliases)}" if v.aliases else ""
            loaded = (
                datetime.fromtimestamp(v.loaded_at_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                if not math.isnan(v.loaded_at_s)
                else "-"
            )
            print(
                f"  {v.version:>6} {v.state:<8}{aliases}  loaded {loaded}  download "
                f"{_ms(v.download_ms)} ms, load {_ms(v.load_ms)} ms, warm {_ms(v.warm_ms)} ms"
                + (f"  {v.reason}" if v.reason else "")
            )


def _print_audit(entries: Any) -> None:
    for e in entries:
        timings = ", ".join(
            f"{name} {_ms(value)} ms"
            for name, value in (
                ("download", e.download_ms),
                ("load", e.load_ms),
                ("warm", e.warm_ms),
                ("drain", e.drain_ms),
            )
            if not math.isnan(value)
        )
        print(
            f"{e.time}  {e.model}  {e.from_version or '-'} -> {e.to_version or '-'}  "
            f"{e.outcome}  cause {e.cause}  actor {e.actor}"
            + (f"  ({timings})" if timings else "")
            + (f"  {e.reason}" if e.reason else "")
        )


def run(args: argparse.Namespace) -> int:
    from headrace.client import Client, TlsConfig, read_token_file

    token = read_token_file(args.token_file) if args.token_file is not None else None
    tls = TlsConfig(root_certificates=args.tls_ca.read_bytes()) if args.tls_ca else None
    try:
        with Client(args.server, token=token, tls=tls) as client:
            if args.action == "list":
                models = client.list_model_versions(args.model)
                if args.json:
                    print(json.dumps([_as_json(m) for m in models], indent=2, sort_keys=True))
                else:
                    _print_models(models)
            elif args.action == "audit":
                entries = client.audit_log(
                    args.model, since_s=args.since, until_s=args.until, limit=args.limit
                )
                if args.json:
                    for entry in entries:
                        print(json.dumps(_as_json(entry), sort_keys=True))
                else:
                    _print_audit(entries)
            else:
                if args.action == "rollback":
                    change = client.rollback_model(args.model)
                elif args.action == "pin":
                    change = client.pin_model(args.model, args.version)
                else:
                    change = client.unpin_model(args.model)
                print(f"{change.model}: {change.from_version or '-'} -> {change.to_version or '-'}")
    except HeadraceError as error:
        print(f"headrace models {args.action}: {error.message}", file=sys.stderr)
        return 1
    return 0
