"""The ``headrace`` command line: one module per subcommand (serve, quantize, profile,
endpoints, models, features)."""

from __future__ import annotations

import argparse
import sys

from headrace.cli import endpoints, features, models, profile, quantize, serve


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="headrace", description="headrace: an inference server for trained ML models."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve.add_parser(commands)
    quantize.add_parser(commands)
    profile.add_parser(commands)
    endpoints.add_parser(commands)
    models.add_parser(commands)
    features.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    # quantize and profile parse their own arguments (their modules own their parsers), so
    # what the top-level parser does not know goes on to them.
    args, rest = parser.parse_known_args(arguments)
    if rest and not getattr(args, "takes_rest", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.rest = rest
    result: int = args.handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
