"""A real MLflow tracking server for the registry tests, started once per test session.

``mlflow server`` runs with a SQLite backend and ``--artifacts-destination`` (proxied artifacts, so
the client downloads over HTTP as it would from a remote server) in a temporary folder, on a free
loopback port, with one worker and no job runner (startup time). Tests that stop it (to see the
poller back off) start it again on the same port and data before they return.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 240.0  # a hang guard on a loaded 2-core machine, not an expectation


def adder_model(bias: float) -> onnx.ModelProto:
    """y = x + bias over FP32 [batch, 3]; the bias tells versions apart."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "b"], ["y"])],
        "adder",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor("b", TensorProto.FLOAT, [3], [bias] * 3)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def drift_reference(model: onnx.ModelProto, toml: Path, target: Path) -> Path:
    """The model's drift reference profile (inputs and outputs), as `headrace profile` makes
    it, over a reproducible sample of inputs; written to ``target``."""
    import shutil
    import tempfile

    from headrace.monitoring.drift.model_profile import profile_model

    with tempfile.TemporaryDirectory() as scratch:
        version = Path(scratch) / "adder" / "1"
        version.mkdir(parents=True)
        onnx.save(model, str(version / "model.onnx"))
        shutil.copy(toml, version.parent / "model.toml")
        data = np.random.default_rng(7).normal(size=(512, 3)).astype(np.float32)
        profile_model(Path(scratch), "adder", "1", data, out=target)
    return target


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class LoggedModel:
    """A model logged once; new registry versions can point at its artifacts."""

    source: str  # models:/m-<id>
    run_id: str
    bias: float

    @property
    def model_id(self) -> str:
        return self.source.removeprefix("models:/")


@dataclass
class MlflowServer:
    root: Path
    port: int = field(default_factory=_free_port)
    process: subprocess.Popen[bytes] | None = None
    startup_s: float = 0.0

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    def start(self) -> None:
        started = time.monotonic()
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        command = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.db}",
            "--artifacts-destination",
            str(self.artifacts),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        log_file = (self.root / "server.log").open("ab")
        self.process = subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        log_file.close()
        deadline = started + STARTUP_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                tail = (self.root / "server.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"mlflow server exited with {self.process.returncode}:\n{tail}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"mlflow server not healthy after {STARTUP_TIMEOUT_S} s")
            time.sleep(0.1)
        self.startup_s = time.monotonic() - started
        log.warning("mlflow server on %s healthy after %.1f s", self.uri, self.startup_s)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Stop the server and everything it started (its own process group)."""
        if self.process is None:
            return
        with _suppress_lookup():
            os.killpg(self.process.pid, sig)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with _suppress_lookup():
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        self.process = None

    # -- registry helpers ---------------------------------------------------------------------

    def client(self) -> Any:
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def log_model(self, registered_name: str, bias: float, *, workdir: Path) -> LoggedModel:
        """mlflow.onnx.log_model with an input example, a signature and the drift reference and
        model.toml as extra files; registers version 1.. of ``registered_name``."""
        import mlflow
        import mlflow.onnx
        from mlflow.models import infer_signature

        mlflow.set_tracking_uri(self.uri)
        workdir.mkdir(parents=True, exist_ok=True)
        toml = workdir / "model.toml"
        toml.write_text("max_batch_size = 8\n")
        reference = drift_reference(adder_model(bias), toml, workdir / "reference.json")
        example = {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}
        signature = infer_signature(example, {"y": example["x"] + bias})
        # MLflow warns about its own type hints while logging (not about our model); warnings are
        # errors in this suite, so these are silenced here and only here.
        with warnings.catch_warnings(), mlflow.start_run() as run:
            warnings.simplefilter("ignore")
            info = mlflow.onnx.log_model(
                adder_model(bias),
                name="model",
                input_example=example,
                signature=signature,
                registered_model_name=registered_name,
                pip_requirements=["onnxruntime"],  # skips requirement inference (slow)
                extra_files=[str(reference), str(toml)],
            )
        return LoggedModel(str(info.model_uri), run.info.run_id, bias)

    def create_version(self, name: str, logged: LoggedModel) -> int:
        """A new version of ``name`` (registered if new) over ``logged``'s artifacts."""
        client = self.client()
        from mlflow.exceptions import MlflowException

        try:
            client.create_registered_model(name)
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        version = client.create_model_version(
            name, logged.source, run_id=logged.run_id, model_id=logged.model_id
        )
        return int(version.version)

    def set_alias(self, name: str, alias: str, version: int) -> None:
        self.client().set_registered_model_alias(name, alias, str(version))

    def set_status(self, name: str, version: int, status: str) -> None:
        """Put a version in PENDING_REGISTRATION / FAILED_REGISTRATION. An OSS server creates
        versions READY at once, so the test writes the status into the server's database."""
        with sqlite3.connect(self.db) as db:
            changed = db.execute(
                "UPDATE model_versions SET status = ? WHERE name = ? AND version = ?",
                (status, name, version),
            ).rowcount
        assert changed == 1

    def artifact_dir(self, name: str, version: int) -> Path:
        """Where the server stores a version's artifacts (mlflow-artifacts:/<path>)."""
        uri = self.client().get_model_version_download_uri(name, str(version))
        prefix = "mlflow-artifacts:/"
        assert uri.startswith(prefix), uri
        return self.artifacts / uri[len(prefix) :]


class _suppress_lookup:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, value: object, traceback: object) -> bool:
        return isinstance(value, ProcessLookupError)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    server.start()
    try:
        yield server
    finally:
        server.kill(signal.SIGTERM)


@dataclass
class Logged:
    one: LoggedModel  # bias 1
    two: LoggedModel  # bias 2


@pytest.fixture(scope="session")
def logged(mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory) -> Logged:
    """Two ONNX models logged once per session ("adder" versions 1 and 2)."""
    workdir = tmp_path_factory.mktemp("logged")
    one = mlflow_server.log_model("adder", 1.0, workdir=workdir / "one")
    two = mlflow_server.log_model("adder", 2.0, workdir=workdir / "two")
    return Logged(one, two)


class Recorder:
    """An event callback that keeps every event and lets a test wait for one."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self._changed = asyncio.Event()
        self.context: list[Any] = []  # what ``snapshot`` returned at each event

        self.snapshot: Callable[[], Any] = lambda: None

    async def __call__(self, event: Any) -> None:
        self.events.append(event)
        self.context.append(self.snapshot())
        self._changed.set()

    async def wait_for(
        self, predicate: Callable[[Any], bool], *, after: int = 0, timeout_s: float = 120.0
    ) -> Any:
        """The first event from index ``after`` on that satisfies ``predicate``."""

        async def found() -> Any:
            while True:
                for event in self.events[after:]:
                    if predicate(event):
                        return event
                self._changed.clear()
                await self._changed.wait()

        return await asyncio.wait_for(found(), timeout_s)

    def of(self, kind: type) -> list[Any]:
        return [event for event in self.events if isinstance(event, kind)]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def make_recorder() -> type[Recorder]:
    return Recorder
