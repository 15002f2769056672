"""Post-training int8 quantization of MLP-family ONNX graphs (``headrace quantize``).

Supported graphs are chains from one float32 ``[batch, ...]`` input to one float32 output, as
``torch.onnx.export``, skl2onnx and hand-built graphs write them: dense layers (``MatMul`` or
``Gemm``, with a bias and a folded ``BatchNormalization``), one activation per layer, and the
value-preserving nodes exporters add (see :mod:`headrace.quant.graph`). Anything else is refused
with an error naming the node and its op.

Weights become symmetric int8 (per output channel by default, ``per_tensor`` for one scale per
matrix). Activations are quantized at run time per row (dynamic), or with static ranges measured
on calibration data. The result is ``DIR/model.int8`` in the format documented in
``csrc/quant/README.md``, which ``headrace._core.QuantizedMlp`` loads.

Modules: ``model`` (data types, float reference), ``constants`` (constant and shape evaluation),
``graph`` (reading the chain), ``folding`` (BatchNormalization, bias, binary-classifier rewrites),
``weights`` (weight quantization, calibration), ``file_format`` (writing .int8), ``cli``.
"""

from headrace.quant.cli import PROGRESS_MIN_WEIGHTS, main, quantize_onnx
from headrace.quant.file_format import (
    FORMAT_VERSION,
    MAGIC,
    MODEL_FILE_NAME,
    encode_int8_model,
)
from headrace.quant.graph import extract_mlp
from headrace.quant.model import (
    Activation,
    DenseLayer,
    MlpGraph,
    QuantizedLayer,
    TensorSpec,
    UnsupportedGraphError,
    apply_activation,
    forward_fp32,
)
from headrace.quant.weights import calibrate_input_ranges, quantize_mlp, quantize_weights

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "MODEL_FILE_NAME",
    "PROGRESS_MIN_WEIGHTS",
    "Activation",
    "DenseLayer",
    "MlpGraph",
    "QuantizedLayer",
    "TensorSpec",
    "UnsupportedGraphError",
    "apply_activation",
    "calibrate_input_ranges",
    "encode_int8_model",
    "extract_mlp",
    "forward_fp32",
    "main",
    "quantize_mlp",
    "quantize_onnx",
    "quantize_weights",
]
