"""canary: the ramp, its gates, rollback and promotion, driven with a fake clock and seeded
failures; nothing sleeps."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from headrace.routing import Endpoints, RoutingEvent
from headrace.routing.canary import (
    ArmWindow,
    CanaryAction,
    CanaryView,
    decide,
)
from headrace.routing.config import CanaryConfig
from unit.routing.routing_support import FakeClock, MakeEndpoints, endpoint

MS = 1_000_000


def canary(**settings: Any) -> Any:
    return endpoint(
        name="fraud",
        strategy="canary",
        variants=[{"name": "base", "model": "gbm"}, {"name": "cand", "model": "mlp"}],
        canary={"steps": [5, 25, 50, 100], "step_s": 60, "min_requests": 50, **settings},
    )


def serve(
    routing: Endpoints,
    clock: FakeClock,
    requests: int,
    *,
    candidate_error_rate: float = 0.0,
    candidate_latency_ns: int = 10 * MS,
    seconds_between: float = 0.01,
    rng: random.Random,
) -> Counter[str]:
    """Send requests through resolve/complete the way the engine does; count who served."""
    served: Counter[str] = Counter()
    for _ in range(requests):
        route = routing.resolve("fraud")
        served[route.variant] += 1
        if route.variant == "cand":
            ok = rng.random() >= candidate_error_rate
            latency = candidate_latency_ns
        else:
            ok, latency = True, 10 * MS
        routing.complete(route, ok=ok, latency_ns=latency)
        clock.advance(seconds_between)
    return served


def percent(routing: Endpoints) -> float:
    return float(routing.report("fraud").state["candidate_percent"])


def test_a_healthy_candidate_ramps_through_every_step_and_is_promoted(
    make_endpoints: MakeEndpoints, clock: FakeClock
) -> None:
    events: list[RoutingEvent] = []
    routing = make_endpoints(canary(), events=events)
    rng = random.Random(1)
    assert percent(routing) == 5
    seen = []
    for _ in range(4):
        # 60 s of traffic at 100 requests/s: each step is due and the candidate has its 50
        serve(routing, clock, 6_100, candidate_error_rate=0.002, rng=rng)
        seen.append(percent(routing))
    assert seen == [25, 50, 100, 100]
    kinds = [e.kind for e in events]
    assert kinds == ["step", "step", "promotion"]
    assert events[-1].variant == "cand"
    assert events[-1].fields["candidate_percent"] == 100
    state = routing.report("fraud").state
    assert state["canary_state"] == "promoted"
    assert serve(routing, clock, 500, rng=rng) == Counter({"cand": 500})


def test_a_failing_candidate_is_rolled_back_to_zero(
    make_endpoints: MakeEndpoints, clock: FakeClock
) -> None:
    events: list[RoutingEvent] = []
    routing = make_endpoints(canary(), events=events)
    rng = random.Random(2)
    served = serve(routing, clock, 3_000, candidate_error_rate=0.2, rng=rng)
    assert served["cand"] > 0
    assert [e.kind for e in events] == ["rollback"]
    assert "error rate" in events[0].detail and "max_error_rate_delta" in events[0].detail
    assert percent(routing) == 0
    assert routing.report("fraud").state["canary_state"] == "rolled_back"
    # from now on the baseline serves everything, whatever the clock does
    clock.advance(3_600)
    assert serve(routing, clock, 2_000, rng=rng) == Counter({"base": 2_000})
    # and the report's event trail keeps the rollback for the audit
    assert [e.kind for e in routing.report("fraud").events] == ["rollback"]


def test_gates_are_judged_every_check_every_outcomes_or_after_the_check_interval(
    make_endpoints: MakeEndpoints, clock: FakeClock
) -> None:
    """A failing candidate is rolled back at the first judgement: after CHECK_EVERY outcomes at
    high traffic (no clock passes), or at the first outcome CHECK_INTERVAL_NS after the last
    judgement at low traffic -- never later."""
    from headrace.routing.canary import CHECK_EVERY, CHECK_INTERVAL_NS

    # min_requests 1: the gate can judge from the first failure on
    busy = make_endpoints(canary(min_requests=1, steps=[50, 100]))
    rng = random.Random(3)
    serve(busy, clock, CHECK_EVERY - 1, candidate_error_rate=1.0, seconds_between=0, rng=rng)
    assert percent(busy) == 50  # not judged yet
    serve(busy, clock, 1, candidate_error_rate=1.0, seconds_between=0, rng=rng)
    assert percent(busy) == 0

    quiet = make_endpoints(canary(min_requests=1, steps=[50, 100]))
    served = Counter[str]()
    while served["cand"] == 0:  # requests 1 ms apart until the candidate has failed once
        served += serve(quiet, clock, 1, candidate_error_rate=1.0, seconds_between=0.001, rng=rng)
    assert sum(served.values()) < CHECK_EVERY and percent(quiet) == 50
    clock.advance(CHECK_INTERVAL_NS / 1e9)
    serve(quiet, clock, 1, candidate_error_rate=1.0, seconds_between=0, rng=rng)
    assert percent(quiet) == 0


def test_the_rollback_is_persisted(
    make_endpoints: MakeEndpoints, clock: FakeClock, tmp_path: Any
) -> None:
    config = canary()
    routing = make_endpoints(config, state_dir=tmp_path)
    serve(routing, clock, 3_000, candidate_error_rate=0.3, rng=random.Random(3))
    assert percent(routing) == 0
    assert routing.persist() is True
    assert routing.persist() is False  # nothing changed since
    restarted = make_endpoints(config, state_dir=tmp_path)
    assert percent(restarted) == 0


def test_a_slow_candidate_fails_the_p99_gate(
    make_endpoints: MakeEndpoints, clock: FakeClock
) -> None:
    events: list[RoutingEvent] = []
    routing = make_endpoints(canary(), events=events)
    serve(routing, clock, 3_000, candidate_latency_ns=20 * MS, rng=random.Random(4))
    assert [e.kind for e in events] == ["rollback"]
    assert "p99" in events[0].detail


def test_a_step_may_be_due_after_a_number_of_requests(
    make_endpoints: MakeEndpoints, clock: FakeClock
) -> None:
    routing = make_endpoints(canary(step_s=0, step_requests=2_000))
    rng = random.Random(5)
    serve(routing, clock, 1_900, seconds_between=0, rng=rng)
    assert percent(routing) == 5
    serve(routing, clock, 200, seconds_between=0, rng=rng)
    assert percent(routing) == 25


def test_a_step_waits_for_enough_candidate_requests(
    make_endpoints: MakeEndpoints, clock: FakeClock
) -> None:
    routing = make_endpoints(canary(min_requests=400))
    rng = random.Random(6)
    # 61 s pass but the candidate (5 %) has seen only ~300 requests: hold
    serve(routing, clock, 6_100, rng=rng)
    assert percent(routing) == 5
    serve(routing, clock, 3_000, rng=rng)
    assert percent(routing) == 25


def test_rewards_gate_the_candidate(make_endpoints: MakeEndpoints, clock: FakeClock) -> None:
    events: list[RoutingEvent] = []
    routing = make_endpoints(canary(max_reward_drop=0.05, min_rewards=30), events=events)
    rng = random.Random(7)
    for i in range(4_000):
        route = routing.resolve("fraud")
        routing.complete(route, ok=True, latency_ns=10 * MS, request_id=str(i))
        chance = 0.5 if route.variant == "cand" else 0.8
        routing.feedback(str(i), reward=float(rng.random() < chance))
        clock.advance(0.001)
    assert [e.kind for e in events] == ["rollback"]
    assert "mean reward" in events[0].detail


def test_sticky_keys_on_the_candidate_stay_there_as_it_ramps(
    make_endpoints: MakeEndpoints, clock: FakeClock
) -> None:
    config = endpoint(
        name="fraud",
        strategy="canary",
        sticky_key="user",
        variants=[{"name": "base", "model": "gbm"}, {"name": "cand", "model": "mlp"}],
        canary={"steps": [5, 25, 50, 100], "step_requests": 1_000, "min_requests": 10},
    )
    routing = make_endpoints(config)
    users = [{"user": f"u{i}"} for i in range(4_000)]
    on_candidate: set[str] = set()
    shares = []
    for _ in range(3):
        chosen = {u["user"]: routing.resolve("fraud", "", u).variant for u in users}
        now = {k for k, v in chosen.items() if v == "cand"}
        assert on_candidate <= now
        on_candidate = now
        shares.append(len(now) / len(users))
        for _ in range(1_100):  # traffic without a key moves the ramp on (checks every 64)
            routing.complete(routing.resolve("fraud"), ok=True, latency_ns=MS)
    assert shares[0] == pytest.approx(0.05, abs=0.015)
    assert shares[1] == pytest.approx(0.25, abs=0.03)
    assert shares[2] == pytest.approx(0.50, abs=0.03)


def test_an_operator_can_roll_back(make_endpoints: MakeEndpoints) -> None:
    events: list[RoutingEvent] = []
    routing = make_endpoints(canary(), events=events)
    event = routing.rollback("fraud")
    assert event.kind == "rollback" and "operator" in event.detail
    assert percent(routing) == 0
    assert events == [event]


def test_updating_the_candidate_restarts_the_ramp(make_endpoints: MakeEndpoints) -> None:
    routing = make_endpoints(canary())
    routing.rollback("fraud")
    fresh = endpoint(
        name="fraud",
        strategy="canary",
        variants=[{"name": "base", "model": "gbm"}, {"name": "cand2", "model": "mlp2"}],
    )
    routing.update(fresh)
    assert percent(routing) == 5


def test_a_new_ramp_judges_only_its_own_steps_outcomes(
    make_endpoints: MakeEndpoints, clock: FakeClock
) -> None:
    """Step windows are the variants' statistics since the step began. New canary settings on
    the same variants start a new ramp: the variants' statistics carry over (the report keeps
    them), but failures counted before the update are not this step's."""
    lenient = canary(max_error_rate_delta=1.0)
    routing = make_endpoints(lenient)
    rng = random.Random(4)
    serve(routing, clock, 3_000, candidate_error_rate=0.5, rng=rng)  # fails a lot, tolerated
    assert percent(routing) == 5
    routing.update(canary(max_error_rate_delta=0.01))  # strict now: a new ramp
    assert routing.report("fraud").variants[1].errors > 0  # the history is kept...
    serve(routing, clock, 6_100, rng=rng)  # ...and a healthy candidate passes its 60 s step
    assert percent(routing) == 25
    serve(routing, clock, 3_000, candidate_error_rate=0.5, rng=rng)  # failing again: judged
    assert percent(routing) == 0


def window(requests: int, errors: int = 0, p99_ms: float = 10, rewards: int = 0, mean: float = 0):
    return ArmWindow(requests, errors, p99_ms * MS, rewards, mean)


@pytest.mark.parametrize(
    ("baseline", "candidate", "elapsed_s", "action"),
    [
        (window(1000), window(10), 120, CanaryAction.HOLD),  # too few candidate requests
        (window(1000), window(100), 30, CanaryAction.HOLD),  # step not over
        (window(1000), window(100), 60, CanaryAction.ADVANCE),
        (window(1000, 5), window(100, 1), 60, CanaryAction.ADVANCE),  # 1 % vs 0.5 %: within 0.01
        (window(1000), window(100, 2), 10, CanaryAction.ROLLBACK),  # 2 % errors vs 0
        (window(1000), window(100, p99_ms=16), 10, CanaryAction.ROLLBACK),
        (window(1000), window(100, p99_ms=14), 60, CanaryAction.ADVANCE),
        (window(10), window(100, p99_ms=100), 60, CanaryAction.ADVANCE),  # no baseline p99 yet
    ],
)
def test_decide(
    baseline: ArmWindow, candidate: ArmWindow, elapsed_s: float, action: CanaryAction
) -> None:
    settings = CanaryConfig(steps=(5, 25, 50, 100), step_s=60, min_requests=50)
    view = CanaryView(0, 0, baseline.requests + candidate.requests, baseline, candidate)
    assert decide(settings, view, int(elapsed_s * 1e9)).action is action


def test_decide_promotes_from_the_step_before_100() -> None:
    settings = CanaryConfig(steps=(5, 25, 50, 100), step_s=60, min_requests=50)
    view = CanaryView(2, 0, 2000, window(1000), window(1000))
    assert decide(settings, view, 61 * 10**9).action is CanaryAction.PROMOTE
    view = CanaryView(1, 0, 2000, window(1000), window(1000))
    assert decide(settings, view, 61 * 10**9).action is CanaryAction.ADVANCE


def test_a_canary_created_at_run_time_keeps_its_settings_across_a_restart(
    make_endpoints: MakeEndpoints, tmp_path: Any
) -> None:
    routing = make_endpoints(state_dir=tmp_path)
    created = routing.create(
        {
            "name": "fraud",
            "strategy": "canary",
            "variants": [{"name": "base", "model": "gbm"}, {"name": "cand", "model": "mlp"}],
            "canary": {"steps": [10, 100], "step_s": 0, "step_requests": 300, "max_p99_ratio": 0},
        }
    )
    restarted = make_endpoints(state_dir=tmp_path)
    assert restarted.get("fraud").config == created.config
    assert restarted.get("fraud").config.canary_settings().step_s == 0
