"""``headrace profile``: a drift reference profile, of a model version (inputs and outputs,
written into the version's folder) or of data alone (``--out FILE`` without ``--model``)."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from headrace.errors import HeadraceError, InvalidArgumentError
from headrace.monitoring.drift.model_profile import profile_model
from headrace.monitoring.drift.profile import (
    DEFAULT_BINS,
    DEFAULT_TOP_K,
    build_profile,
    read_data,
)


def data_main(argv: Sequence[str] | None = None) -> int:
    """``headrace profile --data FILE --out FILE``: profile reference data (no model)."""
    parser = argparse.ArgumentParser(
        prog="headrace profile", description="Build a drift reference profile from data."
    )
    parser.add_argument("--data", required=True, help=".npy, .npz, .csv or .parquet file")
    parser.add_argument("--out", required=True, help="where to write the profile (JSON)")
    parser.add_argument("--bins", type=int, default=DEFAULT_BINS)
    parser.add_argument("--top-k", type=int, default=DEFAULT_TOP_K)
    parser.add_argument("--feature-names", nargs="+", default=None)
    parser.add_argument("--categorical", nargs="*", default=[])
    args = parser.parse_args(argv)
    try:
        data = read_data(args.data)
        profile = build_profile(
            data,
            feature_names=args.feature_names,
            categorical=[int(c) if c.isdigit() else c for c in args.categorical],
            bins=args.bins,
            top_k=args.top_k,
        )
        profile.save(args.out)
    except (InvalidArgumentError, OSError) as exc:
        print(f"headrace profile: {exc}", file=sys.stderr)
        return 2
    kinds = Counter(f.kind for f in profile.features)
    print(
        f"profiled {profile.rows} rows: {kinds['numerical']} numerical and "
        f"{kinds['categorical']} categorical features -> {args.out}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``headrace profile --data FILE --model-repository DIR --model NAME [--version V]``."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    has_model = any(a == "--model" or a.startswith("--model=") for a in arguments)
    has_out = any(a == "--out" or a.startswith("--out=") for a in arguments)
    if has_out and not has_model:
        # Without a model: profile the data alone into --out.
        return data_main(arguments)
    parser = argparse.ArgumentParser(
        prog="headrace profile",
        description="Build a model version's drift reference profile (inputs and outputs) and "
        "write it as <repo>/<model>/<version>/reference.json. Without --model, "
        "`headrace profile --data FILE --out FILE` profiles the data alone.",
    )
    parser.add_argument("--data", required=True, type=Path, help=".npy, .npz, .csv, .parquet")
    parser.add_argument("--model-repository", required=True, type=Path)
    parser.add_argument("--model", required=True)
    parser.add_argument("--version", default=None, help="default: the latest served version")
    parser.add_argument("--out", type=Path, default=None, help="default: the version's folder")
    parser.add_argument("--chunk-rows", type=int, default=0, help="rows per inference call")
    args = parser.parse_args(arguments)
    try:
        data = read_data(args.data)
        profile, target = profile_model(
            args.model_repository, args.model, args.version, data, args.out, args.chunk_rows
        )
    except (HeadraceError, OSError) as exc:
        message = exc.message if isinstance(exc, HeadraceError) else str(exc)
        print(f"headrace profile: {message}", file=sys.stderr)
        return 2
    outputs = profile.metadata.get("outputs", "")
    store = profile.metadata.get("features_store")
    print(
        f"profiled {profile.rows} rows of model {args.model} version "
        f"{profile.metadata.get('version')}: {len(profile.features)} features (outputs: "
        f"{outputs}) -> {target}"
        + (f"\nthe inputs as served: features assembled from the {store} store" if store else "")
    )
    return 0


def add_parser(commands: Any) -> None:
    profile = commands.add_parser(
        "profile",
        help="build a model version's drift reference profile (see `profile --help`)",
        add_help=False,
    )
    profile.set_defaults(handler=run, takes_rest=True)


def run(args: argparse.Namespace) -> int:
    return main(list(args.rest))
