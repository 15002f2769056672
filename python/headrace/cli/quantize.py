"""``headrace quantize``: int8-quantize an MLP ONNX model into a version folder."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(commands: Any) -> None:
    quantize = commands.add_parser(
        "quantize",
        help="int8-quantize an MLP ONNX model into a version directory (see `quantize --help`)",
        add_help=False,
    )
    quantize.set_defaults(handler=run, takes_rest=True)


def run(args: argparse.Namespace) -> int:
    from headrace.quant import main

    return main(list(args.rest))
