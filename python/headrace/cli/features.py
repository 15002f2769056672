"""``headrace features``: online feature stores (``push`` loads a snapshot file into Redis in
headrace's layout); the commands are ``headrace.features.cli``'s."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(commands: Any) -> None:
    features = commands.add_parser(
        "features",
        help="online feature stores: `features push FILE --view V --entity COL --redis URL`",
        add_help=False,
    )
    features.set_defaults(handler=run, takes_rest=True)


def run(args: argparse.Namespace) -> int:
    from headrace.features.cli import main

    return main(list(args.rest))
