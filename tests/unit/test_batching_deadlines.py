"""Deadline-aware batching and admission (csrc/batching/batching_policy.cc), with a fake clock.

Once the cost model has fitted a few batches, the policy drops what can no longer finish in time
(doomed), forms batches whose members all finish in time, and admit() refuses at submit what the
queue ahead already makes late. Before that, its numbers are a prior and nobody is refused on
them. Every time here is a number handed to decide() or admit(): nothing sleeps.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headrace import _core

US = 1_000
MS = 1_000_000
A_NS = 100 * US  # fitted cost: 100 us a row ...
B_NS = 500 * US  # ... plus 500 us a batch
# BatcherConfig.deadline_delivery_margin_us (default): an answer must be ready this long before
# the deadline.
MARGIN_NS = 1 * MS


def t(rows: int) -> int:
    return A_NS * rows + B_NS


def answered(rows: int) -> int:
    """From starting a batch of `rows` to its answers leaving the server."""
    return t(rows) + MARGIN_NS


def fitted(**settings: Any) -> _core.testing.PolicyHarness:
    policy = _core.testing.PolicyHarness(_core.BatcherConfig(**settings))
    for rows in (1, 2, 4, 8, 3):
        policy.observe_batch(rows, t(rows))
    assert policy.cost()["samples"] == 5
    return policy


# --- doomed ---


def test_a_request_that_cannot_finish_in_time_leaves_the_queue_before_its_deadline() -> None:
    policy = fitted(max_batch_size=8)
    policy.set_instances(0, 1)  # busy: it waits in the queue
    policy.add(1, 1, enqueue_ns=0, deadline_ns=2000 * US)
    decision = policy.decide(400 * US)  # 400 + 600 + 1000 <= 2000: alone, it still makes it
    assert decision["doomed"] == [] and decision["expired"] == []
    assert decision["action"] == "wait"
    assert decision["wait_until_ns"] == 400 * US + 1  # the first instant it cannot
    decision = policy.decide(400 * US + 1)
    assert decision["doomed"] == [1]
    assert decision["expired"] == [] and decision["run"] == []
    assert decision["action"] == "idle"


def test_before_the_cost_is_fitted_only_the_deadline_itself_counts() -> None:
    policy = _core.testing.PolicyHarness(_core.BatcherConfig(max_batch_size=8))
    policy.observe_batch(1, t(1))  # one sample: below deadline_min_cost_samples
    policy.add(1, 1, enqueue_ns=0, deadline_ns=100 * US)  # the prior says 1 ms a batch
    decision = policy.decide(50 * US)
    assert decision["doomed"] == [] and decision["run"] == [1]
    assert policy.admit(1, deadline_ns=100 * US, now_ns=50 * US)["verdict"] == "admit"


def test_the_deadline_knobs_move_when_predictions_start_and_the_margin() -> None:
    # Five fitted batches: predictions are on with the default (4), off when 8 are asked for.
    patient = fitted(max_batch_size=8, deadline_min_cost_samples=8)
    patient.add(1, 1, enqueue_ns=0, deadline_ns=answered(1) - 1)
    assert patient.decide(0)["doomed"] == []
    assert patient.admit(1, deadline_ns=answered(1) - 1, now_ns=0)["verdict"] == "admit"
    # A wider delivery margin moves the instant a queued request counts as doomed.
    for margin_us in (0, 1000, 3000):
        last_ok_ns = 5 * MS - t(1) - margin_us * US
        policy = fitted(max_batch_size=8, deadline_delivery_margin_us=margin_us)
        policy.set_instances(0, 1)
        policy.add(1, 1, enqueue_ns=0, deadline_ns=5 * MS)
        assert policy.decide(last_ok_ns)["doomed"] == []
        assert policy.decide(last_ok_ns + 1)["doomed"] == [1]


def test_a_batch_never_costs_more_than_the_quickest_larger_one_seen() -> None:
    # Timed while the CPU was contended, the one-row batches came out slower than the eight-row
    # ones: the line fitted to them prices a row above a whole batch.
    policy = _core.testing.PolicyHarness(_core.BatcherConfig(max_batch_size=8))
    for _ in range(4):
        policy.observe_batch(1, 30 * MS)
        policy.observe_batch(8, 20 * MS)
    policy.observe_batch(8, 12 * MS)
    cost = policy.cost()
    assert cost["b_ns"] + cost["a_ns_per_row"] > 20 * MS  # the fit: ~24 ms for one row
    # Deadline decisions go by what a larger batch was seen to take: 12 ms.
    assert policy.admit(1, deadline_ns=12 * MS + MARGIN_NS, now_ns=0)["verdict"] == "admit"
    late = policy.admit(1, deadline_ns=12 * MS + MARGIN_NS - 1, now_ns=0)
    assert late["verdict"] == "late" and late["run_ns"] == 12 * MS + MARGIN_NS
    policy.set_instances(0, 1)
    policy.add(1, 1, enqueue_ns=0, deadline_ns=12 * MS + MARGIN_NS)
    assert policy.decide(0)["doomed"] == []
    assert policy.decide(1)["doomed"] == [1]


# --- batches whose members all finish in time ---


def test_under_overload_a_full_batch_leaves_out_the_member_it_would_make_late() -> None:
    # Ticket 1 makes it alone or in a pair, not in a batch of 4. Shrinking to the pair would
    # serve 2 now; a full batch of the others serves 4.
    policy = fitted(max_batch_size=4)
    policy.add(1, 1, enqueue_ns=0, deadline_ns=answered(2))
    for ticket in range(2, 7):
        policy.add(ticket, 1, enqueue_ns=0, deadline_ns=50 * MS)
    decision = policy.decide(0)
    assert decision["action"] == "run"
    assert decision["run"] == [2, 3, 4, 5]
    assert decision["doomed"] == []  # it stays queued: it may still run alone in time


def test_on_a_quiet_server_the_urgent_head_runs_first() -> None:
    # Two requests: the head makes it alone but not in a pair. Both choices serve one request
    # now; the tie goes to the urgent head.
    policy = fitted(max_batch_size=4, max_queue_delay_us=5000)
    policy.add(1, 1, enqueue_ns=0, deadline_ns=answered(1) + 50 * US)
    policy.add(2, 1, enqueue_ns=0, deadline_ns=50 * MS)
    decision = policy.decide(0)
    assert decision["action"] == "run"
    assert decision["run"] == [1]


def test_a_wait_for_companions_ends_in_time_for_the_most_urgent_member() -> None:
    policy = fitted(max_batch_size=8, max_queue_delay_us=10_000)
    policy.observe_companion_wait(4)  # waits find companions: the fixed delay is spent
    policy.add(1, 1, enqueue_ns=0, deadline_ns=3 * MS)
    decision = policy.decide(0)
    assert decision["action"] == "wait"
    assert decision["wait_until_ns"] == 3 * MS - answered(1)
    assert policy.decide(3 * MS - answered(1))["run"] == [1]


# --- admission ---


def test_admission_refuses_what_the_queue_ahead_makes_late() -> None:
    policy = fitted(max_batch_size=4)
    for ticket in range(1, 13):  # three full batches ahead: 3 x 900 us
        policy.add(ticket, 1, enqueue_ns=0)
    late = policy.admit(1, deadline_ns=4 * MS, now_ns=0)
    assert late == {
        "verdict": "late",
        "wait_ns": 3 * t(4),
        "run_ns": answered(1),
        "left_ns": 4 * MS,
    }
    assert policy.admit(1, deadline_ns=3 * t(4) + answered(1), now_ns=0)["verdict"] == "admit"
    assert policy.admit(1, deadline_ns=0, now_ns=0)["verdict"] == "admit"  # no deadline


def test_admission_answers_an_expired_deadline_at_once() -> None:
    policy = fitted(max_batch_size=4)
    assert policy.admit(1, deadline_ns=5 * MS, now_ns=5 * MS)["verdict"] == "expired"
    # Even with no fitted cost: an expired deadline is a fact, not a prediction.
    fresh = _core.testing.PolicyHarness(_core.BatcherConfig())
    assert fresh.admit(1, deadline_ns=1, now_ns=2)["verdict"] == "expired"


def test_admission_counts_only_what_runs_before_it() -> None:
    policy = fitted(max_batch_size=4, priority_levels=2, default_priority_level=2)
    for ticket in range(1, 13):
        policy.add(ticket, 1, priority=2, enqueue_ns=0)
    # Level 1 jumps the level-2 queue: nothing is ahead of it.
    deadline = answered(1)
    assert policy.admit(1, priority=1, deadline_ns=deadline, now_ns=0)["verdict"] == "admit"
    assert policy.admit(1, priority=2, deadline_ns=deadline, now_ns=0)["verdict"] == "late"


def test_admission_weighs_a_wide_request_by_its_bytes() -> None:
    policy = _core.testing.PolicyHarness(_core.BatcherConfig(max_batch_size=4))
    for rows in (1, 2, 4, 8, 3):
        policy.observe_batch(rows, t(rows), input_bytes=16 * rows)  # 16 bytes a row
    # One row, but as many bytes as 1000 rows: its cost is what its bytes predict.
    verdict = policy.admit(1, deadline_ns=3 * MS, now_ns=0, input_bytes=16_000)
    assert verdict["verdict"] == "late" and verdict["run_ns"] > 3 * MS
    assert policy.admit(1, deadline_ns=3 * MS, now_ns=0, input_bytes=16)["verdict"] == "admit"


# --- properties over random queues ---

queued = st.tuples(
    st.integers(1, 6),  # rows
    st.integers(0, 3_000),  # enqueue, us
    st.one_of(st.just(0), st.integers(1, 8_000)),  # deadline, us (0 = none)
    st.integers(0, 1),  # shape key
)


@settings(max_examples=300, deadline=None)
@given(
    requests=st.lists(queued, max_size=16),
    max_batch_size=st.integers(1, 12),
    delay_us=st.sampled_from([0, 200, 2_000]),
    now_us=st.integers(0, 6_000),
)
def test_no_batch_member_finishes_after_its_deadline(
    requests: list[tuple[int, int, int, int]], max_batch_size: int, delay_us: int, now_us: int
) -> None:
    policy = fitted(max_batch_size=max_batch_size, max_queue_delay_us=delay_us)
    by_ticket = {}
    for ticket, (rows, enqueue_us, deadline_us, key) in enumerate(requests, start=1):
        policy.add(
            ticket, rows, enqueue_ns=enqueue_us * US, deadline_ns=deadline_us * US, shape_key=key
        )
        by_ticket[ticket] = (rows, deadline_us * US, key)
    now = now_us * US
    decision = policy.decide(now)
    expired = {tk for tk, (_, deadline, _) in by_ticket.items() if 0 < deadline <= now}
    doomed = {
        tk
        for tk, (rows, deadline, _) in by_ticket.items()
        if tk not in expired and deadline and now + answered(rows) > deadline
    }
    assert set(decision["expired"]) == expired
    assert set(decision["doomed"]) == doomed
    if decision["action"] == "wait":
        assert decision["wait_until_ns"] > now
    run = decision["run"]
    assert not set(run) & (expired | doomed)
    if not run:
        return
    assert len({by_ticket[tk][2] for tk in run}) == 1  # one shape group
    batch_rows = sum(by_ticket[tk][0] for tk in run)
    assert batch_rows <= max_batch_size or len(run) == 1
    finish = now + answered(batch_rows)
    for ticket in run:
        deadline = by_ticket[ticket][1]
        assert deadline == 0 or finish <= deadline, (ticket, deadline, finish)


@settings(max_examples=200, deadline=None)
@given(
    ahead=st.lists(st.integers(1, 6), max_size=20),
    rows=st.integers(1, 6),
    left_us=st.integers(1, 20_000),
    instances=st.integers(1, 3),
    max_batch_size=st.integers(1, 12),
)
def test_admission_refuses_only_what_a_lower_bound_makes_late(
    ahead: list[int], rows: int, left_us: int, instances: int, max_batch_size: int
) -> None:
    policy = fitted(max_batch_size=max_batch_size, instances=instances)
    for ticket, queued_rows in enumerate(ahead, start=1):
        policy.add(ticket, queued_rows, enqueue_ns=0)
    verdict = policy.admit(rows, deadline_ns=left_us * US, now_ns=0)
    rows_ahead = sum(ahead)
    waves = rows_ahead // max_batch_size // instances
    own = max(rows, min(max_batch_size, rows_ahead % max_batch_size + rows))
    lower_bound = waves * t(max_batch_size) + answered(own)
    assert verdict["verdict"] == ("late" if lower_bound > left_us * US else "admit")
    if verdict["verdict"] == "late":
        assert verdict["wait_ns"] + verdict["run_ns"] == lower_bound


def test_requests_without_deadlines_batch_as_before() -> None:
    policy = fitted(max_batch_size=4)
    for ticket in range(1, 7):
        policy.add(ticket, 1, enqueue_ns=0)
    assert policy.decide(0)["run"] == [1, 2, 3, 4]


@pytest.mark.parametrize("rows", [1, 3])
def test_a_lone_request_with_room_runs_at_once(rows: int) -> None:
    policy = fitted(max_batch_size=4)
    assert policy.admit(rows, deadline_ns=answered(rows), now_ns=0)["verdict"] == "admit"
    policy.add(1, rows, enqueue_ns=0, deadline_ns=answered(rows))
    assert policy.decide(0)["run"] == [1]


def test_without_spread_in_batch_sizes_deadlines_assume_the_cheaper_split() -> None:
    # Every batch had 8 rows and took 8 ms: the fit cannot tell 8 ms of fixed cost from 1 ms a
    # row. Dropping or refusing must be sure, so a 1-row request counts as 1 ms, not 8 ms.
    policy = _core.testing.PolicyHarness(_core.BatcherConfig(max_batch_size=8))
    for _ in range(5):
        policy.observe_batch(8, 8 * MS)
    deadline = 1 * MS + MARGIN_NS + 100 * US
    assert policy.admit(1, deadline_ns=deadline, now_ns=0)["verdict"] == "admit"
    policy.add(1, 1, enqueue_ns=0, deadline_ns=deadline)
    decision = policy.decide(0)
    assert decision["doomed"] == [] and decision["run"] == [1]
    assert policy.decide(101 * US)["doomed"] == [1]
