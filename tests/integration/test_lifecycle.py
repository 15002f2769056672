"""The model lifecycle over the wire: a new version swaps in under load with no failed request;
a broken newer version never replaces the serving one and says why."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import RunningServer, start_server, stop_server
from headrace.client import Client
from headrace.errors import UnavailableError

CALLERS = 16


def scaled_identity(scale: float) -> onnx.ModelProto:
    """y = x * scale: each version answers with its own scale, so answers say who served."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "s"], ["y"])],
        "scaled",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(np.array(scale, np.float32), "s")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def write_version(repo: Path, version: int, model: onnx.ModelProto | bytes) -> None:
    folder = repo / "swapped" / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "model.onnx"
    if isinstance(model, bytes):
        target.write_bytes(model)
    else:
        onnx.save(model, str(target))


@pytest.fixture()
def swap_server(tmp_path: Path) -> Iterator[tuple[RunningServer, Path]]:
    repo = tmp_path / "models"
    write_version(repo, 1, scaled_identity(1.0))
    running, thread = start_server(repo)
    yield running, repo
    stop_server(running, thread)


def test_load_v2_under_16_callers_fails_no_request(
    swap_server: tuple[RunningServer, Path],
) -> None:
    running, repo = swap_server
    x = np.ones((1, 4), np.float32)
    stop = threading.Event()
    failures: list[BaseException] = []
    seen: list[set[str]] = [set() for _ in range(CALLERS)]
    answered = threading.Semaphore(0)

    def caller(index: int) -> None:
        with Client(running.address) as client:
            while not stop.is_set():
                try:
                    result = client.infer("swapped", {"x": x})
                except BaseException as error:  # every failure is a finding
                    failures.append(error)
                    return
                scale = float(result.outputs["y"][0, 0])
                # The answer's version and its values agree: no mixed or half-swapped state.
                if scale != float(result.model_version):
                    failures.append(AssertionError((scale, result.model_version)))
                    return
                seen[index].add(result.model_version)
                answered.release()

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(CALLERS)]
    for thread in threads:
        thread.start()
    for _ in range(CALLERS * 4):  # everybody is calling before the swap
        assert answered.acquire(timeout=60)
    write_version(repo, 2, scaled_identity(2.0))
    with Client(running.address) as admin:
        admin.load_model("swapped")
        # Everybody answered by version 2 at least once after the swap: load and drain
        # happened while the callers kept calling.
        for _ in range(CALLERS * 20):
            assert answered.acquire(timeout=60), failures
        stop.set()
        for thread in threads:
            thread.join(60)
        assert not failures, failures
        assert all("2" in versions for versions in seen), seen
        assert {e.version for e in admin.repository_index() if e.state == "READY"} == {"2"}


def test_broken_v3_keeps_v2_serving_and_the_index_says_why(
    swap_server: tuple[RunningServer, Path],
) -> None:
    running, repo = swap_server
    write_version(repo, 2, scaled_identity(2.0))
    with Client(running.address) as client:
        client.load_model("swapped")
        write_version(repo, 3, b"this is not an onnx model")
        with pytest.raises(UnavailableError) as info:
            client.load_model("swapped")
        assert "version 3" in info.value.message
        result = client.infer("swapped", {"x": np.ones((1, 4), np.float32)})
        assert result.model_version == "2" and float(result.outputs["y"][0, 0]) == 2.0
        rows = {(e.version, e.state): e.reason for e in client.repository_index()}
        assert ("2", "READY") in rows
        assert rows.get(("3", "UNAVAILABLE"))


def test_a_model_file_replaced_at_the_same_version_reloads(
    swap_server: tuple[RunningServer, Path],
) -> None:
    running, repo = swap_server
    with Client(running.address) as client:
        before = client.infer("swapped", {"x": np.ones((1, 4), np.float32)})
        assert float(before.outputs["y"][0, 0]) == 1.0
        write_version(repo, 1, scaled_identity(5.0))
        client.load_model("swapped")
        after = client.infer("swapped", {"x": np.ones((1, 4), np.float32)})
        assert after.model_version == "1" and float(after.outputs["y"][0, 0]) == 5.0
