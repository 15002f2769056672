"""One bound base class for every C++ runner: a Batcher takes any _core.NativeRunner (ONNX Runtime,
int8) or a Python callable, and nothing else; the int8 backend hands it a QuantizedMlpRunner."""

from __future__ import annotations

import select
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from headrace import _core
from headrace import quant as hq
from headrace.backends.int8 import Int8Backend
from headrace.errors import InvalidArgumentError


def int8_model(path: Path) -> Path:
    rng = np.random.default_rng(3)
    layers = []
    for k, n, activation in [(6, 5, hq.Activation.RELU), (5, 2, hq.Activation.NONE)]:
        weights, scales = hq.quantize_weights(rng.standard_normal((k, n)).astype(np.float32))
        layers.append(
            hq.QuantizedLayer(
                weights=weights,
                weight_scales=scales,
                bias=rng.standard_normal(n).astype(np.float32),
                activation=activation,
                input_range=None,
            )
        )
    blob = hq.encode_int8_model(
        hq.TensorSpec("x", "FP32", (-1, 6)), hq.TensorSpec("y", "FP32", (-1, 2)), layers
    )
    path.write_bytes(blob)
    return path


def run_batched(runner: Any, arrays: list[np.ndarray[Any, Any]]) -> dict[int, Any]:
    queue = _core.CompletionQueue()
    config = _core.BatcherConfig(max_batch_size=16, max_queue_delay_us=20_000)
    batcher = _core.Batcher("m", config, runner, queue)
    try:
        tickets = {batcher.submit([x]): k for k, x in enumerate(arrays)}
        done: dict[int, Any] = {}
        while len(done) < len(tickets):
            readable, _, _ = select.select([queue.fd], [], [], 10.0)
            assert readable, "no completion"
            for ticket, code, message, outputs in queue.drain():
                assert code == 0, message
                done[tickets[ticket]] = outputs[0]
        return done
    finally:
        batcher.shutdown(drain=False)


def test_the_int8_backend_hands_the_batcher_a_native_runner(tmp_path: Path) -> None:
    backend = Int8Backend(int8_model(tmp_path / "model.int8"))
    runner = backend.batch_runner(["x"], ["y"])
    assert isinstance(runner, _core.NativeRunner) and isinstance(runner, _core.QuantizedMlpRunner)
    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=(rows, 6)).astype(np.float32) for rows in (1, 4, 2)]
    got = run_batched(runner, arrays)
    for k, x in enumerate(arrays):
        np.testing.assert_array_equal(got[k], backend.model.run(x))


def test_the_batcher_takes_a_native_runner_or_a_callable_and_nothing_else() -> None:
    queue = _core.CompletionQueue()
    with pytest.raises(InvalidArgumentError, match="NativeRunner or a callable"):
        _core.Batcher("m", _core.BatcherConfig(), 42, queue)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _core.NativeRunner()  # type: ignore[call-arg]
    with pytest.raises(InvalidArgumentError, match="needs a QuantizedMlp"):
        _core.QuantizedMlpRunner(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _core.QuantizedMlpRunner("model.int8")  # type: ignore[arg-type]
