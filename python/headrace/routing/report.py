"""The experiment report of an endpoint: per variant traffic, errors, latency, rewards with
intervals, and a significance test of each variant against the control (the first variant).

Rewards that were all 0 or 1 on both sides are compared by the pooled two-proportion z test and
get Wilson intervals; others by Welch's t test and Student-t intervals. Latency quantiles come
from log-linear histograms (within ~6 % of the exact value).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from headrace.routing.canary import CanaryState
from headrace.routing.events import RoutingEvent
from headrace.routing.runtime import EndpointRuntime
from headrace.routing.significance import (
    NO_TEST,
    TestResult,
    mean_interval,
    two_proportion_z,
    welch_t,
    wilson_interval,
)
from headrace.routing.stats import RewardStats, VariantStats

ALPHA = 0.05

REPEATED_LOOKS_CAVEAT = (
    "Each p-value is valid for one look at a sample size fixed in advance. Reading this report "
    "repeatedly and stopping at the first p < 0.05 raises the false-positive rate well above 5 % "
    "(about 1 in 4 over 20 looks at a true null). Decide the number of rewards per variant "
    "before the experiment and judge then, or divide alpha by the number of looks. Rewards of "
    "one user are treated as independent, which sticky routing may not make them."
)


@dataclass(frozen=True)
class RewardSummary:
    count: int
    mean: float
    ci_low: float  # 95 % interval of the mean
    ci_high: float
    binary: bool  # every reward was 0 or 1


@dataclass(frozen=True)
class QualitySummary:
    kind: str  # "classifier" (value = accuracy) or "regressor" (value = mean absolute error)
    value: float
    count: int  # labelled rows in the window
    window_start_s: float


@dataclass(frozen=True)
class VariantReport:
    name: str
    model: str
    version: str
    control: bool
    requests: int
    errors: int
    error_rate: float
    share: float  # of the endpoint's requests
    latency_p50_ms: float
    latency_p99_ms: float
    rewards: RewardSummary
    comparison: TestResult | None  # None for the control
    significant: bool  # p < ALPHA
    quality: QualitySummary | None


@dataclass(frozen=True)
class ShadowReport:
    name: str
    model: str
    version: str
    offered: int
    dropped: int
    completed: int
    errors: int
    mismatched: int
    agreement: float
    abs_delta_p50: float
    abs_delta_p99: float
    abs_delta_max: float
    latency_p50_ms: float
    latency_p99_ms: float
    # primary_busy | over_budget | queue_full
    dropped_by: dict[str, int] = field(default_factory=dict)
    mirrored: float = math.nan  # completed / offered


@dataclass(frozen=True)
class ExperimentReport:
    endpoint: str
    strategy: str
    state: dict[str, Any]
    control: str
    variants: tuple[VariantReport, ...]
    shadows: tuple[ShadowReport, ...]
    events: tuple[RoutingEvent, ...]
    alpha: float = ALPHA
    caveat: str = REPEATED_LOOKS_CAVEAT

    def to_dict(self) -> dict[str, Any]:
        """Plain data (NaN where undefined), for JSON and the CLI."""
        return dataclasses.asdict(self)


def _reward_summary(rewards: RewardStats) -> RewardSummary:
    if rewards.binary:
        low, high = wilson_interval(rewards.sum, rewards.count)
    else:
        low, high = mean_interval(rewards.mean, rewards.variance, rewards.count)
    mean = rewards.mean if rewards.count else math.nan
    return RewardSummary(rewards.count, mean, low, high, rewards.binary and rewards.count > 0)


def compare_rewards(control: RewardStats, variant: RewardStats) -> TestResult:
    """Two-proportion z when both sides saw only 0/1 rewards, else Welch's t."""
    if control.count == 0 or variant.count == 0:
        return NO_TEST
    if control.binary and variant.binary:
        return two_proportion_z(control.sum, control.count, variant.sum, variant.count)
    return welch_t(
        control.mean,
        control.variance,
        control.count,
        variant.mean,
        variant.variance,
        variant.count,
    )


def _ms(value_ns: float) -> float:
    return value_ns / 1e6


def _variant_report(
    runtime: EndpointRuntime, index: int, stats: VariantStats, total: int
) -> VariantReport:
    variant = runtime.config.variants[index]
    control = index == 0
    comparison = None if control else compare_rewards(runtime.stats[0].rewards, stats.rewards)
    latest = runtime.quality.latest(index)
    quality = (
        QualitySummary(latest.kind, latest.value, latest.count, latest.start_s)
        if latest is not None
        else None
    )
    return VariantReport(
        name=variant.name,
        model=variant.model,
        version=variant.version,
        control=control,
        requests=stats.requests,
        errors=stats.errors,
        error_rate=stats.error_rate,
        share=stats.requests / total if total else math.nan,
        latency_p50_ms=_ms(stats.latency_ns.quantile(0.5)),
        latency_p99_ms=_ms(stats.latency_ns.quantile(0.99)),
        rewards=_reward_summary(stats.rewards),
        comparison=comparison,
        significant=comparison is not None and comparison.p_value < ALPHA,
        quality=quality,
    )


def strategy_state(runtime: EndpointRuntime) -> dict[str, Any]:
    """What the strategy is doing now: shares, canary step, active colour, bandit arms."""
    config = runtime.config
    names = [r.variant for r in runtime.routes]
    if runtime.table is not None:
        held = [0] * len(names)
        for owner in runtime.table:
            held[owner] += 1
        return {"shares": {n: held[i] / len(runtime.table) for i, n in enumerate(names)}}
    if runtime.ramp is not None:
        ramp = runtime.ramp
        return {
            "canary_state": ramp.state.value,
            "step_index": ramp.step_index,
            "candidate_percent": ramp.candidate_percent,
            "baseline": names[0],
            "candidate": names[1],
            "finished": ramp.state is not CanaryState.RAMPING,
        }
    if runtime.bandit is not None:
        arms = runtime.bandit.arms
        return {
            "algorithm": config.bandit_settings().algorithm,
            "reward": config.bandit_settings().reward,
            "arms": {
                n: {"rewards": arms[i].count, "mean": arms[i].mean} for i, n in enumerate(names)
            },
        }
    return {"active": names[runtime.active], "inactive": names[1 - runtime.active]}


def _shadow_report(runtime: EndpointRuntime) -> tuple[ShadowReport, ...]:
    reports = []
    for shadow in runtime.shadows:
        s = shadow.stats
        reports.append(
            ShadowReport(
                name=shadow.name,
                model=shadow.model,
                version=shadow.version,
                offered=s.offered,
                dropped=s.dropped,
                dropped_by=dict(s.dropped_by),
                mirrored=s.mirrored,
                completed=s.completed,
                errors=s.errors,
                mismatched=s.mismatched,
                agreement=s.agreement,
                abs_delta_p50=s.abs_delta.quantile(0.5),
                abs_delta_p99=s.abs_delta.quantile(0.99),
                abs_delta_max=s.abs_delta.max if s.abs_delta.count else math.nan,
                latency_p50_ms=_ms(s.latency_ns.quantile(0.5)),
                latency_p99_ms=_ms(s.latency_ns.quantile(0.99)),
            )
        )
    return tuple(reports)


def build_report(runtime: EndpointRuntime) -> ExperimentReport:
    stats = list(runtime.stats)
    total = sum(s.requests for s in stats)
    return ExperimentReport(
        endpoint=runtime.name,
        strategy=runtime.config.strategy,
        state=strategy_state(runtime),
        control=runtime.routes[0].variant,
        variants=tuple(_variant_report(runtime, i, s, total) for i, s in enumerate(stats)),
        shadows=_shadow_report(runtime),
        events=tuple(runtime.events),
    )
