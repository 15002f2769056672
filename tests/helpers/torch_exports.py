"""ONNX graphs exactly as ``torch.onnx.export`` (PyTorch 2.13) writes them for small MLPs, built
with onnx.helper so the tests need no PyTorch (its PyPI wheel pulls in gigabytes of CUDA
libraries, which CI cannot afford).

"Exactly" means the same nodes in the same order with the same names, inputs, outputs and
attributes (onnx.helper writes a node's attributes sorted by name; their order carries no
meaning), the same initializers (names, shapes, types), the same graph inputs/outputs and opset:
``python tests/helpers/verify_torch_exports.py`` exports the matching ``torch.nn`` modules with
real PyTorch, loaded with the same weights, and compares both field by field (and their outputs
through ONNX Runtime). Weights are given in PyTorch's layout: ``Linear.weight`` is [out, in].

The modules (see verify_torch_exports.py):
- ``Classifier``: Flatten -> Linear -> BatchNorm1d -> LeakyReLU -> Dropout -> Linear -> ReLU6 ->
  Linear(bias=False) -> LogSoftmax, exported by the TorchScript exporter (``dynamo=False``;
  BatchNormalization kept, ReLU6 as Clip with Constant bounds, the bias-free Linear as a MatMul
  with a transposed initializer) and by the dynamo exporter (``dynamo=True``; BatchNorm folded,
  Flatten as a Reshape to a constant shape, Clip bounds as initializers).
- ``ViewSoftmax``: ``x.reshape(x.shape[0], -1)`` -> Linear -> ReLU -> Dropout -> Linear ->
  Softmax: the TorchScript exporter computes the shape with Shape/Gather/Unsqueeze/Concat.
- ``BnSigmoid``: Linear -> BatchNorm1d -> ReLU -> Linear -> Sigmoid (TorchScript).
- ``CastMlp``: ``x.float()`` -> Linear -> ReLU -> Linear (TorchScript writes the Cast even for a
  float input).
- ``DropoutMlp`` exported in training mode: opset 11 writes ``Dropout(ratio)`` (no training flag:
  inference in ONNX Runtime); opset >= 12 writes ``training_mode`` = true (a training graph).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

FloatArray = npt.NDArray[np.float32]
BN_EPSILON = 9.999999747378752e-06  # float32(1e-5), as torch writes it
BN_MOMENTUM = 0.8999999761581421  # float32(1 - 0.1)


@dataclass
class Linear:
    weight: FloatArray  # [out, in], torch layout
    bias: FloatArray | None


@dataclass
class BatchNorm:
    weight: FloatArray
    bias: FloatArray
    running_mean: FloatArray
    running_var: FloatArray

    def is_fresh(self) -> bool:
        """Untrained statistics equal to the affine parameters: torch then stores one tensor for
        each pair and links them with Identity nodes."""
        return bool(
            np.array_equal(self.weight, self.running_var)
            and np.array_equal(self.bias, self.running_mean)
        )

    def fold_into(self, linear: Linear) -> Linear:
        """What the dynamo exporter's optimizer does: BN(x W^T + b) as one Linear."""
        factor = self.weight / np.sqrt(self.running_var + np.float32(1e-5))
        bias = linear.bias if linear.bias is not None else np.zeros_like(self.bias)
        return Linear(
            (linear.weight * factor[:, None]).astype(np.float32),
            ((bias - self.running_mean) * factor + self.bias).astype(np.float32),
        )


def _init(array: npt.NDArray[np.generic], name: str) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def _model(
    nodes: list[onnx.NodeProto],
    initializers: list[onnx.TensorProto],
    input_dims: list[int | str],
    output_width: int,
    *,
    opset: int,
    ir_version: int,
    input_type: int = TensorProto.FLOAT,
    producer_version: str = "2.13.0",
    graph_name: str = "main_graph",
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        graph_name,
        [helper.make_tensor_value_info("x", input_type, input_dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", output_width])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    model.producer_name = "pytorch"
    model.producer_version = producer_version
    onnx.checker.check_model(model)
    return model


def _gemm(name: str, source: str, layer: str, target: str, *, dynamo: bool) -> onnx.NodeProto:
    inputs = [source, f"{layer}.weight", f"{layer}.bias"]
    if dynamo:
        return helper.make_node(
            "Gemm", inputs, [target], name=name, transB=1, alpha=1.0, transA=0, beta=1.0
        )
    return helper.make_node("Gemm", inputs, [target], name=name, alpha=1.0, beta=1.0, transB=1)


def classifier_legacy(
    l1: Linear,
    bn: BatchNorm,
    l2: Linear,
    l3: Linear,
    *,
    leaky_slope: float = 0.1,
    feature_dims: tuple[int, ...] = (2, 4),
) -> onnx.ModelProto:
    """``Classifier`` through the TorchScript exporter (opset 20)."""
    nodes: list[onnx.NodeProto] = []
    initializers = [_init(l1.weight, "l1.weight"), _init(l1.bias, "l1.bias")]  # type: ignore[arg-type]
    if bn.is_fresh():
        nodes += [
            helper.make_node("Identity", ["bn.weight"], ["bn.running_var"], name="Identity_2"),
            helper.make_node("Identity", ["bn.bias"], ["bn.running_mean"], name="Identity_3"),
        ]
        initializers += [_init(bn.weight, "bn.weight"), _init(bn.bias, "bn.bias")]
    else:
        initializers += [
            _init(bn.weight, "bn.weight"),
            _init(bn.bias, "bn.bias"),
            _init(bn.running_mean, "bn.running_mean"),
            _init(bn.running_var, "bn.running_var"),
        ]
    initializers += [_init(l2.weight, "l2.weight"), _init(l2.bias, "l2.bias")]  # type: ignore[arg-type]
    initializers.append(_init(np.ascontiguousarray(l3.weight.T), "onnx::MatMul_22"))
    nodes += [
        helper.make_node("Flatten", ["x"], ["/f/Flatten_output_0"], name="/f/Flatten", axis=1),
        _gemm("/l1/Gemm", "/f/Flatten_output_0", "l1", "/l1/Gemm_output_0", dynamo=False),
        helper.make_node(
            "BatchNormalization",
            ["/l1/Gemm_output_0", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"],
            ["/bn/BatchNormalization_output_0"],
            name="/bn/BatchNormalization",
            epsilon=BN_EPSILON,
            momentum=BN_MOMENTUM,
            training_mode=0,
        ),
        helper.make_node(
            "LeakyRelu",
            ["/bn/BatchNormalization_output_0"],
            ["/a/LeakyRelu_output_0"],
            name="/a/LeakyRelu",
            alpha=float(np.float32(leaky_slope)),
        ),
        _gemm("/l2/Gemm", "/a/LeakyRelu_output_0", "l2", "/l2/Gemm_output_0", dynamo=False),
        helper.make_node(
            "Constant",
            [],
            ["/r6/Constant_output_0"],
            name="/r6/Constant",
            value=_init(np.array(0.0, dtype=np.float32), ""),
        ),
        helper.make_node(
            "Constant",
            [],
            ["/r6/Constant_1_output_0"],
            name="/r6/Constant_1",
            value=_init(np.array(6.0, dtype=np.float32), ""),
        ),
        helper.make_node(
            "Clip",
            ["/l2/Gemm_output_0", "/r6/Constant_output_0", "/r6/Constant_1_output_0"],
            ["/r6/Clip_output_0"],
            name="/r6/Clip",
        ),
        helper.make_node(
            "MatMul",
            ["/r6/Clip_output_0", "onnx::MatMul_22"],
            ["/l3/MatMul_output_0"],
            name="/l3/MatMul",
        ),
        helper.make_node(
            "LogSoftmax", ["/l3/MatMul_output_0"], ["y"], name="/sm/LogSoftmax", axis=1
        ),
    ]
    return _model(
        nodes,
        initializers,
        ["batch", *feature_dims],
        l3.weight.shape[0],
        opset=20,
        ir_version=9,
    )


def classifier_dynamo(
    l1: Linear,
    bn: BatchNorm,
    l2: Linear,
    l3: Linear,
    *,
    leaky_slope: float = 0.1,
    feature_dims: tuple[int, ...] = (2, 4),
) -> onnx.ModelProto:
    """``Classifier`` through the dynamo exporter (opset 20): BatchNorm folded into l1."""
    folded = bn.fold_into(l1)
    features = int(np.prod(feature_dims))
    initializers = [
        _init(folded.weight, "l1.weight"),
        _init(folded.bias, "l1.bias"),  # type: ignore[arg-type]
        _init(l2.weight, "l2.weight"),
        _init(l2.bias, "l2.bias"),  # type: ignore[arg-type]
        _init(l3.weight, "l3.weight"),
        _init(np.array(0.0, dtype=np.float32), "min_val_cast"),
        _init(np.array(6.0, dtype=np.float32), "max_val_cast"),
        _init(np.array([-1, features], dtype=np.int64), "val_13"),
    ]
    nodes = [
        helper.make_node("Reshape", ["x", "val_13"], ["view"], name="node_Reshape_17", allowzero=1),
        # The first Linear comes through addmm's decomposition, which writes no beta.
        helper.make_node(
            "Gemm",
            ["view", "l1.weight", "l1.bias"],
            ["getitem"],
            name="node_Gemm_18",
            transB=1,
            alpha=1.0,
            transA=0,
        ),
        helper.make_node(
            "LeakyRelu",
            ["getitem"],
            ["leaky_relu"],
            name="node_leaky_relu",
            alpha=float(np.float32(leaky_slope)),
        ),
        _gemm("node_linear_1", "leaky_relu", "l2", "linear_1", dynamo=True),
        helper.make_node(
            "Clip", ["linear_1", "min_val_cast", "max_val_cast"], ["hardtanh"], name="n4"
        ),
        helper.make_node(
            "Gemm",
            ["hardtanh", "l3.weight"],
            ["linear_2"],
            name="node_linear_2",
            beta=1.0,
            transB=1,
            alpha=1.0,
            transA=0,
        ),
        helper.make_node("LogSoftmax", ["linear_2"], ["y"], name="node_log_softmax", axis=1),
    ]
    return _model(
        nodes,
        initializers,
        ["batch", *feature_dims],
        l3.weight.shape[0],
        opset=20,
        ir_version=10,
        producer_version="2.13.0+cpu",
        graph_name="main_graph",
    )


def view_softmax_legacy(
    l1: Linear, l2: Linear, *, feature_dims: tuple[int, ...] = (2, 4)
) -> onnx.ModelProto:
    """``ViewSoftmax`` through the TorchScript exporter: the Reshape target is computed from
    Shape(x) at run time."""

    def constant(name: str, output: str, value: npt.NDArray[np.int64]) -> onnx.NodeProto:
        return helper.make_node("Constant", [], [output], name=name, value=_init(value, ""))

    nodes = [
        helper.make_node("Shape", ["x"], ["/Shape_output_0"], name="/Shape"),
        constant("/Constant", "/Constant_output_0", np.array(0, dtype=np.int64)),
        helper.make_node(
            "Gather",
            ["/Shape_output_0", "/Constant_output_0"],
            ["/Gather_output_0"],
            name="/Gather",
            axis=0,
        ),
        constant("Constant_6", "onnx::Unsqueeze_9", np.array([0], dtype=np.int64)),
        helper.make_node(
            "Unsqueeze",
            ["/Gather_output_0", "onnx::Unsqueeze_9"],
            ["/Unsqueeze_output_0"],
            name="/Unsqueeze",
        ),
        constant("/Constant_1", "/Constant_1_output_0", np.array([-1], dtype=np.int64)),
        helper.make_node(
            "Concat",
            ["/Unsqueeze_output_0", "/Constant_1_output_0"],
            ["/Concat_output_0"],
            name="/Concat",
            axis=0,
        ),
        helper.make_node(
            "Reshape",
            ["x", "/Concat_output_0"],
            ["/Reshape_output_0"],
            name="/Reshape",
            allowzero=0,
        ),
        _gemm("/l1/Gemm", "/Reshape_output_0", "l1", "/l1/Gemm_output_0", dynamo=False),
        helper.make_node("Relu", ["/l1/Gemm_output_0"], ["/Relu_output_0"], name="/Relu"),
        _gemm("/l2/Gemm", "/Relu_output_0", "l2", "/l2/Gemm_output_0", dynamo=False),
        helper.make_node("Softmax", ["/l2/Gemm_output_0"], ["y"], name="/Softmax", axis=-1),
    ]
    initializers = [
        _init(l1.weight, "l1.weight"),
        _init(l1.bias, "l1.bias"),  # type: ignore[arg-type]
        _init(l2.weight, "l2.weight"),
        _init(l2.bias, "l2.bias"),  # type: ignore[arg-type]
    ]
    return _model(
        nodes, initializers, ["batch", *feature_dims], l2.weight.shape[0], opset=20, ir_version=9
    )


def bn_sigmoid_legacy(l1: Linear, bn: BatchNorm, l2: Linear) -> onnx.ModelProto:
    """``BnSigmoid`` through the TorchScript exporter."""
    nodes = [
        _gemm("/l1/Gemm", "x", "l1", "/l1/Gemm_output_0", dynamo=False),
        helper.make_node(
            "BatchNormalization",
            ["/l1/Gemm_output_0", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"],
            ["/bn/BatchNormalization_output_0"],
            name="/bn/BatchNormalization",
            epsilon=BN_EPSILON,
            momentum=BN_MOMENTUM,
            training_mode=0,
        ),
        helper.make_node(
            "Relu", ["/bn/BatchNormalization_output_0"], ["/Relu_output_0"], name="/Relu"
        ),
        _gemm("/l2/Gemm", "/Relu_output_0", "l2", "/l2/Gemm_output_0", dynamo=False),
        helper.make_node("Sigmoid", ["/l2/Gemm_output_0"], ["y"], name="/s/Sigmoid"),
    ]
    initializers = [
        _init(l1.weight, "l1.weight"),
        _init(l1.bias, "l1.bias"),  # type: ignore[arg-type]
        _init(bn.weight, "bn.weight"),
        _init(bn.bias, "bn.bias"),
        _init(bn.running_mean, "bn.running_mean"),
        _init(bn.running_var, "bn.running_var"),
        _init(l2.weight, "l2.weight"),
        _init(l2.bias, "l2.bias"),  # type: ignore[arg-type]
    ]
    return _model(
        nodes,
        initializers,
        ["batch", l1.weight.shape[1]],
        l2.weight.shape[0],
        opset=20,
        ir_version=9,
    )


def cast_mlp_legacy(l1: Linear, l2: Linear) -> onnx.ModelProto:
    """``CastMlp`` through the TorchScript exporter: Cast(to=FLOAT) first; the last Gemm writes
    y."""
    nodes = [
        helper.make_node("Cast", ["x"], ["/Cast_output_0"], name="/Cast", to=TensorProto.FLOAT),
        _gemm("/l1/Gemm", "/Cast_output_0", "l1", "/l1/Gemm_output_0", dynamo=False),
        helper.make_node("Relu", ["/l1/Gemm_output_0"], ["/Relu_output_0"], name="/Relu"),
        _gemm("/l2/Gemm", "/Relu_output_0", "l2", "y", dynamo=False),
    ]
    initializers = [
        _init(l1.weight, "l1.weight"),
        _init(l1.bias, "l1.bias"),  # type: ignore[arg-type]
        _init(l2.weight, "l2.weight"),
        _init(l2.bias, "l2.bias"),  # type: ignore[arg-type]
    ]
    return _model(
        nodes,
        initializers,
        ["batch", l1.weight.shape[1]],
        l2.weight.shape[0],
        opset=20,
        ir_version=9,
    )


def dropout_training_export(l1: Linear, l2: Linear, *, opset: int) -> onnx.ModelProto:
    """``DropoutMlp`` (Linear -> ReLU -> Dropout(0.3) -> Linear) exported with
    ``training=TrainingMode.TRAINING``: at opset 11 a ``Dropout(ratio)`` with its mask output (an
    inference no-op in ONNX Runtime), from opset 12 ``Dropout(x, ratio, training_mode=true)``."""
    ratio = float(np.float32(0.3))
    nodes = [
        _gemm("/0/Gemm", "x", "0", "/0/Gemm_output_0", dynamo=False),
        helper.make_node("Relu", ["/0/Gemm_output_0"], ["/1/Relu_output_0"], name="/1/Relu"),
    ]
    dropout_outputs = ["/2/Dropout_output_0", "/2/Dropout_output_1"]
    if opset < 12:
        nodes.append(
            helper.make_node(
                "Dropout", ["/1/Relu_output_0"], dropout_outputs, name="/2/Dropout", ratio=ratio
            )
        )
    else:
        nodes += [
            helper.make_node(
                "Constant",
                [],
                ["/2/Constant_output_0"],
                name="/2/Constant",
                value=_init(np.array(ratio, dtype=np.float32), ""),
            ),
            helper.make_node(
                "Constant",
                [],
                ["/2/Constant_1_output_0"],
                name="/2/Constant_1",
                value=_init(np.array(True), ""),
            ),
            helper.make_node(
                "Dropout",
                ["/1/Relu_output_0", "/2/Constant_output_0", "/2/Constant_1_output_0"],
                dropout_outputs,
                name="/2/Dropout",
            ),
        ]
    nodes.append(_gemm("/3/Gemm", "/2/Dropout_output_0", "3", "y", dynamo=False))
    initializers = [
        _init(l1.weight, "0.weight"),
        _init(l1.bias, "0.bias"),  # type: ignore[arg-type]
        _init(l2.weight, "3.weight"),
        _init(l2.bias, "3.bias"),  # type: ignore[arg-type]
    ]
    return _model(
        nodes,
        initializers,
        ["batch", l1.weight.shape[1]],
        l2.weight.shape[0],
        opset=opset,
        ir_version=6 if opset == 11 else (7 if opset == 13 else 8),
    )


def random_linear(
    rng: np.random.Generator, fan_in: int, fan_out: int, *, bias: bool = True
) -> Linear:
    bound = 1.0 / np.sqrt(fan_in)
    weight = rng.uniform(-bound, bound, (fan_out, fan_in)).astype(np.float32)
    return Linear(weight, rng.uniform(-bound, bound, fan_out).astype(np.float32) if bias else None)


def random_batch_norm(rng: np.random.Generator, width: int, *, fresh: bool = False) -> BatchNorm:
    if fresh:
        return BatchNorm(
            np.ones(width, np.float32),
            np.zeros(width, np.float32),
            np.zeros(width, np.float32),
            np.ones(width, np.float32),
        )
    return BatchNorm(
        rng.uniform(0.5, 1.5, width).astype(np.float32),
        rng.normal(0, 0.1, width).astype(np.float32),
        rng.normal(0, 0.3, width).astype(np.float32),
        rng.uniform(0.5, 2.0, width).astype(np.float32),
    )
