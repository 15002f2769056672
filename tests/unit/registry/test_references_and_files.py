"""Model references, the model-file checks (ONNX structure, int8 checksum) and input examples."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from headrace import quant as hq
from headrace.errors import ConfigError, InvalidArgumentError, NotFoundError
from headrace.registry.base import ModelDescription, ModelReference
from headrace.registry.example import read_input_example
from headrace.registry.verify import IncompleteModelError, check_model_file
from helpers import onnx_models


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("fraud@champion", ModelReference("fraud", alias="champion")),
        ("churn/3", ModelReference("churn", version=3)),
        ("churn", ModelReference("churn")),
        ("team/fraud@challenger-2", ModelReference("team/fraud", alias="challenger-2")),
        ("team/fraud/12", ModelReference("team/fraud", version=12)),
    ],
)
def test_reference_grammar(text: str, expected: ModelReference) -> None:
    assert ModelReference.parse(text) == expected
    assert str(expected) == text


@pytest.mark.parametrize(
    "text", ["", "@champion", "fraud@", "fraud@latest", "fraud@v3", "fraud@a b", "churn/0", "/3"]
)
def test_bad_references_are_clear_errors(text: str) -> None:
    with pytest.raises(InvalidArgumentError):
        ModelReference.parse(text)


def test_request_labels_resolve_numbers_and_aliases() -> None:
    description = ModelDescription("fraud", {"champion": 3}, ())
    assert description.resolve_label("champion") == 3
    assert description.resolve_label("7") == 7
    with pytest.raises(NotFoundError, match="aliases: champion"):
        description.resolve_label("challenger")


def onnx_bytes() -> bytes:
    return onnx_models.mlp([8, 16, 2]).SerializeToString()


def test_complete_onnx_passes_and_every_truncation_fails(tmp_path: Path) -> None:
    complete = onnx_bytes()
    path = tmp_path / "model.onnx"
    path.write_bytes(complete)
    check_model_file(path, "onnxruntime")
    # Every prefix a copy could leave behind, in steps that cross each field boundary.
    for length in range(0, len(complete), 7):
        path.write_bytes(complete[:length])
        with pytest.raises(IncompleteModelError):
            check_model_file(path, "onnxruntime")


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b"not an onnx file at all",
        lambda b: b"\xff" * len(b),
        lambda b: b + b"\x00",  # trailing garbage: field 0
        lambda b: onnx.helper.make_model(onnx.GraphProto()).SerializeToString(),  # no output
    ],
)
def test_damaged_onnx_fails(tmp_path: Path, damage: object) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(damage(onnx_bytes()))  # type: ignore[operator]
    with pytest.raises(IncompleteModelError, match="not a complete ONNX model"):
        check_model_file(path, "onnxruntime")


def int8_bytes() -> bytes:
    rng = np.random.default_rng(1)
    weights, scales = hq.quantize_weights(rng.standard_normal((4, 3)).astype(np.float32))
    layer = hq.QuantizedLayer(
        weights=weights,
        weight_scales=scales,
        bias=np.zeros(3, np.float32),
        activation=hq.Activation.RELU,
        input_range=None,
    )
    return hq.encode_int8_model(
        hq.TensorSpec("x", "FP32", (-1, 4)), hq.TensorSpec("y", "FP32", (-1, 3)), [layer]
    )


def test_int8_checks_header_length_and_crc(tmp_path: Path) -> None:
    blob = int8_bytes()
    path = tmp_path / "model.int8"
    path.write_bytes(blob)
    check_model_file(path, "int8")
    path.write_bytes(blob[:-1])
    with pytest.raises(IncompleteModelError, match="bytes, the header says"):
        check_model_file(path, "int8")
    flipped = bytearray(blob)
    flipped[-1] ^= 0xFF
    path.write_bytes(bytes(flipped))
    with pytest.raises(IncompleteModelError, match="CRC-32"):
        check_model_file(path, "int8")
    path.write_bytes(b"GARBAGE!" + blob[8:])
    with pytest.raises(IncompleteModelError, match="bad header"):
        check_model_file(path, "int8")


def test_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(IncompleteModelError, match="missing"):
        check_model_file(tmp_path / "model.onnx", "onnxruntime")


@pytest.mark.parametrize(
    ("content", "inputs", "expected"),
    [
        ([[1, 2, 3]], {"x": np.float32}, {"x": np.array([[1, 2, 3]], np.float32)}),
        (
            {"a": [[1.5]], "b": [[2]]},
            {"a": np.float64, "b": np.int64},
            {"a": np.array([[1.5]]), "b": np.array([[2]], np.int64)},
        ),
        (
            {"columns": ["f0", "f1"], "data": [[1, 2], [3, 4]]},
            {"x": np.float32},
            {"x": np.array([[1, 2], [3, 4]], np.float32)},
        ),
    ],
)
def test_input_examples_in_mlflow_shapes(
    tmp_path: Path, content: object, inputs: dict[str, type], expected: dict[str, np.ndarray]
) -> None:
    path = tmp_path / "input_example.json"
    path.write_text(json.dumps(content))
    arrays = read_input_example(path).arrays(inputs)
    assert arrays.keys() == expected.keys()
    for name, array in expected.items():
        assert arrays[name].dtype == array.dtype
        np.testing.assert_array_equal(arrays[name], array)


def test_input_example_errors(tmp_path: Path) -> None:
    path = tmp_path / "input_example.json"
    path.write_text("[[1, 2]]")
    with pytest.raises(InvalidArgumentError, match="one input"):
        read_input_example(path).arrays({"a": np.float32, "b": np.float32})
    path.write_text('{"a": [[1]]}')
    with pytest.raises(InvalidArgumentError, match=r"no input \['b'\]"):
        read_input_example(path).arrays({"a": np.float32, "b": np.float32})
    path.write_text('{"a": [["x"]]}')
    with pytest.raises(InvalidArgumentError, match="cannot be read as float32"):
        read_input_example(path).arrays({"a": np.float32})
    path.write_text("42")
    with pytest.raises(InvalidArgumentError, match="expected a list"):
        read_input_example(path)
    path.write_text("{not json")
    with pytest.raises(InvalidArgumentError, match="not a readable JSON"):
        read_input_example(path)


def test_missing_mlflow_extra_names_the_install_command(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "sys.modules['mlflow'] = None  # as if mlflow-skinny were not installed\n"
        "from pathlib import Path\n"
        "from headrace.errors import ConfigError\n"
        "from headrace.registry.cache import ModelCache\n"
        "from headrace.registry.mlflow import MlflowSource\n"
        "try:\n"
        f"    MlflowSource(['m@a'], cache=ModelCache(Path({str(tmp_path)!r})),"
        " tracking_uri='http://127.0.0.1:1')\n"
        "except ConfigError as error:\n"
        "    print(error.message)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    assert "pip install 'headrace[mlflow]'" in out


def test_mlflow_source_needs_a_tracking_uri(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from headrace.registry.cache import ModelCache
    from headrace.registry.mlflow import MlflowSource

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_URI"):
        MlflowSource(["m@a"], cache=ModelCache(tmp_path))
