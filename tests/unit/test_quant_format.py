"""The .int8 file: what quantize.py writes is what the C++ loader reads, and damaged files are
clear errors (magic, version, truncation, checksum), never a crash."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from headrace import _core
from headrace import quantize as hq

INVALID_ARGUMENT = 3
NOT_FOUND = 5


def small_model_bytes(static: bool = False) -> bytes:
    rng = np.random.default_rng(1)
    layers = []
    for k, n, activation in [(7, 5, hq.Activation.RELU), (5, 3, hq.Activation.SOFTMAX)]:
        weights, scales = hq.quantize_weights(rng.standard_normal((k, n)).astype(np.float32))
        layers.append(
            hq.QuantizedLayer(
                weights=weights,
                weight_scales=scales,
                bias=rng.standard_normal(n).astype(np.float32),
                activation=activation,
                input_scale=0.05 if static else None,
            )
        )
    return hq.encode_int8_model(
        hq.TensorSpec("in", "FP32", (-1, 7)), hq.TensorSpec("out", "FP32", (-1, 3)), layers
    )


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
    mlp = _core.QuantizedMlp.from_bytes(small_model_bytes(static), "scalar")
    assert (mlp.input_size, mlp.output_size, mlp.layer_count) == (7, 3, 2)
    y = mlp.run(np.random.default_rng(2).standard_normal((4, 7)).astype(np.float32))
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-5)


def test_header_layout() -> None:
    blob = small_model_bytes()
    assert blob[:8] == hq.MAGIC
    version, crc, payload_bytes = struct.unpack("<IIQ", blob[8:24])
    assert version == hq.FORMAT_VERSION == 1
    assert payload_bytes == len(blob) - 24
    assert crc == zlib.crc32(blob[24:])


def test_bad_magic() -> None:
    blob = small_model_bytes()
    code, message = load_error(b"NOTINT8\n" + blob[8:])
    assert code == INVALID_ARGUMENT
    assert "magic" in message


def test_unknown_version() -> None:
    blob = small_model_bytes()
    code, message = load_error(blob[:8] + struct.pack("<I", 2) + blob[12:])
    assert code == INVALID_ARGUMENT
    assert "version 2" in message


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
    layer1 = blob.index(struct.pack("<II", 5, 3), 24)
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
        blob = hq.MAGIC + struct.pack("<IIQ", 1, zlib.crc32(payload), len(payload)) + payload
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
