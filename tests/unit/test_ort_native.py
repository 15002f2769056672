"""ONNX Runtime driven through its C API from the core (csrc/runners/ort): results equal
onnxruntime's Python API, errors are typed with the right codes, the batcher runs it without
Python, and the ONNX backend picks it (or falls back) as documented."""

from __future__ import annotations

import select
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from headrace import _core
from headrace.backends.onnx import OnnxBackend, native_library
from headrace.engine import Engine
from helpers.onnx_models import identity, mlp, two_in_two_out, write_model

INVALID_ARGUMENT = 3
INTERNAL = 13
UNAVAILABLE = 14

# The Linux onnxruntime wheels ship libonnxruntime beside the Python module; its absence is a
# failure here, never a skip (the native path is what the server runs).
LIBRARY = native_library()


def test_the_onnxruntime_package_ships_its_library() -> None:
    assert LIBRARY is not None, "onnxruntime/capi/libonnxruntime.so* not found"


def save(tmp_path: Path, model: onnx.ModelProto, name: str = "model.onnx") -> str:
    path = tmp_path / name
    onnx.save(model, str(path))
    return str(path)


def native(path: str) -> Any:
    assert LIBRARY is not None
    return _core.OrtModel(LIBRARY, path, 1, 1)


def test_mlp_matches_the_python_api_at_every_batch_size(tmp_path: Path) -> None:
    path = save(tmp_path, mlp([32, 64, 64, 4], seed=3))
    model = native(path)
    assert model.inputs == [("x", "FP32", (-1, 32))]
    assert model.outputs == [("y", "FP32", (-1, 4))]
    assert model.version == ort.__version__
    reference = ort.InferenceSession(path)
    rng = np.random.default_rng(0)
    for rows in (1, 2, 7, 64):
        x = rng.normal(size=(rows, 32)).astype(np.float32)
        (got,) = model.run({"x": x}, ["y"])
        (want,) = reference.run(["y"], {"x": x})
        assert got.shape == (rows, 4) and got.dtype == np.float32
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    ("datatype", "dtype"),
    [
        ("BOOL", np.bool_),
        ("UINT8", np.uint8),
        ("INT8", np.int8),
        ("INT16", np.int16),
        ("UINT16", np.uint16),
        ("INT32", np.int32),
        ("INT64", np.int64),
        ("UINT32", np.uint32),
        ("UINT64", np.uint64),
        ("FP16", np.float16),
        ("FP64", np.float64),
        ("BF16", np.uint16),  # bit patterns, as on the wire
    ],
)
def test_every_fixed_size_datatype_round_trips(tmp_path: Path, datatype: str, dtype: Any) -> None:
    model = native(save(tmp_path, identity(datatype)))
    assert model.inputs[0][1] == datatype
    x = (np.arange(12).reshape(4, 3) % 7).astype(dtype)
    (y,) = model.run({"x": x}, ["y"])
    assert y.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(y, x)


def test_outputs_in_the_order_asked_and_inputs_by_name(tmp_path: Path) -> None:
    model = native(save(tmp_path, two_in_two_out()))
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    b = np.full((2, 4), 3, dtype=np.float32)
    product, total = model.run({"b": b, "a": a}, ["product", "sum"])
    np.testing.assert_array_equal(product, a * b)
    np.testing.assert_array_equal(total, a + b)


def test_bad_inputs_are_refused_with_their_names(tmp_path: Path) -> None:
    model = native(save(tmp_path, mlp([32, 8, 1])))
    with pytest.raises(_core.CoreError) as unknown:
        model.run({"nope": np.ones((1, 32), np.float32)}, ["y"])
    assert unknown.value.code == INVALID_ARGUMENT and "'nope'" in unknown.value.message
    with pytest.raises(_core.CoreError) as wrong_type:
        model.run({"x": np.ones((1, 32), np.float64)}, ["y"])
    assert wrong_type.value.code == INVALID_ARGUMENT and "FP64" in wrong_type.value.message
    with pytest.raises(_core.CoreError) as wrong_shape:
        model.run({"x": np.ones((1, 31), np.float32)}, ["y"])
    assert wrong_shape.value.code == INTERNAL and "dimensions" in wrong_shape.value.message
    with pytest.raises(_core.CoreError) as no_output:
        model.run({"x": np.ones((1, 32), np.float32)}, ["z"])
    assert no_output.value.code == INVALID_ARGUMENT and "'z'" in no_output.value.message
    # The session is still good after every refusal.
    assert model.run({"x": np.ones((2, 32), np.float32)}, ["y"])[0].shape == (2, 1)


def test_unloadable_model_and_library_are_errors(tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(_core.CoreError) as bad_model:
        native(str(broken))
    assert bad_model.value.code == INTERNAL and "broken.onnx" in bad_model.value.message
    with pytest.raises(_core.CoreError) as bad_library:
        _core.OrtModel(str(tmp_path / "libmissing.so"), str(broken))
    assert bad_library.value.code == UNAVAILABLE


def test_string_tensors_stay_on_the_python_api(tmp_path: Path) -> None:
    path = save(tmp_path, identity("BYTES"))
    with pytest.raises(_core.CoreError) as refused:
        native(path)
    assert refused.value.code == INVALID_ARGUMENT and "'x'" in refused.value.message
    backend = OnnxBackend(Path(path))
    assert backend.batch_runner(["x"], ["y"]) is None
    (y,) = backend.run({"x": np.array([["a", "b", "c"]], dtype=object)}, ["y"])
    assert y.tolist() == [["a", "b", "c"]]


def test_backend_runs_natively_unless_told_not_to(tmp_path: Path) -> None:
    path = Path(save(tmp_path, mlp([8, 4, 2])))
    x = np.ones((3, 8), np.float32)
    fast = OnnxBackend(path)
    slow = OnnxBackend(path, native=False)
    assert fast.batch_runner(["x"], ["y"]) is not None
    assert slow.batch_runner(["x"], ["y"]) is None
    np.testing.assert_array_equal(fast.run({"x": x}, ["y"])[0], slow.run({"x": x}, ["y"])[0])


def test_batcher_runs_ort_batches_and_each_caller_gets_its_rows(tmp_path: Path) -> None:
    path = save(tmp_path, mlp([16, 32, 3], seed=5))
    model = native(path)
    reference = ort.InferenceSession(path)
    queue = _core.CompletionQueue()
    config = _core.BatcherConfig(max_batch_size=64, max_queue_delay_us=20_000)
    batcher = _core.Batcher("m", config, model.runner(["x"], ["y"]), queue)
    try:
        rng = np.random.default_rng(1)
        arrays = [rng.normal(size=(rows, 16)).astype(np.float32) for rows in (1, 3, 2)]
        inputs = {batcher.submit([x]): x for x in arrays}
        done: dict[int, Any] = {}
        while len(done) < len(inputs):
            readable, _, _ = select.select([queue.fd], [], [], 10.0)
            assert readable, "no completion"
            for ticket, code, message, outputs in queue.drain():
                assert code == 0, message
                done[ticket] = outputs
        for ticket, x in inputs.items():
            np.testing.assert_array_equal(done[ticket][0], reference.run(["y"], {"x": x})[0])
        assert batcher.stats()["execution_count"] == 1  # one batch of 6 rows
    finally:
        batcher.shutdown(drain=False)


def test_engine_serves_batched_onnx_models_through_the_native_runner(tmp_path: Path) -> None:
    write_model(tmp_path, "m", mlp([8, 16, 2], seed=2))
    for native_onnxruntime in (True, False):
        engine = Engine.from_repository(tmp_path, native_onnxruntime=native_onnxruntime)
        try:
            version = engine.get_version("m")
            runner = version.backend.batch_runner(["x"], ["y"])
            assert (runner is not None) == native_onnxruntime
            x = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
            got = engine.infer("m", {"x": x}).outputs["y"]
            want = ort.InferenceSession(str(tmp_path / "m" / "1" / "model.onnx")).run(
                ["y"], {"x": x}
            )[0]
            np.testing.assert_allclose(got, want, rtol=1e-6)
        finally:
            engine.close()


def test_cheap_batches_on_an_idle_batcher_run_in_the_submitting_thread(tmp_path: Path) -> None:
    # A native runner needs no GIL: once the cost fit predicts a cheap batch, submit_or_run runs
    # it right here and the completion is queued before it returns.
    model = native(save(tmp_path, mlp([4, 8, 2])))
    queue = _core.CompletionQueue()
    # "Cheap" up to 1 s a batch: which batches run here is decided by the cost fit having its
    # samples, not by how fast this machine happens to run them under load.
    config = _core.BatcherConfig(max_batch_size=8, inline_max_batch_us=1_000_000)
    batcher = _core.Batcher("m", config, model.runner(["x"], ["y"]), queue)
    try:
        x = np.ones((1, 4), np.float32)
        ran_here = []
        for _ in range(40):
            ticket, here = batcher.submit_or_run([x])
            ran_here.append(here)
            if not here:
                readable, _, _ = select.select([queue.fd], [], [], 10.0)
                assert readable, "no completion"
            ((done, code, message, outputs),) = queue.drain()
            assert done == ticket and code == 0, message
            np.testing.assert_array_equal(outputs[0], model.run({"x": x}, ["y"])[0])
        assert not ran_here[0]  # no fitted cost yet: the prior is a guess
        assert all(ran_here[20:])
        assert batcher.stats()["execution_count"] == 40
    finally:
        batcher.shutdown(drain=False)
