"""The pure batching policy (csrc/batching/batching_policy.cc) driven with a fake clock.

Every time here is a number handed to decide(): nothing sleeps, nothing reads a clock.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headrace import _core

US = 1_000
MS = 1_000_000
INVALID_ARGUMENT = 3


def harness(**settings: Any) -> _core.testing.PolicyHarness:
    return _core.testing.PolicyHarness(_core.BatcherConfig(**settings))


def fitted(a_ns: int, b_ns: int, **settings: Any) -> _core.testing.PolicyHarness:
    """A harness whose cost model has seen batches costing exactly a_ns*rows + b_ns."""
    policy = harness(**settings)
    for rows in (1, 2, 4, 8, 3):
        policy.observe_batch(rows, a_ns * rows + b_ns)
    cost = policy.cost()
    assert cost["a_ns_per_row"] == pytest.approx(a_ns)
    assert cost["b_ns"] == pytest.approx(b_ns)
    return policy


# --- preferred sizes, delay, rows ---


def test_waits_for_the_delay_then_sends_what_is_there() -> None:
    policy = harness(max_batch_size=8, max_queue_delay_us=1000)
    policy.add(1, 2, enqueue_ns=0)
    decision = policy.decide(10 * US)
    assert decision["action"] == "wait"
    assert decision["wait_until_ns"] == 1000 * US
    assert policy.decide(1000 * US)["run"] == [1]


def test_preferred_size_is_sent_at_once() -> None:
    policy = harness(max_batch_size=8, preferred_batch_sizes=[4], max_queue_delay_us=1000)
    policy.add(1, 2, enqueue_ns=0)
    assert policy.decide(0)["action"] == "wait"
    policy.add(2, 2, enqueue_ns=5 * US)
    decision = policy.decide(5 * US)
    assert decision["action"] == "run"
    assert decision["run"] == [1, 2]


def test_a_reached_preferred_size_is_sent_without_the_rest() -> None:
    # As Triton: a preferred-size prefix goes at once; the request beyond it waits its turn.
    policy = harness(max_batch_size=8, preferred_batch_sizes=[2, 4], max_queue_delay_us=1000)
    policy.add(1, 1, enqueue_ns=0)
    policy.add(2, 1, enqueue_ns=0)
    policy.add(3, 1, enqueue_ns=0)
    assert policy.decide(1 * US)["run"] == [1, 2]


def test_without_preferred_sizes_max_batch_size_is_the_preferred_size() -> None:
    policy = harness(max_batch_size=4, max_queue_delay_us=1000)
    for ticket in range(1, 4):
        policy.add(ticket, 1, enqueue_ns=0)
    assert policy.decide(1 * US)["action"] == "wait"
    policy.add(4, 1, enqueue_ns=2 * US)
    assert policy.decide(2 * US)["run"] == [1, 2, 3, 4]


def test_delay_counts_from_the_oldest_request() -> None:
    policy = harness(max_batch_size=8, max_queue_delay_us=1000)
    policy.add(1, 1, enqueue_ns=0)
    policy.add(2, 1, enqueue_ns=500 * US)
    decision = policy.decide(900 * US)
    assert decision["action"] == "wait"
    assert decision["wait_until_ns"] == 1000 * US  # not 1500 us: the newest does not reset it
    assert policy.decide(1000 * US)["run"] == [1, 2]


def test_zero_delay_sends_at_once() -> None:
    policy = harness(max_batch_size=8)
    policy.add(1, 3, enqueue_ns=0)
    assert policy.decide(0) == {
        "action": "run",
        "run": [1],
        "expired": [],
        "shed": [],
        "wait_until_ns": None,
        "companion_wait": False,
    }


def test_counts_rows_and_never_exceeds_max_batch_size() -> None:
    policy = harness(max_batch_size=8, max_queue_delay_us=1000)
    for ticket in range(1, 5):
        policy.add(ticket, 3, enqueue_ns=0)
    decision = policy.decide(0)
    # 3 + 3 = 6 rows; a third request would make 9 > 8, so the batch is full and goes now.
    assert decision["action"] == "run"
    assert decision["run"] == [1, 2]


def test_requests_are_never_split_and_do_not_jump_the_queue() -> None:
    policy = harness(max_batch_size=4, max_queue_delay_us=1000)
    policy.add(1, 3, enqueue_ns=0)
    policy.add(2, 2, enqueue_ns=0)
    policy.add(3, 1, enqueue_ns=0)  # would fit after 1, but 2 is ahead of it
    assert policy.decide(0)["run"] == [1]


def test_oversize_request_runs_alone() -> None:
    policy = harness(max_batch_size=4, max_queue_delay_us=1000)
    policy.add(1, 10, enqueue_ns=0)
    policy.add(2, 1, enqueue_ns=0)
    decision = policy.decide(0)
    assert decision["action"] == "run"
    assert decision["run"] == [1]
    policy.remove([1])
    policy.add(3, 9, enqueue_ns=1 * US)
    # A small head is not held back by the oversize request behind it, nor joined by it.
    assert policy.decide(1 * US)["run"] == [2]
    policy.remove([2])
    assert policy.decide(1 * US)["run"] == [3]


def test_shape_groups_never_mix() -> None:
    policy = harness(max_batch_size=8)
    policy.add(1, 1, enqueue_ns=0, shape_key=7)
    policy.add(2, 1, enqueue_ns=1, shape_key=9)
    policy.add(3, 1, enqueue_ns=2, shape_key=7)
    policy.add(4, 1, enqueue_ns=3, shape_key=9)
    assert policy.decide(10)["run"] == [1, 3]
    policy.remove([1, 3])
    assert policy.decide(10)["run"] == [2, 4]


def test_flush_sends_without_waiting() -> None:
    policy = harness(max_batch_size=8, max_queue_delay_us=1000)
    policy.add(1, 1, enqueue_ns=0)
    assert policy.decide(0)["action"] == "wait"
    assert policy.decide(0, flush=True)["run"] == [1]


def test_no_batch_is_formed_while_every_instance_is_busy() -> None:
    policy = harness(max_batch_size=2)
    policy.add(1, 1, enqueue_ns=0)
    policy.add(2, 1, enqueue_ns=0)
    policy.set_instances(0, 2)
    assert policy.decide(1 * MS)["action"] == "idle"
    policy.set_instances(1, 1)
    assert policy.decide(1 * MS)["run"] == [1, 2]


# --- priorities ---


def test_level_one_is_batched_before_level_two() -> None:
    policy = harness(max_batch_size=8, priority_levels=2, default_priority_level=2)
    policy.add(1, 1, priority=2, enqueue_ns=0)
    policy.add(2, 1, priority=0, enqueue_ns=1)  # 0 = the default level, 2
    policy.add(3, 1, priority=1, enqueue_ns=2)
    policy.add(4, 1, priority=1, enqueue_ns=3)
    assert policy.decide(10)["run"] == [3, 4, 1, 2]


def test_a_full_batch_of_level_one_leaves_level_two_waiting() -> None:
    policy = harness(max_batch_size=2, priority_levels=3, default_priority_level=3)
    policy.add(1, 1, priority=3, enqueue_ns=0)
    policy.add(2, 1, priority=1, enqueue_ns=1)
    policy.add(3, 1, priority=2, enqueue_ns=2)
    assert policy.decide(10)["run"] == [2, 3]


def test_priority_outside_the_levels_is_refused() -> None:
    policy = harness(priority_levels=2, default_priority_level=1)
    with pytest.raises(_core.CoreError) as error:
        policy.add(1, 1, priority=3, enqueue_ns=0)
    assert error.value.code == INVALID_ARGUMENT


def test_bad_config_is_refused() -> None:
    with pytest.raises(_core.CoreError) as error:
        harness(max_batch_size=4, preferred_batch_sizes=[8])
    assert error.value.code == INVALID_ARGUMENT
    assert "preferred" in error.value.message
    with pytest.raises(_core.CoreError):
        harness(priority_levels=2, default_priority_level=0)
    with pytest.raises(_core.CoreError):
        harness(max_batch_size=0)


# --- timeouts ---


def test_wait_until_includes_the_next_deadline() -> None:
    policy = harness(max_batch_size=8, max_queue_delay_us=1000)
    policy.add(1, 1, enqueue_ns=0)
    policy.add(2, 1, enqueue_ns=0, deadline_ns=300 * US)
    decision = policy.decide(100 * US)
    assert decision["action"] == "wait"
    assert decision["wait_until_ns"] == 300 * US


def test_expired_requests_are_reported_and_not_run() -> None:
    policy = harness(max_batch_size=8, max_queue_delay_us=1000)
    policy.add(1, 1, enqueue_ns=0, deadline_ns=300 * US)
    policy.add(2, 1, enqueue_ns=0)
    decision = policy.decide(300 * US)
    assert decision["expired"] == [1]
    assert decision["action"] == "wait"
    assert decision["wait_until_ns"] == 1000 * US
    decision = policy.decide(1000 * US)
    assert decision["expired"] == [1]  # still queued in the harness: reported again
    assert decision["run"] == [2]


def test_deadlines_are_watched_while_every_instance_is_busy() -> None:
    # Triton #7512: a queued request's timeout must fire at its deadline, not after the
    # running batch ends.
    policy = harness(max_batch_size=8)
    policy.set_instances(0, 1)
    policy.add(1, 1, enqueue_ns=0, deadline_ns=5 * MS)
    policy.add(2, 1, enqueue_ns=0, deadline_ns=2 * MS)
    decision = policy.decide(1 * MS)
    assert decision["action"] == "wait"
    assert decision["wait_until_ns"] == 2 * MS
    decision = policy.decide(2 * MS)
    assert decision["expired"] == [2]
    assert decision["wait_until_ns"] == 5 * MS
    assert decision["run"] == []


# --- auto delay ---


def test_auto_lone_request_on_an_idle_server_never_waits() -> None:
    policy = harness(max_batch_size=8, auto_delay=True)
    policy.add(1, 1, enqueue_ns=0)
    assert policy.decide(0)["run"] == [1]


def test_auto_does_not_wait_when_no_companion_is_expected_in_time() -> None:
    policy = fitted(100 * US, 500 * US, max_batch_size=8, auto_delay=True)
    for arrival in range(0, 50 * MS, 10 * MS):  # one request every 10 ms
        policy.observe_arrival(arrival)
    policy.add(1, 1, enqueue_ns=50 * MS)
    assert policy.decide(50 * MS)["run"] == [1]


def test_auto_waits_under_load_when_a_companion_is_due() -> None:
    policy = fitted(100 * US, 500 * US, max_batch_size=8, auto_delay=True)
    policy.set_instances(1, 1)
    for arrival in range(0, 1 * MS, 50 * US):  # one request every 50 us
        policy.observe_arrival(arrival)
    policy.add(1, 1, enqueue_ns=1 * MS)
    decision = policy.decide(1 * MS)
    assert decision["action"] == "wait"
    # It waits at most the fixed cost a companion would share, counted from the oldest.
    assert decision["wait_until_ns"] == 1 * MS + 500 * US
    assert policy.decide(1 * MS + 500 * US)["run"] == [1]


def test_auto_waiting_is_bounded_by_the_saving() -> None:
    # Arrivals every 300 us, but a companion only saves b = 100 us: not worth waiting for.
    policy = fitted(100 * US, 100 * US, max_batch_size=8, auto_delay=True)
    for arrival in range(0, 3 * MS, 300 * US):
        policy.observe_arrival(arrival)
    policy.add(1, 1, enqueue_ns=3 * MS)
    assert policy.decide(3 * MS)["run"] == [1]


def saturated(interval_ns: int, until_ns: int, **settings: Any) -> _core.testing.PolicyHarness:
    """A harness on a busy server whose requests arrived every interval_ns before until_ns, with a
    cheap fitted batch cost (so the unsaturated rule would never wait)."""
    policy = fitted(10 * US, 10 * US, max_batch_size=64, auto_delay=True, **settings)
    for arrival in range(0, until_ns, interval_ns):
        policy.observe_arrival(arrival)
    policy.set_saturated(True)
    return policy


def test_auto_saturated_waits_for_companions_once_waits_have_found_them() -> None:
    policy = saturated(300 * US, 2700 * US)
    policy.observe_companion_wait(5)  # an earlier wait found company
    assert policy.cost()["wait_yield"] == pytest.approx(0.5)
    policy.add(1, 1, enqueue_ns=2700 * US)
    first = policy.decide(2700 * US)
    # Until a lull of three arrival intervals (the cap, 6 intervals or 2 ms, is further away).
    assert first["action"] == "wait" and first["companion_wait"]
    assert first["wait_until_ns"] == 2700 * US + 900 * US
    policy.add(2, 1, enqueue_ns=3000 * US)  # a companion pushes the lull back
    assert policy.decide(3000 * US)["wait_until_ns"] == 3900 * US
    sent = policy.decide(3900 * US)
    assert sent["run"] == [1, 2] and sent["companion_wait"]


def test_auto_saturated_wait_is_capped_from_the_oldest() -> None:
    policy = saturated(100 * US, 1 * MS)
    policy.observe_companion_wait(8)
    for ticket, at in enumerate(range(1 * MS, 4 * MS, 100 * US)):  # arrivals never pause
        policy.add(ticket, 1, enqueue_ns=at)
        decision = policy.decide(at)
        if at < 1 * MS + 600 * US:
            assert decision["action"] == "wait"
        else:  # 6 intervals of 100 us from the oldest: the batch goes
            assert decision["action"] == "run" and decision["run"][0] == 0
            break
    else:
        raise AssertionError("never sent")
    # Intervals long enough that 6 of them exceed 2 ms: the cap holds; a latency target
    # tightens it to a quarter of the target.
    slow = saturated(500 * US, 4 * MS)
    slow.observe_companion_wait(8)
    for ticket, at in enumerate(range(4 * MS, 7 * MS, 400 * US)):  # arrivals never pause
        slow.add(ticket, 1, enqueue_ns=at)
        interval = slow.cost()["arrival_interval_ns"]
        assert 6 * interval > 2 * MS
        decision = slow.decide(at)
        if at < 6 * MS:
            assert decision["wait_until_ns"] == min(6 * MS, at + math.ceil(3 * interval))
        else:  # 2 ms after the oldest
            assert decision["action"] == "run" and decision["run"][0] == 0
            break
    else:
        raise AssertionError("never sent")
    targeted = saturated(400 * US, 4 * MS, latency_target_us=2000)
    targeted.observe_companion_wait(8)
    targeted.add(1, 1, enqueue_ns=4 * MS)
    assert targeted.decide(4 * MS)["wait_until_ns"] == 4 * MS + 500 * US


def test_auto_saturated_with_a_lone_caller_runs_at_once_and_probes_rarely() -> None:
    policy = saturated(400 * US, 40 * MS)  # 100 arrivals
    assert policy.cost()["probe_due"]  # the first wait is always tried...
    policy.observe_companion_wait(1)  # ...and found nobody
    assert not policy.cost()["probe_due"]
    policy.add(1, 1, enqueue_ns=40 * MS)
    assert policy.decide(40 * MS)["run"] == [1]
    policy.remove([1])
    for arrival in range(40 * MS + 400 * US, 150 * MS, 400 * US):
        policy.observe_arrival(arrival)
    assert policy.cost()["probe_due"]  # 256 arrivals since the last try
    policy.add(2, 1, enqueue_ns=150 * MS)
    probe = policy.decide(150 * MS)
    assert probe["action"] == "wait" and probe["companion_wait"]
    assert policy.decide(150 * MS + 1200 * US)["run"] == [2]  # nobody came: the lull ends it
    policy.remove([2])
    policy.observe_companion_wait(1)
    assert not policy.cost()["probe_due"] and policy.cost()["wait_yield"] == 0
    policy.add(3, 1, enqueue_ns=151 * MS)
    assert policy.decide(151 * MS)["run"] == [3]


def test_auto_does_not_use_the_saturated_wait_on_a_server_with_cpu_to_spare() -> None:
    policy = saturated(300 * US, 3 * MS)
    policy.observe_companion_wait(8)
    policy.set_saturated(False)
    policy.add(1, 1, enqueue_ns=3 * MS)
    decision = policy.decide(3 * MS)
    assert decision["run"] == [1] and not decision["companion_wait"]


def test_wait_yield_rises_fast_and_falls_slowly() -> None:
    policy = harness(max_batch_size=8, auto_delay=True)
    policy.observe_companion_wait(3)
    assert policy.cost()["wait_yield"] == pytest.approx(0.5)
    policy.observe_companion_wait(3)
    assert policy.cost()["wait_yield"] == pytest.approx(0.75)
    for _ in range(3):
        policy.observe_companion_wait(1)
    assert policy.cost()["wait_yield"] == pytest.approx(0.75 * 0.9**3)
    assert policy.cost()["wait_yield"] >= 0.5  # a few lone batches do not switch waiting off


def test_fixed_delay_is_skipped_while_waits_find_no_companions() -> None:
    # Triton would make every request of a lone closed-loop caller wait the whole delay.
    policy = harness(max_batch_size=8, max_queue_delay_us=500)
    policy.add(1, 1, enqueue_ns=0)
    first = policy.decide(0)
    assert first["action"] == "wait" and first["companion_wait"]  # the first wait is tried
    assert policy.decide(500 * US)["run"] == [1]
    policy.remove([1])
    policy.observe_companion_wait(1)  # it found nobody
    for ticket in range(2, 6):
        at = ticket * MS
        policy.observe_arrival(at - 1)
        policy.add(ticket, 1, enqueue_ns=at)
        decision = policy.decide(at)
        assert decision["run"] == [ticket] and not decision["companion_wait"]
        policy.remove([ticket])
    policy.observe_companion_wait(3)  # a later try found company: the delay is spent again
    policy.add(9, 1, enqueue_ns=10 * MS)
    assert policy.decide(10 * MS)["wait_until_ns"] == 10 * MS + 500 * US


def test_cost_fit_follows_the_last_batches() -> None:
    policy = harness(max_batch_size=8)
    prior = policy.cost()
    assert prior["samples"] == 0
    assert prior["b_ns"] > 0 and prior["a_ns_per_row"] > 0
    for _ in range(80):  # more than the window: the old regime is forgotten
        policy.observe_batch(2, 1 * MS)
        policy.observe_batch(4, 3 * MS)
    for _ in range(64):
        policy.observe_batch(1, 150 * US)
        policy.observe_batch(5, 350 * US)
    cost = policy.cost()
    assert cost["samples"] == 64
    assert cost["a_ns_per_row"] == pytest.approx(50 * US)
    assert cost["b_ns"] == pytest.approx(100 * US)


def test_arrival_interval_is_an_ewma() -> None:
    policy = harness()
    policy.observe_arrival(0)
    assert policy.cost()["arrival_interval_ns"] < 0  # unknown from a single arrival
    policy.observe_arrival(100 * US)
    assert policy.cost()["arrival_interval_ns"] == pytest.approx(100 * US)
    policy.observe_arrival(1100 * US)
    assert policy.cost()["arrival_interval_ns"] == pytest.approx(0.8 * 100 * US + 0.2 * 1000 * US)


# --- latency target ---


def test_sheds_what_can_no_longer_meet_the_latency_target() -> None:
    policy = fitted(100 * US, 500 * US, max_batch_size=8, auto_delay=True, latency_target_us=2000)
    policy.set_instances(0, 1)  # busy: the request waits in the queue
    policy.add(1, 1, enqueue_ns=0)
    decision = policy.decide(1300 * US)  # 1300 + 600 <= 2000: can still make it
    assert decision["shed"] == []
    assert decision["action"] == "wait"
    assert decision["wait_until_ns"] == 1400 * US + 1  # the first instant it cannot
    decision = policy.decide(1401 * US)
    assert decision["shed"] == [1]
    assert decision["action"] == "idle"


def test_latency_target_trims_the_batch_to_what_the_oldest_can_afford() -> None:
    policy = fitted(100 * US, 500 * US, max_batch_size=8, latency_target_us=2000)
    policy.add(1, 1, enqueue_ns=0)
    for ticket in range(2, 8):
        policy.add(ticket, 1, enqueue_ns=1000 * US)
    # At 1000 us the oldest has 1000 us left: 500 + 100*rows <= 1000 allows 5 rows.
    decision = policy.decide(1000 * US)
    assert decision["shed"] == []
    assert decision["run"] == [1, 2, 3, 4, 5]


def test_oversize_request_that_cannot_meet_the_target_is_shed_at_once() -> None:
    policy = fitted(100 * US, 500 * US, max_batch_size=8, latency_target_us=1000)
    policy.add(1, 6, enqueue_ns=0)  # 500 + 600 > 1000 even alone, right now
    policy.add(2, 1, enqueue_ns=0)
    decision = policy.decide(0)
    assert decision["shed"] == [1]
    assert decision["run"] == [2]


# --- properties over random queues ---

queued_request = st.tuples(
    st.integers(1, 12),  # rows
    st.integers(0, 3),  # priority (0 = default level)
    st.integers(0, 2_000),  # enqueue, us
    st.one_of(st.just(0), st.integers(1, 4_000)),  # deadline, us (0 = none)
    st.integers(0, 2),  # shape key
)


@settings(max_examples=300, deadline=None)
@given(
    requests=st.lists(queued_request, max_size=20),
    max_batch_size=st.integers(1, 16),
    preferred=st.lists(st.integers(1, 16), max_size=3),
    delay_us=st.sampled_from([0, 100, 1_000]),
    now_us=st.integers(0, 5_000),
    free=st.integers(0, 2),
)
def test_decisions_keep_the_rules(
    requests: list[tuple[int, int, int, int, int]],
    max_batch_size: int,
    preferred: list[int],
    delay_us: int,
    now_us: int,
    free: int,
) -> None:
    preferred = sorted({size for size in preferred if size <= max_batch_size})
    policy = harness(
        max_batch_size=max_batch_size,
        preferred_batch_sizes=preferred,
        max_queue_delay_us=delay_us,
        priority_levels=3,
        default_priority_level=2,
    )
    policy.set_instances(free, 2 - free)
    by_ticket = {}
    for ticket, (rows, priority, enqueue_us, deadline_us, key) in enumerate(requests, start=1):
        policy.add(
            ticket,
            rows,
            priority=priority,
            enqueue_ns=enqueue_us * US,
            deadline_ns=deadline_us * US,
            shape_key=key,
        )
        level = priority or 2
        by_ticket[ticket] = (rows, level, deadline_us * US, key)
    now = now_us * US
    decision = policy.decide(now)

    expired = {t for t, (_, _, deadline, _) in by_ticket.items() if 0 < deadline <= now}
    assert set(decision["expired"]) == expired
    live = sorted((t for t in by_ticket if t not in expired), key=lambda t: (by_ticket[t][1], t))
    if decision["action"] == "wait":
        assert decision["wait_until_ns"] > now
    if not live or free == 0:
        assert decision["action"] != "run"
        return
    if delay_us == 0:
        assert decision["action"] == "run"
    if decision["action"] != "run":
        return
    run = decision["run"]
    head_key = by_ticket[live[0]][3]
    group = [t for t in live if by_ticket[t][3] == head_key]
    # The batch is a prefix of the head's shape group, in priority-then-arrival order.
    assert run == group[: len(run)]
    total = sum(by_ticket[t][0] for t in run)
    assert total <= max_batch_size or len(run) == 1
    assert not set(run) & expired
