"""Writing the ``.int8`` model file, format version 2 (specified in csrc/quant/README.md)."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

import numpy as np

from headrace.quant.model import QuantizedLayer, TensorSpec

MODEL_FILE_NAME = "model.int8"
MAGIC = b"HRQINT8\n"
FORMAT_VERSION = 2
# What the loader (csrc/quant/int8_model_file.cc) reads: version 1 files of the first quantizer too.
READABLE_VERSIONS = (1, 2)


def _pack_string(text: str) -> bytes:
    encoded = text.encode("utf-8")
    return struct.pack("<I", len(encoded)) + encoded


def _pack_tensor_spec(spec: TensorSpec) -> bytes:
    return (
        _pack_string(spec.name)
        + _pack_string(spec.datatype)
        + struct.pack(f"<I{len(spec.shape)}q", len(spec.shape), *spec.shape)
    )


def encode_int8_model(
    input_spec: TensorSpec, output_spec: TensorSpec, layers: Sequence[QuantizedLayer]
) -> bytes:
    """Serialize to the .int8 format: header, metadata, layers."""
    parts = [_pack_tensor_spec(input_spec), _pack_tensor_spec(output_spec)]
    parts.append(struct.pack("<I", len(layers)))
    for layer in layers:
        k_size, n_size = layer.weights.shape
        low, high = layer.input_range if layer.input_range is not None else (0.0, 0.0)
        parts.append(
            struct.pack(
                "<IIIffIffI",
                k_size,
                n_size,
                int(layer.activation),
                *layer.activation_params,
                0 if layer.input_range is None else 1,
                low,
                high,
                layer.weight_scales.size,
            )
        )
        parts.append(layer.weight_scales.astype("<f4").tobytes())
        if layer.bias is None:
            parts.append(struct.pack("<I", 0))
        else:
            parts.append(struct.pack("<I", 1) + layer.bias.astype("<f4").tobytes())
        parts.append(np.ascontiguousarray(layer.weights, dtype=np.int8).tobytes())
    payload = b"".join(parts)
    header = MAGIC + struct.pack("<IIQ", FORMAT_VERSION, zlib.crc32(payload), len(payload))
    return header + payload
