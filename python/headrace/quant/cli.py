"""``headrace quantize``: an ONNX MLP in, ``DIR/model.int8`` out."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from headrace.quant.file_format import MODEL_FILE_NAME, encode_int8_model
from headrace.quant.graph import extract_mlp
from headrace.quant.model import UnsupportedGraphError
from headrace.quant.weights import calibrate_input_ranges, quantize_mlp

# Models with at least this many weights print per-layer progress to stderr.
PROGRESS_MIN_WEIGHTS = 1_000_000


def quantize_onnx(
    model_path: Path,
    out_dir: Path,
    *,
    calibration_path: Path | None = None,
    per_tensor: bool = False,
    output_name: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Quantize ``model_path`` into ``out_dir/model.int8`` and return that path.

    ``out_dir`` is the new version directory; it is created if needed, and an existing
    ``model.int8`` in it is never overwritten. Graph outputs left out (post-processing of the
    served output, such as skl2onnx's label) are reported through ``progress``.
    """
    import onnx

    model = onnx.load(str(model_path))
    graph = extract_mlp(model, output_name)
    if graph.dropped_outputs and progress is not None:
        progress(
            f"serving output '{graph.output.name}'; leaving out "
            f"{', '.join(repr(name) for name in graph.dropped_outputs)}, computed from it"
        )
    weight_count = sum(layer.weight.size for layer in graph.layers)
    report = progress if weight_count >= PROGRESS_MIN_WEIGHTS else None
    input_ranges = None
    if calibration_path is not None:
        if report is not None:
            report(f"calibrating on {calibration_path}")
        data = np.load(calibration_path, allow_pickle=False).astype(np.float32)
        input_ranges = calibrate_input_ranges(graph, data)
    layers = quantize_mlp(graph, per_tensor=per_tensor, input_ranges=input_ranges, progress=report)
    blob = encode_int8_model(graph.input, graph.output, layers)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / MODEL_FILE_NAME
    if target.exists():
        raise FileExistsError(f"{target} already exists; quantize into a new version directory")
    partial = out_dir / f".{MODEL_FILE_NAME}.partial"
    partial.write_bytes(blob)
    # The model repository must never see a half-written file.
    os.replace(partial, target)
    if report is not None:
        report(f"wrote {target} ({len(blob)} bytes)")
    return target


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="headrace quantize",
        description="Post-training int8 quantization of an MLP ONNX model into DIR/model.int8.",
    )
    parser.add_argument("model", type=Path, help="the float32 ONNX model (MatMul/Gemm MLP)")
    parser.add_argument(
        "--out", type=Path, required=True, help="the new version directory to write"
    )
    parser.add_argument(
        "--calibration",
        type=Path,
        default=None,
        help="float32 .npy [rows, features]: use static activation ranges measured on it",
    )
    parser.add_argument(
        "--per-tensor",
        action="store_true",
        help="one weight scale per matrix instead of one per output channel",
    )
    parser.add_argument(
        "--output",
        default=None,
        help="the graph output to serve, when the graph has several (default: the one float32 "
        "[batch, n] output)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``headrace quantize``; returns the process exit status."""
    args = _build_parser().parse_args(argv)

    def progress(message: str) -> None:
        print(f"headrace quantize: {message}", file=sys.stderr, flush=True)

    try:
        target = quantize_onnx(
            args.model,
            args.out,
            calibration_path=args.calibration,
            per_tensor=args.per_tensor,
            output_name=args.output,
            progress=progress,
        )
    except UnsupportedGraphError as error:
        print(f"headrace quantize: unsupported graph: {error}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as error:
        print(f"headrace quantize: error: {error}", file=sys.stderr)
        return 1
    except Exception as error:
        # onnx raises its own types for unreadable or invalid protobufs.
        if type(error).__module__.startswith(("onnx", "google.protobuf")):
            print(f"headrace quantize: cannot read {args.model}: {error}", file=sys.stderr)
            return 1
        raise
    print(target)
    return 0
