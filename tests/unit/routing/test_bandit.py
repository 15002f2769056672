"""bandit: Thompson (Beta-Bernoulli and Gaussian), epsilon-greedy and UCB1 over an endpoint's
variants, learning from feedback by request id. Every simulation is seeded; rewards are drawn
once per request and shared by every algorithm (common random numbers), so they face the same
environment."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from headrace.errors import InvalidArgumentError
from headrace.routing import Endpoints
from headrace.routing.bandit import epsilon_greedy, greedy_arm, thompson_bernoulli, ucb1
from unit.routing.routing_support import MakeEndpoints, endpoint

REQUESTS = 20_000
LAST = 5_000
RATES = (0.05, 0.07)


def bandit_endpoint(algorithm: str | None, reward: str = "bernoulli") -> object:
    arms = [{"name": "a", "model": "model_a"}, {"name": "b", "model": "model_b"}]
    if algorithm is None:  # uniform: a 50/50 split
        return endpoint(name="e", variants=arms)
    return endpoint(
        name="e",
        strategy="bandit",
        variants=arms,
        bandit={"algorithm": algorithm, "epsilon": 0.1, "reward": reward},
    )


def simulate(algorithm: str | None, seed: int) -> tuple[float, float]:
    """(expected regret, share of the last 5,000 requests sent to the better arm)."""
    routing = Endpoints([bandit_endpoint(algorithm)], seed=f"sim{seed}")  # type: ignore[list-item]
    draws = random.Random(seed)
    uniforms = [draws.random() for _ in range(REQUESTS)]
    regret, better_late = 0.0, 0
    for i in range(REQUESTS):
        route = routing.resolve("e")
        arm = 0 if route.variant == "a" else 1
        routing.complete(route, ok=True, latency_ns=1_000_000, request_id=f"r{i}")
        routing.feedback(f"r{i}", reward=float(uniforms[i] < RATES[arm]))
        regret += max(RATES) - RATES[arm]
        if i >= REQUESTS - LAST and arm == 1:
            better_late += 1
    return regret, better_late / LAST


def test_thompson_finds_the_better_arm_with_less_regret_than_uniform_and_epsilon_greedy() -> None:
    seeds = range(4)
    thompson = [simulate("thompson", s) for s in seeds]
    uniform = [simulate(None, s) for s in seeds]
    greedy = [simulate("epsilon_greedy", s) for s in seeds]
    for (regret, late_share), (uniform_regret, _) in zip(thompson, uniform, strict=True):
        assert late_share >= 0.80
        assert regret < uniform_regret
    assert sum(r for r, _ in thompson) < sum(r for r, _ in greedy)
    # uniform's regret is what theory says: half the requests lose 0.02
    assert sum(r for r, _ in uniform) / len(seeds) == pytest.approx(0.01 * REQUESTS, rel=0.05)


@pytest.mark.parametrize("algorithm", ["ucb1", "epsilon_greedy"])
def test_other_algorithms_beat_uniform(algorithm: str) -> None:
    regret, late_share = simulate(algorithm, seed=11)
    uniform_regret, _ = simulate(None, seed=11)
    assert regret < uniform_regret
    assert late_share > 0.5


def test_gaussian_thompson_prefers_the_higher_mean(make_endpoints: MakeEndpoints) -> None:
    routing = make_endpoints(bandit_endpoint("thompson", reward="gaussian"))
    rng = np.random.default_rng(3)
    means = {"a": 1.0, "b": 1.3}
    late = []
    for i in range(4_000):
        route = routing.resolve("e")
        routing.complete(route, ok=True, latency_ns=1_000_000, request_id=str(i))
        routing.feedback(str(i), reward=float(rng.normal(means[route.variant], 1.0)))
        if i >= 3_000:
            late.append(route.variant)
    assert late.count("b") / len(late) >= 0.9
    arms = routing.report("e").state["arms"]
    assert arms["b"]["mean"] == pytest.approx(1.3, abs=0.1)


def test_a_bernoulli_bandit_refuses_rewards_outside_0_1(make_endpoints: MakeEndpoints) -> None:
    routing = make_endpoints(bandit_endpoint("thompson"))
    route = routing.resolve("e")
    routing.complete(route, ok=True, latency_ns=1, request_id="x")
    with pytest.raises(InvalidArgumentError, match=r"outside \[0, 1\]"):
        routing.feedback("x", reward=2.0)
    routing.feedback("x", reward=1.0)  # the refused reward counted nothing
    assert routing.report("e").state["arms"][route.variant]["rewards"] == 1


def test_bandit_state_survives_a_restart(make_endpoints: MakeEndpoints, tmp_path: Path) -> None:
    config = bandit_endpoint("epsilon_greedy")
    routing = make_endpoints(config, state_dir=tmp_path)
    for i in range(200):
        route = routing.resolve("e")
        routing.complete(route, ok=True, latency_ns=1, request_id=str(i))
        routing.feedback(str(i), reward=1.0 if route.variant == "b" else 0.0)
    assert routing.persist() is True
    restarted = make_endpoints(config, state_dir=tmp_path)
    assert restarted.report("e").state["arms"] == routing.report("e").state["arms"]
    picks = [restarted.resolve("e").variant for _ in range(1_000)]
    assert picks.count("b") > 900  # greedy on the restored means (epsilon 0.1 explores)


def test_pure_choices() -> None:
    assert greedy_arm([3, 0, 5], [0.9, 0.0, 0.5]) == 1  # never rewarded: try it
    assert greedy_arm([3, 4, 5], [0.2, 0.9, 0.5]) == 1
    assert epsilon_greedy(1, 3, 0.1, u_explore=0.5, u_arm=0.0) == 1
    assert epsilon_greedy(1, 3, 0.1, u_explore=0.05, u_arm=0.99) == 2
    assert ucb1([5, 0], [0.9, 0.0], 2**0.5) == 1
    # equal means: the less tried arm has the wider bound
    assert ucb1([100, 10], [0.5, 0.5], 2**0.5) == 1
    assert ucb1([100, 100], [0.5, 0.6], 2**0.5) == 1
    draws = thompson_bernoulli([900.0, 10.0], [100.0, 990.0], np.random.default_rng(0), 1_000)
    assert draws.count(0) == 1_000


@pytest.mark.parametrize("algorithm", ["thompson", None])
def test_choices_from_many_threads_at_once_need_no_lock(algorithm: str | None) -> None:
    """The engine resolves without a lock (engine/routed.py): threads that choose at once, with
    the interpreter switching between them as often as it can, each get a variant every time
    (a Thompson queue emptied by another thread between its check and its pop refills)."""
    import sys
    import threading

    routing = Endpoints([bandit_endpoint(algorithm)], seed="threads")  # type: ignore[list-item]
    counts: list[int] = []
    failures: list[BaseException] = []

    def choose() -> None:
        mine = 0
        try:
            for _ in range(20_000):
                mine += routing.resolve("e").variant in ("a", "b")
        except BaseException as error:  # reported below
            failures.append(error)
        counts.append(mine)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=choose) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert failures == [] and counts == [20_000] * 8


def test_a_reward_reaches_thompson_choices_within_the_lag() -> None:
    """Thompson choices are drawn THOMPSON_BATCH at a time; a reward cuts those still queued to
    THOMPSON_LAG, so later choices come from the posterior that counts it."""
    from headrace.routing.bandit import THOMPSON_BATCH, THOMPSON_LAG

    routing = Endpoints([bandit_endpoint("thompson")], seed="lag")  # type: ignore[list-item]
    route = routing.resolve("e")
    bandit = routing.get("e").bandit
    assert bandit is not None and len(bandit._queue) == THOMPSON_BATCH - 1
    routing.complete(route, ok=True, latency_ns=1_000, request_id="r1")
    routing.feedback("r1", reward=1.0)
    assert len(bandit._queue) == THOMPSON_LAG
