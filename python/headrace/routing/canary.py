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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from headrace.routing.config import CanaryConfig
from headrace.routing.split import SLOTS
from headrace.routing.stats import RewardStats, VariantStats, ns_quantile

BASELINE, CANDIDATE = 0, 1
# Gates are judged after this many outcomes of the endpoint, or sooner once CHECK_INTERVAL_NS
# has passed since the last judgement: reading two p99s costs ~20 us, too much for every request
# (~80 ns a request at 256), and a rollback within 256 requests or 50 ms, whichever comes first
# (a dozen requests on the candidate at a 5 % step; at low traffic, the next request after
# 50 ms), changes nothing that matters.
CHECK_EVERY = 256
CHECK_INTERVAL_NS = 50_000_000
NEVER = 2**63  # countdown and check_due_ns of a ramp that has ended (no judgement is due)


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
            settings.max_p99_ratio > 0
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
    due = (settings.step_s > 0 and elapsed_s >= settings.step_s) or (
        settings.step_requests > 0 and view.step_requests >= settings.step_requests
    )
    if not due:
        return CanaryDecision(CanaryAction.HOLD, "the step is not over")
    if view.step_index + 1 >= len(settings.steps) - 1:
        return CanaryDecision(CanaryAction.PROMOTE, "passed every step")
    return CanaryDecision(CanaryAction.ADVANCE, f"passed step {settings.steps[view.step_index]} %")


class _StepStart:
    """What one variant had counted when the step began: the step's window is the variant's
    statistics now minus these (so a request is counted once, in the variant's statistics)."""

    __slots__ = ("counts", "errors", "requests", "rewards")

    def __init__(self, stats: VariantStats) -> None:
        self.requests = stats.requests
        self.errors = stats.errors
        self.counts = list(stats.latency_ns.counts)
        self.rewards = RewardStats()  # rewards given during the step (not derivable by difference)

    def window(self, stats: VariantStats) -> ArmWindow:
        requests = stats.requests - self.requests
        p99_ns = math.nan
        if requests:
            now = stats.latency_ns.counts
            p99_ns = ns_quantile([a - b for a, b in zip(now, self.counts, strict=True)], 0.99)
        return ArmWindow(
            requests, stats.errors - self.errors, p99_ns, self.rewards.count, self.rewards.mean
        )


class CanaryRamp:
    """The mutable side of a canary endpoint; the event-loop thread is its only writer."""

    def __init__(
        self, settings: CanaryConfig, seed: int, now_ns: int, arms: Sequence[VariantStats]
    ) -> None:
        self.settings = settings
        # The endpoint's variant statistics (baseline, candidate), counted by the router for
        # every outcome; the ramp reads them at step starts and judgements only.
        self.arms = arms
        self.state = CanaryState.RAMPING
        self.step_index = 0
        ranks = list(range(SLOTS))
        random.Random(seed).shuffle(ranks)
        self.rank = ranks  # slot -> rank; the candidate owns ranks below its share
        self._start_step(0, now_ns)
        if settings.steps[0] >= 100:
            self.state = CanaryState.PROMOTED
        self._update_percent()

    def _start_step(self, index: int, now_ns: int) -> None:
        self.step_index = index
        self.step_started_ns = now_ns
        self._schedule_check(now_ns)
        self.mark_step_start()

    def _schedule_check(self, now_ns: int) -> None:
        # The next judgement is due after ``countdown`` more outcomes or at ``check_due_ns``,
        # whichever comes first: two plain attributes that the router tests for every request
        # (Endpoints.complete), so a request that decides nothing costs no call here.
        self.countdown = CHECK_EVERY
        self.check_due_ns = now_ns + CHECK_INTERVAL_NS

    def mark_step_start(self) -> None:
        """Take the variants' counts as the step's start (also after the endpoint's statistics
        were carried over from an earlier version of it)."""
        self._starts = (_StepStart(self.arms[BASELINE]), _StepStart(self.arms[CANDIDATE]))

    def _update_percent(self) -> None:
        if self.state is not CanaryState.RAMPING:  # ended: nothing more to judge
            self.countdown = self.check_due_ns = NEVER
        if self.state is CanaryState.ROLLED_BACK:
            percent = 0.0
        elif self.state is CanaryState.PROMOTED:
            percent = 100.0
        else:
            percent = float(self.settings.steps[self.step_index])
        # Read per request by the runtime (one attribute, no property): the candidate's share in
        # percent, and the ranks below which a sticky slot belongs to the candidate.
        self.candidate_percent = percent
        self.candidate_ranks = percent * (SLOTS / 100.0)

    def view(self) -> CanaryView:
        base, cand = self._starts
        baseline, candidate = base.window(self.arms[BASELINE]), cand.window(self.arms[CANDIDATE])
        return CanaryView(
            self.step_index,
            self.step_started_ns,
            baseline.requests + candidate.requests,  # the endpoint's outcomes during the step
            baseline,
            candidate,
        )

    def observe(self, now_ns: int) -> CanaryDecision | None:
        """One more outcome, already counted in its variant's statistics (the step's window is
        read from them); returns the decision when it changed the ramp. Endpoints.complete
        makes this test inline and calls :meth:`judge` itself (it runs for every request)."""
        self.countdown -= 1
        if self.countdown > 0 and now_ns < self.check_due_ns:
            return None
        return self.judge(now_ns)

    def reward(self, index: int, reward: float, now_ns: int) -> CanaryDecision | None:
        if self.state is not CanaryState.RAMPING:
            return None
        self._starts[index].rewards.add(reward)
        return self.observe(now_ns)

    def judge(self, now_ns: int) -> CanaryDecision | None:
        """Judge the step now (its judgement was due); the decision when it changed the ramp."""
        if self.state is not CanaryState.RAMPING:
            return None
        self._schedule_check(now_ns)
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
        self._update_percent()
        return decision

    def state_dict(self) -> dict[str, Any]:
        return {"state": self.state.value, "step_index": self.step_index}

    def restore(self, state: dict[str, Any], now_ns: int) -> None:
        """Resume at a saved step (its counts and timer start afresh) or outcome."""
        index = int(state.get("step_index", 0))
        if 0 <= index < len(self.settings.steps):
            self._start_step(index, now_ns)
        self.state = CanaryState(state.get("state", CanaryState.RAMPING.value))
        self._update_percent()
