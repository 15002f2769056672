"""The repository watcher, with inotify and by polling: a slowly copied version is reported once,
complete; a version changed in place is reported with its new fingerprint; a touch is not; removal
and model.toml edits are reported. Every wait is for the watcher's state, never a duration."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import pytest

from headrace.registry.base import fingerprint_directory
from headrace.registry.filesystem import FilesystemSource
from headrace.registry.watcher import (
    ModelConfigChanged,
    RepositoryWatcher,
    VersionAdded,
    VersionChanged,
    VersionRemoved,
)
from helpers import onnx_models

SETTLE_S = 0.3
WAIT_S = 60.0  # a hang guard only


class Events:
    def __init__(self) -> None:
        self.seen: list[Any] = []

    async def __call__(self, event: Any) -> None:
        self.seen.append(event)

    async def wait_for(self, predicate: Callable[[Any], bool]) -> Any:
        async def found() -> Any:
            while True:
                for event in self.seen:
                    if predicate(event):
                        return event
                await asyncio.sleep(0.01)

        return await asyncio.wait_for(found(), WAIT_S)


async def judged(watcher: RepositoryWatcher) -> None:
    """Wait until the watcher has looked at the tree as it is now and judged every change."""
    await asyncio.wait_for(watcher.scan_now(), WAIT_S)

    async def settled() -> None:
        while watcher.pending:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(settled(), WAIT_S)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    onnx_models.write_model(root, "fraud", onnx_models.mlp([4, 2], seed=1), 1)
    return root


@pytest.fixture(params=["inotify", "polling"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def watcher_for(repo: Path, events: Events, mode: str) -> RepositoryWatcher:
    return RepositoryWatcher(
        FilesystemSource(repo, settle_s=SETTLE_S),
        events,
        settle_s=SETTLE_S,
        poll_s=0.05,
        use_inotify=mode == "inotify",
    )


def test_slow_copy_is_reported_once_complete(repo: Path, mode: str) -> None:
    events = Events()
    watcher = watcher_for(repo, events, mode)
    content = onnx_models.mlp([64, 256, 8], seed=2).SerializeToString()
    version = repo / "fraud" / "2"

    async def scenario() -> None:
        await watcher.start()
        try:
            assert watcher.known() == {("fraud", 1): fingerprint_directory(repo / "fraud" / "1")}
            version.mkdir()
            (version / "reference.json").write_text("{}")
            step = len(content) // 4
            chunks = [content[i : i + step] for i in range(0, len(content), step)]
            with (version / "model.onnx").open("wb") as handle:
                for chunk in chunks[:-1]:
                    handle.write(chunk)
                    handle.flush()
                    # The watcher sees a half-written file that stopped changing: never reported.
                    await judged(watcher)
                    assert events.seen == []
                handle.write(chunks[-1])
            added = await events.wait_for(lambda e: isinstance(e, VersionAdded))
            await judged(watcher)
        finally:
            await watcher.stop()
        assert events.seen == [added]
        assert (added.version.model, added.version.version) == ("fraud", 2)
        assert added.version.model_file.read_bytes() == content
        assert added.version.fingerprint == fingerprint_directory(version)
        assert added.version.reference_file == version / "reference.json"
        assert watcher.mode == mode

    asyncio.run(scenario())


def test_changed_in_place_touched_and_removed(repo: Path, mode: str) -> None:
    events = Events()
    watcher = watcher_for(repo, events, mode)
    version = repo / "fraud" / "1"
    before = fingerprint_directory(version)

    async def scenario() -> None:
        await watcher.start()
        try:
            os.utime(version / "model.onnx")  # touched, same content
            await judged(watcher)
            assert events.seen == []

            onnx.save(onnx_models.mlp([4, 2], seed=7), str(version / "model.onnx"))
            changed = await events.wait_for(lambda e: isinstance(e, VersionChanged))
            assert changed.previous_fingerprint == before
            assert changed.version.fingerprint == fingerprint_directory(version) != before

            shutil.rmtree(version)
            removed = await events.wait_for(lambda e: isinstance(e, VersionRemoved))
            assert (removed.model, removed.version) == ("fraud", 1)
            await judged(watcher)
        finally:
            await watcher.stop()
        assert [type(e) for e in events.seen] == [VersionChanged, VersionRemoved]
        assert watcher.known() == {}

    asyncio.run(scenario())


def test_model_toml_aliases(repo: Path, mode: str) -> None:
    events = Events()
    watcher = watcher_for(repo, events, mode)
    toml = repo / "fraud" / "model.toml"

    async def scenario() -> None:
        await watcher.start()
        try:
            toml.write_text("[aliases]\nchampion = 1\n")
            first = await events.wait_for(lambda e: isinstance(e, ModelConfigChanged))
            assert dict(first.aliases) == {"champion": 1} and first.error == ""

            toml.write_text("[aliases]\nchampion = 0\n")
            bad = await events.wait_for(lambda e: isinstance(e, ModelConfigChanged) and e.error)
            assert "positive version" in bad.error and dict(bad.aliases) == {}

            toml.unlink()
            gone = await events.wait_for(
                lambda e: isinstance(e, ModelConfigChanged) and e.fingerprint is None
            )
            assert gone.model == "fraud"

            # A version that cannot be read under a broken model.toml loads once it is fixed.
            toml.write_text('backend = "bogus"\n')
            onnx_models.write_model(repo, "fraud", onnx_models.mlp([4, 2], seed=5), 2)
            await judged(watcher)
            assert not [e for e in events.seen if isinstance(e, VersionAdded)]
            toml.write_text('backend = "onnxruntime"\n')
            added = await events.wait_for(lambda e: isinstance(e, VersionAdded))
            assert added.version.version == 2
        finally:
            await watcher.stop()

    asyncio.run(scenario())


def test_baseline_from_the_manager(repo: Path, mode: str) -> None:
    """Differences from what the manager loaded are reported, even those from before start."""
    events = Events()
    watcher = watcher_for(repo, events, mode)
    onnx_models.write_model(repo, "churn", onnx_models.mlp([4, 2], seed=3), 5)

    async def scenario() -> None:
        await watcher.start(baseline={("fraud", 1): "what-the-manager-loaded", ("gone", 2): "x"})
        try:
            await events.wait_for(lambda e: isinstance(e, VersionAdded))
            await events.wait_for(lambda e: isinstance(e, VersionChanged))
            await events.wait_for(lambda e: isinstance(e, VersionRemoved))
            await judged(watcher)
        finally:
            await watcher.stop()
        kinds = {
            (
                type(e).__name__,
                *(
                    (e.model, e.version)
                    if isinstance(e, VersionRemoved)
                    else (e.version.model, e.version.version)
                ),
            )
            for e in events.seen
        }
        assert kinds == {
            ("VersionAdded", "churn", 5),
            ("VersionChanged", "fraud", 1),
            ("VersionRemoved", "gone", 2),
        }

    asyncio.run(scenario())


def test_without_watchfiles_it_polls(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "watchfiles", None)  # as if it were not installed
    events = Events()
    watcher = watcher_for(repo, events, "inotify")

    async def scenario() -> None:
        await watcher.start()
        try:
            onnx_models.write_model(repo, "fraud", onnx_models.mlp([4, 2], seed=4), 3)
            added = await events.wait_for(lambda e: isinstance(e, VersionAdded))
            assert added.version.version == 3
        finally:
            await watcher.stop()
        assert watcher.mode == "polling"

    asyncio.run(scenario())
