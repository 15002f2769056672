"""The .int8 file: what headrace.quant writes is what the C++ loader reads (version 2, and version
1 files from before), invalid fields are refused, and damaged files are clear errors (magic,
version, truncation, checksum), never a crash."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from headrace import _core
from headrace import quant as hq

INVALID_ARGUMENT = 3
NOT_FOUND = 5


def small_layers(static: bool = False) -> list[hq.QuantizedLayer]:
    rng = np.random.default_rng(1)
    layers = []
    for k, n, activation, params in [
        (7, 5, hq.Activation.LEAKY_RELU, (0.2, 0.0)),
        (5, 4, hq.Activation.CLIP, (0.0, 6.0)),
        (4, 3, hq.Activation.SOFTMAX, (0.0, 0.0)),
    ]:
        weights, scales = hq.quantize_weights(rng.standard_normal((k, n)).astype(np.float32))
        layers.append(
            hq.QuantizedLayer(
                weights=weights,
                weight_scales=scales,
                bias=rng.standard_normal(n).astype(np.float32),
                activation=activation,
                input_range=(-2.0, 3.0) if static else None,
                activation_params=params,
            )
        )
    return layers


def small_model_bytes(static: bool = False, input_shape: tuple[int, ...] = (-1, 7)) -> bytes:
    return hq.encode_int8_model(
        hq.TensorSpec("in", "FP32", input_shape),
        hq.TensorSpec("out", "FP32", (-1, 3)),
        small_layers(static),
    )


def version_1_bytes(static: bool) -> bytes:
    """A file as the first headrace quantize wrote it: no activation parameters, a symmetric
    static scale instead of a range, codes 0-6 only."""
    rng = np.random.default_rng(3)
    parts = []
    for spec in (("in", (-1, 6)), ("out", (-1, 2))):
        name, shape = spec
        for text in (name, "FP32"):
            parts.append(struct.pack("<I", len(text)) + text.encode())
        parts.append(struct.pack("<I2q", 2, *shape))
    parts.append(struct.pack("<I", 2))
    for k, n, activation in [(6, 4, 1), (4, 2, 6)]:
        weights, scales = hq.quantize_weights(rng.standard_normal((k, n)).astype(np.float32))
        parts.append(struct.pack("<IIIIfI", k, n, activation, int(static), 0.02 * static, n))
        parts.append(scales.astype("<f4").tobytes() + struct.pack("<I", 0) + weights.tobytes())
    payload = b"".join(parts)
    return hq.MAGIC + struct.pack("<IIQ", 1, zlib.crc32(payload), len(payload)) + payload


def with_valid_checksum(blob: bytes) -> bytes:
    payload = blob[24:]
    return blob[:12] + struct.pack("<I", zlib.crc32(payload)) + blob[16:]


def load_error(blob: bytes) -> tuple[int, str]:
    with pytest.raises(_core.CoreError) as info:
        _core.QuantizedMlp.from_bytes(blob, "scalar")
    code, message = info.value.code, info.value.message
    return int(code), str(message)


@pytest.mark.parametrize("static", [False, True])
def test_round_trip(static: bool) -> None:
    layers = small_layers(static)
    mlp = _core.QuantizedMlp.from_bytes(small_model_bytes(static), "scalar")
    assert (mlp.input_size, mlp.output_size, mlp.layer_count) == (7, 3, 3)
    x = np.random.default_rng(2).standard_normal((4, 7)).astype(np.float32)
    y = mlp.run(x)
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-5)
    # The file's weights, scales, biases and activation parameters are what the executor uses.
    values = x
    for layer in layers:
        z = values @ (layer.weights.astype(np.float32) * layer.weight_scales)
        assert layer.bias is not None
        values = hq.apply_activation(layer.activation, z + layer.bias, layer.activation_params)
    assert np.abs(y - values).max() < 0.05


@pytest.mark.parametrize("static", [False, True])
def test_version_1_files_still_load(static: bool) -> None:
    mlp = _core.QuantizedMlp.from_bytes(version_1_bytes(static), "scalar")
    assert (mlp.input_size, mlp.output_size, mlp.layer_count) == (6, 2, 2)
    y = mlp.run(np.random.default_rng(4).standard_normal((3, 6)).astype(np.float32))
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-5)


def test_input_of_higher_rank() -> None:
    mlp = _core.QuantizedMlp.from_bytes(small_model_bytes(input_shape=(-1, 7, 1)), "scalar")
    assert mlp.input == {"name": "in", "datatype": "FP32", "shape": [-1, 7, 1]}
    x = np.random.default_rng(5).standard_normal((3, 7)).astype(np.float32)
    np.testing.assert_array_equal(mlp.run(x[:, :, None]), mlp.run(x))
    with pytest.raises(_core.CoreError, match=r"\[rows, 7, 1\]"):
        mlp.run(np.zeros((3, 1, 7), np.float32))
    code, message = load_error(small_model_bytes(input_shape=(-1, 3, 3)))
    assert code == INVALID_ARGUMENT
    assert "disagree" in message


def field_offsets(blob: bytes) -> dict[str, int]:
    """Offsets of the first layer's fields in a small_model_bytes() blob."""
    layer = blob.index(struct.pack("<II", 7, 5), 24)
    return {"activation": layer + 8, "alpha": layer + 12, "quant": layer + 20, "min": layer + 24}


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("activation", struct.pack("<I", 10), "unknown activation code 10"),
        ("alpha", struct.pack("<f", float("nan")), "finite slope"),
        ("quant", struct.pack("<I", 2), "unknown input quantization"),
        ("min", struct.pack("<f", 1.0), "input range but dynamic"),
    ],
)
def test_invalid_fields_are_refused(field: str, value: bytes, expected: str) -> None:
    blob = small_model_bytes()
    offset = field_offsets(blob)[field]
    damaged = blob[:offset] + value + blob[offset + len(value) :]
    code, message = load_error(with_valid_checksum(damaged))
    assert code == INVALID_ARGUMENT
    assert expected in message


def test_static_range_must_hold_zero() -> None:
    blob = small_model_bytes(static=True)
    offset = field_offsets(blob)["min"]
    damaged = blob[:offset] + struct.pack("<f", 0.5) + blob[offset + 4 :]
    code, message = load_error(with_valid_checksum(damaged))
    assert code == INVALID_ARGUMENT
    assert "min <= 0 <= max" in message


def test_header_layout() -> None:
    blob = small_model_bytes()
    assert blob[:8] == hq.MAGIC
    version, crc, payload_bytes = struct.unpack("<IIQ", blob[8:24])
    assert version == hq.FORMAT_VERSION == 2
    assert payload_bytes == len(blob) - 24
    assert crc == zlib.crc32(blob[24:])


def test_bad_magic() -> None:
    blob = small_model_bytes()
    code, message = load_error(b"NOTINT8\n" + blob[8:])
    assert code == INVALID_ARGUMENT
    assert "magic" in message


def test_unknown_version() -> None:
    blob = small_model_bytes()
    code, message = load_error(blob[:8] + struct.pack("<I", 3) + blob[12:])
    assert code == INVALID_ARGUMENT
    assert "version 3" in message


@pytest.mark.parametrize("keep", [0, 5, 23, 24, 40, -1])
def test_truncated(keep: int) -> None:
    blob = small_model_bytes()
    code, message = load_error(blob[:keep] if keep >= 0 else blob[:-1])
    assert code == INVALID_ARGUMENT
    assert "truncated" in message


def test_trailing_bytes() -> None:
    code, message = load_error(small_model_bytes() + b"\0")
    assert code == INVALID_ARGUMENT
    assert "trailing" in message


def test_flipped_byte_fails_the_checksum() -> None:
    blob = bytearray(small_model_bytes())
    for position in (24, len(blob) // 2, len(blob) - 1):
        damaged = bytearray(blob)
        damaged[position] ^= 0x10
        code, message = load_error(bytes(damaged))
        assert code == INVALID_ARGUMENT
        assert "checksum" in message


def test_inconsistent_payload_with_valid_checksum() -> None:
    # Layer 1 claims 9 inputs while layer 0 produces 5: caught by validation, not by a crash.
    blob = small_model_bytes()
    layer1 = blob.index(struct.pack("<II", 5, 4), 24)
    damaged = blob[:layer1] + struct.pack("<I", 9) + blob[layer1 + 4 :]
    code, _message = load_error(with_valid_checksum(damaged))
    assert code == INVALID_ARGUMENT


def test_random_payloads_with_valid_headers_never_crash() -> None:
    rng = np.random.default_rng(9)
    good = small_model_bytes()
    for trial in range(300):
        payload = bytearray(good[24:])
        # Damage a few bytes of a valid payload, or replace it by noise.
        if trial % 3 == 0:
            payload = bytearray(
                rng.integers(0, 256, size=int(rng.integers(0, 300)), dtype=np.uint8)
            )
        else:
            for _ in range(int(rng.integers(1, 4))):
                payload[int(rng.integers(0, len(payload)))] = int(rng.integers(0, 256))
        version = 1 + trial % 2
        blob = hq.MAGIC + struct.pack("<IIQ", version, zlib.crc32(payload), len(payload)) + payload
        try:
            _core.QuantizedMlp.from_bytes(bytes(blob), "scalar")
        except _core.CoreError as error:
            assert error.code == INVALID_ARGUMENT


def test_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(_core.CoreError) as info:
        _core.QuantizedMlp(str(tmp_path / "absent.int8"))
    assert info.value.code == NOT_FOUND
    path = tmp_path / "model.int8"
    path.write_bytes(small_model_bytes()[:-10])
    with pytest.raises(_core.CoreError, match="truncated") as info:
        _core.QuantizedMlp(str(path))
    assert str(path) in info.value.message


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(_core.CoreError, match="not a regular file") as info:
        _core.QuantizedMlp(str(tmp_path))
    assert info.value.code == INVALID_ARGUMENT
