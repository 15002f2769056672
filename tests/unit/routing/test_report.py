"""The experiment report and its statistics, checked against scipy."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import special, stats

from headrace.routing.report import REPEATED_LOOKS_CAVEAT, compare_rewards
from headrace.routing.significance import (
    mean_interval,
    normal_cdf,
    regularized_incomplete_beta,
    student_t_cdf,
    student_t_quantile,
    two_proportion_z,
    welch_t,
    wilson_interval,
)
from headrace.routing.stats import LogHistogram, RewardStats, VariantStats, latency_histogram
from unit.routing.routing_support import MakeEndpoints, endpoint, variants


@pytest.mark.parametrize("a", [0.5, 1.0, 2.5, 10.0, 150.0])
@pytest.mark.parametrize("b", [0.5, 1.0, 3.0, 40.0])
def test_incomplete_beta_matches_scipy(a: float, b: float) -> None:
    for x in np.linspace(0.0, 1.0, 41):
        assert regularized_incomplete_beta(float(x), a, b) == pytest.approx(
            special.betainc(a, b, x), rel=1e-9, abs=1e-13
        )


@pytest.mark.parametrize("df", [1.0, 2.0, 2.7, 5.0, 13.3, 30.0, 250.0, 1e5])
def test_student_t_matches_scipy(df: float) -> None:
    for t in [-40.0, -6.0, -2.5, -1.0, -0.1, 0.0, 0.3, 1.96, 3.0, 8.0, 100.0]:
        assert student_t_cdf(t, df) == pytest.approx(stats.t.cdf(t, df), rel=1e-9, abs=1e-14)
    for p in [0.001, 0.025, 0.3, 0.5, 0.9, 0.975]:
        assert student_t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-8, abs=1e-9)


def test_normal_cdf_matches_scipy() -> None:
    for z in np.linspace(-8, 8, 33):
        assert normal_cdf(float(z)) == pytest.approx(stats.norm.cdf(z), rel=1e-12, abs=1e-300)


def test_welch_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    for n1, n2, shift, scale in [(5, 7, 0.3, 1.0), (40, 25, 0.5, 3.0), (300, 800, 0.05, 0.5)]:
        x = rng.normal(0.0, 1.0, n1)
        y = rng.normal(shift, scale, n2)
        result = welch_t(x.mean(), x.var(ddof=1), n1, y.mean(), y.var(ddof=1), n2)
        expected = stats.ttest_ind(y, x, equal_var=False)
        assert result.test == "welch_t"
        assert result.statistic == pytest.approx(expected.statistic, rel=1e-9)
        assert result.p_value == pytest.approx(expected.pvalue, rel=1e-7)
        assert result.df == pytest.approx(expected.df, rel=1e-9)


def test_two_proportion_z_matches_the_chi_square_test() -> None:
    for s1, n1, s2, n2 in [(50, 1000, 70, 1000), (3, 40, 9, 45), (500, 5000, 560, 5100)]:
        result = two_proportion_z(s1, n1, s2, n2)
        table = [[s1, n1 - s1], [s2, n2 - s2]]
        chi2, p, _, _ = stats.chi2_contingency(table, correction=False)
        assert result.statistic**2 == pytest.approx(chi2, rel=1e-9)
        assert result.p_value == pytest.approx(p, rel=1e-9)
        assert math.copysign(1, result.statistic) == math.copysign(1, s2 / n2 - s1 / n1)


def test_intervals_match_scipy() -> None:
    for k, n in [(0, 20), (7, 50), (480, 500), (35, 1000)]:
        expected = stats.binomtest(k, n).proportion_ci(0.95, method="wilson")
        low, high = wilson_interval(k, n)
        assert (low, high) == pytest.approx((expected.low, expected.high), rel=1e-9, abs=1e-12)
    rng = np.random.default_rng(1)
    sample = rng.normal(2.0, 3.0, 17)
    expected = stats.t.interval(0.95, 16, loc=sample.mean(), scale=stats.sem(sample))
    got = mean_interval(sample.mean(), sample.var(ddof=1), 17)
    assert got == pytest.approx(expected, rel=1e-8)


def test_reward_stats_and_test_choice() -> None:
    binary_a, binary_b, real_b = RewardStats(), RewardStats(), RewardStats()
    for i in range(100):
        binary_a.add(float(i % 10 == 0))
        binary_b.add(float(i % 5 == 0))
        real_b.add(i / 100)
    assert compare_rewards(binary_a, binary_b).test == "two_proportion_z"
    assert compare_rewards(binary_a, real_b).test == "welch_t"
    assert compare_rewards(binary_a, RewardStats()).test == "none"
    values = np.arange(100) / 100
    assert real_b.mean == pytest.approx(values.mean())
    assert real_b.variance == pytest.approx(values.var(ddof=1))


def test_histogram_quantiles_are_within_the_bucket_precision() -> None:
    rng = np.random.default_rng(2)
    values = rng.lognormal(mean=15, sigma=1.0, size=20_000)  # ~ms latencies in ns
    histogram, stats_ = latency_histogram(), VariantStats()
    for v in values:
        histogram.add(int(v))
        stats_.observe(True, int(v))  # the inlined bucket arithmetic agrees
    assert stats_.latency_ns.counts == histogram.counts
    for q in (0.5, 0.9, 0.99):
        assert histogram.quantile(q) == pytest.approx(np.quantile(values, q), rel=0.07)
    deltas = LogHistogram(1e-12, 1e9)
    for v in values / 1e9:
        deltas.add(float(v))
    assert deltas.quantile(0.5) == pytest.approx(np.quantile(values / 1e9, 0.5), rel=0.07)
    extremes = latency_histogram()
    for ns in (0, 1, 15, 16, 2**44, 2**60):
        extremes.add(ns)
        stats_.observe(False, ns)
    assert extremes.count == 6 and stats_.errors == 6
    empty = LogHistogram(1.0, 10.0)
    assert math.isnan(empty.quantile(0.5))
    clamped = LogHistogram(1.0, 10.0)
    for v in (0.0, 0.5, 1e9, math.inf):
        clamped.add(v)
    assert clamped.count == 4


def test_the_report_of_an_a_b_test(make_endpoints: MakeEndpoints) -> None:
    routing = make_endpoints(endpoint(name="e", variants=variants(("a", 50), ("b", 50))))
    rng = np.random.default_rng(4)
    rates = {"a": 0.10, "b": 0.16}
    latencies = {"a": 2_000_000, "b": 4_000_000}
    for i in range(6_000):
        route = routing.resolve("e")
        ok = i % 100 != 0 or route.variant == "a"
        routing.complete(route, ok=ok, latency_ns=latencies[route.variant], request_id=str(i))
        if ok:
            routing.feedback(str(i), reward=float(rng.random() < rates[route.variant]))
    report = routing.report("e")
    a, b = report.variants
    assert a.control and not b.control and report.control == "a"
    assert a.requests + b.requests == 6_000
    assert a.errors == 0 and b.errors > 0
    assert a.share == pytest.approx(0.5, abs=0.03)
    assert a.latency_p50_ms == pytest.approx(2.0, rel=0.07)
    assert b.latency_p99_ms == pytest.approx(4.0, rel=0.07)
    assert a.rewards.binary and a.rewards.count == a.requests
    assert a.rewards.ci_low < 0.10 < a.rewards.ci_high
    assert b.comparison is not None and b.comparison.test == "two_proportion_z"
    assert b.comparison.difference == pytest.approx(b.rewards.mean - a.rewards.mean)
    assert b.significant and b.comparison.p_value < 1e-6
    assert report.caveat == REPEATED_LOOKS_CAVEAT and "repeatedly" in report.caveat
    # the plain-data form is what the CLI prints as JSON
    data = report.to_dict()
    assert json.loads(json.dumps(data))["variants"][1]["comparison"]["test"] == "two_proportion_z"


def test_real_valued_rewards_use_welch(make_endpoints: MakeEndpoints) -> None:
    routing = make_endpoints(endpoint(name="e", variants=variants(("a", 1), ("b", 1))))
    rng = np.random.default_rng(5)
    rewards: dict[str, list[float]] = {"a": [], "b": []}
    for i in range(400):
        route = routing.resolve("e")
        routing.complete(route, ok=True, latency_ns=1_000_000, request_id=str(i))
        value = float(rng.normal(1.0 if route.variant == "a" else 1.1, 0.5))
        rewards[route.variant].append(value)
        routing.feedback(str(i), reward=value)
    b = routing.report("e").variants[1]
    expected = stats.ttest_ind(rewards["b"], rewards["a"], equal_var=False)
    assert b.comparison is not None and b.comparison.test == "welch_t"
    assert b.comparison.p_value == pytest.approx(expected.pvalue, rel=1e-6)
    assert b.significant == (expected.pvalue < 0.05)
    low, high = stats.t.interval(
        0.95, len(rewards["b"]) - 1, loc=np.mean(rewards["b"]), scale=stats.sem(rewards["b"])
    )
    assert (b.rewards.ci_low, b.rewards.ci_high) == pytest.approx((low, high), rel=1e-6)


def test_the_cli_report_puts_the_mirrored_share_beside_the_agreement() -> None:
    from headrace.cli.endpoints import format_report
    from headrace.wire import admin as pb

    report = pb.GetExperimentReportResponse(
        endpoint="e",
        strategy="split",
        control="a",
        shadows=[
            pb.ShadowReport(
                name="next",
                model="m",
                offered=200,
                dropped=150,
                dropped_by={"primary_busy": 140, "queue_full": 10},
                completed=50,
                mirrored=0.25,
                agreement=1.0,
            )
        ],
    )
    line = next(x for x in format_report(report).splitlines() if x.startswith("shadow"))
    assert line.startswith(
        "shadow next (m): mirrored 25.0% of 200 sampled, dropped 150 (primary_busy 140, "
        "queue_full 10), errors 0, agreement 1"
    )
