"""The MLflow poller against a real MLflow server: alias moves, statuses, an outage and a restart
from the cache. Every wait is for an event or a poll count, never for a duration."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

from headrace.registry.base import VersionStatus
from headrace.registry.cache import ModelCache
from headrace.registry.mlflow import MlflowSource
from headrace.registry.poller import (
    AliasesChanged,
    DesiredVersionChanged,
    RegistryPoller,
    SourceRecovered,
    SourceUnreachable,
    TargetIgnored,
)

POLL_S = 0.2


class CountingSource(MlflowSource):
    """The real source, counting the MLflow client methods it calls."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: Counter[str] = Counter()

    def _call(self, what: str, method: Any, *args: Any, **kwargs: Any) -> Any:
        self.calls[getattr(method, "__name__", "other")] += 1
        return super()._call(what, method, *args, **kwargs)


def source_for(server: Any, cache: Path, reference: str) -> CountingSource:
    return CountingSource([reference], cache=ModelCache(cache), tracking_uri=server.uri)


def poller_for(source: MlflowSource, recorder: Any, **kwargs: Any) -> RegistryPoller:
    poller = RegistryPoller(source, source.references, recorder, poll_s=POLL_S, **kwargs)
    recorder.snapshot = lambda: poller.cycle  # the poll cycle each event came from
    return poller


async def cycles_pass(poller: RegistryPoller, count: int) -> None:
    """Wait until ``count`` more poll cycles have started (a state, not a duration)."""
    target = poller.cycle + count
    while poller.cycle < target:
        await asyncio.sleep(POLL_S / 4)


def desired(event: Any, version: int) -> bool:
    return isinstance(event, DesiredVersionChanged) and event.to_version == version


def test_alias_move_is_seen_within_one_poll(
    mlflow_server: Any, logged: Any, recorder: Any, tmp_path: Path
) -> None:
    name = "poll-follow"
    v1 = mlflow_server.create_version(name, logged.one)
    v2 = mlflow_server.create_version(name, logged.two)
    mlflow_server.set_alias(name, "champion", v1)
    source = source_for(mlflow_server, tmp_path / "cache", f"{name}@champion")
    poller = poller_for(source, recorder)

    async def scenario() -> None:
        await poller.start()
        try:
            first = await recorder.wait_for(lambda e: desired(e, v1))
            assert (first.cause, first.from_version, first.from_cache) == ("startup", None, False)
            assert recorder.of(AliasesChanged)[0].aliases == {"champion": v1}

            # Steady state: one registered-models/get per model per poll, nothing else.
            source.calls.clear()
            start = poller.cycle
            await cycles_pass(poller, 4)
            polls = poller.cycle - start
            assert set(source.calls) == {"get_registered_model"}
            assert polls - 1 <= source.calls["get_registered_model"] <= polls + 1

            await asyncio.to_thread(mlflow_server.set_alias, name, "champion", v2)
            moved_before_cycle = poller.cycle + 1  # the first cycle to start after the move
            moved = await recorder.wait_for(lambda e: desired(e, v2))
            assert (moved.cause, moved.from_version) == ("alias_moved", v1)
            assert recorder.context[recorder.events.index(moved)] <= moved_before_cycle
            assert recorder.of(AliasesChanged)[-1].aliases == {"champion": v2}
            assert poller.desired(name) == v2 and poller.aliases(name) == {"champion": v2}

            # The manager failed to load v2 and asks again: the same event comes once more.
            mark = len(recorder.events)
            poller.retry(name)
            again = await recorder.wait_for(lambda e: desired(e, v2), after=mark)
            assert again == moved
            await cycles_pass(poller, 2)
            assert [e for e in recorder.events[mark:] if desired(e, v2)] == [moved]
        finally:
            await poller.stop()

    asyncio.run(scenario())


def test_failed_and_pending_targets_are_ignored_and_reported_once(
    mlflow_server: Any, logged: Any, recorder: Any, tmp_path: Path
) -> None:
    name = "poll-status"
    v1 = mlflow_server.create_version(name, logged.one)
    pending = mlflow_server.create_version(name, logged.two)
    failed = mlflow_server.create_version(name, logged.two)
    mlflow_server.set_status(name, pending, "PENDING_REGISTRATION")
    mlflow_server.set_status(name, failed, "FAILED_REGISTRATION")
    mlflow_server.set_alias(name, "champion", v1)
    source = source_for(mlflow_server, tmp_path / "cache", f"{name}@champion")
    poller = poller_for(source, recorder)

    def ignored(version: int | None) -> list[Any]:
        return [e for e in recorder.of(TargetIgnored) if e.version == version]

    async def scenario() -> None:
        await poller.start()
        try:
            await recorder.wait_for(lambda e: desired(e, v1))

            await asyncio.to_thread(mlflow_server.set_alias, name, "champion", pending)
            event = await recorder.wait_for(lambda e: isinstance(e, TargetIgnored))
            assert (event.version, event.status) == (pending, VersionStatus.PENDING)
            await cycles_pass(poller, 3)
            assert len(ignored(pending)) == 1  # reported once, asked again each poll
            assert poller.desired(name) == v1

            # The pending version becomes READY: now it is desired.
            await asyncio.to_thread(mlflow_server.set_status, name, pending, "READY")
            ready = await recorder.wait_for(lambda e: desired(e, pending))
            assert (ready.cause, ready.from_version) == ("alias_moved", v1)

            source.calls.clear()
            await asyncio.to_thread(mlflow_server.set_alias, name, "champion", failed)
            mark = len(recorder.events)
            event = await recorder.wait_for(lambda e: isinstance(e, TargetIgnored), after=mark)
            assert (event.version, event.status) == (failed, VersionStatus.FAILED)
            await cycles_pass(poller, 3)
            assert len(ignored(failed)) == 1
            assert source.calls["get_model_version"] == 1  # FAILED is final: never asked again
            assert poller.desired(name) == pending

            await asyncio.to_thread(
                mlflow_server.client().delete_registered_model_alias, name, "champion"
            )
            gone = await recorder.wait_for(
                lambda e: isinstance(e, TargetIgnored) and e.version is None
            )
            assert "alias 'champion' is not set" in gone.reason
            assert poller.desired(name) == pending
            assert not [e for e in recorder.of(DesiredVersionChanged) if e.to_version == failed]
        finally:
            await poller.stop()

    asyncio.run(scenario())


def test_outage_backs_off_restart_serves_from_cache_and_recovers(
    mlflow_server: Any, logged: Any, make_recorder: Any, tmp_path: Path
) -> None:
    name = "poll-outage"
    v1 = mlflow_server.create_version(name, logged.one)
    v2 = mlflow_server.create_version(name, logged.two)
    mlflow_server.set_alias(name, "champion", v1)
    cache = tmp_path / "cache"
    running = make_recorder()
    source = source_for(mlflow_server, cache, f"{name}@champion")
    poller = poller_for(source, running, backoff_max_s=8 * POLL_S)
    restarted = make_recorder()

    def unreachable(recorder: Any) -> list[Any]:
        return recorder.of(SourceUnreachable)

    async def scenario() -> None:
        second: RegistryPoller | None = None
        await poller.start()
        try:
            await running.wait_for(lambda e: desired(e, v1))
            served = await asyncio.to_thread(source.materialize, name, v1)  # as the manager does
            assert not served.from_cache
            try:
                await asyncio.to_thread(mlflow_server.kill)
                await running.wait_for(
                    lambda e: isinstance(e, SourceUnreachable) and e.failures == 4
                )
                delays = [e.retry_in_s for e in unreachable(running)]
                assert delays[0] < delays[1] < delays[2] < delays[3]  # exponential backoff
                assert delays[3] <= 8 * POLL_S * 1.1  # capped at backoff_max_s (+ jitter)
                assert poller.desired(name) == v1 and not poller.reachable

                # headrace restarted while MLflow is down: the cache's last aliases decide.
                second_source = source_for(mlflow_server, cache, f"{name}@champion")
                second = poller_for(second_source, restarted)
                await second.start()
                startup = await restarted.wait_for(lambda e: isinstance(e, DesiredVersionChanged))
                assert (startup.to_version, startup.cause, startup.from_cache) == (
                    v1,
                    "startup",
                    True,
                )
                assert restarted.of(AliasesChanged)[0].aliases == {"champion": v1}
                assert restarted.of(AliasesChanged)[0].from_cache
                calls_before = Counter(second_source.calls)
                cached = await asyncio.to_thread(second_source.materialize, name, v1)
                assert cached.from_cache and cached.fingerprint == served.fingerprint
                assert second_source.calls == calls_before  # no request to MLflow
            finally:
                if mlflow_server.process is None:
                    await asyncio.to_thread(mlflow_server.start)

            await running.wait_for(lambda e: isinstance(e, SourceRecovered))
            await restarted.wait_for(lambda e: isinstance(e, SourceRecovered))
            assert second is not None and poller.reachable and second.reachable

            await asyncio.to_thread(mlflow_server.set_alias, name, "champion", v2)
            for recorder in (running, restarted):
                moved = await recorder.wait_for(lambda e: desired(e, v2))
                assert (moved.cause, moved.from_version, moved.from_cache) == (
                    "alias_moved",
                    v1,
                    False,
                )
        finally:
            await poller.stop()
            if second is not None:
                await second.stop()

    asyncio.run(scenario())
