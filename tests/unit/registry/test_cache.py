"""The model cache: a version appears whole and verified, or not at all."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import onnx
import pytest

from headrace.registry.cache import META_FILE, ModelCache, VerificationError, VersionLayout
from helpers import onnx_models

ORIGIN = "http://registry.test:5000"


def model_bytes(seed: int = 0) -> bytes:
    return onnx_models.mlp([4, 8, 2], seed=seed).SerializeToString()


def filler(
    content: bytes, *, expected: dict[str, int] | None = None, extra: bool = True
) -> Callable[[Path], VersionLayout]:
    def fill(directory: Path) -> VersionLayout:
        (directory / "model.onnx").write_bytes(content)
        if extra:
            (directory / "reference.json").write_text("{}")
            (directory / "model.toml").write_text("max_batch_size = 4\n")
        return VersionLayout(
            model_file="model.onnx",
            backend="onnxruntime",
            config_file="model.toml" if extra else None,
            reference_file="reference.json" if extra else None,
            expected_sizes=expected or {},
        )

    return fill


def partial_entries(cache: ModelCache) -> list[Path]:
    return list((cache.root / ".partial").iterdir())


def test_install_then_get(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path)
    installed = cache.install("fraud", 3, ORIGIN, filler(model_bytes()))
    assert not installed.from_cache and installed.download_ms is not None
    assert installed.directory == cache.version_dir("fraud", 3)
    assert installed.model_file.read_bytes() == model_bytes()
    assert installed.reference_file == installed.directory / "reference.json"
    assert installed.model_config().max_batch_size == 4
    assert cache.versions("fraud") == [3]
    found = cache.get("fraud", 3, ORIGIN)
    assert found is not None and found.from_cache and found.download_ms is None
    assert found.fingerprint == installed.fingerprint
    # Installing again returns the cached copy without filling.
    again = cache.install("fraud", 3, ORIGIN, lambda d: pytest.fail("filled twice"))
    assert again.from_cache
    assert partial_entries(cache) == []


def test_half_written_version_is_never_visible(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path)
    half_written, release = threading.Event(), threading.Event()
    content = model_bytes()

    def slow_fill(directory: Path) -> VersionLayout:
        with (directory / "model.onnx").open("wb") as handle:
            handle.write(content[: len(content) // 2])
            handle.flush()
            half_written.set()
            assert release.wait(60)
            handle.write(content[len(content) // 2 :])
        return VersionLayout("model.onnx", "onnxruntime")

    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(cache.install, "fraud", 1, ORIGIN, slow_fill)
        assert half_written.wait(60)
        assert not cache.version_dir("fraud", 1).exists()
        assert cache.get("fraud", 1, ORIGIN) is None and cache.versions("fraud") == []
        release.set()
        installed = future.result(60)
    assert installed.model_file.read_bytes() == content


@pytest.mark.parametrize(
    ("fill", "message"),
    [
        (filler(model_bytes()[:50]), "not a complete ONNX model"),
        (filler(model_bytes(), expected={"model.onnx": 10}), "expected 10"),
        (filler(model_bytes(), expected={"extra_files/model.toml": 19}), "missing"),
        (filler(b"\x08\x09"), "not a complete ONNX model"),
    ],
)
def test_failed_verification_installs_nothing(
    tmp_path: Path, fill: Callable[[Path], VersionLayout], message: str
) -> None:
    cache = ModelCache(tmp_path)
    with pytest.raises(VerificationError, match=message):
        cache.install("fraud", 2, ORIGIN, fill)
    assert not cache.version_dir("fraud", 2).exists()
    assert partial_entries(cache) == []


def test_failed_fill_installs_nothing(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path)

    def broken(directory: Path) -> VersionLayout:
        (directory / "model.onnx").write_bytes(model_bytes())
        raise ConnectionResetError("download cut")

    with pytest.raises(ConnectionResetError):
        cache.install("fraud", 2, ORIGIN, broken)
    assert cache.versions("fraud") == [] and partial_entries(cache) == []


def test_leftovers_of_a_crash_are_removed_on_open(tmp_path: Path) -> None:
    ModelCache(tmp_path)
    leftover = tmp_path / ".partial" / "abc"
    leftover.mkdir()
    (leftover / "model.onnx").write_bytes(b"half")
    cache = ModelCache(tmp_path)
    assert partial_entries(cache) == []


def test_damage_after_install_and_other_origins_are_not_served(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path)
    installed = cache.install("fraud", 1, ORIGIN, filler(model_bytes()))
    assert cache.get("fraud", 1, "http://other:5000") is None
    installed.model_file.write_bytes(model_bytes()[:30])  # damaged on disk later
    assert cache.get("fraud", 1, ORIGIN) is None
    repaired = cache.install("fraud", 1, ORIGIN, filler(model_bytes(seed=4)))
    assert not repaired.from_cache
    assert repaired.model_file.read_bytes() == model_bytes(seed=4)
    other = cache.install("fraud", 1, "http://other:5000", filler(model_bytes(seed=5)))
    assert other.origin == "http://other:5000"
    assert cache.get("fraud", 1, ORIGIN) is None


def test_concurrent_installs_of_one_version_fill_once(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path)
    fills = []
    gate = threading.Barrier(4)

    def fill(directory: Path) -> VersionLayout:
        fills.append(directory)
        return filler(model_bytes())(directory)

    def install() -> str:
        gate.wait(30)
        return cache.install("fraud", 7, ORIGIN, fill).fingerprint

    with ThreadPoolExecutor(4) as pool:
        fingerprints = set(pool.map(lambda _: install(), range(4)))
    assert len(fills) == 1 and len(fingerprints) == 1


def test_names_prune_and_aliases(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path)
    for version in (1, 2, 3):
        cache.install("team/fraud", version, ORIGIN, filler(model_bytes(version), extra=False))
    assert cache.model_dir("team/fraud").parent == tmp_path  # one path segment
    assert cache.model_dir("..").parent == tmp_path and cache.model_dir("..").name == "%2E."
    assert cache.model_dir(".partial").name == "%2Epartial"
    assert (cache.version_dir("team/fraud", 2) / META_FILE).is_file()
    assert cache.prune("team/fraud", keep={3}) == [1, 2]
    assert cache.versions("team/fraud") == [3]

    assert cache.load_aliases("team/fraud", ORIGIN) is None
    cache.save_aliases("team/fraud", ORIGIN, {"champion": 3})
    assert cache.load_aliases("team/fraud", ORIGIN) == {"champion": 3}
    assert cache.load_aliases("team/fraud", "http://other:5000") is None
    reopened = ModelCache(tmp_path)
    assert reopened.load_aliases("team/fraud", ORIGIN) == {"champion": 3}
    assert onnx.load_from_string(
        reopened.version_dir("team/fraud", 3).joinpath("model.onnx").read_bytes()
    )
