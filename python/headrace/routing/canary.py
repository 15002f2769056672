"""Canary: a candidate's share ramps up step by step while it stays as good as the baseline.

:func:`decide` is the whole policy, a pure function of what the current step has seen and the
time; :class:`CanaryRamp` keeps the step's counts and applies the decisions. A failed gate sets
the candidate to 0 % (rolled back) until an operator changes the endpoint; passing the step
before 100 % promotes it. Sticky keys use a fixed ranking of the slots: the candidate holds the
slots ranked below its share, so a key that reached the candidate stays there as the share grows.
"""

from __future__ import annotations

import enum
import math
import random
from dataclasses import dataclass
from typing import Any

from headrace.routing.config import CanaryConfig
from headrace.routing.split import SLOTS
from headrace.routing.stats import LogHistogram, RewardStats, latency_histogram

BASELINE, CANDIDATE = 0, 1
# Gates are judged every this many outcomes: reading a p99 walks the histogram (~300 buckets),
# too slow for every request, and a rollback 16 requests later changes nothing that matters.
CHECK_EVERY = 16


class CanaryAction(enum.Enum):
    HOLD = "hold"
    ADVANCE = "advance"
    PROMOTE = "promote"
    ROLLBACK = "rollback"


class CanaryState(enum.Enum):
    RAMPING = "ramping"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"


@dataclass(frozen=True)
class ArmWindow:
    """What the gates see of one variant during the current step."""

    requests: int
    errors: int
    p99_ns: float
    rewards: int
    reward_mean: float

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class CanaryView:
    step_index: int
    step_started_ns: int
    step_requests: int  # requests the endpoint served during the step
    baseline: ArmWindow
    candidate: ArmWindow


@dataclass(frozen=True)
class CanaryDecision:
    action: CanaryAction
    reason: str = ""


def failed_gate(settings: CanaryConfig, view: CanaryView) -> str | None:
    """Which gate the candidate fails in this step, or None (also while it has too few data)."""
    base, cand = view.baseline, view.candidate
    if cand.requests >= settings.min_requests:
        delta = cand.error_rate - base.error_rate
        if delta > settings.max_error_rate_delta:
            return (
                f"error rate {cand.error_rate:.4f} vs baseline {base.error_rate:.4f} "
                f"(delta {delta:.4f} > max_error_rate_delta {settings.max_error_rate_delta})"
            )
        if (
            settings.max_p99_ratio is not None
            and base.requests >= settings.min_requests
            and base.p99_ns > 0
            and cand.p99_ns / base.p99_ns > settings.max_p99_ratio
        ):
            return (
                f"p99 {cand.p99_ns / 1e6:.3f} ms vs baseline {base.p99_ns / 1e6:.3f} ms "
                f"(ratio {cand.p99_ns / base.p99_ns:.2f} > max_p99_ratio {settings.max_p99_ratio})"
            )
    if (
        settings.max_reward_drop is not None
        and cand.rewards >= settings.min_rewards
        and base.rewards >= settings.min_rewards
        and base.reward_mean - cand.reward_mean > settings.max_reward_drop
    ):
        return (
            f"mean reward {cand.reward_mean:.4f} vs baseline {base.reward_mean:.4f} "
            f"(drop {base.reward_mean - cand.reward_mean:.4f} > max_reward_drop "
            f"{settings.max_reward_drop})"
        )
    return None


def decide(settings: CanaryConfig, view: CanaryView, now_ns: int) -> CanaryDecision:
    """Hold, advance to the next step, promote (the next step is the last) or roll back."""
    failure = failed_gate(settings, view)
    if failure is not None:
        return CanaryDecision(CanaryAction.ROLLBACK, failure)
    if view.candidate.requests < settings.min_requests:
        return CanaryDecision(CanaryAction.HOLD, "the candidate has too few requests this step")
    elapsed_s = (now_ns - view.step_started_ns) / 1e9
    due = (settings.step_s is not None and elapsed_s >= settings.step_s) or (
        settings.step_requests is not None and view.step_requests >= settings.step_requests
    )
    if not due:
        return CanaryDecision(CanaryAction.HOLD, "the step is not over")
    if view.step_index + 1 >= len(settings.steps) - 1:
        return CanaryDecision(CanaryAction.PROMOTE, "passed every step")
    return CanaryDecision(CanaryAction.ADVANCE, f"passed step {settings.steps[view.step_index]} %")


class _Window:
    __slots__ = ("errors", "latency_ns", "requests", "rewards")

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.latency_ns: LogHistogram = latency_histogram()
        self.rewards = RewardStats()

    def view(self) -> ArmWindow:
        return ArmWindow(
            self.requests,
            self.errors,
            self.latency_ns.quantile(0.99) if self.requests else math.nan,
            self.rewards.count,
            self.rewards.mean,
        )


class CanaryRamp:
    """The mutable side of a canary endpoint; the event-loop thread is its only writer."""

    def __init__(self, settings: CanaryConfig, seed: int, now_ns: int) -> None:
        self.settings = settings
        self.state = CanaryState.RAMPING
        self.step_index = 0
        ranks = list(range(SLOTS))
        random.Random(seed).shuffle(ranks)
        self._rank = ranks  # slot -> rank; the candidate owns ranks below its share
        self._start_step(0, now_ns)
        if settings.steps[0] >= 100:
            self.state = CanaryState.PROMOTED

    def _start_step(self, index: int, now_ns: int) -> None:
        self.step_index = index
        self.step_started_ns = now_ns
        self.step_requests = 0
        self._since_check = 0
        self._windows = (_Window(), _Window())

    @property
    def candidate_percent(self) -> float:
        if self.state is CanaryState.ROLLED_BACK:
            return 0.0
        if self.state is CanaryState.PROMOTED:
            return 100.0
        return float(self.settings.steps[self.step_index])

    def choose(self, u: float) -> int:
        """The variant for a uniform draw ``u`` in [0, 1)."""
        return CANDIDATE if u * 100.0 < self.candidate_percent else BASELINE

    def choose_slot(self, slot: int) -> int:
        """The variant for a sticky key's slot."""
        share = self.candidate_percent * (SLOTS / 100.0)
        return CANDIDATE if self._rank[slot] < share else BASELINE

    def view(self) -> CanaryView:
        base, cand = self._windows
        return CanaryView(
            self.step_index, self.step_started_ns, self.step_requests, base.view(), cand.view()
        )

    def observe(self, index: int, ok: bool, latency_ns: int, now_ns: int) -> CanaryDecision | None:
        """Count one outcome; returns the decision when it changed the ramp."""
        if self.state is not CanaryState.RAMPING:
            return None
        window = self._windows[index]
        window.requests += 1
        if not ok:
            window.errors += 1
        window.latency_ns.add(latency_ns)
        self.step_requests += 1
        return self._maybe_decide(now_ns)

    def reward(self, index: int, reward: float, now_ns: int) -> CanaryDecision | None:
        if self.state is not CanaryState.RAMPING:
            return None
        self._windows[index].rewards.add(reward)
        return self._maybe_decide(now_ns)

    def _maybe_decide(self, now_ns: int) -> CanaryDecision | None:
        self._since_check += 1
        if self._since_check < CHECK_EVERY:
            return None
        self._since_check = 0
        decision = decide(self.settings, self.view(), now_ns)
        return self.apply(decision, now_ns)

    def apply(self, decision: CanaryDecision, now_ns: int) -> CanaryDecision | None:
        if decision.action is CanaryAction.ROLLBACK:
            self.state = CanaryState.ROLLED_BACK
        elif decision.action is CanaryAction.PROMOTE:
            self.state = CanaryState.PROMOTED
        elif decision.action is CanaryAction.ADVANCE:
            self._start_step(self.step_index + 1, now_ns)
        else:
            return None
        return decision

    def state_dict(self) -> dict[str, Any]:
        return {"state": self.state.value, "step_index": self.step_index}

    def restore(self, state: dict[str, Any], now_ns: int) -> None:
        """Resume at a saved step (its counts and timer start afresh) or outcome."""
        index = int(state.get("step_index", 0))
        if 0 <= index < len(self.settings.steps):
            self._start_step(index, now_ns)
        self.state = CanaryState(state.get("state", CanaryState.RAMPING.value))
