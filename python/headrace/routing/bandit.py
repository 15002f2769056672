"""Multi-armed bandits over an endpoint's variants: epsilon-greedy, Thompson sampling, UCB1.

The choosing functions are pure (arm statistics and random draws in, an arm out); :class:`Bandit`
keeps the arms' reward statistics and a seeded generator. Rewards come through feedback, often
minutes after the request, so every algorithm learns from rewarded requests only.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import numpy as np

from headrace.errors import InvalidArgumentError
from headrace.routing.config import BanditConfig
from headrace.routing.stats import RewardStats

# Thompson draws are made for this many requests at once (one numpy call instead of one per
# request, which would cost several microseconds each): the call's fixed cost (~20 us here) is
# shared by the batch, ~0.2 us a request at 256 against ~0.4 at 64. A reward cuts the draws
# still queued to THOMPSON_LAG, so the choices lag the newest posterior by at most that many
# requests; with feedback seconds to minutes late, 64 requests of lag change nothing.
THOMPSON_BATCH = 256
THOMPSON_LAG = 64

Choice = TypeVar("Choice")  # what a choice returns for an arm (the endpoint's routes)


def thompson_bernoulli(
    successes: Sequence[float], failures: Sequence[float], rng: np.random.Generator, draws: int
) -> list[int]:
    """``draws`` arms, each the argmax of one sample from every arm's Beta(1+s, 1+f).

    One call per arm with scalar parameters: numpy's beta with array parameters broadcasts per
    sample, ~1.5x the time for the same draws."""
    samples = np.empty((len(successes), draws))
    for arm, (s, f) in enumerate(zip(successes, failures, strict=True)):
        samples[arm] = rng.beta(1.0 + s, 1.0 + f, draws)
    chosen: list[int] = samples.argmax(axis=0).tolist()
    return chosen


def thompson_gaussian(
    counts: Sequence[int],
    means: Sequence[float],
    variances: Sequence[float],
    rng: np.random.Generator,
    draws: int,
) -> list[int]:
    """Thompson sampling for real-valued rewards of unknown mean and variance.

    Under the flat prior the posterior of an arm's mean is mean + sqrt(var / n) * t(n - 1); an arm
    with fewer than two rewards has no posterior yet and is tried first.
    """
    for arm, count in enumerate(counts):
        if count < 2:
            return [arm] * draws
    n = np.asarray(counts, dtype=np.float64)
    scale = np.sqrt(np.asarray(variances, dtype=np.float64) / n)
    t = rng.standard_t(n - 1.0, size=(draws, n.size))
    samples = np.asarray(means, dtype=np.float64) + scale * t
    chosen: list[int] = samples.argmax(axis=1).tolist()
    return chosen


def greedy_arm(counts: Sequence[int], means: Sequence[float]) -> int:
    """The arm with the best mean; an arm never rewarded counts as best (it must be tried)."""
    best, best_value = 0, -math.inf
    for arm, (count, mean) in enumerate(zip(counts, means, strict=True)):
        value = math.inf if count == 0 else mean
        if value > best_value:
            best, best_value = arm, value
    return best


def epsilon_greedy(greedy: int, arms: int, epsilon: float, u_explore: float, u_arm: float) -> int:
    """With probability epsilon an arm uniformly at random, else the greedy arm."""
    if u_explore < epsilon:
        return min(int(u_arm * arms), arms - 1)
    return greedy


def ucb1(counts: Sequence[int], means: Sequence[float], c: float) -> int:
    """argmax mean + c * sqrt(ln N / n) (Auer et al. 2002 with c = sqrt 2); untried arms first."""
    total = sum(counts)
    best, best_value = 0, -math.inf
    for arm, (count, mean) in enumerate(zip(counts, means, strict=True)):
        if count == 0:
            return arm
        value = mean + c * math.sqrt(math.log(total) / count)
        if value > best_value:
            best, best_value = arm, value
    return best


class Bandit(Generic[Choice]):
    """The arms' reward statistics and the next choices. Rewards are written with the engine's
    routing lock held; ``choose`` runs without it, from any thread (under the GIL a list's pop
    and extend are atomic, and a choice drawn from arms a reward is updating is as good as one
    drawn a moment earlier).

    ``choices[i]`` is what a choice of arm ``i`` returns: the endpoint hands its routes, so
    ``choose`` is its strategy's whole per-request call (no index to look up after it).
    """

    def __init__(
        self,
        settings: BanditConfig,
        arms: list[RewardStats],
        seed: int,
        choices: Sequence[Choice],
    ) -> None:
        self.settings = settings
        self.arms = arms  # the variants' own reward statistics, shared with the report
        self.choices = choices
        self._random = random.Random(seed)
        self._generator = np.random.default_rng(seed)
        self._queue: list[Choice] = []
        self._greedy = 0
        self._greedy_choice = choices[0]
        self._epsilon = settings.epsilon
        # The next choice (the request's parameters and inputs are not read): bound once per
        # algorithm, no dispatch on every request.
        self.choose: Callable[[Any, Any], Choice] = {
            "thompson": self._choose_thompson,
            "epsilon_greedy": self._choose_epsilon_greedy,
            "ucb1": self._choose_greedy,  # deterministic between rewards, recomputed on each
        }[settings.algorithm]

    def _choose_thompson(self, parameters: Any = None, inputs: Any = None) -> Choice:
        queue = self._queue
        while True:  # a pop that another thread emptied first refills (no lock is held)
            try:
                return queue.pop()
            except IndexError:
                choices = self.choices
                queue.extend([choices[arm] for arm in reversed(self._thompson(THOMPSON_BATCH))])

    def _choose_epsilon_greedy(self, parameters: Any = None, inputs: Any = None) -> Choice:
        u = self._random.random()
        if u >= self._epsilon:  # exploit: no second draw, no call
            return self._greedy_choice
        arm = epsilon_greedy(self._greedy, len(self.arms), self._epsilon, u, self._random.random())
        return self.choices[arm]

    def _choose_greedy(self, parameters: Any = None, inputs: Any = None) -> Choice:
        return self._greedy_choice

    def _thompson(self, draws: int) -> list[int]:
        arms = self.arms
        if self.settings.reward == "bernoulli":
            successes = [a.mean * a.count for a in arms]
            failures = [a.count - s for a, s in zip(arms, successes, strict=True)]
            return thompson_bernoulli(successes, failures, self._generator, draws)
        return thompson_gaussian(
            [a.count for a in arms],
            [a.mean for a in arms],
            [a.variance if a.count > 1 else 0.0 for a in arms],
            self._generator,
            draws,
        )

    def check_reward(self, reward: float) -> None:
        if self.settings.reward == "bernoulli" and not 0.0 <= reward <= 1.0:
            raise InvalidArgumentError(
                f"reward {reward!r} is outside [0, 1], which a bandit with reward = 'bernoulli' "
                "needs (a success rate; use reward = 'gaussian' for real-valued rewards)"
            )

    def refresh(self) -> None:
        """Recompute the greedy (or UCB) arm after the arms' rewards changed."""
        counts = [a.count for a in self.arms]
        means = [a.mean for a in self.arms]
        queue = self._queue
        if len(queue) > THOMPSON_LAG:  # pops take from the end: keep the next THOMPSON_LAG
            del queue[: len(queue) - THOMPSON_LAG]
        if self.settings.algorithm == "ucb1":
            self._greedy = ucb1(counts, means, self.settings.ucb_c)
        else:
            self._greedy = greedy_arm(counts, means)
        self._greedy_choice = self.choices[self._greedy]

    def state_dict(self) -> dict[str, Any]:
        return {"arms": [a.state() for a in self.arms]}

    def restore(self, state: dict[str, Any]) -> None:
        saved = state.get("arms", [])
        if len(saved) != len(self.arms):
            return
        for arm, arm_state in zip(self.arms, saved, strict=True):
            arm.restore(arm_state)
        self.refresh()
