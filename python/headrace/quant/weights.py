"""Weight quantization and static activation ranges (calibration)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from headrace.quant.model import FloatArray, MlpGraph, QuantizedLayer, forward_fp32


def quantize_weights(
    weight: FloatArray, *, per_tensor: bool = False
) -> tuple[npt.NDArray[np.int8], FloatArray]:
    """Symmetric int8: scale = max|w| / 127 per output column (or per matrix), q in [-127, 127].

    A column of zeros gets scale 0 and q = 0.
    """
    if per_tensor:
        max_abs = np.array([np.abs(weight).max()], dtype=np.float32)
    else:
        max_abs = np.abs(weight).max(axis=0).astype(np.float32)
    scales = (max_abs / np.float32(127.0)).astype(np.float32)
    safe = np.where(scales > 0, scales, np.float32(1.0))
    quantized = np.clip(np.rint(weight / safe), -127, 127).astype(np.int8)
    return quantized, scales


def calibrate_input_ranges(graph: MlpGraph, data: FloatArray) -> list[tuple[float, float]]:
    """Static per-tensor input ranges (min, max over the calibration rows), one per layer.

    ``data`` is [rows, *input dims] or [rows, features]. Each range includes 0, as the runtime's
    quantization does.
    """
    features = graph.layers[0].weight.shape[0]
    if data.ndim < 2 or data.shape[0] == 0 or int(np.prod(data.shape[1:])) != features:
        raise ValueError(
            f"calibration data has shape {list(data.shape)}; expected [rows, "
            f"{', '.join(str(d) for d in graph.input.shape[1:])}] with at least one row"
        )
    if not np.isfinite(data).all():
        raise ValueError("calibration data must hold only finite values")
    values = forward_fp32(graph, data)
    ranges = []
    for layer_input in values[:-1]:
        low = min(float(layer_input.min()), 0.0)
        high = max(float(layer_input.max()), 0.0)
        # An all-zero calibration range still needs a non-empty one; [0, 1] maps 1.0 to the top.
        ranges.append((low, high) if high > low else (0.0, 1.0))
    return ranges


def quantize_mlp(
    graph: MlpGraph,
    *,
    per_tensor: bool = False,
    input_ranges: Sequence[tuple[float, float]] | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[QuantizedLayer]:
    """Quantize every layer's weights; ``input_ranges`` (from calibration) makes inputs static."""
    if input_ranges is not None and len(input_ranges) != len(graph.layers):
        raise ValueError("one input range per layer is needed")
    layers = []
    for position, layer in enumerate(graph.layers):
        if progress is not None:
            rows, columns = layer.weight.shape
            progress(
                f"quantizing layer {position + 1}/{len(graph.layers)} '{layer.name}' "
                f"[{rows} x {columns}]"
            )
        weights, scales = quantize_weights(layer.weight, per_tensor=per_tensor)
        layers.append(
            QuantizedLayer(
                weights=weights,
                weight_scales=scales,
                bias=layer.bias,
                activation=layer.activation,
                input_range=None if input_ranges is None else input_ranges[position],
                activation_params=layer.activation_params,
            )
        )
    return layers
