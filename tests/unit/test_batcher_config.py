"""BatcherConfig holds every batching tuning constant (csrc/batching/batcher_config.h): defaults as
before, each validated, and each one moves the decisions it is documented to move (the pure policy
and its cost model through _core.testing.PolicyHarness, with a fake clock; inline runs through a
real Batcher, whose outcome is decided by state, not time)."""

from __future__ import annotations

import math
import select
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from headrace import _core
from headrace.backends.onnx import native_library
from headrace.errors import InvalidArgumentError
from helpers.onnx_models import mlp

US = 1_000
MS = 1_000_000

DEFAULTS: dict[str, Any] = {
    "max_batch_size": 8,
    "instances": 1,
    "max_queue_delay_us": 0,
    "auto_delay": False,
    "preferred_batch_sizes": [],
    "max_queue_size": 0,
    "priority_levels": 0,
    "default_priority_level": 0,
    "default_timeout_us": 0,
    "latency_target_us": 0,
    "inline_max_batch_us": 100,
    "inline_min_cost_samples": 16,
    "saturated_enter_busy_fraction": 0.85,
    "saturated_leave_busy_fraction": 0.65,
    "saturated_batch_requests": 6.0,
    "saturated_max_wait_us": 2000,
    "lull_arrival_intervals": 3.0,
    "keep_waiting_yield": 0.5,
    "probe_every_arrivals": 256,
    "yield_gain_weight": 0.5,
    "yield_loss_weight": 0.1,
    "arrival_interval_weight": 0.2,
}


def test_defaults_are_unchanged_and_every_field_is_a_keyword() -> None:
    config = _core.BatcherConfig()
    assert {name: getattr(config, name) for name in DEFAULTS} == DEFAULTS
    config.validate()
    moved = _core.BatcherConfig(saturated_max_wait_us=500, keep_waiting_yield=0.75)
    assert moved.saturated_max_wait_us == 500 and moved.keep_waiting_yield == 0.75
    assert moved.max_batch_size == 8  # not given: the default


def test_unknown_settings_and_positional_arguments_are_refused() -> None:
    with pytest.raises(TypeError, match="no setting 'inline_max_ns'"):
        _core.BatcherConfig(inline_max_ns=5)
    with pytest.raises(TypeError, match="no setting 'validate'"):
        _core.BatcherConfig(validate=1)
    with pytest.raises(TypeError):
        _core.BatcherConfig(8)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("settings", "names"),
    [
        ({"inline_max_batch_us": -1}, "inline_max_batch_us"),
        ({"inline_min_cost_samples": -1}, "inline_min_cost_samples"),
        ({"inline_min_cost_samples": 65}, "inline_min_cost_samples"),
        ({"saturated_enter_busy_fraction": 0.0}, "saturated_enter_busy_fraction"),
        ({"saturated_enter_busy_fraction": 1.5}, "saturated_enter_busy_fraction"),
        ({"saturated_enter_busy_fraction": math.nan}, "saturated_enter_busy_fraction"),
        ({"saturated_leave_busy_fraction": 0.9}, "saturated_leave_busy_fraction"),
        ({"saturated_leave_busy_fraction": 0.0}, "saturated_leave_busy_fraction"),
        ({"saturated_batch_requests": 0.5}, "saturated_batch_requests"),
        ({"saturated_max_wait_us": -1}, "saturated_max_wait_us"),
        ({"lull_arrival_intervals": 0.0}, "lull_arrival_intervals"),
        ({"keep_waiting_yield": 1.5}, "keep_waiting_yield"),
        ({"probe_every_arrivals": 0}, "probe_every_arrivals"),
        ({"yield_gain_weight": 0.0}, "yield_gain_weight"),
        ({"yield_loss_weight": 2.0}, "yield_loss_weight"),
        ({"arrival_interval_weight": -0.1}, "arrival_interval_weight"),
    ],
)
def test_every_tuning_field_is_validated(settings: dict[str, Any], names: str) -> None:
    with pytest.raises(InvalidArgumentError, match=names):
        _core.BatcherConfig(**settings).validate()
    with pytest.raises(InvalidArgumentError, match=names):  # and a policy refuses it too
        _core.testing.PolicyHarness(_core.BatcherConfig(**settings))


# --- the auto delay's knobs, on the pure policy ---


def saturated(**settings: Any) -> _core.testing.PolicyHarness:
    """A busy server: arrivals every 400 us up to 4 ms, a cheap fitted batch cost (the
    unsaturated rule would never wait), and waits that have found company."""
    policy = _core.testing.PolicyHarness(
        _core.BatcherConfig(max_batch_size=64, auto_delay=True, **settings)
    )
    for rows in (1, 2, 4, 8, 3):
        policy.observe_batch(rows, 10 * US * rows + 10 * US)
    for arrival in range(0, 4 * MS, 400 * US):
        policy.observe_arrival(arrival)
    policy.set_saturated(True)
    policy.observe_companion_wait(8)
    policy.add(1, 1, enqueue_ns=4 * MS)  # also an arrival: the last one, at 4 ms
    return policy


def wait_until(policy: _core.testing.PolicyHarness) -> int | None:
    decision = policy.decide(4 * MS)
    until: int | None = decision["wait_until_ns"]
    return until


def test_saturated_wait_lasts_until_the_lull_by_default() -> None:
    # min(2 ms cap, 6 intervals = 2.4 ms) from the oldest, or 3 quiet intervals: the lull is first.
    assert wait_until(saturated()) == 4 * MS + 1200 * US


def test_saturated_max_wait_us_caps_the_wait() -> None:
    assert wait_until(saturated(saturated_max_wait_us=500)) == 4 * MS + 500 * US


def test_saturated_batch_requests_sets_how_many_intervals_a_wait_gathers() -> None:
    assert wait_until(saturated(saturated_batch_requests=2.0)) == 4 * MS + 800 * US


def test_lull_arrival_intervals_ends_a_wait_sooner() -> None:
    assert wait_until(saturated(lull_arrival_intervals=1.0)) == 4 * MS + 400 * US


def test_keep_waiting_yield_decides_whether_waits_go_on() -> None:
    # One success put wait_yield at 0.5 (yield_gain_weight); a stricter bar stops the waits.
    assert saturated().cost()["wait_yield"] == pytest.approx(0.5)
    assert saturated(keep_waiting_yield=0.6).decide(4 * MS)["run"] == [1]


def test_probe_every_arrivals_sets_when_a_wait_is_tried_again() -> None:
    policy = _core.testing.PolicyHarness(_core.BatcherConfig(probe_every_arrivals=4))
    policy.observe_companion_wait(1)  # found nobody: no try due
    for arrival in range(3):
        policy.observe_arrival(arrival * US)
        assert not policy.cost()["probe_due"]
    policy.observe_arrival(3 * US)
    assert policy.cost()["probe_due"]


def test_yield_weights_set_how_fast_waiting_switches_on_and_off() -> None:
    policy = _core.testing.PolicyHarness(
        _core.BatcherConfig(yield_gain_weight=0.25, yield_loss_weight=0.5)
    )
    policy.observe_companion_wait(3)
    assert policy.cost()["wait_yield"] == pytest.approx(0.25)
    policy.observe_companion_wait(1)
    assert policy.cost()["wait_yield"] == pytest.approx(0.125)


@pytest.mark.parametrize(("weight", "expected_ns"), [(0.2, 120 * US), (0.5, 150 * US)])
def test_arrival_interval_weight_sets_how_fast_the_rate_is_followed(
    weight: float, expected_ns: int
) -> None:
    policy = _core.testing.PolicyHarness(_core.BatcherConfig(arrival_interval_weight=weight))
    for arrival in (0, 100 * US, 300 * US):  # intervals 100 us, then 200 us
        policy.observe_arrival(arrival)
    assert policy.cost()["arrival_interval_ns"] == pytest.approx(expected_ns)


@pytest.mark.parametrize(
    ("settings", "readings"),
    [
        ({}, [(0.80, False), (0.86, True), (0.70, True), (0.64, False)]),
        (
            {"saturated_enter_busy_fraction": 0.5, "saturated_leave_busy_fraction": 0.3},
            [(0.45, False), (0.55, True), (0.35, True), (0.25, False)],
        ),
    ],
)
def test_saturation_turns_on_and_off_with_hysteresis(
    settings: dict[str, Any], readings: list[tuple[float, bool]]
) -> None:
    policy = _core.testing.PolicyHarness(_core.BatcherConfig(**settings))
    for busy_fraction, saturated_now in readings:
        assert policy.observe_load(busy_fraction) is saturated_now
        assert policy.cost()["busy_fraction"] == pytest.approx(busy_fraction)


# --- inline runs, decided by the core ---


def inline_outcomes(runner: Any, count: int, **settings: Any) -> list[bool]:
    """Whether each of `count` lone requests ran on the submitting thread."""
    queue = _core.CompletionQueue()
    batcher = _core.Batcher("m", _core.BatcherConfig(**settings), runner, queue)
    try:
        outcomes = []
        for _ in range(count):
            ticket, here = batcher.submit_or_run([np.ones((1, 4), np.float32)])
            if not here:
                readable, _, _ = select.select([queue.fd], [], [], 10.0)
                assert readable, "no completion"
            ((done, code, message, _),) = queue.drain()
            assert done == ticket and code == 0, message
            outcomes.append(here)
        return outcomes
    finally:
        batcher.shutdown(drain=False)


@pytest.fixture
def native_runner(tmp_path: Path) -> Any:
    path = tmp_path / "model.onnx"
    onnx.save(mlp([4, 8, 2]), str(path))
    library = native_library()
    assert library is not None
    return _core.OrtModel(library, str(path), 1, 1).runner(["x"], ["y"])


def test_inline_runs_follow_the_config(native_runner: Any) -> None:
    # Any batch is cheap enough; one fitted cost sample is enough: from the second request on.
    generous = {"inline_max_batch_us": 10_000_000, "inline_min_cost_samples": 1}
    assert inline_outcomes(native_runner, 6, **generous) == [False] + [True] * 5
    never = {**generous, "inline_max_batch_us": 0}
    assert not any(inline_outcomes(native_runner, 6, **never))


def test_python_runners_never_run_inline() -> None:
    def double(inputs: list[Any]) -> list[Any]:
        return [inputs[0] * 2]

    settings = {"inline_max_batch_us": 10_000_000, "inline_min_cost_samples": 0}
    assert not any(inline_outcomes(double, 6, **settings))
