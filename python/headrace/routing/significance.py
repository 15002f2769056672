"""The statistics of the experiment report, on the standard library alone.

Normal probabilities come from ``math.erfc``; Student's t from the regularized incomplete beta
function, evaluated by its continued fraction (modified Lentz), which converges quickly on the
side of the symmetry point where we evaluate it. Tests check every function against scipy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Z_95 = 1.959963984540054  # the standard normal's 97.5 % quantile: a two-sided 95 % interval

_TINY = 1e-300
_EPS = 1e-15
_MAX_TERMS = 500


def normal_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def normal_two_sided_p(z: float) -> float:
    """P(|Z| >= |z|)."""
    return math.erfc(abs(z) / math.sqrt(2.0))


def _beta_continued_fraction(x: float, a: float, b: float) -> float:
    """The continued fraction of I_x(a, b), good for x < (a + 1) / (a + b + 2)."""
    c = 1.0
    d = 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    result = d
    for m in range(1, _MAX_TERMS + 1):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + numerator / c
            c = c if abs(c) > _TINY else _TINY
            result *= c * d
        if abs(c * d - 1.0) < _EPS:
            break
    return result


def regularized_incomplete_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b) = B(x; a, b) / B(a, b) for 0 <= x <= 1, a, b > 0."""
    if not (a > 0 and b > 0) or not 0.0 <= x <= 1.0:
        raise ValueError(f"I_x(a, b) needs a, b > 0 and 0 <= x <= 1, got x={x}, a={a}, b={b}")
    if x in (0.0, 1.0):
        return x
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_continued_fraction(x, a, b) / a
    return 1.0 - front * _beta_continued_fraction(1.0 - x, b, a) / b


def student_t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` > 0 degrees of freedom (df need not be whole)."""
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * regularized_incomplete_beta(df / (df + t * t), df / 2.0, 0.5)
    return 1.0 - tail if t > 0 else tail


def student_t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|)."""
    return regularized_incomplete_beta(df / (df + t * t), df / 2.0, 0.5)


def student_t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t (bisection on the CDF; for report intervals, not hot paths)."""
    if not 0.0 < p < 1.0:
        raise ValueError("p must lie in (0, 1)")
    if p == 0.5:
        return 0.0
    low, high = -1.0, 1.0
    while student_t_cdf(low, df) > p:
        low *= 2.0
    while student_t_cdf(high, df) < p:
        high *= 2.0
    for _ in range(200):
        middle = 0.5 * (low + high)
        if student_t_cdf(middle, df) < p:
            low = middle
        else:
            high = middle
        if high - low <= 1e-12 * max(1.0, abs(middle)):
            break
    return 0.5 * (low + high)


@dataclass(frozen=True)
class TestResult:
    test: str  # "two_proportion_z", "welch_t", or "none" (too few data)
    statistic: float
    p_value: float
    df: float = math.nan  # Welch's degrees of freedom
    difference: float = math.nan  # variant minus control


NO_TEST = TestResult("none", math.nan, math.nan)


def two_proportion_z(
    successes_control: float, n_control: int, successes_variant: float, n_variant: int
) -> TestResult:
    """Pooled two-proportion z test of equal success rates (two-sided)."""
    if n_control < 1 or n_variant < 1:
        return NO_TEST
    p_control, p_variant = successes_control / n_control, successes_variant / n_variant
    pooled = (successes_control + successes_variant) / (n_control + n_variant)
    variance = pooled * (1.0 - pooled) * (1.0 / n_control + 1.0 / n_variant)
    if variance <= 0:
        return TestResult("none", math.nan, math.nan, difference=p_variant - p_control)
    z = (p_variant - p_control) / math.sqrt(variance)
    return TestResult(
        "two_proportion_z", z, normal_two_sided_p(z), difference=p_variant - p_control
    )


def welch_t(
    mean_control: float,
    variance_control: float,
    n_control: int,
    mean_variant: float,
    variance_variant: float,
    n_variant: int,
) -> TestResult:
    """Welch's unequal-variance t test of equal means (two-sided; Welch-Satterthwaite df)."""
    if n_control < 2 or n_variant < 2:
        return NO_TEST
    se_control, se_variant = variance_control / n_control, variance_variant / n_variant
    standard_error2 = se_control + se_variant
    difference = mean_variant - mean_control
    if standard_error2 <= 0:
        return TestResult("none", math.nan, math.nan, difference=difference)
    t = difference / math.sqrt(standard_error2)
    df = standard_error2**2 / (se_control**2 / (n_control - 1) + se_variant**2 / (n_variant - 1))
    return TestResult("welch_t", t, student_t_two_sided_p(t, df), df, difference)


def wilson_interval(successes: float, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a proportion (sound near 0 and 1, unlike the Wald interval)."""
    if n < 1:
        return (math.nan, math.nan)
    p = successes / n
    denominator = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def mean_interval(mean: float, variance: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Student-t interval of a mean."""
    if n < 2:
        return (math.nan, math.nan)
    half = student_t_quantile(0.5 + level / 2, n - 1) * math.sqrt(variance / n)
    return (mean - half, mean + half)
