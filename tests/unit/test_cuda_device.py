"""CUDA device discovery and the int8 device choice, on whatever machine runs the tests: without
a usable GPU every path answers "no CUDA device" with the reason (never a crash, never an import
error); with one, the same calls load onto it. No test here skips in either state."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from headrace import _core
from headrace import quantize as hq
from headrace.backends.int8 import Int8Backend
from headrace.backends.int8_cuda import (
    CudaInt8Backend,
    cuda_unavailable_reason,
    load_int8_backend,
    parse_int8_device,
)
from headrace.errors import ConfigError, UnavailableError, from_core_error


def write_model(path: Path) -> Path:
    rng = np.random.default_rng(3)
    layers = [
        hq.QuantizedLayer(
            weights=rng.integers(-127, 128, size=(12, 5), dtype=np.int8),
            weight_scales=np.full(5, 0.01, dtype=np.float32),
            bias=None,
            activation=hq.Activation.RELU,
            input_scale=None,
        )
    ]
    path.write_bytes(
        hq.encode_int8_model(
            hq.TensorSpec("x", "FP32", (-1, 12)), hq.TensorSpec("y", "FP32", (-1, 5)), layers
        )
    )
    return path


def test_discovery_reports_the_build_and_the_devices() -> None:
    discovery = _core.cuda_discover()
    assert set(discovery) == {"built_with_cuda", "devices", "reason"}
    # The build compiles csrc/cuda whenever nvcc is on the PATH (HEADRACE_CUDA=AUTO).
    assert discovery["built_with_cuda"] == (shutil.which("nvcc") is not None)
    if not discovery["built_with_cuda"]:
        assert "no CUDA support" in discovery["reason"]
    for device in discovery["devices"]:
        assert device["compute_capability"][0] >= 1
        assert device["memory_bytes"] > 0
    usable = any(d["compute_capability"][0] >= 8 for d in discovery["devices"])
    assert (discovery["reason"] == "") == usable
    assert cuda_unavailable_reason() == (discovery["reason"] or None)


def test_device_work_without_a_device_is_unavailable_with_the_reason(tmp_path: Path) -> None:
    reason = cuda_unavailable_reason()
    path = write_model(tmp_path / "model.int8")
    if reason is None:
        assert _core.CudaMlp(str(path)).output_size == 5
        return
    a = np.ones((3, 4), dtype=np.int8)
    calls = [
        lambda: _core.CudaMlp(str(path)),
        lambda: _core.CudaMlp.from_bytes(path.read_bytes()),
        lambda: _core.cuda_gemm_s32(a, a.T.copy()),
        lambda: _core.cuda_time_gemm(64, 64, 64, 1),
    ]
    for call in calls:
        with pytest.raises(_core.CoreError) as raised:
            call()
        error = from_core_error(raised.value)
        assert isinstance(error, UnavailableError)
        assert str(error) == f"no CUDA device: {reason}"


def test_int8_device_choice(tmp_path: Path) -> None:
    path = write_model(tmp_path / "model.int8")
    x = np.random.default_rng(0).standard_normal((4, 12)).astype(np.float32)
    cpu = load_int8_backend(path, "cpu")
    assert isinstance(cpu, Int8Backend)
    expected = cpu.run({"x": x}, ["y"])[0]
    auto = load_int8_backend(path, "auto")
    if cuda_unavailable_reason() is None:
        assert isinstance(auto, CudaInt8Backend)
        gpu = load_int8_backend(path, "cuda:0")
        assert isinstance(gpu, CudaInt8Backend)
        np.testing.assert_array_equal(gpu.run({"x": x}, ["y"])[0], expected)
    else:
        assert isinstance(auto, Int8Backend), "auto falls back to the CPU without a device"
        with pytest.raises(UnavailableError, match=r"^no CUDA device: "):
            load_int8_backend(path, "cuda")
    np.testing.assert_array_equal(auto.run({"x": x}, ["y"])[0], expected)
    assert auto.platform == cpu.platform == "headrace_int8"


def test_int8_device_values() -> None:
    assert parse_int8_device("cpu") == ("cpu", 0)
    assert parse_int8_device("auto") == ("auto", 0)
    assert parse_int8_device("cuda") == ("cuda", 0)
    assert parse_int8_device("cuda:3") == ("cuda", 3)
    for bad in ("gpu", "cuda:", "cuda:-1", "CUDA", ""):
        with pytest.raises(ConfigError, match="device must be one of"):
            parse_int8_device(bad)
