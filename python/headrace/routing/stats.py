"""Running statistics that routing keeps per variant: counts, latency and |Δ| histograms, rewards.

All of them are updated on the event-loop thread (one writer); other threads may read them for a
report, and a report read while a request lands may be one request behind, never torn.
"""

from __future__ import annotations

import bisect
import itertools
import math
from dataclasses import dataclass

# Log-linear histograms: SUB_BUCKETS per power of two, so a quantile read from it is within
# 1/(2*SUB_BUCKETS) ~ 6% of the true value. More sub-buckets would cost memory per variant and
# time per quantile read (both linear in the bucket count) for a precision the gates don't need.
SUB_BUCKETS = 8


def _rank_bucket(counts: list[int], q: float, total: int) -> int:
    """The bucket holding the q-quantile (cumulative sums and bisection run in C: the canary
    gates read a p99 every few dozen requests)."""
    rank = max(1, math.ceil(q * total))
    return min(bisect.bisect_left(list(itertools.accumulate(counts)), rank), len(counts) - 1)


class LogHistogram:
    """Counts of positive values in log-linear buckets between ``low`` and ``high``.

    Values below ``low`` (zero included) fall in the first bucket, values above ``high`` in the
    last; quantiles are read as a bucket's midpoint.
    """

    __slots__ = ("_counts", "_high", "_low", "_min_exponent", "count", "max", "total")

    def __init__(self, low: float, high: float) -> None:
        self._low = low
        self._high = high
        self._min_exponent = math.frexp(low)[1]
        buckets = (math.frexp(high)[1] - self._min_exponent + 1) * SUB_BUCKETS
        self._counts = [0] * buckets
        self.count = 0
        self.total = 0.0
        self.max = 0.0

    def add(self, value: float) -> None:
        counts = self._counts
        if not value < self._high:  # inf (and NaN, which callers turn into inf first)
            index = len(counts) - 1
        elif value < self._low:
            index = 0
        else:
            mantissa, exponent = math.frexp(value)  # value = mantissa * 2**exponent, m in [.5, 1)
            index = (exponent - self._min_exponent) * SUB_BUCKETS + int(
                (mantissa - 0.5) * (2 * SUB_BUCKETS)
            )
            if index >= len(counts):
                index = len(counts) - 1
        counts[index] += 1
        self.count += 1
        self.total += value
        if value > self.max:
            self.max = value

    def _bucket_mid(self, index: int) -> float:
        exponent, sub = divmod(index, SUB_BUCKETS)
        return math.ldexp(0.5 + (sub + 0.5) / (2 * SUB_BUCKETS), exponent + self._min_exponent)

    def quantile(self, q: float) -> float:
        """The q-quantile (0 <= q <= 1); NaN when empty."""
        if self.count == 0:
            return math.nan
        index = _rank_bucket(self._counts, q, self.count)
        return min(self._bucket_mid(index), self.max)


# Latency buckets: for n >= 16 ns, the bit length of n and the 3 bits below its leading one (8
# buckets per power of two, as above), computed with integer operations only: this runs for every
# request. Latencies of 2**NS_MAX_BITS ns (~4.9 hours) and more share the last bucket.
NS_MAX_BITS = 44
_NS_BUCKETS = (NS_MAX_BITS - 3) * SUB_BUCKETS


def ns_bucket(latency_ns: int) -> int:
    """The bucket of a latency in integer nanoseconds (the same arithmetic as observe())."""
    bits = latency_ns.bit_length()
    if bits <= 4:
        return 0
    if bits > NS_MAX_BITS:
        return _NS_BUCKETS - 1
    return ((bits - 4) << 3) + ((latency_ns >> (bits - 4)) & 7)


def _ns_bucket_mid(index: int) -> float:
    if index == 0:
        return 8.0
    shift, sub = divmod(index, SUB_BUCKETS)
    return float((8 + sub) << shift) + (1 << shift) / 2


class NsHistogram:
    """Latencies in integer nanoseconds, log-linear buckets (see ns_bucket)."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts = [0] * _NS_BUCKETS

    def add(self, latency_ns: int) -> None:
        self.counts[ns_bucket(latency_ns)] += 1

    @property
    def count(self) -> int:
        return sum(self.counts)

    def quantile(self, q: float) -> float:
        """The q-quantile in ns (a bucket's midpoint); NaN when empty."""
        return ns_quantile(self.counts, q)


def ns_quantile(counts: list[int], q: float) -> float:
    """The q-quantile in ns of NsHistogram counts (a bucket's midpoint); NaN when empty."""
    total = sum(counts)
    if total == 0:
        return math.nan
    return _ns_bucket_mid(_rank_bucket(counts, q, total))


def latency_histogram() -> NsHistogram:
    return NsHistogram()


def delta_histogram() -> LogHistogram:
    # |primary - shadow| from 1e-12 (agreement to float precision) to 1e9.
    return LogHistogram(1e-12, 1e9)


class RewardStats:
    """Count, mean and variance of rewards (Welford), and whether all were 0 or 1."""

    __slots__ = ("binary", "count", "m2", "mean")

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.binary = True

    def add(self, reward: float) -> None:
        self.count += 1
        delta = reward - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (reward - self.mean)
        if reward != 0.0 and reward != 1.0:
            self.binary = False

    @property
    def variance(self) -> float:
        """Sample variance (n - 1); NaN below two rewards."""
        return self.m2 / (self.count - 1) if self.count > 1 else math.nan

    @property
    def sum(self) -> float:
        return self.mean * self.count

    def state(self) -> dict[str, float | int | bool]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2, "binary": self.binary}

    def restore(self, state: dict[str, float | int | bool]) -> None:
        self.count = int(state["count"])
        self.mean = float(state["mean"])
        self.m2 = float(state["m2"])
        self.binary = bool(state["binary"])


class VariantStats:
    """Everything counted about one variant since it was declared (or the server started)."""

    __slots__ = ("errors", "latency_ns", "requests", "rewards")

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.latency_ns = NsHistogram()
        self.rewards = RewardStats()

    def observe(self, ok: bool, latency_ns: int) -> None:
        """Count one request (latency in integer ns); runs once per request, so ns_bucket is
        inlined here."""
        self.requests += 1
        if not ok:
            self.errors += 1
        bits = latency_ns.bit_length()
        if 4 < bits <= NS_MAX_BITS:
            self.latency_ns.counts[((bits - 4) << 3) + ((latency_ns >> (bits - 4)) & 7)] += 1
        else:
            self.latency_ns.add(latency_ns)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else math.nan


@dataclass
class ShadowStats:
    """How a shadow compares with the primary that answered."""

    offered: int = 0  # requests sampled for this shadow
    dropped: int = 0  # sampled but not sent: the primary was busy or the shadow's queue full
    completed: int = 0  # the shadow answered
    mismatched: int = 0  # answered with outputs missing or shaped unlike the primary's
    errors: int = 0  # the shadow call failed
    agreed: int = 0
    compared: int = 0  # answers that had comparable outputs (agreed counts among these)

    def __post_init__(self) -> None:
        self.latency_ns = latency_histogram()
        self.abs_delta = delta_histogram()  # the largest |Δ| element per request
        self.dropped_by: dict[str, int] = {}  # reason -> copies (see routing/shadow.py)

    def drop(self, reason: str, copies: int = 1) -> None:
        self.dropped += copies
        self.dropped_by[reason] = self.dropped_by.get(reason, 0) + copies

    @property
    def mirrored(self) -> float:
        """The share of sampled requests whose copy the shadow answered: what agreement is
        measured over (a dropped copy says nothing about agreement)."""
        return self.completed / self.offered if self.offered else math.nan

    @property
    def agreement(self) -> float:
        return self.agreed / self.compared if self.compared else math.nan
