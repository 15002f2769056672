"""VersionLease: the lock-free in-flight count a swap drains before closing a version."""

from __future__ import annotations

import threading

from headrace.registry.served import VersionLease


def test_retire_counts_what_is_in_flight_and_refuses_new_leases() -> None:
    lease = VersionLease()
    assert all(lease.acquire() for _ in range(3))
    lease.release()
    assert lease.retire(timeout_s=0.0) == 2  # two still in flight when the wait ran out
    assert not lease.acquire()  # retired: the caller looks up the new snapshot
    assert lease.retire(timeout_s=0.0) == 2  # the refused acquire took itself back
    lease.release()
    lease.release()
    assert lease.retire(timeout_s=0.0) == 0


def test_retire_waits_for_the_last_release() -> None:
    lease = VersionLease()
    assert lease.acquire()
    retiring = threading.Thread(target=lambda: results.append(lease.retire(timeout_s=60.0)))
    results: list[int] = []
    retiring.start()
    while not lease._retired:  # the flag is set: new leases are refused from here on
        pass
    assert not lease.acquire()
    assert retiring.is_alive()  # still waiting for the request in flight
    lease.release()
    retiring.join(60.0)
    assert results == [0]


def test_counts_stay_exact_across_threads() -> None:
    lease = VersionLease()
    per_thread = 20_000

    def churn() -> None:
        for _ in range(per_thread):
            assert lease.acquire()
            lease.release()

    threads = [threading.Thread(target=churn) for _ in range(4)]
    for thread in threads:
        thread.start()
    assert lease.acquire()  # one held across all the churn
    for thread in threads:
        thread.join()
    assert lease.retire(timeout_s=0.0) == 1


def test_shadow_copies_are_in_flight_but_not_clients() -> None:
    lease = VersionLease()
    assert lease.acquire() and lease.acquire(client=False) and lease.acquire(client=False)
    assert (lease.clients, lease._in_flight()) == (1, 3)
    lease.release(client=False)
    lease.release()
    assert (lease.clients, lease._in_flight()) == (0, 1)
    lease.release(client=False)
    assert lease.retire(1.0) == 0
    assert not lease.acquire(client=False) and lease.clients == 0 and lease._in_flight() == 0
