"""Feedback by request id: bounded memory, unknown and expired ids, bad rewards, labels scored
into per-variant quality windows."""

from __future__ import annotations

import math

import numpy as np
import pytest

from headrace.errors import InvalidArgumentError, NotFoundError, StatusCode
from headrace.routing import FeedbackAlreadyGivenError, FeedbackItem, FeedbackReceipt, RequestIds
from headrace.routing.feedback import (
    MAX_REMEMBERED_ELEMENTS,
    SWEEP_EVERY,
    SWEEP_MAX,
    FeedbackStore,
)
from unit.routing.routing_support import FakeClock, MakeEndpoints, endpoint, variants


def answered(routing, name: str, request_id: str, outputs=None, ok: bool = True):  # type: ignore[no-untyped-def]
    route = routing.resolve(name)
    routing.complete(route, ok=ok, latency_ns=1_000_000, request_id=request_id, outputs=outputs)
    return route


def test_memory_is_bounded_by_count(make_endpoints: MakeEndpoints) -> None:
    routing = make_endpoints(
        endpoint(name="e", variants=variants(("a", 1))), feedback_max_entries=100
    )
    for i in range(1_000):
        answered(routing, "e", f"r{i}")
    assert len(routing.feedback_store) == 100
    assert routing.feedback_store.evicted == 900
    with pytest.raises(NotFoundError, match=r"'r899'.*the last 100 answers are kept"):
        routing.feedback("r899", reward=1.0)
    assert routing.feedback("r900", reward=1.0) == FeedbackReceipt("e", "a")


def test_unknown_ids_never_add_state(make_endpoints: MakeEndpoints) -> None:
    routing = make_endpoints(endpoint(name="e", variants=variants(("a", 1))))
    answered(routing, "e", "known")
    for i in range(1_000):
        with pytest.raises(NotFoundError) as caught:
            routing.feedback(f"unknown{i}", reward=0.5)
        assert caught.value.code is StatusCode.NOT_FOUND
    assert len(routing.feedback_store) == 1


def test_ids_expire_after_the_ttl(make_endpoints: MakeEndpoints, clock: FakeClock) -> None:
    routing = make_endpoints(endpoint(name="e", variants=variants(("a", 1))), feedback_ttl_s=600)
    answered(routing, "e", "old")
    answered(routing, "e", "older-but-rewarded-in-time")
    clock.advance(599)
    routing.feedback("older-but-rewarded-in-time", reward=1.0)  # delayed feedback is normal
    clock.advance(2)
    with pytest.raises(NotFoundError, match="'old' was answered more than 600 s ago"):
        routing.feedback("old", reward=1.0)
    assert len(routing.feedback_store) == 1  # the expired entry was dropped when found
    # expired entries also leave as new answers arrive, without any feedback for them
    for i in range(SWEEP_EVERY):
        answered(routing, "e", f"new{i}")
    assert len(routing.feedback_store) == SWEEP_EVERY


def test_failed_requests_are_not_remembered(make_endpoints: MakeEndpoints) -> None:
    routing = make_endpoints(endpoint(name="e", variants=variants(("a", 1))))
    answered(routing, "e", "failed", ok=False)
    with pytest.raises(NotFoundError):
        routing.feedback("failed", reward=1.0)


@pytest.mark.parametrize("reward", [math.nan, math.inf, -math.inf])
def test_a_non_finite_reward_is_invalid(make_endpoints: MakeEndpoints, reward: float) -> None:
    routing = make_endpoints(endpoint(name="e", variants=variants(("a", 1))))
    answered(routing, "e", "r")
    with pytest.raises(InvalidArgumentError, match="finite"):
        routing.feedback("r", reward=reward)
    assert routing.report("e").variants[0].rewards.count == 0
    routing.feedback("r", reward=0.25)  # the id is still usable
    assert routing.report("e").variants[0].rewards.count == 1


def test_feedback_naming_another_endpoint_is_refused(make_endpoints: MakeEndpoints) -> None:
    routing = make_endpoints(
        endpoint(name="fraud", variants=variants(("a", 1))),
        endpoint(name="spam", variants=variants(("a", 1))),
    )
    answered(routing, "fraud", "r")
    with pytest.raises(
        InvalidArgumentError, match="request 'r' was answered by endpoint 'fraud', not 'spam'"
    ):
        routing.feedback("r", reward=1.0, endpoint="spam")
    assert routing.feedback("r", reward=1.0, endpoint="fraud").endpoint == "fraud"


def test_a_second_reward_is_refused(make_endpoints: MakeEndpoints) -> None:
    routing = make_endpoints(endpoint(name="e", variants=variants(("a", 1))))
    answered(routing, "e", "r")
    routing.feedback("r", reward=1.0)
    with pytest.raises(FeedbackAlreadyGivenError) as caught:
        routing.feedback("r", reward=1.0)
    assert caught.value.code is StatusCode.ALREADY_EXISTS
    with pytest.raises(InvalidArgumentError, match="needs a reward, a label or both"):
        routing.feedback("r")


def test_the_batch_form_answers_each_item(make_endpoints: MakeEndpoints) -> None:
    routing = make_endpoints(endpoint(name="e", variants=variants(("a", 1))))
    answered(routing, "e", "r1")
    answered(routing, "e", "r2")
    results = routing.feedback_batch(
        [
            FeedbackItem("r1", reward=1.0),
            FeedbackItem("nope", reward=1.0),
            FeedbackItem("r2", reward=math.nan),
            FeedbackItem("r2", reward=0.0),
        ]
    )
    assert results[0] == FeedbackReceipt("e", "a")
    assert isinstance(results[1], NotFoundError)
    assert isinstance(results[2], InvalidArgumentError)
    assert results[3] == FeedbackReceipt("e", "a")
    assert routing.report("e").variants[0].rewards.count == 2


def test_feedback_follows_an_updated_endpoint_and_not_a_deleted_one(
    make_endpoints: MakeEndpoints,
) -> None:
    routing = make_endpoints(endpoint(name="e", variants=variants(("a", 1), ("b", 1))))
    route = answered(routing, "e", "before-update")
    answered(routing, "e", "before-delete")
    routing.update(endpoint(name="e", variants=variants(("a", 1), ("b", 1), ("c", 1))))
    routing.feedback("before-update", reward=1.0)
    report = {v.name: v for v in routing.report("e").variants}
    assert report[route.variant].rewards.count == 1
    routing.delete("e")
    with pytest.raises(NotFoundError, match="was deleted"):
        routing.feedback("before-delete", reward=1.0)


def classifier_endpoint(kind: str = "auto") -> object:
    return endpoint(
        name="clf",
        variants=variants(("a", 1), ("b", 1)),
        quality={"kind": kind, "output": "probs", "window_s": 60, "labels": True},
    )


def test_labels_give_accuracy_per_variant_and_window(
    make_endpoints: MakeEndpoints, clock: FakeClock
) -> None:
    routing = make_endpoints(classifier_endpoint())
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1]], dtype=np.float32)  # classes 0, 1
    routes = {}
    for i in range(40):
        routes[i] = answered(routing, "clf", f"r{i}", outputs={"probs": scores})
    for i in range(40):
        truth = [0, 1] if routes[i].variant == "a" else [0, 2]  # b gets half its rows wrong
        routing.feedback(f"r{i}", label=np.array(truth))
    quality = {v.name: v.quality for v in routing.report("clf").variants}
    assert quality["a"] is not None and quality["a"].kind == "classifier"
    assert quality["a"].value == 1.0
    assert quality["b"] is not None and quality["b"].value == 0.5
    assert quality["a"].count + quality["b"].count == 80
    # a later window starts afresh
    clock.advance(120)
    answered_b = next(
        i
        for i in range(1000)
        if answered(routing, "clf", f"s{i}", {"probs": scores}).variant == "b"
    )
    routing.feedback(f"s{answered_b}", label=np.array([1, 1]))  # one of two right
    latest = {v.name: v.quality for v in routing.report("clf").variants}["b"]
    assert latest is not None and (latest.value, latest.count) == (0.5, 2)
    assert latest.window_start_s > quality["b"].window_start_s


def test_labels_give_mae_for_a_regressor(make_endpoints: MakeEndpoints) -> None:
    routing = make_endpoints(
        endpoint(
            name="reg", variants=variants(("a", 1)), quality={"kind": "regressor", "labels": True}
        )
    )
    answered(routing, "reg", "r", outputs={"y": np.array([[1.0], [2.0]])})
    routing.feedback("r", label=np.array([[1.5], [1.0]]), reward=0.0)
    quality = routing.report("reg").variants[0].quality
    assert quality is not None and quality.kind == "regressor"
    assert quality.value == pytest.approx(0.75)
    with pytest.raises(FeedbackAlreadyGivenError):
        routing.feedback("r", label=np.array([[1.5], [1.0]]))


def test_bad_labels_are_clear_errors(make_endpoints: MakeEndpoints) -> None:
    routing = make_endpoints(classifier_endpoint("classifier"))
    scores = np.zeros((2, 3), dtype=np.float32)
    answered(routing, "clf", "r", outputs={"probs": scores})
    with pytest.raises(InvalidArgumentError, match=r"label shape \[3\] fits neither"):
        routing.feedback("r", label=np.array([0, 1, 2]))
    answered(routing, "clf", "no-outputs")
    with pytest.raises(InvalidArgumentError, match="without a quality output"):
        routing.feedback("no-outputs", label=np.array([0, 1]))
    big = np.zeros((MAX_REMEMBERED_ELEMENTS + 1,), dtype=np.float32)
    answered(routing, "clf", "big", outputs={"probs": big})
    with pytest.raises(InvalidArgumentError, match="at most 1024 elements"):
        routing.feedback("big", label=big)
    answered(routing, "clf", "other", outputs={"other": scores})
    with pytest.raises(InvalidArgumentError, match=r"without a quality output \('probs'\)"):
        routing.feedback("other", label=np.array([0, 1]))


def test_labels_need_the_endpoint_to_keep_answers(make_endpoints: MakeEndpoints) -> None:
    routing = make_endpoints(endpoint(name="e", variants=variants(("a", 1))))
    answered(routing, "e", "r", outputs={"probs": np.zeros((1, 2))})
    with pytest.raises(InvalidArgumentError, match="labels = true"):
        routing.feedback("r", label=np.array([0]))


def test_kept_outputs_are_copies(make_endpoints: MakeEndpoints) -> None:
    routing = make_endpoints(classifier_endpoint())
    batch = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1]], dtype=np.float32)
    answered(routing, "clf", "r", outputs={"probs": batch[:1]})  # a view of a batch buffer
    batch[0] = [0.0, 0.0, 1.0]  # the buffer is reused for the next batch
    routing.feedback("r", label=np.array([0]))
    quality = routing.report("clf").variants
    assert sum(v.quality.value * v.quality.count for v in quality if v.quality) == 1


def test_the_ring_keeps_the_newest_answers_and_reused_ids(
    make_endpoints: MakeEndpoints, clock: FakeClock
) -> None:
    routing = make_endpoints(
        endpoint(name="e", variants=variants(("a", 1))), feedback_max_entries=3
    )
    for request_id in ["x", "y", "x", "z", "w"]:  # x is reused: its newest answer counts
        answered(routing, "e", request_id)
    assert len(routing.feedback_store) == 3
    routing.feedback("x", reward=1.0)
    routing.feedback("w", reward=1.0)
    with pytest.raises(NotFoundError):
        routing.feedback("y", reward=1.0)
    assert routing.feedback_store.evicted == 1  # y left while live


def test_request_ids_are_unique() -> None:
    first, second = RequestIds(), RequestIds()
    ids = {first.next() for _ in range(1_000)} | {second.next() for _ in range(1_000)}
    assert len(ids) == 2_000


def test_a_sweep_is_bounded() -> None:
    store: FeedbackStore[None] = FeedbackStore(max_entries=10_000, ttl_s=1)
    for i in range(1_000):
        store.remember(str(i), None, now_ns=0)  # type: ignore[type-var]
    assert store.sweep(now_ns=2 * 10**9) == SWEEP_MAX
    assert len(store) == 1_000 - SWEEP_MAX
    assert store.sweep(now_ns=0) == 0  # nothing expired yet at that time


def test_assigned_ids_are_found_by_their_number_without_the_dict(
    make_endpoints: MakeEndpoints, clock: FakeClock
) -> None:
    """Ids the server assigns go to a ring by their number: found again, bounded by count
    (the older of two ids sharing a slot is gone, and counted as evicted), refused after the
    TTL; a client's id that merely looks like an assigned one is not confused with it."""
    routing = make_endpoints(
        endpoint(name="e", variants=variants(("a", 1))),
        feedback_max_entries=4,
        feedback_ttl_s=600,
    )
    store = routing.feedback_store
    numbered = [store.ids.numbered() for _ in range(6)]
    for seq, request_id in numbered[:4]:
        route = routing.resolve("e")
        routing.complete(route, True, 1_000_000, request_id, None, seq)
    assert len(store) == 4 and len(store._slots) == 0  # no dict entry for an assigned id
    assert routing.feedback(numbered[0][1], reward=1.0) == FeedbackReceipt("e", "a")
    with pytest.raises(FeedbackAlreadyGivenError):
        routing.feedback(numbered[0][1], reward=1.0)
    for seq, request_id in numbered[4:]:  # take the slots of the first two
        routing.complete(routing.resolve("e"), True, 1_000_000, request_id, None, seq)
    assert store.evicted == 2 and len(store) == 4
    for _, gone in numbered[:2]:
        with pytest.raises(NotFoundError, match="the last 4 answers are kept"):
            routing.feedback(gone, reward=1.0)
    for forged in (numbered[2][1] + "0", numbered[2][1].replace("-", "+"), store.ids.prefix):
        with pytest.raises(NotFoundError):
            routing.feedback(forged, reward=1.0)
    clock.advance(601)
    with pytest.raises(NotFoundError, match="answered more than 600 s ago"):
        routing.feedback(numbered[3][1], reward=1.0)
    assert len(store) == 3  # the expired one was dropped when found
