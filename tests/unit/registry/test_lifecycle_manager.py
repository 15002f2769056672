"""The manager's lifecycle in-process with real ONNX models: a followed model (its versions from
a folder through the Source protocol, as MLflow's come from the cache) switches, keeps the
previous version warm and closes the rest, resolves aliases, pins and rolls back; a transition
that cannot be audited does not happen; a repository model cannot be both."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from headrace.config import ServerSettings
from headrace.engine import Engine
from headrace.errors import ConfigError, FailedPreconditionError, NotFoundError, UnavailableError
from headrace.registry.audit import AuditCause
from headrace.registry.filesystem import FilesystemSource
from headrace.registry.plan import VersionInput

MODEL = "followed"
X = {"x": np.ones((1, 2), np.float32)}


def scaled(scale: float) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "s"], ["y"])],
        "scaled",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(np.array(scale, np.float32), "s")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture()
def engine(tmp_path: Path) -> Iterator[Engine]:
    """An engine with no repository, following MODEL whose versions 1..4 sit in a folder."""
    store = tmp_path / "registry"
    for version in range(1, 6):
        (store / MODEL / str(version)).mkdir(parents=True)
        onnx.save(scaled(float(version)), str(store / MODEL / str(version) / "model.onnx"))
    # An input example in MLflow's shape is the warm-up sample of versions 4 and 5 (that one
    # does not fit the model).
    (store / MODEL / "4" / "input_example.json").write_text(json.dumps({"x": [[1.0, 2.0]]}))
    (store / MODEL / "5" / "input_example.json").write_text(json.dumps({"x": [[1, 2, 3]]}))
    source = FilesystemSource(store, settle_s=0)
    engine = Engine(ServerSettings(audit_log=tmp_path / "audit.jsonl", metrics_port=-1))
    engine.models.follow(
        MODEL,
        reference=f"{MODEL}@champion",
        alias="champion",
        origin="test-registry",
        provider=lambda v: VersionInput.from_materialized(source.materialize(MODEL, v)),
    )
    yield engine
    engine.close()


def serving(engine: Engine) -> tuple[str, float]:
    result = engine.infer(MODEL, X)
    return result.model_version, float(result.outputs["y"][0, 0])


def tracked(engine: Engine) -> set[str]:
    return {v.version_str for v in engine.metrics.tracked() if v.name == MODEL}


def test_switches_keep_one_version_warm_and_close_the_rest(engine: Engine) -> None:
    manager = engine.models
    assert engine.repository_index()[0].reason.startswith("waiting for followed@champion")
    for version in (1, 2, 3):
        manager.set_desired(MODEL, version, cause=AuditCause.ALIAS_MOVED, actor="poller")
        assert serving(engine) == (str(version), float(version))
    model = manager.get(MODEL)
    assert model is not None and (set(model.versions), set(model.standby)) == ({3}, {2})
    assert tracked(engine) == {"2", "3"}  # version 1 was drained and closed
    with pytest.raises(NotFoundError, match="no version '2'"):
        engine.infer(MODEL, X, version="2")  # on standby: answers nothing

    change = manager.rollback(MODEL, "alice")
    assert (change.from_version, change.to_version) == (3, 2)
    assert serving(engine) == ("2", 2.0)
    records = [json.loads(line) for line in engine.settings.audit_log.read_text().splitlines()]
    rollback = records[-1]
    assert (rollback["cause"], rollback["actor"], rollback["load_ms"]) == (
        "admin_rollback",
        "alice",
        None,  # instant: it was warm
    )
    # Each rollback walks one version further back; version 1 was closed, so it loads again.
    change = manager.rollback(MODEL, "alice")
    assert (change.from_version, change.to_version) == (2, 1)
    assert serving(engine) == ("1", 1.0)
    assert tracked(engine) == {"1", "3"}  # what the source wants stays warm meanwhile
    with pytest.raises(FailedPreconditionError, match="no earlier"):
        manager.rollback(MODEL, "alice")
    # The source moves on to a version that cannot load: nothing switches, the rollback holds.
    with pytest.raises(UnavailableError, match="input example"):
        manager.set_desired(MODEL, 5, cause=AuditCause.ALIAS_MOVED, actor="poller")
    control = manager.control(MODEL)
    assert control is not None and control.override is not None
    assert (control.override.kind, control.desired) == ("rollback", 5)
    assert serving(engine) == ("1", 1.0)
    manager.set_desired(MODEL, 3, cause=AuditCause.ALIAS_MOVED, actor="poller")
    assert serving(engine) == ("1", 1.0)  # back to the version rolled back from: it holds
    manager.set_desired(MODEL, 4, cause=AuditCause.ALIAS_MOVED, actor="poller")
    assert serving(engine) == ("4", 4.0)  # a move to yet another version ends the rollback
    assert manager.control(MODEL).override is None  # type: ignore[union-attr]


def test_aliases_name_versions_and_pins_load_first(engine: Engine) -> None:
    manager = engine.models
    manager.set_aliases(MODEL, {"champion": 1, "challenger": 4}, "poller")
    manager.set_desired(MODEL, 1, cause=AuditCause.STARTUP, actor="poller")
    assert engine.infer(MODEL, X, version="challenger").model_version == "4"
    assert engine.infer(MODEL, X, version="champion").model_version == "1"
    with pytest.raises(NotFoundError, match="an alias: challenger, champion"):
        engine.infer(MODEL, X, version="nobody")
    manager.pin(MODEL, "3", "bob")
    assert serving(engine) == ("3", 3.0)
    manager.set_desired(MODEL, 2, cause=AuditCause.ALIAS_MOVED, actor="poller")
    assert serving(engine) == ("3", 3.0)  # the pin holds
    manager.unpin(MODEL, "bob")
    assert serving(engine) == ("2", 2.0)
    with pytest.raises(NotFoundError):
        manager.pin(MODEL, "nobody", "bob")
    with pytest.raises(UnavailableError, match="input example"):
        manager.pin(MODEL, "5", "bob")  # the warm-up with its example fails: no switch
    assert serving(engine) == ("2", 2.0)
    assert "input example" in engine.repository_index()[-1].reason


def test_a_transition_that_cannot_be_audited_does_not_happen(engine: Engine) -> None:
    manager = engine.models
    manager.set_desired(MODEL, 1, cause=AuditCause.STARTUP, actor="poller")
    audit = manager.transitions.audit
    assert audit is not None
    audit.close()  # as if the disk were gone
    with pytest.raises(UnavailableError, match="audit trail"):
        manager.set_desired(MODEL, 2, cause=AuditCause.ALIAS_MOVED, actor="poller")
    assert serving(engine) == ("1", 1.0)
    assert tracked(engine) == {"1"}  # version 2 was started, then released


def test_a_model_comes_from_one_source(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "both" / "1").mkdir(parents=True)
    onnx.save(scaled(1.0), str(repo / "both" / "1" / "model.onnx"))
    engine = Engine.from_repository(repo)
    try:
        with pytest.raises(ConfigError, match="one source"):
            engine.models.follow(
                "both",
                reference="both@champion",
                alias="champion",
                origin="x",
                provider=lambda v: None,  # type: ignore[arg-type,return-value]
            )
        with pytest.raises(FailedPreconditionError, match="not pinned"):
            engine.models.unpin("both", "carol")
    finally:
        engine.close()
