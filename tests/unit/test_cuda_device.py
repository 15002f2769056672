"""CUDA device discovery and the int8 device choice, on whatever machine runs the tests: without
a usable GPU every path answers "no CUDA device" with the reason (never a crash, never an import
error); with one, the same calls load onto it. No test here skips in either state."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from headrace import Engine, _core
from headrace import quant as hq
from headrace.backends.int8 import Int8Backend
from headrace.backends.int8_cuda import CudaInt8Backend, cuda_unavailable_reason, load_int8_backend
from headrace.config import Int8Config, load_model_config
from headrace.config.model import parse_int8_device
from headrace.errors import ConfigError, InvalidArgumentError, UnavailableError


def write_model(path: Path) -> Path:
    rng = np.random.default_rng(3)
    layers = [
        hq.QuantizedLayer(
            weights=rng.integers(-127, 128, size=(12, 5), dtype=np.int8),
            weight_scales=np.full(5, 0.01, dtype=np.float32),
            bias=None,
            activation=hq.Activation.RELU,
            input_range=None,
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
        with pytest.raises(UnavailableError) as raised:
            call()
        assert str(raised.value) == f"no CUDA device: {reason}"
    # The runner is made from a CudaMlp only: without a device there is none to make it from.
    with pytest.raises(InvalidArgumentError, match="CudaMlpRunner needs a CudaMlp"):
        _core.CudaMlpRunner(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _core.CudaMlpRunner(_core.QuantizedMlp(str(path)))  # type: ignore[arg-type]


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
    assert Int8Config().device == "cpu"
    assert Int8Config(device="cuda:1").device == "cuda:1"
    for bad in ("gpu", "cuda:", "cuda:-1", "cuda:1.5", "cuda:\u0661", "CUDA", ""):
        with pytest.raises(ValueError, match="must be one of"):
            parse_int8_device(bad)
        with pytest.raises(ConfigError, match="'device' must be one of"):
            Int8Config(device=bad)
        with pytest.raises(ConfigError, match=r"'int8\.device' must be one of"):
            load_int8_backend(Path("unused.int8"), bad)
    with pytest.raises(ConfigError, match="'device' must be a string"):
        Int8Config(device=0)  # type: ignore[arg-type]


def write_repository(root: Path, devices: dict[str, str]) -> Path:
    """One int8 model per entry, each with ``[int8] device`` set to the entry's value."""
    for name, device in devices.items():
        (root / name / "1").mkdir(parents=True)
        write_model(root / name / "1" / "model.int8")
        (root / name / "model.toml").write_text(
            f'backend = "int8"\nmax_batch_size = 8\n[int8]\ndevice = "{device}"\n'
        )
    return root


def test_a_bad_int8_device_in_model_toml_is_a_config_error(tmp_path: Path) -> None:
    repo = write_repository(tmp_path / "models", {"bad": "gpu", "typo": "cuda:one"})
    toml = repo / "bad" / "model.toml"
    with pytest.raises(ConfigError) as raised:
        load_model_config("bad", toml)
    assert str(raised.value) == (
        f"{toml}: 'int8.device' must be one of 'cpu', 'auto', 'cuda', 'cuda:N', got 'gpu'"
    )
    (repo / "bad" / "model.toml").write_text('[int8]\ndevise = "cuda"\n')
    with pytest.raises(ConfigError, match=r"unknown key 'int8.devise' \(known: device\)"):
        load_model_config("bad", toml)
    engine = Engine.from_repository(repo)
    try:
        entry = next(e for e in engine.repository_index() if e.name == "typo")
        assert entry.state == "UNAVAILABLE"
        assert "'int8.device' must be one of" in entry.reason and "'cuda:one'" in entry.reason
        with pytest.raises(ConfigError, match=r"'int8\.device'"):
            engine.load_model("typo")
    finally:
        engine.close()


def test_auto_serves_on_the_cpu_without_a_device(tmp_path: Path) -> None:
    repo = write_repository(tmp_path / "models", {"auto": "auto", "cpu": "cpu"})
    reason = cuda_unavailable_reason()
    x = np.random.default_rng(4).standard_normal((3, 12)).astype(np.float32)
    expected = _core.QuantizedMlp(str(repo / "cpu" / "1" / "model.int8")).run(x)
    engine = Engine.from_repository(repo)
    try:
        auto = engine.infer("auto", {"x": x})
        np.testing.assert_array_equal(auto.outputs["y"], expected)
        np.testing.assert_array_equal(engine.infer("cpu", {"x": x}).outputs["y"], expected)
        served = engine.get_version("auto").backend
        assert isinstance(engine.get_version("cpu").backend, Int8Backend)
        if reason is None:
            assert isinstance(served, CudaInt8Backend), "auto takes the usable GPU"
        else:
            assert isinstance(served, Int8Backend), f"no CUDA device ({reason}): auto is the CPU"
    finally:
        engine.close()
