"""Shared fixtures: a model repository built from ONNX models made in the tests, and a real
grpc.aio server on a loopback port chosen by the OS."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from helpers import onnx_models

ALL_DATATYPES = [
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BF16",
    "BYTES",
]


def build_repository(root: Path) -> Path:
    repo = root / "models"
    for datatype in ALL_DATATYPES:
        onnx_models.write_model(
            repo, f"identity_{datatype.lower()}", onnx_models.identity(datatype)
        )
    onnx_models.write_model(repo, "two_in_two_out", onnx_models.two_in_two_out())
    onnx_models.write_model(
        repo,
        "reshaper",
        onnx_models.reshaper(),
        warmup={"x": np.arange(6, dtype=np.float32), "shape": np.array([2, 3], np.int64)},
    )
    onnx_models.write_model(repo, "mlp", onnx_models.mlp([8, 16, 2]), version=1)
    onnx_models.write_model(
        repo, "mlp", onnx_models.mlp([8, 16, 2], seed=5), version=2, toml='version_policy = "all"\n'
    )
    broken = repo / "broken" / "1" / "model.onnx"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"this is not an onnx file")
    return repo


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_repository(tmp_path_factory.mktemp("repo"))


@dataclass
class RunningServer:
    address: str
    port: int
    metrics_port: int
    server: object
    loop: asyncio.AbstractEventLoop
    uds: Path | None = None


def start_server(
    repository: Path, uds: Path | None = None, **settings: object
) -> tuple[RunningServer, threading.Thread]:
    """A real headrace grpc.aio server on its own uvloop thread, port 0."""
    import uvloop

    from headrace.config import ServerSettings
    from headrace.engine import Engine
    from headrace.server import Server

    config = ServerSettings(
        model_repository=repository, grpc_port=0, metrics_port=0, grpc_uds=uds, **settings
    )
    engine = Engine(config)
    engine.load_repository()
    server = Server(engine, config)
    loop = uvloop.new_event_loop()
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(30), "server did not start"
    running = RunningServer(
        f"127.0.0.1:{server.grpc_port}", server.grpc_port, server.metrics_port, server, loop, uds
    )
    return running, thread


def stop_server(running: RunningServer, thread: threading.Thread) -> None:
    future = asyncio.run_coroutine_threadsafe(running.server.stop(5.0), running.loop)  # type: ignore[attr-defined]
    future.result(30)
    running.loop.call_soon_threadsafe(running.loop.stop)
    thread.join(30)
    running.loop.close()


@pytest.fixture(scope="module")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    uds = tmp_path_factory.mktemp("uds") / "headrace.sock"
    running, thread = start_server(repository, uds=uds, max_request_elements=1 << 20)
    yield running
    stop_server(running, thread)
