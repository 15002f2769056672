"""Shadow mirroring: copies leave after the primary's answer, through a bounded queue; a slow
shadow never holds the primary up, and what it answers is compared with the primary."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from headrace.routing import Endpoints, ShadowMirror
from headrace.routing.config import QualityConfig
from headrace.routing.shadow import compare
from unit.routing.routing_support import FakeClock, endpoint

SCORES = np.array([[0.9, 0.1], [0.3, 0.7]], dtype=np.float32)


def mirrored(sample: float = 1.0, tolerance: float = 1e-6, kind: str = "auto") -> Endpoints:
    config = endpoint(
        name="e",
        variants=[{"name": "a", "model": "primary"}],
        shadows=[{"name": "next", "model": "candidate", "sample": sample, "tolerance": tolerance}],
        quality={"kind": kind},
    )
    return Endpoints([config], seed="shadow")


async def primary_request(
    routing: Endpoints, mirror: ShadowMirror, inputs: Mapping[str, Any]
) -> Mapping[str, Any]:
    """What the engine does for one request: route, run, answer, count, then mirror."""
    route = routing.resolve("e")
    outputs = {"probs": SCORES}  # the primary's answer
    routing.complete(route, ok=True, latency_ns=1_000, request_id=None, outputs=outputs)
    mirror.offer(route, inputs, outputs)
    await asyncio.sleep(0)  # the answer being written: other tasks (the shadows') may run
    return outputs


def test_a_slow_shadow_never_holds_up_the_primary() -> None:
    async def scenario() -> None:
        release = asyncio.Event()
        calls: list[str] = []

        async def slow_shadow(model: str, version: str, inputs: Mapping[str, Any]) -> Any:
            calls.append(model)
            await release.wait()  # a shadow that does not answer until the test says so
            return {"probs": SCORES}

        routing = mirrored()
        mirror = ShadowMirror(slow_shadow, queue_size=8, workers=2)
        mirror.start()
        answers = [await primary_request(routing, mirror, {"x": i}) for i in range(100)]
        # every primary request was answered while no shadow call had returned
        assert len(answers) == 100 and not release.is_set()
        stats = routing.report("e").shadows[0]
        assert (stats.offered, stats.completed) == (100, 0)
        # two copies are with the (stuck) shadow, eight wait, the rest were dropped and counted
        assert calls == ["candidate", "candidate"]
        assert mirror.in_flight == 2 and mirror.queued == 8
        assert stats.dropped == 90
        release.set()
        while routing.report("e").shadows[0].completed < 10:
            await asyncio.sleep(0)
        final = routing.report("e").shadows[0]
        assert (final.completed, final.dropped, mirror.queued, mirror.in_flight) == (10, 90, 0, 0)
        assert final.agreement == 1.0
        await mirror.stop()

    asyncio.run(scenario())


def test_the_queue_is_bounded_and_drops_are_counted() -> None:
    async def scenario() -> None:
        async def never(model: str, version: str, inputs: Mapping[str, Any]) -> Any:
            await asyncio.Event().wait()

        routing = mirrored()
        mirror = ShadowMirror(never, queue_size=4, workers=1)
        # workers not started: nothing leaves the queue
        queued = [mirror.offer(routing.resolve("e"), {}, {"probs": SCORES}) for _ in range(10)]
        assert queued == [1] * 4 + [0] * 6
        stats = routing.report("e").shadows[0]
        assert (stats.offered, stats.dropped) == (10, 6)
        await mirror.stop()

    asyncio.run(scenario())


def test_agreement_delta_latency_and_errors_are_measured() -> None:
    async def scenario() -> None:
        answers = iter(
            [
                {"probs": SCORES + 0.05},  # same argmax, |Δ| 0.05: agrees (classifier)
                {"probs": SCORES[:, ::-1].copy()},  # argmax flipped: disagrees
                RuntimeError("shadow model failed"),
                {"probs": np.zeros((3, 2), dtype=np.float32)},  # shaped unlike the primary
            ]
        )

        async def shadow(model: str, version: str, inputs: Mapping[str, Any]) -> Any:
            answer = next(answers)
            if isinstance(answer, Exception):
                raise answer
            return answer

        routing = mirrored()
        mirror = ShadowMirror(shadow, queue_size=16, workers=1)
        mirror.start()
        for i in range(4):
            await primary_request(routing, mirror, {"x": i})
        while True:
            stats = routing.report("e").shadows[0]
            if stats.completed + stats.errors == 4:
                break
            await asyncio.sleep(0)
        assert (stats.completed, stats.errors, stats.mismatched) == (3, 1, 1)
        assert stats.agreement == 0.5
        assert stats.abs_delta_max == pytest.approx(0.8, rel=1e-6)  # 0.9 - 0.1
        assert stats.abs_delta_p50 == pytest.approx(0.05, rel=0.07)
        assert stats.latency_p99_ms >= 0
        await mirror.stop()

    asyncio.run(scenario())


def test_sampling_sends_about_the_configured_share() -> None:
    async def scenario() -> None:
        async def shadow(model: str, version: str, inputs: Mapping[str, Any]) -> Any:
            return {"probs": SCORES}

        routing = mirrored(sample=0.25)
        mirror = ShadowMirror(shadow, queue_size=10_000, workers=1, seed=5)
        sent = sum(mirror.offer(routing.resolve("e"), {}, {"probs": SCORES}) for _ in range(4_000))
        assert 900 <= sent <= 1_100
        await mirror.stop()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("kind", "tolerance", "shadow", "expected"),
    [
        ("regressor", 1e-3, {"probs": SCORES + 1e-4}, (True, pytest.approx(1e-4, rel=0.01))),
        ("regressor", 1e-5, {"probs": SCORES + 1e-4}, (False, pytest.approx(1e-4, rel=0.01))),
        ("classifier", 0.0, {"probs": SCORES * 2}, (True, pytest.approx(0.9))),
        ("auto", 0.0, {"probs": SCORES[:, ::-1]}, (False, pytest.approx(0.8, rel=1e-6))),
        ("auto", 0.0, {"other": SCORES}, None),
        ("auto", 0.0, {"probs": np.array([[np.nan, 0.0], [0.0, 1.0]])}, (False, float("inf"))),
    ],
)
def test_compare(kind: str, tolerance: float, shadow: dict[str, Any], expected: Any) -> None:
    quality = QualityConfig(kind=kind)  # type: ignore[arg-type]
    assert compare(quality, tolerance, {"probs": SCORES}, shadow) == expected


def test_bytes_outputs_agree_when_equal() -> None:
    quality = QualityConfig()
    words = np.array([b"yes", b"no"], dtype=object)
    assert compare(quality, 0.0, {"w": words}, {"w": words.copy()}) == (True, 0.0)
    assert compare(quality, 0.0, {"w": words}, {"w": words[::-1].copy()}) == (False, float("inf"))


def test_a_busy_primary_drops_copies_by_reason_and_none_are_queued() -> None:
    async def scenario() -> None:
        calls: list[int] = []

        async def shadow(model: str, version: str, inputs: Mapping[str, Any]) -> Any:
            calls.append(len(inputs["x"]))
            return {"probs": SCORES}

        busy = True
        routing = mirrored()
        mirror = ShadowMirror(
            shadow, queue_size=8, workers=1, admit=lambda route: "primary_busy" if busy else None
        )
        for _ in range(20):
            assert mirror.offer(routing.resolve("e"), {"x": X}, {"probs": SCORES}) == 0
        assert mirror.queued == 0 and mirror.in_flight == 0
        stats = routing.report("e").shadows[0]
        assert (stats.offered, stats.dropped, stats.dropped_by) == (20, 20, {"primary_busy": 20})
        busy = False
        mirror.start()
        await primary_request(routing, mirror, {"x": X})
        while routing.report("e").shadows[0].completed < 1:
            await asyncio.sleep(0)
        final = routing.report("e").shadows[0]
        assert (final.completed, final.dropped, final.mirrored) == (1, 20, 1 / 21)
        await mirror.stop()

    asyncio.run(scenario())


X = np.arange(4, dtype=np.float32).reshape(2, 2)


def test_queued_copies_are_coalesced_into_one_call_and_compared_each() -> None:
    async def scenario() -> None:
        calls: list[int] = []

        async def shadow(model: str, version: str, inputs: Mapping[str, Any]) -> Any:
            x = np.asarray(inputs["x"])
            calls.append(len(x))
            # each row's answer: the primary's scores, flipped for rows whose first input is 6
            probs = np.tile(SCORES[:1], (len(x), 1))
            probs[x[:, 0] == 6] = SCORES[0, ::-1]
            return {"probs": probs}

        routing = mirrored()
        mirror = ShadowMirror(shadow, queue_size=64, workers=1, max_rows=lambda m, v: 5)
        route = routing.resolve("e")
        for i in range(6):  # queued before any worker runs: one burst of answers
            x = np.full((1, 2), float(i + 1), dtype=np.float32)
            mirror.offer(route, {"x": x}, {"probs": SCORES[:1]})
        mirror.offer(route, {"x": X.astype(np.int64)}, {"probs": SCORES})  # another dtype
        mirror.start()
        while routing.report("e").shadows[0].completed < 7:
            await asyncio.sleep(0)
        # 6 one-row copies within 5 rows a call: 5 + 1; the int64 copy runs alone.
        assert sorted(calls) == [1, 2, 5] and mirror.calls == 3
        stats = routing.report("e").shadows[0]
        assert (stats.completed, stats.mismatched) == (7, 0)
        # Each copy is compared with its own rows: of the coalesced ones only the copy of 6
        # disagrees; the int64 copy's second row (argmax 1 for the primary) disagrees too.
        assert stats.agreement == 5 / 7
        assert mirror.in_flight == 0 and mirror.queued == 0
        await mirror.stop()

    asyncio.run(scenario())


def test_shadow_calls_keep_to_their_share_of_time() -> None:
    async def scenario() -> None:
        clock = FakeClock()

        async def shadow(model: str, version: str, inputs: Mapping[str, Any]) -> Any:
            clock.advance(0.030)  # each call takes 30 ms of the clock
            return {"probs": SCORES}

        routing = mirrored()
        # One clock for both: the calls' duration and the CPU time the bucket refills with.
        mirror = ShadowMirror(
            shadow, workers=1, budget_share=0.1, clock_ns=clock, budget_clock_ns=clock
        )
        mirror.start()

        async def request() -> None:
            await primary_request(routing, mirror, {"x": X})
            while mirror.in_flight or mirror.queued:
                await asyncio.sleep(0)

        await request()  # within the 20 ms burst: sent, and its 30 ms charged
        stats = routing.report("e").shadows[0]
        assert (stats.completed, stats.dropped) == (1, 0)
        for _ in range(3):  # the bucket is 10 ms short: refilled at 10 % of the clock ...
            await request()
        assert routing.report("e").shadows[0].dropped_by == {"over_budget": 3}
        clock.advance(0.099)  # ... 9.9 ms later it is still short
        await request()
        clock.advance(0.002)  # and positive 0.2 ms later
        await request()
        final = routing.report("e").shadows[0]
        assert (final.completed, final.dropped_by) == (2, {"over_budget": 4})
        await mirror.stop()

    asyncio.run(scenario())


def test_a_call_that_reports_its_cost_is_charged_that_not_its_wall_time() -> None:
    """A copy run on an idle-priority thread waits for a free CPU, which costs clients
    nothing: such a call reports the CPU time it used (``cost_ns``) and that is charged."""

    class Answer(dict[str, Any]):
        cost_ns = 1_000_000  # 1 ms of CPU

    async def scenario() -> None:
        clock = FakeClock()

        async def shadow(model: str, version: str, inputs: Mapping[str, Any]) -> Any:
            clock.advance(0.030)  # 30 ms of the clock pass while it waits and runs
            return Answer(probs=SCORES)

        routing = mirrored()
        mirror = ShadowMirror(
            shadow, workers=1, budget_share=0.1, clock_ns=clock, budget_clock_ns=clock
        )
        mirror.start()
        for _ in range(10):  # 10 x 1 ms charged, refilled by 10 x 3 ms: never short
            await primary_request(routing, mirror, {"x": X})
            while mirror.in_flight or mirror.queued:
                await asyncio.sleep(0)
        final = routing.report("e").shadows[0]
        assert (final.completed, final.dropped) == (10, 0)
        await mirror.stop()

    asyncio.run(scenario())
