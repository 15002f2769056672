"""Check that tests/helpers/torch_exports.py builds exactly what ``torch.onnx.export`` writes.

Run by hand where PyTorch is installed (``pip install torch==2.13.0``; not part of the test extra
because its wheel is gigabytes of CUDA libraries):

    python tests/helpers/verify_torch_exports.py

For every module below it copies the helper's weights into a ``torch.nn`` module, exports it the
way the helper says, and compares the two ModelProtos field by field (opset, IR version, producer,
graph inputs/outputs, initializers with their values, nodes with names, inputs, outputs and
attributes), then runs both through ONNX Runtime. Exits non-zero on the first difference.
"""

from __future__ import annotations

import io
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers import torch_exports as te


def _attribute(attr: onnx.AttributeProto) -> Any:
    value = helper.get_attribute_value(attr)
    if isinstance(value, onnx.TensorProto):
        array = numpy_helper.to_array(value)
        return ("tensor", str(array.dtype), array.shape, array.tolist())
    return value


def _describe(model: onnx.ModelProto) -> dict[str, Any]:
    graph = model.graph

    def value_info(value: onnx.ValueInfoProto) -> tuple[Any, ...]:
        tensor = value.type.tensor_type
        dims = [d.dim_param if d.dim_param else d.dim_value for d in tensor.shape.dim]
        return value.name, tensor.elem_type, dims

    return {
        "opset": [(o.domain, o.version) for o in model.opset_import],
        "ir_version": model.ir_version,
        "producer": (model.producer_name, model.producer_version),
        "inputs": [value_info(v) for v in graph.input],
        "outputs": [value_info(v) for v in graph.output],
        "initializers": [
            (i.name, list(i.dims), i.data_type, numpy_helper.to_array(i).tolist())
            for i in graph.initializer
        ],
        "nodes": [
            (
                n.op_type,
                n.name,
                n.domain,
                list(n.input),
                list(n.output),
                {a.name: _attribute(a) for a in n.attribute},
            )
            for n in graph.node
        ],
    }


def _compare(name: str, exported: onnx.ModelProto, built: onnx.ModelProto, x: np.ndarray) -> None:
    got, want = _describe(built), _describe(exported)
    for key in want:
        if key == "initializers":
            # Values are compared with a tolerance of 0 for what we copied, 1e-6 for what the
            # exporter computed (dynamo's BatchNorm folding rounds in its own order).
            names_got = [(n, d, t) for n, d, t, _ in got[key]]
            names_want = [(n, d, t) for n, d, t, _ in want[key]]
            if names_got != names_want:
                raise SystemExit(
                    f"{name}: initializers differ:\n  torch {names_want}\n  built {names_got}"
                )
            for (iname, _, _, a), (_, _, _, b) in zip(got[key], want[key], strict=True):
                if not np.allclose(np.array(a), np.array(b), rtol=1e-5, atol=1e-6):
                    raise SystemExit(f"{name}: initializer {iname} values differ")
            continue
        if got[key] != want[key]:
            raise SystemExit(f"{name}: {key} differs:\n  torch {want[key]}\n  built {got[key]}")
    results = []
    for model in (exported, built):
        session = ort.InferenceSession(
            model.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        results.append(session.run(None, {"x": x})[0])
    np.testing.assert_allclose(results[1], results[0], rtol=1e-5, atol=1e-5)
    print(f"{name}: identical ({len(built.graph.node)} nodes)")


def main() -> int:
    import torch
    from torch import nn

    warnings.filterwarnings("ignore")
    rng = np.random.default_rng(0)

    def load_linear(module: nn.Linear, linear: te.Linear) -> None:
        module.weight.data = torch.from_numpy(linear.weight.copy())
        if linear.bias is not None:
            module.bias.data = torch.from_numpy(linear.bias.copy())

    def load_bn(module: nn.BatchNorm1d, bn: te.BatchNorm) -> None:
        module.weight.data = torch.from_numpy(bn.weight.copy())
        module.bias.data = torch.from_numpy(bn.bias.copy())
        module.running_mean.data = torch.from_numpy(bn.running_mean.copy())
        module.running_var.data = torch.from_numpy(bn.running_var.copy())

    def export(
        module: nn.Module, x: np.ndarray, *, dynamo: bool, **options: Any
    ) -> onnx.ModelProto:
        buffer = io.BytesIO()
        tensor = torch.from_numpy(x)
        if dynamo:
            program = torch.onnx.export(
                module,
                (tensor,),
                dynamo=True,
                input_names=["x"],
                output_names=["y"],
                dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
                verbose=False,
            )
            program.save(buffer)  # type: ignore[union-attr]
        else:
            torch.onnx.export(
                module,
                (tensor,),
                buffer,
                dynamo=False,
                input_names=["x"],
                output_names=["y"],
                dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
                **options,
            )
        return onnx.load_from_string(buffer.getvalue())

    class Classifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.f, self.l1, self.bn = nn.Flatten(), nn.Linear(8, 16), nn.BatchNorm1d(16)
            self.a, self.d, self.l2 = nn.LeakyReLU(0.1), nn.Dropout(0.2), nn.Linear(16, 16)
            self.r6, self.l3, self.sm = nn.ReLU6(), nn.Linear(16, 4, bias=False), nn.LogSoftmax(1)

        def forward(self, x: Any) -> Any:
            x = self.d(self.a(self.bn(self.l1(self.f(x)))))
            return self.sm(self.l3(self.r6(self.l2(x))))

    x3 = rng.standard_normal((3, 2, 4)).astype(np.float32)
    for fresh in (False, True):
        l1, l2 = te.random_linear(rng, 8, 16), te.random_linear(rng, 16, 16)
        l3, bn = (
            te.random_linear(rng, 16, 4, bias=False),
            te.random_batch_norm(rng, 16, fresh=fresh),
        )
        module = Classifier()
        load_linear(module.l1, l1), load_linear(module.l2, l2), load_linear(module.l3, l3)
        load_bn(module.bn, bn)
        module.eval()
        _compare(
            f"classifier_legacy(fresh_bn={fresh})",
            export(module, x3, dynamo=False),
            te.classifier_legacy(l1, bn, l2, l3),
            x3,
        )
        _compare(
            f"classifier_dynamo(fresh_bn={fresh})",
            export(module, x3, dynamo=True),
            te.classifier_dynamo(l1, bn, l2, l3),
            x3,
        )

    class ViewSoftmax(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l1, self.d, self.l2 = nn.Linear(8, 16), nn.Dropout(0.5), nn.Linear(16, 3)

        def forward(self, x: Any) -> Any:
            hidden = self.d(torch.relu(self.l1(x.reshape(x.shape[0], -1))))
            return torch.softmax(self.l2(hidden), dim=-1)

    l1, l2 = te.random_linear(rng, 8, 16), te.random_linear(rng, 16, 3)
    view = ViewSoftmax()
    load_linear(view.l1, l1), load_linear(view.l2, l2)
    view.eval()
    _compare(
        "view_softmax_legacy", export(view, x3, dynamo=False), te.view_softmax_legacy(l1, l2), x3
    )

    class BnSigmoid(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l1, self.bn, self.l2, self.s = (
                nn.Linear(8, 16),
                nn.BatchNorm1d(16),
                nn.Linear(16, 3),
                nn.Sigmoid(),
            )

        def forward(self, x: Any) -> Any:
            return self.s(self.l2(torch.relu(self.bn(self.l1(x)))))

    x2 = rng.standard_normal((4, 8)).astype(np.float32)
    l1, l2, bn = (
        te.random_linear(rng, 8, 16),
        te.random_linear(rng, 16, 3),
        te.random_batch_norm(rng, 16),
    )
    module_bn = BnSigmoid()
    load_linear(module_bn.l1, l1), load_linear(module_bn.l2, l2), load_bn(module_bn.bn, bn)
    module_bn.eval()
    _compare(
        "bn_sigmoid_legacy",
        export(module_bn, x2, dynamo=False),
        te.bn_sigmoid_legacy(l1, bn, l2),
        x2,
    )

    class CastMlp(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l1, self.l2 = nn.Linear(8, 16), nn.Linear(16, 3)

        def forward(self, x: Any) -> Any:
            return self.l2(torch.relu(self.l1(x.float())))

    l1, l2 = te.random_linear(rng, 8, 16), te.random_linear(rng, 16, 3)
    cast = CastMlp()
    load_linear(cast.l1, l1), load_linear(cast.l2, l2)
    cast.eval()
    _compare("cast_mlp_legacy", export(cast, x2, dynamo=False), te.cast_mlp_legacy(l1, l2), x2)

    l1, l2 = te.random_linear(rng, 8, 16), te.random_linear(rng, 16, 3)
    dropout = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
    load_linear(dropout[0], l1), load_linear(dropout[3], l2)
    for opset in (11, 13):
        dropout.train()
        exported = export(
            dropout,
            x2,
            dynamo=False,
            opset_version=opset,
            training=torch.onnx.TrainingMode.TRAINING,
            do_constant_folding=False,
        )
        built = te.dropout_training_export(l1, l2, opset=opset)
        if opset == 11:
            _compare("dropout_training_export(opset=11)", exported, built, x2)
        else:
            # A training graph: outputs are random, so only the structure is compared.
            got, want = _describe(built), _describe(exported)
            if got != want:
                diff = [k for k in want if got[k] != want[k]]
                raise SystemExit(
                    f"dropout_training_export(opset={opset}) differs in {diff}:\n{want}\n{got}"
                )
            print(
                f"dropout_training_export(opset={opset}): identical ({len(built.graph.node)} nodes)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
