"""The ONNX Runtime library under the native runner (csrc/runners/ort): it is the onnxruntime
package's own, it is asked for the C API version the slot table was written against (a library
without it is refused, naming the oldest supported release), and each model gets one session:
the native one, whose metadata the backend uses, or onnxruntime's Python one on the fallback
paths, never both."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from headrace import _core
from headrace.backends import onnx as onnx_backend
from headrace.backends.onnx import OnnxBackend, native_library, native_library_version
from headrace.errors import UnavailableError
from helpers.onnx_models import identity, mlp, two_in_two_out

ROOT = Path(__file__).resolve().parents[2]


def library() -> str:
    found = native_library()
    assert found is not None, "onnxruntime/capi/libonnxruntime.so* not found"
    return found


def test_the_loaded_library_is_the_onnxruntime_package_s(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert _core.ort_library_version(library()) == ort.__version__
    native_library_version.cache_clear()
    with caplog.at_level(logging.INFO, logger="headrace.backends.onnx"):
        assert native_library_version(library()) == ort.__version__
    assert f"ONNX Runtime {ort.__version__} loaded from {library()}" in caplog.text
    path = tmp_path / "model.onnx"
    onnx.save(mlp([4, 2]), str(path))
    assert _core.OrtModel(library(), str(path)).version == ort.__version__


def test_the_oldest_supported_release_is_pyproject_s() -> None:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (floor,) = [d for d in dependencies if re.match(r"onnxruntime\s*>=", d)]
    assert floor.split(">=")[1].strip() == _core.ORT_OLDEST_SUPPORTED_RELEASE
    assert _core.ORT_API_VERSION >= 1


# A library that exports OrtGetApiBase but offers no C API of the version asked for, as a release
# older than that version would.
FAKE_LIBRARY = """
#include <stddef.h>
#include <stdint.h>
typedef struct {
  const void* (*GetApi)(uint32_t version);
  const char* (*GetVersionString)(void);
} OrtApiBase;
static const void* get_api(uint32_t version) { (void)version; return NULL; }
static const char* version_string(void) { return "0.9.9"; }
static const OrtApiBase base = {get_api, version_string};
const OrtApiBase* OrtGetApiBase(void) { return &base; }
"""


@pytest.fixture
def old_library(tmp_path: Path) -> str:
    compiler = shutil.which("cc") or shutil.which("gcc")
    assert compiler is not None, "a C compiler builds the core; it is needed here too"
    source = tmp_path / "fake_onnxruntime.c"
    source.write_text(FAKE_LIBRARY)
    target = tmp_path / "libonnxruntime_old.so"
    subprocess.run(
        [compiler, "-shared", "-fPIC", "-o", str(target), str(source)],
        check=True,
        stdout=sys.stderr,
    )
    return str(target)


def test_a_library_without_the_c_api_version_is_refused_clearly(
    old_library: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(UnavailableError) as info:
        _core.ort_library_version(old_library)
    message = info.value.message
    assert "ONNX Runtime 0.9.9" in message and old_library in message
    assert f"C API version {_core.ORT_API_VERSION}" in message
    assert f"onnxruntime >= {_core.ORT_OLDEST_SUPPORTED_RELEASE}" in message
    path = tmp_path / "model.onnx"
    onnx.save(mlp([4, 2]), str(path))
    with pytest.raises(UnavailableError):
        _core.OrtModel(old_library, str(path))
    # The backend falls back to onnxruntime's Python API and still serves the model.
    monkeypatch.setattr(onnx_backend, "native_library", lambda: old_library)
    backend = OnnxBackend(path)
    assert backend.batch_runner(["x"], ["y"]) is None
    assert backend.run({"x": np.ones((2, 4), np.float32)}, ["y"])[0].shape == (2, 2)


class CountingSession:
    """Stands in for onnxruntime.InferenceSession and counts the sessions built."""

    built = 0

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        CountingSession.built += 1
        return REAL_SESSION(*args, **kwargs)


REAL_SESSION = ort.InferenceSession


@pytest.fixture
def sessions(monkeypatch: pytest.MonkeyPatch) -> type[CountingSession]:
    CountingSession.built = 0
    monkeypatch.setattr(ort, "InferenceSession", CountingSession)
    return CountingSession


def test_one_session_per_model(tmp_path: Path, sessions: type[CountingSession]) -> None:
    numeric = tmp_path / "numeric.onnx"
    onnx.save(mlp([8, 4, 2]), str(numeric))
    native = OnnxBackend(numeric)
    assert native.batch_runner(["x"], ["y"]) is not None
    assert sessions.built == 0  # the metadata came from the native session
    python = OnnxBackend(numeric, native=False)
    assert python.batch_runner(["x"], ["y"]) is None and sessions.built == 1
    strings = tmp_path / "strings.onnx"
    onnx.save(identity("BYTES"), str(strings))
    text = OnnxBackend(strings)
    assert text.batch_runner(["x"], ["y"]) is None and sessions.built == 2
    x = np.ones((3, 8), np.float32)
    np.testing.assert_array_equal(native.run({"x": x}, ["y"])[0], python.run({"x": x}, ["y"])[0])


@pytest.mark.parametrize(
    "model",
    [
        mlp([8, 16, 2]),
        two_in_two_out(),
        identity("BF16"),
        identity("INT64", [2, "n", 5]),
        identity("BOOL", [4]),
    ],
    ids=["mlp", "two_in_two_out", "bf16", "symbolic_dim", "fixed_shape"],
)
def test_native_metadata_is_what_the_python_api_reports(
    tmp_path: Path, model: onnx.ModelProto
) -> None:
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    native = OnnxBackend(path)
    assert native.batch_runner([s.name for s in native.inputs], [native.outputs[0].name])
    python = OnnxBackend(path, native=False)
    assert native.inputs == python.inputs
    assert native.outputs == python.outputs
