"""The import rules of DESIGN.md, checked in fresh interpreters through ``sys.modules``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SERVER_SIDE = ("headrace._core", "headrace.engine", "headrace.server", "onnxruntime")


def loaded_after(statement: str) -> set[str]:
    """The modules a fresh interpreter has loaded after running ``statement``."""
    code = f"{statement}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def loaded(modules: set[str], prefix: str) -> bool:
    return any(m == prefix or m.startswith(prefix + ".") for m in modules)


def test_the_client_is_light() -> None:
    modules = loaded_after("import headrace.client")
    for heavy in SERVER_SIDE:
        assert not loaded(modules, heavy), f"import headrace.client loaded {heavy}"


def test_importing_headrace_is_lazy() -> None:
    modules = loaded_after("import headrace")
    for heavy in (*SERVER_SIDE, "grpc", "headrace.client"):
        assert not loaded(modules, heavy), f"import headrace loaded {heavy}"


def test_the_engine_is_reachable_from_the_package() -> None:
    modules = loaded_after("import headrace\nheadrace.Engine")
    assert loaded(modules, "headrace.engine") and loaded(modules, "headrace._core")


@pytest.mark.parametrize(
    "module",
    [
        "headrace.engine",
        "headrace.backends.onnx",
        "headrace.backends.int8",
        "headrace.registry.manager",
        "headrace.registry.filesystem",
        "headrace.monitoring.metrics",
        "headrace.monitoring.drift.served",
        "headrace.monitoring.drift.watcher",
    ],
)
def test_the_data_plane_knows_no_grpc(module: str) -> None:
    modules = loaded_after(f"import {module}")
    assert not loaded(modules, "grpc"), f"{module} loaded grpc"
    assert not loaded(modules, "headrace.server"), f"{module} loaded headrace.server"


@pytest.mark.parametrize(
    "module",
    [
        "headrace.errors",
        "headrace.types",
        "headrace.datatypes",
        "headrace.config",
        "headrace.thread_policy",
    ],
)
def test_the_base_imports_nothing_above_it(module: str) -> None:
    modules = loaded_after(f"import {module}")
    base = {"headrace", "headrace.errors", "headrace.types", "headrace.datatypes", module}
    above = {
        m
        for m in modules
        if m.startswith("headrace.") and m not in base and not m.startswith("headrace.config")
    }
    assert not above, f"{module} imported {sorted(above)}"
