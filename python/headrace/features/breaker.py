"""A circuit breaker for a remote feature store: a pure state machine over an injected clock.

* CLOSED: every lookup goes to the store. ``failures_to_open`` failed round trips in a row open
  the breaker.
* OPEN: lookups fail at once (the caller applies ``on_store_error``) — a dead store is not
  hammered and callers do not wait ``timeout_ms`` each. After ``probe_interval_s`` the next lookup
  is let through as a probe (HALF_OPEN).
* HALF_OPEN: only the probe is in flight; its success closes the breaker, its failure opens it
  again for another ``probe_interval_s``. A probe that never reports (its caller went away
  before the round trip) is replaced after ``probe_interval_s + probe_timeout_s``.

Serving therefore resumes at most ``probe_interval_s`` plus one round trip after the store is
back, as long as lookups keep coming.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass


class BreakerState(enum.IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


@dataclass(frozen=True)
class BreakerPolicy:
    # Consecutive failures that open the breaker: one failure may be a blip (a restarted
    # connection), three in a row is a store that is not answering.
    failures_to_open: int = 3
    # Time between probes of a dead store: the bound on how long serving stays on defaults
    # after the store is back, against one request per period paying a failed lookup.
    probe_interval_s: float = 0.25
    # How long a probe may take before another replaces it (the lookup timeout).
    probe_timeout_s: float = 0.1


class Breaker:
    """The state machine; ``now`` is any monotonic clock in seconds. Not thread-safe: used from
    the event loop only."""

    def __init__(
        self,
        policy: BreakerPolicy | None = None,
        on_change: Callable[[BreakerState], None] | None = None,
    ) -> None:
        self.policy = policy or BreakerPolicy()
        self.state = BreakerState.CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self.probe_started_at = 0.0
        self.probes = 0
        self._on_change = on_change

    def _set(self, state: BreakerState) -> None:
        if state != self.state:
            self.state = state
            if self._on_change is not None:
                self._on_change(state)

    def admit(self, now: float) -> bool:
        """May a lookup go to the store now? (True for the probe when one is due.)"""
        if self.state == BreakerState.CLOSED:
            return True
        policy = self.policy
        due = (
            now >= self.opened_at + policy.probe_interval_s
            if self.state == BreakerState.OPEN
            else now >= self.probe_started_at + policy.probe_interval_s + policy.probe_timeout_s
        )
        if not due:
            return False
        self.probe_started_at = now
        self.probes += 1
        self._set(BreakerState.HALF_OPEN)
        return True

    def success(self, now: float) -> None:
        self.failures = 0
        self._set(BreakerState.CLOSED)

    def failure(self, now: float) -> None:
        self.failures += 1
        if self.state == BreakerState.HALF_OPEN or (
            self.state == BreakerState.CLOSED and self.failures >= self.policy.failures_to_open
        ):
            self.opened_at = now
            self._set(BreakerState.OPEN)
