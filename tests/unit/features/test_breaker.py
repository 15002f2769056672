"""The breaker as a pure state machine over a fake clock."""

from __future__ import annotations

from headrace.features import Breaker, BreakerPolicy, BreakerState

POLICY = BreakerPolicy(failures_to_open=3, probe_interval_s=0.25, probe_timeout_s=0.02)


def opened(now: float = 10.0) -> Breaker:
    breaker = Breaker(POLICY)
    for _ in range(3):
        assert breaker.admit(now)
        breaker.failure(now)
    assert breaker.state == BreakerState.OPEN
    return breaker


def test_closed_admits_and_a_blip_does_not_open() -> None:
    breaker = Breaker(POLICY)
    breaker.failure(1.0)
    breaker.failure(1.0)
    breaker.success(1.0)
    breaker.failure(1.0)
    breaker.failure(1.0)
    assert breaker.state == BreakerState.CLOSED and breaker.admit(1.0)


def test_consecutive_failures_open_it_and_lookups_are_refused() -> None:
    breaker = opened(10.0)
    assert not breaker.admit(10.0)
    assert not breaker.admit(10.0 + 0.2499)


def test_one_probe_after_the_interval_and_only_one() -> None:
    breaker = opened(10.0)
    assert breaker.admit(10.25)
    assert breaker.state == BreakerState.HALF_OPEN and breaker.probes == 1
    assert not breaker.admit(10.26)


def test_a_successful_probe_closes_it() -> None:
    breaker = opened(10.0)
    assert breaker.admit(10.25)
    breaker.success(10.26)
    assert breaker.state == BreakerState.CLOSED and breaker.admit(10.26)


def test_a_failed_probe_opens_it_for_another_interval() -> None:
    breaker = opened(10.0)
    assert breaker.admit(10.25)
    breaker.failure(10.27)
    assert breaker.state == BreakerState.OPEN
    assert not breaker.admit(10.5)
    assert breaker.admit(10.52)


def test_a_probe_that_never_reports_is_replaced() -> None:
    breaker = opened(10.0)
    assert breaker.admit(10.25)
    assert not breaker.admit(10.25 + 0.25 + 0.019)
    assert breaker.admit(10.25 + 0.25 + 0.021)
    assert breaker.probes == 2


def test_recovery_bound_with_steady_lookups() -> None:
    """With a lookup every millisecond, however the store's return lines up with the probes,
    the first admitted probe after it comes within probe_interval_s (+ a lookup period)."""
    for back_at_ms in range(0, 1000, 37):
        breaker = opened(0.0)
        now_ms = 0
        recovered_at = None
        while recovered_at is None:
            now_ms += 1
            now = now_ms / 1000
            if breaker.admit(now):
                if now_ms >= back_at_ms:
                    breaker.success(now)
                    recovered_at = now_ms
                else:
                    breaker.failure(now)
        assert recovered_at - back_at_ms <= 250 + 1


def test_state_changes_are_reported() -> None:
    seen: list[BreakerState] = []
    breaker = Breaker(POLICY, seen.append)
    for _ in range(3):
        breaker.failure(0.0)
    breaker.admit(1.0)
    breaker.success(1.0)
    assert seen == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]
