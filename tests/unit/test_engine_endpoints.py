"""Endpoints through the in-process engine: a name resolves to a variant, every result says which
variant answered and carries its request id, declared endpoints are checked against the loaded
models, run-time changes persist, shadows and feedback reach the routing state, and Prometheus
series carry endpoint and variant labels."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from headrace.config import ServerSettings
from headrace.engine import Engine
from headrace.errors import (
    ConfigError,
    HeadraceError,
    InvalidArgumentError,
    NotFoundError,
    StatusCode,
    UnavailableError,
)
from helpers import onnx_models

X = {"x": np.linspace(-1, 1, 16, dtype=np.float32).reshape(2, 8)}
BAD = {"x": np.ones((1, 3), np.float32)}  # the wrong width: the client's mistake

SPLIT = """
[[endpoint]]
name = "fraud"
sticky_key = "user_id"
variants = [
  { name = "va", model = "a", weight = 50 },
  { name = "vb", model = "b", version = 1, weight = 50 },
]
"""


def build_repo(root: Path, endpoints: str | None = SPLIT) -> Path:
    repo = root / "models"
    for seed, name in enumerate(("a", "b", "c")):
        onnx_models.write_model(repo, name, onnx_models.mlp([8, 16, 2], seed=seed))
    onnx_models.write_model(repo, "narrow", onnx_models.mlp([4, 8, 2]))
    if endpoints is not None:
        (repo / "_endpoints.toml").write_text(endpoints)
    return repo


@pytest.fixture
def make_engine(tmp_path: Path) -> Iterator[Callable[..., Engine]]:
    engines: list[Engine] = []

    def make(repo: Path | None = None, **settings: object) -> Engine:
        engine = Engine(
            ServerSettings(model_repository=repo or build_repo(tmp_path), **settings)  # type: ignore[arg-type]
        )
        engine.load_repository()
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()


def direct(engine: Engine, model: str) -> np.ndarray:
    return engine.get_version(model).backend.run(dict(X), ["y"])[0]  # type: ignore[no-any-return]


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    """Poll state until ``condition`` holds (the bound only stops a broken test from hanging)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def test_a_plain_model_is_an_endpoint_of_one_variant(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine()
    first = engine.infer("a", X)
    second = engine.infer("a", X)
    assert first.parameters == {"headrace_variant": "a"}
    assert first.model_name == "a" and first.model_version == "1"
    # A request without an id gets one, unique per request; a given id is kept.
    assert first.id and second.id and first.id != second.id
    assert engine.infer("a", X, request_id="mine").id == "mine"
    assert engine.infer("a", X, version="1").parameters == {"headrace_variant": "a"}
    np.testing.assert_allclose(first.outputs["y"], direct(engine, "a"), rtol=1e-6)


def test_an_endpoint_answers_as_its_variants(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine()
    expected = {"va": direct(engine, "a"), "vb": direct(engine, "b")}
    seen: dict[str, int] = {}
    for _ in range(200):
        result = engine.infer("fraud", X)
        variant = result.parameters["headrace_variant"]
        seen[variant] = seen.get(variant, 0) + 1
        assert result.model_name == "fraud" and result.model_version == "1"
        np.testing.assert_allclose(result.outputs["y"], expected[variant], rtol=1e-6)
    assert set(seen) == {"va", "vb"}  # 2^-199 for either to be missed at 50/50


def test_pins_and_sticky_keys_choose_the_variant(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine()
    for variant in ("va", "vb"):
        for _ in range(20):
            pinned = engine.infer("fraud", X, parameters={"headrace_variant": variant})
            assert pinned.parameters["headrace_variant"] == variant
    for user in range(20):
        first = engine.infer("fraud", X, parameters={"user_id": f"u{user}"})
        for _ in range(5):
            again = engine.infer("fraud", X, parameters={"user_id": f"u{user}"})
            assert again.parameters == first.parameters
    with pytest.raises(InvalidArgumentError, match="no variant 'vz'"):
        engine.infer("fraud", X, parameters={"headrace_variant": "vz"})


def test_an_endpoint_chooses_versions_itself(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine()
    with pytest.raises(InvalidArgumentError, match="endpoint that chooses the version"):
        engine.infer("fraud", X, version="1")
    with pytest.raises(NotFoundError, match="unknown model 'nope'"):
        engine.infer("nope", X)


def test_infer_async_carries_variant_and_id(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine()
    result = asyncio.run(engine.infer_async("fraud", X, parameters={"headrace_variant": "vb"}))
    assert result.parameters == {"headrace_variant": "vb"} and result.id
    np.testing.assert_allclose(result.outputs["y"], direct(engine, "b"), rtol=1e-6)


def test_metadata_config_and_readiness_of_an_endpoint(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine()
    metadata = engine.metadata("fraud")
    assert metadata.name == "fraud" and metadata.versions == ()
    assert metadata.inputs == engine.metadata("a").inputs
    assert metadata.outputs == engine.metadata("a").outputs
    assert engine.model_config("fraud") is engine.get_version("a")
    assert engine.is_model_ready("fraud") and not engine.is_model_ready("fraud", "1")
    with pytest.raises(InvalidArgumentError):
        engine.metadata("fraud", "1")
    engine.unload_model("b")
    assert not engine.is_model_ready("fraud")


def test_a_missing_variant_is_the_servers_failure(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine()
    engine.unload_model("b")
    with pytest.raises(UnavailableError, match="endpoint 'fraud', variant 'vb'"):
        engine.infer("fraud", X, parameters={"headrace_variant": "vb"})
    report = engine.endpoints.report("fraud")
    assert [(v.name, v.requests, v.errors) for v in report.variants] == [
        ("va", 0, 0),
        ("vb", 1, 1),
    ]
    # A client's bad input is not the variant's failure.
    with pytest.raises(InvalidArgumentError):
        engine.infer("fraud", BAD, parameters={"headrace_variant": "va"})
    assert engine.endpoints.report("fraud").variants[0].requests == 0


@pytest.mark.parametrize(
    ("endpoints", "error", "match"),
    [
        (
            '[[endpoint]]\nname = "e"\nvariants = [{name = "x", model = "a"}, '
            '{name = "y", model = "narrow"}]\n',
            InvalidArgumentError,
            "variant 'y' does not match variant 'x': input 'x' has shape",
        ),
        (
            '[[endpoint]]\nname = "e"\nvariants = [{name = "x", model = "ghost"}]\n',
            NotFoundError,
            "endpoint 'e', variant 'x': unknown model 'ghost'",
        ),
        (
            '[[endpoint]]\nname = "e"\nvariants = [{name = "x", model = "a", wieght = 1}]\n',
            ConfigError,
            r"_endpoints.toml: 'endpoint\[0\].variants\[0\].wieght': unknown key",
        ),
    ],
)
def test_declared_endpoints_are_checked_at_load(
    tmp_path: Path, endpoints: str, error: type[HeadraceError], match: str
) -> None:
    engine = Engine(ServerSettings(model_repository=build_repo(tmp_path, endpoints)))
    try:
        with pytest.raises(error, match=match):
            engine.load_repository()
    finally:
        engine.close()


def test_endpoints_file_and_state_dir_settings(tmp_path: Path) -> None:
    repo = build_repo(tmp_path, endpoints=None)
    elsewhere = tmp_path / "endpoints.toml"
    elsewhere.write_text(SPLIT.replace('"fraud"', '"other"'))
    state = tmp_path / "state"
    engine = Engine(
        ServerSettings(model_repository=repo, endpoints_file=elsewhere, state_dir=state)
    )
    try:
        engine.load_repository()
        assert engine.endpoints.names() == ["other"]
        engine.endpoints.create({"name": "made", "variants": [{"name": "x", "model": "c"}]})
        assert (state / "endpoints.json").is_file()
        assert not (repo / ".headrace").exists()
    finally:
        engine.close()
    settings = ServerSettings(model_repository=repo)
    assert settings.resolved_endpoints_file() is None
    assert settings.resolved_state_dir() == repo / ".headrace"


def test_changes_persist_across_a_restart(tmp_path: Path) -> None:
    repo = build_repo(tmp_path)
    engine = Engine(ServerSettings(model_repository=repo))
    engine.load_repository()
    engine.endpoints.create(
        {
            "name": "bg",
            "strategy": "blue_green",
            "variants": [{"name": "blue", "model": "a"}, {"name": "green", "model": "b"}],
        }
    )
    engine.endpoints.switch("bg")
    engine.endpoints.update(
        {"name": "fraud", "variants": [{"name": "va", "model": "a"}, {"name": "vc", "model": "c"}]}
    )
    engine.close()

    again = Engine(ServerSettings(model_repository=repo))
    try:
        again.load_repository()
        assert again.endpoints.names() == ["bg", "fraud"]
        assert again.infer("bg", X).parameters == {"headrace_variant": "green"}
        variants = [v.name for v in again.endpoints.get("fraud").config.variants]
        assert variants == ["va", "vc"]
        again.endpoints.delete("bg")
    finally:
        again.close()
    third = Engine(ServerSettings(model_repository=repo))
    try:
        third.load_repository()
        assert third.endpoints.names() == ["fraud"]
    finally:
        third.close()


def test_shadows_of_blocking_and_async_callers(make_engine: Callable[..., Engine]) -> None:
    # Every copy is counted here: no time budget (it is tested with a fake clock in test_shadow).
    engine = make_engine(shadow_budget_share=1.0)
    engine.endpoints.create(
        {
            "name": "shadowed",
            "variants": [{"name": "main", "model": "a"}],
            "shadows": [{"name": "twin", "model": "a"}, {"name": "rival", "model": "c"}],
        }
    )
    for _ in range(10):
        assert engine.infer("shadowed", X).parameters == {"headrace_variant": "main"}

    def done() -> bool:
        return all(s.completed == 12 for s in engine.endpoints.report("shadowed").shadows)

    async def twice() -> None:
        for _ in range(2):
            await engine.infer_async("shadowed", X)
        # The async callers' shadow copies run on this loop: it must live until they are done
        # (a loop that closes first drops its copies, which the count would then miss).
        await asyncio.to_thread(wait_for, done, "12 shadow answers each")

    asyncio.run(twice())
    twin, rival = engine.endpoints.report("shadowed").shadows
    assert (twin.name, twin.agreement, twin.abs_delta_max) == ("twin", 1.0, 0.0)
    assert rival.name == "rival" and rival.abs_delta_max > 0 and rival.errors == 0


def test_feedback_through_the_engine(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine()
    engine.endpoints.create(
        {
            "name": "bandit",
            "strategy": "bandit",
            "variants": [{"name": "x", "model": "a"}, {"name": "y", "model": "b"}],
        }
    )
    answers = [engine.infer("bandit", X) for _ in range(40)]
    for result in answers:
        reward = 1.0 if result.parameters["headrace_variant"] == "y" else 0.0
        receipt = engine.feedback(result.id, reward=reward, endpoint="bandit")
        variant = result.parameters["headrace_variant"]
        assert (receipt.endpoint, receipt.variant) == ("bandit", variant)
    arms = engine.endpoints.report("bandit").state["arms"]
    assert arms["y"]["mean"] in (1.0, 0.0) and sum(a["rewards"] for a in arms.values()) == 40
    with pytest.raises(HeadraceError) as again:
        engine.feedback(answers[0].id, reward=1.0)
    assert again.value.code == StatusCode.ALREADY_EXISTS
    # A plain model's answers are not remembered unless asked for.
    plain = engine.infer("a", X)
    with pytest.raises(NotFoundError):
        engine.feedback(plain.id, reward=1.0)


def test_plain_model_feedback_when_asked_for(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(feedback_plain_models=True, feedback_max_entries=3)
    results = [engine.infer("a", X) for _ in range(4)]
    assert engine.feedback(results[-1].id, reward=0.5).variant == "a"
    with pytest.raises(NotFoundError, match="the last 3 answers are kept"):
        engine.feedback(results[0].id, reward=0.5)  # dropped for room: memory stays bounded
    assert engine.endpoints.report("a").variants[0].rewards.count == 1


def metric(engine: Engine, line_start: str) -> float:
    for line in engine.metrics.exposition().decode().splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {line_start}")


def test_prometheus_series_carry_endpoint_and_variant(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine()
    for _ in range(3):
        engine.infer("fraud", X, parameters={"headrace_variant": "vb"})
    engine.infer("a", X)
    labels = 'endpoint="fraud",model="b",variant="vb",version="1"'
    assert metric(engine, f"headrace_inference_request_success_total{{{labels}}}") == 3
    assert metric(engine, f"headrace_inference_request_duration_seconds_count{{{labels}}}") == 3
    plain = 'endpoint="a",model="a",variant="a",version="1"'
    assert metric(engine, f"headrace_inference_request_success_total{{{plain}}}") == 1
    with pytest.raises(InvalidArgumentError):
        engine.infer("fraud", BAD, parameters={"headrace_variant": "vb"})
    failed = f'headrace_inference_request_failure_total{{code="INVALID_ARGUMENT",{labels}}}'
    assert metric(engine, failed) == 1


def test_routing_gauges_and_event_counters(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine()
    engine.endpoints.create(
        {
            "name": "bandit",
            "strategy": "bandit",
            "variants": [{"name": "x", "model": "a"}, {"name": "y", "model": "b"}],
            "bandit": {"algorithm": "epsilon_greedy", "epsilon": 0.2},
        }
    )
    engine.endpoints.create(
        {
            "name": "canary",
            "strategy": "canary",
            "variants": [{"name": "base", "model": "a"}, {"name": "cand", "model": "b"}],
        }
    )
    engine.endpoints.create(
        {
            "name": "shadowed",
            "variants": [{"name": "main", "model": "a"}],
            "shadows": [{"name": "twin", "model": "a"}],
        }
    )
    for variant, reward in (("x", 0.0), ("y", 1.0)):
        result = engine.infer("bandit", X, parameters={"headrace_variant": variant})
        engine.feedback(result.id, reward=reward)
    # epsilon-greedy: the best arm gets 1 - epsilon + epsilon / 2, the other epsilon / 2.
    gauge = 'headrace_bandit_allocation{endpoint="bandit",variant="%s"}'
    assert metric(engine, gauge % "y") == pytest.approx(0.9)
    assert metric(engine, gauge % "x") == pytest.approx(0.1)
    share = 'headrace_canary_candidate_percent{endpoint="canary",variant="cand"}'
    assert metric(engine, share) == 5
    engine.endpoints.rollback("canary")
    rollbacks = 'headrace_endpoint_rollbacks_total{endpoint="canary",variant="cand"}'
    assert metric(engine, rollbacks) == 1
    assert metric(engine, share) == 0
    assert metric(engine, 'headrace_endpoint_events_total{endpoint="canary",kind="created"}') == 1
    engine.infer("shadowed", X)
    wait_for(
        lambda: engine.endpoints.report("shadowed").shadows[0].completed == 1, "a shadow answer"
    )
    assert metric(engine, 'headrace_shadow_agreement{endpoint="shadowed",shadow="twin"}') == 1.0
    offered = 'headrace_shadow_requests_total{endpoint="shadowed",outcome="offered",shadow="twin"}'
    assert metric(engine, offered) == 1


def test_label_quality_gauge(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine()
    engine.endpoints.create(
        {
            "name": "labelled",
            "variants": [{"name": "x", "model": "a"}],
            "quality": {"kind": "classifier", "labels": True},
        }
    )
    result = engine.infer("labelled", X)
    predicted = result.outputs["y"].argmax(axis=-1)
    truth = predicted.copy()
    truth[0] = 1 - truth[0]  # one of the two rows wrong
    engine.feedback(result.id, label=truth)
    gauge = 'headrace_variant_quality{endpoint="labelled",kind="classifier",variant="x"}'
    assert metric(engine, gauge) == 0.5
    assert metric(engine, 'headrace_variant_quality_rows{endpoint="labelled",variant="x"}') == 2


class _NativeSpy:
    """Stands in for an OnnxBackend's native session: records how ``run`` was called and the
    calling thread's policy while Python code runs there (which holds the GIL)."""

    def __init__(self, native: Any) -> None:
        self._native = native
        self.calls: list[tuple[bool, int]] = []

    def run(self, feed: Any, names: Any, idle_priority: bool = False) -> Any:
        self.calls.append((idle_priority, os.sched_getscheduler(0)))
        return self._native.run(feed, names, idle_priority=idle_priority)


@pytest.mark.parametrize("native", [True, False], ids=["native", "python-api"])
def test_shadow_copies_run_on_idle_priority_threads_outside_the_batcher(
    tmp_path: Path, native: bool
) -> None:
    """A shadow copy's model runs while its thread is scheduled only when the CPU is otherwise
    idle (SCHED_IDLE), not through the batcher whose worker threads run client batches. The
    thread holds no GIL at idle priority: with the core's ONNX Runtime session the core lowers
    it only while the GIL is released (the Python around that call, the GIL held, sees it at
    normal priority; what the core does is test_idle_priority_is_held_only_without_the_gil);
    on onnxruntime's Python API, which cannot be lowered from inside, the run alone is lowered.
    Either way the thread is back at normal priority after the run."""
    repo = build_repo(tmp_path, None)
    onnx_models.write_model(
        repo, "c", onnx_models.mlp([8, 16, 2], seed=2), toml="max_batch_size = 8\n"
    )
    settings = ServerSettings(
        model_repository=repo, shadow_budget_share=1.0, native_onnxruntime=native
    )
    engine = Engine(settings)
    try:
        engine.load_repository()
        served = engine.get_version("c")
        backend: Any = served.backend
        assert (backend.run_idle is not None) is native
        spy = _NativeSpy(backend._native) if native else None
        if spy is not None:
            backend._native = spy
        real_copy, real_batched = served.run_copy, served.infer_async
        real_run = backend.run
        python_runs: list[int] = []
        around_run: list[int] = []
        batched: list[int] = []

        def spy_run(*args: Any, **kw: Any) -> Any:
            python_runs.append(os.sched_getscheduler(0))
            return real_run(*args, **kw)

        def spy_copy(*args: Any, **kw: Any) -> Any:
            around_run.append(os.sched_getscheduler(0))
            answer = real_copy(*args, **kw)
            around_run.append(os.sched_getscheduler(0))
            return answer

        async def spy_batched(*args: Any, **kw: Any) -> Any:
            batched.append(1)
            return await real_batched(*args, **kw)

        backend.run = spy_run
        served.run_copy = spy_copy  # type: ignore[method-assign]
        served.infer_async = spy_batched  # type: ignore[method-assign]
        engine.endpoints.create(
            {
                "name": "shadowed",
                "variants": [{"name": "main", "model": "a"}],
                "shadows": [{"name": "low", "model": "c"}],
            }
        )
        engine.infer("shadowed", X)
        wait_for(lambda: engine.endpoints.report("shadowed").shadows[0].completed == 1, "a copy")
        assert batched == []
        if spy is not None:
            # the core was asked to lower the thread; Python never ran at idle priority
            assert spy.calls == [(True, os.SCHED_OTHER)] and python_runs == []
        else:
            assert python_runs == [os.SCHED_IDLE]
        assert around_run == [os.SCHED_OTHER, os.SCHED_OTHER]
        # the copy is counted in the shadow model's request statistics, as a batched one was
        assert served.statistics().success_count == 1
    finally:
        engine.close()


def test_idle_priority_is_held_only_without_the_gil() -> None:
    """The core's path for a shadow copy's model (run_without_gil, as OrtModel.run takes it):
    the thread is under SCHED_IDLE while the work runs, does not hold the GIL then, and is back
    at its own policy before Python runs again; without idle_priority nothing changes."""
    from headrace._core import testing

    before = os.sched_getscheduler(0)
    assert testing.probe_without_gil(True) == (os.SCHED_IDLE, False, before)
    assert testing.probe_without_gil(False) == (before, False, before)
    assert os.sched_getscheduler(0) == before
